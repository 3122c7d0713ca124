"""Tools the assistant can call: the device's MCP tools and the edge's server tools, in one registry."""

from edge.tools.registry import Tool, ToolContext, ToolError, ToolRegistry

__all__ = ["Tool", "ToolContext", "ToolError", "ToolRegistry"]
