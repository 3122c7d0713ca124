"""LLM x TTS grid: every configured LLM with every TTS backend, timed like a turn.

For each pair and prompt: stream the LLM's answer, cut it into sentences as the
turn pipeline does, synthesize each sentence as soon as it is complete, and
record latency to the first token, to the first audio (first sentence
synthesized), total time, the TTS real-time factor (synthesis time / audio
length), the end-to-end real-time factor (total / audio length) and memory
(RSS of this process with the TTS loaded, and of the llama.cpp server). Writes
a CSV (one row per pair and prompt) and a PNG chart with the per-pair medians.

    .venv/bin/python scripts/bench_grid.py --out bench_grid      # -> bench_grid.csv, bench_grid.png
    .venv/bin/python scripts/bench_grid.py --tts piper,espeak --prompts 3
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.sentences import SentenceSplitter  # noqa: E402
from edge.tts import EdgeTtsBackend, EspeakBackend, PiperBackend, TtsError  # noqa: E402
from scripts.bench_tools import Target, targets_from_topology  # noqa: E402
from shared.chat import ChatClient, ChatError  # noqa: E402
from shared.nats_runtime import free_port  # noqa: E402
from shared.topology import load_topology  # noqa: E402

PROMPTS = ["What is the capital of France?", "Tell me something fun about cats.",
           "How do I boil an egg?", "Why is the sky blue?", "Give me a tip for better sleep."]
SYSTEM = "You are Xiaozhi, a friendly voice assistant. Answer in one or two short spoken sentences."
COLUMNS = ["llm", "tts", "prompt", "first_token_ms", "first_audio_ms", "total_ms", "audio_ms", "tts_rtf",
           "e2e_rtf", "rss_mb", "llm_rss_mb", "error"]


def rss_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def tts_backends(names: list[str]):
    spec = load_topology().edge.tts
    make = {"piper": lambda: PiperBackend(spec.voice), "espeak": lambda: EspeakBackend(spec.espeak_voice),
            "edge-tts": lambda: EdgeTtsBackend(spec.edge_tts_voice)}
    out = []
    for name in names:
        backend = make[name]()
        try:
            backend.load()
            backend.synthesize("Hello.")  # offline edge-tts fails here, not in the middle of the grid
        except (TtsError, Exception) as exc:  # any backend that cannot speak is left out, with the reason
            print(f"  tts {name}: skipped ({str(exc)[:120]})")
            continue
        out.append(backend)
    return out


async def one(llm: ChatClient, tts, prompt: str, max_tokens: int) -> dict:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    first_token = first_audio = None
    audio_s = synth_s = 0.0
    pending: list[asyncio.Future] = []

    def synth(sentence: str) -> tuple[float, float]:
        t = time.perf_counter()
        pcm, rate = tts.synthesize(sentence)
        return len(pcm) / rate, time.perf_counter() - t

    async def collect() -> None:
        nonlocal first_audio, audio_s, synth_s
        for fut in pending:
            dur, took = await fut
            audio_s += dur
            synth_s += took
            if first_audio is None:
                first_audio = time.perf_counter() - start
        pending.clear()

    splitter = SentenceSplitter()
    async for delta in llm.stream([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                                  max_tokens=max_tokens, temperature=0.3):
        if delta.text and first_token is None:
            first_token = time.perf_counter() - start
        for sentence in splitter.feed(delta.text):
            pending.append(loop.run_in_executor(None, synth, sentence))  # synthesize while the LLM goes on
            if first_audio is None:
                await collect()
    pending += [loop.run_in_executor(None, synth, s) for s in splitter.flush()]
    await collect()
    total = time.perf_counter() - start
    return {"first_token_ms": round((first_token or total) * 1000), "first_audio_ms": round((first_audio or total) * 1000),
            "total_ms": round(total * 1000), "audio_ms": round(audio_s * 1000),
            "tts_rtf": round(synth_s / audio_s, 3) if audio_s else float("nan"),
            "e2e_rtf": round(total / audio_s, 3) if audio_s else float("nan")}


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["llm"], r["tts"]) for r in rows if not r["error"]})
    labels = [l.replace("/", "/\n") + f"\n+ {t}" for l, t in pairs]  # long target names wrap

    def med(key: str) -> list[float]:
        return [statistics.median([r[key] for r in rows if (r["llm"], r["tts"]) == p and not r["error"]])
                for p in pairs]

    fig, axes = plt.subplots(1, 3, figsize=(max(10, 3 * len(pairs) + 6), 4.5))
    x = range(len(pairs))
    axes[0].bar([i - 0.2 for i in x], [v / 1000 for v in med("first_audio_ms")], 0.4, label="first audio")
    axes[0].bar([i + 0.2 for i in x], [v / 1000 for v in med("total_ms")], 0.4, label="total")
    axes[0].set_title("Latency (s, median)")
    axes[0].legend()
    axes[1].bar([i - 0.2 for i in x], med("tts_rtf"), 0.4, label="TTS")
    axes[1].bar([i + 0.2 for i in x], med("e2e_rtf"), 0.4, label="end to end")
    axes[1].axhline(1.0, color="red", linestyle="--", linewidth=1, label="real time")
    axes[1].set_title("Real-time factor (lower is better)")
    axes[1].legend()
    axes[2].bar([i - 0.2 for i in x], med("rss_mb"), 0.4, label="edge process (TTS)")
    axes[2].bar([i + 0.2 for i in x], med("llm_rss_mb"), 0.4, label="LLM server")
    axes[2].set_title("Memory (MB RSS)")
    axes[2].legend()
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="edge,cloud")
    ap.add_argument("--tts", default="piper,espeak,edge-tts")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--out", default="bench_grid", help="writes <out>.csv and <out>.png")
    ap.add_argument("--no-launch", action="store_true")
    opts = ap.parse_args()
    backends = await asyncio.to_thread(tts_backends, opts.tts.split(","))  # edge-tts runs its own loop
    targets: list[Target] = targets_from_topology(set(opts.targets.split(",")))
    rows: list[dict] = []
    for target in targets:
        server = None
        if target.launch is not None and not opts.no_launch:
            from shared.llama_server import LlamaServer

            server = await LlamaServer(target.launch, port=free_port(), alias=target.model).start()
            target.url = server.base_url
        llm = ChatClient(target.url, target.model, name=target.name, timeout=300)
        try:
            for tts in backends:
                for prompt in PROMPTS[: opts.prompts]:
                    row = {"llm": target.name, "tts": tts.name, "prompt": prompt, "error": ""}
                    try:
                        row |= await one(llm, tts, prompt, opts.max_tokens)
                    except (ChatError, TtsError) as exc:
                        row["error"] = str(exc)[:200]
                    row["rss_mb"] = rss_mb()
                    row["llm_rss_mb"] = rss_mb(server.proc.pid) if server and server.proc else float("nan")
                    rows.append(row)
                    print(f"  {target.name:28s} {tts.name:8s} first audio {row.get('first_audio_ms', '-'):>6} ms  "
                          f"total {row.get('total_ms', '-'):>6} ms  tts rtf {row.get('tts_rtf', '-')}  "
                          f"e2e rtf {row.get('e2e_rtf', '-')}  {row['error']}", flush=True)
        finally:
            await llm.aclose()
            if server is not None:
                await server.stop()
    out = Path(opts.out)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    if any(not r["error"] for r in rows):
        chart(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: launched llama.cpp servers are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(asyncio.run(main()))
