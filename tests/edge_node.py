"""A real edge node (every bundled model) served on a free port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from edge.engine import EdgeEngine
from edge.server import create_app
from shared.nats_runtime import free_port
from shared.topology import load_topology


@contextlib.asynccontextmanager
async def running_edge(workdir: Path, **overrides: str) -> AsyncIterator[tuple[str, EdgeEngine]]:
    """Yields (base http URL, engine). ``overrides``: ``edge__a__b=value`` topology overrides."""
    env = {**os.environ,
           "XZ_CFG__edge__llm__url": f"http://127.0.0.1:{free_port(run=4)}/v1",  # a port per copy
           "XZ_CFG__edge__tts__cache__disk_dir": str(workdir / "tts-cache"),
           "XZ_CFG__edge__trace__path": str(workdir / "turns.jsonl"),
           "XZ_CFG__edge__escalation__enabled": "false"}
    env.update({f"XZ_CFG__{k}": v for k, v in overrides.items()})
    topo = load_topology(environ=env)
    engine = EdgeEngine(topo)
    await engine.start()
    runner = web.AppRunner(create_app(topo, None, engine))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        await runner.cleanup()
        await engine.stop()
