"""A tool turn decided by the embedding router first and the small model only where it must.

The router (shared.intent_router) says whether the request needs a tool and
shortlists the candidates; the words then pick among them when they name one
(shared.tool_intent.clear_winner: "turn the light off" vs "on") or settle one's
arguments (:func:`settled_by_words`: "turn the lamp pink"), else the
grammar-forced model chooses among the shortlist (shared.grammar_tools). The
arguments come from the words or the model, clamped to the schema, and the
decision rule (shared.tool_decision) says whether to call, ask first, or answer
without a tool. The outcome is a :class:`ToolTurn` the edge's turn acts on: a
call, a yes/no question with the call that waits for the answer, or nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from shared.argument_hints import argument_hints
from shared.grammar_tools import GrammarToolCaller, last_user_text
from shared.intent_router import IntentRouter, RouteDecision
from shared.log import log_event
from shared.tool_calling import ToolDef, ToolSet, llm_name
from shared.tool_decision import Outcome, PendingCall, confirmation_question, decide_action
from shared.tool_intent import clear_winner
from shared.wire import ToolCall, new_id

log = logging.getLogger("shared.routed_tools")


@dataclass(frozen=True)
class ToolTurn:
    """call: run ``call`` now; confirm: say ``question``, keep ``pending``; answer: no tool this turn."""

    outcome: Outcome
    route: RouteDecision
    call: ToolCall | None = None
    question: str | None = None
    pending: PendingCall | None = None
    reason: str = ""


class _Subset:
    """The router's shortlist as a ToolSet (what the words and the model choose among)."""

    def __init__(self, tools: ToolSet, names: tuple[str, ...]):
        self._tools = [t for t in (tools.get(n) for n in names) if t is not None]

    def __iter__(self) -> Iterator[ToolDef]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> ToolDef | None:
        return next((t for t in self._tools if name in (t.name, llm_name(t.name))), None)

    def llm_tools(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": llm_name(t.name), "description": t.description,
                                                  "parameters": t.parameters}} for t in self._tools]


def settled_by_words(tools: ToolSet, text: str) -> ToolDef | None:
    """The one candidate whose arguments the words settle ("turn the lamp pink": the colour tool, not the
    switch; "volume 60": the volume tool, not the status); None when none or several are."""
    settled = [t for t in tools if t.parameters.get("properties") and argument_hints(t, text) is not None]
    return settled[0] if len(settled) == 1 else None


class RoutedToolCaller:
    """Router in front of the grammar caller; ``decide`` returns a :class:`ToolTurn`."""

    def __init__(self, router: IntentRouter, caller: GrammarToolCaller):
        self.router = router
        self.caller = caller

    async def route(self, text: str, tools: ToolSet | None) -> RouteDecision:
        """The router's decision, computed off the event loop (one embedding)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.router.route, text, tools)

    async def decide(self, messages: list[dict[str, Any]], tools: ToolSet, *, route: RouteDecision | None = None,
                     state: dict[str, Any] | None = None) -> ToolTurn:
        """The tool turn for the last user request. ``route``: the turn's decision if already computed;
        ``state``: the device's current values by property name (relative changes: "a bit louder")."""
        text = last_user_text(messages)
        route = route or await self.route(text, tools)
        if route.is_chat:
            return self._logged(ToolTurn("answer", route, reason="chat"))
        shortlist = _Subset(tools, route.candidates)
        tool = shortlist.get(route.candidates[0]) if len(shortlist) == 1 else clear_winner(shortlist, text)
        tool = tool or settled_by_words(shortlist, text)
        if tool is None:  # the model picks among close candidates; "none" only when the router was unsure
            tool = await self.caller.choose(text, list(shortlist), allow_none=not route.clear)
        action = decide_action(route, tool)
        if tool is None or action.outcome == "answer":
            return self._logged(ToolTurn("answer", route, reason=action.reason))
        args = await self.caller.arguments(tool, text, state)
        call = ToolCall(new_id(), llm_name(tool.name), json.dumps(args))
        if action.outcome == "call":
            return self._logged(ToolTurn("call", route, call=call, reason=action.reason))
        question = confirmation_question(tool, args)
        return self._logged(ToolTurn("confirm", route, call=call, question=question,
                                     pending=PendingCall(tool.name, args, question), reason=action.reason))

    @staticmethod
    def _logged(turn: ToolTurn) -> ToolTurn:
        r = turn.route
        log_event(log, "tool route", outcome=turn.outcome, reason=turn.reason, tool=r.tool,
                  called=turn.call.name if turn.call else None, score=round(r.score, 3), margin=round(r.margin, 3),
                  clear=r.clear, intent=r.intent, route_ms=round(r.ms, 1))
        return turn
