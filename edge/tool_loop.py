"""The tool-call loop of one turn: the LLM calls tools, their results go back to it, until it speaks.

    loop = ToolLoop(caller_for(llm, mode), max_steps=3)
    run = loop.start(messages, registry, ctx)        # registry: server tools + the session's device tools
    async for text in run.deltas(): ...              # the spoken answer (an AnswerStream's deltas)
    run.calls                                        # what was called, with outcome (logs, benchmarks)

Each round the model either answers (its text is streamed straight through) or
asks for tool calls; these are validated against their schemas and executed
(device tools over MCP with a timeout, server tools in process), the results are
appended as ``tool`` messages and the model continues. The last allowed round
offers no tools, so the model must answer. An unknown tool, bad arguments, a
device that never answers, a failing tool or a malformed result ends the turn
with a short spoken apology (the phrases are fixed, so the TTS cache has them).
The cloud path reuses :meth:`ToolLoop.execute` for calls a worker returns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, fields
from typing import Any, AsyncIterator

from edge import metrics
from edge.tools.registry import ToolContext, ToolError, ToolRegistry
from shared.grammar_tools import DONE, NOT_DONE
from shared.log import log_event, monotonic_ms
from shared.tool_calling import ToolCaller
from shared.wire import ToolCall, ToolResult

log = logging.getLogger("edge.tool_loop")


@dataclass(frozen=True)
class ToolPhrases:
    """What the user hears when a tool round fails; fixed so that the TTS cache pre-warms them."""

    unknown_tool: str = "Sorry, I can't do that here."
    arguments: str = "Sorry, I didn't get the details for that."
    timeout: str = "Sorry, the device didn't answer."
    failed: str = NOT_DONE
    done: str = DONE  # what small models' turns say after a successful action (shared.grammar_tools)
    malformed: str = "Sorry, I got an answer I don't understand."
    steps: str = "Sorry, I couldn't finish that."

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]

    def for_error(self, error: ToolError) -> str:
        return getattr(self, error.kind, self.failed)


@dataclass
class CallRecord:
    name: str
    arguments: str
    ok: bool
    result: str  # the tool's text, or the error
    error_kind: str = ""
    ms: float = 0.0


@dataclass
class ToolRun:
    """One turn's loop: iterate ``deltas()`` once; ``calls`` and ``apology`` tell what happened."""

    loop: "ToolLoop"
    messages: list[dict[str, Any]]
    registry: ToolRegistry
    ctx: ToolContext
    calls: list[CallRecord] = field(default_factory=list)
    apology: str | None = None
    steps: int = 0
    decided: list[ToolCall] = field(default_factory=list)  # the first round's calls, already decided (router)

    async def deltas(self) -> AsyncIterator[str]:
        loop = self.loop
        msgs = list(self.messages)
        for step in range(loop.max_steps):
            self.steps = step + 1
            last = not loop.offers_tools(step)
            calls: list[ToolCall] = []
            if step == 0 and self.decided and not last:
                calls = list(self.decided)  # no model round: the router and the words chose the call
            else:
                async for delta in loop.caller.step(msgs, None if last else self.registry,
                                                    max_tokens=loop.max_tokens, temperature=loop.temperature):
                    if delta.text:
                        yield delta.text
                    calls += delta.tool_calls
            if not calls:
                return
            if last:
                break
            calls = calls[: loop.max_calls_per_step]
            try:
                results = await loop.execute(calls, self.registry, self.ctx, self.calls)
            except ToolError as exc:
                self.apology = loop.phrases.for_error(exc)
                yield self.apology
                return
            msgs.append({"role": "assistant", "content": None, "tool_calls": [c.to_openai() for c in calls]})
            msgs += [{"role": "tool", "tool_call_id": r.call_id, "content": r.content} for r in results]
        self.apology = loop.phrases.steps
        yield self.apology


class ToolLoop:
    """Bounded tool-call loop around a ToolCaller; one instance per engine, one ToolRun per turn."""

    def __init__(self, caller: ToolCaller, *, max_steps: int = 3, max_tokens: int = 60, temperature: float = 0.3,
                 call_timeout_s: float = 30.0, max_calls_per_step: int = 4, phrases: ToolPhrases = ToolPhrases()):
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.caller = caller
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.call_timeout_s = call_timeout_s
        self.max_calls_per_step = max_calls_per_step
        self.phrases = phrases

    def offers_tools(self, step: int) -> bool:
        """Round ``step`` (from 0) may call tools; the last allowed round offers none, so the model answers."""
        return step < self.max_steps - 1

    async def answer_only(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        """The model's spoken answer with no tools offered (e.g. telling the outcome of tools that already ran)."""
        async for delta in self.caller.step(messages, None, max_tokens=self.max_tokens, temperature=self.temperature):
            if delta.text:
                yield delta.text

    def start(self, messages: list[dict[str, Any]], registry: ToolRegistry, ctx: ToolContext,
              decided: list[ToolCall] | None = None) -> ToolRun:
        """One turn's rounds; ``decided``: calls chosen before the loop (run first, then the model answers)."""
        return ToolRun(self, messages, registry, ctx, decided=list(decided or []))

    async def execute(self, calls: list[ToolCall], registry: ToolRegistry, ctx: ToolContext,
                      records: list[CallRecord] | None = None) -> list[ToolResult]:
        """Run calls in order; the first failure raises ToolError (the caller apologises)."""
        results = []
        for call in calls:
            start = monotonic_ms()
            tool = registry.get(call.name)
            kind = tool.kind if tool is not None else "unknown"
            try:
                text = await asyncio.wait_for(registry.call(call.name, call.arguments, ctx), self.call_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                err = ToolError("timeout", f"{call.name}: no result within {self.call_timeout_s:g}s")
            except ToolError as exc:
                err = exc
            else:
                ms = round(monotonic_ms() - start, 1)
                metrics.TOOL_CALLS.labels(kind=kind, outcome="ok").inc()
                metrics.TOOL_LATENCY.labels(kind=kind).observe(ms / 1000)
                if records is not None:
                    records.append(CallRecord(call.name, call.arguments, True, text, "", ms))
                results.append(ToolResult(call.id, text))
                continue
            ms = round(monotonic_ms() - start, 1)
            metrics.TOOL_CALLS.labels(kind=kind, outcome=err.kind).inc()
            if records is not None:
                records.append(CallRecord(call.name, call.arguments, False, err.message, err.kind, ms))
            log_event(log, "tool call failed", logging.WARNING, tool=call.name, kind=err.kind, error=err.message,
                      ms=ms)
            raise err
        return results
