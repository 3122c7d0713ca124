"""Cost of one request's embedding and routing decision (target: <= 10 ms on the 2-core edge).

Prints, for each onnxruntime thread budget: one uncached request's embedding
(p50/p95 over the suite's requests), a batch of 32 per text, and the router's
whole decision (embedding + tool and intent scoring, tool vectors cached as in
a session). Numbers depend on what else runs on the machine: measure on a quiet one.

    .venv/bin/python scripts/bench_embeddings.py [--threads 1,2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_tools import SUITES, board_registry  # noqa: E402
from scripts.sim_board import SimBoard  # noqa: E402
from shared.embeddings import Embedder  # noqa: E402
from shared.intent_router import IntentRouter  # noqa: E402


def timed(fn, items) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - start) * 1000)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="onnxruntime intra-op thread budgets to compare")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the requests")
    opts = ap.parse_args()
    texts = [c["text"] for s in SUITES for c in yaml.safe_load(s.read_text())["requests"]]
    registry = board_registry(SimBoard())
    print(f"{len(texts)} requests from {', '.join(s.name for s in SUITES)}, {opts.rounds} rounds")
    for threads in (int(t) for t in opts.threads.split(",")):
        embedder = Embedder(threads=threads, cache_size=0)  # no LRU: every request pays its embedding
        embedder.embed(texts[:4])  # warm-up
        single = timed(lambda t: embedder.embed([t]), texts * opts.rounds)
        start = time.perf_counter()
        for i in range(0, len(texts), 32):
            embedder.embed(texts[i:i + 32])
        batch = (time.perf_counter() - start) * 1000 / len(texts)
        router = IntentRouter(embedder)
        router.warm(registry)  # a session's tools, embedded once
        routed = [router.route(t, registry).ms for t in texts * opts.rounds]
        print(f"threads {threads}: embedding p50 {statistics.median(single):.1f} ms p95 {p95(single):.1f} ms "
              f"min {min(single):.1f} ms | batch of 32: {batch:.1f} ms per text | routing decision "
              f"p50 {statistics.median(routed):.1f} ms p95 {p95(routed):.1f} ms min {min(routed):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
