"""The ``tools:`` section of topology.yaml: which server tools each site enables, and how the LLM calls tools.

    tools:
      mode: auto              # auto | native | grammar | off
      max_steps: 3            # LLM rounds per turn (tool rounds + the spoken answer)
      device_timeout_s: 5     # a device tools/call that takes longer is an apology
      timezone: UTC           # default device timezone for get_time
      enabled: [get_time, calculate]
      sites:
        local-site: {enabled: [get_time, calculate, weather], timezone: Europe/Berlin}
      devices:
        - {prefix: "aa:bb:", timezone: Asia/Shanghai}
      http:
        - name: weather
          description: Current temperature for a place given as latitude and longitude.
          url: "https://api.open-meteo.com/v1/forecast?latitude={lat}&longitude={lon}&current=temperature_2m"
          parameters: {type: object, properties: {lat: {type: number}, lon: {type: number}}, required: [lat, lon]}
          result_path: current.temperature_2m
          result_prefix: "Temperature in Celsius: "

``mode: auto`` uses the server's native tool calling for vLLM/Ollama/OpenAI and
grammar-forced JSON for llama.cpp (whose chat templates of small models have no
tool support); see shared.grammar_tools.
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.tools.calculator import calculator_tool
from edge.tools.clock import clock_tool
from edge.tools.http_tool import HttpToolSpec, http_tool
from edge.tools.registry import Tool, ToolContext, ToolRegistry
from shared.topology import Topology, TopologyError

ToolMode = Literal["auto", "native", "grammar", "off"]


def _check_tz(tz: str | None) -> str | None:
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {tz!r} (use an IANA name like Europe/Berlin)") from None
    return tz


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteTools(_Model):
    enabled: list[str] | None = None  # None: the global list
    timezone: str | None = None

    _tz = field_validator("timezone")(classmethod(lambda cls, v: _check_tz(v)))


class DeviceTimezone(_Model):
    prefix: str
    timezone: str

    _tz = field_validator("timezone")(classmethod(lambda cls, v: _check_tz(v)))


class ToolsSpec(_Model):
    mode: ToolMode = "auto"
    max_steps: int = Field(3, ge=1, le=8)
    device_timeout_s: float = Field(5.0, gt=0, le=60)
    timezone: str = "UTC"
    enabled: list[str] = ["get_time", "calculate"]
    sites: dict[str, SiteTools] = {}
    devices: list[DeviceTimezone] = []
    http: list[HttpToolSpec] = []

    _tz = field_validator("timezone")(classmethod(lambda cls, v: _check_tz(v)))

    @model_validator(mode="after")
    def _known_names(self) -> "ToolsSpec":
        known = set(builtin_tools()) | {h.name for h in self.http}
        for where, names in [("enabled", self.enabled)] + [
                (f"sites.{s}.enabled", t.enabled or []) for s, t in self.sites.items()]:
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(f"{where}: unknown tools {unknown} (known: {sorted(known)})")
        return self

    def enabled_for(self, site: str | None) -> list[str]:
        per_site = self.sites.get(site) if site else None
        return per_site.enabled if per_site and per_site.enabled is not None else self.enabled

    def context(self, site: str | None, device_id: str | None) -> ToolContext:
        """The device's timezone: a device prefix rule, else its site's, else the default."""
        tz = self.timezone
        if site and site in self.sites and self.sites[site].timezone:
            tz = self.sites[site].timezone
        for rule in self.devices:
            if device_id and device_id.startswith(rule.prefix):
                tz = rule.timezone
                break
        return ToolContext(device_id=device_id, timezone=tz)


def builtin_tools() -> dict[str, Tool]:
    return {t.name: t for t in (clock_tool(), calculator_tool())}


def load_tools_spec(topology: Topology) -> ToolsSpec:
    """The validated ``tools`` section (defaults when absent); TopologyError naming the path otherwise."""
    raw = (topology.model_extra or {}).get("tools") or {}
    try:
        spec = ToolsSpec.model_validate(raw)
    except ValidationError as exc:
        raise TopologyError([f"{'.'.join(['tools', *map(str, e['loc'])])}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors()]) from None
    sites = {s.name for s in topology.sites}
    unknown = sorted(set(spec.sites) - sites)
    if unknown:
        raise TopologyError([f"tools.sites: unknown sites {unknown} (have: {sorted(sites)})"])
    return spec


def build_server_tools(spec: ToolsSpec, site: str | None = None) -> ToolRegistry:
    """The server tools a site enables, ready to merge with a session's device tools."""
    available = builtin_tools() | {h.name: http_tool(h) for h in spec.http}
    return ToolRegistry(available[name] for name in spec.enabled_for(site))
