"""Voice activity detection: Silero VAD (ONNX) shared by every device, batched per event-loop tick.

One onnxruntime session serves all sessions. Each device has a :class:`VadStream`
holding its recurrent state; frames that streams feed during the same event-loop
tick are stacked into one ``[B, 576]`` batch and run in a single ``session.run``
(per 32 ms step) in an executor, so 100 devices cost about what a few do, and the
event loop never runs inference.

Model I/O mirrors silero_vad/utils_vad.py ``OnnxWrapper`` (v5/v6): 512 new samples
per frame at 16 kHz, prefixed by the previous frame's last 64 samples (the
"context"), plus ``state [2, B, 128]`` carried between calls. End-of-speech uses the
same hysteresis as the official ``VADIterator``: speech at ``p >= threshold``,
silence only once ``p < threshold - 0.15``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from edge import metrics
from edge.threads import onnx_session
from shared.log import log_event
from shared.topology import VadSpec, resolve_model_path

log = logging.getLogger("edge.vad")

SAMPLE_RATE = 16000
FRAME = 512  # samples per model step at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame prepended to each step
FRAME_MS = FRAME * 1000 / SAMPLE_RATE
HYSTERESIS = 0.15  # silence needs p < threshold - 0.15, like VADIterator


# ---------------------------------------------------------------- events
@dataclass
class SpeechStarted:
    """Speech has lasted ``min_speech_ms``: a real utterance (barge-in, UI 'listening')."""


@dataclass
class SpeechPaused:
    """``speculative_ms`` of silence after speech: start ASR early on ``pcm``.

    ``pcm`` is exactly what :class:`SpeechEnded` will carry if speech does not resume,
    so a speculative transcription of it can be reused.
    """

    pcm: np.ndarray = field(repr=False)


@dataclass
class SpeechResumed:
    """Speech again after a :class:`SpeechPaused`: the speculative result is stale."""


@dataclass
class SpeechEnded:
    """The utterance is over (``min_silence_ms`` of silence, or the length cap was hit)."""

    pcm: np.ndarray = field(repr=False)
    eos_window_ms: float = 0.0  # audio time from the end of speech to this decision
    forced: bool = False  # True when ended by the length cap, not by silence
    early: bool = False  # True when ended before min_silence_ms by :meth:`VadStream.end_now`


VadEvent = Union[SpeechStarted, SpeechPaused, SpeechResumed, SpeechEnded]


# ---------------------------------------------------------------- per-device stream
class VadStream:
    """One device's VAD: feed any-length int16 16 kHz chunks, get utterance events."""

    def __init__(self, service: "VadService"):
        self._svc = service
        spec = service.spec
        self.threshold = spec.threshold
        self._silence_frames = max(1, round(spec.min_silence_ms / FRAME_MS))
        self._speech_frames = max(1, round(spec.min_speech_ms / FRAME_MS))
        self._pause_frames = max(1, min(round(service.speculative_ms / FRAME_MS), self._silence_frames - 1))
        self._preroll = int(service.preroll_ms * SAMPLE_RATE / 1000)
        # The tail must already be there when SpeechPaused fires, so Paused/Ended pcm match.
        self._tail = min(int(service.tail_ms * SAMPLE_RATE / 1000), self._pause_frames * FRAME)
        self._max_samples = int(service.max_utterance_s * SAMPLE_RATE)
        self.reset()

    def reset(self) -> None:
        """Forget everything (new turn, manual listening mode); in-flight results are discarded."""
        self.generation = getattr(self, "generation", 0) + 1
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.int16)
        self._history: list[np.ndarray] = []  # pre-roll ring while idle
        self._history_len = 0
        self._utt: list[np.ndarray] = []  # the utterance so far (pre-roll included)
        self._utt_len = 0
        self._triggered = False  # a candidate or confirmed utterance is open
        self.speech_active = False  # SpeechStarted sent, SpeechEnded not yet
        self._paused = False
        self._speech_count = 0  # speech frames in the open utterance
        self._silence_at: int | None = None  # utterance offset where the current silence began
        self._end_frames = self._silence_frames  # this utterance's silence window (see wait_longer)

    @property
    def paused(self) -> bool:
        """A :class:`SpeechPaused` was sent and speech has not resumed (its pcm is what would end)."""
        return self._paused

    @property
    def silence_ms(self) -> float:
        """Audio time since the end of speech in the open utterance (0 while speaking)."""
        return self._silent_frames() * FRAME_MS

    def _silent_frames(self) -> int:
        return 0 if self._silence_at is None else (self._utt_len - self._silence_at) // FRAME

    def end_now(self) -> SpeechEnded | None:
        """End the paused utterance before ``min_silence_ms`` (the listening stage's early end of turn).

        Its pcm is the :class:`SpeechPaused` pcm, as at a normal end; None unless paused."""
        return self._ended(early=True) if self._paused and self.speech_active else None

    def _ended(self, early: bool = False) -> SpeechEnded:
        """The open utterance ended by silence (the window, or early): its event, counted; the stream closed."""
        window = self.silence_ms
        ended = SpeechEnded(self._utterance_pcm(), eos_window_ms=window, early=early)
        metrics.STAGE_LATENCY.labels(stage="vad_end_of_speech").observe(window / 1000)
        self._close()
        return ended

    def wait_longer(self, silence_ms: float) -> None:
        """Let this utterance's silence run to ``silence_ms`` before it ends (a sentence cut mid-thought)."""
        self._end_frames = max(self._end_frames, round(silence_ms / FRAME_MS))

    async def feed(self, pcm16k: np.ndarray) -> list[VadEvent]:
        """Add audio; returns the events it completed (often none)."""
        pcm = _check_pcm(pcm16k)
        buf = np.concatenate((self._rest, pcm)) if self._rest.size else pcm
        n = buf.size // FRAME
        self._rest = buf[n * FRAME:].copy()
        if n == 0:
            return []
        # a copy: the caller may reuse its buffer, and utterance audio is kept by reference
        return await self._svc._submit(self, buf[: n * FRAME].reshape(n, FRAME).copy())

    # -- called by the service on the event loop with each frame's speech probability
    def _advance(self, frames: np.ndarray, probs: np.ndarray) -> list[VadEvent]:
        events: list[VadEvent] = []
        for frame, p in zip(frames, probs):
            ev = self._step(frame, float(p))
            if ev:
                events.extend(ev)
        return events

    def _step(self, frame: np.ndarray, p: float) -> list[VadEvent]:
        if not self._triggered:
            if p < self.threshold:
                self._remember(frame)
                return []
            self._triggered = True
            self._utt, self._utt_len = list(self._history), self._history_len
            self._history, self._history_len = [], 0
            self._speech_count = 0
            self._silence_at = None
        self._utt.append(frame)
        self._utt_len += FRAME
        out: list[VadEvent] = []
        if p >= self.threshold:
            self._speech_count += 1
            self._silence_at = None
            if self._paused:
                self._paused = False
                self._end_frames = self._silence_frames  # the next pause is judged afresh
                out.append(SpeechResumed())
            if not self.speech_active and self._speech_count >= self._speech_frames:
                self.speech_active = True
                out.append(SpeechStarted())
        elif p < self.threshold - HYSTERESIS and self._silence_at is None:
            self._silence_at = self._utt_len - FRAME
        if self._silence_at is not None:
            silent = self._silent_frames()
            if not self.speech_active:
                if silent >= self._silence_frames:  # too short to count: drop it quietly
                    self._close()
                return out
            if silent >= self._end_frames:
                out.append(self._ended())
            elif silent >= self._pause_frames and not self._paused:
                self._paused = True
                out.append(SpeechPaused(self._utterance_pcm()))
        if self._triggered and self._utt_len >= self._max_samples:
            if self.speech_active:
                out.append(SpeechEnded(self._utterance_pcm(trim=self._silence_at is not None), forced=True))
            self._close()
        return out

    def _utterance_pcm(self, trim: bool = True) -> np.ndarray:
        pcm = np.concatenate(self._utt)
        if trim and self._silence_at is not None:
            pcm = pcm[: self._silence_at + self._tail]
        return pcm

    def _remember(self, frame: np.ndarray) -> None:
        self._history.append(frame)
        self._history_len += FRAME
        while self._history and self._history_len - self._history[0].size >= self._preroll:
            self._history_len -= self._history.pop(0).size

    def _close(self) -> None:
        self._triggered = self.speech_active = self._paused = False
        self._utt, self._utt_len = [], 0
        self._speech_count = 0
        self._silence_at = None
        self._end_frames = self._silence_frames


