"""Escalation end to end over real NATS (hub + leaf) with real workers and a real llama.cpp server.

The edge client connects to the leaf, workers to the hub, as in a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio

from cloud import metrics
from cloud.backends import BackendPool
from cloud.worker import Worker
from edge.escalation import CloudHealthMonitor, EscalationClient, EscalationFailed
from shared import subjects
from shared.topology import BackendSpec
from shared.wire import EscalationRequest, ReplyChunk, WorkerHeartbeat, decode, epoch_ms, new_id
from tests.fixtures_nats import wait_linked

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Explain in detail how rainbows form after a storm."


def _collector(into: list | asyncio.Queue, cls=ReplyChunk):
    """A NATS callback appending (or queueing) each message decoded as ``cls``."""
    async def cb(msg) -> None:
        item = decode(msg.data, cls)
        into.put_nowait(item) if isinstance(into, asyncio.Queue) else into.append(item)
    return cb


def _request(question: str = QUESTION, **kw) -> EscalationRequest:
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 0.0)
    return EscalationRequest(new_id(), "dev-1", [{"role": "user", "content": question}], **kw)


@pytest_asyncio.fixture
async def start_worker(llama_server, nats_connect):
    """``await start_worker(url, name, max_inflight=...)``: an in-process worker, stopped at teardown."""
    workers: list[Worker] = []

    async def start(url: str, name: str = "w1", max_inflight: int = 4) -> Worker:
        nc = await nats_connect(url)
        spec = BackendSpec(name="llama", kind="llamacpp", url=llama_server.base_url, model=llama_server.alias,
                           max_concurrency=4)
        pool = BackendPool.from_specs([spec])
        await pool.start()
        worker = Worker(nc, name, "large", pool, max_inflight=max_inflight, heartbeat_s=0.5)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for w in workers:
        await w.stop(drain_timeout_s=2)
        await w.pool.stop()


async def _edge(nats_connect, leaf_url: str, hub_url: str, **kw) -> EscalationClient:
    await wait_linked(leaf_url, hub_url)  # the workers' interest has crossed the leaf link
    return EscalationClient(await nats_connect(leaf_url), "edge-1", "site-1", **kw)


async def _collect(client: EscalationClient, req: EscalationRequest, timeout: float = 30.0) -> list[ReplyChunk]:
    return [c async for c in client.stream(req, first_token_timeout=timeout)]


async def test_streamed_reply_is_ordered_and_complete(nats_hub, nats_leaf, nats_connect, start_worker):
    await start_worker(nats_hub.url)
    client = await _edge(nats_connect, nats_leaf.url, nats_hub.url)
    spy = await nats_connect(nats_hub.url)  # what the worker published, seen at the hub
    published: list[ReplyChunk] = []
    await spy.subscribe("_INBOX.>", cb=_collector(published))
    await spy.flush()
    req = _request()
    chunks = await _collect(client, req)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].final and chunks[-1].finish_reason in ("stop", "length") and not chunks[-1].error
    assert all(not c.final for c in chunks[:-1]) and len(chunks) > 3
    assert chunks[-1].usage["completion_tokens"] == len(chunks) - 1
    assert "".join(c.text for c in chunks).strip()
    assert req.edge_id == "edge-1" and req.site == "site-1"
    await spy.flush()
    assert chunks == published, "the edge got exactly what the worker sent, in order"


async def test_queue_group_balances_across_two_workers(nats_hub, nats_leaf, nats_connect, start_worker):
    w1 = await start_worker(nats_hub.url, "w1")
    w2 = await start_worker(nats_hub.url, "w2")
    client = await _edge(nats_connect, nats_leaf.url, nats_hub.url)
    served: list[str] = []
    for i in range(12):
        chunks = await _collect(client, _request(f"Say the number {i}.", max_tokens=2))
        assert chunks[-1].final and not chunks[-1].error
        served.append(chunks[-1].worker)
    counts = {w: served.count(w) for w in ("w1", "w2")}
    assert sum(counts.values()) == 12, "each request is served by exactly one worker"
    assert counts["w1"] > 0 and counts["w2"] > 0, f"queue group did not spread load: {counts}"
    assert w1.inflight == w2.inflight == 0


async def test_cancel_on_abort_stops_the_worker_within_one_token(nats_hub, nats_leaf, nats_connect, start_worker):
    worker = await start_worker(nats_hub.url)
    client = await _edge(nats_connect, nats_leaf.url, nats_hub.url)
    spy = await nats_connect(nats_hub.url)
    published: list[ReplyChunk] = []

    await spy.subscribe("_INBOX.>", cb=_collector(published))
    await spy.flush()
    req = _request(max_tokens=200)
    seen = 0
    async with contextlib.aclosing(client.stream(req, first_token_timeout=30)) as stream:
        async for chunk in stream:
            seen += 1
            if seen == 3:
                break  # the device aborted: leaving the stream sends the cancel
    cancelled = metrics.REQUESTS.labels(model_class="large", outcome="cancelled")
    before = cancelled._value.get()
    for _ in range(100):
        if worker.inflight == 0 and published and published[-1].final:
            break
        await asyncio.sleep(0.02)
    assert worker.inflight == 0
    assert published[-1].finish_reason == "cancelled"
    texts = [c for c in published if c.text]
    assert len(texts) <= seen + 1, f"worker produced {len(texts) - seen} tokens after the cancel"
    assert len(texts) < 50  # far from the 200 asked for
    assert cancelled._value.get() >= max(before, 1)


async def test_cancelling_the_turn_task_cancels_the_generation(nats_hub, nats_connect, start_worker):
    worker = await start_worker(nats_hub.url)
    client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "site-1")
    got = asyncio.Event()

    async def turn() -> None:
        async for _ in client.stream(_request(max_tokens=300), first_token_timeout=30):
            got.set()

    task = asyncio.create_task(turn())
    await asyncio.wait_for(got.wait(), 30)
    assert worker.inflight == 1
    task.cancel()  # e.g. the device disconnected
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if worker.inflight == 0:
            break
        await asyncio.sleep(0.02)
    assert worker.inflight == 0


async def test_deadline_fails_fast_before_and_during(nats_hub, nats_leaf, nats_connect, start_worker):
    worker = await start_worker(nats_hub.url)
    client = await _edge(nats_connect, nats_leaf.url, nats_hub.url)
    t0 = time.monotonic()
    with pytest.raises(EscalationFailed) as err:
        await _collect(client, _request(deadline=epoch_ms() - 1))
    assert err.value.cause == "deadline" and time.monotonic() - t0 < 0.5  # nothing was sent
    t0 = time.monotonic()
    with pytest.raises(EscalationFailed) as err:
        await _collect(client, _request(max_tokens=400, deadline=epoch_ms() + 400))
    elapsed = time.monotonic() - t0
    assert err.value.cause in ("deadline", "worker_error") and elapsed < 2.0, (err.value, elapsed)  # not 30 s
    for _ in range(50):
        if worker.inflight == 0:
            break
        await asyncio.sleep(0.02)
    assert worker.inflight == 0, "the worker kept generating past the deadline"


async def test_busy_worker_refuses_at_once(nats_hub, nats_leaf, nats_connect, start_worker):
    await start_worker(nats_hub.url, max_inflight=1)
    client = await _edge(nats_connect, nats_leaf.url, nats_hub.url)
    long = client.stream(_request(max_tokens=200), first_token_timeout=30)
    await long.__anext__()  # the only slot is taken
    t0 = time.monotonic()
    with pytest.raises(EscalationFailed) as err:
        await _collect(client, _request(max_tokens=4))
    assert err.value.cause == "worker_error" and err.value.code == "busy"
    assert time.monotonic() - t0 < 2.0  # refused at once, not after the 30 s first-token timeout
    await long.aclose()


async def test_no_worker_and_bad_request(nats_hub, nats_leaf, nats_connect, start_worker):
    client = await _edge(nats_connect, nats_leaf.url, nats_hub.url)
    t0 = time.monotonic()
    with pytest.raises(EscalationFailed) as err:
        await _collect(client, _request())
    assert err.value.cause == "no_responders" and time.monotonic() - t0 < 2.0  # not the 30 s timeout
    await start_worker(nats_hub.url)
    await wait_linked(nats_leaf.url, nats_hub.url)
    raw = await nats_connect(nats_leaf.url)
    reply = await raw.request(subjects.escalate("large"), b"\x93garbage", timeout=5)
    chunk = decode(reply.data, ReplyChunk)
    assert chunk.error == "bad_request" and "msgpack" in chunk.detail
    assert (await _collect(client, _request(max_tokens=3)))[-1].final  # the worker is still fine


async def test_worker_killed_mid_stream_fails_promptly(nats_hub, nats_leaf, nats_connect, llama_server):
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XZ_CFG__cloud__workers__0__backends__0__url": llama_server.base_url,
           "XZ_CFG__cloud__workers__0__backends__0__model": llama_server.alias}
    watcher = await nats_connect(nats_hub.url)
    beats: asyncio.Queue = asyncio.Queue()
    await watcher.subscribe(subjects.HEARTBEAT_ALL, cb=_collector(beats, WorkerHeartbeat))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloud", "worker", "--name", "worker-1", "--nats", nats_hub.url, "--no-cache",
        "--http-port", "0", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        beat = await asyncio.wait_for(beats.get(), 60)
        assert beat.worker == "worker-1" and beat.backends_up == 1
        client = await _edge(nats_connect, nats_leaf.url, nats_hub.url, idle_timeout_s=1.0)
        answer = await client.start(_request(max_tokens=300), first_token_timeout=30)
        assert answer.first.seq == 0 and answer.first.worker == "worker-1"
        proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EscalationFailed) as err:
            async for _ in answer:
                pass
        assert err.value.cause == "idle_timeout"
        assert answer.text.startswith(answer.first.text) and answer.final is None  # what to finish locally
        assert time.monotonic() - t0 < 3.0  # the 1 s idle timeout, not the 30 s first-token one
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_leaf_link_cut_fails_fast_then_recovers(nats_hub, nats_leaf, nats_connect, start_worker):
    await start_worker(nats_hub.url)
    client = await _edge(nats_connect, nats_leaf.url, nats_hub.url)
    assert (await _collect(client, _request(max_tokens=2)))[-1].final
    await nats_hub.stop()
    await asyncio.sleep(0.3)  # the leaf notices its link is gone
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(EscalationFailed) as err:
            await _collect(client, _request(max_tokens=2), timeout=10.0)
        assert err.value.cause == "no_responders" and time.monotonic() - t0 < 2.0
    await nats_hub.start()  # same ports, same store
    t0 = time.monotonic()
    while True:
        try:
            chunks = await _collect(client, _request(max_tokens=2), timeout=5.0)
            break
        except EscalationFailed as exc:
            assert exc.cause == "no_responders" and time.monotonic() - t0 < 20, exc
            await asyncio.sleep(0.2)
    assert chunks[-1].final and not chunks[-1].error


async def test_cloud_health_follows_worker_heartbeats(nats_hub, nats_leaf, nats_connect, start_worker):
    edge_nc = await nats_connect(nats_leaf.url)
    monitor = CloudHealthMonitor(edge_nc, "large", stale_after_s=1.2)
    await monitor.start()
    await wait_linked(nats_hub.url, nats_leaf.url)  # the edge's heartbeat interest reached the hub
    assert not monitor.snapshot().available
    worker = await start_worker(nats_hub.url, max_inflight=3)
    for _ in range(100):
        if monitor.snapshot().available:
            break
        await asyncio.sleep(0.05)
    health = monitor.snapshot()
    assert health.available and health.workers == 1 and health.free_slots == 3 and health.backends_up == 1
    await worker.stop()
    await asyncio.sleep(1.5)
    assert not monitor.snapshot().available
    await monitor.stop()


async def test_start_waits_for_first_text_then_streams_the_rest(nats_hub, nats_connect, start_worker):
    await start_worker(nats_hub.url)
    client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "site-1")
    answer = await client.start(_request(max_tokens=10), first_token_timeout=30)
    assert answer.first.text
    texts = [t async for t in answer]
    assert texts[0] == answer.first.text and "".join(texts) == answer.text
    assert answer.final is not None and answer.final.finish_reason in ("stop", "length")
    with pytest.raises(EscalationFailed) as err:  # nobody serves this class: fails before any text
        await client.start(_request(), first_token_timeout=30, model_class="huge")
    assert err.value.cause == "no_responders"
