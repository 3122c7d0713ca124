"""The pipeline's small parts: the conversation's one window and the turn's event stream."""

from __future__ import annotations

from edge.pipeline.conversation import Conversation
from edge.pipeline.events import FirstToken, SentenceSpoken, SpeechStopped, Transcribed, TurnStarted
from edge.pipeline.observers import TurnEvents


def test_conversation_keeps_one_window_of_exchanges():
    conv = Conversation(2)
    for i in range(3):
        conv.add(f"question {i}", f"answer {i}")
    conv.add("", "ignored: no user text")
    assert conv.window() == [{"role": "user", "content": "question 1"}, {"role": "assistant", "content": "answer 1"},
                             {"role": "user", "content": "question 2"}, {"role": "assistant", "content": "answer 2"}]
    assert Conversation(0).window() == []


class Broken:
    def on_event(self, ev) -> None:
        raise RuntimeError("observer bug")


class Seen:
    def __init__(self) -> None:
        self.events: list = []

    def on_event(self, ev) -> None:
        self.events.append(ev)


def test_events_are_stamped_timed_from_the_end_of_speech_and_survive_a_broken_observer():
    seen = Seen()
    events = TurnEvents("t1", [Broken(), seen])
    events.emit(TurnStarted(kind="speech", origin_ms=1000.0, at_ms=1001.0))
    events.emit(Transcribed(text="hi", at_ms=1200.0))
    events.emit(FirstToken(source="edge", at_ms=1450.5))
    events.emit(SentenceSpoken(text="Hello.", cached=False, first_audio=True, at_ms=1600.0))
    events.emit(SentenceSpoken(text="Again.", cached=True, first_audio=False, at_ms=2600.0))
    events.emit(SpeechStopped(at_ms=3000.0))
    assert [e.turn_id for e in seen.events] == ["t1"] * 6
    assert events.timings_ms() == {"stt": 200.0, "llm_first_token": 450.5, "first_audio": 600.0, "tts_stop": 2000.0}
