"""Operators' tool for the escalation policy: ``python -m cloud policy <command>``.

    show                       the policy in force (the built-in default before any was set)
    set FILE [--note TEXT]     validate FILE (YAML/JSON) and store it as a new revision
    diff FILE                  unified diff of FILE against the policy in force
    history                    every kept revision
    rollback REV               store revision REV's document again, as a new revision
    dry-run FILE --turns T     replay an edge turn trace: escalations under FILE vs the current policy

NATS: ``--nats URL``, else ``$NATS_URL``, else the credentials file's ``NATS_URL``, else the hub in
topology.yaml. Credentials (the ``operator`` user: the only one allowed to put the policy):
``--creds FILE`` or ``$NATS_CREDS`` (``KEY=VALUE`` lines: NATS_USER, NATS_PASSWORD, NATS_CA,
optionally NATS_URL; Ansible renders one per hub host, the embedded default keeps one in
``.cache/embedded/security/operator.creds``), else ``$NATS_USER``/``$NATS_PASSWORD``/``$NATS_CA``.
Exit codes:
0 ok, 1 bad input (invalid policy, unknown revision, unreadable trace), 2 NATS unreachable.
Errors are one readable line each, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import nats
import nats.errors
import nats.js.errors

from shared.nats_conn import CredentialsError, NatsCredentials, redact_url
from shared.policy import DEFAULT_POLICY, Policy, PolicyError, PolicyState, evaluate, load_policy
from shared.policy_store import PolicyStore, PolicyStoreError
from shared.topology import TopologyError, load_topology

CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 3.0


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


EMBEDDED_CREDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "embedded",
                              "security", "operator.creds")


def credentials(arg: str | None, url_given: bool = False) -> NatsCredentials:
    """--creds FILE, else $NATS_CREDS, else the environment; with nothing set at all (no URL either: the
    topology's hub), the embedded default's operator file when ``make run`` has made one."""
    path = arg or os.environ.get("NATS_CREDS")
    try:
        if path:
            return NatsCredentials.from_file(path)
        creds = NatsCredentials.from_env()
        if creds.user is None and creds.url is None and not url_given and os.path.isfile(EMBEDDED_CREDS):
            return NatsCredentials.from_file(EMBEDDED_CREDS)
        return creds
    except CredentialsError as exc:
        raise CliError(str(exc), 2) from None


def nats_url(arg: str | None, creds: NatsCredentials | None = None) -> str:
    if arg:
        return arg
    if os.environ.get("NATS_URL"):
        return os.environ["NATS_URL"]
    if creds is not None and creds.url:
        return creds.url
    try:
        return load_topology().hub_url()
    except TopologyError as exc:
        raise CliError(f"no --nats URL, no NATS_URL, and topology.yaml is unusable: {exc.errors[0]}", 2) from None


async def _quiet(*_a) -> None:
    """nats-py prints every connection error by default; the CLI reports one line itself."""


@contextlib.asynccontextmanager
async def operator_connection(url: str, creds: NatsCredentials):
    """One short-lived connection for a CLI command; errors become one CliError line.

    Permission violations (e.g. a put without the operator user) arrive asynchronously;
    they are collected in ``nc.xz_errors`` so commands can report them."""
    errors: list[BaseException] = []

    async def remember(exc: BaseException) -> None:
        errors.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(url, connect_timeout=CONNECT_TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=1,
                         error_cb=remember, disconnected_cb=_quiet, closed_cb=_quiet, **creds.connect_options()),
            CONNECT_TIMEOUT_S + 1)
    except CredentialsError as exc:
        raise CliError(str(exc), 2) from None
    except Exception as exc:  # refused, DNS, timeout, bad URL, TLS, authorization: all one line
        cause = errors[-1] if errors else exc
        detail = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        raise CliError(f"cannot reach NATS at {redact_url(url)}: {detail}", 2) from None
    nc.xz_errors = errors
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def refused(url: str, nc) -> None:
    """Raise the CliError for a permission violation the server reported on ``nc``, if any."""
    denied = [str(e) for e in getattr(nc, "xz_errors", []) if "permission" in str(e).lower()]
    if denied:
        raise CliError(f"NATS at {redact_url(url)} refused: {denied[0]} (the operator user's credentials are "
                       f"needed: --creds FILE)", 2)


@contextlib.asynccontextmanager
async def _store(url: str, creds: NatsCredentials):
    async with operator_connection(url, creds) as nc:
        yield PolicyStore(nc, timeout=REQUEST_TIMEOUT_S)


def _read_policy(path: str) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise CliError(f"{path}: invalid policy:\n  " + "\n  ".join(exc.errors), 1) from None


async def _current(store: PolicyStore) -> tuple[Policy, int, str]:
    """(policy, revision, one-line description) of what edges use now."""
    entry = await store.get_entry()
    if entry is None:
        return DEFAULT_POLICY, 0, "no policy set yet: the built-in default policy (revision 0)"
    when = entry.time.isoformat(timespec="seconds") if entry.time else ""
    return entry.policy, entry.revision, f"revision {entry.revision} {when} {entry.summary()}".replace("  ", " ")


async def cmd_show(store: PolicyStore, args: argparse.Namespace) -> int:
    policy, _, desc = await _current(store)
    print(f"# {desc}")
    print(policy.to_json() if args.json else policy.to_yaml(), end="\n" if args.json else "")
    return 0


async def cmd_set(store: PolicyStore, args: argparse.Namespace) -> int:
    policy = _read_policy(args.file)
    rev = await store.set(policy, note=args.note or f"set from {os.path.basename(args.file)}")
    print(f"stored revision {rev}: {policy.summary()}")
    return 0


async def cmd_diff(store: PolicyStore, args: argparse.Namespace) -> int:
    new = _read_policy(args.file)
    cur, rev, _ = await _current(store)
    diff = difflib.unified_diff(cur.to_yaml().splitlines(keepends=True), new.to_yaml().splitlines(keepends=True),
                                fromfile=f"current (revision {rev})", tofile=args.file)
    text = "".join(diff)
    print(text if text else f"no difference from revision {rev}", end="" if text else "\n")
    return 0


async def cmd_history(store: PolicyStore, args: argparse.Namespace) -> int:
    revs = await store.history()
    if not revs:
        print("no policy set yet: edges use the built-in default (revision 0)")
        return 0
    for r in revs:
        when = r.time.isoformat(timespec="seconds") if r.time else "-"
        print(f"{r.revision:>6}  {when}  {r.summary}")
    return 0


async def cmd_rollback(store: PolicyStore, args: argparse.Namespace) -> int:
    try:
        rev = await store.rollback(args.rev)
    except (PolicyStoreError, PolicyError) as exc:
        raise CliError(f"rollback {args.rev}: {exc}", 1) from None
    print(f"stored revision {rev}: the document of revision {args.rev}")
    return 0


@dataclass
class ReplayResult:
    turns: int
    escalated: int
    by_rule: Counter
    decisions: list[bool]


def replay(policy: Policy, turns: Sequence, revision: int = 0) -> ReplayResult:
    """Evaluate recorded turns in order (budget window on the recorded times).

    A turn whose decision would wait for the local model's confidence, when the trace
    has none recorded, counts as local under ``<rule> (no confidence recorded)``.
    """
    state = PolicyState()
    by_rule: Counter = Counter()
    decisions = []
    for i, (ts, feats) in enumerate(turns):
        d = evaluate(feats, state, policy, revision, now=ts if ts is not None else float(i))
        label = d.rule
        if d.needs_confidence:
            label = f"{d.rule} (no confidence recorded)"
        elif d.budget_limited:
            label = f"{d.rule} (over budget)"
        by_rule[(label, d.escalate)] += 1
        decisions.append(d.escalate)
    return ReplayResult(len(turns), sum(decisions), by_rule, decisions)


async def cmd_dry_run(store: PolicyStore, args: argparse.Namespace) -> int:
    from shared.turn_trace import read_trace

    new = _read_policy(args.file)
    try:
        turns, skipped = read_trace(args.turns)
    except OSError as exc:
        raise CliError(f"{args.turns}: {exc.strerror or exc}", 1) from None
    if not turns:
        raise CliError(f"{args.turns}: no turns in the trace ({skipped} unusable lines)", 1)
    cur, rev, _ = await _current(store)
    a, b = replay(cur, turns, rev), replay(new, turns)
    pct = lambda n: f"{n} ({n / len(turns):.1%})"  # noqa: E731
    print(f"dry-run over {len(turns)} turns from {args.turns}" + (f" ({skipped} unusable lines skipped)" if skipped else ""))
    textless = sum(1 for _, f in turns if f.text is None)
    if textless:
        print(f"  {textless} turns were traced without text (store_text: false): keyword and pattern conditions "
              "match none of them")
    print(f"  current policy (revision {rev}) escalates: {pct(a.escalated)}")
    print(f"  new policy ({args.file}) escalates: {pct(b.escalated)}")
    changed = sum(1 for x, y in zip(a.decisions, b.decisions) if x != y)
    print(f"  turns whose decision changes: {changed}")
    print(f"  {'by rule':<44} {'current':>8} {'new':>8}")
    for label, escalate in sorted(set(a.by_rule) | set(b.by_rule), key=lambda k: (not k[1], k[0])):
        name = f"{'escalate' if escalate else 'local'}: {label}"
        print(f"  {name:<44} {a.by_rule[(label, escalate)]:>8} {b.by_rule[(label, escalate)]:>8}")
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats", default=argparse.SUPPRESS, help="NATS URL (default: $NATS_URL, then topology.yaml)")
    common.add_argument("--creds", default=argparse.SUPPRESS, metavar="FILE",
                        help="operator credentials (KEY=VALUE: NATS_USER, NATS_PASSWORD, NATS_CA; default $NATS_CREDS)")
    p = argparse.ArgumentParser(prog="python -m cloud policy", parents=[common],
                                description="Manage the escalation policy edges use.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("show", parents=[common], help="print the policy in force")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("set", parents=[common], help="validate and store a policy file")
    s.add_argument("file")
    s.add_argument("--note", default="")
    s = sub.add_parser("diff", parents=[common], help="diff a policy file against the one in force")
    s.add_argument("file")
    sub.add_parser("history", parents=[common], help="list revisions")
    s = sub.add_parser("rollback", parents=[common], help="store an earlier revision again")
    s.add_argument("rev", type=int)
    s = sub.add_parser("dry-run", parents=[common], help="replay a turn trace under a policy file")
    s.add_argument("file")
    s.add_argument("--turns", required=True, metavar="TRACE.jsonl")
    return p


COMMANDS = {"show": cmd_show, "set": cmd_set, "diff": cmd_diff, "history": cmd_history,
            "rollback": cmd_rollback, "dry-run": cmd_dry_run}


async def _run(args: argparse.Namespace) -> int:
    if args.command in ("set", "diff", "dry-run"):
        _read_policy(args.file)  # refuse a bad file before touching NATS
    creds = credentials(getattr(args, "creds", None), url_given=bool(getattr(args, "nats", None)))
    url = nats_url(getattr(args, "nats", None), creds)
    async with _store(url, creds) as store:
        try:
            return await COMMANDS[args.command](store, args)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            refused(url, store._nc)
            raise CliError(f"NATS at {redact_url(url)} has no JetStream for the policy bucket", 2) from None
        except (asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            refused(url, store._nc)
            detail = str(exc) or type(exc).__name__
            raise CliError(f"NATS at {redact_url(url)} did not answer: {detail}", 2) from None
        except PolicyError as exc:  # the stored value itself is invalid
            raise CliError(f"stored policy is invalid: {exc.errors[0]}", 1) from None


def quiet_asyncio() -> None:
    """asyncio's TLS teardown chatter ("returning true from eof_received()...") is no error for the user."""
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def run_cli(parser: argparse.ArgumentParser, run, argv: Sequence[str] | None) -> int:
    """Parse, run the coroutine, and turn a CliError into one readable line and its exit code."""
    args = parser.parse_args(argv)
    quiet_asyncio()
    try:
        return asyncio.run(run(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
