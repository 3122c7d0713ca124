"""A cloud worker's Consul registration (the worker's own /health and /metrics port)."""

from __future__ import annotations

from collections.abc import Callable

from shared.discovery import ConsulAddress
from shared.registration import Registration, ServiceSpec, registration_for
from shared.topology import Topology


def worker_service(topology: Topology, worker: str | None = None) -> ServiceSpec:
    workers = topology.cloud.workers
    w = next((x for x in workers if x.name == worker), None) if worker else (workers[0] if workers else None)
    if w is None:
        raise ValueError(f"worker {worker!r} is not in cloud.workers (have: {', '.join(x.name for x in workers)})")
    return ServiceSpec(
        name=topology.discovery.worker_service,
        service_id=f"{topology.discovery.worker_service}-{w.name}",
        address=w.host,
        port=w.port,
        tags=[f"region={topology.cloud.region}", f"model_class={w.model_class}"],
        meta={"region": topology.cloud.region, "worker": w.name, "model_class": w.model_class,
              "capacity": str(w.max_inflight)},
    )


def worker_registration(topology: Topology, load: Callable[[], int], worker: str | None = None,
                        address: ConsulAddress | None = None) -> Registration:
    """start()/stop() object for the cloud worker; ``load`` returns in-flight requests now."""
    return registration_for(topology, worker_service(topology, worker), load, address)
