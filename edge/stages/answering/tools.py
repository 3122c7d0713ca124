"""The local tool loop as an AnswerSource (the model calls tools until it speaks; see :mod:`edge.tool_loop`)."""

from __future__ import annotations

from typing import AsyncIterator

from edge.stages.answering.local import LocalHealth, guarded
from edge.tools.site import TurnTools
from shared.wire import ToolCall


class LocalToolRounds:
    answered_by = "edge"

    def __init__(self, tools: TurnTools, messages: list[dict], *, stall_s: float, health: LocalHealth | None = None,
                 reason: str = "", decided: list[ToolCall] | None = None, queue_s: float | None = None):
        self.reason = reason
        run = tools.loop.start(messages, tools.registry, tools.ctx, decided)
        # a device tool may take its whole timeout between two model outputs
        wait = tools.loop.call_timeout_s
        self._deltas = guarded(run.deltas(), stall_s + wait, "local tool loop", health,
                               queue_s=None if queue_s is None else queue_s + wait)

    def stream(self) -> AsyncIterator[str]:
        return self._deltas

    async def aclose(self) -> None:
        await self._deltas.aclose()
