"""One way to connect to NATS for every long-running process (edge node, cloud worker).

Once up, a connection reconnects forever: a hub restart or a cut leaf link must
never end a process, only pause what crosses the link. Connection changes are
logged as structured events.
"""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client as NATS

from shared.log import log_event

log = logging.getLogger("shared.nats")
# A server that stops answering (a frozen leaf node) counts as gone after about
# PING_INTERVAL_S * MAX_OUTSTANDING_PINGS seconds; nats-py's default is 4 minutes.
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 2



async def connect_nats(url: str, name: str, connect_timeout_s: float = 10.0, on_change=None,
                       inbox_prefix: str | None = None) -> NATS:
    """A NATS connection that reconnects forever once up; the first connection gives up after
    ``connect_timeout_s`` with ConnectionError. ``on_change(connected: bool)`` hears link changes.

    ``url`` may list several servers separated by commas (a hub cluster). ``inbox_prefix``
    (e.g. ``_INBOX.<site>``) is where replies come back: an edge site's NATS user may only
    receive replies under its own prefix (the permissions Ansible renders).
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    extra = {"inbox_prefix": inbox_prefix.encode()} if inbox_prefix else {}

    async def error_cb(exc: Exception) -> None:
        log_event(log, "nats error", logging.WARNING, name=name, error=f"{type(exc).__name__}: {exc}")

    async def disconnected_cb() -> None:
        log_event(log, "nats disconnected", logging.WARNING, name=name)
        if on_change:
            on_change(False)

    async def reconnected_cb() -> None:
        log_event(log, "nats reconnected", name=name)
        if on_change:
            on_change(True)

    try:
        nc = await asyncio.wait_for(
            nats.connect(servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                         ping_interval=PING_INTERVAL_S, max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                         allow_reconnect=True, error_cb=error_cb, disconnected_cb=disconnected_cb,
                         reconnected_cb=reconnected_cb, **extra), connect_timeout_s)
    except asyncio.TimeoutError:
        raise ConnectionError(f"no NATS server answered at {url} within {connect_timeout_s:.0f}s") from None
    if on_change:
        on_change(True)
    return nc
