"""The OTA endpoint as the firmware calls it (main/ota.cc): headers, system-info body, answer shape."""

from __future__ import annotations

import time

import aiohttp

from edge.tokens import TokenIssuer

DEVICE = "aa:bb:cc:dd:ee:10"
FIRMWARE_HEADERS = {
    "Device-Id": DEVICE,
    "Client-Id": "1f2e3d4c-0000-4000-8000-123456789abc",
    "User-Agent": "bread-compact-wifi/1.7.6",
    "Accept-Language": "zh-CN",
    "Activation-Version": "2",
    "Serial-Number": "SN-0001",
    "Content-Type": "application/json",
}
SYSTEM_INFO = {
    "version": 2, "language": "zh-CN", "flash_size": 16777216, "minimum_free_heap_size": 7265024,
    "mac_address": DEVICE, "uuid": "1f2e3d4c-0000-4000-8000-123456789abc", "chip_model_name": "esp32s3",
    "chip_info": {"model": 9, "cores": 2, "revision": 2, "features": 18},
    "application": {"name": "xiaozhi", "version": "1.7.6", "compile_time": "Jun 1 2025T10:00:00Z",
                    "idf_version": "v5.4", "elf_sha256": "ab" * 32},
    "partition_table": [{"label": "nvs", "type": 1, "subtype": 2, "address": 36864, "size": 16384}],
    "ota": {"label": "ota_0"},
    "board": {"type": "bread-compact-wifi", "name": "bread-compact-wifi", "ssid": "lab", "rssi": -50,
              "channel": 1, "ip": "192.168.1.20", "mac": DEVICE},
    "some_future_field": {"nested": [1, 2, 3]},
}


async def _post(url: str, **kw) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, **kw) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_firmware_request_gets_websocket_and_server_time(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    before = time.time() * 1000
    status, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=FIRMWARE_HEADERS)
    assert status == 200
    assert "mqtt" not in body and "activation" not in body  # devices stay on WebSocket, need no pairing
    ws = body["websocket"]
    assert ws["url"] == edge.ws_url  # derived from the request host
    assert ws["version"] in (1, 2, 3)
    assert " " not in ws["token"]
    assert TokenIssuer.from_topology(edge.topology).verify(ws["token"], DEVICE)
    st = body["server_time"]
    assert before - 1000 <= st["timestamp"] <= time.time() * 1000 + 1000
    assert isinstance(st["timezone_offset"], int) and -14 * 60 <= st["timezone_offset"] <= 14 * 60


async def test_unknown_missing_fields_and_empty_body_are_fine(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    status, body = await _post(edge.ota_url, json={"surprise": True}, headers={"Device-Id": DEVICE})
    assert status == 200 and body["websocket"]["url"]
    status, body = await _post(edge.ota_url, headers={"Device-Id": DEVICE})  # no body at all
    assert status == 200 and body["websocket"]["token"]
    async with aiohttp.ClientSession() as http:  # firmware without system info uses GET
        async with http.get(edge.ota_url.rstrip("/"), headers={"Device-Id": DEVICE}) as resp:
            assert resp.status == 200 and "websocket" in await resp.json()


async def test_missing_device_id_and_bad_body_are_400_json(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    headers = {k: v for k, v in FIRMWARE_HEADERS.items() if k != "Device-Id"}
    status, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=headers)
    assert status == 400 and body["error"] == "missing_device_id"
    status, body = await _post(edge.ota_url, data=b"{this is not json", headers=FIRMWARE_HEADERS)
    assert status == 400 and body["error"] == "bad_body"
    status, body = await _post(edge.ota_url, data=b"[1,2]", headers=FIRMWARE_HEADERS)
    assert status == 400 and body["error"] == "bad_body"


async def test_public_url_and_pluggable_chooser(edge_server, fake_engine):
    edge = await edge_server(fake_engine, edge={"public_url": "wss://edge.example.org/xiaozhi/v1/"})
    _, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=FIRMWARE_HEADERS)
    assert body["websocket"]["url"] == "wss://edge.example.org/xiaozhi/v1/"

    seen = []

    async def choose(device_id, request):
        seen.append(device_id)
        return f"ws://site-{device_id[-2:]}.example:8000/xiaozhi/v1/"

    edge2 = await edge_server(fake_engine, choose_edge=choose)
    _, body = await _post(edge2.ota_url, json=SYSTEM_INFO, headers=FIRMWARE_HEADERS)
    assert body["websocket"]["url"] == "ws://site-10.example:8000/xiaozhi/v1/" and seen == [DEVICE]
    _, body = await _post(edge2.ota_url, json=SYSTEM_INFO, headers={**FIRMWARE_HEADERS, "Device-Id": "x:y:z:42"})
    assert body["websocket"]["url"].startswith("ws://site-42.")

    def broken(device_id, request):
        raise LookupError("discovery is down")

    edge3 = await edge_server(fake_engine, choose_edge=broken)
    status, body = await _post(edge3.ota_url, json=SYSTEM_INFO, headers=FIRMWARE_HEADERS)
    assert status == 503 and body["error"] == "no_edge"


