"""Silero VAD service: utterance events on real piper speech, and batching across streams."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edge.vad import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted, VadService
from tests.fixtures_models import silence

CHUNK = 960  # one 60 ms Opus frame at 16 kHz


async def feed_all(stream, pcm: np.ndarray, chunk: int = CHUNK) -> list:
    """Feed ``pcm`` in device-sized chunks; return (chunk start in s, event) pairs."""
    out = []
    for i in range(0, pcm.size, chunk):
        for ev in await stream.feed(pcm[i : i + chunk]):
            out.append((i / 16000, ev))
    return out


def kinds(events) -> list[str]:
    return [type(e).__name__ for _, e in events]


async def test_start_and_end_on_a_padded_phrase(vad_service, question_pcm, models_topology):
    stream = vad_service.new_stream()
    audio = np.concatenate([silence(600), question_pcm, silence(1200)])
    events = await feed_all(stream, audio)
    assert kinds(events) == ["SpeechStarted", "SpeechPaused", "SpeechEnded"]
    (t_start, _), (_, paused), (t_end, ended) = events
    speech_s = question_pcm.size / 16000
    assert 0.55 <= t_start <= 0.6 + 0.5  # soon after the speech begins (min_speech_ms later at most)
    assert 0.6 + speech_s - 0.4 <= t_end <= 0.6 + speech_s + 1.0
    # paused and ended carry the same samples, so a speculative transcription can be reused
    assert np.array_equal(paused.pcm, ended.pcm)
    # speech + ~300 ms pre-roll + short tail, trailing silence trimmed
    assert speech_s - 0.3 <= ended.pcm.size / 16000 <= speech_s + 0.5
    assert abs(ended.eos_window_ms - models_topology.edge.vad.min_silence_ms) <= 64
    assert not ended.forced
    assert not stream.speech_active


def trim(pcm: np.ndarray, level: int = 300) -> np.ndarray:
    """``pcm`` without the near-silent samples at both ends."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    return pcm[loud[0]: loud[-1] + 1] if loud.size else pcm


async def test_pause_and_resume_between_two_phrases(vad_service, speak):
    stream = vad_service.new_stream()
    # the synthesized phrases carry their own (randomly varying) edge silence: trim it so the pause is 300 ms
    first, second = trim(speak("What is the capital of France?")), trim(speak("And how many people live there?"))
    audio = np.concatenate([silence(400), first, silence(300), second, silence(1000)])
    events = await feed_all(stream, audio)
    names = kinds(events)
    assert names[0] == "SpeechStarted" and names[-1] == "SpeechEnded"
    assert "SpeechResumed" in names, names
    assert names.count("SpeechStarted") == 1 and names.count("SpeechEnded") == 1  # one utterance
    ended = events[-1][1]
    assert ended.pcm.size / 16000 >= (first.size + second.size) / 16000 - 0.3


async def test_no_events_on_silence_or_noise(vad_service):
    stream = vad_service.new_stream()
    rng = np.random.default_rng(7)
    noise = (rng.normal(0, 300, 16000 * 2)).astype(np.int16)  # steady low hiss
    events = await feed_all(stream, np.concatenate([silence(1500), noise, silence(500)]))
    assert events == []
    assert not stream.speech_active


async def test_short_blip_is_dropped(vad_service, speak):
    spec = vad_service.spec.model_copy(update={"min_speech_ms": 2500})
    strict = VadService(spec)
    await strict.load()
    s = strict.new_stream()
    phrase = speak("What is the capital of France?")  # ~1.8 s, shorter than 2.5 s
    assert await feed_all(s, np.concatenate([silence(300), phrase, silence(1000)])) == []


async def test_length_cap_ends_the_utterance(models_topology, question_pcm):
    svc = VadService(models_topology.edge.vad, max_utterance_s=1.0)
    await svc.load()
    stream = svc.new_stream()
    events = await feed_all(stream, np.concatenate([silence(200), question_pcm, silence(800)]))
    ends = [e for _, e in events if isinstance(e, SpeechEnded)]
    assert ends and ends[0].forced
    assert ends[0].pcm.size <= 16000 * 1.0 + 512


