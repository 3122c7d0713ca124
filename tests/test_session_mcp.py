"""MCP client: initialize, paged tools/list, tools/call, errors and timeouts; then through a live session."""

from __future__ import annotations

import asyncio

import pytest

from edge.mcp import McpClient, McpError
from scripts.device_sim import DeviceSimulator
from scripts.sim_board import SimBoard
from tests.fixtures_edge import tone

TOOLS = [{"name": f"self.tool_{i}", "description": f"tool {i}", "inputSchema": {"type": "object"}} for i in range(5)]


class FakeDevice:
    """The device side of JSON-RPC, answering on the loop like a real socket would."""

    def __init__(self, page: int = 2, silent: set[str] | None = None, malformed: set[str] | None = None):
        self.page, self.silent, self.malformed = page, silent or set(), malformed or set()
        self.client: McpClient | None = None
        self.sent: list[dict] = []

    async def send(self, payload: dict) -> None:
        self.sent.append(payload)
        asyncio.get_running_loop().call_soon(self._answer, payload)

    def _answer(self, req: dict) -> None:
        method, rid, params = req["method"], req["id"], req["params"]
        assert req["jsonrpc"] == "2.0"
        if method in self.silent:
            return
        if method in self.malformed:
            self.client.handle_payload({"jsonrpc": "2.0", "id": rid})
            return
        if method == "initialize":
            reply = {"result": {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                                "serverInfo": {"name": "board", "version": "1.7.6"}}}
        elif method == "tools/list":
            start = int(params["cursor"] or 0)
            result = {"tools": TOOLS[start:start + self.page]}
            if start + self.page < len(TOOLS):
                result["nextCursor"] = str(start + self.page)
            reply = {"result": result}
        elif params.get("name") == "self.tool_1":
            reply = {"result": {"content": [{"type": "text", "text": str(params["arguments"])}], "isError": False}}
        else:
            reply = {"error": {"code": -32601, "message": f"Unknown tool: {params.get('name')}"}}
        self.client.handle_payload({"jsonrpc": "2.0", "id": rid, **reply})


def _client(device: FakeDevice, timeout: float = 2.0) -> McpClient:
    device.client = McpClient(device.send, timeout=timeout)
    return device.client


async def test_initialize_follows_pages_and_calls_tools():
    dev = FakeDevice(page=2)
    client = _client(dev)
    tools = await client.initialize()
    assert [t["name"] for t in tools] == [t["name"] for t in TOOLS]
    assert client.ready.is_set() and client.server_info["name"] == "board"
    assert [p["method"] for p in dev.sent] == ["initialize", "tools/list", "tools/list", "tools/list"]
    assert [p["params"]["cursor"] for p in dev.sent[1:]] == ["", "2", "4"]
    assert len({p["id"] for p in dev.sent}) == 4  # every request its own id
    result = await client.call_tool("self.tool_1", {"volume": 30})
    assert result["content"][0]["text"] == "{'volume': 30}" and result["isError"] is False
    with pytest.raises(McpError) as err:
        await client.call_tool("self.nope")
    assert err.value.code == -32601 and "Unknown tool" in err.value.message


async def test_timeouts_and_malformed_replies_raise_mcp_error():
    dev = FakeDevice(silent={"tools/call"}, malformed={"tools/list"})
    client = _client(dev, timeout=0.2)
    with pytest.raises(McpError, match="malformed"):
        await client.initialize()
    assert not client.ready.is_set()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(McpError, match="no reply"):
        await client.call_tool("self.tool_1", {}, timeout=0.3)
    assert 0.25 <= loop.time() - t0 < 1.0
    assert not client._pending  # nothing left waiting
    client.handle_payload({"jsonrpc": "2.0", "id": 999, "result": {}})  # unmatched: ignored
    client.handle_payload({"jsonrpc": "2.0", "method": "notifications/state_changed", "params": {}})


async def test_close_fails_waiting_requests():
    dev = FakeDevice(silent={"tools/call"})
    client = _client(dev, timeout=5)
    call = asyncio.create_task(client.call_tool("self.tool_1"))
    await asyncio.sleep(0.05)
    client.close()
    with pytest.raises(McpError, match="session closed"):
        await call
    with pytest.raises(McpError):
        await client.call_tool("self.tool_1")


async def test_session_discovers_and_calls_device_tools(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    board = SimBoard(page_bytes=1200)  # several tools/list pages
    sim = DeviceSimulator(edge.ws_url, edge.token("aa:bb:cc:dd:ee:40"), "aa:bb:cc:dd:ee:40", board=board)
    await sim.connect()
    try:
        (session,) = edge.sessions
        await asyncio.wait_for(session.mcp.ready.wait(), 5)
        assert [t["name"] for t in session.mcp.tools] == [t.name for t in board.tools if not t.user_only]
        methods = [r["method"] for r in sim.mcp_requests]
        assert methods[0] == "initialize" and methods.count("tools/list") >= 2
        result = await session.mcp.call_tool("self.audio_speaker.set_volume", {"volume": 30}, timeout=5)
        assert result["content"][0]["text"] == "true" and board.state.volume == 30
        with pytest.raises(McpError):
            await session.mcp.call_tool("self.camera.take_photo", {}, timeout=5)
        # turns get the session's MCP client
        report = await sim.run_turn(tone(600))
        assert report.frames > 0 and fake_engine.requests[0].mcp is session.mcp
    finally:
        await sim.close()


async def test_mcp_message_without_mcp_feature_is_rejected(edge_server, fake_engine):
    from tests.test_session_input import RawDevice

    edge = await edge_server(fake_engine)
    async with RawDevice(edge) as dev:
        await dev.hello()  # features: {} (no mcp)
        await dev.ws.send_str('{"type":"mcp","payload":{"jsonrpc":"2.0","id":1,"result":{}}}')
        assert (await dev.json())["kind"] == "mcp_unexpected"


async def test_a_closed_sessions_mcp_client_is_garbage_collected():
    """The site's merged tool registry refers back to the McpClient; it must not keep the session alive."""
    import gc
    import weakref

    from edge.pipeline.turn import TurnStart
    from edge.tools.site import SiteTools
    from shared.topology import ToolsSpec
    from shared.chat import ChatClient

    site = SiteTools(ToolsSpec(), "local-site", ChatClient("http://127.0.0.1:9/v1", "stand-in"), "llamacpp",
                     max_tokens=40, temperature=0.0)
    dev = FakeDevice(page=5)
    client = _client(dev)
    await client.initialize()
    req = TurnStart("t1", "s1", "aa:bb:cc", "text", mcp=client)
    registry = site.registry_for(req)
    assert registry.get("self.tool_1") is not None
    assert site.registry_for(req) is registry  # kept while the session lives and its tool list is unchanged
    alive = weakref.ref(client)
    client.close()
    del client, req, registry, dev.client
    gc.collect()
    assert alive() is None
