"""``python -m shared.topology check [FILE] | show [FILE]``.

``check`` validates a topology document and prints every error with its path in the
document (exit 1), ``show`` prints a readable summary of regions, cloud, sites and device
assignment. Everything (tier names, the tools section) is checked by the one model in
shared/topology.py, so this works on a cloud-only install too.
"""

from __future__ import annotations

import argparse
import sys

from shared.topology import Topology, TopologyError, load_topology


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def summary(t: Topology) -> str:
    out = [f"topology {t.source}", ""]
    defaults = {site: region for region, site in t.devices.default_site.items()}
    out.append(f"regions: {', '.join(t.region_names())}    discovery: {t.discovery.backend}")
    hubs = ", ".join(f"{n.name}@{n.host}:{n.client_port}" for n in t.cloud.nats.hub)
    out.append(f"cloud ({t.cloud.region}): NATS hub {hubs}; consul servers: {', '.join(t.cloud.consul.servers) or 'none'}")
    if t.cloud.workers:
        rows = [["WORKER", "HOST", "CLASS", "INFLIGHT", "BACKENDS"]]
        for w in t.cloud.workers:
            rows.append([w.name, w.host, w.model_class, str(w.max_inflight),
                         ", ".join(f"{b.name} ({b.kind}: {b.model})" for b in w.backends)])
        out += [""] + _table(rows)
    rows = [["SITE", "REGION", "LAT,LON", "NATS LEAF", "EDGES", "CAPACITY", "TIER", "DEFAULT FOR"]]
    for s in t.sites:
        tiers = sorted({e.tier or s.tier for e in s.edges})
        rows.append([s.name, s.region, f"{s.location.lat:g},{s.location.lon:g}",
                     f"{s.nats_leaf.host}:{s.nats_leaf.client_port}", str(len(s.edges)), str(s.capacity),
                     "/".join(tiers), defaults.get(s.name, "")])
    total = sum(s.capacity for s in t.sites)
    rows.append(["total", "", "", "", str(sum(len(s.edges) for s in t.sites)), str(total), "", ""])
    out += [""] + _table(rows)
    fleet = t.devices.fleet_size
    out.append("")
    out.append(f"devices: {fleet if fleet is not None else 'fleet size not stated'}"
               + (f" ({100 * fleet / total:.0f}% of edge capacity)" if fleet else ""))
    for o in t.devices.overrides:
        out.append(f"  prefix {o.prefix!r} -> {o.site}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.topology", description="Validate or summarise topology.yaml")
    p.add_argument("command", choices=["check", "show"])
    p.add_argument("file", nargs="?", help="topology document (default: $XZ_TOPOLOGY or the repository's)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    try:
        topo = load_topology(args.file)
    except TopologyError as exc:
        where = args.file or "topology"
        print(f"{where}: {len(exc.errors)} error(s)", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    if args.command == "check":
        print(f"{topo.source}: ok ({len(topo.regions)} regions, {len(topo.sites)} sites, "
              f"{sum(len(s.edges) for s in topo.sites)} edges, {len(topo.cloud.workers)} workers)")
    else:
        print(summary(topo))
    return 0
