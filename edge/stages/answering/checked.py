"""The local model's answer, checked before it is spoken (issue 15: the 135M model opens in French).

The first sentence is held back until it is complete (the speaking stage waits for
a whole sentence before synthesis anyway, so holding it costs no audio time) and
judged by :func:`shared.answer_check.check_answer`. A good answer streams on; an
answer with a sentence in another language keeps the sentences in the user's
language; an empty, greeting-only, echoing or wholly foreign answer is dropped and
the replacement speaks instead (the cloud when it is healthy, else a cached phrase).
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Callable

from edge import metrics
from edge.pipeline.ports import AnswerSource
from edge.sentences import SentenceSplitter
from shared.answer_check import check_answer
from shared.log import log_event

log = logging.getLogger("edge.answer_check")



class CheckedAnswer:
    def __init__(self, inner: AnswerSource, question: str, language: str,
                 replacement: Callable[[], AnswerSource]):
        self.inner = inner
        self.question = question
        self.language = language
        self.replacement = replacement
        self.reason = inner.reason
        self._answered_by: str | None = None
        self._spare: AnswerSource | None = None

    @property
    def answered_by(self) -> str:
        return self._answered_by or self.inner.answered_by

    async def stream(self) -> AsyncIterator[str]:
        deltas = self.inner.stream()
        held, first = "", SentenceSplitter()  # the speaking stage's own sentence rules (CJK included)
        async for delta in deltas:
            held += delta
            if first.feed(delta):
                break
        verdict = check_answer(self.question, held, self.language)
        if verdict.ok or (verdict.problem == "foreign_language" and verdict.kept):
            if not verdict.ok:
                self._note(verdict.problem, verdict.detail, replaced=False)
            yield held if verdict.ok else verdict.kept + " "
            async for delta in deltas:
                yield delta
            return
        self._note(verdict.problem, verdict.detail, replaced=True)
        await self.inner.aclose()
        self._spare = self.replacement()
        self._answered_by = self._spare.answered_by
        self.reason = f"{self.reason}; local answer failed the check ({verdict.problem})"
        async for delta in self._spare.stream():
            self._answered_by = self._spare.answered_by
            yield delta

    def _note(self, problem: str | None, detail: str, replaced: bool) -> None:
        metrics.ANSWER_CHECKS.labels(problem=problem or "", action="replaced" if replaced else "trimmed").inc()
        log_event(log, "local answer failed the check", problem=problem, detail=detail, replaced=replaced)

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self._spare is not None:
            await self._spare.aclose()
