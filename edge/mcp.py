"""MCP client towards one device: the device is the MCP server, its tools act on the hardware.

JSON-RPC 2.0 travels inside ``{"type":"mcp","payload":...}`` messages on the
device WebSocket. On a hello with ``features.mcp`` the session calls
:meth:`McpClient.initialize` (``initialize`` then ``tools/list`` following
``nextCursor``) and later turns call :meth:`McpClient.call_tool`. Replies are
matched by id; a device that never answers costs a timeout, never a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Awaitable, Callable

from edge import metrics
from shared.log import log_event

log = logging.getLogger("edge.mcp")

PROTOCOL_VERSION = "2024-11-05"
MAX_PAGES = 32  # a device that keeps returning cursors must not loop forever


class McpError(Exception):
    """A JSON-RPC error from the device, a timeout, a malformed reply or a closed session."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message if code is None else f"{message} (code {code})")
        self.code = code
        self.message = message


class McpClient:
    """Sends requests through ``send`` (one JSON-RPC payload; the session wraps it in an ``mcp`` message)
    and resolves them from :meth:`handle_payload`."""

    def __init__(self, send: Callable[[dict], Awaitable[None]], timeout: float = 10.0):
        self._send = send
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.tools: list[dict[str, Any]] = []
        self.server_info: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.settled = asyncio.Event()  # initialize finished, well or not: a turn waits for this, never longer
        self._closed = False
        # (tools, registry) merged by edge.tools.site for these tools; kept here, not in a table keyed by
        # this client, so it is garbage with the session (the registry refers back to this client)
        self.merged: tuple[list, Any] | None = None

    async def request(self, method: str, params: dict[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """One JSON-RPC request; returns ``result`` or raises McpError."""
        if self._closed:
            raise McpError("session closed")
        rid = next(self._ids)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        payload = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        try:
            await self._send(payload)
            return await asyncio.wait_for(fut, self.timeout if timeout is None else timeout)
        except asyncio.TimeoutError:
            metrics.ERRORS.labels(kind="mcp_timeout").inc()
            raise McpError(f"{method}: no reply from the device within {timeout or self.timeout:g}s") from None
        finally:
            self._pending.pop(rid, None)

    def handle_payload(self, payload: dict[str, Any]) -> None:
        """A device ``mcp`` payload: a reply to one of our requests, or a notification (logged)."""
        rid = payload.get("id")
        if "method" in payload and rid is None:
            log_event(log, "mcp notification", method=str(payload.get("method"))[:80])
            return
        fut = self._pending.get(rid) if isinstance(rid, int) else None
        if fut is None or fut.done():
            metrics.PROTOCOL_ERRORS.labels(kind="mcp_unmatched").inc()
            log_event(log, "mcp reply matches no request", logging.WARNING, id=str(rid)[:40])
            return
        if isinstance(payload.get("error"), dict):
            err = payload["error"]
            code = err.get("code") if isinstance(err.get("code"), int) else None
            fut.set_exception(McpError(str(err.get("message", "error"))[:500], code))
        elif "result" in payload:
            fut.set_result(payload["result"])
        else:
            metrics.PROTOCOL_ERRORS.labels(kind="mcp_malformed").inc()
            fut.set_exception(McpError("malformed reply: neither result nor error"))

    async def initialize(self, capabilities: dict[str, Any] | None = None, timeout: float | None = None) -> list[dict]:
        """``initialize`` then every page of ``tools/list``; the tools are kept in ``self.tools``."""
        try:
            result = await self.request("initialize", {"protocolVersion": PROTOCOL_VERSION,
                                                       "capabilities": capabilities or {},
                                                       "clientInfo": {"name": "xiaozhi-edge", "version": "0.1"}},
                                        timeout)
            if isinstance(result, dict) and isinstance(result.get("serverInfo"), dict):
                self.server_info = result["serverInfo"]
            self.tools = await self.list_tools(timeout)
        finally:
            self.settled.set()
        self.ready.set()
        log_event(log, "mcp ready", tools=[t.get("name") for t in self.tools])
        return self.tools

    async def list_tools(self, timeout: float | None = None) -> list[dict]:
        tools: list[dict] = []
        cursor = ""
        for _ in range(MAX_PAGES):
            result = await self.request("tools/list", {"cursor": cursor}, timeout)
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                raise McpError("malformed tools/list reply: no 'tools' list")
            tools += [t for t in result["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str)]
            cursor = result.get("nextCursor") or ""
            if not isinstance(cursor, str) or not cursor:
                return tools
        raise McpError(f"tools/list: more than {MAX_PAGES} pages")

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None,
                        timeout: float | None = None) -> dict[str, Any]:
        """``tools/call``; returns the device's result (``content``, ``isError``)."""
        result = await self.request("tools/call", {"name": name, "arguments": arguments or {}}, timeout)
        if not isinstance(result, dict):
            raise McpError(f"malformed tools/call reply for {name}")
        return result

    def close(self) -> None:
        """The session ended: every waiting request fails at once."""
        self._closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(McpError("session closed"))
        self._pending.clear()
