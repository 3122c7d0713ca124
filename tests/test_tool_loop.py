"""The tool loop with a deterministic stand-in model, and device tools over MCP against the simulated board."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from edge.mcp import McpError
from edge.tool_loop import ToolLoop, ToolPhrases
from edge.tools.config import build_server_tools
from edge.tools.registry import ToolContext, ToolRegistry
from scripts.sim_board import SimBoard
from shared.topology import ToolsSpec
from tests.tool_helpers import ScriptedModel, connect

CTX = ToolContext(device_id="aa:bb", timezone="UTC")
PHRASES = ToolPhrases()


async def spoken(loop: ToolLoop, registry: ToolRegistry, user: str = "hi"):
    run = loop.start([{"role": "system", "content": "be brief"}, {"role": "user", "content": user}], registry, CTX)
    text = "".join([d async for d in run.deltas()]).strip()
    return text, run


# ---------------------------------------------------------------- MCP against the simulated board
async def test_mcp_initialize_pages_through_the_tool_list():
    board = SimBoard(page_bytes=700)  # small pages: the firmware pages at 8000 bytes
    mcp = connect(board)
    tools = await mcp.initialize()
    names = [t["name"] for t in tools]
    assert names == [t.name for t in board.tools if not t.user_only]
    pages = [r for r in board.requests if r["method"] == "tools/list"]
    assert len(pages) >= 3 and pages[0]["params"]["cursor"] == ""
    assert [p["params"]["cursor"] for p in pages[1:]] == [
        n for n in names if n in {p["params"]["cursor"] for p in pages[1:]}]
    assert mcp.server_info == {"name": "sim-board", "version": "1.9.0"}
    reg = ToolRegistry().with_device(mcp)
    assert "self.reboot" not in reg.names() and "self.audio_speaker.set_volume" in reg.names()


async def test_device_tool_call_and_errors():
    board = SimBoard()
    mcp = connect(board)
    await mcp.initialize()
    reg = ToolRegistry().with_device(mcp, timeout_s=1.0)
    assert await reg.call("self_audio_speaker_set_volume", '{"volume": 35}', CTX) == "true"
    assert board.state.volume == 35
    status = json.loads(await reg.call("self.get_device_status", "{}", CTX))
    assert status["audio_speaker"]["volume"] == 35
    with pytest.raises(McpError, match="Unknown tool: self.nope"):
        await mcp.call_tool("self.nope", {})
    with pytest.raises(McpError, match="exceeds maximum 100"):
        await mcp.call_tool("self.audio_speaker.set_volume", {"volume": 300})
    with pytest.raises(McpError, match="Missing valid argument: volume"):
        await mcp.call_tool("self.audio_speaker.set_volume", {})
    assert [(c.name, c.ok) for c in board.calls] == [
        ("self.audio_speaker.set_volume", True), ("self.get_device_status", True), ("self.nope", False),
        ("self.audio_speaker.set_volume", False), ("self.audio_speaker.set_volume", False)]


def test_sim_board_pages_by_size_and_refuses_oversized_tools():
    board = SimBoard(page_bytes=100)  # smaller than a tool: the firmware answers an error
    reply = board.handle({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"cursor": ""}})
    assert "payload size limit" in reply["error"]["message"]
    assert board.handle({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    assert board.handle({"jsonrpc": "1.0", "id": 1, "method": "initialize"}) is None
    assert board.handle({"jsonrpc": "2.0", "id": 1, "method": "x"})["error"]["message"] == "Method not implemented: x"


# ---------------------------------------------------------------- the loop
async def test_server_tool_round_then_spoken_answer():
    model = ScriptedModel([("calculate", {"expression": "6 * 7"})], "It is 42.")
    loop = ToolLoop(model, max_steps=3)
    text, run = await spoken(loop, build_server_tools(ToolsSpec()), "what is six times seven")
    assert text == "It is 42."
    assert [(c.name, c.ok, c.result) for c in run.calls] == [("calculate", True, "6 * 7 = 42")]
    second = model.seen[1]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "calculate"
    assert second[-1] == {"role": "tool", "tool_call_id": "c0", "content": "6 * 7 = 42"}
    assert model.offered[0] == ["get_time", "calculate"]


async def test_device_tool_through_the_loop():
    board = SimBoard()
    mcp = connect(board)
    await mcp.initialize()
    reg = build_server_tools(ToolsSpec()).with_device(mcp, timeout_s=1.0)
    model = ScriptedModel([("self_light_set_rgb", {"r": 255, "g": 0, "b": 0})], "The light is red now.")
    text, run = await spoken(ToolLoop(model), reg, "make the light red")
    assert text == "The light is red now."
    assert board.state.rgb == (255, 0, 0) and board.state.light_on
    assert [(c.name, c.arguments) for c in board.calls] == [("self.light.set_rgb", {"r": 255, "g": 0, "b": 0})]


async def test_multi_step_and_last_round_offers_no_tools():
    model = ScriptedModel([("get_time", {})], [("calculate", {"expression": "1+1"})], "Done.")
    text, run = await spoken(ToolLoop(model, max_steps=3), build_server_tools(ToolsSpec()))
    assert text == "Done." and [c.name for c in run.calls] == ["get_time", "calculate"]
    assert model.offered[2] is None  # the final round must answer


async def test_step_limit_gives_an_apology():
    model = ScriptedModel([("get_time", {})], [("get_time", {})])
    text, run = await spoken(ToolLoop(model, max_steps=2), build_server_tools(ToolsSpec()))
    assert text == PHRASES.steps and len(run.calls) == 1


@pytest.mark.parametrize("call, phrase, kind", [
    (("self_teleport", {}), PHRASES.unknown_tool, "unknown_tool"),
    (("self_audio_speaker_set_volume", {"volume": 900}), PHRASES.arguments, "arguments"),
    (("self_audio_speaker_set_volume", "{volume: loud"), PHRASES.arguments, "arguments"),
    (("self_screen_set_brightness", {"brightness": 10}), PHRASES.timeout, "timeout"),
    (("self_battery_get_level", {}), PHRASES.malformed, "malformed"),
    (("self_screen_set_theme", {"theme": "dark"}), PHRASES.failed, "failed"),
])
async def test_tool_failures_end_in_a_short_apology(call, phrase, kind):
    board = SimBoard(silent={"self.screen.set_brightness"}, malformed={"self.battery.get_level"},
                     extra_tools=[])
    board.tool("self.screen.set_theme").run = lambda a: (_ for _ in ()).throw(RuntimeError("display busy"))
    mcp = connect(board, timeout=5.0)
    await mcp.initialize()
    if kind == "failed":  # the firmware turns a throwing tool into a JSON-RPC error
        board.handle = _throwing_to_error(board.handle)
    reg = ToolRegistry().with_device(mcp, timeout_s=0.5)
    model = ScriptedModel([call], "never spoken")
    start = asyncio.get_running_loop().time()
    text, run = await spoken(ToolLoop(model), reg)
    assert text == phrase and run.apology == phrase
    assert run.calls[-1].error_kind == kind and not run.calls[-1].ok
    assert asyncio.get_running_loop().time() - start < 3.0
    assert len(model.rounds) == 1  # the model was not asked again


def _throwing_to_error(handle):
    def wrapped(payload: dict[str, Any]):
        try:
            return handle(payload)
        except RuntimeError as exc:
            return {"jsonrpc": "2.0", "id": payload["id"], "error": {"message": str(exc)}}
    return wrapped


async def test_plain_answer_streams_without_tool_calls():
    model = ScriptedModel("Paris is the capital of France.")
    run = ToolLoop(model).start([{"role": "user", "content": "capital of France?"}],
                                build_server_tools(ToolsSpec()), CTX)
    deltas = [d async for d in run.deltas()]
    assert len(deltas) == 6 and "".join(deltas).strip() == "Paris is the capital of France."
    assert run.calls == [] and run.apology is None
