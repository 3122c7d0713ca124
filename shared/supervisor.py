"""Child processes that die with their parent and come back when they crash.

Every long-running child of this project (llama.cpp servers, nats-server, the
embedded default's workers and edge) is started with :func:`spawn`, which asks
Linux to SIGKILL the child when its parent dies (``PR_SET_PDEATHSIG``), so a
parent killed with SIGKILL leaves no orphan holding a port. A
:class:`Supervisor` watches one child and restarts it with exponential back-off
when it exits unexpectedly; its ``state`` and ``restarts`` feed /health and the
``xz_child_*`` metrics.

Why ctypes: ``prctl(PR_SET_PDEATHSIG)`` has to run in the child between fork and
exec. The standard library has no binding and psutil does not expose it;
python-prctl needs libcap headers to build. One libc call through ctypes,
resolved in the parent before fork, is the smallest dependable way. The death
signal follows the *thread* that forked: spawn from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal

import psutil

from shared.log import log_event
from shared.metrics import CHILD_RESTARTS, CHILD_UP

log = logging.getLogger("shared.supervisor")

_PR_SET_PDEATHSIG = 1
_prctl = None
if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _prctl = _libc.prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when this process dies (None off Linux).

    If the parent already died between fork and prctl, the child exits at once."""
    if _prctl is None:
        return None
    parent = os.getpid()
    prctl = _prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook


async def spawn(*cmd: str, **kw) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` for a child that must not outlive this process."""
    return await asyncio.create_subprocess_exec(*cmd, preexec_fn=die_with_parent_hook(), **kw)


async def terminate(proc: asyncio.subprocess.Process, grace: float = 10.0,
                    sig: int = signal.SIGTERM) -> None:
    """Send ``sig``, then SIGKILL after ``grace`` seconds; a no-op for an exited process."""
    if proc.returncode is not None:
        return
    with _suppress_gone():
        proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except asyncio.TimeoutError:
        with _suppress_gone():
            proc.kill()
        await proc.wait()


class _suppress_gone:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return exc_type is ProcessLookupError


def port_holder(port: int, host: str | None = None) -> psutil.Process | None:
    """The process listening on TCP ``port`` (any address, or ``host``), if this user may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            if host in (None, c.laddr.ip, "0.0.0.0", "::") or c.laddr.ip in ("0.0.0.0", "::"):
                try:
                    return psutil.Process(c.pid)
                except psutil.NoSuchProcess:
                    return None
    return None


def describe_holder(port: int, host: str | None = None) -> str:
    """``"pid 123 (python -m shared.llama_serve ...)"`` for the process holding ``port``, or a hint."""
    proc = port_holder(port, host)
    if proc is None:
        return "a process this user cannot see"
    try:
        cmd = " ".join(proc.cmdline())[:120] or proc.name()
    except psutil.Error:
        cmd = "?"
    return f"pid {proc.pid} ({cmd})"


@dataclass
class Backoff:
    """Delays between restarts: ``initial`` doubling up to ``maximum``; back to ``initial`` once a
    child stayed up ``reset_after_s``."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    reset_after_s: float = 60.0
    _next: float = field(default=0.0, init=False)

    def delay(self, uptime_s: float) -> float:
        if uptime_s >= self.reset_after_s or self._next == 0.0:
            self._next = self.initial
        current = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return current


State = Literal["starting", "up", "restarting", "down", "stopped"]


class Supervisor:
    """Keeps one child running: ``start_child()`` launches it and returns once it serves.

    ``start()`` raises if the first launch fails (a misconfiguration should stop the
    caller); afterwards every unexpected exit is logged, counted and followed by a
    restart after a back-off. States: ``up`` serving; ``restarting`` a crash was seen
    and a restart is pending or under way; ``down`` the last restart failed (retries
    go on at the back-off's pace); ``stopped`` after ``stop()``.
    """

    def __init__(self, name: str, start_child: Callable[[], Awaitable[asyncio.subprocess.Process]],
                 stop_child: Callable[[asyncio.subprocess.Process], Awaitable[None]] | None = None,
                 backoff: Backoff | None = None,
                 on_event: Callable[[str, dict], None] | None = None):
        self.name = name
        self._start_child = start_child
        self._stop_child = stop_child or terminate
        self.backoff = backoff or Backoff()
        self.on_event = on_event
        self.state: State = "stopped"
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task | None = None
        self._stopping = False
        self._up_since = 0.0

    @property
    def available(self) -> bool:
        return self.state == "up"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def status(self) -> dict:
        return {"state": self.state, "restarts": self.restarts, "pid": self.pid}

    def _set(self, state: State, **fields) -> None:
        self.state = state
        CHILD_UP.labels(child=self.name).set(1 if state == "up" else 0)
        if self.on_event is not None:
            self.on_event(state, {"name": self.name, "restarts": self.restarts, **fields})

    async def start(self) -> "Supervisor":
        self._stopping = False
        self._set("starting")
        try:
            self.proc = await self._start_child()
        except BaseException:
            self._set("stopped")
            raise
        self._up_since = time.monotonic()
        self._set("up", pid=self.proc.pid)
        self._watch = asyncio.create_task(self._watch_loop(), name=f"supervise-{self.name}")
        return self

    async def _watch_loop(self) -> None:
        while not self._stopping:
            proc = self.proc
            code = await proc.wait() if proc is not None else None
            if self._stopping:
                return
            uptime = time.monotonic() - self._up_since
            delay = self.backoff.delay(uptime)
            self.restarts += 1
            CHILD_RESTARTS.labels(child=self.name).inc()
            log_event(log, "child exited, restarting", logging.WARNING, child=self.name, code=code,
                      restart=self.restarts, delay_s=delay, uptime_s=round(uptime, 1))
            self._set("restarting", code=code, delay_s=delay)
            while not self._stopping:
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    self.proc = await self._start_child()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failed launch is retried later
                    delay = self.backoff.delay(0.0)
                    log_event(log, "child restart failed", logging.WARNING, child=self.name,
                              error=str(exc)[:300], next_delay_s=delay)
                    self._set("down", error=str(exc)[:300], delay_s=delay)
                    continue
                self._up_since = time.monotonic()
                log_event(log, "child restarted", child=self.name, pid=self.proc.pid, restart=self.restarts)
                self._set("up", pid=self.proc.pid)
                break

    async def stop(self) -> None:
        """Stop watching, then stop the child; safe to call twice."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
            self._watch = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            await self._stop_child(proc)
        if self.state != "stopped":
            self._set("stopped")
