"""Tokens, and the WebSocket handshake checks (401 / 400 / 503 before the upgrade), health, metrics."""

from __future__ import annotations

import aiohttp
import pytest

from edge.tokens import TokenIssuer
from scripts.device_sim import DeviceSimulator, SimError

DEVICE = "aa:bb:cc:dd:ee:01"


def test_token_valid_expired_wrong_device_tampered():
    issuer = TokenIssuer("s3cret", ttl_s=60)
    token = issuer.issue(DEVICE, now=1000)
    assert " " not in token
    ok = issuer.verify(token, DEVICE, now=1010)
    assert ok and ok.device_id == DEVICE
    assert issuer.verify(token, DEVICE.upper(), now=1010)  # MAC case does not matter
    assert issuer.verify(token, now=1010).device_id == DEVICE  # no device id given: the token names it
    expired = issuer.verify(token, DEVICE, now=1061)
    assert not expired and "expired" in expired.reason
    other = issuer.verify(token, "aa:bb:cc:dd:ee:02", now=1010)
    assert not other and "another device" in other.reason
    head, dev, exp, sig = token.split(".")
    longer = f"{head}.{dev}.{int(exp) + 999999}.{sig}"
    assert issuer.verify(longer, DEVICE, now=1010).reason == "bad signature"
    assert issuer.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], DEVICE, now=1010).reason \
        == "bad signature"
    assert not TokenIssuer("other", 60).verify(token, DEVICE, now=1010)
    assert issuer.verify(None).reason == "missing token"
    assert issuer.verify("garbage").reason == "malformed token"


