"""An edge node's Consul registration: tags and metadata discovery's nearest-edge policy reads."""

from __future__ import annotations

from collections.abc import Callable

from shared.discovery import ROOM_META, ConsulAddress
from shared.registration import Registration, ServiceSpec, registration_for
from shared.topology import Topology


def edge_service(topology: Topology, site: str | None = None, edge: str | None = None,
                 public_url: str | None = None) -> ServiceSpec:
    """The ServiceSpec of edge ``edge`` in ``site`` (defaults: the first site, its first edge)."""
    s = topology.site(site)
    e = next((x for x in s.edges if x.name == edge), None) if edge else s.edges[0]
    if e is None:
        raise ValueError(f"edge {edge!r} is not in site {s.name!r} (have: {', '.join(x.name for x in s.edges)})")
    return ServiceSpec(
        name=topology.discovery.edge_service,
        service_id=f"{topology.discovery.edge_service}-{e.name}",
        address=e.host,
        port=e.port,
        tags=[f"region={s.region}", f"site={s.name}"],
        meta={"region": s.region, "site": s.name, "edge": e.name, "capacity": str(e.capacity),
              "lat": str(s.location.lat), "lon": str(s.location.lon), "tier": e.tier or s.tier,
              "ws_url": public_url or topology.edge.public_url or e.url()},
    )


def edge_registration(topology: Topology, load: Callable[[], int], site: str | None = None,
                      edge: str | None = None, address: ConsulAddress | None = None,
                      has_room: Callable[[], bool] | None = None) -> Registration:
    """start()/stop() object for the edge server; ``load`` returns connected devices now.

    ``has_room`` (admission control's view) is published as ``room`` ("1"/"0") at each refresh: an
    edge that sheds turns is full for discovery even with fewer devices than its capacity."""
    live = (lambda: {ROOM_META: "1" if has_room() else "0"}) if has_room is not None else None
    return registration_for(topology, edge_service(topology, site, edge), load, address, live)
