"""Structured logs: one JSON object per line, carrying device and turn ids.

Ids live in context variables, so every log line written while a session or a
turn runs (even deep inside a model wrapper) is tagged without passing them around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

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


def setup_logging(level: str | None = None) -> None:
    """JSON logs to stderr; level from the argument or ``XZ_LOG_LEVEL`` (default INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
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
