"""One emit point per turn (:class:`TurnEvents`); metrics, the turn log and the policy trace subscribe.

Observers are synchronous and cheap (they never block the event loop) and are
made per turn, so they can keep the turn's state (e.g. its origin) in fields.
An observer that raises is logged and skipped: watching a turn never breaks it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Protocol, TypeVar

from edge import metrics
from edge.pipeline.events import (Decided, FirstToken, SentenceSpoken, SpeechStopped, Transcribed, TurnEnded,
                                  TurnEvent, TurnFailed, TurnShed, TurnStarted)
from shared.log import log_event

log = logging.getLogger("edge.turn")

E = TypeVar("E", bound=TurnEvent)

# timings_ms keys (what the turn log, TurnResult and benchmarks report) per milestone event
_MARKS: dict[type, str] = {Transcribed: "stt", FirstToken: "llm_first_token", SpeechStopped: "tts_stop"}


class Observer(Protocol):
    def on_event(self, ev: TurnEvent) -> None: ...


class TurnEvents:
    """A turn's event stream: stamps the turn id, keeps the events, feeds every observer."""

    def __init__(self, turn_id: str, observers: list[Observer]):
        self.turn_id = turn_id
        self.observers = observers
        self.events: list[TurnEvent] = []

    def emit(self, ev: E) -> E:
        if not ev.turn_id:
            ev = replace(ev, turn_id=self.turn_id)
        self.events.append(ev)
        for obs in self.observers:
            try:
                obs.on_event(ev)
            except Exception:  # noqa: BLE001 - an observer must never break the turn
                log.exception("turn observer failed")
        return ev

    def first(self, kind: type[E]) -> E | None:
        return next((e for e in self.events if isinstance(e, kind)), None)

    def timings_ms(self) -> dict[str, float]:
        """Milliseconds from the end of the user's speech to each milestone (first one wins)."""
        start = self.first(TurnStarted)
        origin = start.origin_ms if start else (self.events[0].at_ms if self.events else 0.0)
        marks: dict[str, float] = {}
        for ev in self.events:
            key = "first_audio" if isinstance(ev, SentenceSpoken) and ev.first_audio else _MARKS.get(type(ev))
            if key and key not in marks:
                marks[key] = round(ev.at_ms - origin, 1)
        return marks


class MetricsObserver:
    """Prometheus: active turns, finished turns by outcome, stage latencies, failures, shed and escalated-for-load
    turns (each counted once)."""

    def __init__(self) -> None:
        self.origin = 0.0

    def on_event(self, ev: TurnEvent) -> None:
        match ev:
            case TurnStarted():
                self.origin = ev.origin_ms
                metrics.ACTIVE_TURNS.inc()
            case Transcribed():
                self._latency("asr", ev)
            case FirstToken():
                self._latency("llm_first_token", ev)
            case SentenceSpoken(first_audio=True):
                self._latency("first_audio", ev)
            case TurnFailed():
                metrics.ERRORS.labels(kind=f"turn_{ev.code}").inc()
            case TurnShed():
                metrics.SHED_TURNS.labels(limit=ev.limit).inc()
            case Decided(source="cloud", features=f) if getattr(f, "over_capacity", False):
                metrics.LOAD_ESCALATIONS.inc()
            case TurnEnded():
                metrics.ACTIVE_TURNS.dec()
                metrics.TURNS.labels(answered_by=ev.answered_by, outcome=ev.outcome).inc()

    def _latency(self, stage: str, ev: TurnEvent) -> None:
        metrics.STAGE_LATENCY.labels(stage=stage).observe(max(ev.at_ms - self.origin, 0.0) / 1000.0)


class LogObserver:
    """The structured log: one line when a turn fails, one "turn done" line with its timings."""

    def __init__(self, timings: Callable[[], dict[str, float]]):
        self.timings = timings
        self.silence_ms = 0.0

    def on_event(self, ev: TurnEvent) -> None:
        match ev:
            case TurnStarted():
                self.silence_ms = ev.silence_ms
            case Decided():
                log_event(log, "answer planned", answered_by=ev.source, rule=ev.rule, revision=ev.revision,
                          reason=ev.reason, tools=list(ev.tools) if ev.tools is not None else None)
            case TurnShed():
                log_event(log, "turn shed, edge full", logging.WARNING, limit=ev.limit, reason=ev.reason)
            case TurnFailed():  # a bug gets its traceback
                log.error("turn failed", exc_info=ev.error if ev.code == "bug" else None,
                          extra={"fields": {"stage": ev.stage, "code": ev.code, "error": ev.detail}})
            case TurnEnded():
                log_event(log, "turn done", outcome=ev.outcome, answered_by=ev.answered_by, reason=ev.reason,
                          user_text=ev.user_text, reply=ev.reply_text, timings_ms=self.timings(),
                          silence_ms=self.silence_ms)


class TraceObserver:
    """The JSONL policy trace (``cloud policy dry-run`` replays it): the decision's features and where it ended."""

    def __init__(self, trace, device_id: str):
        self.trace = trace
        self.device_id = device_id
        self.decided: Decided | None = None

    def on_event(self, ev: TurnEvent) -> None:
        match ev:
            case Decided(features=f, decision=d) if f is not None and d is not None:
                self.decided = ev
            case TurnEnded() if self.decided is not None:
                d = self.decided
                self.trace.record(d.features, d.decision, ev.answered_by, turn_id=ev.turn_id, device_id=self.device_id)
