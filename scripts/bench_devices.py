"""Many simulated devices at once, all at the same moment: playback pacing and abort latency, as numbers.

For latency under a realistic load (open-loop arrivals, a different utterance per turn, each
device's own gain and noise) use scripts/bench_load.py: here every device sends the same clip.

    .venv/bin/python scripts/bench_devices.py --fake --devices 50          # protocol/session overhead only
    .venv/bin/python scripts/bench_devices.py --ota http://127.0.0.1:8000/xiaozhi/ota/ --devices 5 --say "Hello"

``--fake`` serves the devices from an in-process edge with the deterministic stand-in
engine of the tests (the real turn pipeline with stand-in models: energy VAD, a tone for
an answer), so the numbers are what the device side (WebSocket, Opus decode, pacing,
session and pipeline logic) costs, without models;
server and devices share one process and event loop. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_load import stats as _stats  # noqa: E402
from scripts.device_sim import DeviceSimulator, SimError, TurnReport, read_wav, synthesize  # noqa: E402


async def _one_device(index: int, args: argparse.Namespace, target: dict[str, Any], packets: list[bytes],
                      stagger_s: float) -> list[TurnReport] | str:
    await asyncio.sleep(index * stagger_s)
    device_id = f"02:00:00:00:{index // 256:02x}:{index % 256:02x}"
    try:
        if "ota" in target:
            sim = await DeviceSimulator.from_ota(target["ota"], device_id, mode=args.mode,
                                                 turn_timeout_s=args.turn_timeout)
        else:
            sim = DeviceSimulator(target["ws"], target["token"](device_id), device_id, mode=args.mode,
                                  turn_timeout_s=args.turn_timeout)
        await sim.connect()
    except SimError as exc:
        return str(exc)
    try:
        return [await sim.run_turn(packets, args.abort_after_ms) for _ in range(args.turns)]
    finally:
        await sim.close()


async def _fake_target(devices: int):
    from aiohttp import web

    from edge.server import create_app
    from edge.tokens import TokenIssuer
    from tests.fixtures_edge import FakeEngine, make_topology

    topo = make_topology({"session": {"idle_timeout_s": 60}})
    runner = web.AppRunner(create_app(topo, None, FakeEngine()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=max(128, devices * 2)).start()
    port = runner.addresses[0][1]
    issuer = TokenIssuer.from_topology(topo)
    return runner, {"ws": f"ws://127.0.0.1:{port}/xiaozhi/v1/", "token": issuer.issue}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.wav:
        pcm = read_wav(args.wav)
    elif args.say:
        pcm = synthesize(args.say)
    else:
        from tests.fixtures_edge import tone

        pcm = tone(800)
    packets = DeviceSimulator("ws://unused").encode(pcm)  # encoded once: devices must not cost the loop
    runner = None
    if args.fake:
        runner, target = await _fake_target(args.devices)
    else:
        target = {"ota": args.ota}
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        results = await asyncio.gather(*(_one_device(i, args, target, packets, args.stagger_ms / 1000.0)
                                         for i in range(args.devices)))
    finally:
        if runner is not None:
            await runner.cleanup()
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    reports = [r for res in results if isinstance(res, list) for r in res]
    errors = [res for res in results if isinstance(res, str)]
    timing = {k: [r.timings_ms[k] for r in reports if k in r.timings_ms]
              for k in ("stt", "llm", "first_audio", "tts_stop")}
    pacing = [(r.frame_times[-1] - r.frame_times[0]) * 1000 / (r.frames * 60)
              for r in reports if r.frames >= 10 and not r.aborted]
    aborts = [r.abort_to_last_frame_ms or 0.0 for r in reports if r.aborted]
    return {
        "devices": args.devices, "turns_ok": sum(1 for r in reports if r.tts_stop),
        "turns_without_answer": sum(1 for r in reports if not r.tts_stop), "connect_errors": len(errors),
        "first_error": errors[0] if errors else None, "engine": "fake (in-process)" if args.fake else args.ota,
        "timings_ms": {k: _stats(v) for k, v in timing.items()},
        "pacing_spread_over_audio": _stats(pacing),  # ~1 - lead/duration when paced, ~0 if dumped at once
        "abort_to_last_frame_ms": _stats(aborts) if args.abort_after_ms is not None else None,
        "wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ota", help="OTA URL of a running edge")
    target.add_argument("--fake", action="store_true", help="in-process edge with the stand-in engine")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--turns", type=int, default=1)
    p.add_argument("--mode", choices=("auto", "manual", "realtime"), default="auto")
    p.add_argument("--wav")
    p.add_argument("--say")
    p.add_argument("--abort-after-ms", type=float, default=None)
    p.add_argument("--stagger-ms", type=float, default=20.0, help="delay between device connects")
    p.add_argument("--turn-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    try:
        print(json.dumps(asyncio.run(run(args)), indent=2))
    except SimError as exc:
        print(f"bench_devices: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
