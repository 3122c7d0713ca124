"""Which edge a booting device should talk to: the nearest healthy edge that has room.

Two backends share one policy (:func:`choose_nearest`):

* ``static``: every edge in topology.yaml, assumed healthy (the embedded default, no Consul);
* ``consul``: edges whose Consul health checks pass, with their current load from service
  metadata. A background loop refreshes the list; when Consul is unreachable the last good
  snapshot keeps answering (counted in ``xz_discovery_snapshot_served_total``), so a device's
  boot never fails because of discovery.

``choose_edge`` is synchronous and never does I/O: the OTA handler calls it per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared import metrics
from shared.geo import haversine_km
from shared.log import log_event
from shared.topology import SecretRef, Topology

log = logging.getLogger("xz.discovery")

# Policy steps, also the ``reason`` label of xz_discovery_choices_total.
ASSIGNED = "assigned"
NEAREST_IN_REGION = "nearest-in-region"
NEAREST_OTHER_REGION = "nearest-other-region"
ALL_FULL = "all-full"
NO_HEALTHY_EDGE = "no-healthy-edge"

ROOM_META = "room"  # an edge's registration: "0" while its admission control says it is full
REGION_HEADER = "X-Xz-Region"  # optional hint a provisioning proxy may add to OTA requests


@dataclass(frozen=True)
class EdgeStatus:
    """One edge as discovery sees it: where it is, how full it is."""

    site: str
    region: str
    edge: str
    url: str
    lat: float
    lon: float
    capacity: int
    load: int = 0

    @property
    def has_room(self) -> bool:
        return self.load < self.capacity


@dataclass(frozen=True)
class EdgeChoice:
    url: str
    site: str
    edge: str
    reason: str


def static_edges(topology: Topology) -> list[EdgeStatus]:
    """Every edge of the document, as if healthy and empty."""
    return [
        EdgeStatus(s.name, s.region, e.name, e.url(), s.location.lat, s.location.lon, e.capacity)
        for s, e in topology.edges()
    ]


def _rendezvous(device_id: str, edges: Iterable[EdgeStatus]) -> EdgeStatus:
    """Highest-random-weight pick: stable per device, spreads devices over a site's edges."""
    return max(edges, key=lambda e: (hashlib.sha256(f"{device_id}|{e.edge}".encode()).digest(), e.edge))


def _sites_by_distance(edges: Sequence[EdgeStatus], origin: tuple[float, float] | None) -> list[str]:
    """Site names ordered by distance from ``origin`` (ties and no origin: by name)."""
    where = {e.site: (e.lat, e.lon) for e in edges}

    def key(site: str) -> tuple[float, str]:
        dist = haversine_km(*origin, *where[site]) if origin else 0.0
        return (round(dist, 6), site)

    return sorted(where, key=key)


def choose_nearest(topology: Topology, healthy: Sequence[EdgeStatus], device_id: str,
                   region: str | None = None) -> EdgeChoice:
    """The issue's policy, deterministic for equal inputs.

    1. the device's assigned site (override prefix, else its region's default) if an edge there
       is healthy and under capacity;
    2. else the closest such site in the same region (distance from the assigned site);
    3. else the closest such site in any other region;
    4. else (everything full) the least loaded healthy edge; with no healthy edge at all, the
       assigned site's first edge from the document, so the device still gets an answer.
    """
    assigned = topology.assigned_site(device_id, region)
    assigned_spec = next((s for s in topology.sites if s.name == assigned), None)
    if region is None and assigned_spec is not None:
        region = assigned_spec.region
    origin = (assigned_spec.location.lat, assigned_spec.location.lon) if assigned_spec else None
    with_room = [e for e in healthy if e.has_room]

    def pick(candidates: list[EdgeStatus], reason: str) -> EdgeChoice | None:
        if not candidates:
            return None
        site = _sites_by_distance(candidates, origin)[0]
        edge = _rendezvous(device_id, (e for e in candidates if e.site == site))
        return EdgeChoice(edge.url, edge.site, edge.edge, reason)

    choice = (
        pick([e for e in with_room if e.site == assigned], ASSIGNED)
        or pick([e for e in with_room if e.region == region], NEAREST_IN_REGION)
        or pick([e for e in with_room if e.region != region], NEAREST_OTHER_REGION)
    )
    if choice is None and healthy:
        least = min(healthy, key=lambda e: (e.load / e.capacity, e.site != assigned, e.site, e.edge))
        choice = EdgeChoice(least.url, least.site, least.edge, ALL_FULL)
    if choice is None:
        fallback = [e for e in static_edges(topology) if e.site == assigned] or static_edges(topology)
        choice = EdgeChoice(fallback[0].url, fallback[0].site, fallback[0].edge, NO_HEALTHY_EDGE)
    return choice


