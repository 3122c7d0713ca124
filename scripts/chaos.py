"""Fault injection against the real embedded stack while devices talk; prints one row per fault.

    .venv/bin/python -m scripts.chaos [--devices 5] [--faults llm-kill,tts-fail,...] [--json out.json]

The stack (hub, leaf, worker, edge, and the Consul HTTP double discovery reads:
scripts/embedded_harness.py's EmbeddedRun) runs on its own free ports and scratch
directory, so it never collides with `make run`. ``--devices`` simulated devices
(scripts/device_sim.py's client, each with MCP tools) say greetings (local) and
questions (escalated) in a loop. Each fault is injected while they talk (timed faults
last ``--fault-s``); the run then waits until every device had a normal turn again
and the component is back.

Columns: ``affected`` turns overlapping the fault that ended in the apology, were lost,
or were questions answered by the edge's model instead of the cloud; ``longest silence`` the longest end-of-speech -> first-audio gap of any turn in
the window (a turn without audio counts to its end); ``back s`` injection -> the component
serving again (restarted, ``/health`` up); ``recover s`` injection -> every
device answered normally again and the component is back (timed faults include their
duration); ``lost`` turns that left a device hanging (no audio or no ``tts stop``).
The ``baseline`` row is the warm-up, before any fault. TTS and ASR failures go through
the debug-only hook of shared/faults.py (XZ_FAULTS_FILE). :class:`Faults` is also what
tests/test_chaos.py injects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import psutil

from scripts.embedded_harness import DeviceFleet, EmbeddedRun, TurnRecord

FAULT_S = 5.0
RECOVER_LIMIT_S = 180.0
LEAF_FROZEN_TARGET_MS = 800.0


@dataclass
class Fault:
    name: str
    inject: Callable[[], Awaitable[str]]  # returns a note for the table
    heal: Callable[[], Awaitable[None]] | None  # timed faults; None: one event (a kill), healed by supervision
    back: Callable[[], Awaitable[bool]]  # the broken component serves again


class Faults:
    """Every fault of the table, against one EmbeddedRun; ``fleet`` (the chaos loop's devices) only for
    the faults that act through devices (hang up, re-run OTA)."""

    def __init__(self, run: EmbeddedRun, fleet: DeviceFleet | None = None):
        self.run = run
        self.fleet = fleet
        self.policy_revision: int | None = None  # stored before the hub restart; must survive it
        self._killed: dict[str, int] = {}  # component -> restarts before its kill

    def all(self) -> dict[str, Fault]:
        f = Fault
        return {x.name: x for x in [
            f("llm-kill", self.llm_kill, None, self.llm_back),
            f("worker-kill", self.worker_kill, None, self.worker_back),
            f("leaf-freeze", self.leaf_freeze, self.leaf_thaw, self.cloud_back),
            f("leaf-kill", self.leaf_kill, None, self.leaf_back),
            f("hub-restart", self.hub_restart, None, self.hub_back),
            f("consul-down", self.consul_down, self.consul_up, self.consul_back),
            f("device-drop", self.device_drop, None, self.device_back),
            f("tts-fail", self.tts_fail, self.heal_hooks, self.always),
            f("asr-fail", self.asr_fail, self.heal_hooks, self.always),
        ]}

    # ------------------------------------------------------------ injections
    def _kill(self, component: str) -> int:
        self._killed[component] = self.run.restarts(component)
        pid = self.run.pid(component)
        psutil.Process(pid).kill()
        return pid

    async def llm_kill(self) -> str:
        proc = self.run.processes()["edge/llama.cpp"]
        self._killed["edge/llama.cpp"] = proc.pid
        proc.kill()
        return f"SIGKILL edge llama.cpp pid {proc.pid}"

    async def worker_kill(self) -> str:
        """Kill the worker while it streams an escalated answer (waits up to 30 s for one)."""
        streaming = await self.run.until(self.run.worker_inflight, 30.0, 0.05)
        pid = self._kill(self.run.worker_name())
        return f"SIGKILL worker pid {pid}" + ("" if streaming else " (no answer was streaming)")

    async def leaf_freeze(self) -> str:
        pid = self.run.pid("leaf")
        psutil.Process(pid).send_signal(signal.SIGSTOP)
        self._killed["leaf-frozen"] = pid
        return f"SIGSTOP leaf pid {pid}"

    async def leaf_thaw(self) -> None:
        psutil.Process(self._killed.pop("leaf-frozen")).send_signal(signal.SIGCONT)

    async def leaf_kill(self) -> str:
        return f"SIGKILL leaf pid {self._kill('leaf')}"

    async def hub_restart(self) -> str:
        """Store a policy revision, wait until the edge follows it, then kill the hub."""
        self.policy_revision = rev = await self.run.store_policy("chaos: must survive a hub restart")
        await self.run.until(lambda: self._edge_revision_is(rev), 15.0)
        return f"policy revision {rev} stored; SIGKILL hub pid {self._kill('hub')}"

    async def consul_down(self) -> str:
        if self.run.consul is None:
            raise RuntimeError("this run has no Consul double (discovery is static)")
        await self.run.consul.stop()
        if self.fleet is not None:
            self.fleet.reconnect_all()  # every device asks OTA (discovery) for an edge while Consul is down
        return "Consul double stopped; every device re-runs OTA"

    async def consul_up(self) -> None:
        await self.run.consul.start()

    async def device_drop(self) -> str:
        if self.fleet is None:
            raise RuntimeError("device-drop needs the talking devices")
        self.fleet.drop_next_answer(0)
        return "device 0 hangs up mid-answer"

    async def tts_fail(self) -> str:
        self.run.set_faults("tts")
        return "TTS raising (all but the pre-warmed phrases)"

    async def asr_fail(self) -> str:
        self.run.set_faults("asr")
        return "ASR raising"

    async def heal_hooks(self) -> None:
        self.run.set_faults()

    # ------------------------------------------------------------ is it back?
    async def _health(self) -> dict:
        try:
            return await self.run.edge_health()
        except Exception:  # noqa: BLE001 - not answering is "not back"
            return {}

    async def _edge_revision_is(self, rev: int) -> bool:
        return (await self._health()).get("policy_revision") == rev

    async def _cloud_link(self) -> bool:
        return (await self._health()).get("components", {}).get("cloud_link") == "up"

    def _restarted(self, component: str) -> bool:
        return self.run.stack.components[component].available and \
            self.run.restarts(component) > self._killed.get(component, 0)

    async def llm_back(self) -> bool:
        llama = self.run.processes().get("edge/llama.cpp")
        return (llama is not None and llama.pid != self._killed.get("edge/llama.cpp")
                and (await self._health()).get("components", {}).get("llm") == "up")

    async def worker_back(self) -> bool:
        return self._restarted(self.run.worker_name()) and await self._cloud_link()

    async def cloud_back(self) -> bool:
        return await self._cloud_link()

    async def leaf_back(self) -> bool:
        return self._restarted("leaf") and await self._cloud_link()

    async def hub_back(self) -> bool:
        return self._restarted("hub") and await self._cloud_link() and \
            await self._edge_revision_is(self.policy_revision)

    async def consul_back(self) -> bool:
        return await self.run.edge_metric("xz_discovery_consul_up") == 1.0

    async def device_back(self) -> bool:
        return await self.run.edge_metric("xz_edge_connected_devices") == (self.fleet.devices if self.fleet else 0)

    async def always(self) -> bool:
        return True


@dataclass
class Row:
    fault: str
    affected: int
    longest_silence_s: float
    recover_s: float | None
    lost: int
    note: str = ""
    back_s: float | None = None  # injection -> the component serving again (restarted, /health up)


def summarize(name: str, records: list[TurnRecord], t0: float, t1: float | None, note: str,
              back: float | None = None) -> Row:
    """The row of turns that ended after ``t0`` and started before ``t1`` (recovery; None: never)."""
    window = [r for r in records if r.end >= t0 and (t1 is None or r.start <= t1) and not r.dropped]
    bad = [r for r in window if not r.normal or r.fell_back]
    return Row(name, len(bad), round(max((r.silence_s for r in window), default=0.0), 2),
               None if t1 is None else round(t1 - t0, 1), sum(r.lost for r in window), note,
               None if back is None else round(back - t0, 1))


class Chaos:
    def __init__(self, run: EmbeddedRun, fleet: DeviceFleet, fault_s: float, recover_limit_s: float):
        self.run, self.fleet = run, fleet
        self.faults = Faults(run, fleet)
        self.fault_s = fault_s
        self.recover_limit_s = recover_limit_s
        self.frozen: tuple[float, float] | None = None  # when the leaf was frozen

    async def run_fault(self, fault: Fault) -> Row:
        t0 = time.monotonic()
        try:
            note = await fault.inject()
        except Exception as exc:  # noqa: BLE001 - a fault that cannot be injected is a row, not a crash
            return Row(fault.name, 0, 0.0, None, 0, f"not injected: {exc}")
        if fault.heal is not None:
            await asyncio.sleep(self.fault_s)
            await fault.heal()
            note += f" for {self.fault_s:g}s"
            if fault.name == "leaf-freeze":
                self.frozen = (t0, time.monotonic())
        back, recovered = await self._recovered_after(t0, fault)
        return summarize(fault.name, self.fleet.records, t0, recovered, note, back)

    def frozen_questions(self) -> list[TurnRecord]:
        """The questions whose speech ended while the leaf was frozen."""
        if self.frozen is None:
            return []
        t0, t1 = self.frozen
        return [r for r in self.fleet.records if r.question and t0 <= r.speech_end <= t1 and not r.dropped]

    async def _recovered_after(self, t0: float, fault: Fault) -> tuple[float | None, float | None]:
        """When the component was back, and when (also) every device finished a normal turn started after the
        fault (a turn is a whole answer played at speaking pace: the devices' cycle, not the component's)."""
        deadline = time.monotonic() + self.recover_limit_s
        back_at: float | None = None
        while time.monotonic() < deadline:
            if back_at is None and await fault.back():
                back_at = time.monotonic()
            firsts: dict[int, float] = {}
            for r in self.fleet.records:
                if r.start >= t0 and r.normal:
                    firsts[r.device] = min(firsts.get(r.device, r.end), r.end)
            if back_at is not None and len(firsts) == self.fleet.devices:
                return back_at, max(back_at, *firsts.values())
            await asyncio.sleep(0.5)
        return back_at, None


def print_table(rows: list[Row]) -> None:
    head = f"{'fault':<13} {'affected':>8} {'longest silence s':>17} {'back s':>6} {'recover s':>9} {'lost':>5}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        back = "never" if r.back_s is None else f"{r.back_s:.1f}"
        rec = "never" if r.recover_s is None else f"{r.recover_s:.1f}"
        print(f"{r.fault:<13} {r.affected:>8} {r.longest_silence_s:>17.2f} {back:>6} {rec:>9} {r.lost:>5}  {r.note}")


def leaf_frozen_line(questions: list[TurnRecord]) -> str:
    if not questions:
        return "end of speech -> first audio with the leaf frozen: no question was asked during the freeze"
    first_audio = [r.silence_s * 1000 for r in questions]
    worst, median = max(first_audio), statistics.median(first_audio)
    stt = [r.stt_ms for r in questions if r.stt_ms is not None]
    verdict = "meets" if worst <= LEAF_FROZEN_TARGET_MS else "misses"
    return (f"end of speech -> first audio with the leaf frozen: median {median:.0f} ms, max {worst:.0f} ms "
            f"over {len(first_audio)} questions ({verdict} the {LEAF_FROZEN_TARGET_MS:.0f} ms target); "
            f"of which end of speech -> transcript median {statistics.median(stt) if stt else float('nan'):.0f} ms")


async def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.faults.split(",") if n.strip()] if args.faults else None
    rows: list[Row] = []
    async with EmbeddedRun(consul=not args.no_consul, keep=args.keep, prefix="xz-chaos-") as stack:
        fleet = DeviceFleet(stack.ota_url, devices=args.devices)
        chaos = Chaos(stack, fleet, args.fault_s, args.recover_limit)
        faults = chaos.faults.all()
        unknown = [n for n in names or [] if n not in faults]
        if unknown:
            print(f"chaos: unknown faults {unknown}; known: {', '.join(faults)}", file=sys.stderr)
            return 2
        print(f"[chaos] stack up in {stack.scratch} (component logs in {stack.scratch / 'logs'})", flush=True)
        await fleet.prepare()
        fleet.start()
        try:
            t_warm = time.monotonic()
            print(f"[chaos] {args.devices} devices talking; warming up {args.warmup:g}s", flush=True)
            await asyncio.sleep(args.warmup)
            rows.append(summarize("baseline", fleet.records, t_warm, time.monotonic(), "no fault (warm-up)"))
            for name in names or list(faults):
                print(f"[chaos] fault {name} ...", flush=True)
                row = await chaos.run_fault(faults[name])
                rows.append(row)
                print(f"[chaos]   {row}", flush=True)
        finally:
            await fleet.stop()
        restarts = sum(1 for _, _, state in stack.events if state == "restarting")
    recs = fleet.records
    print(f"\n{len(recs)} turns in {fleet.sessions} sessions with {args.devices} devices, "
          f"{sum(r.lost for r in recs)} lost overall; component restarts: {restarts}\n")
    print_table(rows)
    print()
    frozen = chaos.frozen_questions()
    print(leaf_frozen_line(frozen))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.__dict__ for r in rows],
                                               "leaf_frozen": [r.__dict__ for r in frozen]}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--faults", help="comma-separated subset of: llm-kill, worker-kill, leaf-freeze, leaf-kill, "
                                    "hub-restart, consul-down, device-drop, tts-fail, asr-fail (default: all)")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds of normal traffic before the first fault")
    p.add_argument("--fault-s", type=float, default=FAULT_S, help="how long timed faults (freeze, Consul down, "
                                                                   "TTS/ASR raising) last")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--recover-limit", type=float, default=RECOVER_LIMIT_S,
                   help="seconds to wait for every device to answer normally again")
    p.add_argument("--no-consul", action="store_true", help="static discovery (skips the consul-down fault)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, trace) afterwards")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
