"""The TTS pool serves the sentence needed soonest: a new turn's first sentence is not queued behind other
answers' later sentences (edge/deadline_pool.py, edge/stages/speaking.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edge.deadline_pool import DeadlinePool
from edge.device.output import PacedOutput
from edge.pipeline.events import TurnStarted
from edge.pipeline.observers import TurnEvents
from edge.stages.speaking import SYNTH_MARGIN_S, Speaking
from tests.fixtures_edge import FakeEngine, SentSocket


async def test_queued_jobs_run_earliest_deadline_first_and_a_cancelled_one_never_runs():
    pool = DeadlinePool(1, "test")
    gate, ran = threading.Event(), []
    try:
        blocker = pool.run(None, gate.wait)  # the only worker is busy: everything else queues
        blocker_task = asyncio.ensure_future(blocker)
        await asyncio.sleep(0.05)
        now = time.monotonic()
        jobs = {name: asyncio.ensure_future(pool.run(now + offset, ran.append, name))
                for name, offset in (("later", 3.0), ("dropped", 0.5), ("now", 0.0), ("soon", 1.0))}
        await asyncio.sleep(0.05)
        jobs["dropped"].cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the pool's future on the loop's next rounds
        gate.set()
        await asyncio.gather(blocker_task, jobs["later"], jobs["now"], jobs["soon"])
        assert ran == ["now", "soon", "later"]
    finally:
        pool.shutdown()


async def test_a_failing_job_raises_in_the_caller_and_shutdown_drops_what_is_queued():
    pool = DeadlinePool(1, "test")
    with pytest.raises(ZeroDivisionError):
        await pool.run(None, lambda: 1 / 0)
    gate = threading.Event()
    busy = asyncio.ensure_future(pool.run(None, gate.wait))
    await asyncio.sleep(0.05)
    queued = pool.submit(None, lambda: "never")
    pool.shutdown()
    gate.set()
    await busy
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(None, lambda: None)


class _Sentences:
    answered_by = "edge"
    reason = ""

    def __init__(self, text: str):
        self.text = text

    async def stream(self):
        yield self.text

    async def aclose(self) -> None:
        pass


async def test_an_answers_first_sentence_is_needed_now_and_the_later_ones_once_the_audio_ahead_has_played():
    engine = FakeEngine()  # every sentence: 600 ms of tone
    out_events = TurnEvents("t", [])
    out_events.emit(TurnStarted(kind="voice", origin_ms=time.monotonic() * 1000))
    speaking = Speaking(engine.tts, "Sorry.")

    out = PacedOutput(SentSocket(), 1, engine.audio.downstream_sample_rate, engine.audio.frame_ms, lead_ms=240)
    t0 = time.monotonic()
    await speaking.run(_Sentences("One two three. Four five six. Seven eight nine. Ten eleven twelve."), out,
                       out_events, "en")
    asked = engine.tts.asked
    assert [text for text, _ in asked][0] == "One two three."
    assert asked[0][1] is None  # the first sentence: now
    deadlines = [at for _, at in asked[1:]]
    assert all(at is not None for at in deadlines) and deadlines == sorted(deadlines)
    # each later one: when the 600 ms clips ahead of it have played, less the synthesis margin
    assert deadlines[-1] - deadlines[0] == pytest.approx(2 * 0.6, abs=0.05)
    assert deadlines[0] >= t0 + 0.6 - SYNTH_MARGIN_S
