"""Backend pool and circuit breakers, against a real llama.cpp server and a real closed port."""

from __future__ import annotations

import asyncio
import random

import pytest

from cloud import metrics
from cloud.backends import BackendPool, NoBackendAvailable
from cloud.breaker import BreakerState, CircuitBreaker
from shared.chat import ChatClient, ChatError
from shared.nats_runtime import free_port
from shared.topology import BackendSpec

MESSAGES = [{"role": "user", "content": "Say hello."}]


def _dead(name: str = "dead", weight: float = 1.0) -> BackendSpec:
    return BackendSpec(name=name, url=f"http://127.0.0.1:{free_port()}/v1", model="none", weight=weight)


def _live(server, name: str = "live", weight: float = 1.0, max_concurrency: int = 4) -> BackendSpec:
    return BackendSpec(name=name, kind="llamacpp", url=server.base_url, model=server.alias, weight=weight,
                       max_concurrency=max_concurrency)


async def _run(pool: BackendPool, max_tokens: int = 3) -> tuple[str, str]:
    names, text = set(), ""
    async for ep, delta in pool.stream(MESSAGES, max_tokens=max_tokens, temperature=0.0):
        names.add(ep.name)
        text += delta.text
    assert len(names) == 1
    return names.pop(), text


def _open_gauge(name: str) -> float:
    return metrics.BREAKER_OPEN.labels(backend=name)._value.get()


async def test_breaker_opens_after_failures_and_half_opens_after_cooldown(llama_server):
    pool = BackendPool.from_specs([_dead("flaky")], failure_threshold=2, cooldown_s=0.4)
    ep = pool.endpoints[0]
    for _ in range(2):
        with pytest.raises(ChatError, match="cannot connect"):
            await _run(pool)
    assert ep.breaker.state is BreakerState.OPEN and _open_gauge("flaky") == 1
    with pytest.raises(NoBackendAvailable):  # refused without trying the endpoint
        await _run(pool)
    await asyncio.sleep(0.45)
    assert ep.breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(ChatError):  # the one trial fails: open again at once
        await _run(pool)
    assert ep.breaker.state is BreakerState.OPEN
    await asyncio.sleep(0.45)
    ep.client = ChatClient(llama_server.base_url, llama_server.alias)  # the endpoint came back
    assert (await _run(pool))[0] == "flaky"
    assert ep.breaker.state is BreakerState.CLOSED and _open_gauge("flaky") == 0
    await pool.stop()


def test_half_open_lets_one_trial_through():
    now = [0.0]
    breaker = CircuitBreaker("b", failure_threshold=1, cooldown_s=5, clock=lambda: now[0])
    breaker.record_failure()
    assert not breaker.acquire()
    now[0] = 5.0
    assert breaker.acquire() and not breaker.acquire()  # a second caller waits for the trial's outcome
    breaker.release()
    assert breaker.acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.acquire() and breaker.acquire()


async def test_failover_to_a_working_endpoint_before_any_text(llama_server):
    pool = BackendPool.from_specs([_dead("dead", weight=1000), _live(llama_server)], rng=random.Random(1))
    name, text = await _run(pool)
    assert name == "live" and text
    dead = pool.endpoints[0]
    assert dead.breaker.failures == 1 and pool.endpoints[1].served == 1
    await pool.stop()


async def test_weights_spread_requests(llama_server):
    pool = BackendPool.from_specs([_live(llama_server, "a", weight=3), _live(llama_server, "b", weight=1)],
                                  rng=random.Random(7))
    picks = [pool.pick().name for _ in range(400)]
    assert 0.65 < picks.count("a") / 400 < 0.85
    await pool.stop()


async def test_concurrency_limit_and_health_checks(llama_server):
    pool = BackendPool.from_specs([_live(llama_server, max_concurrency=1), _dead("down")])
    await pool.check_health()
    live, down = pool.endpoints
    assert live.healthy and not down.healthy
    assert metrics.BACKEND_UP.labels(backend="down")._value.get() == 0
    assert metrics.BACKEND_UP.labels(backend="live")._value.get() == 1
    assert pool.up_count() == 1
    stream = pool.stream(MESSAGES, max_tokens=50, temperature=0.0)
    await stream.__anext__()  # the live endpoint's only slot is taken
    assert live.full and pool.pick() is None
    with pytest.raises(NoBackendAvailable):
        await _run(pool)
    await stream.aclose()
    assert live.inflight == 0 and pool.pick() is live
    await pool.stop()
