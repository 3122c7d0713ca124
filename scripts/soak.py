"""Soak benchmark: many turns and sessions against the embedded stack, sampling memory and disk.

    .venv/bin/python -m scripts.soak --turns 2000 --devices 5 --turns-per-session 1 --out out/soak

Runs the stack on its own ports (like scripts/chaos.py); ``--devices`` simulated devices
say utterances in a loop, each session with its MCP tools initialized, reconnecting
every ``--turns-per-session`` turns (1: a new session, and MCP client, per turn).
Every ``--every`` seconds it samples the RSS of every process of the stack (edge,
its llama.cpp server, worker, its llama.cpp server, hub, leaf) and the disk used by
the scratch directory (TTS cache, turn trace, NATS stores). Writes ``<out>.csv`` and,
with matplotlib installed (``pip install .[plot]``), ``<out>.png``; prints each
process's RSS after warm-up vs at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import tempfile
import time
from pathlib import Path

import psutil

from scripts.embedded_harness import DeviceFleet, isolated_topology, stack_processes
from scripts.run_embedded import EmbeddedStack


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


async def sample_loop(stack: EmbeddedStack, fleet: DeviceFleet, scratch: Path, every: float,
                      rows: list[dict]) -> None:
    t0 = time.monotonic()
    while True:
        row: dict = {"t_s": round(time.monotonic() - t0, 1), "turns": len(fleet.records),
                     "sessions": fleet.sessions, "lost": sum(r.lost for r in fleet.records),
                     "disk_mb": round(disk_mb(scratch), 2)}
        for name, proc in stack_processes(stack).items():
            try:
                row[f"rss_mb:{name}"] = round(proc.memory_info().rss / 2**20, 1)
            except psutil.Error:
                pass
        rows.append(row)
        await asyncio.sleep(every)


def write_outputs(rows: list[dict], out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = out.with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    written = [csv_path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: matplotlib not installed, no PNG (pip install .[plot])", file=sys.stderr)
        return written
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    turns = [r["turns"] for r in rows]
    for k in keys:
        if k.startswith("rss_mb:"):
            ax1.plot(turns, [r.get(k) for r in rows], label=k.removeprefix("rss_mb:"))
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(fontsize=7)
    ax2.plot(turns, [r["disk_mb"] for r in rows])
    ax2.set_ylabel("scratch disk (MB)")
    ax2.set_xlabel("turns")
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=90)
    written.append(png)
    return written


def growth_report(rows: list[dict], warmup_turns: int) -> list[str]:
    """Per process: RSS at the first sample after warm-up, at the end, and the change in percent."""
    after = [r for r in rows if r["turns"] >= warmup_turns] or rows
    first, last = after[0], rows[-1]
    lines = []
    for k in last:
        if k.startswith("rss_mb:") and k in first and first[k]:
            lines.append(f"{k.removeprefix('rss_mb:'):<28} {first[k]:>8.1f} MB -> {last[k]:>8.1f} MB "
                         f"({(last[k] - first[k]) / first[k] * 100:+.1f}%)")
    lines.append(f"{'scratch disk':<28} {first['disk_mb']:>8.2f} MB -> {last['disk_mb']:>8.2f} MB")
    return lines


async def run(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="xz-soak-"))
    stack = EmbeddedStack(str(isolated_topology(scratch)), scratch / "embedded")
    fleet = DeviceFleet(f"{stack.edge_base}/xiaozhi/ota/", devices=args.devices,
                        turns_per_session=args.turns_per_session, pause_s=args.pause)
    rows: list[dict] = []
    sampler = None
    started = time.monotonic()
    try:
        await fleet.prepare()
        print(f"[soak] starting the embedded stack in {scratch} ...", flush=True)
        await stack.start()
        fleet.start()
        sampler = asyncio.create_task(sample_loop(stack, fleet, scratch, args.every, rows))
        last_print = 0
        while len(fleet.records) < args.turns:
            await asyncio.sleep(1.0)
            if len(fleet.records) - last_print >= max(args.turns // 20, 1):
                last_print = len(fleet.records)
                print(f"[soak] {last_print} turns, {fleet.sessions} sessions, "
                      f"{sum(r.lost for r in fleet.records)} lost", flush=True)
    finally:
        await fleet.stop()
        if sampler is not None:
            sampler.cancel()
        await stack.stop()
    elapsed = time.monotonic() - started
    written = write_outputs(rows, Path(args.out))
    recs = fleet.records
    print(f"\n{len(recs)} turns, {fleet.sessions} sessions in {elapsed:.0f}s; lost {sum(r.lost for r in recs)}, "
          f"apologies {sum(r.apology for r in recs)}")
    for line in growth_report(rows, args.warmup_turns):
        print(line)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=2000)
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--turns-per-session", type=int, default=1, help="reconnect after this many turns (0: never)")
    p.add_argument("--warmup-turns", type=int, default=200, help="RSS growth is measured from here")
    p.add_argument("--every", type=float, default=5.0, help="sampling period, seconds")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between a device's turns")
    p.add_argument("--out", default="out/soak", help="output path without extension (.csv, .png)")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
