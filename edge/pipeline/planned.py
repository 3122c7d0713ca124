"""An answer whose words are still being transcribed and its route decided, so speaking can start with the turn.

Deciding is quick for most turns (the policy, one router embedding), but a tool turn may ask
the local model for the call's arguments, and under load that model is queued behind other
devices' answers for seconds; on a saturated CPU the transcript itself may take a second.
Speaking starts at once on a :class:`PlannedAnswer`, so its no-silence guarantee (the cached
hold phrase after ``edge.session.hold_after_ms``) covers the transcription and the decision
too; the text follows once the route is known. ``understood_at`` (monotonic seconds) marks
the end of the transcription, ``language`` the language it found.
"""

from __future__ import annotations

import time
from typing import AsyncIterator, Awaitable, Callable

from edge.pipeline.ports import AnswerSource


class PlannedAnswer:
    """The AnswerSource ``plan()`` returns, planned when the first text is asked for."""

    def __init__(self, plan: Callable[["PlannedAnswer"], Awaitable[AnswerSource]]):
        self._plan = plan
        self.answer: AnswerSource | None = None
        self.understood_at: float | None = None  # set by ``plan`` once the user's words are known
        self.language = ""  # the turn's language, once known

    @property
    def answered_by(self) -> str:
        return self.answer.answered_by if self.answer is not None else "edge"

    @property
    def reason(self) -> str:
        return self.answer.reason if self.answer is not None else ""

    @property
    def lead_in_said(self) -> str:
        return getattr(self.answer, "lead_in_said", "")

    def understood(self, language: str) -> None:
        """The transcript is there (deciding starts now)."""
        self.understood_at, self.language = time.monotonic(), language

    async def stream(self) -> AsyncIterator[str]:
        self.answer = await self._plan(self)
        async for text in self.answer.stream():
            yield text

    async def aclose(self) -> None:
        if self.answer is not None:
            await self.answer.aclose()


class NothingToSay:
    """The plan's answer to a transcript with no words (silence, noise): speaking says nothing for it."""

    answered_by = "none"
    reason = "empty transcript"

    async def stream(self) -> AsyncIterator[str]:
        return
        yield  # an async generator that yields nothing

    async def aclose(self) -> None:
        return None
