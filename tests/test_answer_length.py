"""A model's spoken answer ends at its sentence limit (``edge.llm.max_sentences``, ``edge.escalation.max_sentences``):
the device hears whole sentences, the model's stream is closed there (it stops writing), the conversation
remembers what was said, and fixed phrases are never cut (edge/stages/speaking.py)."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from edge.stages.answering.phrase import PhraseAnswer
from edge.stages.speaking import Speaking
from scripts.device_sim import DeviceSimulator
from tests.fixtures_edge import FakeEngine, speak, tone

TWO = "First sentence. Second sentence."


def capped(answered_by: str) -> float:
    return REGISTRY.get_sample_value("xz_edge_answers_capped_total", {"answered_by": answered_by}) or 0.0


async def test_a_rambling_local_model_is_cut_after_two_sentences_and_stops_writing(edge_server):
    engine = FakeEngine(ramble=6)  # edge.llm.max_sentences: 2 (the default)
    edge = await edge_server(engine)
    sim = DeviceSimulator(edge.ws_url, edge.token("aa:bb:cc:00:07:01"), "aa:bb:cc:00:07:01", turn_timeout_s=15)
    await sim.connect()
    before = capped("edge")
    try:
        report = await sim.run_turn(tone(600))
        assert report.reply == TWO and report.answered_by == "edge" and report.tts_stop, report.summary()
        assert engine.llm_closed_early == 1  # the stream was closed at the limit, not read to the end
        assert capped("edge") == before + 1
        await sim.run_turn(tone(600))  # the conversation remembers what the device heard
        assert [m["content"] for m in engine.llm.seen[-1] if m["role"] == "assistant"] == [TWO]
    finally:
        await sim.close()


async def test_without_a_limit_the_whole_answer_is_spoken(edge_server):
    engine = FakeEngine(ramble=3, edge={"llm": {"max_sentences": 0}})
    edge = await edge_server(engine)
    sim = DeviceSimulator(edge.ws_url, edge.token("aa:bb:cc:00:07:02"), "aa:bb:cc:00:07:02", turn_timeout_s=15)
    await sim.connect()
    try:
        report = await sim.run_turn(tone(600))
        assert report.reply == f"{TWO} Sentence 3. Sentence 4. Sentence 5.", report.summary()
        assert engine.llm_closed_early == 0
    finally:
        await sim.close()


class _Answer:
    """An answer source of fixed deltas that records whether it was closed before its end."""

    reason = ""

    def __init__(self, answered_by: str, deltas: list[str]):
        self.answered_by, self.deltas, self.read, self.closed = answered_by, deltas, 0, False

    async def stream(self):
        for delta in self.deltas:
            self.read += 1
            yield delta

    async def aclose(self) -> None:
        self.closed = True


async def _speak(speaking: Speaking, answer) -> str:
    return (await speak(speaking, answer, FakeEngine().audio))[0]


async def test_each_source_has_its_own_limit_and_a_clause_is_not_a_sentence():
    engine = FakeEngine(reply_ms=120)
    speaking = Speaking(engine.tts, "Sorry.", max_sentences={"edge": 1, "cloud": 2})
    # the first piece is cut at a comma (an early clause for the voice): it does not count as a sentence
    cloud = _Answer("cloud", ["Well, let me see about that one, ", "it is blue. ", "Because of light. ", "More. ",
                              "And more. "])
    assert await _speak(speaking, cloud) == "Well, let me see about that one, it is blue. Because of light."
    assert cloud.read == 3 and cloud.closed  # nothing read after the delta that ended the second sentence
    local = _Answer("edge", ["It is blue. ", "Because of light. "])
    assert await _speak(speaking, local) == "It is blue."
    phrase = PhraseAnswer("One. Two. Three.", "test", answered_by="edge")  # a fixed phrase: never cut
    assert await _speak(speaking, phrase) == "One. Two. Three."


async def test_a_phrase_under_the_turns_wrappers_is_not_cut_either():
    from edge.pipeline.deadline import DeadlinedAnswer
    from edge.pipeline.planned import PlannedAnswer

    engine = FakeEngine(reply_ms=120)
    speaking = Speaking(engine.tts, "Sorry.", max_sentences={"edge": 1})

    async def plan(_planned):
        return PhraseAnswer("One. Two. Three.", "test", answered_by="edge")

    wrapped = DeadlinedAnswer(PlannedAnswer(plan), time.monotonic() + 10, 10)  # as the turn pipeline hands it over
    assert await _speak(speaking, wrapped) == "One. Two. Three."
