"""The turn's milestones as typed events (a closed set: a turn's whole life can be listed).

Only milestones become events (about ten per turn), never audio frames. The
turn stamps ``turn_id``; ``at_ms`` is :func:`shared.log.monotonic_ms` when the
event was made, so latencies are differences of two events. Observers
(:mod:`edge.pipeline.observers`) turn them into metrics, the turn log and the
policy trace.

Two events come from listening, outside any turn: :class:`UserSpeaking` (the
barge-in source) and :class:`UtteranceEnded` (what starts a speech turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Literal

import numpy as np

from shared.log import monotonic_ms

Stage = Literal["listening", "understanding", "deciding", "answering", "speaking", "turn"]
Outcome = Literal["ok", "empty", "cancelled", "error", "shed"]


@dataclass(frozen=True, kw_only=True)
class TurnEvent:
    turn_id: str = ""
    at_ms: float = field(default_factory=monotonic_ms)


# ---------------------------------------------------------------- listening (session level)
@dataclass(frozen=True, kw_only=True)
class UserSpeaking(TurnEvent):
    """Speech has lasted long enough to be a real utterance: stop an answer in realtime mode."""


@dataclass(frozen=True, kw_only=True)
class UtteranceEnded(TurnEvent):
    """The user finished speaking; ``transcript`` is the (possibly speculative, already running) ASR job."""

    pcm: np.ndarray = field(repr=False)
    transcript: Awaitable[Any] = field(repr=False)
    eos_window_ms: float = 0.0
    speculative: bool = False  # the job was started at the pause, before the end of speech
    early: bool = False  # ended before the VAD's silence window: the text read as a finished sentence


# ---------------------------------------------------------------- the turn
@dataclass(frozen=True, kw_only=True)
class TurnStarted(TurnEvent):
    kind: str
    origin_ms: float  # end of the user's speech (or the wake/text message): latencies count from here
    silence_ms: float = 0.0  # of a speech turn: the silence waited before origin_ms (the end-of-turn window)


@dataclass(frozen=True, kw_only=True)
class TurnShed(TurnEvent):
    """Admission refused the turn (the edge is full), or its answer found no room after all (AnswerShed):
    the busy phrase instead of an answer."""

    limit: str  # asr_queue | asr_wait | active_turns | local_llm | local_queue
    reason: str


@dataclass(frozen=True, kw_only=True)
class Transcribed(TurnEvent):
    text: str
    language: str = ""
    speculative_hit: bool = False


@dataclass(frozen=True, kw_only=True)
class Decided(TurnEvent):
    source: Literal["edge", "cloud", "cache"]
    rule: str
    reason: str
    revision: int = 0
    features: Any = None  # shared.policy.TurnFeatures (the trace replays them)
    decision: Any = None  # shared.policy.Decision
    tools: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class FirstToken(TurnEvent):
    source: str


@dataclass(frozen=True, kw_only=True)
class SpeechStarted(TurnEvent):
    """``tts start`` went out: the device shows speaking."""


@dataclass(frozen=True, kw_only=True)
class SentenceSpoken(TurnEvent):
    text: str
    cached: bool
    first_audio: bool


@dataclass(frozen=True, kw_only=True)
class SpeechStopped(TurnEvent):
    """``tts stop`` went out (always, once per ``tts start``)."""


@dataclass(frozen=True, kw_only=True)
class TurnFailed(TurnEvent):
    stage: Stage
    code: str
    detail: str
    error: BaseException | None = field(default=None, repr=False, compare=False)  # for the log's traceback


@dataclass(frozen=True, kw_only=True)
class TurnEnded(TurnEvent):
    outcome: Outcome
    answered_by: str = "none"
    reason: str = ""
    user_text: str = ""
    reply_text: str = ""
