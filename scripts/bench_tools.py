"""Tool-calling benchmark: the fixed request suite against each configured model.

For every request of tests/data/tool_suite.yaml the model gets the simulated
board's tools plus the server tools (as a real session would) and one tool-loop
round; a request succeeds when the right tool is called with the right
arguments, or no tool is called when none is expected. Prints success rate,
false calls (a tool called when none was expected), misses, latency to the
decision, and writes one CSV row per request. "with the intent gate" is what a
live turn gets: requests the gate (shared/tool_intent.py) lets through get the
model's decision, the others are answered without tools.

    .venv/bin/python scripts/bench_tools.py                       # edge + cloud models of topology.yaml
    .venv/bin/python scripts/bench_tools.py --targets edge --limit 20 --mode grammar

``--launch`` (default on) starts a llama.cpp server for every model with a
``launch:`` block, on a free port, and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.tool_calling import caller_for  # noqa: E402
from edge.tools.calculator import CalcError, calculate  # noqa: E402
from edge.tools.config import build_server_tools  # noqa: E402
from shared.tool_intent import needs_tools  # noqa: E402
from edge.tools.registry import ToolRegistry  # noqa: E402
from scripts.sim_board import SimBoard  # noqa: E402
from shared.chat import ChatClient, ChatError  # noqa: E402
from shared.nats_runtime import free_port  # noqa: E402
from shared.topology import LaunchSpec, ToolsSpec, load_topology  # noqa: E402

SUITE = Path(__file__).resolve().parent.parent / "tests" / "data" / "tool_suite.yaml"
SYSTEM = "You are Xiaozhi, a friendly voice assistant. Answer in one or two short spoken sentences."


@dataclass
class Target:
    """One model to benchmark: where it is served and how its tools are called."""

    name: str
    url: str
    model: str
    kind: str
    launch: LaunchSpec | None


def targets_from_topology(which: set[str]) -> list[Target]:
    topo = load_topology()
    out: list[Target] = []
    if "edge" in which:
        llm = topo.edge.llm
        out.append(Target("edge", llm.url, llm.model, "llamacpp" if llm.launch else llm.backend, llm.launch))
    if "cloud" in which:
        for worker in topo.cloud.workers:
            for b in worker.backends:
                out.append(Target(f"cloud:{worker.name}/{b.name}", b.url, b.model, b.kind, b.launch))
    return out


def board_registry(board: SimBoard) -> ToolRegistry:
    """Server tools + the board's AI-visible tools, exactly as a session would merge them."""

    class Direct:  # the board answered in process: this benchmark measures the model, not MCP
        tools = [t.to_json() for t in board.tools]

        async def call_tool(self, name, arguments=None, timeout=None):
            return board.handle({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                 "params": {"name": name, "arguments": arguments or {}}})["result"]

    return build_server_tools(ToolsSpec()).with_device(Direct())


def judge(case: dict[str, Any], name: str | None, raw_args: str | None, registry: ToolRegistry) -> tuple[bool, str]:
    """(success, outcome): ok | false_call | missed | wrong_tool | wrong_args."""
    expected = case.get("tool")
    got = registry.get(name) if name else None
    got_name = got.name if got else name
    if expected is None:
        return (True, "ok") if name is None else (False, "false_call")
    if name is None:
        return False, "missed"
    if got_name != expected:
        return False, "wrong_tool"
    try:
        args = json.loads(raw_args or "{}")
    except ValueError:
        return False, "wrong_args"
    if "value" in case:
        try:
            value = calculate(str(args.get("expression", "")))
        except CalcError:
            return False, "wrong_args"
        return (True, "ok") if math.isclose(value, case["value"], rel_tol=1e-6) else (False, "wrong_args")
    want = case.get("arguments") or {}
    return (True, "ok") if all(args.get(k) == v for k, v in want.items()) else (False, "wrong_args")


