"""The event loop's watch: a lag is measured and logged, and a loop stuck in a call is logged with that call."""

from __future__ import annotations

import asyncio
import logging
import time

from edge.loop_watch import LoopWatch


def _blocking_call_on_the_loop() -> None:
    time.sleep(0.5)  # what a CPU-heavy call run on the event loop by mistake does to every session


async def test_a_stuck_loop_is_logged_with_the_call_that_holds_it(caplog):
    caplog.set_level(logging.WARNING, logger="edge.loop_watch")
    watch = LoopWatch(probe_s=0.05, warn_s=0.1, stuck_s=0.1)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.2)  # a healthy loop: nothing logged
    assert not caplog.records
    _blocking_call_on_the_loop()
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    fields = {r.getMessage(): getattr(r, "fields", {}) for r in caplog.records}
    assert fields["event loop stalled"]["lag_ms"] >= 300
    stuck = fields["event loop stuck"]
    assert 400 <= stuck["ms"] < 2000 and any("_blocking_call_on_the_loop" in line for line in stuck["stack"])
