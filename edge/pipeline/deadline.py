"""The turn's answer deadline: an answer still being written long after the end of speech is given up.

Each stage bounds its own waits (the ASR queue, the model's first token, a stall of 20 s
without a token, the cloud's deadline), but a local answer trickling a token every few
seconds under overload passes all of them and can outlast the device's patience (one of
2,000 soak turns took 60 s). This bounds the whole: past ``deadline_s`` after the end of
speech the answer stops with :class:`AnswerFailed` ("deadline"), and the turn's failure
owner speaks the apology after what was already said and sends ``tts stop``.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from edge.pipeline.errors import AnswerFailed
from edge.pipeline.ports import AnswerSource


class DeadlinedAnswer:
    """``answer`` whose text must arrive before ``deadline`` (``time.monotonic()`` seconds)."""

    def __init__(self, answer: AnswerSource, deadline: float, budget_s: float):
        self.answer = answer
        self.deadline = deadline
        self.budget_s = budget_s

    @property
    def answered_by(self) -> str:
        return self.answer.answered_by

    @property
    def reason(self) -> str:
        return self.answer.reason

    @property
    def lead_in_said(self) -> str:
        return getattr(self.answer, "lead_in_said", "")

    async def stream(self) -> AsyncIterator[str]:
        texts = aiter(self.answer.stream())
        while True:
            # Each wait bounded on its own: a timeout spanning the yields would cancel whatever the
            # consumer is doing at the deadline (synthesis, playback) instead of this wait.
            try:
                async with asyncio.timeout(max(self.deadline - time.monotonic(), 0.0)):
                    text = await anext(texts)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise AnswerFailed("deadline", f"answer unfinished {self.budget_s:g}s after the end of speech") \
                    from None
            yield text

    async def aclose(self) -> None:
        await self.answer.aclose()
