"""Appends one JSON line per turn (features, policy decision, where it was answered) to a trace file.

Operators replay these files with ``python -m cloud policy dry-run FILE --turns TRACE.jsonl``
to see what a new policy would change before setting it. Written by the edge, read by
the cloud's CLI, so the format lives here in shared/.

Writing goes through the standard library's QueueHandler -> QueueListener (a thread)
-> a RotatingFileHandler, so the event loop never blocks on disk. Retention
(``edge.trace`` in topology.yaml): the file rotates at ``max_mb`` keeping ``backups``
files; with ``max_age_days`` no line older than that stays on disk (the live file
rotates when its first line is half that old, a rotated file is deleted when its
first line is older than the limit; checked on writes and at start). With
``store_text: false`` the user's words are never written: the dry-run still sees
every other feature (lengths, language, tools, confidence, load), and keyword and
pattern conditions match no such turn.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import time
from pathlib import Path
from typing import Any

from shared.policy import Decision, TurnFeatures
from shared.topology import TraceSpec

_DAY_S = 86400.0
_AGE_CHECK_S = 60.0  # how often a write may look at file ages


def _first_ts(path: Path) -> float | None:
    """The ``ts`` of a trace file's first line (its oldest turn); its mtime if that is unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            ts = json.loads(fh.readline() or "{}").get("ts")
        if isinstance(ts, (int, float)):
            return float(ts)
        return path.stat().st_mtime
    except (OSError, ValueError, AttributeError):
        try:
            return path.stat().st_mtime
        except OSError:
            return None


class _RetentionHandler(logging.handlers.RotatingFileHandler):
    """Size rotation (the standard handler) plus an optional age limit on every line kept."""

    def __init__(self, path: Path, max_bytes: int, backups: int, max_age_s: float | None):
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.max_age_s = max_age_s
        self._next_check = 0.0
        self._live_started = _first_ts(path) if path.exists() else None

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self._live_started is None:
            self._live_started = time.time()
        if super().shouldRollover(record):
            return True
        if self.max_age_s is None or time.monotonic() < self._next_check:
            return False
        self._next_check = time.monotonic() + _AGE_CHECK_S
        self.prune()
        return time.time() - self._live_started > self.max_age_s / 2

    def doRollover(self) -> None:
        super().doRollover()
        self._live_started = time.time()
        self.prune()

    def prune(self) -> int:
        """Delete rotated files whose oldest line is past the age limit; returns how many."""
        if self.max_age_s is None:
            return 0
        removed = 0
        base = Path(self.baseFilename)
        for rotated in base.parent.glob(base.name + ".*"):
            started = _first_ts(rotated)
            if started is not None and time.time() - started > self.max_age_s:
                rotated.unlink(missing_ok=True)
                removed += 1
        return removed


class TurnTrace:
    """``record(...)`` from the loop (never blocks); ``close()`` flushes and stops the writer thread."""

    def __init__(self, path: str | Path, max_bytes: int = 20 * 1024 * 1024, backups: int = 3,
                 max_age_days: float | None = None, store_text: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store_text = store_text
        max_age_s = max_age_days * _DAY_S if max_age_days else None
        self._file = _RetentionHandler(self.path, max_bytes, backups, max_age_s)
        self._file.setFormatter(logging.Formatter("%(message)s"))
        if max_age_s is not None:
            self._file.prune()
            if self.path.exists() and (started := _first_ts(self.path)) is not None \
                    and time.time() - started > max_age_s / 2:
                self._file.doRollover()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, self._file)
        # A private logger (not in the logging tree's hierarchy of names others configure).
        self._logger = logging.Logger(f"xz.turn_trace.{id(self)}")
        self._logger.propagate = False
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener.start()
        self._closed = False

    @classmethod
    def from_spec(cls, spec: TraceSpec) -> "TurnTrace":
        """The trace ``edge.trace`` in topology.yaml describes (its ``path`` must be set)."""
        if not spec.path:
            raise ValueError("edge.trace.path is not set: no trace to write")
        return cls(os.path.expanduser(spec.path), max_bytes=int(spec.max_mb * 1024 * 1024), backups=spec.backups,
                   max_age_days=spec.max_age_days, store_text=spec.store_text)

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
        if not self.store_text:
            features = features.without_text()
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