class Discovery:
    """The interface the OTA endpoint uses; subclasses say which edges are healthy."""

    backend = "base"

    def __init__(self, topology: Topology):
        self.topology = topology

    async def start(self) -> None:
        """Begin keeping the edge list current (no-op for static)."""

    async def stop(self) -> None:
        """Stop background work and release connections."""

    def healthy_edges(self) -> list[EdgeStatus]:
        raise NotImplementedError

    def choose_edge(self, device_id: str, region: str | None = None) -> EdgeChoice:
        """The edge ``device_id`` should use now; never raises for a known topology."""
        choice = choose_nearest(self.topology, self.healthy_edges(), device_id, region)
        metrics.DISCOVERY_CHOICES.labels(choice.reason).inc()
        if choice.reason != ASSIGNED:
            log_event(log, "edge chosen away from the assigned site", level=logging.INFO, device_id=device_id,
                      site=choice.site, edge=choice.edge, reason=choice.reason, backend=self.backend)
        return choice


class StaticDiscovery(Discovery):
    """Edges straight from topology.yaml, all assumed healthy and empty."""

    backend = "static"

    def __init__(self, topology: Topology):
        super().__init__(topology)
        self._edges = static_edges(topology)

    def healthy_edges(self) -> list[EdgeStatus]:
        return list(self._edges)


@dataclass(frozen=True)
class ConsulAddress:
    host: str
    port: int
    scheme: str
    token: str | None


def consul_address(topology: Topology | None = None, environ: dict[str, str] | None = None) -> ConsulAddress:
    """Consul's HTTP API address: ``CONSUL_HTTP_ADDR``/``CONSUL_HTTP_TOKEN`` (as the consul CLI) or topology."""
    env = os.environ if environ is None else environ
    raw = env.get("CONSUL_HTTP_ADDR") or (topology.cloud.consul.url if topology else "http://127.0.0.1:8500")
    if "://" not in raw:
        raw = f"http://{raw}"
    parts = urlsplit(raw)
    token = env.get("CONSUL_HTTP_TOKEN")
    ref: SecretRef | None = topology.cloud.consul.token if topology else None
    if token is None and ref is not None:
        token = ref.resolve()
    return ConsulAddress(parts.hostname or "127.0.0.1", parts.port or 8500, parts.scheme or "http", token)


def consul_client(addr: ConsulAddress, timeout_s: float) -> Any:
    """An asyncio py-consul client (needs a running loop: it opens an aiohttp session)."""
    import consul.aio

    return consul.aio.Consul(host=addr.host, port=addr.port, scheme=addr.scheme, token=addr.token,
                             verify=addr.scheme == "https", connections_timeout=timeout_s)


def _meta_float(meta: dict[str, str], key: str, default: float) -> float:
    try:
        return float(meta[key])
    except (KeyError, TypeError, ValueError):
        return default


def edge_from_consul(topology: Topology, entry: dict[str, Any]) -> EdgeStatus | None:
    """An EdgeStatus from one /v1/health/service entry; the document fills what metadata lacks."""
    svc = entry.get("Service") or {}
    meta = svc.get("Meta") or {}
    site_name = meta.get("site")
    site = next((s for s in topology.sites if s.name == site_name), None)
    edge_name = meta.get("edge") or svc.get("ID")
    if not site_name or not edge_name:
        return None
    host = svc.get("Address") or (entry.get("Node") or {}).get("Address") or "127.0.0.1"
    url = meta.get("ws_url") or f"ws://{host}:{svc.get('Port', 8000)}/xiaozhi/v1/"
    lat = _meta_float(meta, "lat", site.location.lat if site else 0.0)
    lon = _meta_float(meta, "lon", site.location.lon if site else 0.0)
    region = meta.get("region") or (site.region if site else "")
    capacity = int(_meta_float(meta, "capacity", 0)) or next(
        (e.capacity for e in (site.edges if site else []) if e.name == edge_name), 1)
    load = max(0, int(_meta_float(meta, "load", 0)))
    capacity = max(1, capacity)
    if meta.get(ROOM_META) == "0":  # shedding turns: full, whatever its device count
        load = max(load, capacity)
    return EdgeStatus(site_name, region, edge_name, url, lat, lon, capacity, load)


