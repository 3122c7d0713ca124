"""Fault injection against the real embedded stack while devices talk; prints one row per fault.

    .venv/bin/python -m scripts.chaos [--devices 5] [--faults llm-kill,tts-fail,...] [--json out.json]

The stack (hub, leaf, worker, edge: scripts/run_embedded.py's EmbeddedStack) runs on
its own free ports and scratch directory, so it never collides with `make run`.
``--devices`` simulated devices (scripts/device_sim.py's client, each with MCP tools)
say greetings (local) and questions (escalated) in a loop. Each fault is injected
while they talk; the run then waits until every device had a normal turn again.

Columns: ``affected`` turns overlapping the fault that ended in the apology or were
lost; ``longest silence`` the longest end-of-speech -> first-audio gap of those
turns; ``recover s`` injection -> every device answered normally again (timed faults
include their duration); ``lost`` turns that left a device hanging (no audio or no
``tts stop``). Faults: see FAULTS below; TTS and ASR failures go through the
debug-only hook of shared/faults.py (XZ_FAULTS_FILE); discovery reads the Consul
HTTP double of tests/consul_double.py (no Consul binary installs here), which the
``consul-down`` fault stops while every device re-runs its OTA check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import psutil

from scripts.embedded_harness import DeviceFleet, stack_processes, isolated_topology
from scripts.run_embedded import EmbeddedStack
from shared import faults

TIMED_FAULT_S = 5.0
RECOVER_LIMIT_S = 180.0


@dataclass
class Row:
    fault: str
    affected: int
    longest_silence_s: float
    recover_s: float | None
    lost: int
    note: str = ""


class Chaos:
    def __init__(self, stack: EmbeddedStack, fleet: DeviceFleet, faults_file: Path, consul=None):
        self.consul = consul  # tests/consul_double.py's ConsulDouble that discovery reads, or None
        self.stack = stack
        self.fleet = fleet
        self.faults_file = faults_file
        self.restarts: list[tuple[float, str, str]] = []
        self.recover_limit_s = RECOVER_LIMIT_S

    # ------------------------------------------------------------ helpers
    def on_event(self, state: str, info: dict) -> None:
        self.restarts.append((time.monotonic(), info["name"], state))

    def pid(self, name: str) -> int:
        pid = self.stack.components[name].pid
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        return pid

    def edge_llama(self) -> psutil.Process:
        procs = stack_processes(self.stack)
        return procs["edge/llama.cpp"]

    async def edge_health(self) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.stack.edge_base}/health", timeout=aiohttp.ClientTimeout(total=3)) as r:
                return await r.json()

    def worker_name(self) -> str:
        return next(n for n in self.stack.components if n.startswith("worker "))

    async def worker_inflight(self) -> int:
        w = self.stack.topo.cloud.workers[0]
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{w.host}:{w.port}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return int((await r.json()).get("inflight", 0))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return 0

    def set_faults(self, *names: str) -> None:
        self.faults_file.write_text(" ".join(names))

    # ------------------------------------------------------------ faults (each returns a note)
    async def llm_kill(self) -> str:
        proc = self.edge_llama()
        proc.kill()
        return f"killed llama.cpp pid {proc.pid}"

    async def worker_kill(self) -> str:
        for _ in range(300):  # wait for an escalated answer being streamed
            if await self.worker_inflight() > 0:
                break
            await asyncio.sleep(0.1)
        pid = self.pid(self.worker_name())
        psutil.Process(pid).kill()
        return f"killed worker pid {pid}"

    async def leaf_freeze(self) -> str:
        pid = self.pid("leaf")
        psutil.Process(pid).send_signal(signal.SIGSTOP)
        await asyncio.sleep(TIMED_FAULT_S)
        psutil.Process(pid).send_signal(signal.SIGCONT)
        return f"SIGSTOP leaf {TIMED_FAULT_S:g}s"

    async def leaf_kill(self) -> str:
        pid = self.pid("leaf")
        psutil.Process(pid).kill()
        return f"killed leaf pid {pid} (restarted by the supervisor)"

    async def hub_restart(self) -> str:
        before = (await self.edge_health()).get("policy_revision")
        pid = self.pid("hub")
        psutil.Process(pid).kill()
        for _ in range(600):
            if self.stack.components["hub"].available:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)
        after = (await self.edge_health()).get("policy_revision")
        return f"policy revision {before} -> {after}"

    async def consul_down(self) -> str:
        if self.consul is None:
            raise RuntimeError("run without --no-consul to test discovery")
        await self.consul.stop()
        self.fleet.reconnect_all()  # every device asks OTA (discovery) for an edge while Consul is down
        await asyncio.sleep(TIMED_FAULT_S * 2)
        await self.consul.start()
        return f"Consul down {TIMED_FAULT_S * 2:g}s, every device re-ran OTA"

    async def device_drop(self) -> str:
        self.fleet.drop_next_answer(0)
        return "device 0 hangs up mid-answer"

    async def tts_fail(self) -> str:
        self.set_faults("tts")
        await asyncio.sleep(TIMED_FAULT_S)
        self.set_faults()
        return f"TTS raising {TIMED_FAULT_S:g}s"

    async def asr_fail(self) -> str:
        self.set_faults("asr")
        await asyncio.sleep(TIMED_FAULT_S)
        self.set_faults()
        return f"ASR raising {TIMED_FAULT_S:g}s"

    # ------------------------------------------------------------ measuring
    async def run_fault(self, name: str, inject: Callable[[], Awaitable[str]]) -> Row:
        t0 = time.monotonic()
        try:
            note = await inject()
        except Exception as exc:  # noqa: BLE001 - a fault that cannot be injected is a row, not a crash
            return Row(name, 0, 0.0, None, 0, f"not injected: {exc}")
        recovered = await self._recovered_after(t0)
        window = [r for r in self.fleet.records if r.end >= t0 and (recovered is None or r.start <= recovered)]
        bad = [r for r in window if not r.normal and not r.dropped]
        return Row(name, len(bad), round(max((r.silence_s for r in bad), default=0.0), 2),
                   None if recovered is None else round(recovered - t0, 1), sum(r.lost for r in window), note)

    async def _recovered_after(self, t0: float) -> float | None:
        """When every device finished a normal turn that started after the fault was injected."""
        deadline = time.monotonic() + self.recover_limit_s
        while time.monotonic() < deadline:
            firsts = {}
            for r in self.fleet.records:
                if r.start >= t0 and r.normal:
                    firsts[r.device] = min(firsts.get(r.device, r.end), r.end)
            if len(firsts) == self.fleet.devices:
                return max(firsts.values())
            await asyncio.sleep(0.5)
        return None


FAULTS: dict[str, str] = {
    "llm-kill": "llm_kill", "worker-kill": "worker_kill", "leaf-freeze": "leaf_freeze", "leaf-kill": "leaf_kill",
    "hub-restart": "hub_restart", "consul-down": "consul_down", "device-drop": "device_drop", "tts-fail": "tts_fail", "asr-fail": "asr_fail",
}


def print_table(rows: list[Row]) -> None:
    head = f"{'fault':<13} {'affected':>8} {'longest silence s':>17} {'recover s':>9} {'lost':>5}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        rec = "never" if r.recover_s is None else f"{r.recover_s:.1f}"
        print(f"{r.fault:<13} {r.affected:>8} {r.longest_silence_s:>17.2f} {rec:>9} {r.lost:>5}  {r.note}")


async def run(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="xz-chaos-"))
    faults_file = scratch / "faults"
    faults_file.write_text("")
    consul = None
    if not args.no_consul:
        from tests.consul_double import ConsulDouble  # the only Consul these machines have (see its docstring)

        consul = ConsulDouble()
        await consul.start()
    config = isolated_topology(scratch, consul_url=consul.url if consul else None)
    holder: list[Chaos] = []
    stack = EmbeddedStack(str(config), scratch / "embedded", extra_env={faults.ENV: str(faults_file)},
                          on_event=lambda s, i: holder[0].on_event(s, i) if holder else None)
    fleet = DeviceFleet(f"{stack.edge_base}/xiaozhi/ota/", devices=args.devices)
    chaos = Chaos(stack, fleet, faults_file, consul)
    chaos.recover_limit_s = args.recover_limit
    holder.append(chaos)
    names = [n.strip() for n in args.faults.split(",") if n.strip()] if args.faults else list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        print(f"chaos: unknown faults {unknown}; known: {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    print(f"[chaos] starting the embedded stack in {scratch} ...", flush=True)
    rows: list[Row] = []
    try:
        await fleet.prepare()
        await stack.start()
        fleet.start()
        print(f"[chaos] {args.devices} devices talking; warming up {args.warmup:g}s", flush=True)
        await asyncio.sleep(args.warmup)
        for name in names:
            print(f"[chaos] fault {name} ...", flush=True)
            row = await chaos.run_fault(name, getattr(chaos, FAULTS[name]))
            rows.append(row)
            print(f"[chaos]   {row}", flush=True)
    finally:
        await fleet.stop()
        await stack.stop()
        if consul is not None:
            await consul.stop()
    total = len(fleet.records)
    print(f"\n{total} turns in {fleet.sessions} sessions, {sum(r.lost for r in fleet.records)} lost overall; "
          f"restarts: {sum(1 for _, _, s in chaos.restarts if s == 'restarting')}\n")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--faults", help=f"comma-separated subset of: {', '.join(FAULTS)} (default: all)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of normal traffic before the first fault")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--recover-limit", type=float, default=RECOVER_LIMIT_S,
                   help="seconds to wait for every device to answer normally again")
    p.add_argument("--no-consul", action="store_true", help="static discovery (skips the consul-down fault)")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
