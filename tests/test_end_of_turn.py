"""Early end of turn: which speculative transcripts read as finished (scripts/eval_end_of_turn.py measures it)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edge.end_of_turn import looks_complete, verdict
from edge.pipeline.events import UtteranceEnded
from edge.stages.listening import Listening


@pytest.mark.parametrize("text", ["What time is it?", "Tell me a joke.", "Turn the volume up.",
                                  "Who wrote Romeo and Juliet?", "Thank you, that's all for now.", "你好吗？"])
def test_finished_sentences_and_questions(text):
    assert looks_complete(text)


@pytest.mark.parametrize("text", ["What is the capital of.", "Set a timer for.", "Turn on the.",
                                  "How many days are there in?", "What is the weather like today",
                                  "Hello.", "How many?", "I was thinking...", "", "   "])
def test_cut_off_or_too_short_keeps_waiting(text):
    assert not looks_complete(text)


@pytest.mark.parametrize("text,language,expected", [
    ("What time is it?", "en", "complete"),
    ("Turn on the", "en", "unfinished"),
    ("What is 2 plus?", "en", "unfinished"),
    ("How many legs does a spider have?", "en", "unsure"),  # a question may end on an auxiliary: not longer
    ("Where are you from?", "en", "unsure"),
    ("Set a timer for,", "", "unfinished"),
    ("who painted the Mona Lisa", "en", "unsure"),  # no final punctuation: neither early nor later
    ("Good night.", "en", "unsure"),  # too short to trust
    ("Wie spät ist es?", "de", "unsure"),  # the word rules are English ones
    ("现在几点了？", "zh", "unsure"),  # final punctuation alone is not trusted
])
def test_verdict(text, language, expected):
    assert verdict(text, language) == expected


# ---------------------------------------------------------------- the listening stage, real Silero VAD
class _ScriptedAsr:
    """Transcribes every clip as ``text`` after ``delay_s`` (what the ASR would hear; the VAD is the real one)."""

    def __init__(self, text: str, delay_s: float = 0.15):
        self.text, self.delay_s, self.jobs = text, delay_s, 0

    def should_speculate(self) -> bool:
        return True

    def submit(self, pcm16k):
        from edge.asr import Transcript

        self.jobs += 1
        loop = asyncio.get_running_loop()
        job = loop.create_future()
        loop.call_later(self.delay_s, job.set_result, Transcript(self.text, "en", pcm16k.size / 16000, 0.0))
        return job


async def _utterance_end(listening: Listening, speech, silence_ms: int = 1500):
    """Feed ``speech`` then silence in 60 ms chunks at the pace a device sends them; the UtteranceEnded."""
    audio = np.concatenate([np.zeros(4800, np.int16), speech, np.zeros(silence_ms * 16, np.int16)])
    speech_end = 4800 + speech.size
    for i in range(0, audio.size, 960):
        if i >= speech_end:
            await asyncio.sleep(0.06)  # real time once the speaker is silent: the ASR job runs meanwhile
        for ev in await listening.feed(audio[i:i + 960]):
            if isinstance(ev, UtteranceEnded):
                return ev
    return None


@pytest.mark.parametrize("text,early,window", [
    ("What time is it?", True, (320, 480)),  # ends at early_commit_ms, not the VAD's 480 ms
    ("Turn on the", False, (800, 900)),  # waits unfinished_silence_ms
    ("who painted the Mona Lisa", False, (480, 520)),  # unsure: the VAD's window, as without early commit
])
async def test_listening_ends_by_what_the_pause_said(vad_service, speak, text, early, window):
    asr = _ScriptedAsr(text)
    listening = Listening(vad_service, asr, "auto", early_commit_ms=320, unfinished_silence_ms=800)
    ended = await _utterance_end(listening, speak("Please tell me the time now."))
    assert ended is not None and ended.early is early and ended.speculative
    assert window[0] <= ended.eos_window_ms < window[1], ended.eos_window_ms
    assert asr.jobs == 1  # the speculative job is the turn's transcript: no second run
    assert (await ended.transcript).text == text


async def test_no_early_end_before_the_transcript_exists(vad_service, speak):
    """A slow ASR job: the turn ends when the text is there (after 320 ms), never on a guess."""
    listening = Listening(vad_service, _ScriptedAsr("What time is it?", delay_s=0.2), "auto", early_commit_ms=320,
                          unfinished_silence_ms=800)
    ended = await _utterance_end(listening, speak("Please tell me the time now."))
    assert ended.early and 352 <= ended.eos_window_ms < 480, ended.eos_window_ms


async def test_early_commit_off_keeps_the_vad_window(vad_service, speak):
    listening = Listening(vad_service, _ScriptedAsr("What time is it?"), "auto")
    ended = await _utterance_end(listening, speak("Please tell me the time now."))
    assert not ended.early and ended.eos_window_ms >= 480


async def test_real_asr_ends_a_question_early(vad_service, asr_service, speak):
    """Real VAD, real Whisper: a spoken question is answered before the VAD's silence window is over."""
    listening = Listening(vad_service, asr_service, "auto", early_commit_ms=320, unfinished_silence_ms=800)
    ended = await _utterance_end(listening, speak("What is the capital of France?"))
    heard = await ended.transcript
    assert verdict(heard.text, heard.language) == "complete", heard.text
    assert ended.early and ended.eos_window_ms < 480, ended.eos_window_ms


def test_windows_out_of_order_are_a_config_error(models_topology):
    from pydantic import ValidationError

    vad = models_topology.edge.vad.model_dump()
    with pytest.raises(ValidationError, match="early_commit_ms"):
        type(models_topology.edge.vad)(**{**vad, "early_commit_ms": 600})
