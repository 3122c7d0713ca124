"""A circuit breaker per backend endpoint: stop sending to an endpoint that keeps failing.

closed -> (``failure_threshold`` consecutive failures) -> open -> (``cooldown_s``)
-> half-open: one trial request; success closes, failure opens again for
another cool-down. This keeps a dead endpoint from eating every request's
first-token budget while it restarts.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Callable

from cloud import metrics
from shared.log import log_event

log = logging.getLogger("cloud.breaker")


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, name: str, failure_threshold: int = 3, cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._trial_out = False
        metrics.BREAKER_OPEN.labels(backend=name).set(0)

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self._opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def can_try(self) -> bool:
        """Would a request be let through now (without claiming the half-open trial)?"""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_out)

    def acquire(self) -> bool:
        """Claim the right to send one request; in half-open only one trial at a time."""
        if not self.can_try():
            return False
        if self.state is BreakerState.HALF_OPEN:
            self._trial_out = True
        return True

    def record_success(self) -> None:
        if self._opened_at is not None:
            log_event(log, "breaker closed", backend=self.name)
        self.failures = 0
        self._opened_at = None
        self._trial_out = False
        metrics.BREAKER_OPEN.labels(backend=self.name).set(0)

    def record_failure(self) -> None:
        self.failures += 1
        was_trial = self._trial_out
        self._trial_out = False
        if was_trial or self.failures >= self.failure_threshold:
            if self._opened_at is None or was_trial:
                log_event(log, "breaker opened", logging.WARNING, backend=self.name, failures=self.failures,
                          cooldown_s=self.cooldown_s)
            self._opened_at = self.clock()
            metrics.BREAKER_OPEN.labels(backend=self.name).set(1)

    def release(self) -> None:
        """A claimed request ended with neither success nor failure (e.g. cancelled by the caller)."""
        self._trial_out = False
