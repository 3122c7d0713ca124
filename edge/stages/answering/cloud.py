"""The cloud's answer for an escalated turn, with tool rounds run on this edge and a local finish.

Tool calls the worker returns run here (the device is connected to this edge);
their results continue the same generation. If the cloud fails mid-answer, the
local model finishes it (the text so far, or the tools' outcome). A failure
before any text raises :class:`edge.escalation.EscalationFailed` from
:meth:`CloudAnswer.start`, so :class:`edge.stages.answering.fallback.WithFallback`
can still answer locally with nothing spoken.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import AsyncIterator, Callable

from edge import metrics
from edge.escalation import EscalatedAnswer, EscalationClient, EscalationFailed
from edge.tools.registry import ToolError
from edge.tools.site import TurnTools
from shared.log import log_event, monotonic_ms
from shared.policy import Settings
from shared.wire import EscalationRequest, epoch_ms

log = logging.getLogger("edge.answer")

# messages -> the local model's text for them (no tools offered)
LocalFinisher = Callable[[list[dict]], AsyncIterator[str]]


def fell_back(cause: str, detail: str = "", midstream: bool = False) -> None:
    """Count and log one cloud fallback (the turn goes on locally)."""
    metrics.CLOUD_FALLBACKS.labels(cause=f"midstream_{cause}" if midstream else cause).inc()
    log_event(log, "cloud failed mid-answer, finishing locally" if midstream else "cloud fallback",
              logging.WARNING, cause=cause, detail=detail)


class CloudAnswer:
    """One escalated turn: ``await start()`` (first text or EscalationFailed), then ``stream()``."""

    answered_by = "cloud"

    def __init__(self, client: EscalationClient, request: EscalationRequest, settings: Settings, deadline_ms: int,
                 tools: TurnTools | None, finish_locally: LocalFinisher):
        self.client = client
        self.request = request
        self.settings = settings
        self.deadline_ms = deadline_ms
        self.tools = tools
        self.finish_locally = finish_locally
        self.reason = ""
        self._first: EscalatedAnswer | None = None

    async def _escalate(self, request: EscalationRequest) -> EscalatedAnswer:
        started = monotonic_ms()
        cloud = await self.client.start(request, first_token_timeout=self.settings.first_token_timeout_ms / 1000,
                                        model_class=self.settings.model_class)
        metrics.ESCALATION_FIRST_TOKEN.observe((monotonic_ms() - started) / 1000)
        return cloud

    async def start(self) -> None:
        self._first = await self._escalate(self.request)

    async def stream(self) -> AsyncIterator[str]:
        cloud, request, tools = self._first, self.request, self.tools
        assert cloud is not None, "CloudAnswer.start() first"
        rounds = tools.loop.max_steps if tools is not None else 1
        for step in range(rounds):
            try:
                async for text in cloud:
                    yield text
            except EscalationFailed as exc:
                fell_back(exc.cause, exc.detail, midstream=True)
                async for text in self._finish(request.chat_messages(), cloud.text):
                    yield text
                return
            finally:
                await cloud.aclose()
            calls = cloud.tool_calls
            if not calls or tools is None or cloud.final is None or cloud.final.finish_reason != "tool_calls":
                return
            try:
                results = await tools.loop.execute(calls, tools.registry, tools.ctx)
            except ToolError as exc:
                yield tools.loop.phrases.for_error(exc)
                return
            request = replace(request.continue_with(calls, results, cloud.text), deadline=epoch_ms() + self.deadline_ms)
            if not tools.loop.offers_tools(step + 1):  # the tool loop's rule: the last round offers none
                request = replace(request, tools=[], tool_examples={})
            try:
                cloud = await self._escalate(request)
            except EscalationFailed as exc:  # the tools ran: the local model tells their outcome
                fell_back(exc.cause, exc.detail, midstream=True)
                async for text in self._finish(request.chat_messages(), ""):
                    yield text
                return
        yield tools.loop.phrases.steps

    def _finish(self, messages: list[dict], partial: str) -> AsyncIterator[str]:
        """The local model ends an answer the cloud began (its text so far and any tool results)."""
        if partial:
            messages = messages + [{"role": "assistant", "content": partial},
                                   {"role": "user", "content": "Please finish that answer in one short sentence."}]
        return self.finish_locally(messages)

    async def aclose(self) -> None:
        if self._first is not None:
            await self._first.aclose()
