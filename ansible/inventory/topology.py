#!/usr/bin/env python3
"""Ansible dynamic inventory from topology.yaml (``--list`` / ``--host NAME``).

Reads ``XZ_TOPOLOGY`` (default: the repository's topology.yaml) through the same validated
model as every other component, so a broken document stops provisioning with the same
``path: message`` errors as ``python -m shared.topology check``.

Groups: ``cloud`` (``nats_hub``, ``consul_servers``, ``cloud_workers``), ``edge``
(``nats_leaf``, ``edge_nodes``), ``consul_agents``, ``monitoring``, ``region_<name>`` and
``site_<name>``. Secrets stay references ({env, file}); the playbook resolves them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv" / "bin" / "python"

sys.path.insert(0, str(ROOT))
try:
    from shared import subjects
    from shared.nats_permissions import JS_DOMAIN
    from shared.topology import Topology, TopologyError, load_topology
except ImportError:  # run by a system python without the project's dependencies: use the venv's
    if VENV_PY.exists() and Path(sys.executable).resolve() != VENV_PY.resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
    raise


def _group_name(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _ref(secret) -> dict | None:
    return secret.model_dump(exclude_none=True, exclude={"default"}) if secret else None


def build(t: Topology) -> dict:
    hostvars: dict[str, dict] = {}
    groups: dict[str, dict] = {}

    def add(group: str, host: str) -> None:
        groups.setdefault(group, {"hosts": [], "children": []})["hosts"].append(host)

    def child(parent: str, name: str) -> None:
        kids = groups.setdefault(parent, {"hosts": [], "children": []})["children"]
        if name not in kids:
            kids.append(name)

    hub_names = [n.name for n in t.cloud.nats.hub]
    for node in t.cloud.nats.hub:
        hostvars[node.name] = {"ansible_host": node.host, "xz_layer": "cloud", "xz_region": t.cloud.region,
                               "xz_hub": node.model_dump(), "xz_hub_peers": [p for p in hub_names if p != node.name]}
        add("nats_hub", node.name)
        add(f"region_{_group_name(t.cloud.region)}", node.name)
    for i, host in enumerate(t.cloud.consul.servers):
        name = f"consul-{i + 1}"
        hostvars[name] = {"ansible_host": host, "xz_layer": "cloud", "xz_region": t.cloud.region,
                          "xz_consul_server": True}
        add("consul_servers", name)
        add("consul_agents", name)
    for w in t.cloud.workers:
        hostvars[w.name] = {"ansible_host": w.host, "xz_layer": "cloud", "xz_region": t.cloud.region,
                            "xz_worker": w.model_dump(exclude={"nats_password"}, exclude_none=True),
                            "xz_nats_password_ref": _ref(w.nats_password),
                            "xz_nats_user": f"worker-{w.name}", "xz_consul_server": False}
        for b in w.backends:  # secrets stay references
            hostvars[w.name]["xz_worker"]["backends"][w.backends.index(b)].pop("api_key", None)
        add("cloud_workers", w.name)
        add("consul_agents", w.name)
        add(f"region_{_group_name(t.cloud.region)}", w.name)
    for s in t.sites:
        site_group = f"site_{_group_name(s.name)}"
        leaf = f"{s.name}-leaf"
        hostvars[leaf] = {"ansible_host": s.nats_leaf.host, "xz_layer": "edge", "xz_region": s.region,
                          "xz_site": s.name, "xz_leaf": s.nats_leaf.model_dump(exclude={"password"}),
                          "xz_nats_password_ref": _ref(s.nats_leaf.password), "xz_nats_user": f"leaf-{s.name}",
                          "xz_site_password_ref": _ref(s.nats_leaf.site_password)}
        add("nats_leaf", leaf)
        add(site_group, leaf)
        for e in s.edges:
            hostvars[e.name] = {"ansible_host": e.host, "xz_layer": "edge", "xz_region": s.region,
                                "xz_site": s.name, "xz_edge": e.model_dump(exclude_none=True),
                                "xz_tier": e.tier or s.tier, "xz_location": s.location.model_dump(),
                                "xz_site_password_ref": _ref(s.nats_leaf.site_password),
                                "xz_consul_server": False}
            add("edge_nodes", e.name)
            add("consul_agents", e.name)
            add(site_group, e.name)
        child(f"region_{_group_name(s.region)}", site_group)
    hostvars["monitoring"] = {"ansible_host": t.monitoring.host, "xz_layer": "monitoring", "xz_region": t.cloud.region}
    add("monitoring", "monitoring")
    for parent, kids in (("cloud", ["nats_hub", "consul_servers", "cloud_workers"]), ("edge", ["nats_leaf", "edge_nodes"])):
        for kid in kids:
            if kid in groups:
                child(parent, kid)
    out: dict = {name: {"hosts": g["hosts"], "children": g["children"]} for name, g in groups.items()}
    out["all"] = {"children": sorted(set(out) - {"all"} - {c for g in groups.values() for c in g["children"]}),
                  "vars": {"xz_topology": t.model_dump(mode="json", by_alias=True),
                           "xz_topology_file": str(Path(t.source).resolve()) if t.source else "",
                           "xz_subjects": {"escalate_prefix": subjects.ESCALATE_PREFIX,
                                           "cancel_prefix": subjects.CANCEL_PREFIX,
                                           "heartbeat_prefix": subjects.HEARTBEAT_PREFIX,
                                           "policy_bucket": subjects.POLICY_BUCKET,
                                           "js_domain": JS_DOMAIN}}}
    out["_meta"] = {"hostvars": hostvars}
    return out


def main(argv: list[str]) -> int:
    try:
        topology = load_topology()
    except TopologyError as exc:
        print("topology: " + "\n  ".join(["invalid:"] + exc.errors), file=sys.stderr)
        return 1
    inventory = build(topology)
    if len(argv) >= 1 and argv[0] == "--list":
        print(json.dumps(inventory, indent=2))
    elif len(argv) == 2 and argv[0] == "--host":
        print(json.dumps(inventory["_meta"]["hostvars"].get(argv[1], {}), indent=2))
    else:
        print("usage: topology.py --list | --host NAME", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
