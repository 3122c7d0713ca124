"""The tools of one edge site, per turn: server tools from topology.yaml plus the session's device tools.

The engine builds one :class:`SiteTools` at start; each turn asks it for a
:class:`TurnTools` (the merged registry, the device's context, the shared loop)
and only turns whose text passes the intent gate (:mod:`shared.tool_intent`) get
one, so ordinary chat pays nothing for tool support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.tool_loop import ToolLoop
from edge.tools.config import build_server_tools, tool_context
from edge.tools.registry import ToolContext, ToolRegistry
from shared.chat import ChatClient
from shared.tool_calling import caller_for
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
                 temperature: float):
        self.spec = spec
        self.site = site
        self.server = build_server_tools(spec, site)
        if spec.mode == "off":
            raise ValueError("tools.mode is off: the engine builds no SiteTools")
        self.loop = ToolLoop(caller_for(llm, spec.mode, llm_kind), max_steps=spec.max_steps, max_tokens=max_tokens,
                             temperature=temperature, call_timeout_s=spec.device_timeout_s + 2.0)

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

    def for_turn(self, req: "TurnStart", user_text: str) -> TurnTools | None:
        """The turn's tools when the request looks like it needs one."""
        registry = self.registry_for(req)
        if not needs_tools(registry, user_text):
            return None
        return TurnTools(registry, tool_context(self.spec, self.site, req.device_id), self.loop)
