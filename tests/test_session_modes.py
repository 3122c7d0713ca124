"""Listening modes, wake word, abort/barge-in and playback pacing, with the simulator as the device."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from edge.emotion import pick_emotion
from edge.opus import decode_packets
from scripts.device_sim import DeviceSimulator
from tests.fixtures_edge import tone

DEVICE = "aa:bb:cc:dd:ee:30"


async def _sim(edge, **kw) -> DeviceSimulator:
    sim = DeviceSimulator(edge.ws_url, edge.token(DEVICE), DEVICE, **kw)
    await sim.connect()
    return sim


def _heard_ms(report) -> int:
    assert report.stt and report.stt.startswith("heard "), report.stt
    return int(report.stt.split()[1])


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_auto_mode_turns(edge_server, fake_engine, version):
    edge = await edge_server(fake_engine)
    sim = await _sim(edge, protocol_version=version)
    try:
        first = await sim.run_turn(tone(600))
        second = await sim.run_turn(tone(900))
    finally:
        await sim.close()
    assert 600 <= _heard_ms(first) < _heard_ms(second) <= 900 + 600
    for report in (first, second):
        assert report.reply == "First sentence. Second sentence."
        assert report.answered_by == "edge" and report.emotion == pick_emotion("First sentence.")[0]
        assert report.frames == 20 and report.sample_rate == 24000
        pcm = decode_packets(report.packets, 24000)
        assert pcm.size == 20 * 1440 and np.abs(pcm.astype(np.int32)).mean() > 1000  # the tone, decoded
        t = report.timings_ms
        assert 0 <= t["stt"] <= t["llm"] <= t["first_audio"] <= t["tts_stop"]
    assert [r.kind for r in fake_engine.requests] == ["speech", "speech"]
    assert fake_engine.requests[1].history == [{"role": "user", "content": first.stt},
                                               {"role": "assistant", "content": first.reply}]
    # one ASR job per utterance: the one started at the pause became the turn's transcript
    assert len(fake_engine.asr.jobs) == 2 and all(r.speculative for r in fake_engine.requests)
    second_prompt = fake_engine.llm.seen[1]
    assert second_prompt[-3:] == [{"role": "user", "content": first.stt},
                                  {"role": "assistant", "content": first.reply},
                                  {"role": "user", "content": second.stt}]
    assert all(r.speech_end_ms > 0 for r in fake_engine.requests)


async def test_auto_mode_ignores_audio_after_end_of_speech_until_listen_start(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    sim = await _sim(edge)
    try:
        await sim.run_turn(tone(600))
        # the device did not send listen start again: more speech must not start a turn
        await sim._stream(sim._encoder.encode(tone(600)) + sim.silence(0.6))
        await asyncio.sleep(0.2)
        assert len(fake_engine.requests) == 1
        again = await sim.run_turn(tone(600))  # run_turn sends listen start, as the firmware does
        assert again.frames == 20 and len(fake_engine.requests) == 2
    finally:
        await sim.close()


async def test_manual_mode_utterance_is_between_start_and_stop(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    sim = await _sim(edge, mode="manual")
    try:
        report = await sim.run_turn(tone(1200))
    finally:
        await sim.close()
    assert _heard_ms(report) == 1200  # exactly the frames sent between start and stop, no VAD
    assert report.frames == 20 and report.tts_stop
    assert fake_engine.requests[0].kind == "speech"


async def test_manual_mode_too_short_press_is_ignored(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    sim = await _sim(edge, mode="manual", turn_timeout_s=0.5)
    try:
        report = await sim.run_turn(tone(60))
    finally:
        await sim.close()
    assert report.stt is None and not fake_engine.requests


async def test_silence_only_keeps_auto_listening(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    sim = await _sim(edge, turn_timeout_s=0.5, max_silence_s=1.0)
    try:
        report = await sim.run_turn(np.zeros(16000, dtype=np.int16))
    finally:
        await sim.close()
    assert report.stt is None and report.frames == 0 and not fake_engine.requests


async def test_wake_word_detect_starts_a_wake_turn(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    sim = await _sim(edge)
    try:
        await sim.listen("detect", text="你好小智")
        kinds = []
        while (ev := await sim.next_event(5)) is not None:
            kinds.append(ev[1] if ev[1] == "audio" else (ev[2]["type"], ev[2].get("state")))
            if kinds[-1] == ("tts", "stop"):
                break
    finally:
        await sim.close()
    assert fake_engine.requests[0].kind == "wake" and fake_engine.requests[0].text == "你好小智"
    # the greeting is one sentence (the stand-in voice speaks half of reply_ms per sentence)
    assert kinds[0] == ("stt", None) and kinds[-1] == ("tts", "stop") and kinds.count("audio") == 10


async def test_abort_stops_audio_within_100ms_and_sends_tts_stop(edge_server, fake_engine):
    fake_engine.reply_ms = 4000
    edge = await edge_server(fake_engine)
    sim = await _sim(edge)
    try:
        report = await sim.run_turn(tone(600), abort_after_ms=300)
        assert report.aborted and report.tts_stop
        assert report.abort_to_last_frame_ms is None or report.abort_to_last_frame_ms <= 100
        assert report.frames < 4000 // 60 / 2  # the answer was cut, not played out
        assert fake_engine.cancelled == 1
        stops = [m for m in report.messages if m.get("type") == "tts" and m.get("state") == "stop"]
        assert len(stops) == 1
        fake_engine.reply_ms = 600
        again = await sim.run_turn(tone(600))  # the session goes on after a barge-in
        assert again.frames == 10 and again.tts_stop
    finally:
        await sim.close()


async def test_realtime_barge_in_cancels_and_answers_the_new_speech(edge_server, fake_engine):
    fake_engine.reply_ms = 4000
    edge = await edge_server(fake_engine)
    sim = await _sim(edge, mode="realtime")
    try:
        await sim.listen("start", "realtime")
        await sim._stream(sim._encoder.encode(tone(600)) + sim.silence(0.6))
        while (ev := await sim.next_event(5)) is not None and ev[1] != "audio":
            pass
        assert ev is not None, "no answer audio"
        # the user talks over the answer (full duplex): the answer stops, a new turn answers
        await sim._stream(sim._encoder.encode(tone(600, freq=330)))
        barge_at = time.monotonic()
        silence = asyncio.create_task(sim._stream(sim.silence(1.0)))
        events = []
        while (ev := await sim.next_event(5)) is not None:
            events.append(ev)
            if ev[1] == "json" and ev[2].get("type") == "stt":
                break
        await silence
    finally:
        await sim.close()
    stops = [t for t, kind, m in events if kind == "json" and m.get("type") == "tts" and m.get("state") == "stop"]
    assert stops, "barge-in did not stop the answer"
    stt_at = events[-1][0]
    assert events[-1][2]["type"] == "stt" and stops[0] < stt_at, "the new turn did not follow the barge-in"
    assert len(fake_engine.requests) == 2 and fake_engine.cancelled >= 1  # (the 2nd is cancelled by close)
    late = [t for t, kind, _ in events if kind == "audio" and t > stops[0] + 0.1]
    assert not late, "audio frames kept coming after the barge-in"
    assert stops[0] < barge_at  # cut while the user was still talking, not after


async def test_audio_is_paced_at_playback_speed(edge_server, fake_engine):
    fake_engine.reply_ms = 2400  # 40 frames
    edge = await edge_server(fake_engine, edge={"audio": {"lead_ms": 240}})
    sim = await _sim(edge)
    try:
        report = await sim.run_turn(tone(600))
    finally:
        await sim.close()
    times = np.array(report.frame_times) - report.frame_times[0]
    assert report.frames == 40
    # the first lead_ms of audio goes out at once, the rest one frame per 60 ms
    assert times[3] < 0.15
    spread = times[-1]
    assert 2.4 - 0.24 - 0.06 - 0.15 <= spread <= 2.4 + 0.3, spread
    # tts stop comes once the device has played the last frame, not when it was sent
    stop = report.timings_ms["tts_stop"] - report.timings_ms["first_audio"]
    assert stop >= 2400 - 100


async def test_realtime_mode_full_duplex_turn_completes(edge_server, fake_engine):
    """In realtime the device streams (echo-cancelled) silence during the answer: no false barge-in."""
    edge = await edge_server(fake_engine)
    sim = await _sim(edge, mode="realtime")
    try:
        report = await sim.run_turn(tone(600))
        again = await sim.run_turn(tone(600))
    finally:
        await sim.close()
    assert report.tts_stop and report.frames == 20 and again.frames == 20
    assert fake_engine.cancelled == 0 and fake_engine.finished == 2
