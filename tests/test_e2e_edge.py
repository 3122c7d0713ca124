"""End to end with the real models: a simulated xiaozhi device talks to a real edge node.

Spoken question synthesized with the piper voice at test time -> real Opus ->
WebSocket -> Silero VAD -> Whisper -> SmolLM2 (llama.cpp server) -> piper -> Opus.
"""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from edge.opus import decode_packets
from scripts.device_sim import DeviceSimulator
from scripts.sim_board import SimBoard
from tests.edge_node import running_edge
from tests.test_asr import wer

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge_stack(tmp_path_factory):
    """A real edge node (all bundled models, no cloud) on a free port; yields (base http URL, engine)."""
    async with running_edge(tmp_path_factory.mktemp("edge")) as (url, engine):
        yield url, engine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge_url(edge_stack):
    return edge_stack[0]


async def _device(edge_url: str, **kw) -> DeviceSimulator:
    sim = await DeviceSimulator.from_ota(f"{edge_url}/xiaozhi/ota/", device_id="02:00:00:00:e2:e2", **kw)
    await sim.connect()
    return sim


@pytest.mark.parametrize("protocol_version", [1, 3])
async def test_spoken_question_is_answered_with_speech(edge_url, speak, protocol_version):
    question = "Good morning, how are you today?"  # small talk: the edge's own (knowledge would want the cloud)
    sim = await _device(edge_url, protocol_version=protocol_version)
    try:
        report = await sim.run_turn(speak(question))
    finally:
        await sim.close()

    assert report.stt is not None and wer(question, report.stt) <= 0.34, report.stt
    assert report.reply.strip(), "no reply text"
    assert report.answered_by == "edge"
    assert report.sample_rate == 24000
    pcm = decode_packets(report.packets, report.sample_rate)
    assert report.frames >= 5
    assert pcm.size == report.frames * report.sample_rate * 60 // 1000  # every frame is 60 ms at 24 kHz
    assert np.abs(pcm.astype(np.int32)).mean() > 100, "reply audio is silent"

    kinds = [(m["type"], m.get("state")) for m in report.messages]
    first = {k: kinds.index(k) for k in [("stt", None), ("llm", None), ("tts", "start"),
                                          ("tts", "sentence_start"), ("tts", "stop")]}
    assert first[("stt", None)] < first[("llm", None)] < first[("tts", "start")] \
        < first[("tts", "sentence_start")] < first[("tts", "stop")] == len(kinds) - 1
    # audio comes between the first sentence_start and the stop, paced at about playback speed
    t = report.timings_ms
    assert t["stt"] <= t["first_audio"] <= t["tts_stop"]
    audio_ms = report.frames * 60
    spread_ms = (report.frame_times[-1] - report.frame_times[0]) * 1000
    assert spread_ms >= audio_ms * 0.5, "audio was dumped at once, not paced"


async def test_barge_in_stops_audio_quickly(edge_url, speak):
    sim = await _device(edge_url)
    try:
        report = await sim.run_turn(speak("Tell me a long story about a dragon and a knight."), abort_after_ms=300)
        assert report.aborted
        assert report.tts_stop, "no tts stop after abort"
        # frames already on the wire may still arrive, none later than 100 ms after the abort
        assert report.abort_to_last_frame_ms is None or report.abort_to_last_frame_ms <= 100
        # the session survives the barge-in: the next turn is answered
        again = await sim.run_turn(speak("Hello there."))
        assert again.stt and again.frames > 0
    finally:
        await sim.close()


async def test_wake_word_is_greeted_from_the_cache(edge_url):
    sim = await _device(edge_url)
    try:
        await sim.listen("detect", text="你好小智")
        got = []
        while (ev := await sim.next_event(10)) is not None:
            got.append(ev)
            if ev[1] == "json" and ev[2].get("type") == "tts" and ev[2].get("state") == "stop":
                break
        texts = [e[2] for e in got if e[1] == "json"]
        assert {"type": "stt", "text": "你好小智"}.items() <= texts[0].items()
        assert any(m.get("state") == "sentence_start" for m in texts)
        assert any(e[1] == "audio" for e in got)
    finally:
        await sim.close()


async def test_two_devices_at_once(edge_url, speak):
    a, b = await _device(edge_url), await _device(edge_url)
    try:
        ra, rb = await asyncio.gather(a.run_turn(speak("Hello there.")), b.run_turn(speak("Good morning.")))
        assert ra.frames > 0 and rb.frames > 0
        assert ra.stt and rb.stt
        async with aiohttp.ClientSession() as http, http.get(f"{edge_url}/health") as resp:
            load, lag = (body := await resp.json())["load"], body["loop_lag_ms"]
        # admission sees the two sessions, no turn left in flight, room for more; the loop is not blocked
        assert (load["devices"], load["active_turns"], load["llm_inflight"]) == (2, 0, 0)
        assert load["room_for_devices"] and load["limits"]["devices"] == 150 and 0 <= lag < 1000
    finally:
        await a.close()
        await b.close()


async def test_spoken_command_calls_the_device_tool_locally(edge_url, speak):
    """The device's own MCP tool, chosen and called by the edge (no cloud here), then spoken about."""
    board = SimBoard()
    sim = await _device(edge_url, board=board)
    try:
        report = await sim.run_turn(speak("Set the volume to 30."))
    finally:
        await sim.close()
    assert report.answered_by == "edge" and report.tts_stop and report.frames > 0, report.summary()
    assert [(c["name"], c["arguments"], c["ok"]) for c in report.tool_calls] == [
        ("self.audio_speaker.set_volume", {"volume": 30}, True)]
    assert board.state.volume == 30


# Last in this module: it kills the module's llama.cpp server.
async def test_killed_local_model_turn_ends_and_the_supervisor_brings_it_back(edge_stack, speak):
    """A turn racing the crash ends with audio + tts stop (the apology, or the restarted model's answer);
    the supervisor restarts the server and /health says llm up again; the session keeps serving."""
    url, engine = edge_stack
    restarts = engine._llamas[0].status()["restarts"]
    proc = engine._llamas[0].proc
    proc.kill()
    await proc.wait()
    sim = await _device(url)
    try:
        report = await sim.run_turn(speak("What is the capital of France?"))
        assert report.frames > 0 and report.tts_stop and report.reply, report.summary()
        for _ in range(120):  # generous: the restart reloads the model
            if engine._llamas[0].available:
                break
            await asyncio.sleep(0.5)
        assert engine._llamas[0].available and engine._llamas[0].status()["restarts"] > restarts
        async with aiohttp.ClientSession() as http:
            for _ in range(90):  # a failed call is held against the model for a while, then it is presumed back
                async with http.get(f"{url}/health") as resp:
                    body = await resp.json()
                if body["components"]["llm"] == "up":
                    break
                await asyncio.sleep(0.5)
        assert resp.status == 200 and body["components"]["llm"] == "up", body
        report = await sim.run_turn(speak("Hello there."))
        assert report.frames > 0 and report.tts_stop and report.reply != engine.phrases.error, report.summary()
    finally:
        await sim.close()
