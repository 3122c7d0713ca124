"""``python -m shared.topology check [FILE] | show [FILE]``.

``check`` validates a topology document and prints every error with its path in the
document (exit 1), ``show`` prints a readable summary of regions, cloud, sites and device
assignment. Tier names are checked against edge/tiers.py here, not in the model, so that
shared/ does not depend on the edge package.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from shared.topology import DEFAULT_PATH, Topology, TopologyError, load_topology


def tier_errors(doc: Any) -> list[str]:
    """Unknown tier names in a raw document (reported along with the model's own errors)."""
    try:
        from edge.tiers import TIER_NAMES
    except ImportError:  # a cloud-only install has no edge package
        return []
    allowed = set(TIER_NAMES) | {"auto"}
    known = ", ".join(("auto",) + TIER_NAMES)
    errors = []
    sites = doc.get("sites") if isinstance(doc, dict) else None
    for i, s in enumerate(sites if isinstance(sites, list) else []):
        if not isinstance(s, dict):
            continue
        if s.get("tier", "auto") not in allowed:
            errors.append(f"sites[{i}].tier: unknown tier {s['tier']!r} (known: {known})")
        edges = s.get("edges")
        for j, e in enumerate(edges if isinstance(edges, list) else []):
            if isinstance(e, dict) and e.get("tier") is not None and e["tier"] not in allowed:
                errors.append(f"sites[{i}].edges[{j}].tier: unknown tier {e['tier']!r} (known: {known})")
    return errors


def validate(path: str | None) -> Topology:
    """Load ``path`` and apply every check (the model, tier names, the tools section), all errors at once."""
    errors: list[str] = []
    topo: Topology | None = None
    try:
        topo = load_topology(path)
    except TopologyError as exc:
        errors = list(exc.errors)
    file = Path(path or os.environ.get("XZ_TOPOLOGY") or DEFAULT_PATH)
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError):
        raw = None  # already reported by load_topology
    errors += tier_errors(raw)
    if topo is not None:
        from edge.tools.config import load_tools_spec

        try:
            load_tools_spec(topo)
        except TopologyError as exc:
            errors += exc.errors
    if errors or topo is None:
        raise TopologyError(errors)
    return topo


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
        topo = validate(args.file)
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