async def _handshake(url: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_handshake_auth(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    good = edge.token(DEVICE)
    base = {"Protocol-Version": "1", "Device-Id": DEVICE, "Client-Id": "c1"}
    assert await _handshake(edge.ws_url, {**base, "Authorization": f"Bearer {good}"}) == 101
    assert await _handshake(edge.ws_url, base) == 401  # missing
    assert await _handshake(edge.ws_url, {**base, "Authorization": "Bearer nope"}) == 401  # malformed
    expired = edge.token(DEVICE, ttl_s=-10)
    assert await _handshake(edge.ws_url, {**base, "Authorization": f"Bearer {expired}"}) == 401
    stolen = edge.token("aa:bb:cc:dd:ee:99")
    assert await _handshake(edge.ws_url, {**base, "Authorization": f"Bearer {stolen}"}) == 401
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    assert await _handshake(edge.ws_url, {**base, "Authorization": f"Bearer {tampered}"}) == 401
    # firmware builds that put the token in the query string
    assert await _handshake(f"{edge.ws_url}?token={good}", base) == 101
    assert await _handshake(f"{edge.ws_url}?access_token={good}&device-id={DEVICE}",
                            {"Protocol-Version": "1"}) == 101
    # a refused handshake is a plain HTTP 401 with a JSON reason
    async with aiohttp.ClientSession() as http:
        async with http.get(edge.ws_url, headers={**base, "Upgrade": "websocket", "Connection": "Upgrade",
                                                  "Sec-WebSocket-Version": "13",
                                                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            assert resp.status == 401
            assert (await resp.json())["message"] == "missing token"


async def test_allow_anonymous(edge_server, fake_engine):
    edge = await edge_server(fake_engine, edge={"auth": {"allow_anonymous": True}})
    assert await _handshake(edge.ws_url, {"Protocol-Version": "3", "Device-Id": DEVICE}) == 101
    assert await _handshake(edge.ws_url, {"Protocol-Version": "3"}) == 101  # no device id: one is made up
    sim = DeviceSimulator(edge.ws_url, None, DEVICE, protocol_version=3)
    hello = await sim.connect()
    assert hello["session_id"]
    await sim.close()


@pytest.mark.parametrize("version", ["0", "4", "x"])
async def test_unsupported_protocol_version_is_400(edge_server, fake_engine, version):
    edge = await edge_server(fake_engine)
    headers = {"Protocol-Version": version, "Device-Id": DEVICE, "Authorization": f"Bearer {edge.token(DEVICE)}"}
    assert await _handshake(edge.ws_url, headers) == 400


async def test_health_and_metrics_follow_engine_readiness(edge_server, fake_engine):
    fake_engine.ready = False
    edge = await edge_server(fake_engine)
    headers = {"Protocol-Version": "1", "Device-Id": DEVICE, "Authorization": f"Bearer {edge.token(DEVICE)}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(edge.base_url + "/health") as resp:
            assert resp.status == 503 and (await resp.json())["ready"] is False
        assert await _handshake(edge.ws_url, headers) == 503  # devices wait until the models are loaded
        await fake_engine.start()
        async with http.get(edge.base_url + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        async with http.get(edge.base_url + "/metrics") as resp:
            text = await resp.text()
            assert resp.status == 200 and "xz_edge_connected_devices" in text


async def test_simulator_reports_refused_handshake_in_one_line(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    with pytest.raises(SimError, match="HTTP 401"):
        await DeviceSimulator(edge.ws_url, "bad-token", DEVICE).connect()


def test_malformed_tokens_of_any_bytes_are_refused_not_raised():
    issuer = TokenIssuer("s3cret", ttl_s=60)
    good = issuer.issue(DEVICE, now=1000)
    for bad in ["v1.é.1.x", good + "é", "v1.\x00.1.x", "\udcff" * 5, "v1." + "ÿ" * 40, good.replace(".", "\u2024")]:
        check = issuer.verify(bad, DEVICE, now=1010)
        assert not check and check.reason == "malformed token"


def test_default_secret_is_refused_unless_allow_insecure_dev(monkeypatch):
    from shared.topology import TopologyError
    from tests.fixtures_edge import make_topology

    monkeypatch.delenv("XZ_TOKEN_SECRET", raising=False)
    with pytest.raises(TopologyError, match="insecure default token secret"):
        TokenIssuer.from_topology(make_topology({"auth": {"allow_insecure_dev": False}}))
    assert TokenIssuer.from_topology(make_topology({"auth": {"allow_insecure_dev": True}}))
    monkeypatch.setenv("XZ_TOKEN_SECRET", "a-real-secret")
    assert TokenIssuer.from_topology(make_topology({"auth": {"allow_insecure_dev": False}}))


async def test_non_ascii_bearer_is_401(edge_server, fake_engine):
    """Raw bytes in the Authorization header (what a broken or hostile client sends): 401, never 500."""
    import asyncio
    from urllib.parse import urlsplit

    edge = await edge_server(fake_engine)
    url = urlsplit(edge.ws_url)
    for token in (b"v1.\xc3\xa9\xc3\xbf.1.x", b"v1.\xff\xfe.1.x", "v1.ä.1.é".encode()):
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(b"GET " + url.path.encode() + b" HTTP/1.1\r\nHost: x\r\nProtocol-Version: 1\r\n"
                     b"Device-Id: " + DEVICE.encode() + b"\r\nAuthorization: Bearer " + token + b"\r\n"
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.split()[1] == b"401", (token, status)


async def test_revocation_applies_without_restart(edge_server, fake_engine):
    from edge.server import SERVER_KEY

    edge = await edge_server(fake_engine)
    token = edge.token(DEVICE)
    base = {"Protocol-Version": "1", "Device-Id": DEVICE, "Authorization": f"Bearer {token}"}
    assert await _handshake(edge.ws_url, base) == 101
    admission = edge.app[SERVER_KEY].admission
    admission.apply("revoked", DEVICE, True)  # what the devices KV watch does on `cloud devices revoke`
    assert await _handshake(edge.ws_url, base) == 401
    admission.apply("revoked", DEVICE, False)
    assert await _handshake(edge.ws_url, base) == 101
