"""Answers that never leave the device in silence while the cloud is slow or unreachable.

``WithFallback`` (an escalated answer): the cloud is asked at once. If no cloud text has come within ``lead_in_s``, the
cached "one moment, let me think" phrase is spoken while it is still awaited; if
the cloud fails before any text (timeout, no worker, refusal), the local source
answers, opening with the same phrase unless it was already said. ``local`` is
only called on fallback; a local source made before (the deciding stage's
confidence probe) is handed over by the factory and closed when the cloud answers.

``CloudPace``: when most of the cloud's recent answers (the median of the last 16) needed longer than ``lead_in_s``
for their first text, waiting that long in silence only delays the phrase that will be said anyway: it is said at once.

``Prefaced`` (a local answer while the cloud link is down, e.g. a partitioned leaf): the
same phrase if the local model has said nothing within ``lead_in_s``, so a question that
would have been escalated is not met with seconds of silence on a busy edge.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from typing import AsyncIterator, Callable

from edge.escalation import EscalationFailed
from edge.pipeline.ports import AnswerSource
from edge.stages.answering.cloud import CloudAnswer, fell_back


class CloudPace:
    """How long the cloud's recent escalations took to their first text: is waiting ``lead_in_s`` worth it?"""

    def __init__(self, recent: int = 16, min_samples: int = 3):
        self._seconds: deque[float] = deque(maxlen=recent)
        self.min_samples = min_samples

    def record(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def lead_in_wait(self, lead_in_s: float) -> float:
        """``lead_in_s``, or 0 when the median of the recent first-text times is longer (the phrase will come)."""
        if len(self._seconds) >= self.min_samples and statistics.median(self._seconds) > lead_in_s:
            return 0.0
        return lead_in_s


class WithFallback:
    def __init__(self, cloud: CloudAnswer, local: Callable[[], AnswerSource], lead_in: str | None, lead_in_s: float,
                 reason: str = "", probe: AnswerSource | None = None, pace: CloudPace | None = None,
                 max_wait_s: float | None = None):
        self.cloud = cloud
        self.local = local
        self.lead_in = lead_in
        self.pace = pace  # None: always wait lead_in_s, and nothing is learned
        self.lead_in_s = pace.lead_in_wait(lead_in_s) if pace is not None else lead_in_s
        if max_wait_s is not None:  # a loaded edge (see Answering): sooner, whatever the cloud's pace
            self.lead_in_s = min(self.lead_in_s, max_wait_s)
        self.lead_in_said = ""  # the lead-in, once said (not part of the conversation: TurnResult.answer_text)
        self.reason = reason
        self.answered_by = "cloud"
        self.probe = probe
        self._source: AnswerSource | None = None

    async def stream(self) -> AsyncIterator[str]:
        started = time.monotonic()
        starting = asyncio.ensure_future(self.cloud.start())
        if self.pace is not None:
            starting.add_done_callback(lambda job: self._paced(job, started))
        said = False
        try:
            await asyncio.wait({starting}, timeout=self.lead_in_s)
            if not starting.done() and self.lead_in:
                said = True
                self.lead_in_said = self.lead_in
                yield self.lead_in + " "
            try:
                await starting
            except EscalationFailed as exc:
                fell_back(exc.cause, exc.detail)
                self.answered_by = "edge"
                self.reason = f"{self.reason}; cloud failed ({exc.cause}), answered locally"
                self._source = self.local()
                if self.lead_in and not said:
                    self.lead_in_said = self.lead_in
                    yield self.lead_in + " "
            else:
                self._source = self.cloud
            async for text in self._source.stream():
                yield text
        finally:
            if not starting.done():
                starting.cancel()
                await asyncio.wait({starting})  # its own finally sends the worker the cancel
            await self.aclose()

    def _paced(self, job: asyncio.Future, started: float) -> None:
        """Record how long a successful escalation took to its first text (failures say nothing of its pace)."""
        if not job.cancelled() and job.exception() is None:
            self.pace.record(time.monotonic() - started)

    async def aclose(self) -> None:
        await self.cloud.aclose()
        for spare in {id(s): s for s in (self._source, self.probe) if s is not None and s is not self.cloud}.values():
            await spare.aclose()


class Prefaced:
    def __init__(self, inner: AnswerSource, lead_in: str, lead_in_s: float):
        self.inner = inner
        self.lead_in = lead_in
        self.lead_in_s = lead_in_s
        self.lead_in_said = ""  # the lead-in, once said (not part of the conversation: TurnResult.answer_text)

    @property
    def answered_by(self) -> str:
        return self.inner.answered_by

    @property
    def reason(self) -> str:
        return self.inner.reason

    @reason.setter
    def reason(self, value: str) -> None:
        self.inner.reason = value

    async def stream(self) -> AsyncIterator[str]:
        items = aiter(self.inner.stream())
        first = asyncio.ensure_future(anext(items))
        try:
            await asyncio.wait({first}, timeout=self.lead_in_s)
            if not first.done():
                self.lead_in_said = self.lead_in
                yield self.lead_in + " "
            try:
                yield await first
            except StopAsyncIteration:
                return
            async for text in items:
                yield text
        finally:
            if not first.done():
                first.cancel()
                await asyncio.wait({first})
            await self.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()