async def test_activate_is_accepted(edge_server, fake_engine):
    edge = await edge_server(fake_engine)
    status, _ = await _post(edge.ota_url + "activate", headers=FIRMWARE_HEADERS,
                            json={"algorithm": "hmac-sha256", "serial_number": "SN-0001", "challenge": "c",
                                  "hmac": "00"})
    assert status == 200


async def test_token_from_ota_opens_a_session(edge_server, fake_engine):
    from scripts.device_sim import DeviceSimulator

    edge = await edge_server(fake_engine)
    sim = await DeviceSimulator.from_ota(edge.ota_url, DEVICE)
    hello = await sim.connect()
    assert hello["transport"] == "websocket" and hello["audio_params"]["sample_rate"] == 24000
    await sim.close()


# ---------------------------------------------------------------- device admission
async def test_allow_list_and_static_revocation(edge_server, fake_engine):
    edge = await edge_server(fake_engine, edge={"auth": {"allowed_devices": ["aa:bb:cc"], "revoked": [DEVICE]}})
    status, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=FIRMWARE_HEADERS)
    assert status == 403 and body["message"] == "device revoked"
    other = {**FIRMWARE_HEADERS, "Device-Id": "11:22:33:44:55:66"}
    status, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=other)
    assert status == 403 and body["message"] == "device not allowed" and "websocket" not in body
    listed = {**FIRMWARE_HEADERS, "Device-Id": "aa:bb:cc:00:00:01"}
    status, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=listed)
    assert status == 200 and body["websocket"]["token"]


async def test_firmware_activation_flow(edge_server, fake_engine, tmp_path):
    """OTA answers `activation`, /activate says 202 until the operator approves the code, then 200 and a token;
    the device proves its eFuse key exactly as the firmware computes it (HMAC-SHA256 of the challenge, hex)."""
    from edge.device_access import activation_hmac
    from edge.server import SERVER_KEY

    key = bytes(range(32))
    keys = tmp_path / "device-keys"
    keys.write_text(f"# serial key\nSN-0001 {key.hex()}\n")
    edge = await edge_server(fake_engine, edge={"auth": {"activation": {
        "enabled": True, "device_keys": {"file": str(keys), "env": "XZ_TEST_UNSET_KEYS"}}}})
    status, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=FIRMWARE_HEADERS)
    assert status == 200 and "websocket" not in body
    act = body["activation"]
    assert act["code"].isdigit() and len(act["code"]) == 6 and act["code"] in act["message"]
    assert act["challenge"] and act["timeout_ms"] > 0
    payload = {"algorithm": "hmac-sha256", "serial_number": "SN-0001", "challenge": act["challenge"],
               "hmac": activation_hmac(key, act["challenge"])}
    status, body = await _post(edge.ota_url + "activate", headers=FIRMWARE_HEADERS, json=payload)
    assert status == 202  # waiting for the operator
    status, _ = await _post(edge.ota_url + "activate", headers=FIRMWARE_HEADERS,
                            json={**payload, "hmac": "00" * 32})
    assert status == 403  # a device without the key cannot activate
    status, _ = await _post(edge.ota_url + "activate", headers=FIRMWARE_HEADERS, json={**payload, "challenge": "x"})
    assert status == 400
    admission = edge.app[SERVER_KEY].admission
    admission.apply("approved", act["code"], True)  # what the devices KV watch does on `cloud devices approve`
    status, body = await _post(edge.ota_url + "activate", headers=FIRMWARE_HEADERS, json=payload)
    assert status == 200
    status, body = await _post(edge.ota_url, json=SYSTEM_INFO, headers=FIRMWARE_HEADERS)
    assert status == 200 and body["websocket"]["token"] and "activation" not in body