async def test_reset_forgets_an_open_utterance(vad_service, question_pcm):
    stream = vad_service.new_stream()
    events = await feed_all(stream, np.concatenate([silence(300), question_pcm[: question_pcm.size // 2]]))
    assert kinds(events) == ["SpeechStarted"] and stream.speech_active
    stream.reset()
    assert not stream.speech_active
    assert await feed_all(stream, silence(1500)) == []  # no SpeechEnded for the forgotten utterance


async def test_odd_chunk_sizes_give_the_same_events(vad_service, question_pcm):
    audio = np.concatenate([silence(500), question_pcm, silence(1000)])
    a = kinds(await feed_all(vad_service.new_stream(), audio, chunk=960))
    b = kinds(await feed_all(vad_service.new_stream(), audio, chunk=333))
    assert a == b == ["SpeechStarted", "SpeechPaused", "SpeechEnded"]


async def test_bad_input_is_a_clear_error(vad_service):
    stream = vad_service.new_stream()
    with pytest.raises(ValueError, match="int16"):
        await stream.feed(np.zeros(960, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        await stream.feed(np.zeros((2, 960), dtype=np.int16))
    assert await stream.feed(np.zeros(0, dtype=np.int16)) == []


async def test_streams_fed_together_are_batched(models_topology, speak):
    """8 streams fed in the same ticks give the same events as one at a time, with far fewer ONNX calls."""
    phrases = [
        "What is the capital of France?",
        "Turn on the kitchen lights.",
        "What time is it?",
        "Tell me a joke.",
    ]
    audios = []
    for i in range(8):
        lead = 200 + 130 * i  # streams start speaking at different moments
        audios.append(np.concatenate([silence(lead), speak(phrases[i % 4]), silence(1800 - 130 * i)]))
    n = max(a.size for a in audios)
    audios = [np.pad(a, (0, n - a.size)) for a in audios]

    solo_svc = VadService(models_topology.edge.vad)
    await solo_svc.load()
    solo = []
    for a in audios:
        evs = await feed_all(solo_svc.new_stream(), a)
        solo.append([(t, type(e).__name__, getattr(e, "pcm", None)) for t, e in evs])
    solo_calls = solo_svc.onnx_calls

    batch_svc = VadService(models_topology.edge.vad)
    await batch_svc.load()
    streams = [batch_svc.new_stream() for _ in audios]
    together: list[list] = [[] for _ in audios]
    for i in range(0, n, CHUNK):  # one device frame per stream per tick, like real sessions
        results = await asyncio.gather(*(s.feed(a[i : i + CHUNK]) for s, a in zip(streams, audios)))
        for k, evs in enumerate(results):
            together[k].extend((i / 16000, type(e).__name__, getattr(e, "pcm", None)) for e in evs)

    for k in range(len(audios)):
        assert [(t, name) for t, name, _ in together[k]] == [(t, name) for t, name, _ in solo[k]]
        assert [name for _, name, _ in solo[k]][0] == "SpeechStarted"
        for (_, _, p1), (_, _, p2) in zip(together[k], solo[k]):
            assert (p1 is None) == (p2 is None) and (p1 is None or np.array_equal(p1, p2))
    assert batch_svc.frames_processed == solo_svc.frames_processed
    assert batch_svc.onnx_calls * 4 <= solo_calls  # 8 streams per call instead of 1


@pytest.mark.timeout(30)
def test_service_survives_an_abandoned_event_loop(vad_service, question_pcm):
    """A loop that dies mid-feed (test teardown, crashed server) must not wedge the shared service."""

    async def abandon() -> None:
        asyncio.get_running_loop().create_task(vad_service.new_stream().feed(question_pcm))
        await asyncio.sleep(0)  # the feed is submitted, its flush not yet run

    asyncio.run(abandon())
    audio = np.concatenate([silence(500), question_pcm, silence(1000)])
    events = asyncio.run(feed_all(vad_service.new_stream(), audio))
    assert kinds(events) == ["SpeechStarted", "SpeechPaused", "SpeechEnded"]
