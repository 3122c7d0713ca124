"""topology.yaml validation: the shipped documents pass, broken ones fail with every error by path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.topology import TopologyError, load_topology, parse_topology
from shared.topology_cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "multi-region.yaml"


@pytest.fixture
def example_doc() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def errors_of(doc: dict) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(doc, environ={})
    return info.value.errors


def test_embedded_default_is_one_region_one_site_on_loopback():
    t = load_topology(ROOT / "topology.yaml", environ={})
    assert [r.name for r in t.regions] == ["local"]
    assert len(t.sites) == 1 and t.sites[0].edges[0].host == "127.0.0.1"
    assert t.cloud.nats.hub[0].host == "127.0.0.1"
    assert t.discovery.backend == "static"


def test_example_is_multi_region_and_sized_for_1000_devices():
    t = load_topology(EXAMPLE, environ={})
    assert len(t.regions) == 2 and len(t.sites) == 7
    assert t.devices.fleet_size == 1000
    assert sum(s.capacity for s in t.sites) >= 1000
    assert t.discovery.backend == "consul"
    # secrets are references: nothing in the document holds an inline secret value
    assert all(s.nats_leaf.password and s.nats_leaf.password.env for s in t.sites)


def test_device_assignment_longest_prefix_then_region_default():
    t = load_topology(EXAMPLE, environ={})
    assert t.assigned_site("a4:cf:12:01") == "par"
    assert t.assigned_site("a4:cf:12:9f") == "mad"  # longer prefix wins
    assert t.assigned_site("00:11:22:33", region="us") == "nyc"
    assert t.assigned_site("00:11:22:33") == "ams"  # first region's default


def test_every_error_reported_with_its_path(example_doc):
    doc = copy.deepcopy(example_doc)
    doc["sites"][2]["edges"][0]["capacity"] = 0
    doc["sites"][1]["location"]["lat"] = 123
    doc["sites"][3]["region"] = "asia"
    doc["devices"]["default_site"]["us"] = "ams"
    doc["devices"]["overrides"][0]["site"] = "nowhere"
    doc["cloud"]["workers"][0]["backends"][0]["kind"] = "tgi"
    errors = errors_of(doc)
    joined = "\n".join(errors)
    assert "sites[2].edges[0].capacity: must be a positive integer" in errors
    assert any(e.startswith("sites[1].location.lat:") for e in errors)
    assert any(e.startswith("sites[3].region: unknown region 'asia'") for e in errors)
    assert "devices.default_site.us: site 'ams' is in region 'eu'" in errors
    assert "devices.overrides[0].site: unknown site 'nowhere'" in errors
    assert "cloud.workers[0].backends[0].kind:" in joined
    assert len(errors) == 6, joined


def test_inline_secret_is_rejected(example_doc):
    doc = copy.deepcopy(example_doc)
    doc["sites"][0]["nats_leaf"]["password"] = "hunter2"
    doc["cloud"]["workers"][1]["backends"][1]["api_key"] = {"default": "sk-inline"}
    errors = errors_of(doc)
    assert any(e.startswith("sites[0].nats_leaf.password: secrets are given by reference only") for e in errors)
    assert any(e.startswith("cloud.workers[1].backends[1].api_key: a secret reference needs") for e in errors)


def test_duplicates_unknown_keys_and_missing_sections(example_doc):
    doc = copy.deepcopy(example_doc)
    doc["sites"][1]["name"] = "ams"
    doc["sites"][4]["edges"][1]["name"] = "nyc-edge-1"
    doc["sites"][0]["edges"][0]["capcity"] = 3
    del doc["cloud"]["nats"]
    errors = errors_of(doc)
    assert "sites: site name 'ams' is used more than once" in errors
    assert "sites[4].edges[1].name: edge name 'nyc-edge-1' is used more than once" in errors
    assert "sites[0].edges[0].capcity: unknown key" in errors
    assert "cloud.nats: required" in errors


def test_fleet_larger_than_capacity(example_doc):
    doc = copy.deepcopy(example_doc)
    doc["devices"]["fleet_size"] = 5000
    assert errors_of(doc) == ["devices.fleet_size: 5000 devices exceed the total edge capacity 1440"]


def test_not_a_mapping_and_env_override(example_doc):
    assert errors_of([1, 2]) == ["<memory>: the document must be a mapping"]
    t = parse_topology(copy.deepcopy(example_doc), environ={"XZ_CFG__sites__0__edges__0__capacity": "7"})
    assert t.sites[0].edges[0].capacity == 7
    with pytest.raises(TopologyError):
        parse_topology(copy.deepcopy(example_doc), environ={"XZ_CFG__sites__0__edges__0__capacity": "-1"})


def test_cli_check_and_show(tmp_path, example_doc, capsys):
    assert cli_main(["check", str(EXAMPLE)]) == 0
    assert "7 sites" in capsys.readouterr().out
    assert cli_main(["show", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    for site in ("ams", "fra", "par", "mad", "nyc", "chi", "sfo"):
        assert f"  {site} " in out
    assert "1440" in out and "1000" in out

    doc = copy.deepcopy(example_doc)
    doc["sites"][2]["edges"][0]["capacity"] = -5
    doc["sites"][2]["edges"][0]["tier"] = "quantum"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert cli_main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "sites[2].edges[0].capacity: must be a positive integer" in err
    assert "sites[2].edges[0].tier: unknown tier 'quantum'" in err
    assert cli_main(["check", str(tmp_path / "missing.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert cli_main(["frobnicate"]) == 2


def test_module_entry_point(tmp_path):
    """The documented command line, as a subprocess: exit codes and no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nregions: []\n")
    run = subprocess.run([sys.executable, "-m", "shared.topology", "check", str(bad)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 1
    assert "regions: must not be empty" in run.stderr and "Traceback" not in run.stderr
    ok = subprocess.run([sys.executable, "-m", "shared.topology", "check"], capture_output=True, text=True,
                        cwd=ROOT, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr


# ---------------------------------------------------------------- environment overrides
@pytest.mark.parametrize("var, value, needle", [
    ("XZ_CFG__edge__audoi__lead_ms", "1", "XZ_CFG__edge__audoi__lead_ms: edge has no key 'audoi' (known: "),
    ("XZ_CFG__sites__9__name", "x", "XZ_CFG__sites__9__name: sites has 1 item(s): no index 9"),
    ("XZ_CFG__sites__first__name", "x", "XZ_CFG__sites__first__name: sites is a list: 'first' is not an index"),
    ("XZ_CFG__edge__audio__lead_ms__x", "1", "XZ_CFG__edge__audio__lead_ms__x: edge.audio.lead_ms is a single value"),
    ("XZ_CFG__edge__session", "5", "edge.session: Input should be a valid dictionary"),
    ("XZ_CFG__edge____x", "1", "XZ_CFG__edge____x: empty key in the path"),
    ("XZ_CFG__edge__audio__lead_ms", "[1", "XZ_CFG__edge__audio__lead_ms: value '[1' is not valid YAML"),
    ("XZ_CFG__edge__audio__downstream_sample_rate", "44100",
     "edge.audio.downstream_sample_rate: Input should be 16000 or 24000 (got 44100) "
     "(from XZ_CFG__edge__audio__downstream_sample_rate=44100)"),
    ("XZ_CFG__sites__0__edges__0__capacity", "many", "(from XZ_CFG__sites__0__edges__0__capacity=many)"),
])
def test_bad_override_is_one_line_naming_the_variable(var, value, needle):
    with pytest.raises(TopologyError) as info:
        load_topology(ROOT / "topology.yaml", environ={var: value})
    assert len(info.value.errors) == 1 and needle in info.value.errors[0], info.value.errors


def test_overrides_reach_lists_aliases_optional_sections_and_free_form_data():
    t = load_topology(EXAMPLE, environ={
        "XZ_CFG__sites__2__edges__0__capacity": "7",
        "XZ_CFG__monitoring__alerts__for": "10m",  # a field whose key is an alias
        "XZ_CFG__edge__llm__launch__model_path": "/models/x.gguf",  # an optional section the file leaves out
        "XZ_CFG__devices__default_site__eu": "fra",  # a mapping key
        "XZ_CFG__edge__tts__cache__prewarm": "[Hi, Bye]",  # YAML values
    })
    assert t.sites[2].edges[0].capacity == 7 and t.monitoring.alerts.for_ == "10m"
    assert t.edge.llm.launch is not None and t.edge.llm.launch.model_path == "/models/x.gguf"
    assert t.devices.default_site["eu"] == "fra" and t.edge.tts.cache.prewarm == ["Hi", "Bye"]
    t = load_topology(ROOT / "topology.yaml", environ={"XZ_CFG__tools__http__0__parameters__properties__lat__type": "string"})
    assert t.tools.http[0].parameters["properties"]["lat"]["type"] == "string"


def test_bad_override_exits_non_zero_with_that_line_from_both_commands():
    env = {"PATH": "/usr/bin:/bin", "XZ_CFG__edge__audio__lead_mss": "5"}
    line = "XZ_CFG__edge__audio__lead_mss: edge.audio has no key 'lead_mss'"
    check = subprocess.run([sys.executable, "-m", "shared.topology", "check"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, env=env)
    assert check.returncode == 1 and line in check.stderr and "Traceback" not in check.stderr
    serve = subprocess.run([sys.executable, "-m", "edge", "serve", "--port", "1"], capture_output=True, text=True,
                           cwd=ROOT, timeout=120, env=env)
    assert serve.returncode != 0 and line in serve.stderr and "Traceback" not in serve.stderr


# ---------------------------------------------------------------- tools and tiers in the one model
def test_tools_section_is_part_of_the_validated_model():
    t = load_topology(ROOT / "topology.yaml", environ={})
    assert t.tools.enabled_for("local-site") == ["get_time", "calculate", "weather"]
    assert t.tools.http[0].result_path == "current.temperature_2m"
    doc = yaml.safe_load((ROOT / "topology.yaml").read_text())
    doc["tools"]["max_steps"] = 0
    doc["tools"]["http"][0]["timeout_s"] = "soon"
    doc["tools"]["colour"] = "blue"
    errors = errors_of(doc)
    assert "tools.max_steps: Input should be greater than or equal to 1 (got 0)" in errors
    assert any(e.startswith("tools.http[0].timeout_s: ") for e in errors)
    assert "tools.colour: unknown key" in errors
    doc = yaml.safe_load((ROOT / "topology.yaml").read_text())
    doc["surprise"] = {}
    assert errors_of(doc) == ["surprise: unknown key"]


def test_check_runs_on_a_cloud_only_install():
    """No edge/ and no cloud/ package: `topology check` still validates everything (tiers, tools)."""
    code = ("import sys; sys.modules['edge'] = None; sys.modules['cloud'] = None\n"
            "from shared.topology_cli import main; sys.exit(main(sys.argv[1:]))")
    ok = subprocess.run([sys.executable, "-c", code, "check", str(EXAMPLE)], capture_output=True, text=True,
                        cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["sites"][0]["tier"] = "quantum"
    bad = subprocess.run([sys.executable, "-c", code, "check", "/dev/stdin"], input=yaml.safe_dump(doc),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 1 and "sites[0].tier: unknown tier 'quantum' (known: auto, cpu-small" in bad.stderr
