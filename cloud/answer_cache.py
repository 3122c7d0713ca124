"""Semantic answer cache: a repeated (or reworded) question gets the answer already generated.

Questions are embedded with all-MiniLM-L6-v2 on onnxruntime (shared.embeddings,
the same model and runtime as the edge's router; no torch) and compared by cosine
similarity against a bounded store (cachetools' TTLCache: LRU + TTL). Only plain
questions use it: a turn that offers tools may need fresh device state, so it
always goes to a model.

What may be served to whom (issue 12):

- only a context-free first question is cached or answered from the cache: a
  conversation with earlier turns ("Why?" after anything) depends on them, so
  it always goes to a model and its answer is never stored;
- entries are scoped by the system prompt and language (another persona never
  hits), and a question about the speaker ("what's my name", "remind me what I
  said", any first-person word) also by the device: one device's personal answer
  is never served to another.

Embedding is CPU work and runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from cachetools import TTLCache

from cloud import metrics
from shared.embeddings import Embedder as MiniLm
from shared.log import log_event

log = logging.getLogger("cloud.answer_cache")

_PERSONAL = re.compile(r"\b(i|i'm|im|i've|i'd|i'll|me|my|mine|myself|we|we're|our|ours|us)\b", re.IGNORECASE)
_CONTEXT_ROLES = frozenset({"system", "developer"})


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        ...


@dataclass(frozen=True)
class CacheKey:
    """A cacheable question and the scope its answer may be served in."""

    question: str
    context: str
    personal: bool


@dataclass
class _Entry:
    vector: np.ndarray
    question: str
    answer: str
    context: str


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
        self._entries: TTLCache[str, _Entry] = TTLCache(maxsize=max_items, ttl=ttl_s, timer=clock)

    @classmethod
    async def create(cls, threads: int = 1, **kw) -> "AnswerCache | None":
        """The cache with the bundled MiniLM model, or None (with one log line) when it is not installed."""
        missing = MiniLm.available()
        if missing:
            log_event(log, "answer cache off: embedding model unavailable", logging.WARNING, reason=missing)
            return None
        from shared.embeddings import shared_embedder

        embedder = await asyncio.get_running_loop().run_in_executor(None, shared_embedder, threads)
        log_event(log, "answer cache on", model="all-MiniLM-L6-v2 (onnxruntime)",
                  threshold=kw.get("threshold", 0.85))
        return cls(embedder, **kw)

    @staticmethod
    def key_for(messages: list[dict], language: str, device_id: str) -> CacheKey | None:
        """The cache key of a context-free first question; None for anything else (follow-ups, no text)."""
        turns = [m for m in messages if m.get("role") not in _CONTEXT_ROLES]
        if len(turns) != 1 or turns[0].get("role") != "user":
            return None  # earlier turns (or tool rounds): the answer depends on them
        content = turns[0].get("content")
        question = content.strip() if isinstance(content, str) else ""
        if not question:
            return None
        personal = bool(_PERSONAL.search(question))
        system = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") in _CONTEXT_ROLES)
        scope = f"{language}\0{system}\0{device_id if personal else ''}"
        return CacheKey(question, hashlib.sha256(scope.encode()).hexdigest()[:24], personal)

    def __len__(self) -> int:
        self._entries.expire()
        return len(self._entries)

    async def embed(self, text: str) -> np.ndarray:
        """The question's unit vector (computed in a thread); pass it to find() and put()."""
        vectors = await asyncio.get_running_loop().run_in_executor(None, self.embedder.embed, [text])
        return vectors[0]

    def find(self, vector: np.ndarray, context: str) -> CacheHit | None:
        """The most similar stored answer in ``context`` at or above the threshold."""
        self._entries.expire()
        best_key, best_sim = None, -1.0
        for key, entry in list(self._entries.items()):
            if entry.context == context:
                sim = float(np.dot(vector, entry.vector))
                if sim > best_sim:
                    best_key, best_sim = key, sim
        entry = self._entries.get(best_key) if best_key is not None and best_sim >= self.threshold else None
        if entry is None:  # (get() also marks the entry as recently used)
            metrics.CACHE_LOOKUPS.labels(result="miss").inc()
            return None
        metrics.CACHE_LOOKUPS.labels(result="hit").inc()
        return CacheHit(entry.answer, entry.question, best_sim)

    def put(self, question: str, vector: np.ndarray, answer: str, context: str) -> None:
        if answer.strip():
            self._entries[f"{context}:{question.lower()}"] = _Entry(vector, question, answer, context)

    async def lookup(self, key: CacheKey) -> CacheHit | None:
        return self.find(await self.embed(key.question), key.context)

    async def store(self, key: CacheKey, answer: str) -> None:
        self.put(key.question, await self.embed(key.question), answer, key.context)

    def hit_rate(self) -> float:
        """Hits / lookups since the process started (what the metric exports as counters)."""
        samples = {s.labels["result"]: s.value for m in metrics.CACHE_LOOKUPS.collect() for s in m.samples
                   if s.name.endswith("_total")}
        total = samples.get("hit", 0) + samples.get("miss", 0)
        return samples.get("hit", 0) / total if total else 0.0
