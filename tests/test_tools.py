"""Server tools, schema validation, the registry and the topology `tools:` section."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml
from aiohttp import web

from edge.tools.calculator import CalcError, calculate
from edge.tools.clock import now_text
from edge.tools.config import build_server_tools, builtin_tools, tool_context
from edge.tools.http_tool import http_tool
from edge.tools.registry import Tool, ToolContext, ToolError, ToolRegistry, mcp_result_text
from shared.tool_calling import llm_name
from edge.tools.schema import ArgumentError, BadSchema, check_schema, validate_arguments
from shared.nats_runtime import free_port
from shared.topology import BUILTIN_TOOLS, DEFAULT_PATH, HttpToolSpec, TopologyError, ToolsSpec, parse_topology

CTX = ToolContext(device_id="aa:bb", timezone="Asia/Shanghai")


# ---------------------------------------------------------------- schema
VOLUME = {"type": "object", "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
          "required": ["volume"]}


def test_schema_accepts_valid_json_text_and_dicts():
    assert validate_arguments(VOLUME, '{"volume": 30}') == {"volume": 30}
    assert validate_arguments(VOLUME, {"volume": 0}) == {"volume": 0}
    assert validate_arguments({"type": "object"}, "") == {}


@pytest.mark.parametrize("raw, needle", [
    ('{"volume": 130}', "130 is greater than the maximum of 100"),
    ('{"volume": "loud"}', "'loud' is not of type 'integer'"),
    ("{}", "'volume' is a required property"),
    ("{volume: 3", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
])
def test_schema_rejects_bad_arguments_with_a_clear_message(raw, needle):
    with pytest.raises(ArgumentError, match=None) as exc:
        validate_arguments(VOLUME, raw)
    assert needle in str(exc.value)


def test_bad_schema_is_reported():
    with pytest.raises(BadSchema):
        check_schema({"type": "no-such-type"})
    with pytest.raises(BadSchema):
        check_schema(["not", "an", "object"])


# ---------------------------------------------------------------- calculator
@pytest.mark.parametrize("expr, value", [
    ("12 * 7", 84), ("12 times 7", 84), ("(4 + 5) / 2", 4.5), ("2 ** 10", 1024), ("sqrt(81) - 1", 8.0),
    ("100 divided by 8", 12.5), ("1,250 + 3", 1253), ("-3 + 5", 2), ("17 % 5", 2), ("round(pi, 2)", 3.14),
])
def test_calculator_evaluates_arithmetic(expr, value):
    assert calculate(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "open('/etc/passwd')", "2 ** 100000", "1 / 0", "9" * 250,
    "(lambda: 1)()", "[1, 2]", "x + 1", "10 ** 90 * 10 ** 90",
])
def test_calculator_refuses_anything_but_bounded_arithmetic(expr):
    with pytest.raises(CalcError):
        calculate(expr)


# ---------------------------------------------------------------- clock
def test_clock_uses_the_device_timezone():
    noon_utc = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    assert now_text("Asia/Shanghai", noon_utc) == "It is 20:00 on Monday, 23 November 2026 (Asia/Shanghai, UTC+08:00)."
    assert now_text("America/New_York", noon_utc).startswith("It is 07:00 on Monday, 23 November 2026")
    with pytest.raises(ToolError) as exc:
        now_text("Mars/Olympus")
    assert exc.value.kind == "arguments"


async def test_registry_runs_server_tools_with_validation():
    reg = build_server_tools(ToolsSpec())
    assert reg.names() == ["get_time", "calculate"]
    assert "UTC+08:00" in await reg.call("get_time", "{}", CTX)
    assert await reg.call("calculate", '{"expression": "6 * 7"}', CTX) == "6 * 7 = 42"
    for name, args, kind in [("nope", "{}", "unknown_tool"), ("calculate", "{}", "arguments"),
                             ("calculate", '{"expression": "1/0"}', "failed")]:
        with pytest.raises(ToolError) as exc:
            await reg.call(name, args, CTX)
        assert exc.value.kind == kind


async def test_registry_llm_names_and_broken_tools():
    async def boom(args, ctx):
        raise RuntimeError("kaput")

    async def not_text(args, ctx):
        return {"a": 1}

    reg = ToolRegistry([Tool("self.light.set_rgb", "d", {"type": "object"}, boom),
                        Tool("odd", "d", {"type": "object"}, not_text)])
    assert [t["function"]["name"] for t in reg.llm_tools()] == ["self_light_set_rgb", "odd"]
    assert reg.get("self_light_set_rgb") is reg.get("self.light.set_rgb")
    with pytest.raises(ToolError) as exc:
        await reg.call("self_light_set_rgb", "{}", CTX)
    assert exc.value.kind == "failed" and "kaput" in exc.value.message
    with pytest.raises(ToolError) as exc:
        await reg.call("odd", "{}", CTX)
    assert exc.value.kind == "malformed"
    with pytest.raises(ValueError):
        reg.add(Tool("self_light.set_rgb", "clash with the LLM name", {}, boom))
    assert llm_name("a.b/c") == "a_b_c"


@pytest.mark.parametrize("result, kind", [
    ({"content": "x"}, "malformed"), ([], "malformed"), ({"content": [{"type": "text"}]}, "malformed"),
    ({"content": [{"type": "text", "text": "no such song"}], "isError": True}, "failed"),
])
def test_mcp_results_are_checked(result, kind):
    with pytest.raises(ToolError) as exc:
        mcp_result_text(result)
    assert exc.value.kind == kind
    assert mcp_result_text({"content": [{"type": "text", "text": "true"}], "isError": False}) == "true"


# ---------------------------------------------------------------- HTTP tool
@pytest.fixture
async def weather_api():
    seen = []

    async def forecast(request: web.Request) -> web.Response:
        seen.append(dict(request.query) | {"auth": request.headers.get("Authorization")})
        if request.query.get("city") == "Atlantis":
            return web.Response(status=404)
        if request.query.get("city") == "Garbage":
            return web.Response(text="<html>")
        return web.json_response({"current": {"temperature_2m": 21.5}})

    app = web.Application()
    app.router.add_get("/forecast", forecast)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def weather_spec(base: str, **kw) -> HttpToolSpec:
    return HttpToolSpec(**{
        "name": "weather", "description": "Current temperature in a city.",
        "url": base + "/forecast?city={city}", "headers": {"Authorization": {"env": "XZ_TEST_WEATHER_KEY",
                                                                             "default": "Bearer k"}},
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "result_path": "current.temperature_2m", "result_prefix": "Celsius: ", "timeout_s": 1.0} | kw)


async def test_http_tool_fills_the_template_and_extracts_the_value(weather_api):
    base, seen = weather_api
    reg = ToolRegistry([http_tool(weather_spec(base))])
    assert await reg.call("weather", '{"city": "New York"}', CTX) == "Celsius: 21.5"
    assert seen == [{"city": "New York", "auth": "Bearer k"}]
    for city, kind in [("Atlantis", "failed"), ("Garbage", "malformed")]:
        with pytest.raises(ToolError) as exc:
            await reg.call("weather", json.dumps({"city": city}), CTX)
        assert exc.value.kind == kind


async def test_http_tool_fails_cleanly_offline():
    reg = ToolRegistry([http_tool(weather_spec(f"http://127.0.0.1:{free_port()}"))])
    with pytest.raises(ToolError) as exc:
        await reg.call("weather", '{"city": "Paris"}', CTX)
    assert exc.value.kind == "failed" and "unreachable" in exc.value.message
    # unroutable address: the timeout, not the OS, ends it
    reg = ToolRegistry([http_tool(weather_spec("http://10.255.255.1", timeout_s=0.3))])
    with pytest.raises(ToolError) as exc:
        await reg.call("weather", '{"city": "Paris"}', CTX)
    assert exc.value.kind == "failed"


# ---------------------------------------------------------------- topology section
def test_tools_section_per_site_and_device_timezones():
    doc = yaml.safe_load(DEFAULT_PATH.read_text())
    doc["tools"] = {
        "enabled": ["get_time"], "timezone": "Europe/Berlin",
        "sites": {"local-site": {"enabled": ["get_time", "calculate", "weather"], "timezone": "Asia/Tokyo"}},
        "devices": [{"prefix": "aa:", "timezone": "America/Chicago"}],
        "http": [{"name": "weather", "description": "w", "url": "http://127.0.0.1:1/{city}"}],
    }
    spec = parse_topology(doc, environ={}).tools
    assert build_server_tools(spec, "local-site").names() == ["get_time", "calculate", "weather"]
    assert build_server_tools(spec, "other").names() == ["get_time"]
    assert tool_context(spec, "local-site", "bb:1").timezone == "Asia/Tokyo"
    assert tool_context(spec, "local-site", "aa:1") == ToolContext(device_id="aa:1", timezone="America/Chicago")
    assert tool_context(spec, None, None).timezone == "Europe/Berlin"


def test_shared_builtin_tool_names_match_the_edge_registry():
    assert tuple(builtin_tools()) == BUILTIN_TOOLS


@pytest.mark.parametrize("section, needle", [
    ({"enabled": ["teleport"]}, "unknown tools ['teleport']"),
    ({"timezone": "Mars/Base"}, "unknown timezone"),
    ({"sites": {"nowhere": {"enabled": []}}}, "unknown sites ['nowhere']"),
    ({"max_steps": 0}, "tools.max_steps"),
])
def test_bad_tools_section_is_a_clear_error(section, needle):
    doc = yaml.safe_load(DEFAULT_PATH.read_text())
    doc["tools"] = section
    with pytest.raises(TopologyError) as exc:
        parse_topology(doc, environ={})
    assert needle in str(exc.value)