class ConsulDiscovery(Discovery):
    """Healthy edges from Consul (``/v1/health/service/<edge_service>?passing``), refreshed in the background."""

    backend = "consul"

    def __init__(self, topology: Topology, address: ConsulAddress | None = None,
                 client_factory: Callable[[ConsulAddress, float], Any] = consul_client):
        super().__init__(topology)
        spec = topology.discovery
        self.address = address or consul_address(topology)
        self.service = spec.edge_service
        self.interval_s = max(spec.cache_s, 0.5)
        self.timeout_s = spec.timeout_s
        self.snapshot_file = Path(spec.snapshot_file) if spec.snapshot_file else None
        self._client_factory = client_factory
        self._client: Any = None
        self._task: asyncio.Task | None = None
        self._snapshot: list[EdgeStatus] | None = None
        self._snapshot_at = 0.0
        self.consul_ok = False
        self._load_snapshot_file()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._client = self._client_factory(self.address, self.timeout_s)
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="consul-discovery")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    async def refresh(self) -> bool:
        """Query Consul once; on success replace the snapshot, on failure keep it. True if Consul answered."""
        try:
            _, entries = await asyncio.wait_for(
                self._client.health.service(self.service, passing=True), self.timeout_s)
            edges = [e for e in (edge_from_consul(self.topology, x) for x in entries or []) if e is not None]
        except Exception as exc:  # unreachable, timeout, 5xx, bad JSON or shape: all mean "use the snapshot"
            if self.consul_ok or self._snapshot_at == 0.0:
                log_event(log, "consul unreachable, serving the last good snapshot", level=logging.WARNING,
                          consul=f"{self.address.host}:{self.address.port}", error=repr(exc),
                          snapshot_edges=len(self._snapshot or []))
            self.consul_ok = False
            metrics.DISCOVERY_CONSUL_UP.set(0)
            self._update_age()
            return False
        edges.sort(key=lambda e: (e.site, e.edge))
        if not self.consul_ok:
            log_event(log, "consul answering", healthy_edges=len(edges))
        self._snapshot, self._snapshot_at, self.consul_ok = edges, time.time(), True
        metrics.DISCOVERY_CONSUL_UP.set(1)
        self._update_age()
        self._save_snapshot_file()
        return True

    # ------------------------------------------------------------ answers
    def healthy_edges(self) -> list[EdgeStatus]:
        if self._snapshot is None:
            return static_edges(self.topology)  # never heard from Consul: the document is the best guess
        return list(self._snapshot)

    def choose_edge(self, device_id: str, region: str | None = None) -> EdgeChoice:
        if not self.consul_ok:
            metrics.DISCOVERY_SNAPSHOT_SERVED.inc()
            self._update_age()
        return super().choose_edge(device_id, region)

    # ------------------------------------------------------------ snapshot persistence
    def _update_age(self) -> None:
        if self._snapshot_at:
            metrics.DISCOVERY_SNAPSHOT_AGE.set(max(0.0, time.time() - self._snapshot_at))

    def _save_snapshot_file(self) -> None:
        if not self.snapshot_file or self._snapshot is None:
            return
        try:
            self.snapshot_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.snapshot_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"at": self._snapshot_at, "edges": [asdict(e) for e in self._snapshot]}))
            tmp.replace(self.snapshot_file)
        except OSError as exc:
            log_event(log, "cannot write the discovery snapshot", level=logging.WARNING,
                      path=str(self.snapshot_file), error=str(exc))

    def _load_snapshot_file(self) -> None:
        if not self.snapshot_file or not self.snapshot_file.is_file():
            return
        try:
            doc = json.loads(self.snapshot_file.read_text())
            self._snapshot = [EdgeStatus(**e) for e in doc["edges"]]
            self._snapshot_at = float(doc["at"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log_event(log, "ignoring an unreadable discovery snapshot", level=logging.WARNING,
                      path=str(self.snapshot_file), error=str(exc))


def make_discovery(topology: Topology) -> Discovery:
    """The backend topology.yaml asks for (``discovery.backend``)."""
    if topology.discovery.backend == "consul":
        return ConsulDiscovery(topology)
    return StaticDiscovery(topology)


def ota_chooser(discovery: Discovery, local_edge: str | None = None,
                local_url: Callable[[Any], str] | None = None) -> Callable[[str, Any], str]:
    """Adapt a Discovery to edge/ota.py's ``choose_edge(device_id, request) -> str``.

    The region hint comes from the ``X-Xz-Region`` header when a front proxy sets it. When the
    choice is this very edge (``local_edge``) and ``local_url`` is given, the URL is derived from
    the request instead (the address the device reached us on beats a loopback in the document).
    """

    def choose(device_id: str, request: Any) -> str:
        headers = getattr(request, "headers", {}) or {}
        region = headers.get(REGION_HEADER) or None
        choice = discovery.choose_edge(device_id, region)
        if local_url is not None and choice.edge == local_edge:
            return local_url(request)
        return choice.url

    return choose
