"""Device sessions against bad and unusual input: hello rules, bad JSON, bad frames, idle, disconnects."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client import REGISTRY

from edge.opus import encode_pcm
from edge.device.protocol import pack_audio
from scripts.device_sim import DeviceSimulator
from tests.fixtures_edge import tone

DEVICE = "aa:bb:cc:dd:ee:20"
HELLO = {"type": "hello", "version": 1, "features": {}, "transport": "websocket",
         "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}


def protocol_errors(kind: str) -> float:
    return REGISTRY.get_sample_value("xz_edge_protocol_errors_total", {"kind": kind}) or 0.0


def connected() -> float:
    return REGISTRY.get_sample_value("xz_edge_connected_devices") or 0.0


class RawDevice:
    """A bare WebSocket client for sending exactly what a test wants."""

    def __init__(self, edge, version: int = 1, device_id: str = DEVICE):
        self.edge, self.version, self.device_id = edge, version, device_id

    async def __aenter__(self):
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.edge.ws_url, headers={
            "Protocol-Version": str(self.version), "Device-Id": self.device_id,
            "Authorization": f"Bearer {self.edge.token(self.device_id)}"})
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()
        await self.http.close()

    async def hello(self) -> dict:
        await self.ws.send_str(json.dumps(HELLO))
        return await self.json()

    async def json(self, timeout: float = 5.0) -> dict:
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.TEXT:
                return json.loads(msg.data)
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"expected a text message, got {msg.type} {msg.data}")

    async def closed(self, timeout: float = 5.0) -> int:
        """Wait for the server to close; returns the close code."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code


