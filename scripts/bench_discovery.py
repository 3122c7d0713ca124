"""How fast the OTA endpoint can pick an edge: choose_edge over the multi-region example.

Prints answers per second for 1,000 devices (static backend and a Consul-style snapshot with
load), and how the fleet spreads over sites when one site is down. No timing assertions.
Usage: .venv/bin/python scripts/bench_discovery.py [TOPOLOGY]
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.discovery import EdgeStatus, StaticDiscovery, choose_nearest, static_edges  # noqa: E402
from shared.topology import load_topology  # noqa: E402


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent / "examples/multi-region.yaml")
    topo = load_topology(path)
    devices = [f"{p}{i:06x}" for i, p in ((i, ("a4:cf:12:", "58:bf:25:", "00:11:22:")[i % 3]) for i in range(1000))]
    disc = StaticDiscovery(topo)
    for label, fn in (("static backend (metrics + policy)", lambda d: disc.choose_edge(d)),
                      ("policy only", lambda d: choose_nearest(topo, static_edges(topo), d))):
        start = time.perf_counter()
        rounds = 5
        for _ in range(rounds):
            for d in devices:
                fn(d)
        per = (time.perf_counter() - start) / (rounds * len(devices))
        print(f"{label:36s} {per * 1e6:8.1f} us/answer  {1 / per:10.0f} answers/s")
    healthy = [e for e in static_edges(topo) if e.site != "ams"]
    loaded = [EdgeStatus(e.site, e.region, e.edge, e.url, e.lat, e.lon, e.capacity, e.capacity // 2) for e in healthy]
    spread = Counter(choose_nearest(topo, loaded, d).site for d in devices)
    print("1,000 devices with site ams down:", dict(sorted(spread.items())))


if __name__ == "__main__":
    main()
