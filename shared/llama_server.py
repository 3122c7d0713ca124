"""Run llama.cpp's OpenAI-compatible server (llama-cpp-python) as a child process.

The edge's local LLM and the embedded cloud worker both talk to their model over
HTTP exactly as they would to vLLM or Ollama in production; in the embedded
default this module starts that server from a ``LaunchSpec`` and stops it again.
A separate process keeps model compute off the caller's event loop and lets the
OS reclaim everything on stop.
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

from shared.log import log_event
from shared.topology import LaunchSpec, resolve_model_path

log = logging.getLogger("shared.llama_server")


class LlamaServerError(RuntimeError):
    """The server could not be started (missing package or model, port taken, crashed, too slow)."""


class LlamaServer:
    """One ``python -m llama_cpp.server`` process serving one GGUF model under ``alias``."""

    def __init__(self, launch: LaunchSpec, host: str = "127.0.0.1", port: int = 8090,
                 alias: str = "local", log_path: str | os.PathLike | None = None):
        self.launch = launch
        self.host = host
        self.port = port
        self.alias = alias
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"xz-llama-{port}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @classmethod
    def for_url(cls, launch: LaunchSpec, url: str, alias: str, **kw) -> "LlamaServer":
        """A server listening where ``url`` (e.g. ``http://127.0.0.1:8090/v1``) points."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise LlamaServerError(f"{url}: a launched llama.cpp server needs an http://host:port/v1 url")
        return cls(launch, parts.hostname, parts.port, alias, **kw)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        model = resolve_model_path(self.launch.model_path)
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model), "--model_alias", self.alias,
            "--host", self.host, "--port", str(self.port),
            "--n_threads", str(self.launch.n_threads), "--n_ctx", str(self.launch.n_ctx),
            "--verbose", "False",
            # llama-cpp-python's server otherwise ends a streaming answer as soon as another request waits:
            # with two devices talking at once, one of them got an empty answer. Requests queue instead.
            "--interrupt_requests", "False",
            *(["--cache", "True", "--cache_type", "ram", "--cache_size", str(self.launch.prompt_cache_mb << 20)]
              if self.launch.prompt_cache_mb else []),
        ]

    async def start(self, timeout: float = 180.0) -> "LlamaServer":
        """Start the process and return once ``/v1/models`` answers; LlamaServerError otherwise."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise LlamaServerError("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]'")
        cmd = self.command()
        if await self._answers():
            raise LlamaServerError(f"{self.base_url}: something already listens there; pick a free port")
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out,
                                                             stdin=asyncio.subprocess.DEVNULL)
        log_event(log, "llama.cpp server starting", url=self.base_url, model=cmd[4], pid=self.proc.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                tail = self._log_tail()
                self.proc = None
                raise LlamaServerError(f"llama.cpp server exited at start: {tail}")
            if await self._answers():
                log_event(log, "llama.cpp server ready", url=self.base_url)
                return self
            await asyncio.sleep(0.25)
        await self.stop()
        raise LlamaServerError(f"llama.cpp server at {self.base_url} not ready within {timeout:.0f}s: {self._log_tail()}")

    async def stop(self, grace: float = 10.0) -> None:
        """Terminate (then kill after ``grace`` seconds); safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
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
