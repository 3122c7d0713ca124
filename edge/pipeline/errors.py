"""Typed failures of a turn's stages: each stage wraps what breaks inside it at its boundary,
and :meth:`edge.pipeline.turn.TurnPipeline.run` handles them in one place (apology, ``tts stop``,
one log line, one count)."""

from __future__ import annotations

from edge.pipeline.events import Stage


class StageError(Exception):
    """A stage could not do its part; ``code`` is a short label (metrics), the message says why."""

    stage: Stage = "turn"

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class AsrError(StageError):
    stage = "understanding"


class DecideError(StageError):
    stage = "deciding"


class AnswerFailed(StageError):
    """No answer text: the local model is down or stalled, a cloud answer could not be finished, a tool broke."""

    stage = "answering"


class AnswerShed(AnswerFailed):
    """The edge had no room for this answer after all (e.g. it waited its share in the local model's queue):
    the turn is shed with the busy phrase, not apologised for."""

    limit = "local_queue"  # the shed-turns metric's label


class TtsFailed(StageError):
    stage = "speaking"


def as_stage_error(exc: BaseException) -> StageError:
    """Anything else that escaped a stage is a bug: still a StageError, so it is handled the same way."""
    if isinstance(exc, StageError):
        return exc
    return StageError("bug", f"{type(exc).__name__}: {exc}")
