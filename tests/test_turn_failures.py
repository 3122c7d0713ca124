"""A turn always ends: whatever breaks inside it, the device hears the cached apology and gets ``tts stop``,
the failure is logged and counted once, and the session serves the next turn.

The session, listening, pipeline, Opus framing and pacing are real; the models are the stand-ins of
tests/fixtures_edge.py (a local model that refuses connections or hangs, a voice that fails), plus one
turn against a real ChatClient pointed at a port nobody listens on. test_e2e_edge.py kills the real
llama.cpp server.
"""

from __future__ import annotations

import logging

import aiohttp
from prometheus_client import REGISTRY

from scripts.device_sim import DeviceSimulator
from shared.chat import ChatClient
from shared.nats_runtime import free_port
from tests.fixtures_edge import FakeEngine, tone

APOLOGY = "Sorry, something went wrong."


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def failures(code: str) -> float:
    return count("xz_edge_errors_total", kind=f"turn_{code}")


def error_turns(answered_by: str) -> float:
    return count("xz_edge_turns_total", answered_by=answered_by, outcome="error")


DEVICE = "02:00:00:00:fa:11"


async def _sim(edge) -> DeviceSimulator:
    sim = DeviceSimulator(edge.ws_url, edge.token(DEVICE), DEVICE)
    await sim.connect()
    return sim


def _failed_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "turn failed"]


async def _apology_then_normal_turn(edge, engine: FakeEngine, code: str, answered_by: str, caplog) -> None:
    before, before_turns = failures(code), error_turns(answered_by)
    sim = await _sim(edge)
    try:
        report = await sim.run_turn(tone(600))
        assert report.stt and report.reply == APOLOGY and report.frames > 0 and report.tts_stop, report.summary()
        stops = [m for m in report.messages if m.get("type") == "tts" and m.get("state") == "stop"]
        assert len(stops) == 1
        assert failures(code) == before + 1 and error_turns(answered_by) == before_turns + 1  # counted once
        assert len(_failed_lines(caplog)) == 1  # logged once
        engine.fail_turns = engine.stall_turns = False
        engine.tts.fail = False
        again = await sim.run_turn(tone(900))  # the session goes on
        assert again.reply == "First sentence. Second sentence." and again.tts_stop
        assert engine.results[-1].outcome == "ok"
    finally:
        await sim.close()


async def test_local_model_down_is_an_apology_and_the_next_turn_works(edge_server, fake_engine, caplog):
    fake_engine.fail_turns = True
    edge = await edge_server(fake_engine)
    await _apology_then_normal_turn(edge, fake_engine, "local_failed", "edge", caplog)
    assert fake_engine.results[0].outcome == "error"


async def test_local_model_stall_is_an_apology(edge_server, caplog):
    engine = FakeEngine(stall_turns=True, edge={"llm": {"stall_timeout_ms": 300}})
    edge = await edge_server(engine)
    await _apology_then_normal_turn(edge, engine, "stall", "edge", caplog)


async def test_tts_failure_ends_with_tts_stop_counted_once(edge_server, fake_engine, caplog):
    fake_engine.tts.fail = True
    edge = await edge_server(fake_engine)
    await _apology_then_normal_turn(edge, fake_engine, "tts_failed", "edge", caplog)


async def test_real_client_on_a_dead_port_is_an_apology(edge_server, fake_engine, caplog):
    real = ChatClient(f"http://127.0.0.1:{free_port()}/v1", "nobody-home", connect_timeout=2.0)
    fake_engine.pipeline.answering.llm = real  # the engine's own client type, nothing listening
    edge = await edge_server(fake_engine)
    before = failures("local_failed")
    sim = await _sim(edge)
    try:
        report = await sim.run_turn(tone(600))
        # connecting times out after 2 s: "One moment." (the hold phrase) may come first
        assert report.reply.endswith(APOLOGY) and report.tts_stop and report.frames > 0, report.summary()
        assert failures("local_failed") == before + 1
        assert not fake_engine.pipeline.answering.health.ok  # /health's llm component reads this
        fake_engine.pipeline.answering.llm = fake_engine.llm
        again = await sim.run_turn(tone(600))
        assert again.reply == "First sentence. Second sentence." and fake_engine.pipeline.answering.health.ok
    finally:
        await sim.close()
        await real.aclose()


