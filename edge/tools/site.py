"""The tools of one edge site, per turn: server tools from topology.yaml plus the session's device tools.

The engine builds one :class:`SiteTools` at start; each turn asks it for a
:class:`TurnTools` (the merged registry, the device's context, the shared loop)
and only turns the embedding router does not score as chat get one (without the
router: turns whose words pass the gate of :mod:`shared.tool_intent`), so
ordinary chat pays nothing for tool support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.tool_loop import ToolLoop
from edge.tools.config import build_server_tools, tool_context
from edge.tools.registry import ToolContext, ToolRegistry
from shared.chat import ChatClient
from shared.grammar_tools import GrammarToolCaller
from shared.intent_router import IntentRouter, RouteDecision
from shared.routed_tools import RoutedToolCaller
from shared.tool_calling import caller_for
from shared.tool_decision import decide_action
from shared.tool_intent import needs_tools
from shared.topology import ToolsSpec

if TYPE_CHECKING:
    from edge.pipeline.turn import TurnStart


@dataclass
class TurnTools:
    """What one turn may call and how: the loop also runs the calls an escalated answer returns."""

    registry: ToolRegistry
    ctx: ToolContext
    loop: ToolLoop


class SiteTools:
    """Server tools enabled for this site, the tool-call strategy of the local model, and the loop."""

    def __init__(self, spec: ToolsSpec, site: str, llm: ChatClient, llm_kind: str, max_tokens: int,
                 temperature: float, router: IntentRouter | None = None):
        self.spec = spec
        self.site = site
        self.server = build_server_tools(spec, site)
        if spec.mode == "off":
            raise ValueError("tools.mode is off: the engine builds no SiteTools")
        caller = caller_for(llm, spec.mode, llm_kind)
        self.loop = ToolLoop(caller, max_steps=spec.max_steps, max_tokens=max_tokens,
                             temperature=temperature, call_timeout_s=spec.device_timeout_s + 2.0)
        # The router decides call / ask first / no tool before any model round (grammar callers: small models);
        # a native caller (a larger local model) only gets the router's yes/no on offering tools at all.
        self.routed = RoutedToolCaller(router, caller) if router and isinstance(caller, GrammarToolCaller) else None

    def registry_for(self, req: "TurnStart") -> ToolRegistry:
        """Server tools plus the device's MCP tools once its ``tools/list`` has arrived.

        Merging checks every tool's schema, so the result is kept on the session's McpClient
        until the device's tool list changes (and goes with the session)."""
        mcp = req.mcp if req.mcp is not None and req.mcp.ready.is_set() else None
        if mcp is None:
            return self.server
        cached = mcp.merged
        if cached is None or cached[0] is not mcp.tools:
            cached = mcp.merged = (mcp.tools, self.server.with_device(mcp, self.spec.device_timeout_s))
        return cached[1]

    def for_turn(self, req: "TurnStart", user_text: str, route: RouteDecision | None = None) -> TurnTools | None:
        """The turn's tools when the request needs one: the router's decision when there is one, else the words."""
        registry = self.registry_for(req)
        if route is not None and not route.is_chat and would_answer(route, registry):
            return None  # no candidate would be acted on: the policy routes the turn as the chat it is
        if (route.is_chat if route is not None else not needs_tools(registry, user_text)):
            return None
        return self.offered(req, registry)

    def offered(self, req: "TurnStart", registry: ToolRegistry | None = None) -> TurnTools:
        """Every tool of the turn (a request in a language the router does not know: the cloud's model decides)."""
        registry = registry or self.registry_for(req)
        return TurnTools(registry, tool_context(self.spec, self.site, req.device_id), self.loop)


def would_answer(route: RouteDecision, registry: ToolRegistry) -> bool:
    """Every shortlisted tool would be answered without a call by the decision rule ("how many minutes are in
    an hour?" shortlists only the clock, unsure and not named): the turn is no tool turn."""
    names = route.candidates or ((route.tool,) if route.tool else ())
    return all(decide_action(route, registry.get(name)).outcome == "answer" for name in names)
