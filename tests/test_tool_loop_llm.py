"""End to end with the bundled model: SmolLM2-135M behind llama.cpp's server picks a tool by grammar-forced JSON."""

from __future__ import annotations

import json

import pytest

from edge.tool_loop import ToolLoop
from edge.tools.calculator import calculate
from edge.tools.config import build_server_tools
from edge.tools.registry import ToolContext
from scripts.bench_tools import board_registry
from scripts.sim_board import SimBoard
from shared.chat import ChatClient
from shared.grammar_tools import GrammarToolCaller
from shared.llama_server import LlamaServer
from shared.nats_runtime import free_port
from shared.tool_calling import caller_for
from shared.tool_intent import clear_winner, shortlist
from shared.topology import ToolsSpec, load_topology

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
    assert text == "12 times 7 is 84." and run.apology is None  # small models speak the result directly


async def test_bundled_model_routes_an_ambiguous_request_within_the_shortlist(smol):
    """No clear winner: the model chooses by grammar-forced JSON, so the answer is a shortlisted tool or none."""
    registry = board_registry(SimBoard())
    text = "The lights please"
    assert clear_winner(registry, text) is None
    allowed = {t.name for t in shortlist(registry, text, 4)}
    call = await GrammarToolCaller(smol).decide([{"role": "user", "content": text}], registry)
    assert call is None or registry.get(call.name).name in allowed