async def test_health_is_503_while_the_edge_cannot_answer(edge_server, fake_engine):
    state = {"can_answer": True}
    fake_engine.health = lambda: {"ready": True, "can_answer": state["can_answer"],
                                  "components": {"llm": "up" if state["can_answer"] else "down"}}
    edge = await edge_server(fake_engine)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge.base_url}/health") as resp:
            assert resp.status == 200 and (await resp.json())["components"]["llm"] == "up"
        state["can_answer"] = False
        async with http.get(f"{edge.base_url}/health") as resp:
            assert resp.status == 503 and (await resp.json())["components"]["llm"] == "down"


async def _apology_after_the_first_sentence(edge, engine: FakeEngine, caplog) -> None:
    """The firmware goes back to listening at ``tts stop``: the apology must come before it, not after."""
    sim = await _sim(edge)
    try:
        report = await sim.run_turn(tone(600))
        states = [m.get("state") for m in report.messages if m.get("type") == "tts"]
        assert states.count("start") == 1 and states.count("stop") == 1 and states[-1] == "stop", states
        assert report.reply.startswith("First sentence.") and report.reply.endswith(APOLOGY), report.reply
        assert len(_failed_lines(caplog)) == 1
        engine.break_midway, engine.trickle_s = False, 0.0
        again = await sim.run_turn(tone(900))
        assert again.reply == "First sentence. Second sentence." and again.tts_stop
    finally:
        await sim.close()


async def test_failure_mid_answer_apologizes_in_the_same_tts_session(edge_server, fake_engine, caplog):
    fake_engine.break_midway = True
    await _apology_after_the_first_sentence(await edge_server(fake_engine), fake_engine, caplog)


async def test_an_answer_trickling_past_the_deadline_is_cut_with_the_apology(edge_server, caplog):
    """A word every 0.2 s never trips the 5 s stall watchdog; the turn's deadline (1.5 s) still ends it."""
    engine = FakeEngine(trickle_s=0.2, edge={"llm": {"stall_timeout_ms": 5000}, "session": {"answer_deadline_s": 1.5}})
    edge = await edge_server(engine)
    before = failures("deadline")
    await _apology_after_the_first_sentence(edge, engine, caplog)
    assert failures("deadline") == before + 1 and engine.results[0].outcome == "error"


async def test_a_stall_behind_other_streaming_answers_does_not_mark_the_local_model_down():
    """llama-cpp-python's server answers one request at a time: a request queued 20 s behind others that keep
    streaming is overload (that turn fails), not a hung model (which sends every turn to the cloud)."""
    import asyncio

    import pytest

    from edge.pipeline.errors import AnswerFailed
    from edge.stages.answering.local import LocalHealth, guarded

    async def steady():
        for i in range(20):
            await asyncio.sleep(0.05)
            yield i

    async def never():
        await asyncio.Event().wait()
        yield 0

    async def drain(items):
        return [i async for i in items]

    health = LocalHealth()
    busy = asyncio.create_task(drain(guarded(steady(), 5.0, "local model", health)))
    with pytest.raises(AnswerFailed, match="queued behind other answers"):
        await drain(guarded(never(), 0.3, "local model", health))
    assert health.ok  # the other answer kept streaming: still up
    assert len(await busy) == 20
    await asyncio.sleep(0.35)
    with pytest.raises(AnswerFailed, match="nothing for 0.3s$"):  # nobody streams: a hung model
        await drain(guarded(never(), 0.3, "local model", health))
    assert not health.ok


async def test_a_slow_first_token_with_nothing_else_streaming_is_waited_for_not_shed():
    """The queue timeout is for a queue: a model slow to start on its own (a long prompt) gets the stall watchdog's
    time, and its stream is not restarted in between."""
    import asyncio

    from edge.stages.answering.local import LocalHealth, guarded

    async def slow_first():
        await asyncio.sleep(0.5)
        for i in range(3):
            yield i

    assert [i async for i in guarded(slow_first(), 5.0, "local model", LocalHealth(), queue_s=0.2)] == [0, 1, 2]


