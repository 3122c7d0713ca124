"""A worker's model endpoints: weighted choice, per-endpoint concurrency limits, health checks, breakers.

A worker fronts several OpenAI-compatible endpoints (vLLM replicas, an Ollama
box, a llama.cpp server). Each request goes to one endpoint picked by weight
among those that are healthy, whose breaker lets requests through, and that are
below their concurrency limit. If an endpoint fails before it produced any
text, the request moves to another one, so one bad replica costs no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import AsyncIterator

from cloud import metrics
from cloud.breaker import CircuitBreaker
from shared.chat import ChatClient, ChatDelta, ChatError, build_chat_client
from shared.log import log_event
from shared.tool_calling import ToolCaller, ToolSet, caller_for
from shared.topology import BackendSpec

log = logging.getLogger("cloud.backends")


class NoBackendAvailable(Exception):
    """Every endpoint is unhealthy, open or full."""


@dataclass
class Endpoint:
    spec: BackendSpec
    client: ChatClient
    breaker: CircuitBreaker
    healthy: bool = True
    inflight: int = 0
    served: int = field(default=0)
    tool_caller: ToolCaller | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def full(self) -> bool:
        return self.inflight >= self.spec.max_concurrency

    def usable(self) -> bool:
        return self.healthy and not self.full and self.breaker.can_try()

    def generate(self, messages: list[dict], tools: ToolSet | None, *, max_tokens: int,
                 temperature: float) -> AsyncIterator[ChatDelta]:
        """One round: a plain stream, or through this endpoint's tool-calling strategy when tools are offered
        or the conversation has tool rounds (models without tool roles need them rewritten)."""
        if not tools and not any(m.get("role") == "tool" for m in messages):
            return self.client.stream(messages, max_tokens=max_tokens, temperature=temperature)
        if self.tool_caller is None:
            self.tool_caller = caller_for(self.client, self.spec.tool_calling, self.spec.kind)
        return self.tool_caller.step(messages, tools or None, max_tokens=max_tokens, temperature=temperature)


class BackendPool:
    """The endpoints of one worker. ``stream()`` is all the worker needs."""

    def __init__(self, endpoints: list[Endpoint], health_interval_s: float = 5.0, rng: random.Random | None = None):
        if not endpoints:
            raise ValueError("a backend pool needs at least one endpoint")
        self.endpoints = endpoints
        self.health_interval_s = health_interval_s
        self.rng = rng or random.Random()
        self._health_task: asyncio.Task | None = None
        for ep in endpoints:
            metrics.BACKEND_UP.labels(backend=ep.name).set(1)

    @classmethod
    def from_specs(cls, specs: list[BackendSpec], *, failure_threshold: int = 3, cooldown_s: float = 10.0,
                   request_timeout_s: float = 60.0, **kw) -> "BackendPool":
        endpoints = [Endpoint(s, build_chat_client(s, timeout=request_timeout_s),
                              CircuitBreaker(s.name, failure_threshold, cooldown_s)) for s in specs]
        return cls(endpoints, **kw)

    # ------------------------------------------------------------ choice
    def pick(self, exclude: set[str] | None = None) -> Endpoint | None:
        """A usable endpoint chosen by weight, or None."""
        candidates = [ep for ep in self.endpoints if ep.usable() and ep.name not in (exclude or ())]
        if not candidates:
            return None
        return self.rng.choices(candidates, weights=[ep.spec.weight for ep in candidates])[0]

    def up_count(self) -> int:
        return sum(1 for ep in self.endpoints if ep.healthy and ep.breaker.can_try())

    @contextlib.contextmanager
    def _claim(self, ep: Endpoint):
        ep.inflight += 1
        try:
            yield ep
        finally:
            ep.inflight -= 1

    # ------------------------------------------------------------ generation
    async def stream(self, messages: list[dict], *, tools: ToolSet | None = None, max_tokens: int,
                     temperature: float) -> AsyncIterator[tuple[Endpoint, ChatDelta]]:
        """Stream from one endpoint; fail over to another while nothing has been produced yet."""
        tried: set[str] = set()
        last_error: ChatError | None = None
        while True:
            ep = self.pick(exclude=tried)
            if ep is None or not ep.breaker.acquire():
                if last_error is not None:
                    raise last_error
                raise NoBackendAvailable("no backend endpoint is healthy, closed and below its limit")
            tried.add(ep.name)
            produced = False
            outcome = "release"
            try:
                with self._claim(ep):
                    async for delta in ep.generate(messages, tools, max_tokens=max_tokens,
                                                   temperature=temperature):
                        produced = True
                        yield ep, delta
                outcome = "success"
                ep.served += 1
                return
            except ChatError as exc:
                outcome = "failure" if exc.retryable else "success"  # a refused request is not the endpoint's fault
                log_event(log, "backend failed", logging.WARNING, backend=ep.name, error=str(exc), produced=produced)
                if produced or not exc.retryable:
                    raise
                last_error = exc
            finally:
                {"success": ep.breaker.record_success, "failure": ep.breaker.record_failure,
                 "release": ep.breaker.release}[outcome]()

    # ------------------------------------------------------------ health
    async def check_health(self) -> None:
        # An endpoint busy generating is probed by its streams (failures open its breaker);
        # single-threaded servers such as llama-cpp-python's do not answer probes while
        # generating, and that must not mark a working endpoint down.
        probed = [ep for ep in self.endpoints if ep.inflight == 0]
        results = await asyncio.gather(*(ep.client.health() for ep in probed))
        for ep, ok in zip(probed, results):
            self._set_health(ep, ok)

    def mark(self, name: str, healthy: bool) -> None:
        """Set an endpoint's health from outside the probes (its supervised server went down or came back)."""
        for ep in self.endpoints:
            if ep.name == name:
                self._set_health(ep, healthy)

    @staticmethod
    def _set_health(ep: Endpoint, ok: bool) -> None:
        if ok != ep.healthy:
            log_event(log, "backend health changed", logging.WARNING if not ok else logging.INFO,
                      backend=ep.name, healthy=ok)
        ep.healthy = ok
        metrics.BACKEND_UP.labels(backend=ep.name).set(1 if ok else 0)

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.health_interval_s)

    async def start(self) -> None:
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        for ep in self.endpoints:
            await ep.client.aclose()
