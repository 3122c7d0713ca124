"""A small stand-in for a Consul agent's HTTP API, for tests only.

No Consul binary can be installed on these machines, so the Consul backend is tested
against this double. It implements exactly what shared/discovery.py and
shared/registration.py call through py-consul, with the documented request and response
shapes (https://developer.hashicorp.com/consul/api-docs):

* ``PUT /v1/agent/service/register`` (JSON service definition, keys case-insensitive as in
  Consul; ``checks`` with ``http``/``interval``/``timeout``; re-registering keeps each
  check's status, as the agent does);
* ``PUT /v1/agent/service/deregister/<id>`` (404 ``Unknown service ID`` if unknown);
* ``GET /v1/health/service/<name>`` with ``passing`` and ``tag`` filters, answering
  ``[{"Node", "Service", "Checks"}]`` and an ``X-Consul-Index`` header.

HTTP checks really run (a GET every ``interval``; 2xx passing, 429 warning, else critical;
new checks start critical), so "an edge stopped answering /health" is observed the same way
Consul observes it. Set ``CONSUL_HTTP_ADDR`` to run the tests against a real agent instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from shared.nats_runtime import free_port

NODE = {"ID": "00000000-0000-0000-0000-000000000001", "Node": "consul-double", "Address": "127.0.0.1",
        "Datacenter": "dc1", "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"}, "Meta": {}}

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def parse_duration(text: str | None, default: float) -> float:
    """Consul/Go duration strings as used in check definitions ("10s", "500ms", "1m")."""
    if not text:
        return default
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _lower_keys(d: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in d.items()}


@dataclass
class _Check:
    check_id: str
    service_id: str
    service_name: str
    url: str
    interval: float
    timeout: float
    status: str = "critical"
    output: str = ""
    task: asyncio.Task | None = None

    def as_json(self) -> dict[str, Any]:
        return {"Node": NODE["Node"], "CheckID": self.check_id, "Name": f"Service '{self.service_name}' check",
                "Status": self.status, "Notes": "", "Output": self.output, "ServiceID": self.service_id,
                "ServiceName": self.service_name, "ServiceTags": [], "Type": "http", "Definition": {},
                "CreateIndex": 1, "ModifyIndex": 1}


@dataclass
class _Service:
    definition: dict[str, Any]
    checks: list[_Check] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        d = self.definition
        return {"ID": d["id"], "Service": d["name"], "Tags": d.get("tags") or [], "Address": d.get("address", ""),
                "Meta": d.get("meta") or {}, "Port": d.get("port", 0), "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": False, "Datacenter": NODE["Datacenter"], "CreateIndex": 1, "ModifyIndex": 1}


class ConsulDouble:
    """start()/stop() an aiohttp server on a free port; ``url`` is what CONSUL_HTTP_ADDR would be."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.services: dict[str, _Service] = {}
        self.index = 1
        self.requests: list[tuple[str, str]] = []  # (method, path): what the client really called
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/v1/agent/service/register", self._register)
        app.router.add_put("/v1/agent/service/deregister/{service_id}", self._deregister)
        app.router.add_get("/v1/health/service/{name}", self._health_service)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._http = aiohttp.ClientSession()
        for svc in self.services.values():  # a restarted agent resumes its checks
            for check in svc.checks:
                check.task = asyncio.create_task(self._run_check(check))

    async def stop(self) -> None:
        """Stop answering (state is kept, as an agent's local state survives a restart)."""
        for svc in self.services.values():
            for check in svc.checks:
                await self._cancel(check)
        if self._runner:
            await self._runner.cleanup()
            self._runner = None
        if self._http:
            await self._http.close()
            self._http = None

    # ------------------------------------------------------------ handlers
    async def _register(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        try:
            body = _lower_keys(await request.json())
        except ValueError:
            return web.Response(status=400, text="Request decode failed")
        if not body.get("name"):
            return web.Response(status=400, text="Missing service name")
        body.setdefault("id", body["name"])
        old = self.services.get(body["id"])
        previous = {c.check_id: c for c in (old.checks if old else [])}
        checks_def = [_lower_keys(c) for c in (body.get("checks") or ([body["check"]] if body.get("check") else []))]
        checks: list[_Check] = []
        for i, c in enumerate(checks_def):
            if not c.get("http"):
                return web.Response(status=400, text="only HTTP checks are implemented by the double")
            check_id = c.get("checkid") or c.get("id") or f"service:{body['id']}" + (f":{i + 1}" if len(checks_def) > 1 else "")
            try:
                check = _Check(check_id, body["id"], body["name"], c["http"], parse_duration(c.get("interval"), 10),
                               parse_duration(c.get("timeout"), 10))
            except ValueError as exc:
                return web.Response(status=400, text=str(exc))
            kept = previous.pop(check_id, None)
            if kept is not None:  # Consul keeps a re-registered check's status
                check.status, check.output = kept.status, kept.output
                await self._cancel(kept)
            check.task = asyncio.create_task(self._run_check(check))
            checks.append(check)
        for stale in previous.values():
            await self._cancel(stale)
        self.services[body["id"]] = _Service(body, checks)
        self.index += 1
        return web.Response(status=200)

    async def _deregister(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        svc = self.services.pop(request.match_info["service_id"], None)
        if svc is None:
            return web.Response(status=404, text=f'Unknown service ID "{request.match_info["service_id"]}"')
        for check in svc.checks:
            await self._cancel(check)
        self.index += 1
        return web.Response(status=200)

    async def _health_service(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        name = request.match_info["name"]
        passing = "passing" in request.query and request.query["passing"] not in ("0", "false")
        tags = request.query.getall("tag", [])
        out = []
        for svc in sorted(self.services.values(), key=lambda s: s.definition["id"]):
            if svc.definition["name"] != name:
                continue
            if any(t not in (svc.definition.get("tags") or []) for t in tags):
                continue
            if passing and any(c.status != "passing" for c in svc.checks):
                continue
            serf = {"Node": NODE["Node"], "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
                    "ServiceID": "", "ServiceName": "", "Output": "Agent alive and reachable", "Type": ""}
            out.append({"Node": NODE, "Service": svc.as_json(), "Checks": [serf] + [c.as_json() for c in svc.checks]})
        return web.json_response(out, headers={"X-Consul-Index": str(self.index),
                                               "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"})

    # ------------------------------------------------------------ checks
    async def _cancel(self, check: _Check) -> None:
        if check.task:
            check.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await check.task
            check.task = None

    async def _run_check(self, check: _Check) -> None:
        while True:
            try:
                assert self._http is not None
                async with self._http.get(check.url, timeout=aiohttp.ClientTimeout(total=check.timeout)) as resp:
                    body = await resp.text()
                    status = "passing" if 200 <= resp.status < 300 else ("warning" if resp.status == 429 else "critical")
                    output = f"HTTP GET {check.url}: {resp.status} Output: {body[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                status, output = "critical", f"Get {check.url}: {exc!r}"
            if status != check.status:
                self.index += 1
            check.status, check.output = status, output
            await asyncio.sleep(check.interval)


class HealthEndpoint:
    """A stand-in service's ``/health`` (what the edge server and cloud worker expose) with a settable status."""

    def __init__(self, status: int = 200):
        self.status = status
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": self.status == 200}, status=self.status)
