"""An answer whose route is still being decided, so that speaking can start with the decision.

Deciding is quick for most turns (the policy, one router embedding), but a tool turn may ask
the local model for the call's arguments, and under load that model is queued behind other
devices' answers for seconds. Speaking starts at once on a :class:`PlannedAnswer`, so its
no-silence guarantee (the cached hold phrase after ``edge.session.hold_after_ms``) covers the
decision too; the text follows once the route is known.
"""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

from edge.pipeline.ports import AnswerSource


class PlannedAnswer:
    """The AnswerSource ``plan()`` returns, planned when the first text is asked for."""

    def __init__(self, plan: Callable[[], Awaitable[AnswerSource]]):
        self._plan = plan
        self.answer: AnswerSource | None = None

    @property
    def answered_by(self) -> str:
        return self.answer.answered_by if self.answer is not None else "edge"

    @property
    def reason(self) -> str:
        return self.answer.reason if self.answer is not None else ""

    @property
    def lead_in_said(self) -> str:
        return getattr(self.answer, "lead_in_said", "")

    async def stream(self) -> AsyncIterator[str]:
        self.answer = await self._plan()
        async for text in self.answer.stream():
            yield text

    async def aclose(self) -> None:
        if self.answer is not None:
            await self.answer.aclose()
