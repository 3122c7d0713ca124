"""How long a kind of answer has recently taken to come: is waiting in silence for it worth it?

A cached filler ("One moment.", "One moment, let me think.") is held back for a short window in case
the answer comes first. When most recent answers (the median of the last ``recent``, known from
``min_samples``) needed longer than that window, the silence only delays the filler that will be said
anyway, so it is said at once; a source that gets fast again brings the window back.
"""

from __future__ import annotations

import statistics
from collections import deque


class Pace:
    def __init__(self, recent: int = 16, min_samples: int = 3):
        self._seconds: deque[float] = deque(maxlen=recent)
        self.min_samples = min_samples

    def record(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def slower_than(self, window_s: float) -> bool:
        """Have recent answers mostly taken longer than ``window_s``?"""
        return len(self._seconds) >= self.min_samples and statistics.median(self._seconds) > window_s

    def wait(self, window_s: float) -> float:
        """``window_s``, or 0 when recent answers mostly took longer (the filler will be said anyway)."""
        return 0.0 if self.slower_than(window_s) else window_s
