"""Run llama.cpp's OpenAI-compatible server (llama-cpp-python) as a child process.

The edge's local LLM and the embedded cloud worker both talk to their model over
HTTP exactly as they would to vLLM or Ollama in production; in the embedded
default this module starts that server from a ``LaunchSpec`` and stops it again.
A separate process keeps model compute off the caller's event loop and lets the
OS reclaim everything on stop. The process is supervised (:mod:`shared.supervisor`):
it dies with its parent and is restarted with back-off when it crashes;
``available`` and ``status()`` say whether it serves right now.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from shared.llama_serve import NICE_ENV
from shared.log import log_event
from shared.supervisor import Backoff, Supervisor, describe_holder, spawn, terminate
from shared.topology import LaunchSpec, resolve_model_path

log = logging.getLogger("shared.llama_server")


class LlamaServerError(RuntimeError):
    """The server could not be started (missing package or model, port taken, crashed, too slow)."""


class LlamaServer:
    """One llama-cpp-python server process (``llama_cpp.server`` via ``shared.llama_serve``) serving one
    GGUF model under ``alias``."""

    def __init__(self, launch: LaunchSpec, host: str = "127.0.0.1", port: int = 8090,
                 alias: str = "local", log_path: str | os.PathLike | None = None,
                 name: str = "llm", backoff: Backoff | None = None):
        self.launch = launch
        self.host = host
        self.port = port
        self.alias = alias
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"xz-llama-{port}.log"
        self.ready_timeout = 180.0
        self._grace = 10.0
        self.supervisor = Supervisor(name, self._launch, lambda proc: terminate(proc, self._grace), backoff)

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.supervisor.proc

    @property
    def available(self) -> bool:
        """True while the server runs and answered its readiness probe (not while restarting)."""
        return self.supervisor.available

    def status(self) -> dict:
        """``{"state": up|restarting|down|starting|stopped, "restarts": n, "pid": ...}`` for /health."""
        return self.supervisor.status()

    @classmethod
    def for_url(cls, launch: LaunchSpec, url: str, alias: str, **kw) -> "LlamaServer":
        """A server listening where ``url`` (e.g. ``http://127.0.0.1:8090/v1``) points."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise LlamaServerError(f"{url}: a launched llama.cpp server needs an http://host:port/v1 url")
        return cls(launch, parts.hostname, parts.port, alias, **kw)

    @classmethod
    def copies(cls, launch: LaunchSpec, url: str, alias: str, n: int, name: str = "llm") -> list["LlamaServer"]:
        """``n`` servers of the same model: the first where ``url`` points, the others on the next ports
        (each its own process, supervisor and log)."""
        first = cls.for_url(launch, url, alias, name=name)
        return [first] + [cls(launch, first.host, first.port + i, alias, name=f"{name}-{i + 1}") for i in range(1, n)]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        model = resolve_model_path(self.launch.model_path)
        return [
            sys.executable, "-m", "shared.llama_serve",  # llama_cpp.server, freed memory returned
            "--model", str(model), "--model_alias", self.alias,
            "--host", self.host, "--port", str(self.port),
            "--n_threads", str(self.launch.n_threads), "--n_ctx", str(self.launch.n_ctx),
            "--verbose", "False",
            # llama-cpp-python's server otherwise ends a streaming answer as soon as another request waits:
            # with two devices talking at once, one of them got an empty answer. Requests queue instead.
            "--interrupt_requests", "False",
            "--logits_all", str(self.launch.logprobs),  # see LaunchSpec.logprobs: the server's default is True
            *(["--cache", "True", "--cache_type", "ram", "--cache_size", str(self.launch.prompt_cache_mb << 20)]
              if self.launch.prompt_cache_mb else []),
        ]

    async def start(self, timeout: float = 180.0) -> "LlamaServer":
        """Start the process and return once ``/v1/models`` answers (LlamaServerError otherwise);
        from then on a crash restarts it."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise LlamaServerError("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]'")
        self.ready_timeout = timeout
        await self.supervisor.start()
        return self

    async def _launch(self) -> asyncio.subprocess.Process:
        cmd = self.command()
        if await self._answers():
            raise LlamaServerError(f"{self.base_url}: something already listens there "
                                   f"({describe_holder(self.port, self.host)}); stop it or pick a free port")
        env = {**os.environ, NICE_ENV: str(self.launch.nice)} if self.launch.nice else None
        with open(self.log_path, "ab") as out:
            proc = await spawn(*cmd, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL, env=env)
        log_event(log, "llama.cpp server starting", url=self.base_url, model=cmd[4], pid=proc.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        try:
            while loop.time() < deadline:
                if proc.returncode is not None:
                    raise LlamaServerError(f"llama.cpp server exited at start: {self._log_tail()}")
                if await self._answers():
                    log_event(log, "llama.cpp server ready", url=self.base_url, pid=proc.pid)
                    return proc
                await asyncio.sleep(0.25)
        except BaseException:
            await terminate(proc, 2.0)
            raise
        await terminate(proc, 2.0)
        raise LlamaServerError(f"llama.cpp server at {self.base_url} not ready within {self.ready_timeout:.0f}s: "
                               f"{self._log_tail()}")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop supervising and terminate (then kill after ``grace`` seconds); safe to call twice."""
        was_running, self._grace = self.proc is not None, grace
        await self.supervisor.stop()
        if was_running:
            log_event(log, "llama.cpp server stopped", url=self.base_url)

    async def __aenter__(self) -> "LlamaServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _answers(self) -> bool:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                async with http.get(f"{self.base_url}/models") as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    def _log_tail(self, n: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return "(no log)"
