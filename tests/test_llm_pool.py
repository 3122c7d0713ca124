"""The local model served by several llama.cpp servers: turns are spread over them by load, a crashed one is
skipped while its supervisor restarts it, and grammar-forced tool decisions go through the same pool."""

from __future__ import annotations

import asyncio
import json

import psutil

from shared.chat import ChatClient, PooledChat
from shared.llama_server import LlamaServer
from shared.nats_runtime import free_port
from shared.supervisor import Backoff
from shared.topology import LaunchSpec
from tests.fixtures_nats import LLAMA_ALIAS, SMOLLM2

QUESTION = [{"role": "user", "content": "Tell me a short story about a cat."}]


def _two_servers(tmp_path) -> list[LlamaServer]:
    servers = LlamaServer.copies(LaunchSpec(model_path=SMOLLM2, n_threads=1, n_ctx=512, nice=5),
                                 f"http://127.0.0.1:{free_port(run=2)}/v1", LLAMA_ALIAS, 2)
    for s in servers:
        s.log_path = tmp_path / f"llama-{s.port}.log"
        s.supervisor.backoff = Backoff(initial=0.1)
    return servers


async def _answer(pool: PooledChat, started: asyncio.Event | None = None) -> str:
    text = ""
    async for delta in pool.stream(QUESTION, max_tokens=24, temperature=0.0):
        text += delta.text or ""
        if started is not None and text:
            started.set()
    return text


async def test_answers_are_spread_over_the_servers_and_a_dead_one_is_skipped(tmp_path):
    servers = _two_servers(tmp_path)
    assert [s.port - servers[0].port for s in servers] == [0, 1]
    await asyncio.gather(*(s.start() for s in servers))
    pool = PooledChat([ChatClient(s.base_url, LLAMA_ALIAS) for s in servers], usable=lambda i: servers[i].available)
    try:
        assert [psutil.Process(s.proc.pid).nice() for s in servers] == [5, 5]  # LaunchSpec.nice
        answers = [asyncio.create_task(_answer(pool)) for _ in range(2)]
        await asyncio.sleep(0.01)  # both requests sent (each answer takes far longer than this)
        assert pool.inflight == [1, 1]  # two answers in flight at once, one per server
        assert all(await asyncio.wait_for(asyncio.gather(*answers), 120)) and pool.inflight == [0, 0]

        psutil.Process(servers[0].proc.pid).kill()
        for _ in range(100):
            if not servers[0].available:
                break
            await asyncio.sleep(0.05)
        assert not servers[0].available
        started = asyncio.Event()
        answer = asyncio.create_task(_answer(pool, started))
        await asyncio.wait_for(started.wait(), 120)
        assert pool.inflight == [0, 1]  # the crashed server is not asked
        assert await answer

        decided = await pool.complete_json([{"role": "user", "content": "Give me a number."}],
                                           {"type": "object", "properties": {"n": {"type": "integer"}},
                                            "required": ["n"]}, 24)
        assert isinstance(json.loads(decided)["n"], int)
    finally:
        await pool.aclose()
        await asyncio.gather(*(s.stop() for s in servers))