def _check_pcm(pcm: np.ndarray) -> np.ndarray:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
        kind = f"{pcm.dtype}{list(pcm.shape)}" if isinstance(pcm, np.ndarray) else type(pcm).__name__
        raise ValueError(f"VAD expects a 1-D int16 array of 16 kHz samples, got {kind}")
    return pcm


# ---------------------------------------------------------------- the shared service
@dataclass
class _Request:
    stream: VadStream
    generation: int
    frames: np.ndarray  # [n, 512] int16
    future: asyncio.Future
    submitted: float = field(default_factory=time.monotonic)


class VadService:
    """One Silero ONNX session for every device; ``new_stream()`` per device."""

    def __init__(
        self,
        spec: VadSpec,
        executor: Executor | None = None,
        speculative_ms: int = 160,
        preroll_ms: int = 300,
        tail_ms: int = 100,
        max_utterance_s: float = 30.0,
        threads: int = 1,
    ):
        self.spec = spec
        self.threads = threads  # onnxruntime intra-op threads (edge/threads.py: batching is the parallelism)
        self.speculative_ms = speculative_ms
        self.preroll_ms = preroll_ms
        self.tail_ms = tail_ms
        self.max_utterance_s = max_utterance_s
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self._session = None
        self._pending: list[_Request] = []
        self._flush_task: asyncio.Task | None = None
        self.onnx_calls = 0  # session.run calls so far (batching makes this grow slowly)
        self.frames_processed = 0

    @property
    def loaded(self) -> bool:
        return self._session is not None

    async def load(self) -> None:
        """Open the ONNX model (in the executor: it takes a moment)."""
        if self._session is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        path = resolve_model_path(self.spec.model)
        session = onnx_session(path, self.threads)
        names = {i.name for i in session.get_inputs()}
        if not {"input", "state", "sr"} <= names:
            raise ValueError(f"VAD model {path}: inputs {sorted(names)}, expected Silero v5+ (input, state, sr)")
        self._session = session
        metrics.MODEL_LOADED.labels(stage="vad", model=path.name).set(1)
        log_event(log, "vad model loaded", model=str(path))

    def new_stream(self) -> VadStream:
        if self._session is None:
            raise RuntimeError("VadService.load() must finish before new_stream()")
        return VadStream(self)

    async def _submit(self, stream: VadStream, frames: np.ndarray) -> list[VadEvent]:
        loop = asyncio.get_running_loop()
        req = _Request(stream, stream.generation, frames, loop.create_future())
        self._pending.append(req)
        task = self._flush_task
        if task is None or task.done() or task.get_loop() is not loop:
            # the task's first step runs after the callbacks already queued: this tick's other feeds
            self._flush_task = loop.create_task(self._flush())
        return await req.future

    async def _flush(self) -> None:
        """Run everything pending as batches until nothing is left (requests join while one runs).

        Batches run one at a time, so stream state is only touched here, on the event loop.
        """
        loop = asyncio.get_running_loop()
        while self._pending:
            # requests left behind by a closed event loop (a test's, a crashed server's) are dropped
            batch = [r for r in self._pending if r.future.get_loop() is loop and not r.future.done()]
            self._pending = []
            if not batch:
                continue
            started = time.monotonic()
            for req in batch:
                metrics.STAGE_QUEUE_WAIT.labels(stage="vad").observe(started - req.submitted)
            try:
                probs, states = await loop.run_in_executor(self._executor, self._infer, batch)
                metrics.STAGE_COMPUTE.labels(stage="vad").observe(time.monotonic() - started)
                metrics.BATCH_SIZE.labels(stage="vad").observe(len(batch))
            except Exception as exc:  # a broken model reaches every caller, never hangs them
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                continue
            for st, (state, context, generation) in states.items():
                if generation == st.generation:
                    st._state, st._context = state, context
            for req, p in zip(batch, probs):
                if not req.future.done():
                    stale = req.generation != req.stream.generation
                    req.future.set_result([] if stale else req.stream._advance(req.frames, p))

    def _infer(self, batch: list[_Request]) -> tuple[list[np.ndarray], dict]:
        """Step all streams together: step s runs the s-th pending frame of every stream.

        A stream with several requests in the batch has them chained in order. Returns each
        request's probabilities and each stream's new (state, context, generation).
        """
        probs = [np.zeros(len(r.frames), dtype=np.float32) for r in batch]
        lanes: dict[VadStream, list[tuple[int, int]]] = {}
        for i, r in enumerate(batch):
            lanes.setdefault(r.stream, []).extend((i, k) for k in range(len(r.frames)))
        states = {st: (st._state, st._context, batch[lane[0][0]].generation) for st, lane in lanes.items()}
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        for s in range(max(len(lane) for lane in lanes.values())):
            active = [(st, lane[s]) for st, lane in lanes.items() if s < len(lane)]
            x = np.empty((len(active), CONTEXT + FRAME), dtype=np.float32)
            for row, (st, (i, k)) in enumerate(active):
                x[row, :CONTEXT] = states[st][1]
                x[row, CONTEXT:] = batch[i].frames[k] * (1.0 / 32768.0)
            state = np.concatenate([states[st][0] for st, _ in active], axis=1)
            out, state_n = self._session.run(None, {"input": x, "state": state, "sr": sr})
            self.onnx_calls += 1
            self.frames_processed += len(active)
            for row, (st, (i, k)) in enumerate(active):
                states[st] = (state_n[:, row : row + 1, :].copy(), x[row, -CONTEXT:].copy(), batch[i].generation)
                probs[i][k] = out[row, 0]
        return probs, states
