"""The local model's answer, as an AnswerSource; its failures become ``AnswerFailed`` and mark the model unhealthy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, TypeVar

from edge.pipeline.errors import AnswerFailed, AnswerShed
from shared.chat import ChatClient, ChatDelta, ChatError
from shared.topology import LlmSpec

T = TypeVar("T")


class LocalHealth:
    """Whether the last local model call worked (``/health``'s ``llm`` component reads it).

    A failure counts for ``hold_s``: after that the model is presumed back (e.g. its server was
    restarted) until a call says otherwise, so a quiet edge is not reported down forever. A stall
    while other answers keep streaming is a queue (the server answers one request at a time), not
    a hung model: it fails that turn but does not mark the model down (which would send every
    turn to the cloud at once)."""

    def __init__(self, hold_s: float = 30.0) -> None:
        self.hold_s = hold_s
        self.error = ""
        self._failed_at = 0.0
        self.last_item_at = 0.0  # monotonic time of the latest streamed item of any local answer

    @property
    def ok(self) -> bool:
        return not self.error or time.monotonic() - self._failed_at > self.hold_s

    def record(self, error: str = "") -> None:
        self.error = error
        self._failed_at = time.monotonic() if error else 0.0

    def streamed(self) -> None:
        self.last_item_at = time.monotonic()

    def streaming_within(self, seconds: float) -> bool:
        """Some local answer streamed an item within the last ``seconds``: the model is alive."""
        return time.monotonic() - self.last_item_at < seconds


class QueuedStall(AnswerFailed):
    """A stall while other local answers keep streaming: overload (that turn fails), not a hung model."""


class QueueTimeout(QueuedStall, AnswerShed):
    """No first token within ``edge.llm.queue_timeout_ms`` while other local answers stream: the turn waited
    its share in the queue and is shed (the busy phrase), instead of waiting out the stall watchdog."""


async def _first(items: AsyncIterator[T], stall_s: float, queue_s: float, what: str,
                 health: LocalHealth | None) -> T:
    """The first item: given up after ``queue_s`` if other answers stream meanwhile (queued behind them),
    else awaited up to ``stall_s`` like any other."""
    pending = asyncio.ensure_future(anext(items))
    try:
        done, _ = await asyncio.wait({pending}, timeout=queue_s)
        if not done and health is not None and health.streaming_within(queue_s):
            raise QueueTimeout("queued", f"{what}: no first token within {queue_s:g}s, queued behind other answers")
        async with asyncio.timeout(max(stall_s - queue_s, 0.0)):
            return await pending
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


async def guarded(items: AsyncIterator[T], stall_s: float, what: str, health: LocalHealth | None = None,
                  queue_s: float | None = None) -> AsyncIterator[T]:
    """``items`` with a stall watchdog: no item for ``stall_s`` (or a model error) -> AnswerFailed; with
    ``queue_s``, a first item that waits longer than that behind other streaming answers -> QueueTimeout.

    The local model's health is recorded from how the stream ended."""
    try:
        first = queue_s is not None and queue_s < stall_s
        while True:
            try:
                if first:
                    first = False
                    item = await _first(items, stall_s, queue_s, what, health)
                else:
                    async with asyncio.timeout(stall_s):
                        item = await anext(items)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if health is not None and health.streaming_within(stall_s):
                    raise QueuedStall("stall", f"{what}: nothing for {stall_s:g}s, queued behind other answers") \
                        from None
                raise AnswerFailed("stall", f"{what}: nothing for {stall_s:g}s") from None
            except ChatError as exc:
                raise AnswerFailed("local_failed", f"{what}: {exc}") from exc
            if health is not None:
                health.streamed()
            yield item
    except AnswerFailed as exc:
        if health is not None and not isinstance(exc, QueuedStall):
            health.record(str(exc))
        raise
    else:
        if health is not None:
            health.record()
    finally:
        with contextlib.suppress(Exception):
            await items.aclose()


class LocalAnswer:
    """The local model's streamed answer; can be probed (first tokens' confidence) before it is spoken."""

    answered_by = "edge"

    def __init__(self, llm: ChatClient, spec: LlmSpec, messages: list[dict], *, stall_s: float,
                 health: LocalHealth | None = None, logprobs: bool = False, reason: str = ""):
        self.reason = reason
        raw = llm.stream(messages, max_tokens=spec.max_tokens, temperature=spec.temperature, logprobs=logprobs)
        self._deltas: AsyncIterator[ChatDelta] = guarded(raw, stall_s, "local model", health,
                                                         queue_s=spec.queue_timeout_ms / 1000)
        self._buffer: list[str] = []
        self._done = False

    async def confidence(self, tokens: int) -> float | None:
        """Mean log-probability of the first ``tokens`` streamed steps (buffered, spoken later)."""
        logprobs: list[float] = []
        while len(logprobs) < tokens and not self._done:
            try:
                delta = await anext(self._deltas)
            except StopAsyncIteration:
                self._done = True
                break
            if delta.text:
                self._buffer.append(delta.text)
            if delta.logprob is not None:
                logprobs.append(delta.logprob)
        return sum(logprobs) / len(logprobs) if logprobs else None

    async def stream(self) -> AsyncIterator[str]:
        for text in self._buffer:
            yield text
        self._buffer.clear()
        if self._done:
            return
        async for delta in self._deltas:
            if delta.text:
                yield delta.text

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._deltas.aclose()
