"""Admission control: may this edge take one more turn (or one more device) now?

The edge knows its capacity (``edges[].capacity`` in topology.yaml: devices it is sized for)
and its live load (turns in flight, utterances waiting for ASR, local LLM generations). Past
its limits a new turn is never silently dropped and never closes the socket:

* ``admit``    - run it here as usual;
* ``escalate`` - the local LLM is the bottleneck and the cloud is healthy: answer it there
  (the turn's ASR already ran locally; the answer planner forces escalation with reason
  ``edge-load``; the policy's own ``min_queue_depth``/``min_active_turns`` rules still see
  the same load numbers);
* ``busy``     - the cached "I'm busy, one moment" phrase, at once (shed).

A booting device is sent to another edge with room (the OTA answer, :func:`ota_chooser_with_load`)
while this one is at capacity.

The limits default from the capacity: an edge sized for ``capacity`` devices at one turn per
device per minute and ~6 s per turn sees ``capacity / 10`` concurrent turns on average; twice
that is the ceiling. The ASR and LLM queues have their own small ceilings (a queue deeper than a
couple of batches only adds waiting).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from edge import metrics
from shared.discovery import REGION_HEADER, Discovery, choose_nearest

BUSY_PHRASE = "I'm busy, one moment."


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


@dataclass(frozen=True)
class Limits:
    """Where admission starts refusing; :meth:`for_capacity` derives them from topology."""

    max_active_turns: int
    max_asr_queue: int
    max_llm_inflight: int
    max_devices: int

    @classmethod
    def for_capacity(cls, capacity: int, asr_batch: int = 4) -> "Limits":
        return cls(max_active_turns=max(2, capacity // 5), max_asr_queue=max(2, 2 * asr_batch),
                   max_llm_inflight=max(2, capacity // 25), max_devices=capacity)


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    reason: str  # which limit (or "under limits")
    load: Load

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


class AdmissionControl:
    """Decides each new turn from live load; cheap, synchronous, called on the event loop."""

    def __init__(self, limits: Limits, load: Callable[[], Load], cloud_healthy: Callable[[], bool]):
        self.limits = limits
        self._load = load
        self._cloud_healthy = cloud_healthy

    @classmethod
    def for_edge(cls, capacity: int, asr: Any, devices: Callable[[], int], llm: InflightCounter,
                 cloud_healthy: Callable[[], bool]) -> "AdmissionControl":
        """Wired to an edge's live numbers: ``asr`` (an AsrService), its open sessions, its local LLM counter."""
        def load() -> Load:
            return Load(active_turns=int(metrics.ACTIVE_TURNS._value.get()), asr_queue=asr.queue_depth,
                        llm_inflight=llm.value, devices=devices())

        return cls(Limits.for_capacity(capacity, asr.max_batch), load, cloud_healthy)

    def load(self) -> Load:
        return self._load()

    def decide(self) -> Admission:
        """The verdict for one new turn (counted in ``xz_edge_admission_total``)."""
        load, lim = self._load(), self.limits
        if load.asr_queue >= lim.max_asr_queue:
            # The cloud cannot help: the audio must be transcribed here first.
            out = Admission(Verdict.BUSY, f"asr queue {load.asr_queue} >= {lim.max_asr_queue}", load)
        elif load.active_turns >= lim.max_active_turns or load.llm_inflight >= lim.max_llm_inflight:
            reason = (f"active turns {load.active_turns} >= {lim.max_active_turns}"
                      if load.active_turns >= lim.max_active_turns
                      else f"local llm {load.llm_inflight} >= {lim.max_llm_inflight}")
            verdict = Verdict.ESCALATE if self._cloud_healthy() else Verdict.BUSY
            out = Admission(verdict, reason, load)
        else:
            out = Admission(Verdict.ADMIT, "under limits", load)
        metrics.ADMISSION.labels(verdict=out.verdict.value).inc()
        return out

    def has_room_for_device(self) -> bool:
        """False while this edge is at its device capacity or already shedding turns."""
        load, lim = self._load(), self.limits
        return load.devices < lim.max_devices and load.asr_queue < lim.max_asr_queue \
            and load.active_turns < lim.max_active_turns


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

