"""The server tools a site enables, built from the ``tools:`` section of topology.yaml.

The section itself (modes, per-site lists, device timezones, HTTP tools) is validated
with the rest of the topology in shared/topology.py (``ToolsSpec``); this module turns
it into runnable tools.
"""

from __future__ import annotations

from edge.tools.calculator import calculator_tool
from edge.tools.clock import clock_tool
from edge.tools.http_tool import http_tool
from edge.tools.registry import Tool, ToolContext, ToolRegistry
from shared.topology import BUILTIN_TOOLS, ToolsSpec


def builtin_tools() -> dict[str, Tool]:
    tools = {t.name: t for t in (clock_tool(), calculator_tool())}
    assert tuple(tools) == BUILTIN_TOOLS, f"shared.topology.BUILTIN_TOOLS {BUILTIN_TOOLS} != {tuple(tools)}"
    return tools


def build_server_tools(spec: ToolsSpec, site: str | None = None) -> ToolRegistry:
    """The server tools a site enables, ready to merge with a session's device tools."""
    available = builtin_tools() | {h.name: http_tool(h) for h in spec.http}
    return ToolRegistry(available[name] for name in spec.enabled_for(site))


def tool_context(spec: ToolsSpec, site: str | None, device_id: str | None) -> ToolContext:
    """Who a call is for: the device and its timezone (device prefix rule, else site, else default)."""
    return ToolContext(device_id=device_id, timezone=spec.timezone_for(site, device_id))
