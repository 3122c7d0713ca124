"""One JetStream KeyValue bucket on the hub, reached from any connection (hub or leaf).

Shared by the policy store and the device admission store. Clients behind a leaf reach
the hub's JetStream through its domain (``$JS.<domain>.API``); a lab hub may have no
domain. Which one applies is detected once, on first use (:func:`detect_domain`).

Why puts carry the ``$JS.<domain>.API.`` prefix: a leaf node does not import the hub's
stream subjects, so a plain publish to ``$KV.<bucket>.<key>`` from behind a leaf finds no
responder. nats.go prefixes puts when a domain is set; nats-py does not, so
:meth:`KvBucket.put` does. Reads (direct get) and watches already use the API prefix.
Only the ``operator`` NATS user may create buckets or put (shared/nats_permissions.py).
"""

from __future__ import annotations

import asyncio
import json
import logging

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from shared.log import log_event
from shared.nats_permissions import JS_DOMAIN

log = logging.getLogger("shared.kv")

HISTORY = 64  # revisions kept per key (JetStream's maximum)
DETECT = "detect"  # domain=DETECT: find out whether the hub has a JetStream domain


async def detect_domain(nc: NATS, timeout: float = 3.0,
                        candidates: tuple[str | None, ...] = (JS_DOMAIN, None)) -> str | None:
    """The first of ``candidates`` whose JetStream API answers (None = no domain).

    Raises ``nats.js.errors.ServiceUnavailableError`` when none does (no JetStream reachable).
    """
    for domain in candidates:
        subject = f"$JS.{domain}.API.INFO" if domain else "$JS.API.INFO"
        try:
            msg = await nc.request(subject, b"", timeout=timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        try:
            info = json.loads(msg.data)
        except ValueError:
            continue
        if isinstance(info, dict) and "error" not in info:
            return domain
    raise nats.js.errors.ServiceUnavailableError(description="no JetStream answered (with or without a domain)")


class KvBucket:
    """A named bucket: ``bucket()`` opens (or creates) it, ``put()`` works behind a leaf too."""

    def __init__(self, nc: NATS, bucket: str, description: str, domain: str | None = DETECT,
                 timeout: float = 3.0):
        self._nc = nc
        self._domain = domain
        self._timeout = timeout
        self._js = None
        self._bucket_name = bucket
        self._description = description
        self._kv: KeyValue | None = None

    @property
    def domain(self) -> str | None:
        return None if self._domain == DETECT else self._domain

    async def _jetstream(self):
        if self._js is None:
            if self._domain == DETECT:
                self._domain = await detect_domain(self._nc, self._timeout)
                log_event(log, "JetStream found", bucket=self._bucket_name, domain=self._domain or "(none)")
            self._js = self._nc.jetstream(domain=self._domain, timeout=self._timeout)
        return self._js

    async def bucket(self, create: bool = True) -> KeyValue | None:
        """The KV bucket, created (history 64) on first use if ``create``; None if absent and not created."""
        if self._kv is not None:
            return self._kv
        js = await self._jetstream()
        try:
            self._kv = await js.key_value(self._bucket_name)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                return None
            try:
                self._kv = await js.create_key_value(
                    KeyValueConfig(bucket=self._bucket_name, history=HISTORY, description=self._description))
            except nats.js.errors.BadRequestError:  # created concurrently with another config
                self._kv = await js.key_value(self._bucket_name)
        return self._kv

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value`` under ``key`` (creating the bucket); returns the new revision."""
        await self.bucket(create=True)
        api = f"$JS.{self._domain}.API." if self._domain else ""
        ack = await (await self._jetstream()).publish(f"{api}$KV.{self._bucket_name}.{key}", value)
        return ack.seq
