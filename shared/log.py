"""Structured logs: one JSON object per line, carrying device and turn ids.

Ids live in context variables, so every log line written while a session or a
turn runs (even deep inside a model wrapper) is tagged without passing them around.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import os
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener

device_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("device_id", default=None)
session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
turn_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("turn_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, var in (("device", device_id_var), ("session", session_id_var), ("turn", turn_id_var)):
            value = var.get()
            if value:
                entry[key] = value
        extra = getattr(record, "fields", None)
        if extra:
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


_writer: QueueListener | None = None


def _stop_writer() -> None:
    if _writer is not None:
        _writer.stop()  # writes what is queued


def setup_logging(level: str | None = None) -> None:
    """JSON logs to stderr; level from the argument or ``XZ_LOG_LEVEL`` (default INFO).

    Lines are formatted where they are logged (the context's ids) and written by a thread: a slow or
    full stderr pipe never stalls the event loop (``/health`` under load)."""
    global _writer
    _stop_writer()
    if _writer is None:
        atexit.register(_stop_writer)
    lines: queue.SimpleQueue = queue.SimpleQueue()
    handler = QueueHandler(lines)
    handler.setFormatter(JsonFormatter())
    _writer = QueueListener(lines, logging.StreamHandler(sys.stderr))
    _writer.start()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("XZ_LOG_LEVEL", "INFO")).upper())
    # HTTP clients log every request (health checks every few seconds) at INFO: keep them for debugging.
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    """Log ``msg`` with structured ``fields`` (merged into the JSON line)."""
    logger.log(level, msg, extra={"fields": fields})


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0
