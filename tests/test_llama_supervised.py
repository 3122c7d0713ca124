"""The launched llama.cpp server is supervised: killed, it is restarted with back-off and answers again;
while it is down ``available`` is false (the policy's ``local_available``)."""

from __future__ import annotations

import asyncio

import aiohttp
import psutil

from shared.llama_server import LlamaServer
from shared.nats_runtime import free_port
from shared.supervisor import Backoff
from shared.topology import LaunchSpec
from tests.fixtures_nats import LLAMA_ALIAS, SMOLLM2


async def _ask(server: LlamaServer) -> str:
    body = {"model": LLAMA_ALIAS, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/chat/completions", json=body,
                             timeout=aiohttp.ClientTimeout(total=120)) as resp:
            assert resp.status == 200
            return (await resp.json())["choices"][0]["message"]["content"]


async def test_killed_llama_server_is_restarted_and_answers_again(tmp_path):
    server = LlamaServer(LaunchSpec(model_path=SMOLLM2, n_threads=1, n_ctx=512), port=free_port(),
                         alias=LLAMA_ALIAS, log_path=tmp_path / "llama.log", backoff=Backoff(initial=0.1))
    states: list[str] = []
    server.supervisor.on_event = lambda state, _info: states.append(state)
    await server.start()
    try:
        assert server.available and await _ask(server)
        old = server.proc.pid
        psutil.Process(old).kill()
        for _ in range(100):
            if not server.available:
                break
            await asyncio.sleep(0.05)
        assert not server.available and server.status()["state"] in ("restarting", "starting")
        for _ in range(1200):
            if server.available:
                break
            await asyncio.sleep(0.1)
        assert server.status()["state"] == "up" and server.status()["restarts"] == 1
        assert server.proc.pid != old
        assert await _ask(server)
        assert states == ["starting", "up", "restarting", "up"]
    finally:
        pid = server.proc.pid if server.proc else None
        await server.stop()
    assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
