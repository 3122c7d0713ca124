"""A thread pool that runs the job needed soonest (earliest deadline first), not the oldest.

Why: every speaking turn shares the TTS pool. In first-in, first-out order a new turn's first
sentence, which the device needs now, waited behind other answers' later sentences, which are
needed only once their earlier sentences have played: at 75 devices on 2 cores the TTS queue
wait reached 3.2 s (p95) and the first audio of a turn waited with it. The standard library's
executors are FIFO only, so this is a heap under a condition variable; jobs are ordinary
``concurrent.futures.Future``s (cancelling one that has not started drops it).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class DeadlinePool:
    """``workers`` threads taking the queued job with the earliest deadline."""

    def __init__(self, workers: int, name: str = "pool"):
        self._heap: list[tuple[float, int, Future, Callable[..., Any], tuple]] = []
        self._cv = threading.Condition()
        self._order = itertools.count()  # equal deadlines: first come, first served
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, deadline: float | None, fn: Callable[..., T], *args: Any) -> Future:
        """Run ``fn(*args)`` before any queued job with a later ``deadline`` (``time.monotonic()`` seconds;
        None: now)."""
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            heapq.heappush(self._heap, (time.monotonic() if deadline is None else deadline, next(self._order),
                                        future, fn, args))
            self._cv.notify()
        return future

    async def run(self, deadline: float | None, fn: Callable[..., T], *args: Any) -> T:
        """``submit`` awaited from asyncio (cancelling the await drops a job that has not started)."""
        return await asyncio.wrap_future(self.submit(deadline, fn, *args))

    def shutdown(self) -> None:
        """Cancel what has not started; running jobs finish, then the threads end."""
        with self._cv:
            self._closed = True
            for _, _, future, _, _ in self._heap:
                future.cancel()
            self._heap.clear()
            self._cv.notify_all()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    return
                _, _, future, fn, args = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the awaiting caller, as ThreadPoolExecutor does
                future.set_exception(exc)
