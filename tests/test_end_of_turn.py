"""Early end of turn: which speculative transcripts read as finished (scripts/eval_end_of_turn.py measures it)."""

from __future__ import annotations

import pytest

from edge.end_of_turn import looks_complete


@pytest.mark.parametrize("text", ["What time is it?", "Tell me a joke.", "Turn the volume up.",
                                  "Who wrote Romeo and Juliet?", "Thank you, that's all for now.", "你好吗？"])
def test_finished_sentences_and_questions(text):
    assert looks_complete(text)


@pytest.mark.parametrize("text", ["What is the capital of.", "Set a timer for.", "Turn on the.",
                                  "How many days are there in?", "What is the weather like today",
                                  "Hello.", "How many?", "I was thinking...", "", "   "])
def test_cut_off_or_too_short_keeps_waiting(text):
    assert not looks_complete(text)
