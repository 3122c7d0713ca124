"""A frozen leaf node (kill -STOP) is noticed from the link itself: the edge's CloudHealthMonitor marks
the cloud unhealthy within a couple of probe periods, long before heartbeats go stale, and healthy
again once the leaf runs. Real hub + leaf nats-servers; heartbeats as a worker sends them."""

from __future__ import annotations

import asyncio
import signal

from edge.escalation import CloudHealthMonitor
from shared import subjects
from shared.nats_conn import connect_nats
from shared.wire import WorkerHeartbeat, encode, epoch_ms


async def _until(predicate, within_s: float) -> bool:
    for _ in range(int(within_s / 0.1)):
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


async def test_frozen_leaf_marks_the_cloud_unhealthy_then_healthy_again(nats_hub, nats_leaf, nats_connect):
    worker_nc = await nats_connect(nats_hub.url)

    async def beat() -> None:
        while True:
            hb = WorkerHeartbeat("w1", "large", 0, 4, 1, 1, epoch_ms())
            await worker_nc.publish(subjects.heartbeat("large", "w1"), encode(hb))
            await asyncio.sleep(0.5)

    beats = asyncio.create_task(beat())
    changes: list[bool] = []
    edge_nc = await connect_nats(nats_leaf.url, "edge-test", on_change=changes.append)
    # heartbeats would stay fresh for 60 s: only the link probe can notice the freeze
    monitor = CloudHealthMonitor(edge_nc, "large", stale_after_s=60.0)
    await monitor.start()
    try:
        assert await _until(lambda: monitor.snapshot().available, 15.0)
        nats_leaf.proc.send_signal(signal.SIGSTOP)
        try:
            # the probe answers within ~1.25 s; 10 s is a generous bound for a loaded machine
            assert await _until(lambda: not monitor.snapshot().available, 10.0)
            assert monitor.snapshot().workers == 1  # the heartbeat is still fresh: the link said it
            assert not monitor.snapshot().link_up
        finally:
            nats_leaf.proc.send_signal(signal.SIGCONT)
        assert await _until(lambda: monitor.snapshot().available, 20.0)
    finally:
        beats.cancel()
        await monitor.stop()
        await edge_nc.close()
