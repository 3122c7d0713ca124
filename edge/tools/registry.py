"""One registry for every tool a turn may call: server tools (in process) and the device's MCP tools.

The LLM sees one list of OpenAI-style function definitions; the registry maps a
call back to its tool, validates the arguments against the tool's JSON schema and
runs it. Device tools go to the device as MCP ``tools/call`` with a timeout.
Every failure comes out as a :class:`ToolError` with a ``kind`` the tool loop
turns into a short spoken apology.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterable, Iterator, Literal, Protocol

from edge.mcp import McpError
from edge.tools.schema import ArgumentError, BadSchema, check_schema, validate_arguments
from shared.log import log_event, monotonic_ms
from shared.tool_calling import llm_name

log = logging.getLogger("edge.tools")

ErrorKind = Literal["unknown_tool", "arguments", "timeout", "failed", "malformed"]
MAX_RESULT_CHARS = 2000  # a tool result goes back into a small model's context


@dataclass(frozen=True)
class ToolContext:
    """Who a call is for: the device (and its timezone) of the current turn."""

    device_id: str | None = None
    timezone: str = "UTC"


class ToolError(Exception):
    """A call that could not be done; ``kind`` says why (unknown_tool, arguments, timeout, failed, malformed)."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    """A callable tool with its JSON-schema ``parameters``.

    ``examples`` are (request, arguments) pairs that small models get as few-shot hints.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: ToolHandler
    kind: Literal["server", "device"] = "server"
    examples: tuple[tuple[str, dict[str, Any]], ...] = ()


class DeviceTools(Protocol):
    """What the registry needs from a session's MCP client (edge.mcp.McpClient)."""

    tools: list[dict[str, Any]]

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None,
                        timeout: float | None = None) -> dict[str, Any]: ...


def mcp_result_text(result: Any) -> str:
    """The text of an MCP ``tools/call`` result; ToolError for an error result or an unknown shape."""
    if not isinstance(result, dict) or not isinstance(result.get("content"), list):
        raise ToolError("malformed", "tools/call result has no 'content' list")
    parts = []
    for item in result["content"]:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise ToolError("malformed", "tools/call content item is not an object with a type")
        if item["type"] == "text":
            if not isinstance(item.get("text"), str):
                raise ToolError("malformed", "text content without a 'text' string")
            parts.append(item["text"])
        else:
            parts.append(f"[{item['type']}]")
    text = "\n".join(parts)
    if result.get("isError") is True:
        raise ToolError("failed", text[:200] or "the device reported an error")
    return text


class ToolRegistry:
    """Tools by name; ``llm_tools()`` for the model, ``call()`` to run one."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        self._by_llm_name: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        key = llm_name(tool.name)
        if tool.name in self._tools or key in self._by_llm_name:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        tool = replace(tool, parameters=check_schema(tool.parameters))
        self._tools[tool.name] = tool
        self._by_llm_name[key] = tool

    def get(self, name: str) -> Tool | None:
        """A tool by its own name or by the name the LLM knows it under."""
        return self._tools.get(name) or self._by_llm_name.get(name)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def llm_tools(self) -> list[dict[str, Any]]:
        """OpenAI ``tools`` definitions (what vLLM, Ollama and llama.cpp accept)."""
        return [{"type": "function",
                 "function": {"name": llm_name(t.name), "description": t.description, "parameters": t.parameters}}
                for t in self._tools.values()]

    def with_device(self, device: DeviceTools | None, timeout_s: float = 5.0) -> "ToolRegistry":
        """A registry of these tools plus the device's MCP tools (called through ``device``)."""
        merged = ToolRegistry(self._tools.values())
        if device is None:
            return merged
        for spec in device.tools:
            tool = device_tool(spec, device, timeout_s)
            if tool is None:
                continue
            try:
                merged.add(tool)
            except (ValueError, BadSchema) as exc:
                log_event(log, "device tool skipped", logging.WARNING, tool=str(spec.get("name"))[:80], error=str(exc))
        return merged

    async def call(self, name: str, arguments: Any, ctx: ToolContext) -> str:
        """Validate and run one call; returns the result text or raises ToolError."""
        tool = self.get(name)
        if tool is None:
            raise ToolError("unknown_tool", f"no tool named {name!r}")
        try:
            args = validate_arguments(tool.parameters, arguments)
        except ArgumentError as exc:
            raise ToolError("arguments", f"{tool.name}: {exc}") from None
        start = monotonic_ms()
        try:
            text = await tool.handler(args, ctx)
        except ToolError:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            raise ToolError("timeout", f"{tool.name}: no answer in time") from None
        except Exception as exc:  # a broken tool is an apology, not a dead turn
            log.exception("tool %s failed", tool.name)
            raise ToolError("failed", f"{tool.name}: {type(exc).__name__}: {exc}") from None
        if not isinstance(text, str):
            raise ToolError("malformed", f"{tool.name} returned {type(text).__name__}, not text")
        log_event(log, "tool call", tool=tool.name, kind=tool.kind, args=args, ms=round(monotonic_ms() - start, 1))
        return text[:MAX_RESULT_CHARS]


def device_tool(spec: dict[str, Any], device: DeviceTools, timeout_s: float) -> Tool | None:
    """A registry Tool for one entry of the device's ``tools/list``; None for tools hidden from the AI."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        return None
    audience = (spec.get("annotations") or {}).get("audience") if isinstance(spec.get("annotations"), dict) else None
    if isinstance(audience, list) and "assistant" not in audience and "user" in audience:
        return None  # the firmware's user-only tools (reboot, firmware upgrade) are not for the model

    async def call(args: dict[str, Any], ctx: ToolContext) -> str:
        # our own deadline fires first, so a silent device is reported as a timeout
        try:
            result = await asyncio.wait_for(device.call_tool(name, args, timeout_s + 1.0), timeout_s)
        except McpError as exc:  # the device answered with an error (unknown tool, bad argument, ...)
            raise ToolError("failed", f"{name}: {exc}") from None
        return mcp_result_text(result)

    return Tool(name=name, description=str(spec.get("description") or "")[:1000],
                parameters=spec.get("inputSchema") if spec.get("inputSchema") is not None else {},
                handler=call, kind="device")


