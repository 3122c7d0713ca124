"""`make run`: the whole embedded default on this machine, on loopback, supervised.

Starts, from topology.yaml: the NATS hub (JetStream) and the site's leaf node,
one cloud worker per ``cloud.workers`` entry (each launches its llama.cpp
backend), and the edge node. Like a small process manager, it restarts a
component that exits (with back-off) and prints each restart; Ctrl-C stops
everything in reverse order. Every child dies with this process, even on
SIGKILL (:mod:`shared.supervisor`), so a crash leaves no port held. Each
component is the same process an operator runs in production
(`python -m cloud worker`, `python -m edge serve`); only their wiring is embedded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from edge.threads import edge_budget
from shared.nats_runtime import (OPERATOR, NatsProcess, NatsRuntimeError, NatsSecurity, hub_process,
                                 leaf_process, site_user, worker_user)
from shared.supervisor import Supervisor, describe_holder, port_holder, spawn, terminate
from shared.topology import Topology, TopologyError, load_topology

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300.0


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


def print_event(state: str, info: dict) -> None:
    """How `make run` reports a component's life: crashes and restarts, one line each."""
    name, n = info["name"], info["restarts"]
    if state == "restarting":
        print(f"[run] {name} exited with code {info.get('code')}; restart {n} in {info['delay_s']:.1f}s",
              file=sys.stderr, flush=True)
    elif state == "down":
        print(f"[run] {name} restart failed: {info.get('error')}; next try in {info['delay_s']:.1f}s",
              file=sys.stderr, flush=True)
    elif state == "up" and n:
        print(f"[run] {name} restarted (pid {info.get('pid')}, restart {n})", flush=True)


def _port_of(url: str) -> int | None:
    return urlsplit(url).port


