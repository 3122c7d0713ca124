"""Admission control: may this edge take one more turn (or one more device) now?

The edge knows its capacity (``edges[].capacity`` in topology.yaml: devices it is sized for;
``edge.admission`` pins any limit) and its live load (turns in flight, utterances waiting for
ASR, local LLM generations). The turn pipeline asks at the start of every speech or text turn;
past the limits a turn is never silently dropped and never closes the socket:

* ``admit``    - run it here as usual;
* ``escalate`` - the turn runs with the ``over_capacity`` policy feature set; the default policy's
  ``edge-full`` rule sends it to the cloud (the ASR still runs here), and an operator may change
  that rule;
* ``busy``     - the local LLM is the bottleneck and the cloud is not healthy, or ASR itself is
  backed up (too many clips waiting, or, on a starved CPU, too long a wait for the few that do;
  the cloud cannot help: the audio must be transcribed here first): the cached busy phrase at
  once, then ``tts stop`` (shed).

A booting device is sent to another edge with room (the OTA answer, :func:`ota_chooser_with_load`)
while this one is full; the Consul registration publishes the same verdict (``room``).

The limits default from the capacity: an edge sized for ``capacity`` devices at one turn per
device per minute and ~6 s per turn sees ``capacity / 10`` concurrent turns on average; twice
that is the ceiling. The ASR and LLM queues have their own small ceilings (a queue deeper than a
couple of batches only adds waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from edge import metrics
from edge.asr import AsrOverloaded
from shared.discovery import REGION_HEADER, Discovery, choose_nearest
from shared.topology import AdmissionSpec


class Verdict(str, enum.Enum):
    ADMIT = "admit"
    ESCALATE = "escalate"
    BUSY = "busy"


@dataclass(frozen=True)
class Load:
    """The edge's load right now."""

    active_turns: int = 0
    asr_queue: int = 0
    llm_inflight: int = 0  # local LLM generations running or waiting for the (single-slot) server
    devices: int = 0  # open sessions
    asr_wait_ms: float = 0.0  # what a clip submitted now would wait (the clips ahead x recent time per clip)


