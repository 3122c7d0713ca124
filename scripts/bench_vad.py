"""VAD cost: ms per 32 ms frame for one stream, and per stream-frame with N streams batched.

Usage: .venv/bin/python scripts/bench_vad.py [--streams 32] [--seconds 10]
Feeds synthetic speech-like audio (noise bursts) in 60 ms device chunks through VadService,
the same path sessions use, and prints wall time per frame.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.vad import FRAME, VadService  # noqa: E402
from shared.topology import load_topology  # noqa: E402

CHUNK = 960


def make_audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    envelope = (np.sin(np.arange(n) / 16000 * 2 * np.pi * 0.4) > 0).astype(np.float32)  # on/off every 1.25 s
    return (rng.normal(0, 3000, n) * envelope).astype(np.int16)


async def run(streams: int, seconds: float) -> tuple[float, int, int]:
    svc = VadService(load_topology().edge.vad)
    await svc.load()
    vs = [svc.new_stream() for _ in range(streams)]
    audios = [make_audio(seconds, k) for k in range(streams)]
    t0 = time.perf_counter()
    for i in range(0, audios[0].size, CHUNK):
        await asyncio.gather(*(s.feed(a[i : i + CHUNK]) for s, a in zip(vs, audios)))
    return time.perf_counter() - t0, svc.frames_processed, svc.onnx_calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    frame_ms = FRAME / 16
    for n in (1, args.streams):
        wall, frames, calls = asyncio.run(run(n, args.seconds))
        per_frame = wall * 1000 / frames
        print(
            f"streams={n:3d}  frames={frames:6d}  onnx_calls={calls:5d}  "
            f"ms/frame={per_frame:.3f}  ms/step(all streams)={wall * 1000 / (frames / n):.3f}  "
            f"realtime_factor={per_frame / frame_ms:.4f}  max_streams_per_core~{int(frame_ms / per_frame)}"
        )


if __name__ == "__main__":
    main()
