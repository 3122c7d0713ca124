"""One way to connect to NATS for every long-running process (edge node, cloud worker).

Once up, a connection reconnects forever: a hub restart or a cut leaf link must
never end a process, only pause what crosses the link. Connection changes are
logged as structured events.

Credentials and TLS come from :class:`NatsCredentials`: the environment
(``NATS_USER``, ``NATS_PASSWORD`` or ``NATS_PASSWORD_FILE``, ``NATS_CA``), a
credentials file of the same ``KEY=VALUE`` lines (what Ansible renders), or a
``user:password@`` in the URL. URLs are logged only through :func:`redact_url`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS

from shared.log import log_event

log = logging.getLogger("shared.nats")
# A server that stops answering (a frozen leaf node) counts as gone after about
# PING_INTERVAL_S * MAX_OUTSTANDING_PINGS seconds; nats-py's default is 4 minutes.
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 2

ENV_KEYS = ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE", "NATS_CA")


class CredentialsError(ValueError):
    """A credentials file or variable that cannot be used (one readable line)."""


def redact_url(url: str) -> str:
    """``url`` (one or several, comma separated) with any password replaced by ``***``."""
    out = []
    for part in url.split(","):
        try:
            u = urlsplit(part.strip())
        except ValueError:
            out.append("<unparsable URL>")
            continue
        if u.password is not None:
            host = u.hostname or ""
            netloc = f"{u.username}:***@{host}" + (f":{u.port}" if u.port else "")
            part = urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
        out.append(part.strip())
    return ",".join(out)


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """``KEY=VALUE`` lines (comments and blanks skipped), as systemd's EnvironmentFile reads them."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CredentialsError(f"credentials file {path}: {exc.strerror or exc}") from None
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise CredentialsError(f"credentials file {path}: not a KEY=VALUE line: {key[:40]!r}")
        values[key.strip()] = value.strip().strip('"')
    return values


@dataclass(frozen=True)
class NatsCredentials:
    """Who a client is (user and password) and which CA it trusts for TLS; all optional (a lab)."""

    user: str | None = None
    password: str | None = None
    ca_file: str | None = None
    url: str | None = None  # a credentials file may name the server too

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "NatsCredentials":
        env = os.environ if environ is None else environ
        password = env.get("NATS_PASSWORD") or None
        if not password and env.get("NATS_PASSWORD_FILE"):
            try:
                password = Path(env["NATS_PASSWORD_FILE"]).read_text().strip()
            except OSError as exc:
                raise CredentialsError(f"NATS_PASSWORD_FILE {env['NATS_PASSWORD_FILE']}: "
                                       f"{exc.strerror or exc}") from None
        return cls(env.get("NATS_USER") or None, password, env.get("NATS_CA") or None, env.get("NATS_URL") or None)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "NatsCredentials":
        return cls.from_env(read_env_file(path))

    def env(self) -> dict[str, str]:
        """The same credentials as environment variables, for a child process."""
        pairs = {"NATS_USER": self.user, "NATS_PASSWORD": self.password, "NATS_CA": self.ca_file, "NATS_URL": self.url}
        return {k: v for k, v in pairs.items() if v}

    def with_url(self, url: str) -> "NatsCredentials":
        return replace(self, url=url)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.ca_file:
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CredentialsError(f"NATS_CA {self.ca_file}: {getattr(exc, 'strerror', None) or exc}") from None

    def connect_options(self) -> dict:
        """Keyword arguments for ``nats.connect`` (a URL's own user:password wins)."""
        opts: dict = {}
        if self.user:
            opts["user"] = self.user
        if self.password:
            opts["password"] = self.password
        ctx = self.tls_context()
        if ctx is not None:
            opts["tls"] = ctx
        return opts



async def connect_nats(url: str, name: str, connect_timeout_s: float = 10.0, on_change=None,
                       inbox_prefix: str | None = None, credentials: NatsCredentials | None = None) -> NATS:
    """A NATS connection that reconnects forever once up; the first connection gives up after
    ``connect_timeout_s`` with ConnectionError. ``on_change(connected: bool)`` hears link changes.

    ``url`` may list several servers separated by commas (a hub cluster). ``inbox_prefix``
    (e.g. ``_INBOX.<site>``) is where replies come back: an edge site's NATS user may only
    receive replies under its own prefix (the permissions Ansible renders). ``credentials``
    default to the environment's (:meth:`NatsCredentials.from_env`).
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    creds = credentials if credentials is not None else NatsCredentials.from_env()
    extra = {"inbox_prefix": inbox_prefix.encode()} if inbox_prefix else {}
    extra.update(creds.connect_options())

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
        raise ConnectionError(f"no NATS server answered at {redact_url(url)} within {connect_timeout_s:.0f}s") from None
    if on_change:
        on_change(True)
    return nc
