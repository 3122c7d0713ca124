"""The edge node's HTTP server: OTA, the device WebSocket, health and metrics.

Handshake checks happen before the upgrade, so a device with a bad token gets a
plain HTTP 401 (and one with an unsupported ``Protocol-Version`` a 400) instead
of a WebSocket that closes right away.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge import metrics
from edge.device_access import DeviceAdmission
from edge.ota import WS_PATH, ChooseEdge, OtaHandler, json_error
from edge.device.protocol import ProtocolError, check_version
from edge.device.session import DeviceSession
from edge.tokens import TokenIssuer
from shared.log import log_event
from shared.topology import Topology

log = logging.getLogger("edge.server")

ENGINE_KEY = web.AppKey("engine", object)
SESSIONS_KEY = web.AppKey("sessions", set)
SERVER_KEY = web.AppKey("server", object)
TEXT_MAX_BYTES = 256 * 1024  # JSON (e.g. an MCP tools page); binary frames are limited by max_frame_bytes


def _bearer(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer <t>`` (or a bare value), or ``?token=``/``?access_token=``."""
    auth = request.headers.get("Authorization", "").strip()
    if auth:
        scheme, _, rest = auth.partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest else auth
    return request.query.get("token") or request.query.get("access_token") or None


class EdgeServer:
    """Routes and handshake policy; one per process."""

    def __init__(self, topology: Topology, engine: Any, choose_edge: ChooseEdge | None = None):
        self.topology = topology
        self.settings = topology.edge
        self.engine = engine
        self.tokens = TokenIssuer.from_topology(topology)
        self.admission = DeviceAdmission(self.settings.auth, self.settings.auth.secret.resolve())
        self.ota = OtaHandler(topology, self.tokens, choose_edge, admission=self.admission)
        sessions = getattr(engine, "sessions", None)  # the engine's set when it keeps one (admission counts it)
        self.sessions: set[DeviceSession] = sessions if isinstance(sessions, set) else set()
        self._admission_watch: asyncio.Task | None = None
        if hasattr(engine, "on_cloud"):
            engine.on_cloud.append(self.watch_admission)

    def watch_admission(self, nc) -> None:
        """Follow revocations and approvals in the devices KV (from the engine's NATS connection)."""
        if self._admission_watch is None:
            self._admission_watch = asyncio.create_task(self.admission.watch(nc), name="devices-watch")

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        try:
            version = check_version(request.headers.get("Protocol-Version"))
        except ProtocolError as exc:
            metrics.PROTOCOL_ERRORS.labels(kind=exc.kind).inc()
            return json_error(400, exc.kind, exc.detail)
        device_id = (request.headers.get("Device-Id") or request.query.get("device-id") or "").strip()
        token = _bearer(request)
        check = self.tokens.verify(token, device_id or None)
        if check:
            admitted, reason = self.admission.admitted(check.device_id or device_id)
            if not admitted:  # revoked since the token was issued, or no longer allowed
                metrics.PROTOCOL_ERRORS.labels(kind="unauthorized").inc()
                log_event(log, "handshake refused", logging.WARNING, device=check.device_id, reason=reason)
                return json_error(401, "unauthorized", reason)
        if not check:
            if not self.settings.auth.allow_anonymous:
                metrics.PROTOCOL_ERRORS.labels(kind="unauthorized").inc()
                log_event(log, "handshake refused", logging.WARNING, device=device_id, reason=check.reason)
                return json_error(401, "unauthorized", check.reason)
        device_id = device_id or check.device_id or f"anonymous-{uuid.uuid4().hex[:8]}"
        if not getattr(self.engine, "ready", False):
            return json_error(503, "not_ready", "the edge is still loading its models")
        ws = web.WebSocketResponse(max_msg_size=max(TEXT_MAX_BYTES, self.settings.session.max_frame_bytes * 4),
                                   compress=False, autoping=True)
        await ws.prepare(request)
        session = DeviceSession(ws, self.engine, self.settings, device_id, version,
                                request.headers.get("Client-Id"),
                                self.ota.languages.of(device_id, request.headers.get("Accept-Language")))
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
        return ws

    async def health(self, request: web.Request) -> web.Response:
        """200 while the edge can answer somehow (per ``components``), 503 while it cannot (or is loading)."""
        health = self.engine.health() if hasattr(self.engine, "health") else {}
        ready = bool(getattr(self.engine, "ready", False))
        body = {**health, "ready": ready, "sessions": len(self.sessions)}
        return web.json_response(body, status=200 if ready and health.get("can_answer", True) else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every device socket (1001: going away) so devices reconnect elsewhere at once."""
        if self._admission_watch is not None:
            self._admission_watch.cancel()
        await asyncio.gather(*(s.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                               for s in list(self.sessions)), return_exceptions=True)


def create_app(topology: Topology, site_name: str | None = None, engine: Any = None,
               choose_edge: ChooseEdge | None = None) -> web.Application:
    """The edge's aiohttp application; ``engine`` is an EdgeEngine or a stand-in with the same interface."""
    topology.site(site_name)  # an unknown site fails here, with the names that exist
    server = EdgeServer(topology, engine, choose_edge)
    app = web.Application()
    app[ENGINE_KEY] = engine
    app[SESSIONS_KEY] = server.sessions
    app[SERVER_KEY] = server
    server.ota.add_routes(app)
    for path in (WS_PATH, WS_PATH.rstrip("/")):
        app.router.add_get(path, server.websocket)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.metrics)
    app.on_shutdown.append(server.on_shutdown)
    return app
