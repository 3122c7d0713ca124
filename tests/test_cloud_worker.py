"""The worker as operators run it: `python -m cloud worker`, its HTTP endpoints, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp

from cloud.backends import BackendPool
from cloud.worker import Worker, serve_http
from edge.escalation import EscalationClient
from shared import subjects
from shared.nats_runtime import free_port
from shared.topology import BackendSpec
from shared.wire import EscalationRequest, WorkerHeartbeat, decode, new_id

ROOT = Path(__file__).resolve().parent.parent


def _ask(question: str = "Tell me about the moon.", max_tokens: int = 8) -> EscalationRequest:
    return EscalationRequest(new_id(), "d", [{"role": "user", "content": question}], max_tokens=max_tokens,
                             temperature=0.0)


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            return resp.status, await resp.text()


async def test_metrics_and_health_endpoints(nats_hub, nats_connect, llama_server):
    spec = BackendSpec(name="llama-http", url=llama_server.base_url, model=llama_server.alias)
    pool = BackendPool.from_specs([spec])
    await pool.start()
    worker = Worker(await nats_connect(nats_hub.url), "w-http", "large", pool, max_inflight=3)
    await worker.start()
    port = free_port()
    runner = await serve_http(worker, "127.0.0.1", port)
    try:
        client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "s")
        chunks = [c async for c in client.stream(_ask(), first_token_timeout=30)]
        assert chunks[-1].final and not chunks[-1].error
        status, body = await _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'xz_cloud_requests_total{model_class="large",outcome="ok"}' in body
        assert "xz_cloud_first_token_seconds_count" in body
        assert 'xz_cloud_backend_up{backend="llama-http"} 1.0' in body
        status, body = await _get(f"http://127.0.0.1:{port}/health")
        health = json.loads(body)
        assert status == 200 and health["nats"] and health["max_inflight"] == 3
        assert health["backends"]["llama-http"] == {"healthy": True, "breaker": "closed", "inflight": 0}
        pool.endpoints[0].client.base_url = f"http://127.0.0.1:{free_port()}/v1"  # the backend goes away
        pool.endpoints[0].client._client = None
        await pool.check_health()
        status, body = await _get(f"http://127.0.0.1:{port}/health")
        assert status == 503 and json.loads(body)["backends"]["llama-http"]["healthy"] is False
    finally:
        await runner.cleanup()
        await worker.stop()
        await pool.stop()


async def _cli(*args: str, env: dict | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cloud", *args, cwd=ROOT,
                                                env={**os.environ, **(env or {})},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, (out + err).decode()


async def test_cli_errors_are_clear():
    code, out = await _cli("worker", "--name", "nope", "--http-port", "0")
    assert code == 2 and "no worker 'nope'" in out and "worker-1" in out and "Traceback" not in out
    code, out = await _cli("bogus")
    assert code == 2 and "unknown command 'bogus'" in out
    code, out = await _cli("worker", "--nats", f"nats://127.0.0.1:{free_port()}", "--no-cache", "--http-port", "0",
                           "--connect-timeout", "2")
    assert code == 1 and "cannot connect to NATS" in out and "Traceback" not in out


async def test_sigterm_drains_running_generations(nats_hub, nats_connect, llama_server):
    env = {"XZ_CFG__cloud__workers__0__backends__0__url": llama_server.base_url,
           "XZ_CFG__cloud__workers__0__backends__0__model": llama_server.alias}
    beats: asyncio.Queue = asyncio.Queue()

    async def on_beat(msg) -> None:
        beats.put_nowait(decode(msg.data, WorkerHeartbeat))

    watcher = await nats_connect(nats_hub.url)
    await watcher.subscribe(subjects.HEARTBEAT_ALL, cb=on_beat)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloud", "worker", "--nats", nats_hub.url, "--no-cache", "--http-port", str(port),
        cwd=ROOT, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.wait_for(beats.get(), 60)
        client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "s")
        stream = client.stream(_ask(max_tokens=40), first_token_timeout=30)
        first = await stream.__anext__()
        proc.send_signal(signal.SIGTERM)
        rest = [c async for c in stream]
        assert rest[-1].finish_reason in ("stop", "length") and not rest[-1].error, "the answer was finished"
        assert [c.seq for c in [first, *rest]] == list(range(len(rest) + 1))
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
