"""The embedded default's NATS, secured (shared/nats_runtime.py): TLS everywhere, one user per role.

A hub and two site leaves with generated CA, certificates and passwords; every refusal is the
server's own answer (a permission violation, an authorization violation, a TLS requirement).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats
import nats.errors
import pytest
import pytest_asyncio

from shared.nats_conn import NatsCredentials, redact_url
from shared.nats_runtime import OPERATOR, NatsSecurity, site_user, start_hub, start_leaf, worker_user
from shared.policy import DEFAULT_POLICY
from shared.policy_store import PolicyStore

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture
async def secured(tmp_path):
    """Hub + leaves of sites a and b, secured; yields (security, hub, {site: leaf})."""
    security = NatsSecurity(tmp_path / "security", ["a", "b"], {"w1": "large"})
    hub = await start_hub("hub", workdir=tmp_path / "hub", security=security)
    leaves = {}
    for site in ("a", "b"):
        leaves[site] = await start_leaf(hub.leafnode_url, f"leaf-{site}", workdir=tmp_path / site,
                                        security=security, site=site)
    yield security, hub, leaves
    for node in (*leaves.values(), hub):
        await node.stop()


class Client:
    """A connection that records the asynchronous errors the server sends (permission violations)."""

    def __init__(self):
        self.errors: list[str] = []
        self.nc = None

    async def connect(self, url: str, creds: NatsCredentials, **kw) -> "Client":
        async def remember(exc):
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, error_cb=remember, allow_reconnect=False, **creds.connect_options(), **kw)
        return self

    async def denied(self, what: str, timeout: float = 5.0) -> str:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for e in self.errors:
                if "permissions violation" in e.lower() and what.lower() in e.lower():
                    return e
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permission violation for {what!r}; errors: {self.errors}")

    async def close(self):
        with contextlib.suppress(Exception):
            await self.nc.close()


async def test_files_are_created_once_and_reused(tmp_path):
    sec = NatsSecurity(tmp_path / "s", ["a"], {"w1": "large"})
    pw = sec.password(site_user("a"))
    cert = sec.host_cert("hub").cert.read_bytes()
    again = NatsSecurity(tmp_path / "s", ["a"], {"w1": "large"})
    assert again.password(site_user("a")) == pw and again.host_cert("hub").cert.read_bytes() == cert
    assert (tmp_path / "s" / "users" / site_user("a")).stat().st_mode & 0o077 == 0
    assert (tmp_path / "s" / "pki" / "ca-key.pem").stat().st_mode & 0o077 == 0
    assert sec.password(site_user("a")) != sec.password(worker_user("w1"))


async def test_roles_are_confined(secured):
    security, hub, leaves = secured
    worker = await Client().connect(hub.url, hub.credentials(worker_user("w1")))
    seen: list[str] = []

    async def answer(msg):
        seen.append(msg.subject)
        if msg.reply:
            await msg.respond(b"ok")

    await worker.nc.subscribe("xz.v1.escalate.large", queue="q", cb=answer)
    for site in ("a", "b"):
        await worker.nc.subscribe(f"xz.v1.cancel.{site}.*", cb=answer)
    await worker.nc.flush()
    a = await Client().connect(leaves["a"].url, leaves["a"].credentials(site_user("a")), inbox_prefix=b"_INBOX.a")
    b = await Client().connect(leaves["b"].url, leaves["b"].credentials(site_user("b")), inbox_prefix=b"_INBOX.b")
    try:
        reply = None
        for _ in range(75):  # the leaf links and interest propagation take a moment
            try:
                reply = await a.nc.request("xz.v1.escalate.large", b"turn", timeout=0.5)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.2)
        assert reply is not None and reply.data == b"ok"

        # site b may not read site a's replies, nor cancel its turns
        await b.nc.subscribe("_INBOX.a.>")
        await b.denied('subscription to "_inbox.a.>"')
        await b.nc.publish("xz.v1.cancel.a.turn1", b"")
        await b.denied('publish to "xz.v1.cancel.a.turn1"')
        # ... while its own cancels reach the worker
        await b.nc.publish("xz.v1.cancel.b.turn2", b"")
        await a.nc.publish("xz.v1.cancel.a.turn3", b"")
        for c in (a, b):
            await c.nc.flush()
        for _ in range(50):
            if {"xz.v1.cancel.b.turn2", "xz.v1.cancel.a.turn3"} <= set(seen):
                break
            await asyncio.sleep(0.1)
        assert {"xz.v1.cancel.b.turn2", "xz.v1.cancel.a.turn3"} <= set(seen)
        assert "xz.v1.cancel.a.turn1" not in seen
        # a site cannot forge a worker's heartbeat
        await a.nc.publish("xz.v1.worker.heartbeat.large.w1", b"forged")
        await a.denied('publish to "xz.v1.worker.heartbeat.large.w1"')

        # only the operator may put the policy; sites read it through their leaf (domain detected)
        with pytest.raises(Exception):
            await PolicyStore(b.nc, timeout=1.0).set(DEFAULT_POLICY)
        await b.denied("$js.hub.api.stream.create.kv_xz_policy")
        with pytest.raises(Exception):
            await PolicyStore(worker.nc, timeout=1.0).set(DEFAULT_POLICY)
        await worker.denied("$js.")
        op = await Client().connect(hub.url, hub.credentials(OPERATOR))
        store = PolicyStore(op.nc)
        rev = await store.set(DEFAULT_POLICY, note="by the operator")
        assert store.domain == "hub"
        got = await PolicyStore(a.nc).get()
        assert got is not None and got[1] == rev
        await op.close()
    finally:
        for c in (a, b, worker):
            await c.close()


async def test_strangers_are_refused(secured):
    security, hub, leaves = secured
    leaf = leaves["a"]
    ca_only = NatsCredentials(ca_file=leaf.credentials(site_user("a")).ca_file)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # anonymous, over TLS
        await nats.connect(leaf.url, allow_reconnect=False, **ca_only.connect_options())
    b_creds = leaf.credentials(site_user("b"))
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # another site's user
        await nats.connect(leaf.url, allow_reconnect=False, **b_creds.connect_options())
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # a site user at the hub
        await nats.connect(hub.url, allow_reconnect=False, **leaf.credentials(site_user("a")).connect_options())
    # a plaintext client: the server requires TLS before anything else
    for node in (leaf, hub):
        reader, writer = await asyncio.open_connection(node.host, node.port)
        info = json.loads((await reader.readline()).decode().split(" ", 1)[1])
        assert info["tls_required"] is True
        creds = node.credentials(site_user("a"))
        writer.write(f'CONNECT {{"user":"{creds.user}","pass":"{creds.password}","verbose":true}}\r\nPING\r\n'.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 10)
        assert b"PONG" not in answer and b"+OK" not in answer
        writer.close()


async def test_credentials_come_from_a_file_and_urls_are_redacted(tmp_path, secured):
    security, hub, _ = secured
    path = security.write_credentials(OPERATOR, hub.url)
    assert path.stat().st_mode & 0o077 == 0
    creds = NatsCredentials.from_file(path)
    assert creds.user == OPERATOR and creds.url == hub.url
    nc = await nats.connect(creds.url, allow_reconnect=False, **creds.connect_options())
    await nc.close()
    assert redact_url("nats://worker-1:s3cret@10.0.0.1:4222,tls://u:p@h:1") == "nats://worker-1:***@10.0.0.1:4222,tls://u:***@h:1"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


async def test_device_admission_follows_the_devices_kv_through_a_leaf(secured):
    """`cloud devices revoke/approve` (the operator's DevicesStore) reach an edge's admission without a restart."""
    from edge.device_access import DeviceAdmission
    from shared.device_store import DevicesStore
    from shared.topology import AuthSpec

    security, hub, leaves = secured
    admission = DeviceAdmission(AuthSpec(activation={"enabled": True}), "secret")
    site = await Client().connect(leaves["a"].url, leaves["a"].credentials(site_user("a")), inbox_prefix=b"_INBOX.a")
    op = await Client().connect(hub.url, hub.credentials(OPERATOR))
    watch = asyncio.create_task(admission.watch(site.nc, retry_s=0.2))
    try:
        device = "aa:bb:cc:dd:ee:01"
        code = admission.code_for(device)
        assert admission.admitted(device) == (False, "device not activated")
        store = DevicesStore(op.nc)
        await store.approve(code, "test")
        await store.revoke("11:22:33:44:55:66", "test")
        for _ in range(100):
            if admission.admitted(device)[0] and admission.revoked("11:22:33:44:55:66"):
                break
            await asyncio.sleep(0.1)
        assert admission.admitted(device) == (True, "")
        assert admission.revoked("11:22:33:44:55:66")
        await store.unrevoke("11:22:33:44:55:66")
        for _ in range(100):
            if not admission.revoked("11:22:33:44:55:66"):
                break
            await asyncio.sleep(0.1)
        assert not admission.revoked("11:22:33:44:55:66")
        # a site cannot approve itself
        with pytest.raises(Exception):
            await DevicesStore(site.nc, timeout=1.0).approve("123456")
        await site.denied("$kv.xz_devices.approved.123456")
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await site.close()
        await op.close()
