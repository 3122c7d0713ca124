"""Listening: VAD, endpointing and the speculative ASR job of one device, one owner for all three.

In ``auto``/``realtime`` modes the VAD decides where an utterance ends; at its
pause (:class:`edge.vad.SpeechPaused`) the transcription starts early, and if the
user does not speak again the same job becomes the turn's transcript (the VAD
guarantees the paused and ended audio are the same samples). In ``manual`` mode
(push-to-talk) the utterance is what arrived between ``listen start`` and ``stop``.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Protocol

import numpy as np

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

    def __init__(self, vad: VadFactory, asr: Transcriber, mode: str = "auto"):
        self.vad = vad
        self.asr = asr
        self.mode = mode
        self._stream = vad.new_stream() if mode != "manual" else None
        self._pending: Awaitable[Any] | None = None  # the speculative job started at the pause
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
                case SpeechResumed():
                    self._pending = None
                case SpeechEnded(pcm=p):
                    job, self._pending = self._pending, None
                    out.append(UtteranceEnded(pcm=p, transcript=job or self.asr.submit(p),
                                              eos_window_ms=ev.eos_window_ms, speculative=job is not None))
        return out

    def stop(self) -> UtteranceEnded | None:
        """Push-to-talk released: the utterance, or None for a mis-press."""
        pcm = np.concatenate(self._manual) if self._manual else np.zeros(0, dtype=np.int16)
        self._manual, self._manual_samples = [], 0
        if pcm.size < ASR_RATE * MANUAL_MIN_MS // 1000:
            log_event(log, "push-to-talk too short, ignored", ms=round(pcm.size * 1000 / ASR_RATE))
            return None
        return UtteranceEnded(pcm=pcm, transcript=self.asr.submit(pcm))
