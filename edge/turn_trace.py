"""Appends one JSON line per turn (features, policy decision, where it was answered) to a trace file.

Operators replay these files with ``python -m cloud policy dry-run FILE --turns TRACE.jsonl``
to see what a new policy would change before setting it. Writing goes through the
standard library's QueueHandler -> QueueListener (a thread) -> RotatingFileHandler,
so the event loop never blocks on disk and the file is bounded (size + backups).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import time
from pathlib import Path
from typing import Any

from shared.policy import Decision, TurnFeatures


class TurnTrace:
    """``record(...)`` from the loop (never blocks); ``close()`` flushes and stops the writer thread."""

    def __init__(self, path: str | Path, max_bytes: int = 20 * 1024 * 1024, backups: int = 3):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, self._file)
        # A private logger (not in the logging tree's hierarchy of names others configure).
        self._logger = logging.Logger(f"xz.turn_trace.{id(self)}")
        self._logger.propagate = False
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener.start()
        self._closed = False

    def record(
        self,
        features: TurnFeatures,
        decision: Decision,
        answered_by: str,
        turn_id: str = "",
        device_id: str = "",
        **extra: Any,
    ) -> None:
        """Queue one turn's line: ts, turn, device, revision, features, decision, answered_by, extra fields."""
        if self._closed:
            return
        line = {
            "ts": round(time.time(), 3),
            "turn": turn_id,
            "device": device_id,
            "revision": decision.revision,
            "features": features.to_dict(),
            "decision": decision.to_dict(),
            "answered_by": answered_by,
            **extra,
        }
        self._logger.info("%s", json.dumps(line, ensure_ascii=False, default=str))

    def close(self) -> None:
        """Write what is queued and stop the thread (blocking: call at shutdown, or via an executor)."""
        if self._closed:
            return
        self._closed = True
        self._listener.stop()
        self._file.close()


def read_trace(path: str | Path) -> tuple[list[tuple[float | None, TurnFeatures]], int]:
    """Turns of a trace file as (ts, features), and how many lines were unusable (skipped)."""
    turns: list[tuple[float | None, TurnFeatures]] = []
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                feats = TurnFeatures.from_dict(rec.get("features", rec))
                ts = rec.get("ts")
                turns.append((float(ts) if isinstance(ts, (int, float)) else None, feats))
            except (ValueError, TypeError, AttributeError):
                skipped += 1
    return turns, skipped
