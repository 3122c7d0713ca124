"""TTS benchmark: ms to synthesize + resample + Opus-encode a short and a long sentence, real-time factor,
and what a phrase-cache hit costs. Uses the voice and audio settings of topology.yaml (override with
XZ_CFG__... as usual) and no disk cache.

    .venv/bin/python -m scripts.bench_tts [--runs 5] [--backend piper|espeak]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from edge.opus import encode_pcm, resample
from edge.tts import TtsService
from shared.topology import TtsCacheSpec, load_topology

SHORT = "Sure, I can help with that."
LONG = ("The Eiffel Tower was built for the 1889 World's Fair in Paris, and at three hundred metres "
        "it was the tallest structure in the world for more than forty years.")


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


async def bench(runs: int, backend: str | None) -> None:
    topo = load_topology()
    updates: dict = {"cache": TtsCacheSpec(memory_items=512, disk_dir=None, prewarm=[])}
    if backend:
        updates["backend"] = backend
    spec = topo.edge.tts.model_copy(update=updates)
    svc = TtsService(spec, topo.edge.audio)
    t0 = time.perf_counter()
    await svc.load()
    print(f"voice={svc.primary.voice_id} rate={svc.sample_rate} frame_ms={svc.frame_ms} "
          f"load_ms={(time.perf_counter() - t0) * 1000:.0f}")

    for name, text in (("short", SHORT), ("long", LONG)):
        times, audio = [], []
        for i in range(runs):
            svc.cache._mem.clear()  # measure synthesis, not the cache
            t = time.perf_counter()
            clip = await svc.speak(text)
            times.append((time.perf_counter() - t) * 1000)
            audio.append(clip.duration_ms)
            assert not clip.cached
        rtf = [t / a for t, a in zip(times, audio)]
        print(f"{name:5s} chars={len(text):3d} audio_ms={p50(audio):.0f} synth+encode_ms p50={p50(times):.0f} "
              f"min={min(times):.0f} max={max(times):.0f} rtf_p50={p50(rtf):.3f}")

    await svc.speak(SHORT)
    hits = []
    for _ in range(max(50, runs * 10)):
        t = time.perf_counter()
        clip = await svc.speak(SHORT)
        hits.append((time.perf_counter() - t) * 1000)
        assert clip.cached
    print(f"cache hit ms p50={p50(hits):.3f} max={max(hits):.3f} (n={len(hits)})")
    pcm, rate = svc._synthesize(svc.primary, LONG)
    pcm = resample(pcm, rate, svc.sample_rate)
    seconds = pcm.size / svc.sample_rate
    for complexity in sorted({10, svc.opus_complexity}, reverse=True):  # the encoder's share of a fresh sentence
        cpu = []
        for _ in range(runs):
            t = time.process_time()
            encode_pcm(pcm, svc.sample_rate, svc.frame_ms, complexity)
            cpu.append((time.process_time() - t) * 1000 / seconds)
        print(f"opus complexity={complexity:2d} encode CPU ms per audio second p50={p50(cpu):.1f}"
              f"{' (edge.audio.opus_complexity)' if complexity == svc.opus_complexity else ''}")
    svc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--backend", choices=["piper", "espeak", "edge-tts"])
    args = ap.parse_args()
    asyncio.run(bench(args.runs, args.backend))


if __name__ == "__main__":
    main()
