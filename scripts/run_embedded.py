"""`make run`: the whole embedded default on this machine, on loopback.

Starts, from topology.yaml: the NATS hub (JetStream) and the site's leaf node,
one cloud worker (which launches its llama.cpp backend), and the edge node; then
waits. Ctrl-C stops everything in reverse order. Each component is the same
process an operator runs in production (`python -m cloud worker`,
`python -m edge serve`); only their wiring here is embedded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from shared.nats_runtime import NatsRuntimeError, start_hub, start_leaf
from shared.topology import TopologyError, load_topology

ROOT = Path(__file__).resolve().parent.parent


async def wait_http(url: str, timeout: float, proc: asyncio.subprocess.Process) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: process exited with code {proc.returncode}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f}s")


async def run(config: str) -> int:
    topo = load_topology(config)
    site = topo.site()
    hub_node = topo.cloud.nats.hub[0]
    workdir = ROOT / ".cache" / "embedded"
    env = {**os.environ, "XZ_TOPOLOGY": str(Path(config).resolve())}
    procs: list[tuple[str, asyncio.subprocess.Process]] = []
    hub = leaf = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        hub = await start_hub(hub_node.name, hub_node.host, hub_node.client_port, hub_node.leafnode_port,
                              hub_node.jetstream, workdir / "hub")
        leaf = await start_leaf(hub.leafnode_url, f"leaf-{site.name}", site.nats_leaf.host,
                                site.nats_leaf.client_port, workdir / "leaf")
        print(f"[run] NATS hub {hub.url}, leaf {leaf.url}", flush=True)
        for worker in topo.cloud.workers:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cloud", "worker", "--config", config, "--name", worker.name,
                "--nats", hub.url, "--launch-backends", "--http-port", str(worker.port), env=env)
            procs.append((f"cloud worker {worker.name}", proc))
        edge = site.edges[0]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "serve", "--config", config, "--site", site.name,
            "--host", edge.host, "--port", str(edge.port), env=env)
        procs.append(("edge", proc))
        base = f"http://{edge.host}:{edge.port}"
        await wait_http(f"{base}/health", 300, proc)
        print(f"[run] edge ready: OTA {base}/xiaozhi/ota/  WebSocket ws://{edge.host}:{edge.port}/xiaozhi/v1/", flush=True)
        print(f"[run] talk to it: .venv/bin/python scripts/device_sim.py --ota {base}/xiaozhi/ota/ "
              f"--say 'Hello there' --say 'Can you explain why the sky is blue and how sunsets get their colors?'",
              flush=True)
        print("[run] Ctrl-C stops everything", flush=True)
        waiters = [asyncio.ensure_future(p.wait()) for _, p in procs]
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for name, p in procs:
            if p.returncode is not None:
                print(f"[run] {name} exited with code {p.returncode}; stopping", file=sys.stderr)
                return 1
        return 0
    finally:
        for name, p in reversed(procs):
            if p.returncode is None:
                p.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(p.wait(), 15)
                except asyncio.TimeoutError:
                    p.kill()
                    await p.wait()
        for node in (leaf, hub):
            if node is not None:
                await node.stop()
        print("[run] stopped", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("XZ_TOPOLOGY", str(ROOT / "topology.yaml")))
    args = parser.parse_args()
    try:
        return asyncio.run(run(args.config))
    except (TopologyError, NatsRuntimeError, RuntimeError) as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