async def test_server_hello_answers_the_device_hello(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    async with RawDevice(edge) as dev:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        hello = await dev.hello()
        assert loop.time() - t0 < 1.0
        assert hello["type"] == "hello" and hello["transport"] == "websocket" and hello["session_id"]
        assert hello["audio_params"] == {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60}
    edge16 = await edge_server(fake_engine, edge={"audio": {"downstream_sample_rate": 16000}})
    async with RawDevice(edge16) as dev:
        assert (await dev.hello())["audio_params"]["sample_rate"] == 16000


async def test_no_hello_closes_the_session(edge_server, fake_engine):
    edge = await edge_server(fake_engine, edge={"session": {"hello_timeout_s": 0.5}})
    before = protocol_errors("no_hello")
    async with RawDevice(edge) as dev:
        assert await dev.closed() == 1002
    assert protocol_errors("no_hello") == before + 1


async def test_bad_json_and_unknown_types_get_an_error_and_the_session_goes_on(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    async with RawDevice(edge) as dev:
        await dev.ws.send_str('{"type":"listen","state":"start","mode":"auto"}')  # before hello
        assert (await dev.json())["kind"] == "before_hello"
        await dev.hello()
        for text, kind in (("{oops", "bad_json"), ('{"type":"iot","states":[]}', "unknown_type"),
                           ('{"no":"type"}', "no_type"), ('{"type":"listen","state":"sing"}', "bad_field")):
            before = protocol_errors(kind)
            await dev.ws.send_str(text)
            err = await dev.json()
            assert err["type"] == "error" and err["kind"] == kind and err["message"]
            assert protocol_errors(kind) == before + 1
        await dev.ws.send_str('{"type":"listen","state":"detect","text":"hello xiaozhi"}')
        assert (await dev.json()) == {"session_id": err["session_id"], "type": "stt", "text": "hello xiaozhi"}


async def test_binary_before_hello_is_ignored_then_closes(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    frame = encode_pcm(tone(60), 16000)[0]
    async with RawDevice(edge) as dev:
        for _ in range(3):
            await dev.ws.send_bytes(frame)
        hello = await dev.hello()  # a few early frames are ignored: the session still works
        assert hello["type"] == "hello"
    async with RawDevice(edge) as dev:  # a client that only streams audio is not a xiaozhi device
        for _ in range(60):
            await dev.ws.send_bytes(frame)
        assert await dev.closed() == 1008


async def test_oversized_frame_closes_1009(edge_server, fake_engine):
    edge = await edge_server(fake_engine, edge={"session": {"max_frame_bytes": 2000}})
    async with RawDevice(edge, version=3) as dev:
        await dev.hello()
        await dev.ws.send_bytes(pack_audio(3, b"\x00" * 2100))
        assert await dev.closed() == 1009


@pytest.mark.parametrize("version", [1, 3])
async def test_invalid_opus_is_counted_and_dropped(edge_server, fake_engine, version):
    edge = await edge_server(fake_engine)
    sim = DeviceSimulator(edge.ws_url, edge.token(DEVICE), DEVICE, protocol_version=version)
    await sim.connect()
    try:
        await sim.listen("start", "auto")
        before = protocol_errors("invalid_opus")
        for _ in range(5):
            await sim.send_opus(b"\xff\xff\xff\xff garbage that is not opus")
        await sim.send_opus(b"")  # an empty payload too
        report = await sim.run_turn(tone(600))  # the session still serves a real turn
        assert report.stt and report.stt.startswith("heard") and report.frames > 0
        assert protocol_errors("invalid_opus") >= before + 5
    finally:
        await sim.close()


async def test_idle_session_closes_quietly(edge_server, fake_engine):
    edge = await edge_server(fake_engine, edge={"session": {"idle_timeout_s": 0.5}})
    async with RawDevice(edge) as dev:
        await dev.hello()
        assert await dev.closed() == 1000


async def test_turn_failure_closes_tts_and_keeps_the_session(edge_server, fake_engine):
    fake_engine.tts.fail = True  # the voice fails; only the cached apology still speaks
    edge = await edge_server(fake_engine)
    async with RawDevice(edge) as dev:
        await dev.hello()
        await dev.ws.send_str('{"type":"listen","state":"detect","text":"hi"}')
        got = [await dev.json() for _ in range(5)]
        assert [(m["type"], m.get("state")) for m in got] == [
            ("stt", None), ("llm", None), ("tts", "start"), ("tts", "sentence_start"), ("tts", "stop")]
        assert got[3]["text"] == "Sorry, something went wrong."  # the device is not left in "speaking"
        fake_engine.tts.fail = False
        await dev.ws.send_str('{"type":"listen","state":"detect","text":"again"}')
        assert (await dev.json())["text"] == "again"


async def test_disconnect_mid_answer_cancels_the_turn_and_spares_other_sessions(edge_server, fake_engine):
    fake_engine.reply_ms = 3000
    edge = await edge_server(fake_engine)
    base = connected()
    a = DeviceSimulator(edge.ws_url, edge.token("aa:00:00:00:00:0a"), "aa:00:00:00:00:0a")
    b = DeviceSimulator(edge.ws_url, edge.token("aa:00:00:00:00:0b"), "aa:00:00:00:00:0b")
    await a.connect()
    await b.connect()
    assert connected() == base + 2

    async def a_leaves_mid_answer():
        await a.listen("start", "auto")
        await a._stream(a._encoder.encode(tone(600)) + a.silence(1.0))
        while (ev := await a.next_event(10)) is not None and ev[1] != "audio":
            pass
        await a.close()

    b_turn = asyncio.create_task(b.run_turn(tone(900)))
    await a_leaves_mid_answer()
    report = await b_turn
    await b.close()
    assert report.tts_stop and report.frames == 50
    assert 900 <= int(report.stt.split()[1]) <= 900 + 600  # speech plus the VAD's end-of-speech silence
    for _ in range(50):
        if connected() == base and fake_engine.cancelled == 1:
            break
        await asyncio.sleep(0.05)
    assert fake_engine.cancelled == 1 and fake_engine.finished == 1
    assert connected() == base and not edge.sessions


@pytest.mark.parametrize("text, kind", [("你好小智", "wake"), ("Hi, ESP!", "wake"),
                                        ("What time is it in Tokyo?", "text")])
async def test_detect_text_is_the_wake_word_or_a_typed_request(edge_server, fake_engine, text, kind):
    edge = await edge_server(fake_engine)
    async with RawDevice(edge) as dev:
        await dev.hello()
        await dev.ws.send_str(json.dumps({"type": "listen", "state": "detect", "text": text}))
        while not fake_engine.requests:
            await dev.json()
    (start,) = fake_engine.requests
    assert (start.kind, start.text) == (kind, text)
