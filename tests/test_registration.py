"""Registration lifecycle against Consul (the test double, or a real agent via CONSUL_HTTP_ADDR)."""

from __future__ import annotations

import os
from pathlib import Path

from consul import aio as consul_aio
import pytest
from prometheus_client import REGISTRY

from cloud.registration import worker_registration
from edge.registration import edge_registration, edge_service
from shared.discovery import ConsulAddress
from shared.nats_runtime import free_port
from shared.registration import ConsulRegistration, NullRegistration
from shared.topology import load_topology, parse_topology
from tests.consul_double import HealthEndpoint
from tests.consul_fixtures import ConsulUnderTest, consul, eventually  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent


def edge_topology(port: int):
    t = load_topology(ROOT / "examples" / "multi-region.yaml", environ={})
    doc = t.model_dump(by_alias=True, exclude_none=True)
    doc["sites"][0]["edges"][0].update(host="127.0.0.1", port=port)
    doc["cloud"]["workers"][0].update(host="127.0.0.1", port=port)
    return parse_topology(doc, environ={})


async def entries(address: ConsulAddress, service: str, passing: bool = True) -> list[dict]:
    client = consul_aio.Consul(host=address.host, port=address.port, token=address.token, verify=False)
    try:
        _, nodes = await client.health.service(service, passing=passing)
        return nodes or []
    finally:
        await client.close()


async def test_register_refresh_load_and_deregister(consul: ConsulUnderTest):
    health = HealthEndpoint()
    await health.start()
    topo = edge_topology(health.port)
    load = {"n": 5, "room": True}
    reg = edge_registration(topo, load=lambda: load["n"], site="ams", edge="ams-edge-1", address=consul.address,
                            has_room=lambda: load["room"])
    assert isinstance(reg, ConsulRegistration)
    reg.spec.check_interval = "1s"
    reg.refresh_s = 0.3
    try:
        await reg.start()
        assert reg.registered
        assert REGISTRY.get_sample_value("xz_registration_up", {"service": "xz-edge"}) == 1

        async def passing() -> bool:
            return bool(await entries(consul.address, "xz-edge"))

        await eventually(passing)  # the HTTP check on /health passed
        (entry,) = [e for e in await entries(consul.address, "xz-edge") if e["Service"]["ID"] == "xz-edge-ams-edge-1"]
        svc = entry["Service"]
        assert svc["Address"] == "127.0.0.1" and svc["Port"] == health.port
        assert set(svc["Tags"]) == {"region=eu", "site=ams"}
        assert svc["Meta"]["capacity"] == "200" and svc["Meta"]["load"] == "5" and svc["Meta"]["room"] == "1"
        assert svc["Meta"]["site"] == "ams" and svc["Meta"]["tier"] == "cpu-medium"
        assert any(c["ServiceID"] == svc["ID"] and c["Status"] == "passing" for c in entry["Checks"])

        load.update(n=42, room=False)  # periodic refresh carries the new load (admission: full), check still passing

        async def load_updated() -> bool:
            found = [e for e in await entries(consul.address, "xz-edge") if e["Service"]["ID"] == svc["ID"]]
            return bool(found) and (found[0]["Service"]["Meta"]["load"], found[0]["Service"]["Meta"]["room"]) == (
                "42", "0")

        await eventually(load_updated, timeout=10)

        health.status = 503  # a sick edge drops out of the passing set

        async def critical() -> bool:
            return not [e for e in await entries(consul.address, "xz-edge") if e["Service"]["ID"] == svc["ID"]]

        await eventually(critical)
        assert [e for e in await entries(consul.address, "xz-edge", passing=False) if e["Service"]["ID"] == svc["ID"]]
    finally:
        await reg.stop()
        await health.stop()
    # clean stop: gone from Consul altogether
    assert not [e for e in await entries(consul.address, "xz-edge", passing=False)
                if e["Service"]["ID"] == "xz-edge-ams-edge-1"]
    assert REGISTRY.get_sample_value("xz_registration_up", {"service": "xz-edge"}) == 0


@pytest.mark.skipif(bool(os.environ.get("CONSUL_HTTP_ADDR")), reason="needs a Consul that can be started late")
async def test_consul_down_at_start_does_not_stop_the_service_and_registers_later():
    from tests.consul_double import ConsulDouble

    double = ConsulDouble()
    topo = edge_topology(free_port())
    reg = edge_registration(topo, load=lambda: 0, site="ams", edge="ams-edge-1",
                            address=ConsulAddress("127.0.0.1", double.port, "http", None))
    reg.refresh_s = 0.2
    await reg.start()  # nothing listens yet: no exception, just not registered
    assert reg.registered is False
    await double.start()
    try:
        async def registered() -> bool:
            return "xz-edge-ams-edge-1" in double.services

        await eventually(registered, timeout=5)
        check = double.services["xz-edge-ams-edge-1"].definition["checks"][0]
        assert check["http"] == f"http://127.0.0.1:{topo.sites[0].edges[0].port}/health"
        assert check["DeregisterCriticalServiceAfter"] == "5m"
    finally:
        await reg.stop()
        await double.stop()
    assert "xz-edge-ams-edge-1" not in double.services


async def test_worker_registration(consul: ConsulUnderTest):
    health = HealthEndpoint()
    await health.start()
    topo = edge_topology(health.port)
    reg = worker_registration(topo, load=lambda: 7, worker="gpu-worker-1", address=consul.address)
    reg.spec.check_interval = "1s"
    await reg.start()
    try:
        async def listed() -> bool:
            return any(e["Service"]["ID"] == "xz-cloud-worker-gpu-worker-1"
                       for e in await entries(consul.address, "xz-cloud-worker"))

        await eventually(listed)
        (e,) = [e for e in await entries(consul.address, "xz-cloud-worker")
                if e["Service"]["ID"] == "xz-cloud-worker-gpu-worker-1"]
        assert e["Service"]["Meta"]["load"] == "7" and e["Service"]["Meta"]["model_class"] == "large"
        assert "model_class=large" in e["Service"]["Tags"]
    finally:
        await reg.stop()
        await health.stop()


def test_static_backend_registers_nothing_and_bad_names_are_clear():
    t = load_topology(ROOT / "topology.yaml", environ={})
    assert isinstance(edge_registration(t, load=lambda: 0), NullRegistration)
    with pytest.raises(ValueError, match="edge 'nope' is not in site 'local-site'"):
        edge_service(t, edge="nope")
