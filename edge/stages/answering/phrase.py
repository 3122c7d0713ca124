"""A fixed phrase as an AnswerSource (the wake-word greeting): cached in the TTS, so it costs no model at all."""

from __future__ import annotations

from typing import AsyncIterator


class PhraseAnswer:
    def __init__(self, text: str, reason: str = "", answered_by: str = "cache"):
        self.text = text
        self.reason = reason
        self.answered_by = answered_by

    async def stream(self) -> AsyncIterator[str]:
        yield self.text

    async def aclose(self) -> None:
        return None
