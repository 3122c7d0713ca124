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