async def run_target(target: Target, cases: list[dict], mode: str, writer: csv.writer) -> dict[str, Any]:
    llm = ChatClient(target.url, target.model, name=target.name, timeout=300)
    caller = caller_for(llm, mode, target.kind)
    registry = board_registry(SimBoard())
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    ok = gated_ok = gated_false = 0
    for i, case in enumerate(cases):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": case["text"]}]
        start = time.perf_counter()
        name = args = None
        error = ""
        try:
            async for delta in caller.step(messages, registry, max_tokens=24, temperature=0.0):
                if delta.tool_calls:
                    name, args = delta.tool_calls[0].name, delta.tool_calls[0].arguments
                    break
                if delta.text:
                    break
        except ChatError as exc:
            error = str(exc)[:200]
        ms = (time.perf_counter() - start) * 1000
        latencies.append(ms)
        success, outcome = judge(case, name, args, registry) if not error else (False, "error")
        ok += success
        gate = needs_tools(registry, case["text"])  # what a live turn does: no gate, no tool round
        gated_ok += success if gate else not case.get("tool")
        gated_false += gate and outcome == "false_call"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        writer.writerow([target.name, caller.__class__.__name__, case["text"], case.get("tool") or "",
                         json.dumps(case.get("arguments", case.get("value", ""))), name or "", args or "",
                         outcome, int(success), int(gate), round(ms, 1), error])
        print(f"  [{i + 1:2d}/{len(cases)}] {outcome:10s} {ms:7.0f} ms  {case['text']!r} -> {name} {args or ''}",
              flush=True)
    await llm.aclose()
    expected_none = sum(1 for c in cases if not c.get("tool"))
    return {"target": target.name, "caller": caller.__class__.__name__, "n": len(cases),
            "success_rate": ok / len(cases), "with_gate": gated_ok / len(cases), "false_calls_with_gate": gated_false, "false_calls": outcomes.get("false_call", 0),
            "no_tool_cases": expected_none, "outcomes": outcomes,
            "latency_ms_p50": statistics.median(latencies), "latency_ms_mean": statistics.fmean(latencies)}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=str(SUITE))
    ap.add_argument("--targets", default="edge,cloud", help="edge, cloud or both (comma separated)")
    ap.add_argument("--mode", default="auto", choices=["auto", "native", "grammar"])
    ap.add_argument("--limit", type=int, default=0, help="only the first N requests (0: all)")
    ap.add_argument("--csv", default="bench_tools.csv")
    ap.add_argument("--no-launch", action="store_true", help="models are already served at their urls")
    opts = ap.parse_args()
    cases = yaml.safe_load(Path(opts.suite).read_text())["requests"]
    if opts.limit:
        cases = cases[: opts.limit]
    targets = targets_from_topology(set(opts.targets.split(",")))
    registry = board_registry(SimBoard())
    tool_cases = [c for c in cases if c.get("tool")]
    recall = sum(needs_tools(registry, c["text"]) for c in tool_cases)
    false_pass = sum(needs_tools(registry, c["text"]) for c in cases if not c.get("tool"))
    print(f"intent gate (shared/tool_intent.py): {recall}/{len(tool_cases)} tool requests pass, "
          f"{false_pass}/{len(cases) - len(tool_cases)} no-tool requests pass (these cost one tool decision)")
    summaries = []
    with open(opts.csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["target", "caller", "request", "expected_tool", "expected_args", "called_tool",
                         "called_args", "outcome", "success", "gate", "latency_ms", "error"])
        for target in targets:
            server = None
            if target.launch is not None and not opts.no_launch:
                from shared.llama_server import LlamaServer

                server = LlamaServer(target.launch, port=free_port(), alias=target.model)
                await server.start()
                target.url = server.base_url
            print(f"== {target.name} ({target.model} at {target.url}, mode {opts.mode})", flush=True)
            try:
                summaries.append(await run_target(target, cases, opts.mode, writer))
            finally:
                if server is not None:
                    await server.stop()
    print()
    for s in summaries:
        print(f"{s['target']:32s} {s['caller']:18s} success {s['success_rate']:6.1%} of {s['n']} "
              f"(with the intent gate {s['with_gate']:6.1%})  "
              f"false calls {s['false_calls']}/{s['no_tool_cases']} (with the gate {s['false_calls_with_gate']})  latency p50 {s['latency_ms_p50']:.0f} ms "
              f"mean {s['latency_ms_mean']:.0f} ms  outcomes {s['outcomes']}")
    print(f"per-request rows: {opts.csv}")
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: launched llama.cpp servers are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(asyncio.run(main()))
