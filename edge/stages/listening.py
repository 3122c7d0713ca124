"""Listening: VAD, endpointing and the speculative ASR job of one device, one owner for all three.

In ``auto``/``realtime`` modes the VAD decides where an utterance ends; at its
pause (:class:`edge.vad.SpeechPaused`) the transcription starts early, and if the
user does not speak again the same job becomes the turn's transcript (the VAD
guarantees the paused and ended audio are the same samples). Once that job is done
its text is judged (edge/end_of_turn.py): a finished sentence ends the turn at
``early_commit_ms`` of silence, one cut mid-thought waits ``unfinished_silence_ms``. In ``manual`` mode
(push-to-talk) the utterance is what arrived between ``listen start`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Protocol

import numpy as np

from edge import metrics
from edge.end_of_turn import verdict
from edge.pipeline.events import TurnEvent, UserSpeaking, UtteranceEnded
from edge.vad import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted
from shared.log import log_event

log = logging.getLogger("edge.listening")

ASR_RATE = 16000
MANUAL_MIN_MS = 200  # a shorter push-to-talk press is a mis-press, not an utterance
MANUAL_MAX_S = 60  # push-to-talk audio kept at most


class Transcriber(Protocol):
    def submit(self, pcm16k: np.ndarray) -> Awaitable[Any]: ...

    def should_speculate(self) -> bool: ...


class VadFactory(Protocol):
    def new_stream(self) -> Any: ...


class Listening:
    """Feed 16 kHz PCM, get :class:`UserSpeaking` / :class:`UtteranceEnded` events."""

    def __init__(self, vad: VadFactory, asr: Transcriber, mode: str = "auto", early_commit_ms: int = 0,
                 unfinished_silence_ms: int = 0):
        self.vad = vad
        self.asr = asr
        self.mode = mode
        self.early_commit_ms = early_commit_ms  # 0: the VAD's silence window alone ends a turn
        self.unfinished_silence_ms = unfinished_silence_ms
        self._stream = vad.new_stream() if mode != "manual" else None
        self._pending: asyncio.Future | None = None  # the speculative job started at the pause
        self._verdict = ""  # what the pending job's text said about the end of the turn, once it is done
        self._manual: list[np.ndarray] = []
        self._manual_samples = 0

    async def feed(self, pcm: np.ndarray) -> list[TurnEvent]:
        if self.mode == "manual":
            if self._manual_samples < ASR_RATE * MANUAL_MAX_S:
                self._manual.append(pcm)
                self._manual_samples += pcm.size
            return []
        out: list[TurnEvent] = []
        for ev in await self._stream.feed(pcm):
            match ev:
                case SpeechStarted():
                    out.append(UserSpeaking())
                case SpeechPaused(pcm=p):
                    # Under load the guess is skipped: the end of speech transcribes once instead.
                    self._pending = self.asr.submit(p) if self.asr.should_speculate() else None
                    self._verdict = ""
                case SpeechResumed():
                    self._pending = None
                case SpeechEnded():
                    out.append(self._ended(ev))
        if self._pending is not None and self.early_commit_ms and not out:
            ended = self._judge_pause()
            if ended is not None:
                out.append(self._ended(ended))
        return out

    def _ended(self, ev: SpeechEnded) -> UtteranceEnded:
        job, self._pending = self._pending, None
        if ev.early:
            metrics.EARLY_END_OF_TURN.labels(verdict="complete").inc()
        return UtteranceEnded(pcm=ev.pcm, transcript=job or self.asr.submit(ev.pcm), eos_window_ms=ev.eos_window_ms,
                              speculative=job is not None, early=ev.early)

    def _judge_pause(self) -> SpeechEnded | None:
        """The paused utterance ended early (its text is a finished sentence), or None to keep listening."""
        job = self._pending
        if not job.done() or not self._stream.paused:
            return None
        if not self._verdict:
            failed = job.cancelled() or job.exception() is not None
            self._verdict = "unsure" if failed else verdict(job.result().text, job.result().language)
            if self._verdict == "unfinished":
                metrics.EARLY_END_OF_TURN.labels(verdict="unfinished").inc()
                self._stream.wait_longer(self.unfinished_silence_ms)
        if self._verdict == "complete" and self._stream.silence_ms >= self.early_commit_ms:
            return self._stream.end_now()
        return None

    def stop(self) -> UtteranceEnded | None:
        """Push-to-talk released: the utterance, or None for a mis-press."""
        pcm = np.concatenate(self._manual) if self._manual else np.zeros(0, dtype=np.int16)
        self._manual, self._manual_samples = [], 0
        if pcm.size < ASR_RATE * MANUAL_MIN_MS // 1000:
            log_event(log, "push-to-talk too short, ignored", ms=round(pcm.size * 1000 / ASR_RATE))
            return None
        return UtteranceEnded(pcm=pcm, transcript=self.asr.submit(pcm))
