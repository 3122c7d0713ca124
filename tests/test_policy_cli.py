"""The operators' CLI as a subprocess (`python -m cloud policy ...`) against a real hub."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from shared.nats_runtime import free_port
from shared.policy import DEFAULT_POLICY, PolicyState, TurnFeatures, evaluate, loads_policy
from shared.policy_store import PolicyStore
from shared.turn_trace import TurnTrace

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


async def cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloud", "policy", *args, cwd=ROOT,
        env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


def write(tmp_path: Path, name: str, doc: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def test_show_before_any_policy_prints_the_default(nats_hub):
    code, out, err = await cli("show", "--nats", nats_hub.url)
    assert code == 0, err
    first, rest = out.split("\n", 1)
    assert "no policy set yet" in first and "built-in default" in first
    assert loads_policy(rest) == DEFAULT_POLICY
    code, out, _ = await cli("history", env={"NATS_URL": nats_hub.url})  # URL from the environment
    assert code == 0 and "no policy set yet" in out


async def test_invalid_policy_is_refused_with_the_field_path(nats_hub, nats_connect, tmp_path):
    bad = write(tmp_path, "bad.yaml", {"rules": [
        {"name": "a", "action": "local"}, {"name": "b", "action": "local"},
        {"name": "c", "action": "escalate", "match": {"pattern": "why(("}}]})
    code, out, err = await cli("set", bad, "--nats", nats_hub.url)
    assert code == 1 and out == ""
    assert "rules[2].match.pattern: invalid regex: missing )" in err
    assert "Traceback" not in err
    code, _, err = await cli("set", str(EXAMPLES / "policy-invalid.yaml"), "--nats", nats_hub.url)
    assert code == 1 and "budget.max_share" in err and "rules[1].match.min_word: unknown field" in err
    assert await PolicyStore(await nats_connect(nats_hub.url)).get() is None  # nothing was stored


async def test_set_show_diff_history_rollback(nats_hub, nats_connect, tmp_path):
    url = nats_hub.url
    code, out, err = await cli("set", str(EXAMPLES / "policy.yaml"), "--nats", url, "--note", "first")
    assert code == 0, err
    r1 = int(out.split()[2].rstrip(":"))
    changed = yaml.safe_load((EXAMPLES / "policy.yaml").read_text())
    changed["budget"]["max_share"] = 0.3
    new = write(tmp_path, "new.yaml", changed)
    code, out, _ = await cli("diff", new, "--nats", url)
    assert code == 0
    assert f"--- current (revision {r1})" in out and "-  max_share: 0.5" in out and "+  max_share: 0.3" in out
    code, out, _ = await cli("set", new, "--nats", url)
    assert code == 0
    r2 = int(out.split()[2].rstrip(":"))
    code, out, _ = await cli("show", "--nats", url)
    assert code == 0 and out.startswith(f"# revision {r2} ")
    assert loads_policy(out.split("\n", 1)[1]).budget.max_share == 0.3
    code, out, _ = await cli("history", "--nats", url)
    lines = out.strip().splitlines()
    assert code == 0 and [int(line.split()[0]) for line in lines] == [r1, r2] and "first" in lines[0]
    code, out, _ = await cli("rollback", str(r1), "--nats", url)
    assert code == 0
    policy, rev = await PolicyStore(await nats_connect(url)).get()
    assert rev > r2 and policy.budget.max_share == 0.5
    code, _, err = await cli("rollback", "12345", "--nats", url)
    assert code == 1 and "revision 12345 does not exist" in err and "Traceback" not in err


async def test_dry_run_counts_on_a_generated_trace(nats_hub, tmp_path):
    # Turns a minute apart (the budget never binds): 10 greetings, 6 "why" questions, 4 tool turns.
    trace_path = tmp_path / "turns.jsonl"
    trace = TurnTrace(trace_path)
    state = PolicyState()
    texts = [("hello there", False)] * 10 + [("why is the sea salty", False)] * 6 + [("lights on", True)] * 4
    for text, tools in texts:
        f = TurnFeatures.from_text(text, needs_tools=tools, local_confidence=-0.5)
        trace.record(f, evaluate(f, state), "edge")
    trace.close()
    lines = trace_path.read_text().splitlines()
    trace_path.write_text("\n".join(
        line.replace('"ts": ', f'"ts": {i * 61}, "orig_ts": ', 1) for i, line in enumerate(lines)) + "\nnot json\n")

    tools_only = write(tmp_path, "tools.yaml", {"budget": {"max_share": 1}, "rules": [
        {"name": "tools", "match": {"needs_tools": True}, "action": "escalate"}]})
    code, out, err = await cli("dry-run", tools_only, "--turns", str(trace_path), "--nats", nats_hub.url)
    assert code == 0, err
    assert "dry-run over 20 turns" in out and "1 unusable lines skipped" in out
    assert "current policy (revision 0) escalates: 6 (30.0%)" in out  # built-in default: the why questions
    assert "escalates: 4 (20.0%)" in out.split("new policy", 1)[1]
    assert "turns whose decision changes: 10" in out
    rows = {line.split()[1]: line.split()[-2:] for line in out.splitlines() if line.strip().startswith(("escalate:", "local:"))}
    assert rows["hard-question"] == ["6", "0"] and rows["needs-tools"] == ["4", "0"] and rows["tools"] == ["0", "4"]

    code, out, _ = await cli("dry-run", str(EXAMPLES / "policy-local-only.yaml"), "--turns", str(trace_path),
                             "--nats", nats_hub.url)
    assert code == 0 and "escalates: 0 (0.0%)" in out.split("new policy", 1)[1]
    code, _, err = await cli("dry-run", tools_only, "--turns", str(tmp_path / "missing.jsonl"), "--nats", nats_hub.url)
    assert code == 1 and "No such file" in err


async def test_nats_down_is_one_line_and_exit_2(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    code, out, err = await cli("show", "--nats", url)
    elapsed = time.monotonic() - t0
    print(f"\nNATS down reported in {elapsed:.2f} s")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and err.startswith(f"error: cannot reach NATS at {url}")
    code, _, err = await cli("history", env={"NATS_URL": url})
    assert code == 2 and err.strip().count("\n") == 0


async def test_a_lab_hub_without_a_jetstream_domain_works_too(tmp_path):
    """Provisioned and embedded hubs have domain 'hub'; a plain lab hub has none: the CLI detects which."""
    from shared.nats_runtime import start_hub

    hub = await start_hub("lab", workdir=tmp_path / "lab", js_domain=None)
    try:
        code, out, err = await cli("set", str(EXAMPLES / "policy.yaml"), "--nats", hub.url)
        assert code == 0 and "stored revision 1" in out, err
        code, out, err = await cli("show", "--nats", hub.url)
        assert code == 0 and out.startswith("# revision 1"), err
    finally:
        await hub.stop()


async def test_only_the_operators_credentials_may_set_the_policy(tmp_path):
    """Against a secured hub: --creds FILE (the operator) works, a worker's or no credentials are refused."""
    from shared.nats_runtime import OPERATOR, NatsSecurity, start_hub, worker_user

    security = NatsSecurity(tmp_path / "security", ["s1"], {"w1": "large"})
    hub = await start_hub("hub", workdir=tmp_path / "hub", security=security)
    try:
        operator = security.write_credentials(OPERATOR, hub.url)
        code, out, err = await cli("set", str(EXAMPLES / "policy.yaml"), "--creds", str(operator))
        assert code == 0 and "stored revision 1" in out, err
        code, out, err = await cli("show", env={"NATS_CREDS": str(operator)})
        assert code == 0 and out.startswith("# revision 1"), err
        worker = security.write_credentials(worker_user("w1"), hub.url)
        code, out, err = await cli("set", str(EXAMPLES / "policy.yaml"), "--creds", str(worker))
        assert code == 2 and err.startswith("error:") and err.strip().count("\n") == 0
        code, _, err = await cli("show", "--nats", hub.url)  # no credentials: TLS and authentication refuse
        assert code == 2 and "error: cannot reach NATS" in err
        password = security.password(OPERATOR)
        assert password not in err
        code, _, err = await cli("show", "--creds", str(tmp_path / "missing.creds"))
        assert code == 2 and "missing.creds" in err
    finally:
        await hub.stop()


async def test_dry_run_on_a_trace_without_text(nats_hub, tmp_path):
    """store_text: false: the dry-run still counts on lengths and the other features, and says what it cannot see."""
    trace_path = tmp_path / "turns.jsonl"
    trace = TurnTrace(trace_path, store_text=False)
    state = PolicyState()
    for text in ["hello there"] * 3 + ["tell me everything you know about the history of the roman empire"] * 2:
        f = TurnFeatures.from_text(text)
        trace.record(f, evaluate(f, state), "edge")
    trace.close()
    assert "roman" not in trace_path.read_text()
    long_ones = write(tmp_path, "long.yaml", {"budget": {"max_share": 1}, "rules": [
        {"name": "long", "match": {"min_words": 10}, "action": "escalate"}]})
    code, out, err = await cli("dry-run", long_ones, "--turns", str(trace_path), "--nats", nats_hub.url)
    assert code == 0, err
    assert "dry-run over 5 turns" in out and "5 turns were traced without text" in out
    assert "escalates: 2 (40.0%)" in out.split("new policy", 1)[1]
