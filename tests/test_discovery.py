"""Nearest-edge selection: assigned site, overflow to the nearest, unhealthy skipped, Consul down -> snapshot."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import REGISTRY

from edge.registration import edge_registration
from shared.discovery import (ALL_FULL, ASSIGNED, NEAREST_IN_REGION, NEAREST_OTHER_REGION, NO_HEALTHY_EDGE,
                              ConsulAddress, ConsulDiscovery, EdgeStatus, StaticDiscovery, choose_nearest,
                              make_discovery, ota_chooser, static_edges)
from shared.nats_runtime import free_port
from shared.topology import Topology, load_topology, parse_topology
from tests.consul_double import HealthEndpoint
from tests.consul_fixtures import ConsulUnderTest, consul, eventually  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "multi-region.yaml"


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_topology(EXAMPLE, environ={})


def with_load(edges: list[EdgeStatus], **load_by_site: int) -> list[EdgeStatus]:
    """Edges with ``load`` set per site (use capacity-sized numbers to fill a site)."""
    out = []
    for e in edges:
        load = load_by_site.get(e.site, 0)
        out.append(EdgeStatus(e.site, e.region, e.edge, e.url, e.lat, e.lon, e.capacity, min(load, e.capacity)))
    return out


def test_assigned_site_when_it_has_room(topo):
    healthy = static_edges(topo)
    c = choose_nearest(topo, healthy, "00:00:00:00:00:01")  # no override: eu default, ams
    assert (c.site, c.reason) == ("ams", ASSIGNED)
    assert c.url.startswith("ws://10.10.1.1") and c.url.endswith(":8000/xiaozhi/v1/")
    assert choose_nearest(topo, healthy, "a4:cf:12:00:00:01").site == "par"  # override prefix
    assert choose_nearest(topo, healthy, "00:00:00:00:00:01", region="us").site == "nyc"


def test_deterministic_and_spread_over_a_sites_edges(topo):
    healthy = static_edges(topo)
    ids = [f"00:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(200)]
    first = [choose_nearest(topo, healthy, d) for d in ids]
    again = [choose_nearest(topo, list(reversed(healthy)), d) for d in ids]
    assert first == again  # same inputs (in any order) -> same answers
    edges = {c.edge for c in first}
    assert edges == {"ams-edge-1", "ams-edge-2"}  # both ams edges get devices


def test_overflow_goes_to_nearest_site_in_region(topo):
    healthy = with_load(static_edges(topo), ams=10_000)
    c = choose_nearest(topo, healthy, "00:00:00:00:00:01")
    # from Amsterdam: Frankfurt ~365 km, Paris ~430 km, Madrid ~1480 km
    assert (c.site, c.reason) == ("fra", NEAREST_IN_REGION)
    healthy = with_load(static_edges(topo), ams=10_000, fra=10_000)
    assert choose_nearest(topo, healthy, "00:00:00:00:00:01").site == "par"


def test_unhealthy_site_is_skipped(topo):
    healthy = [e for e in static_edges(topo) if e.site not in ("ams", "fra")]
    c = choose_nearest(topo, healthy, "00:00:00:00:00:01")
    assert (c.site, c.reason) == ("par", NEAREST_IN_REGION)
    # a Chicago device whose site is down goes to New York (~1150 km), not San Francisco (~2990 km)
    healthy = [e for e in static_edges(topo) if e.site != "chi"]
    assert choose_nearest(topo, healthy, "58:bf:25:00:00:01").site == "nyc"


def test_other_region_then_all_full_then_nothing_healthy(topo):
    eu_full = with_load(static_edges(topo), ams=10_000, fra=10_000, par=10_000, mad=10_000)
    c = choose_nearest(topo, eu_full, "00:00:00:00:00:01")
    assert (c.site, c.reason) == ("nyc", NEAREST_OTHER_REGION)  # New York is the closest US site to Amsterdam
    everything_full = with_load(static_edges(topo), **{s.name: 10_000 for s in topo.sites})
    assert choose_nearest(topo, everything_full, "00:00:00:00:00:01").reason == ALL_FULL
    c = choose_nearest(topo, [], "00:00:00:00:00:01")
    assert (c.site, c.reason) == ("ams", NO_HEALTHY_EDGE)  # still an answer: never fail a boot


def test_static_backend_and_ota_adapter():
    t = load_topology(ROOT / "topology.yaml", environ={})
    d = make_discovery(t)
    assert isinstance(d, StaticDiscovery)
    choose = ota_chooser(d)
    assert choose("aa:bb", SimpleNamespace(headers={})) == "ws://127.0.0.1:8000/xiaozhi/v1/"
    local = ota_chooser(d, local_edge="edge-1", local_url=lambda req: f"ws://{req.host}/xiaozhi/v1/")
    assert local("aa:bb", SimpleNamespace(headers={}, host="192.168.1.5:8000")) == "ws://192.168.1.5:8000/xiaozhi/v1/"


# ---------------------------------------------------------------- Consul backend, real HTTP
def consul_topology(tmp_path: Path, ports: dict[str, int]) -> Topology:
    """The example with a few edges on loopback ports, discovery via Consul with quick refresh."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    for site in doc["sites"]:
        for edge in site["edges"]:
            edge["host"] = "127.0.0.1"
            edge["port"] = ports.get(edge["name"], free_port())
    doc["discovery"].update(cache_s=0.5, refresh_s=0.3, timeout_s=2, snapshot_file=str(tmp_path / "snap.json"))
    return parse_topology(copy.deepcopy(doc), environ={})


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_consul_nearest_healthy_then_snapshot_when_down(consul: ConsulUnderTest, tmp_path):
    names = ["ams-edge-1", "ams-edge-2", "fra-edge-1", "par-edge-1"]
    health = {n: HealthEndpoint() for n in names}
    for h in health.values():
        await h.start()
    topo = consul_topology(tmp_path, {n: h.port for n, h in health.items()})
    regs = []
    for name in names:
        site = name.split("-")[0]
        reg = edge_registration(topo, load=lambda: 3, site=site, edge=name, address=consul.address)
        reg.spec.check_interval = "1s"
        regs.append(reg)
        await reg.start()
    disc = ConsulDiscovery(topo, address=consul.address)
    await disc.start()
    try:
        async def all_passing() -> bool:
            await disc.refresh()
            return {e.edge for e in disc.healthy_edges()} >= set(names)

        await eventually(all_passing)
        loads = {e.edge: e.load for e in disc.healthy_edges()}
        assert loads["ams-edge-1"] == 3  # load metadata travelled through Consul
        c = disc.choose_edge("00:00:00:00:00:01")
        assert (c.site, c.reason) == ("ams", ASSIGNED)
        assert c.url == f"ws://127.0.0.1:{health[c.edge].port}/xiaozhi/v1/"

        # Amsterdam's edges start failing /health: Consul stops listing them, Frankfurt takes over
        health["ams-edge-1"].status = health["ams-edge-2"].status = 503

        async def ams_gone() -> bool:
            await disc.refresh()
            return not any(e.site == "ams" for e in disc.healthy_edges())

        await eventually(ams_gone)
        c = disc.choose_edge("00:00:00:00:00:01")
        assert (c.site, c.reason) == ("fra", NEAREST_IN_REGION)

        # Consul becomes unreachable: answers keep coming from the last good snapshot, counted
        served = counter("xz_discovery_snapshot_served_total")
        if consul.double is not None:
            await consul.double.stop()
        else:  # a real agent cannot be stopped from here: point discovery at a dead port
            await disc.stop()
            disc.address = ConsulAddress("127.0.0.1", free_port(), "http", None)
            await disc.start()
        assert await disc.refresh() is False
        assert disc.consul_ok is False
        c = disc.choose_edge("00:00:00:00:00:01")
        assert (c.site, c.reason) == ("fra", NEAREST_IN_REGION)
        assert counter("xz_discovery_snapshot_served_total") == served + 1
        assert REGISTRY.get_sample_value("xz_discovery_consul_up") == 0

        # a restarted edge process with Consul still down boots from the snapshot file
        fresh = ConsulDiscovery(topo, address=disc.address)
        await fresh.start()
        assert fresh.consul_ok is False
        assert {e.edge for e in fresh.healthy_edges()} == {"fra-edge-1", "par-edge-1"}
        assert fresh.choose_edge("00:00:00:00:00:01").site == "fra"
        await fresh.stop()
        if consul.double is not None:
            await consul.double.start()
    finally:
        await disc.stop()
        for reg in regs:
            await reg.stop()
        for h in health.values():
            await h.stop()


