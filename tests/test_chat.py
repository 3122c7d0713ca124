"""The chat client against a real llama.cpp server (SmolLM2), and its failure modes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from shared.chat import ChatClient, ChatError, OllamaChatClient, _ToolCallAssembler, build_chat_client
from shared.nats_runtime import free_port
from shared.topology import BackendSpec, LlmSpec


async def test_streams_text_then_final_with_usage(llama_server, chat_messages):
    client = ChatClient(llama_server.base_url, llama_server.alias)
    deltas = [d async for d in client.stream(chat_messages("Name a primary color."), max_tokens=12,
                                             temperature=0.0)]
    await client.aclose()
    texts = [d.text for d in deltas if d.text]
    assert len(texts) >= 2, "expected several streamed steps, not one blob"
    assert "".join(texts).strip()
    final = deltas[-1]
    assert final.finish_reason in ("stop", "length") and not final.text
    assert final.usage and 0 < final.usage["completion_tokens"] <= 12
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_logprobs_are_streamed_by_llama_cpp(chat_messages, tmp_path):
    """The policy's confidence rule relies on this: llama.cpp's server streams per-token logprobs when launched
    with ``logprobs`` (the edge does so when ``escalation.measure_confidence`` is on; off by default, see
    tests/test_memory.py)."""
    from shared.llama_server import LlamaServer
    from shared.topology import LaunchSpec
    from tests.fixtures_nats import LLAMA_ALIAS, SMOLLM2

    server = LlamaServer(LaunchSpec(model_path=SMOLLM2, n_threads=2, n_ctx=512, logprobs=True), port=free_port(),
                         alias=LLAMA_ALIAS, log_path=tmp_path / "llama.log")
    await server.start()
    try:
        client = ChatClient(server.base_url, server.alias)
        deltas = [d async for d in client.stream(chat_messages("What is two plus two?"), max_tokens=6,
                                                 temperature=0.0, logprobs=True)]
        await client.aclose()
        values = [d.logprob for d in deltas if d.text]
        assert values and all(v is not None and v <= 0.0 and math.isfinite(v) for v in values)
        plain = ChatClient(server.base_url, server.alias)
        no_lp = [d async for d in plain.stream(chat_messages("Hi"), max_tokens=3, temperature=0.0)]
        await plain.aclose()
        assert all(d.logprob is None for d in no_lp)
    finally:
        await server.stop()


async def test_health_and_connection_errors(llama_server, chat_messages):
    good = ChatClient(llama_server.base_url, llama_server.alias)
    assert await good.health()
    await good.aclose()
    dead = ChatClient(f"http://127.0.0.1:{free_port()}/v1", "nobody", connect_timeout=1.0)
    assert not await dead.health()
    with pytest.raises(ChatError, match="cannot connect") as err:
        async for _ in dead.stream(chat_messages("hi"), max_tokens=4, temperature=0.0):
            pass
    assert err.value.retryable
    await dead.aclose()


async def test_refused_request_is_not_retryable(llama_server):
    client = ChatClient(llama_server.base_url, llama_server.alias)
    with pytest.raises(ChatError) as err:
        async for _ in client.stream([{"role": "nobody", "content": 3}], max_tokens=-5, temperature=0.0):
            pass
    await client.aclose()
    assert "HTTP" in str(err.value) or "refused" in str(err.value)


def test_tool_call_fragments_are_assembled():
    def frag(index, id=None, name=None, args=None):
        return SimpleNamespace(index=index, id=id, function=SimpleNamespace(name=name, arguments=args))

    acc = _ToolCallAssembler()
    acc.feed([frag(0, "c0", "set_volume", '{"lev')])
    acc.feed([frag(1, "c1", "get_time", "")])
    acc.feed([frag(0, None, None, 'el": 3}')])
    calls = acc.calls()
    assert [(c.id, c.name, c.arguments) for c in calls] == [("c0", "set_volume", '{"level": 3}'),
                                                           ("c1", "get_time", "{}")]


def test_factory_picks_the_client_for_the_spec():
    edge = LlmSpec(backend="ollama", url="http://127.0.0.1:11434/v1", model="qwen")
    ollama_client = build_chat_client(edge)
    assert isinstance(ollama_client, OllamaChatClient) and ollama_client.host == "http://127.0.0.1:11434"
    cloud = BackendSpec(name="ollama-box", kind="ollama", url="http://127.0.0.1:11434/v1", model="qwen")
    assert type(build_chat_client(cloud)) is ChatClient  # cloud backends speak the OpenAI API, Ollama's /v1 too
    assert build_chat_client(cloud).name == "ollama-box"
