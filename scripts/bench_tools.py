"""Tool-calling benchmark: three request suites, the live turn's tool decision before and after the router.

For every request of the suites (tests/data/tool_suite.yaml, the held-out
tool_suite_holdout.yaml and the fresh tool_suite_fresh.yaml, written before the
router was tuned) the model gets the simulated board's tools plus the server
tools (as a real session would), and one of two pipelines decides:

- ``gate`` (before issue 14): the lexical intent gate (shared/tool_intent.py);
  requests it lets through get the grammar caller's decision, the others are
  answered without tools;
- ``router`` (after): the embedding router (shared/intent_router.py) in front of
  the same grammar caller, with the call / confirm / answer rule
  (shared/routed_tools.py, shared/tool_decision.py).

A request succeeds when the right tool is called with the right arguments (a
confirmation whose call is right counts: the user says yes), or no tool is
called when none is expected. Printed per suite and pipeline: success, false
calls per chat turn (state-changing and reading apart), confirmations asked,
routing latency (the router's embedding + scoring) and decision latency; one CSV
row per request.

    .venv/bin/python scripts/bench_tools.py                          # edge model, both pipelines, 3 suites
    .venv/bin/python scripts/bench_tools.py --pipelines router --suites tests/data/tool_suite_fresh.yaml

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

from shared.embeddings import shared_embedder  # noqa: E402
from shared.argument_hints import argument_hints, clamp_arguments  # noqa: E402
from shared.grammar_tools import GrammarToolCaller  # noqa: E402
from shared.intent_router import IntentRouter  # noqa: E402
from shared.routed_tools import RoutedToolCaller  # noqa: E402
from shared.tool_calling import caller_for  # noqa: E402
from shared.tool_decision import tool_effect  # noqa: E402
from edge.tools.calculator import CalcError, calculate  # noqa: E402
from edge.tools.config import build_server_tools  # noqa: E402
from shared.tool_intent import needs_tools  # noqa: E402
from edge.tools.registry import ToolRegistry  # noqa: E402
from scripts.sim_board import SimBoard  # noqa: E402
from shared.chat import ChatClient, ChatError  # noqa: E402
from shared.nats_runtime import free_port  # noqa: E402
from shared.topology import LaunchSpec, ToolsSpec, load_topology  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SUITES = [DATA / "tool_suite.yaml", DATA / "tool_suite_holdout.yaml", DATA / "tool_suite_fresh.yaml",
          DATA / "tool_suite_unseen.yaml", DATA / "tool_suite_blind.yaml"]  # unseen, blind: written by people who
# never read the router's examples (blind: before the spoken-arithmetic parser and the speech-act cues)
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


class RoutingOnlyCaller(GrammarToolCaller):
    """``--routing-only``: the model still chooses among close tools, but arguments the words do not settle are
    not asked for (that round is the same in both pipelines and takes most of a busy machine's time); such calls
    are judged on the tool alone and marked ``by_model``."""

    async def arguments(self, tool, user_text, state=None):
        if not tool.parameters.get("properties"):
            return {}
        args = argument_hints(tool, user_text, state)
        return clamp_arguments(tool, args) if isinstance(args, dict) else {"__by_model__": True}


@dataclass
class Result:
    """One request through one pipeline."""

    name: str | None = None  # the tool called (or proposed, for a confirmation)
    args: str | None = None
    confirm: bool = False
    route_ms: float | None = None
    error: str = ""


async def decide_with_gate(caller, registry: ToolRegistry, text: str) -> Result:
    """Before issue 14: the lexical gate, then the grammar caller's decision for what it lets through."""
    if not needs_tools(registry, text):
        return Result()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    async for delta in caller.step(messages, registry, max_tokens=24, temperature=0.0):
        if delta.tool_calls:
            return Result(delta.tool_calls[0].name, delta.tool_calls[0].arguments)
        if delta.text:
            break
    return Result()


async def decide_with_router(routed: RoutedToolCaller, registry: ToolRegistry, text: str,
                             state: dict[str, Any]) -> Result:
    """After: the embedding router in front of the grammar caller, with the call/confirm/answer rule."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    turn = await routed.decide(messages, registry, state=state)
    call = turn.call if turn.outcome in ("call", "confirm") else None
    return Result(call.name if call else None, call.arguments if call else None, turn.outcome == "confirm",
                  turn.route.ms)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else 0.0)


async def run_suite(target: Target, suite: str, cases: list[dict], pipeline: str, caller, routed,
                    writer: csv.writer) -> dict[str, Any]:
    board = SimBoard()
    registry = board_registry(board)
    state = {"volume": board.state.volume, "brightness": board.state.brightness}  # what the status tool reports
    if routed is not None:
        routed.router.warm(registry)  # a session embeds its tools once, at its start
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    route_ms: list[float] = []
    ok = confirms = chat_confirms = false_changes = false_reads = 0
    for i, case in enumerate(cases):
        start = time.perf_counter()
        try:
            if pipeline == "gate":
                res = await decide_with_gate(caller, registry, case["text"])
            else:
                res = await decide_with_router(routed, registry, case["text"], state)
        except ChatError as exc:
            res = Result(error=str(exc)[:200])
        ms = (time.perf_counter() - start) * 1000
        latencies.append(ms)
        if res.route_ms is not None:
            route_ms.append(res.route_ms)
        success, outcome = judge(case, res.name, res.args, registry) if not res.error else (False, "error")
        if res.args and "__by_model__" in res.args:  # --routing-only: the tool is judged, not the arguments
            right = bool(case.get("tool")) and registry.get(res.name).name == case["tool"]
            success, outcome = right, "ok_by_model" if right else outcome
        tool = registry.get(res.name) if res.name else None
        effect = tool_effect(tool) if tool else ""
        if res.confirm:
            confirms += 1
            if not case.get("tool"):  # asked on a chat turn: nothing happens, but it is not what the user wanted
                chat_confirms += 1
                success, outcome = False, "confirm_on_chat"
            else:
                outcome = f"confirm_{outcome}"
        elif outcome == "false_call":
            false_changes += effect == "changes"
            false_reads += effect == "reads"
        ok += success
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        writer.writerow([suite, target.name, pipeline, case["text"], case.get("tool") or "",
                         json.dumps(case.get("arguments", case.get("value", ""))), res.name or "", res.args or "",
                         int(res.confirm), effect, outcome, int(success),
                         "" if res.route_ms is None else round(res.route_ms, 2), round(ms, 1), res.error])
        print(f"  [{i + 1:2d}/{len(cases)}] {outcome:18s} {ms:7.0f} ms  {case['text']!r} -> {res.name} "
              f"{res.args or ''}{' (asks first)' if res.confirm else ''}", flush=True)
    chat_turns = sum(1 for c in cases if not c.get("tool"))
    return {"suite": Path(suite).stem, "pipeline": pipeline, "n": len(cases), "success": ok / len(cases),
            "chat_turns": chat_turns, "false_changes": false_changes, "false_reads": false_reads,
            "confirms": confirms, "chat_confirms": chat_confirms, "outcomes": outcomes,
            "route_p50": statistics.median(route_ms) if route_ms else None,
            "route_p95": pct(route_ms, 95) if route_ms else None,
            "latency_p50": statistics.median(latencies)}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default=",".join(str(p) for p in SUITES), help="comma separated suite files")
    ap.add_argument("--pipelines", default="gate,router", help="gate (before issue 14), router (after), or both")
    ap.add_argument("--targets", default="edge", help="edge, cloud or both (comma separated)")
    ap.add_argument("--mode", default="auto", choices=["auto", "native", "grammar"])
    ap.add_argument("--limit", type=int, default=0, help="only the first N requests of each suite (0: all)")
    ap.add_argument("--csv", default="bench_tools.csv")
    ap.add_argument("--no-launch", action="store_true", help="models are already served at their urls")
    ap.add_argument("--routing-only", action="store_true",
                    help="skip the model's argument round (judge the tool only where the words do not settle them)")
    opts = ap.parse_args()
    suites = {s: yaml.safe_load(Path(s).read_text())["requests"] for s in opts.suites.split(",")}
    if opts.limit:
        suites = {s: cases[: opts.limit] for s, cases in suites.items()}
    pipelines = opts.pipelines.split(",")
    router = IntentRouter(shared_embedder()) if "router" in pipelines else None
    summaries = []
    with open(opts.csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["suite", "target", "pipeline", "request", "expected_tool", "expected_args", "called_tool",
                         "called_args", "confirm", "effect", "outcome", "success", "route_ms", "latency_ms", "error"])
        for target in targets_from_topology(set(opts.targets.split(","))):
            server = None
            if target.launch is not None and not opts.no_launch:
                from shared.llama_server import LlamaServer

                server = LlamaServer(target.launch, port=free_port(), alias=target.model)
                await server.start()
                target.url = server.base_url
            llm = ChatClient(target.url, target.model, name=target.name, timeout=300)
            caller = caller_for(llm, opts.mode, target.kind)
            if opts.routing_only and isinstance(caller, GrammarToolCaller):
                caller = RoutingOnlyCaller(llm)
            routed = RoutedToolCaller(router, caller) if router and isinstance(caller, GrammarToolCaller) else None
            try:
                for suite, cases in suites.items():
                    for pipeline in pipelines:
                        if pipeline == "router" and routed is None:
                            print(f"== {target.name}: the router pipeline needs the grammar caller, skipped")
                            continue
                        print(f"== {target.name} {Path(suite).name} {pipeline} ({target.model})", flush=True)
                        summaries.append({"target": target.name, **await run_suite(
                            target, suite, cases, pipeline, caller, routed, writer)})
            finally:
                await llm.aclose()
                if server is not None:
                    await server.stop()
    print()
    if opts.routing_only:
        print("routing only: where the words do not settle the arguments, the tool is judged (outcome ok_by_model)")
    print("| suite | pipeline | success | false state-changing calls | false reading calls | confirmations "
          "(on chat) | routing p50 / p95 | decision p50 |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summaries:
        route = f"{s['route_p50']:.1f} / {s['route_p95']:.1f} ms" if s["route_p50"] is not None else "-"
        print(f"| {s['suite']} | {s['pipeline']} | {s['success']:.0%} of {s['n']} | "
              f"{s['false_changes']} / {s['chat_turns']} chat | {s['false_reads']} / {s['chat_turns']} chat | "
              f"{s['confirms']} ({s['chat_confirms']}) | {route} | {s['latency_p50']:.0f} ms |")
    for s in summaries:
        print(f"{s['target']} {s['suite']} {s['pipeline']}: {s['outcomes']}")
    print(f"per-request rows: {opts.csv}")
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: launched llama.cpp servers are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(asyncio.run(main()))