async def test_a_turn_queued_too_long_behind_other_answers_is_shed_with_the_busy_phrase(edge_server):
    """No first token within edge.llm.queue_timeout_ms while other local answers stream: the busy phrase and
    tts stop (outcome shed, counted as a local_queue shed), not a 20 s wait and the apology; the model is not
    marked down, and once the queue moves the next turn is answered."""
    import asyncio

    engine = FakeEngine(llm_gate=asyncio.Event(), edge={"llm": {"queue_timeout_ms": 300}})
    edge = await edge_server(engine)

    async def others_streaming():  # other devices' answers, streaming from the same local model meanwhile
        while True:
            engine.llm_health.streamed()
            await asyncio.sleep(0.05)

    others = asyncio.create_task(others_streaming())
    before = count("xz_edge_shed_turns_total", limit="local_queue")
    sim = await _sim(edge)
    try:
        report = await sim.run_turn(tone(600))
        assert report.reply == "I'm busy, one moment, please ask again." and report.tts_stop, report.summary()
        assert engine.results[-1].outcome == "shed" and engine.llm_health.ok
        assert count("xz_edge_shed_turns_total", limit="local_queue") == before + 1
        others.cancel()
        engine.llm_gate.set()
        again = await sim.run_turn(tone(900))
        assert again.reply == "First sentence. Second sentence." and again.tts_stop
    finally:
        others.cancel()
        await sim.close()


async def test_a_cloud_failing_after_the_lead_in_falls_back_without_saying_it_twice():
    """The cloud's lead-in plays while it is awaited; a cloud that then fails is finished by the local answer,
    the lead-in said once (and a turn without lead-in gets none)."""
    import asyncio

    from edge.escalation import EscalationFailed
    from edge.stages.answering.fallback import WithFallback
    from edge.stages.answering.phrase import PhraseAnswer

    class FailingCloud:
        def __init__(self, after_s: float):
            self.after_s = after_s

        async def start(self):
            await asyncio.sleep(self.after_s)
            raise EscalationFailed("unavailable", "stand-in: no worker")

        async def aclose(self):
            return None

    async def texts(lead_in, after_s):
        answer = WithFallback(FailingCloud(after_s), lambda: PhraseAnswer("Local answer."), lead_in, 0.05, "test")
        said = [t async for t in answer.stream()]
        return said, answer

    said, answer = await texts("One moment, let me think.", 0.2)  # fails after the lead-in played
    assert said == ["One moment, let me think. ", "Local answer."] and answer.answered_by == "edge"
    assert answer.lead_in_said == "One moment, let me think."
    said, _ = await texts("One moment, let me think.", 0.0)  # fails at once: the lead-in, then the local answer
    assert said == ["One moment, let me think. ", "Local answer."]
    said, answer = await texts(None, 0.2)  # no lead-in configured
    assert said == ["Local answer."] and answer.lead_in_said == ""


async def test_the_lead_in_is_said_at_once_when_the_cloud_has_been_slower_than_its_window():
    """Three escalations in a row took longer than the lead-in window: the next one says the phrase before
    any wait (the silence would only delay it); a cloud that answers within the window again brings the wait back."""
    import asyncio

    from edge.stages.answering.fallback import CloudPace, WithFallback
    from edge.stages.answering.phrase import PhraseAnswer

    class Cloud(PhraseAnswer):
        def __init__(self, after_s: float):
            super().__init__("Cloud answer.", "test", answered_by="cloud")
            self.after_s = after_s

        async def start(self):
            await asyncio.sleep(self.after_s)

    pace = CloudPace()

    async def turn(after_s: float) -> tuple[list[str], float]:
        answer = WithFallback(Cloud(after_s), lambda: PhraseAnswer("Local answer."), "One moment.", 0.1, "test",
                              pace=pace)
        started, first_at, said = asyncio.get_running_loop().time(), None, []
        async for text in answer.stream():
            first_at = first_at if first_at is not None else asyncio.get_running_loop().time() - started
            said.append(text)
        return said, first_at

    for _ in range(3):  # slow cloud, unknown pace: the window is waited, then the phrase
        said, first_at = await turn(0.3)
        assert said == ["One moment. ", "Cloud answer."] and first_at >= 0.1
    said, first_at = await turn(0.3)  # known slow: the phrase at once
    assert said == ["One moment. ", "Cloud answer."] and first_at < 0.05
    for _ in range(5):  # the cloud got fast: most recent answers within the window
        await turn(0.01)
    said, _ = await turn(0.01)
    assert said == ["Cloud answer."]
    assert CloudPace().lead_in_wait(0.3) == 0.3