@dataclass(frozen=True)
class Limits:
    """Where admission starts refusing; :meth:`for_capacity` derives them from topology."""

    max_active_turns: int
    max_asr_queue: int
    max_llm_inflight: int
    max_devices: int
    max_asr_wait_ms: float = 1000.0

    @classmethod
    def for_capacity(cls, capacity: int, asr_batch: int = 4, spec: AdmissionSpec = AdmissionSpec()) -> "Limits":
        """From the edge's capacity, with any limit ``edge.admission`` pins."""
        return cls(max_active_turns=spec.max_active_turns or max(2, capacity // 5),
                   max_asr_queue=spec.max_asr_queue or max(2, 2 * asr_batch),
                   max_llm_inflight=spec.max_llm_inflight or max(2, capacity // 25), max_devices=capacity,
                   max_asr_wait_ms=spec.max_asr_wait_ms)


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    reason: str  # which limit (or "under limits"), for the log
    load: Load
    limit: str = ""  # the limit that refused: asr_queue | asr_wait | active_turns | local_llm (a metric label)

    @property
    def admitted(self) -> bool:
        return self.verdict is Verdict.ADMIT


class InflightCounter:
    """Counts work in flight (e.g. local LLM generations): ``with counter.track(): ...``."""

    def __init__(self) -> None:
        self.value = 0

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.value += 1
        try:
            yield
        finally:
            self.value -= 1


class CountedChat:
    """A chat client whose generations are counted while they stream (the ``llm_inflight`` load signal).

    Wraps the local model's client once in the engine, so no stage needs to know about admission."""

    def __init__(self, inner: Any, counter: InflightCounter):
        self.inner = inner
        self.counter = counter

    async def stream(self, messages: list[dict], **kw: Any) -> AsyncIterator[Any]:
        with self.counter.track():
            async for delta in self.inner.stream(messages, **kw):
                yield delta

    async def complete_json(self, messages: list[dict], schema: dict, max_tokens: int) -> str:
        with self.counter.track():
            return await self.inner.complete_json(messages, schema, max_tokens)

    def __getattr__(self, name: str) -> Any:  # base_url, model, health(), aclose() ... as the client has them
        return getattr(self.inner, name)


def refused_by_asr(job: Any) -> bool:
    """The turn's ASR job was refused outright (the queue was full when it was submitted)."""
    return (isinstance(job, asyncio.Future) and job.done() and not job.cancelled()
            and isinstance(job.exception(), AsrOverloaded))


class AdmissionControl:
    """Decides each new turn from live load; cheap, synchronous, called on the event loop."""

    def __init__(self, limits: Limits, load: Callable[[], Load], cloud_healthy: Callable[[], bool]):
        self.limits = limits
        self._load = load
        self._cloud_healthy = cloud_healthy

    @classmethod
    def for_edge(cls, capacity: int, spec: AdmissionSpec, asr: Any, active_turns: Callable[[], int],
                 devices: Callable[[], int], llm: InflightCounter,
                 cloud_healthy: Callable[[], bool]) -> "AdmissionControl":
        """Wired to an edge's live numbers: ``asr`` (an AsrService), its turns, open sessions, local LLM counter."""
        def load() -> Load:
            return Load(active_turns=active_turns(), asr_queue=asr.queue_depth, llm_inflight=llm.value,
                        devices=devices(), asr_wait_ms=asr.expected_wait_s() * 1000)

        return cls(Limits.for_capacity(capacity, asr.max_batch, spec), load, cloud_healthy)

    def load(self) -> Load:
        return self._load()

    def decide(self, transcript: Any = None) -> Admission:
        """The verdict for one new turn (counted in ``xz_edge_admission_total``).

        ``transcript`` is the turn's ASR job, if any: one the ASR queue already refused is shed, and one already
        transcribed (the speculative run at the pause) owes nothing to the ASR queue."""
        load, lim = self._load(), self.limits
        transcribed = isinstance(transcript, asyncio.Future) and transcript.done() and not refused_by_asr(transcript)
        if refused_by_asr(transcript):
            out = Admission(Verdict.BUSY, "asr queue full", load, "asr_queue")
        elif transcribed:
            out = self._after_asr(load, lim)
        elif load.asr_queue >= lim.max_asr_queue:
            # The cloud cannot help: the audio must be transcribed here first.
            out = Admission(Verdict.BUSY, f"asr queue {load.asr_queue} >= {lim.max_asr_queue}", load, "asr_queue")
        elif load.asr_wait_ms >= lim.max_asr_wait_ms:  # few clips, but a starved CPU: each takes long
            out = Admission(Verdict.BUSY, f"asr wait {load.asr_wait_ms:.0f} ms >= {lim.max_asr_wait_ms:.0f}", load,
                            "asr_wait")
        else:
            out = self._after_asr(load, lim)
        metrics.ADMISSION.labels(verdict=out.verdict.value).inc()
        return out

    def _after_asr(self, load: Load, lim: Limits) -> Admission:
        """The verdict from the limits past transcription: turns in flight and local generations."""
        if load.active_turns >= lim.max_active_turns or load.llm_inflight >= lim.max_llm_inflight:
            if load.active_turns >= lim.max_active_turns:
                reason, limit = f"active turns {load.active_turns} >= {lim.max_active_turns}", "active_turns"
            else:
                reason, limit = f"local llm {load.llm_inflight} >= {lim.max_llm_inflight}", "local_llm"
            verdict = Verdict.ESCALATE if self._cloud_healthy() else Verdict.BUSY
            return Admission(verdict, reason, load, limit)
        return Admission(Verdict.ADMIT, "under limits", load)

    def snapshot(self) -> dict[str, Any]:
        """Load and limits for ``/health`` (no verdict counted)."""
        load, lim = self._load(), self.limits
        return {"active_turns": load.active_turns, "asr_queue": load.asr_queue,
                "asr_wait_ms": round(load.asr_wait_ms), "llm_inflight": load.llm_inflight,
                "devices": load.devices, "room_for_devices": self.has_room_for_device(),
                "limits": {"active_turns": lim.max_active_turns, "asr_queue": lim.max_asr_queue,
                           "asr_wait_ms": lim.max_asr_wait_ms,
                           "llm_inflight": lim.max_llm_inflight, "devices": lim.max_devices}}

    def has_room_for_device(self) -> bool:
        """False while this edge is at its device capacity or already shedding turns."""
        load, lim = self._load(), self.limits
        return load.devices < lim.max_devices and load.asr_queue < lim.max_asr_queue \
            and load.asr_wait_ms < lim.max_asr_wait_ms and load.active_turns < lim.max_active_turns


def ota_chooser_with_load(discovery: Discovery, local_edge: str, admission: AdmissionControl,
                          local_url: Callable[[Any], str] | None = None) -> Callable[[str, Any], str]:
    """Like shared.discovery.ota_chooser, but this edge counts as full while admission says so.

    Static discovery believes every edge is empty; this edge knows better about itself, so a
    booting device is sent to the nearest other edge with room (if there is one) instead.
    """

    def choose(device_id: str, request: Any) -> str:
        edges = discovery.healthy_edges()
        if not admission.has_room_for_device():
            edges = [replace(e, load=max(e.load, e.capacity)) if e.edge == local_edge else e for e in edges]
        headers = getattr(request, "headers", {}) or {}
        choice = choose_nearest(discovery.topology, edges, device_id, headers.get(REGION_HEADER) or None)
        if choice.edge != local_edge and any(e.edge == local_edge for e in edges):
            metrics.ADMISSION.labels(verdict="redirected_device").inc()
        if local_url is not None and choice.edge == local_edge:
            return local_url(request)
        return choice.url

    return choose

