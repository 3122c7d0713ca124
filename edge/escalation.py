"""The edge's side of escalation: send a turn to the cloud and stream the answer back.

The turn pipeline feeds the chunks straight into its sentence splitter, so an
escalated turn starts speaking as soon as the first cloud sentence exists.
Anything that would leave the device waiting raises :class:`EscalationFailed`
fast, so the caller answers locally instead:

- ``no_responders``: no worker is reachable (none running, or the leaf link to
  the hub is down: the leaf then has no interest and NATS says so at once);
- ``first_token_timeout`` / ``idle_timeout``: the worker is slow or died mid-stream;
- ``deadline``: the request's deadline passed (before sending or while streaming);
- ``worker_error``: the worker refused (``code``: busy, backend, bad_request, ...);
- ``gap`` / ``bad_reply``: chunks missing, out of order, or undecodable;
- ``disconnected``: this edge has no NATS connection.

Leaving the stream early (device abort, task cancellation, a failure above)
publishes a cancel message, so the worker stops generating within one token.

:class:`CloudHealthMonitor` follows the workers' heartbeats and probes the link
itself (a NATS PING/PONG every half second), so the policy can skip a cloud that
is down, full or behind a frozen leaf node without spending a request (and its
first-token timeout) to find out.

One wildcard inbox subscription serves every stream of the client; a stream's
replies are routed to it by the last subject token. That keeps a request to one
publish, with no per-request subscription to propagate through the leaf node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import subjects
from shared.log import log_event
from shared.wire import (CancelRequest, EscalationRequest, ReplyChunk, ReplyStreamChecker, StreamError, WireError,
                         WorkerHeartbeat, decode, encode, new_id)

log = logging.getLogger("edge.escalation")

_NO_RESPONDERS = "503"


class EscalationFailed(Exception):
    """The cloud could not answer this turn; ``cause`` says why (see the module docstring)."""

    def __init__(self, cause: str, detail: str = "", code: str | None = None):
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail
        self.code = code  # the worker's error code when cause == "worker_error"


class EscalationClient:
    """Streams escalated turns over one NATS connection (the site's leaf node)."""

    def __init__(self, nc: NATS, edge_id: str, site: str, *, model_class: str = "large",
                 idle_timeout_s: float = 2.0):
        self.nc = nc
        self.edge_id = edge_id
        self.site = site
        self.model_class = subjects.token(model_class, "model class")
        self.idle_timeout_s = idle_timeout_s
        self._prefix = nc.new_inbox()
        self._sub = None
        self._streams: dict[str, asyncio.Queue[Msg]] = {}
        self._sub_lock = asyncio.Lock()

    async def _ensure_subscribed(self) -> None:
        if self._sub is None:
            async with self._sub_lock:
                if self._sub is None:
                    self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        queue = self._streams.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait(msg)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def cancel(self, request: EscalationRequest, reason: str = "abort") -> None:
        """Tell the worker to stop this turn's generation (best effort: never raises)."""
        if not request.cancel_subject:
            return
        with contextlib.suppress(Exception):
            await self.nc.publish(request.cancel_subject, encode(CancelRequest(request.turn_id, reason)))

    async def start(self, request: EscalationRequest, *, first_token_timeout: float,
                    model_class: str | None = None) -> EscalatedAnswer:
        """Send the request and wait for its first text (or tool call, or final chunk).

        EscalationFailed here means nothing was said yet: answer locally."""
        chunks = self.stream(request, first_token_timeout=first_token_timeout, model_class=model_class)
        try:
            while True:
                first = await chunks.__anext__()
                if first.text or first.tool_calls or first.final:
                    return EscalatedAnswer(chunks, first)
        except StopAsyncIteration:
            raise EscalationFailed("bad_reply", "the stream ended without a final chunk") from None
        except BaseException:
            await chunks.aclose()
            raise

    async def stream(self, request: EscalationRequest, *, first_token_timeout: float,
                     model_class: str | None = None) -> AsyncIterator[ReplyChunk]:
        """Yield the reply chunks in order, ending with the final one; EscalationFailed on any failure."""
        request.edge_id = request.edge_id or self.edge_id
        request.assign_site(self.site)
        if request.remaining_ms() <= 0:
            raise EscalationFailed("deadline", "the deadline passed before sending")
        if not self.nc.is_connected:
            raise EscalationFailed("disconnected", "no NATS connection")
        try:
            payload = encode(request)
        except WireError as exc:
            raise EscalationFailed("bad_request", str(exc)) from None
        subject = subjects.escalate(model_class or self.model_class)
        token = new_id()
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._streams[token] = queue
        checker = ReplyStreamChecker()
        finished = False
        cancel_reason = "abort"
        got_text = False
        try:
            await self._ensure_subscribed()
            await self.nc.publish(subject, payload, reply=f"{self._prefix}.{token}")
            while True:
                wait = first_token_timeout if not got_text else self.idle_timeout_s
                cause = "first_token_timeout" if not got_text else "idle_timeout"
                left = request.remaining_ms() / 1000.0
                if left < wait:
                    wait, cause = max(left, 0.0), "deadline"
                try:
                    msg = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    cancel_reason = cause
                    raise EscalationFailed(cause, f"no reply chunk within {wait * 1000:.0f} ms") from None
                if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
                    finished = True  # nobody got the request: nothing to cancel
                    raise EscalationFailed("no_responders", f"no worker subscribed to {subject}")
                try:
                    chunk = checker.feed(decode(msg.data, ReplyChunk))
                except StreamError as exc:
                    cancel_reason = "gap"
                    raise EscalationFailed("gap", str(exc)) from None
                except WireError as exc:
                    cancel_reason = "bad_reply"
                    log_event(log, "bad reply chunk", logging.WARNING, error=str(exc))
                    raise EscalationFailed("bad_reply", str(exc)) from None
                if chunk.error:
                    finished = True
                    raise EscalationFailed("worker_error", chunk.detail or chunk.error, code=chunk.error)
                got_text = got_text or bool(chunk.text) or bool(chunk.tool_calls)
                finished = chunk.final
                yield chunk
                if finished:
                    return
        finally:
            self._streams.pop(token, None)
            if not finished:
                await self.cancel(request, cancel_reason)


class EscalatedAnswer:
    """An escalation whose first text has arrived: iterate for the text deltas (first one included).

    Made by :meth:`EscalationClient.start`, which raises EscalationFailed *before*
    any text exists, so the caller can still answer locally with nothing spoken.
    A failure later (worker died mid-answer) raises EscalationFailed from the
    iteration; ``text`` then holds what was already received, so the caller can
    finish the answer locally. ``final`` is the last chunk once the stream ended.
    """

    def __init__(self, chunks: AsyncIterator[ReplyChunk], first: ReplyChunk):
        self._chunks = chunks
        self.first = first
        self.parts: list[str] = [first.text] if first.text else []
        self.tool_calls = list(first.tool_calls)
        self.final: ReplyChunk | None = first if first.final else None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            if self.first.text:
                yield self.first.text
            if self.final is not None:
                return
            async for chunk in self._chunks:
                self.tool_calls += chunk.tool_calls
                if chunk.final:
                    self.final = chunk
                if chunk.text:
                    self.parts.append(chunk.text)
                    yield chunk.text
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the escalation (sends the cancel if it has not finished)."""
        await self._chunks.aclose()


@dataclass
class CloudHealth:
    """What the edge knows of the cloud tier for one model class, from worker heartbeats."""

    workers: int  # workers heard from recently
    free_slots: int  # sum of (max_inflight - inflight) over them
    backends_up: int
    link_up: bool = True  # the NATS connection answered its last probe

    @property
    def available(self) -> bool:
        return self.link_up and self.workers > 0 and self.backends_up > 0 and self.free_slots > 0


class CloudHealthMonitor:
    """Follows worker heartbeats so the escalation policy can skip a cloud that is down or full
    without spending a request (and its first-token timeout) to find out.

    Heartbeats alone notice a frozen leaf node only once they go stale (seconds); a
    round trip to the leaf (``flush``: PING/PONG) every ``probe_interval_s`` that
    must come back within ``probe_timeout_s`` marks the link down within about
    ``probe_interval_s + probe_timeout_s``, and so does a dropped connection."""

    def __init__(self, nc: NATS, model_class: str = "large", stale_after_s: float = 6.0,
                 clock: Callable[[], float] = time.monotonic, probe_interval_s: float = 0.5,
                 probe_timeout_s: float = 0.75):
        self.nc = nc
        self.model_class = subjects.token(model_class, "model class")
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.link_up = True
        self._last: dict[str, tuple[float, WorkerHeartbeat]] = {}
        self._sub = None
        self._probe: asyncio.Task | None = None
        self._probing = False

    async def start(self) -> None:
        self._probing = True
        self._sub = await self.nc.subscribe(subjects.heartbeat_class(self.model_class), cb=self._on_beat)
        self._probe = asyncio.create_task(self._probe_loop(), name="cloud-link-probe")

    async def _probe_loop(self) -> None:
        while self._probing:
            ok = False
            if self.nc.is_connected:
                try:
                    await self.nc.flush(timeout=self.probe_timeout_s)
                    ok = True
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - timeout, connection closed or reconnecting: the link is down
                    ok = False
            if ok != self.link_up:
                log_event(log, "cloud link " + ("up" if ok else "down"), logging.INFO if ok else logging.WARNING,
                          model_class=self.model_class)
                self.link_up = ok
            await asyncio.sleep(self.probe_interval_s)

    async def stop(self) -> None:
        self._probing = False
        probe, self._probe = self._probe, None
        # Python 3.11's wait_for (inside nats-py's flush) can swallow a cancellation that lands as the PONG
        # arrives: cancel until the task is really done (the flag ends the loop at its next turn anyway).
        while probe is not None and not probe.done():
            probe.cancel()
            await asyncio.wait({probe}, timeout=1.0)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data, WorkerHeartbeat)
        except WireError as exc:
            log_event(log, "bad worker heartbeat", logging.WARNING, error=str(exc), subject=msg.subject)
            return
        self._last[beat.worker] = (self.clock(), beat)

    def snapshot(self) -> CloudHealth:
        now = self.clock()
        fresh = [b for seen, b in self._last.values() if now - seen <= self.stale_after_s]
        link = self.link_up and self.nc.is_connected
        return CloudHealth(len(fresh), sum(max(0, b.max_inflight - b.inflight) for b in fresh),
                           sum(b.backends_up for b in fresh), link)
