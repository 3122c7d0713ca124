"""Soak benchmark: many turns and sessions against the embedded stack, sampling memory and disk.

    .venv/bin/python -m scripts.soak --turns 2000 --sessions 2000 --devices 5 --out out/soak

Runs the stack on its own ports (scripts/embedded_harness.py's EmbeddedRun, as
scripts/chaos.py does); ``--devices`` simulated devices say utterances in a loop, each
session with its MCP tools initialized (the edge's per-session MCP client), reconnecting
so that ``--turns`` turns span ``--sessions`` sessions. Every ``--every`` seconds it
samples the RSS of every process of the stack (edge, its llama.cpp server, worker, its
llama.cpp server, hub, leaf) and the disk used by the TTS cache, the turn trace and the
NATS stores. Writes ``<out>.csv`` and, with matplotlib installed (``pip install .[plot]``),
``<out>.png``; prints each process's RSS after warm-up vs at the end, in percent. The
run stops once both counts are reached (or at Ctrl-C, writing what it measured so far); it prints its estimated duration after the
first turns.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import signal
import sys
import time
from pathlib import Path

import psutil

from scripts.embedded_harness import DeviceFleet, EmbeddedRun


def disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def disk_parts(run: EmbeddedRun) -> dict[str, Path]:
    """What grows on disk: the TTS cache, the turn trace (with its rotated files), the NATS stores."""
    return {"tts_cache": run.scratch / "tts", "trace": run.scratch, "nats": run.scratch / "embedded"}


def sample(run: EmbeddedRun, fleet: DeviceFleet, t0: float) -> dict:
    row: dict = {"t_s": round(time.monotonic() - t0, 1), "turns": len(fleet.records),
                 "sessions": fleet.sessions, "lost": sum(r.lost for r in fleet.records)}
    for part, path in disk_parts(run).items():
        if part == "trace":
            row["disk_mb:trace"] = round(sum(disk_mb(p) for p in path.glob("turns.jsonl*")), 3)
        else:
            row[f"disk_mb:{part}"] = round(disk_mb(path), 3) if path.exists() else 0.0
    for name, proc in run.processes().items():
        try:
            row[f"rss_mb:{name}"] = round(proc.memory_info().rss / 2**20, 1)
        except psutil.Error:
            pass
    return row


async def sample_loop(run: EmbeddedRun, fleet: DeviceFleet, every: float, rows: list[dict]) -> None:
    t0 = time.monotonic()
    while True:
        rows.append(sample(run, fleet, t0))
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
    for prefix, ax, unit in (("rss_mb:", ax1, "RSS (MB)"), ("disk_mb:", ax2, "disk (MB)")):
        for k in keys:
            if k.startswith(prefix):
                ax.plot(turns, [r.get(k) for r in rows], label=k.removeprefix(prefix))
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
    ax2.set_xlabel("turns")
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    written.append(png)
    return written


def growth_report(rows: list[dict], warmup_turns: int) -> list[str]:
    """Per process: RSS at the first sample after warm-up, at the end, and the change in percent; disk likewise."""
    after = [r for r in rows if r["turns"] >= warmup_turns] or rows
    first, last = after[0], rows[-1]
    lines = [f"RSS after warm-up (turn {first['turns']}) vs end (turn {last['turns']}):"]
    for k in last:
        if k.startswith("rss_mb:") and first.get(k):
            lines.append(f"  {k.removeprefix('rss_mb:'):<28} {first[k]:>8.1f} MB -> {last[k]:>8.1f} MB "
                         f"({(last[k] - first[k]) / first[k] * 100:+.1f}%)")
    for k in last:
        if k.startswith("disk_mb:"):
            lines.append(f"  disk {k.removeprefix('disk_mb:'):<23} {first.get(k, 0):>8.2f} MB -> {last[k]:>8.2f} MB")
    return lines


async def churn_sessions(fleet: DeviceFleet, target: int, turns_goal: int, first_index: int) -> None:
    """MCP-only sessions (connect, hello, MCP initialize + tools/list, hang up), paced with the turns so
    both counts reach their goals together."""
    index = first_index
    while fleet.sessions < target:
        if fleet.sessions >= target * min(1.0, (len(fleet.records) + 1) / turns_goal):
            await asyncio.sleep(0.2)
            continue
        await fleet.mcp_session(index)
        index += 1


async def run(args: argparse.Namespace) -> int:
    rows: list[dict] = []
    started = time.monotonic()
    async with EmbeddedRun(keep=args.keep, prefix="xz-soak-") as stack:
        fleet = DeviceFleet(stack.ota_url, devices=args.devices, turns_per_session=args.turns_per_session,
                            pause_s=args.pause)
        print(f"[soak] stack up in {stack.scratch} (component logs in {stack.scratch / 'logs'})", flush=True)
        await fleet.prepare()
        t_talk = time.monotonic()
        fleet.start()
        tasks = [asyncio.create_task(sample_loop(stack, fleet, args.every, rows)),
                 asyncio.create_task(churn_sessions(fleet, args.sessions, args.turns, 1000))]
        interrupted = asyncio.Event()  # Ctrl-C ends the run early, with its figures so far written
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted.set)
        try:
            last_print, estimated = 0, False
            while (len(fleet.records) < args.turns or fleet.sessions < args.sessions) and not interrupted.is_set():
                await asyncio.sleep(1.0)
                done = len(fleet.records)
                if not estimated and done >= max(4 * args.devices, 20):
                    estimated = True
                    total = (time.monotonic() - t_talk) / done * args.turns
                    print(f"[soak] {done} turns in {time.monotonic() - t_talk:.0f}s: estimated duration for "
                          f"{args.turns} turns {total / 60:.0f} min", flush=True)
                if done - last_print >= max(args.turns // 20, 1):
                    last_print = done
                    print(f"[soak] {done} turns, {fleet.sessions} sessions, "
                          f"{sum(r.lost for r in fleet.records)} lost", flush=True)
        finally:
            await fleet.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        rows.append(sample(stack, fleet, started))
    elapsed = time.monotonic() - started
    written = write_outputs(rows, Path(args.out))
    recs = fleet.records
    print(f"\n{len(recs)} turns, {fleet.sessions} sessions ({args.devices} devices talking) in {elapsed:.0f}s; "
          f"lost {sum(r.lost for r in recs)}, apologies {sum(r.apology for r in recs)}")
    for line in growth_report(rows, args.warmup_turns):
        print(line)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=2000)
    p.add_argument("--sessions", type=int, default=2000, help="sessions in all (the devices' own, plus MCP-only "
                                                              "sessions that connect, list tools and hang up)")
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--turns-per-session", type=int, default=10, help="a talking device reconnects after this "
                                                                      "many turns (0: never)")
    p.add_argument("--warmup-turns", type=int, default=200, help="RSS growth is measured from here")
    p.add_argument("--every", type=float, default=5.0, help="sampling period, seconds")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between a device's turns")
    p.add_argument("--out", default="out/soak", help="output path without extension (.csv, .png)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, trace) afterwards")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
