"""The OTA endpoint: where a xiaozhi device learns, at every boot, which edge to talk to.

The firmware POSTs its system info to ``OTA_URL`` (``/xiaozhi/ota/``) and reads
``websocket {url, token, version}`` and ``server_time``. We never answer
``mqtt`` (that would switch the device to MQTT+UDP). A device the deployment does
not admit (``edge/device_access.py``) gets no token: 403, or ``activation`` when the
firmware's activation flow is on. Which edge a device goes to is a pluggable
``choose_edge(device_id, request)`` so federation can assign devices to sites.
The ``Accept-Language`` of the check (the firmware's UI language, e.g. ``zh-CN``; else the
body's ``language``) is remembered per device: it is the language of that device's turns when the ASR names none.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from datetime import datetime
from typing import Awaitable, Callable, Union

from aiohttp import web
from cachetools import LRUCache

from edge import metrics
from edge.device_access import DeviceAdmission
from edge.tokens import TokenIssuer
from shared.languages import accept_language, device_language, primary_subtag
from shared.log import log_event
from shared.topology import Topology

log = logging.getLogger("edge.ota")

WS_PATH = "/xiaozhi/v1/"
ChooseEdge = Callable[[str, web.Request], Union[str, Awaitable[str]]]


def json_error(status: int, kind: str, message: str) -> web.Response:
    """Errors as JSON, so firmware logs and operators both get a readable line."""
    return web.json_response({"error": kind, "message": message}, status=status)


def request_ws_url(request: web.Request) -> str:
    """This edge's WebSocket URL as the device reached it (honours a TLS-terminating proxy)."""
    proto = request.headers.get("X-Forwarded-Proto", request.scheme)
    scheme = "wss" if proto in ("https", "wss") else "ws"
    host = request.headers.get("X-Forwarded-Host", request.host)
    return f"{scheme}://{host}{WS_PATH}"


def own_edge_chooser(topology: Topology) -> ChooseEdge:
    """Default: every device stays on this edge (``edge.public_url``, else the request's host)."""
    public = topology.edge.public_url

    def choose(device_id: str, request: web.Request) -> str:
        return public or request_ws_url(request)

    return choose


class DeviceLanguages:
    """Each device's default language (for turns the ASR names none of, e.g. wake-word turns).

    On an edge whose ASR has a fixed language (``edge.asr.language`` not ``auto``) that language:
    the edge speaks it, whatever the firmware's UI language (a zh-CN device on an English edge is
    greeted in English, not by espeak-ng in Mandarin). Else the device's topology override
    (``devices.languages``), else the ``Accept-Language`` of its last OTA check, else ``default``.
    Accept-Language is remembered in memory for the ``max_devices`` most recent devices (a device
    checks OTA at every boot, so one evicted, or served by an edge restarted since, gets the default)."""

    def __init__(self, topology: Topology, max_devices: int = 10_000, default: str = "en"):
        self.topology = topology
        self.default = default
        asr_language = topology.edge.asr.language
        self.fixed = "" if asr_language == "auto" else primary_subtag(asr_language)
        self._heard: LRUCache[str, str] = LRUCache(max_devices)

    def remember(self, device_id: str, header: str | None) -> None:
        if language := accept_language(header):
            self._heard[device_id] = language

    def of(self, device_id: str, header: str | None = None) -> str:
        """``device_id``'s default language; ``header``: an Accept-Language sent now (the WebSocket handshake's)."""
        return self.fixed or device_language(self.topology, device_id, header or self._heard.get(device_id),
                                             self.default)


def server_time() -> dict[str, int]:
    """Devices set their clock from this (needed for TLS); offset in minutes east of UTC."""
    offset = datetime.now().astimezone().utcoffset()
    return {"timestamp": int(time.time() * 1000),
            "timezone_offset": int(offset.total_seconds() // 60) if offset else 0}


class OtaHandler:
    """``POST /xiaozhi/ota/`` and ``POST /xiaozhi/ota/activate``."""

    def __init__(self, topology: Topology, tokens: TokenIssuer, choose_edge: ChooseEdge | None = None,
                 ws_version: int = 1, admission: DeviceAdmission | None = None):
        self.tokens = tokens
        self.admission = admission
        self.languages = DeviceLanguages(topology)
        self.choose_edge = choose_edge or own_edge_chooser(topology)
        self.ws_version = ws_version

    def add_routes(self, app: web.Application) -> None:
        for path in ("/xiaozhi/ota/", "/xiaozhi/ota"):
            app.router.add_route("POST", path, self.ota)
            app.router.add_route("GET", path, self.ota)  # firmware without system info uses GET
        for path in ("/xiaozhi/ota/activate", "/xiaozhi/ota/activate/"):
            app.router.add_post(path, self.activate)

    async def _system_info(self, request: web.Request) -> dict | None:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    async def ota(self, request: web.Request) -> web.Response:
        device_id = request.headers.get("Device-Id", "").strip()
        if not device_id:
            metrics.PROTOCOL_ERRORS.labels(kind="ota_no_device_id").inc()
            return json_error(400, "missing_device_id", "the Device-Id header is required")
        info = await self._system_info(request)
        if info is None:
            metrics.PROTOCOL_ERRORS.labels(kind="ota_bad_body").inc()
            return json_error(400, "bad_body", "the request body must be a JSON object (system info)")
        said = request.headers.get("Accept-Language") or info.get("language")  # the body has it too ("zh-CN")
        self.languages.remember(device_id, said if isinstance(said, str) else None)
        if self.admission is not None:
            admitted, reason = self.admission.admitted(device_id)
            if not admitted and reason == "device not activated":
                log_event(log, "ota activation", device=device_id, serial=request.headers.get("Serial-Number"))
                return web.json_response({"server_time": server_time(), "activation": self.admission.start_activation(
                    device_id, request.headers.get("Serial-Number", ""))})
            if not admitted:
                metrics.PROTOCOL_ERRORS.labels(kind="ota_refused").inc()
                log_event(log, "ota refused", logging.WARNING, device=device_id, reason=reason)
                return json_error(403, "forbidden", reason)
        try:
            url = self.choose_edge(device_id, request)
            if inspect.isawaitable(url):
                url = await url
        except Exception as exc:  # e.g. discovery unreachable: the device retries with back-off
            metrics.ERRORS.labels(kind="ota_choose_edge").inc()
            log_event(log, "no edge for device", logging.ERROR, device=device_id, error=f"{type(exc).__name__}: {exc}")
            return json_error(503, "no_edge", "no edge available for this device right now")
        app = info.get("application") if isinstance(info.get("application"), dict) else {}
        log_event(log, "ota check", device=device_id, client=request.headers.get("Client-Id"),
                  user_agent=request.headers.get("User-Agent"), firmware=app.get("version"), ws_url=url)
        return web.json_response({
            "server_time": server_time(),
            "websocket": {"url": url, "token": self.tokens.issue(device_id), "version": self.ws_version},
        })

    async def activate(self, request: web.Request) -> web.Response:
        """The firmware's activation poll: 200 done, 202 waiting for the operator, 400/403 refused."""
        body = await self._system_info(request)
        if body is None:
            return json_error(400, "bad_body", "the request body must be a JSON object")
        if self.admission is None:
            return web.json_response({"status": "ok"})
        status, message = self.admission.check_activation(body, request.headers.get("Device-Id", "").strip())
        if status >= 400:
            return json_error(status, "activation_refused", message)
        return web.json_response({"status": "ok" if status == 200 else "waiting", "message": message}, status=status)
