"""The event loop's watch: how late it runs a timer, and where it was stuck when it stalls.

No inference runs on the loop, and every session's audio, ``/health`` and the OTA answer wait
whenever something does; the lag is the proof under load (a histogram and the ``/health`` field).
A lag alone says nothing of its cause, so a watchdog thread also posts a callback to the loop
every ``probe_s``; one that has not run ``stuck_s`` later means the loop thread is busy or blocked
right now, and its stack (``sys._current_frames``) is logged once per stall: the line to fix.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from edge import metrics
from shared.log import log_event

log = logging.getLogger("edge.loop_watch")

PROBE_S = 0.25  # the lag probe's period
WARN_S = 0.1  # a lag this long is logged
STUCK_S = 0.2  # a posted callback still waiting this long: the loop thread's stack is logged
STACK_FRAMES = 16  # innermost frames kept in the log line (the import machinery's own frames left out)


class LoopWatch:
    def __init__(self, probe_s: float = PROBE_S, warn_s: float = WARN_S, stuck_s: float = STUCK_S):
        self.probe_s, self.warn_s, self.stuck_s = probe_s, warn_s, stuck_s
        self.last_lag_s = 0.0  # the last probe's (the /health field)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def run(self) -> None:
        """Probe the lag until cancelled, with the watchdog thread alongside."""
        loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watchdog, args=(loop, threading.get_ident()),
                                        name="loop-watchdog", daemon=True)
        self._thread.start()
        try:
            while True:
                due = loop.time() + self.probe_s
                await asyncio.sleep(self.probe_s)
                self.last_lag_s = max(loop.time() - due, 0.0)
                metrics.LOOP_LAG.observe(self.last_lag_s)
                if self.last_lag_s >= self.warn_s:
                    log_event(log, "event loop stalled", logging.WARNING, lag_ms=round(self.last_lag_s * 1000))
        finally:
            self._stop.set()

    def _watchdog(self, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        while not self._stop.wait(self.probe_s):
            ran = threading.Event()
            try:
                loop.call_soon_threadsafe(ran.set)
            except RuntimeError:  # the loop is closed
                return
            if ran.wait(self.stuck_s):
                continue
            frame = sys._current_frames().get(loop_thread)
            stack = [line for line in traceback.format_stack(frame) if "<frozen " not in line][-STACK_FRAMES:] \
                if frame is not None else []
            started = time.monotonic()
            while not ran.wait(1.0) and not self._stop.is_set():  # one line per stall, with how long it lasted
                pass
            log_event(log, "event loop stuck", logging.WARNING,
                      ms=round((time.monotonic() - started + self.stuck_s) * 1000),
                      stack=[line.strip().replace("\n", " | ") for line in stack])
