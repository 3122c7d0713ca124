"""End to end with the bundled model: SmolLM2-135M behind llama.cpp's server picks a tool by grammar-forced JSON."""

from __future__ import annotations

import json

import pytest

from edge.tool_loop import ToolLoop
from shared.tool_calling import caller_for
from edge.tools.calculator import calculate
from edge.tools.config import ToolsSpec, build_server_tools
from shared.grammar_tools import GrammarToolCaller
from edge.tools.registry import ToolContext
from shared.chat import ChatClient
from shared.llama_server import LlamaServer
from shared.nats_runtime import free_port
from shared.topology import load_topology

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def smol():
    launch = load_topology().edge.llm.launch
    server = LlamaServer(launch, port=free_port(), alias="smol")
    await server.start()
    client = ChatClient(server.base_url, "smol", timeout=180)
    try:
        yield client
    finally:
        await client.aclose()
        await server.stop()


async def test_bundled_model_calls_the_calculator_and_answers(smol):
    caller = caller_for(smol, "auto", "llamacpp")
    assert isinstance(caller, GrammarToolCaller)
    loop = ToolLoop(caller, max_steps=2, max_tokens=30, temperature=0.0)
    run = loop.start([{"role": "system", "content": "You are a voice assistant. Answer in one short sentence."},
                      {"role": "user", "content": "What is 12 times 7?"}],
                     build_server_tools(ToolsSpec()), ToolContext())
    text = "".join([d async for d in run.deltas()]).strip()
    assert [c.name for c in run.calls] == ["calculate"] and run.calls[0].ok
    assert calculate(json.loads(run.calls[0].arguments)["expression"]) == 84
    assert run.calls[0].result.endswith("= 84")
    assert text and run.apology is None
