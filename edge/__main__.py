"""``python -m edge serve|doctor``: run an edge node, or check that it could run.

``serve`` listens at once (``/health`` answers 503 while the models load, so a
load balancer or ``make run`` can wait on it) and loads the engine in the
background. Configuration and model problems end the process with one readable
line on stderr: exit code 2 for a bad configuration, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys

from aiohttp import web

from shared.tiers import UnknownTier, pinned_tier
from shared.log import log_event, setup_logging
from shared.topology import ModelNotFound, Topology, TopologyError, load_topology

log = logging.getLogger("edge.main")
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


class StartupError(Exception):
    """Startup failed; the message is the one line shown to the operator."""


async def serve(topology: Topology, site: str | None, host: str, port: int, edge_name: str | None = None) -> int:
    from edge.admission import ota_chooser_with_load
    from edge.engine import EdgeEngine  # heavy (model libraries): only when serving
    from edge.ota import request_ws_url
    from edge.registration import edge_registration
    from edge.server import SESSIONS_KEY, create_app
    from shared.discovery import make_discovery, ota_chooser
    from shared.memory_trim import start_trimmer

    start_trimmer()  # native model code's freed memory goes back to the OS (RSS stays flat over days)
    edge_name = edge_name or topology.site(site).edges[0].name
    engine = EdgeEngine(topology, site, edge_name)
    # OTA answers each device with the nearest healthy edge that has room (static or Consul); while this
    # edge is full (admission control), booting devices go to another edge with room
    discovery = make_discovery(topology)
    local_url = (lambda request: topology.edge.public_url) if topology.edge.public_url else request_ws_url
    admission = engine.admission
    chooser = (ota_chooser_with_load(discovery, edge_name, admission, local_url) if admission is not None
               else ota_chooser(discovery, edge_name, local_url))
    app = create_app(topology, site, engine, choose_edge=chooser)
    sessions = app[SESSIONS_KEY]
    # discovery (Consul) learns about this edge only once it can serve; a no-op with static discovery
    registration = edge_registration(topology, lambda: len(sessions), site, edge_name,
                                     has_room=admission.has_room_for_device if admission is not None else None)
    registered = False
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starter: asyncio.Task | None = None
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        log_event(log, "edge listening", host=host, port=port, site=topology.site(site).name)
        await discovery.start()
        starter = asyncio.create_task(engine.start())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({starter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if starter.done() and starter.exception() is not None:
            exc = starter.exception()
            if isinstance(exc, (ModelNotFound, TopologyError)):
                raise exc
            raise StartupError(f"engine failed to start: {type(exc).__name__}: {exc}")
        await registration.start()
        registered = True
        await stopper
        return 0
    finally:
        log_event(log, "edge stopping")
        if registered:
            try:
                await registration.stop()
            except Exception as exc:  # deregistration is best effort: the health check expires anyway
                log_event(log, "deregistration failed", logging.WARNING, error=str(exc))
        if starter is not None and not starter.done():
            starter.cancel()
            await asyncio.gather(starter, return_exceptions=True)
        await runner.cleanup()
        await discovery.stop()
        try:
            await engine.stop()
        except Exception as exc:  # stopping must finish even if a component misbehaves
            log_event(log, "engine stop failed", logging.WARNING, error=str(exc))


def _doctor(argv: list[str]) -> int:
    if importlib.util.find_spec("edge.doctor") is None:
        print("edge doctor: not available in this build", file=sys.stderr)
        return EXIT_RUNTIME
    from edge.doctor import main as doctor_main

    return doctor_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "doctor":
        return _doctor(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m edge", description="xiaozhi-edge edge node")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve devices: OTA, WebSocket, /health, /metrics")
    p.add_argument("--config", default=os.environ.get("XZ_TOPOLOGY"), help="topology.yaml (default: the repo's)")
    p.add_argument("--site", default=None, help="site name in the topology (default: the first)")
    p.add_argument("--edge", default=None, help="which edge of the site this is (default: its first)")
    p.add_argument("--host", default=None, help="listen address (default: the edge's host)")
    p.add_argument("--port", type=int, default=None, help="listen port (default: the edge's port)")
    sub.add_parser("doctor", help="check models, ports and connectivity")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        topology = load_topology(args.config)
        edges = topology.site(args.site).edges
        edge = next((e for e in edges if e.name == args.edge), None) if args.edge else edges[0]
        if edge is None:
            raise TopologyError([f"--edge {args.edge}: no such edge (have: {', '.join(e.name for e in edges)})"])
        tier = pinned_tier(dict(os.environ), edge.tier, topology.site(args.site).tier)
        if tier is not None:  # the tier's model settings, under any explicit XZ_CFG__ override
            topology = load_topology(args.config, {**tier.overrides(), **os.environ})
            log_event(log, "model tier applied", tier=tier.name)
    except UnknownTier as exc:
        print(f"edge: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TopologyError as exc:
        print(f"edge: bad configuration: {'; '.join(exc.errors)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(serve(topology, args.site, args.host or edge.host, args.port or edge.port, edge.name))
    except ModelNotFound as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TopologyError as exc:
        print(f"edge: bad configuration: {'; '.join(exc.errors)}", file=sys.stderr)
        return EXIT_CONFIG
    except ImportError as exc:
        print(f"edge: missing component: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except StartupError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
