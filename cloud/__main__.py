"""``python -m cloud worker ...`` runs a cloud worker; ``policy ...`` and ``devices ...`` are the operators' tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from shared.log import log_event, setup_logging

log = logging.getLogger("cloud")


def _worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloud worker", description="Serve escalated turns from NATS.")
    p.add_argument("--config", help="topology.yaml (default: XZ_TOPOLOGY or the repository's)")
    p.add_argument("--name", help="worker name in cloud.workers (default: the first)")
    p.add_argument("--nats", help="NATS URL (default: NATS_URL, then the topology's hub)")
    p.add_argument("--launch-backends", action="store_true",
                   help="start a llama.cpp server for every backend that has a launch: section (embedded default)")
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=9108, help="/metrics and /health; 0 disables")
    p.add_argument("--no-cache", action="store_true", help="disable the semantic answer cache")
    p.add_argument("--cache-threshold", type=float, default=0.85, help="cosine similarity for a cache hit")
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--connect-timeout", type=float, default=10.0, help="give up if NATS is not up by then")
    return p


async def run_worker(args: argparse.Namespace) -> int:
    from cloud.answer_cache import AnswerCache
    from cloud.backends import BackendPool
    from cloud.registration import worker_registration
    from cloud.worker import Worker, serve_http
    from shared.nats_conn import connect_nats, redact_url
    from shared.llama_server import LlamaServer, LlamaServerError
    from shared.memory_trim import start_trimmer
    from shared.topology import ModelNotFound, TopologyError, load_topology

    start_trimmer()  # freed memory goes back to the OS (RSS stays flat over days)
    try:
        topo = load_topology(args.config)
    except TopologyError as exc:
        print(f"topology: {exc}", file=sys.stderr)
        return 2
    specs = topo.cloud.workers
    spec = next((w for w in specs if w.name == args.name), None) if args.name else (specs[0] if specs else None)
    if spec is None:
        have = ", ".join(w.name for w in specs) or "none"
        print(f"no worker {args.name!r} in cloud.workers of {topo.source} (have: {have})", file=sys.stderr)
        return 2
    url = args.nats or os.environ.get("NATS_URL") or topo.hub_url()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    launched: dict[str, LlamaServer] = {}
    pool = runner = worker = nc = registration = None
    try:
        if args.launch_backends:
            for b in spec.backends:
                if b.launch is not None:
                    server = LlamaServer.for_url(b.launch, b.url, alias=b.model, name=f"backend:{b.name}")
                    launched[b.name] = server
                    await server.start()
        pool = BackendPool.from_specs(spec.backends)
        for name, server in launched.items():  # a crashed server is out of the pool at once, back once restarted
            server.supervisor.on_event = lambda state, _info, name=name: pool.mark(name, state == "up")
        await pool.start()
        cache = None if args.no_cache else await AnswerCache.create(threshold=args.cache_threshold)
        try:
            nc = await connect_nats(url, f"xz-worker-{spec.name}", args.connect_timeout)
        except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
            print(f"cannot connect to NATS at {redact_url(url)}: {exc or type(exc).__name__}", file=sys.stderr)
            return 1
        worker = Worker(nc, spec.name, spec.model_class, pool, max_inflight=spec.max_inflight, cache=cache,
                        sites=[s.name for s in topo.sites])
        worker.launched = launched
        await worker.start()
        if args.http_port:
            runner = await serve_http(worker, args.http_host, args.http_port)
        # discovery (Consul) learns about the worker once it serves; a no-op with static discovery
        registration = worker_registration(topo, lambda: worker.inflight, spec.name)
        await registration.start()
        log_event(log, "worker ready", worker=spec.name, nats=redact_url(url),
                  http=f"http://{args.http_host}:{args.http_port}" if args.http_port else None)
        await stop.wait()
        return 0
    except (LlamaServerError, ModelNotFound, ValueError) as exc:
        print(f"worker {spec.name}: {exc}", file=sys.stderr)
        return 1
    finally:
        if registration is not None:
            with contextlib.suppress(Exception):  # best effort: the health check expires anyway
                await registration.stop()
        if worker is not None:
            await worker.stop(args.drain_timeout)
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
        if runner is not None:
            await runner.cleanup()
        if pool is not None:
            await pool.stop()
        for server in reversed(list(launched.values())):
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m cloud {worker|policy|devices} ..."
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "worker":
        setup_logging()
        return asyncio.run(run_worker(_worker_parser().parse_args(rest)))
    if command == "policy":
        from cloud.policy_cli import main as policy_main  # C2's operators' tool, imported only when used

        return policy_main(rest)
    if command == "devices":
        from cloud.devices_cli import main as devices_main

        return devices_main(rest)
    print(f"unknown command {command!r}; {usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
