"""Test helpers for tool calling: a deterministic stand-in model and an MCP client wired to a SimBoard."""

from __future__ import annotations

import asyncio
import json

from edge.mcp import McpClient
from scripts.sim_board import SimBoard
from shared.chat import ChatDelta
from shared.wire import ToolCall


class ScriptedModel:
    """A stand-in LLM: each round pops the next scripted answer (text, or tool calls) and records what it saw."""

    def __init__(self, *rounds: str | list[tuple[str, dict | str]] | Exception):
        self.rounds = list(rounds)
        self.seen: list[list[dict]] = []
        self.offered: list[list[str] | None] = []

    async def step(self, messages, registry, *, max_tokens, temperature):
        self.seen.append(json.loads(json.dumps(messages)))
        self.offered.append([t["function"]["name"] for t in registry.llm_tools()] if registry else None)
        answer = self.rounds.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str):
            for word in answer.split(" "):
                yield ChatDelta(text=word + " ")
            yield ChatDelta(finish_reason="stop")
        else:
            calls = [ToolCall(f"c{i}", name, args if isinstance(args, str) else json.dumps(args))
                     for i, (name, args) in enumerate(answer)]
            yield ChatDelta(tool_calls=calls, finish_reason="tool_calls")


def connect(board: SimBoard, timeout: float = 2.0) -> McpClient:
    """An McpClient whose messages reach the board (and its replies come back) as on a WebSocket."""
    holder: dict[str, McpClient] = {}

    async def send(payload: dict) -> None:
        reply = board.handle(json.loads(json.dumps(payload)))
        if reply is not None:
            asyncio.get_running_loop().call_soon(holder["c"].handle_payload, json.loads(json.dumps(reply)))

    holder["c"] = McpClient(send, timeout=timeout)
    return holder["c"]
