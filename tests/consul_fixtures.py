"""The ``consul`` fixture: the test double, or a real agent when CONSUL_HTTP_ADDR is set."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest_asyncio

from shared.discovery import ConsulAddress, consul_address
from tests.consul_double import ConsulDouble


@dataclass
class ConsulUnderTest:
    address: ConsulAddress
    double: ConsulDouble | None  # None: a real Consul agent (CONSUL_HTTP_ADDR)


@pytest_asyncio.fixture
async def consul() -> AsyncIterator[ConsulUnderTest]:
    if os.environ.get("CONSUL_HTTP_ADDR"):
        yield ConsulUnderTest(consul_address(), None)
        return
    double = ConsulDouble()
    await double.start()
    yield ConsulUnderTest(ConsulAddress("127.0.0.1", double.port, "http", None), double)
    await double.stop()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, every: float = 0.2) -> None:
    """Poll ``check`` until true; Consul's view changes at check intervals, not instantly."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(every)
