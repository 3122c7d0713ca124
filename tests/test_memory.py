"""Freed memory goes back to the OS (shared.memory_trim) and onnxruntime's arena gives back what long inputs took."""

from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np
import psutil
import pytest

from edge.threads import ArenaBoundedSession, onnx_session
from shared.memory_trim import release_free_memory, start_trimmer
from shared.topology import resolve_model_path

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")


@glibc_only
def test_trimming_returns_freed_heap_pages_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    block = 64 << 10  # under the mmap threshold: these live in the heap, where glibc keeps what is freed
    blocks = [libc.malloc(block) for _ in range(3000)]  # ~190 MB
    for b in blocks:
        ctypes.memset(b, 1, block)
    for b in blocks[:-1]:  # the last block stays: the heap's top is not free, only its inside
        libc.free(b)
    proc = psutil.Process()
    before = proc.memory_info().rss
    assert release_free_memory()
    after = proc.memory_info().rss
    libc.free(blocks[-1])
    assert before - after > 100 << 20, f"trim gave back {(before - after) >> 20} MB"


@glibc_only
def test_the_trimmer_thread_starts_once():
    assert start_trimmer(60)
    assert start_trimmer(60)  # a second call is a no-op, not a second thread
    assert sum(t.name == "malloc-trim" for t in threading.enumerate()) == 1


class _Recorder:
    def __init__(self, session):
        self.session, self.options = session, []

    def run(self, names, feed, run_options=None):
        self.options.append(run_options)
        return self.session.run(names, feed, run_options)


def test_only_runs_on_long_inputs_shrink_the_arena(models_topology):
    inner = _Recorder(onnx_session(resolve_model_path(models_topology.edge.vad.model), 1))
    session = ArenaBoundedSession(inner, shrink_above=1000)
    sr = np.array(16000, dtype=np.int64)
    for batch in (1, 4):  # one 32 ms window (512 samples), then four of them: a short and a long input
        out = session.run(None, {"input": np.zeros((batch, 512), dtype=np.float32),
                                 "state": np.zeros((2, batch, 128), dtype=np.float32), "sr": sr})
        assert out[0].shape[0] == batch
    assert inner.options[0] is None
    assert inner.options[1] is session._shrink
    assert session.session is inner.session  # the rest is the wrapped object's


async def test_the_launched_llama_server_does_not_grow_with_the_longest_prompt(tmp_path):
    """llama-cpp-python's server keeps every position's logits by default (n_ctx x vocabulary floats, filled as
    prompts reach new positions: +370 MB after one 1,100-token prompt with SmolLM2); launched without log-
    probabilities, only the KV cache's touched part grows (~30 MB here)."""
    import aiohttp

    from shared.llama_server import LlamaServer
    from shared.nats_runtime import free_port
    from shared.topology import LaunchSpec
    from tests.fixtures_nats import LLAMA_ALIAS, SMOLLM2

    server = LlamaServer(LaunchSpec(model_path=SMOLLM2, n_threads=2, n_ctx=2048), port=free_port(),
                         alias=LLAMA_ALIAS, log_path=tmp_path / "llama.log")
    await server.start()
    try:
        proc = psutil.Process(server.proc.pid)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
            async def ask(words: int) -> dict:
                text = " ".join(f"w{i}" for i in range(words)) + " summarize"
                body = {"model": LLAMA_ALIAS, "max_tokens": 2, "messages": [{"role": "user", "content": text}]}
                async with http.post(f"{server.base_url}/chat/completions", json=body) as resp:
                    assert resp.status == 200
                    return (await resp.json())["usage"]

            await ask(10)
            short = proc.memory_info().rss
            assert (await ask(300))["prompt_tokens"] > 1000
            grown = proc.memory_info().rss - short
    finally:
        await server.stop()
    assert grown < 120 << 20, f"RSS grew {grown >> 20} MB over one long prompt"
