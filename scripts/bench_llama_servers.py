"""How to spend the local model's cores: one llama.cpp server with N threads, or N servers with one each.

Usage: .venv/bin/python scripts/bench_llama_servers.py [--layouts 1x2,2x1,1x1] [--answers 16] [--busy 0,1]

Each layout (servers x threads) answers ``--answers`` different questions (60 tokens at most, the edge's
``max_tokens``) split over its servers, which run at once, each in its own process as the edge runs
them; ``--busy N`` keeps N cores busy meanwhile (a spinning process: what ASR, TTS and other turns do
to the model under load). Prints answers/s and tokens/s per layout and busy count; the model loads
before the clock starts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.topology import load_topology, resolve_model_path  # noqa: E402

QUESTIONS = ["Why is the sky blue?", "What is the capital of France?", "How do plants grow?",
             "Tell me about the moon.", "What is a computer?", "How tall is Mount Everest?",
             "What do cats eat?", "Why do we sleep?", "How does rain form?", "Who invented the telephone?",
             "What is the biggest ocean?", "How do bees make honey?", "Why do leaves change colour?",
             "What is gravity?", "How far away is the sun?", "What is a volcano?"]


def _server(model: str, threads: int, questions: list[str], ready, go, out) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_threads=threads, n_ctx=2048, verbose=False, logits_all=False)
    ready.release()
    go.wait()
    tokens = 0
    for q in questions:
        r = llm.create_chat_completion(
            messages=[{"role": "system", "content": "Answer in one or two short spoken sentences."},
                      {"role": "user", "content": q}], max_tokens=60, temperature=0.3)
        tokens += r["usage"]["completion_tokens"]
    out.put(tokens)


def _spin() -> None:
    while True:
        pass


def run(model: str, servers: int, threads: int, answers: int, busy: int) -> tuple[float, float]:
    ready, go, out = mp.Semaphore(0), mp.Event(), mp.Queue()
    share = [QUESTIONS[i % len(QUESTIONS)] for i in range(answers)]
    procs = [mp.Process(target=_server, args=(model, threads, share[i::servers], ready, go, out))
             for i in range(servers)]
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
    for p in procs + spinners:
        p.start()
    for _ in procs:
        ready.acquire()
    t0 = time.monotonic()
    go.set()
    tokens = sum(out.get() for _ in procs)
    wall = time.monotonic() - t0
    for p in procs:
        p.join()
    for p in spinners:
        p.terminate()
    return answers / wall, tokens / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", default="1x2,2x1,1x1", help="servers x threads, comma-separated")
    ap.add_argument("--answers", type=int, default=16)
    ap.add_argument("--busy", default="0,1", help="cores kept busy meanwhile, comma-separated")
    args = ap.parse_args()
    try:
        layouts = [tuple(int(v) for v in item.split("x")) for item in args.layouts.split(",")]
        busy = [int(b) for b in args.busy.split(",")]
    except ValueError:
        print("bench_llama_servers: --layouts wants e.g. 1x2,2x1 and --busy e.g. 0,1", file=sys.stderr)
        return 2
    model = str(resolve_model_path(load_topology().edge.llm.launch.model_path))
    print(f"{'layout':>8} {'busy':>5} {'answers/s':>10} {'tokens/s':>9}")
    for b in busy:
        for servers, threads in layouts:
            rate, tps = run(model, servers, threads, args.answers, b)
            print(f"{servers}x{threads:<6} {b:>5} {rate:>10.2f} {tps:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