class EmbeddedStack:
    """The embedded default's processes, each under a :class:`Supervisor`, started in dependency order."""

    def __init__(self, config: str, workdir: Path | None = None, on_event=print_event,
                 extra_env: dict[str, str] | None = None, worker_args: tuple[str, ...] = (),
                 log_dir: Path | None = None):
        self.config = str(Path(config).resolve())
        self.topo: Topology = load_topology(self.config)
        self.site = self.topo.site()
        self.workdir = workdir or ROOT / ".cache" / "embedded"
        self.env = {**os.environ, "XZ_TOPOLOGY": self.config, **(extra_env or {})}
        self.on_event = on_event
        self.worker_args = list(worker_args)  # e.g. --no-cache: tests skip loading the answer cache's model
        self.log_dir = log_dir  # None: the components log to this terminal; else <log_dir>/<name>.log
        # TLS and one user per role, generated on first run (shared/nats_runtime.py)
        self.security = NatsSecurity(self.workdir / "security", [self.site.name],
                                     {w.name: w.model_class for w in self.topo.cloud.workers})
        self.operator_creds: Path | None = None  # written by start(), once the hub's URL serves
        hub = self.topo.cloud.nats.hub[0]
        self.hub: NatsProcess = hub_process(hub.name, hub.host, hub.client_port, hub.leafnode_port, hub.jetstream,
                                            self.workdir / "hub", security=self.security)
        self.leaf: NatsProcess = leaf_process(self.hub.leafnode_url, f"leaf-{self.site.name}",
                                              self.site.nats_leaf.host, self.site.nats_leaf.client_port,
                                              self.workdir / "leaf", security=self.security, site=self.site.name)
        edge = self.site.edges[0]
        self.edge_base = f"http://{edge.host}:{edge.port}"
        self.components: dict[str, Supervisor] = {}

    # ------------------------------------------------------------ what runs
    def ports(self) -> list[tuple[int, str]]:
        """Every TCP port the stack will listen on, with what listens there."""
        topo, site = self.topo, self.site
        hub = topo.cloud.nats.hub[0]
        ports = [(hub.client_port, "NATS hub"), (hub.leafnode_port, "NATS hub leafnodes"),
                 (site.nats_leaf.client_port, "NATS leaf")]
        for w in topo.cloud.workers:
            ports.append((w.port, f"worker {w.name} /health"))
            ports += [(_port_of(b.url), f"worker {w.name} backend {b.name}") for b in w.backends if b.launch]
        ports.append((site.edges[0].port, "edge"))
        first = _port_of(topo.edge.llm.url)
        if topo.edge.llm.launch is not None and first:  # one server per copy, on consecutive ports (edge/threads.py)
            copies = edge_budget(topo, site, site.edges[0])[1].llm_servers
            ports += [(first + i, f"edge llama.cpp server {i + 1}") for i in range(copies)]
        return [(p, what) for p, what in ports if p]

    def check_ports(self) -> None:
        """RuntimeError naming a port two components would share, or the pid of any leftover process that holds
        one of our ports."""
        owners: dict[int, list[str]] = {}
        for p, what in self.ports():
            owners.setdefault(p, []).append(what)
        shared = [f"port {p} is both {' and '.join(whats)}" for p, whats in owners.items() if len(whats) > 1]
        if shared:
            raise RuntimeError("; ".join(shared) + " — give each its own port in the topology")
        held = [f"port {p} ({what}) is held by {describe_holder(p)}" for p, what in self.ports() if port_holder(p)]
        if held:
            raise RuntimeError("; ".join(held) + " — stop it (kill PID) or change the port in the topology")

    def _nats(self, node: NatsProcess) -> Supervisor:
        async def start() -> asyncio.subprocess.Process:
            try:
                await node.start()
            except BaseException:  # (cancelled by stop() while starting) leave nothing running
                await node.stop()
                raise
            return node.proc

        async def stop(_proc) -> None:
            await node.stop()

        return Supervisor(node.name, start, stop, on_event=self.on_event)

    def _python(self, name: str, args: list[str], health_url: str, env: dict[str, str] | None = None) -> Supervisor:
        """``env``: added to the stack's environment (the component's NATS credentials), on every (re)start."""
        async def start() -> asyncio.subprocess.Process:
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"{name.replace(' ', '-')}.log", "ab")
            try:
                proc = await spawn(sys.executable, *args, env={**self.env, **(env or {})}, cwd=str(ROOT),
                                   stdout=out, stderr=out)
            finally:
                if out is not None:
                    out.close()  # the child holds its own descriptor
            try:
                await wait_http(health_url, READY_TIMEOUT_S, proc)
            except BaseException:
                await terminate(proc, 5.0)
                raise
            return proc

        return Supervisor(name, start, lambda proc: terminate(proc, 15.0, signal.SIGINT), on_event=self.on_event)

    async def start(self) -> None:
        self.check_ports()
        self.components["hub"] = await self._nats(self.hub).start()
        self.components["leaf"] = await self._nats(self.leaf).start()
        self.operator_creds = self.security.write_credentials(OPERATOR, self.hub.url)
        for w in self.topo.cloud.workers:
            name = f"worker {w.name}"
            self.components[name] = sup = self._python(
                name, ["-m", "cloud", "worker", "--config", self.config, "--name", w.name, "--nats", self.hub.url,
                       "--launch-backends", "--http-host", w.host, "--http-port", str(w.port), *self.worker_args],
                f"http://{w.host}:{w.port}/health", self.hub.credentials(worker_user(w.name)).env())
            await sup.start()
        edge = self.site.edges[0]
        self.components["edge"] = sup = self._python(
            "edge", ["-m", "edge", "serve", "--config", self.config, "--site", self.site.name,
                     "--host", edge.host, "--port", str(edge.port)], f"{self.edge_base}/health",
            self.leaf.credentials(site_user(self.site.name)).env())
        await sup.start()

    async def stop(self) -> None:
        for sup in reversed(list(self.components.values())):
            await sup.stop()


async def run(config: str, workdir: Path | None = None) -> int:
    stack = EmbeddedStack(config, workdir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.ensure_future(stack.start())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 130
        starting.result()
        base = stack.edge_base
        print(f"[run] NATS hub {stack.hub.url}, leaf {stack.leaf.url} "
              f"(TLS; operator credentials: {stack.operator_creds})", flush=True)
        print(f"[run] edge ready: OTA {base}/xiaozhi/ota/  WebSocket ws://{base.removeprefix('http://')}/xiaozhi/v1/",
              flush=True)
        print(f"[run] talk to it: .venv/bin/python scripts/device_sim.py --ota {base}/xiaozhi/ota/ "
              f"--say 'Hello there' --say 'Can you explain why the sky is blue and how sunsets get their colors?'",
              flush=True)
        print("[run] a component that exits is restarted; Ctrl-C stops everything", flush=True)
        await stopper
        return 0
    finally:
        await stack.stop()
        print("[run] stopped", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("XZ_TOPOLOGY", str(ROOT / "topology.yaml")))
    parser.add_argument("--workdir", type=Path, help="NATS stores and logs (default .cache/embedded)")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args.config, args.workdir))
    except (TopologyError, NatsRuntimeError, RuntimeError) as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
