"""A cloud worker: takes escalated turns from NATS and streams the model's answer back.

Workers of one model class subscribe ``xz.v1.escalate.<class>`` in one queue
group, so each request reaches exactly one of them and adding a worker adds
capacity with no configuration. For each request the worker streams
:class:`ReplyChunk` messages to the request's reply inbox as tokens arrive.

What keeps an edge from waiting on a worker that cannot help:
- at ``max_inflight`` the worker refuses at once with a ``busy`` error chunk
  (the edge then answers locally) instead of queueing;
- a passed deadline ends the generation with a ``deadline`` error;
- a cancel message (device abort) on the request's ``cancel_subject`` stops the
  generation within one token;
- a bad request or a backend failure becomes an error chunk, never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web
from cachetools import TTLCache
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud import metrics
from cloud.answer_cache import AnswerCache
from cloud.backends import BackendPool, NoBackendAvailable
from shared import subjects
from shared.chat import ChatError
from shared.log import log_event, turn_id_var
from shared.tool_calling import ToolCatalog
from shared.wire import (CancelRequest, EscalationRequest, ReplyChunk, WireError, WorkerHeartbeat, decode, encode,
                         epoch_ms)

log = logging.getLogger("cloud.worker")


class _Cancelled(Exception):
    """Raised inside a generation whose turn was cancelled by the edge."""


class Worker:
    """Serves one model class on one NATS connection with one backend pool."""

    def __init__(self, nc: NATS, name: str, model_class: str, pool: BackendPool, *, max_inflight: int = 8,
                 cache: AnswerCache | None = None, heartbeat_s: float = 2.0, sites: list[str] | None = None):
        """``sites``: listen for cancels per site (``cancel.<site>.*``), as a provisioned hub only
        forwards a site's cancels to subscriptions within its namespace; None: every namespace."""
        self.nc = nc
        self.cancel_subjects = [subjects.cancel_site(s) for s in sites] if sites else [subjects.CANCEL_ALL]
        self.name = subjects.token(name, "worker name")
        self.model_class = subjects.token(model_class, "model class")
        self.pool = pool
        self.max_inflight = max_inflight
        self.cache = cache
        self.heartbeat_s = heartbeat_s
        self._active: dict[str, asyncio.Task] = {}  # cancel subject -> generation task
        # cancel subjects asked for: also early cancels (the request is still on its way), kept a minute
        self._cancel_requested: TTLCache[str, float] = TTLCache(maxsize=1024, ttl=60.0, timer=time.monotonic)
        self._subs: list = []
        self._request_sub = None
        self._heartbeat_task: asyncio.Task | None = None
        self.launched: dict = {}  # backend name -> the supervised LlamaServer this worker started for it

    @property
    def inflight(self) -> int:
        return len(self._active)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._request_sub = await self.nc.subscribe(subjects.escalate(self.model_class),
                                                    queue=subjects.worker_queue(self.model_class),
                                                    cb=self._on_request)
        self._subs = [self._request_sub]
        for subject in self.cancel_subjects:
            self._subs.append(await self.nc.subscribe(subject, cb=self._on_cancel))
        await self.nc.flush()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        log_event(log, "worker serving", worker=self.name, model_class=self.model_class,
                  subject=subjects.escalate(self.model_class), max_inflight=self.max_inflight,
                  backends=[ep.name for ep in self.pool.endpoints], cache=self.cache is not None)

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking requests, let running generations finish (up to the timeout), then cancel the rest."""
        if self._request_sub is not None:
            with contextlib.suppress(Exception):
                await self._request_sub.unsubscribe()
            self._request_sub = None
        running = list(self._active.values())
        if running:
            log_event(log, "draining", worker=self.name, inflight=len(running))
            _, pending = await asyncio.wait(running, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for sub in self._subs[1:]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            self._heartbeat_task = None
        log_event(log, "worker stopped", worker=self.name)

    def health(self) -> dict:
        return {"worker": self.name, "model_class": self.model_class, "nats": self.nc.is_connected,
                "inflight": self.inflight, "max_inflight": self.max_inflight,
                "backends": {ep.name: {"healthy": ep.healthy, "breaker": ep.breaker.state.value,
                                       "inflight": ep.inflight} for ep in self.pool.endpoints},
                "cache": self.cache is not None,
                "launched": {name: server.status() for name, server in self.launched.items()}}

    # ------------------------------------------------------------ NATS handlers
    async def _reply(self, inbox: str, chunk: ReplyChunk) -> None:
        chunk.worker = self.name
        await self.nc.publish(inbox, encode(chunk))

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            log_event(log, "request without reply inbox dropped", logging.WARNING, subject=msg.subject)
            return
        try:
            req = decode(msg.data, EscalationRequest)
            req.validate()
        except WireError as exc:
            metrics.REQUESTS.labels(model_class=self.model_class, outcome="bad_request").inc()
            log_event(log, "bad escalation request", logging.WARNING, error=str(exc), bytes=len(msg.data))
            await self._reply(msg.reply, ReplyChunk(0, error="bad_request", detail=str(exc)[:500]))
            return
        gen = req.generation_id
        if self.inflight >= self.max_inflight:
            metrics.REJECTED.inc()
            metrics.REQUESTS.labels(model_class=self.model_class, outcome="busy").inc()
            await self._reply(msg.reply, ReplyChunk(0, error="busy", generation_id=gen,
                                                    detail=f"{self.name} at max_inflight={self.max_inflight}"))
            return
        if req.remaining_ms() <= 0:
            metrics.REQUESTS.labels(model_class=self.model_class, outcome="deadline").inc()
            await self._reply(msg.reply, ReplyChunk(0, error="deadline", generation_id=gen,
                                                    detail="deadline passed before the request arrived"))
            return
        key = req.cancel_subject or f"{subjects.CANCEL_PREFIX}.{req.site or subjects.NO_SITE}.{req.turn_id}"
        if self._cancel_requested.pop(key, None) is not None:
            metrics.REQUESTS.labels(model_class=self.model_class, outcome="cancelled").inc()
            await self._reply(msg.reply, ReplyChunk(0, finish_reason="cancelled", generation_id=gen))
            return
        task = asyncio.create_task(self._serve(req, msg.reply, key))
        self._active[key] = task
        task.add_done_callback(lambda _t, k=key: self._active.pop(k, None))

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            reason = decode(msg.data, CancelRequest).reason if msg.data else "abort"
        except WireError as exc:
            log_event(log, "bad cancel message", logging.WARNING, error=str(exc), subject=msg.subject)
            reason = "abort"
        self._cancel_requested[msg.subject] = time.monotonic()
        task = self._active.get(msg.subject)
        if task is None:  # not ours, or not arrived yet: remembered briefly in case it is on its way
            return
        log_event(log, "cancel received", subject=msg.subject, reason=reason)
        task.cancel()

    # ------------------------------------------------------------ one generation
    async def _serve(self, req: EscalationRequest, inbox: str, key: str) -> None:
        """One generation; ``key`` is its cancel subject (a cancel from the edge vs the worker shutting down)."""
        turn_id_var.set(req.turn_id)
        metrics.INFLIGHT.inc()
        seq = 0
        outcome = "ok"
        started = time.monotonic()
        first = True

        async def send(**fields) -> None:
            nonlocal seq, first
            await self._reply(inbox, ReplyChunk(seq, generation_id=req.generation_id, **fields))
            seq += 1
            if first and fields.get("text"):
                first = False
                metrics.FIRST_TOKEN.observe(time.monotonic() - started)

        try:
            remaining = req.remaining_ms()
            async with asyncio.timeout(None if remaining == float("inf") else remaining / 1000.0):
                cacheable = self.cache is not None and not req.tools and not req.tool_calls
                cache_key = AnswerCache.key_for(req.messages, req.language, req.device_id) if cacheable else None
                vector = await self.cache.embed(cache_key.question) if cache_key else None
                if cache_key and vector is not None:
                    hit = self.cache.find(vector, cache_key.context)
                    if hit is not None:
                        outcome = "cache_hit"
                        await send(text=hit.answer)
                        await send(finish_reason="stop", usage={"completion_tokens": 0, "cache_hit": 1})
                        return
                answer: list[str] = []
                final: dict = {"finish_reason": "stop"}
                tools = ToolCatalog(req.tools, req.tool_examples) if req.tools else None
                async for ep, delta in self.pool.stream(req.chat_messages(), tools=tools,
                                                        max_tokens=req.max_tokens, temperature=req.temperature):
                    if delta.text:
                        answer.append(delta.text)
                        await send(text=delta.text)
                    if delta.finish_reason:
                        final = {"finish_reason": delta.finish_reason, "tool_calls": delta.tool_calls,
                                 "usage": delta.usage}
                if cache_key and vector is not None and final["finish_reason"] == "stop":
                    self.cache.put(cache_key.question, vector, "".join(answer), cache_key.context)  # before the edge asks again
                await send(**final)
        except TimeoutError:
            outcome = "deadline"
            await self._send_error(send, "deadline", "deadline passed during generation")
        except asyncio.CancelledError:
            if self._cancel_requested.pop(key, None) is None:  # worker shutdown, not the edge
                outcome = "shutdown"
                await self._send_error(send, "internal", "worker shutting down")
                raise
            outcome = "cancelled"
            with contextlib.suppress(Exception):
                await send(finish_reason="cancelled")
        except NoBackendAvailable as exc:
            outcome = "no_backend"
            await self._send_error(send, "backend", str(exc))
        except ChatError as exc:
            outcome = "backend_error"
            await self._send_error(send, "backend" if exc.retryable else "bad_request", str(exc))
        except Exception as exc:  # one broken request must not take the worker down
            outcome = "error"
            log.exception("generation failed")
            await self._send_error(send, "internal", f"{type(exc).__name__}: {exc}")
        finally:
            metrics.INFLIGHT.dec()
            metrics.REQUESTS.labels(model_class=self.model_class, outcome=outcome).inc()
            log_event(log, "escalation served", outcome=outcome, chunks=seq, edge=req.edge_id, site=req.site,
                      reason=req.reason, ms=round((time.monotonic() - started) * 1000, 1))

    @staticmethod
    async def _send_error(send, code: str, detail: str) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone; the edge times out then
            await send(error=code, detail=detail[:500])

    # ------------------------------------------------------------ health
    async def _heartbeat_loop(self) -> None:
        subject = subjects.heartbeat(self.model_class, self.name)
        while True:
            beat = WorkerHeartbeat(self.name, self.model_class, self.inflight, self.max_inflight,
                                   self.pool.up_count(), len(self.pool.endpoints), epoch_ms())
            with contextlib.suppress(Exception):
                await self.nc.publish(subject, encode(beat))
            await asyncio.sleep(self.heartbeat_s)


async def serve_http(worker: Worker, host: str, port: int) -> web.AppRunner:
    """``/metrics`` (Prometheus) and ``/health`` (JSON; 503 when NATS is down or no backend is up)."""

    async def metrics_handler(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(_request: web.Request) -> web.Response:
        body = worker.health()
        ok = body["nats"] and worker.pool.up_count() > 0
        return web.Response(text=json.dumps(body), status=200 if ok else 503, content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/health", health_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