async def test_consul_never_reached_falls_back_to_the_document(tmp_path):
    topo = consul_topology(tmp_path, {})
    disc = ConsulDiscovery(topo, address=ConsulAddress("127.0.0.1", free_port(), "http", None))
    await disc.start()
    try:
        c = disc.choose_edge("58:bf:25:00:00:01")
        assert (c.site, c.reason) == ("chi", ASSIGNED)  # the document's edges, as if healthy
    finally:
        await disc.stop()


@pytest.mark.skipif(bool(os.environ.get("CONSUL_HTTP_ADDR")), reason="uses the double's request log")
async def test_discovery_uses_the_passing_filter(consul: ConsulUnderTest, tmp_path):
    topo = consul_topology(tmp_path, {})
    disc = ConsulDiscovery(topo, address=consul.address)
    await disc.start()
    await disc.stop()
    assert ("GET", "/v1/health/service/xz-edge") in consul.double.requests


def test_consul_entries_are_read_defensively(topo):
    from shared.discovery import edge_from_consul

    good = {"Node": {"Address": "10.9.9.9"},
            "Service": {"ID": "xz-edge-x", "Port": 8100, "Meta": {"site": "fra", "edge": "fra-edge-9",
                                                                "capacity": "oops", "load": "-3"}}}
    e = edge_from_consul(topo, good)
    assert (e.site, e.region, e.url, e.load, e.capacity) == ("fra", "eu", "ws://10.9.9.9:8100/xiaozhi/v1/", 0, 1)
    assert (e.lat, e.lon) == (50.11, 8.68)  # location from the document
    assert edge_from_consul(topo, {"Service": {"Meta": {}}}) is None  # not one of ours
    full = {"Service": {"ID": "x", "Meta": {"site": "fra", "edge": "fra-edge-9", "capacity": "200", "load": "12",
                                            "room": "0"}}}
    assert not edge_from_consul(topo, full).has_room  # its admission control says full: no new devices


async def test_garbage_from_consul_keeps_the_snapshot(tmp_path):
    class Garbage:
        class health:  # noqa: N801 - the shape of py-consul's client
            @staticmethod
            async def service(name, passing):
                return "1", "not a list of entries"

        async def close(self):
            pass

    topo = consul_topology(tmp_path, {})
    disc = ConsulDiscovery(topo, address=ConsulAddress("127.0.0.1", 1, "http", None),
                           client_factory=lambda addr, timeout: Garbage())
    await disc.start()
    try:
        assert disc.consul_ok is False
        assert disc.choose_edge("00:00:00:00:00:01").site == "ams"
    finally:
        await disc.stop()
