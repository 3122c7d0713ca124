"""Registering a service (edge node or cloud worker) with Consul for discovery.

On start the service registers with its tags (region, site), metadata (capacity, current
load, where devices connect) and an HTTP check on ``/health``; the load metadata is refreshed
by re-registering (Consul keeps the check's status across re-registration); a clean stop
deregisters. Consul being down never stops the service: registration is retried each refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.discovery import ConsulAddress, consul_address, consul_client
from shared.log import log_event
from shared.topology import Topology

log = logging.getLogger("xz.registration")


@dataclass
class ServiceSpec:
    """What one instance tells Consul about itself."""

    name: str
    service_id: str
    address: str
    port: int
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    check_interval: str = "5s"
    check_timeout: str = "2s"
    deregister_after: str = "5m"  # a crashed instance disappears on its own

    def check(self) -> dict[str, Any]:
        from consul import Check

        url = f"http://{self.address}:{self.port}{self.health_path}"
        return Check.http(url, self.check_interval, timeout=self.check_timeout, deregister=self.deregister_after)


class Registration:
    """start()/stop() lifecycle the edge server and cloud worker wire in."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class NullRegistration(Registration):
    """Static discovery: nothing to register."""


class ConsulRegistration(Registration):
    """Keeps one service registered in Consul while it runs, with fresh load metadata."""

    def __init__(self, spec: ServiceSpec, address: ConsulAddress, load: Callable[[], int] | None = None,
                 refresh_s: float = 10.0, timeout_s: float = 2.0,
                 client_factory: Callable[[ConsulAddress, float], Any] = consul_client,
                 live_meta: Callable[[], dict[str, str]] | None = None):
        self.spec = spec
        self.address = address
        self.load = load
        self.live_meta = live_meta  # more metadata read at each refresh (e.g. an edge's room for devices)
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._client_factory = client_factory
        self._client: Any = None
        self._task: asyncio.Task | None = None
        self.registered = False

    def meta(self) -> dict[str, str]:
        meta = dict(self.spec.meta)
        if self.load is not None:
            meta["load"] = str(int(self.load()))
        if self.live_meta is not None:
            meta.update(self.live_meta())
        return meta

    async def register(self) -> bool:
        """(Re-)register with current metadata; False (logged) if Consul did not take it."""
        s = self.spec
        try:
            ok = await asyncio.wait_for(self._client.agent.service.register(
                s.name, service_id=s.service_id, address=s.address, port=s.port, tags=s.tags,
                meta=self.meta(), check=s.check()), self.timeout_s)
        except Exception as exc:  # Consul down or refusing: keep serving, retry next refresh
            ok, error = False, repr(exc)
        else:
            error = "" if ok else "consul refused the registration"
        if ok != self.registered or not ok:
            log_event(log, "registered with consul" if ok else "consul registration failed",
                      level=logging.INFO if ok else logging.WARNING, service=s.name, service_id=s.service_id,
                      consul=f"{self.address.host}:{self.address.port}", **({"error": error} if error else {}))
        self.registered = bool(ok)
        metrics.REGISTRATION_UP.labels(s.name).set(1 if ok else 0)
        return self.registered

    async def start(self) -> None:
        self._client = self._client_factory(self.address, self.timeout_s)
        await self.register()
        self._task = asyncio.create_task(self._loop(), name=f"consul-registration-{self.spec.service_id}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.register()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is None:
            return
        try:
            await asyncio.wait_for(self._client.agent.service.deregister(self.spec.service_id), self.timeout_s)
            log_event(log, "deregistered from consul", service=self.spec.name, service_id=self.spec.service_id)
        except Exception as exc:
            log_event(log, "consul deregistration failed", level=logging.WARNING,
                      service_id=self.spec.service_id, error=repr(exc))
        self.registered = False
        metrics.REGISTRATION_UP.labels(self.spec.name).set(0)
        await self._client.close()
        self._client = None


def registration_for(topology: Topology, spec: ServiceSpec, load: Callable[[], int] | None = None,
                     address: ConsulAddress | None = None,
                     live_meta: Callable[[], dict[str, str]] | None = None) -> Registration:
    """A Consul registration when ``discovery.backend`` is consul, else a no-op."""
    if topology.discovery.backend != "consul" and address is None:
        return NullRegistration()
    return ConsulRegistration(spec, address or consul_address(topology), load,
                              refresh_s=topology.discovery.refresh_s, timeout_s=topology.discovery.timeout_s,
                              live_meta=live_meta)
