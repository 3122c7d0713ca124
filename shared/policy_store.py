"""The escalation policy in a NATS JetStream KeyValue bucket, so every change has a revision.

Operators write through the hub, edges read and watch through their leaf node. Both
use the hub's JetStream domain when it has one (every provisioned and embedded hub) and
the plain API on a lab hub without a domain, detected on first use. Only the ``operator``
NATS user may create the bucket or put; edges just read and watch (a missing bucket
means "no policy set yet").

Bucket access (domain detection, puts behind a leaf) is ``shared/kv_bucket.py``.

Each value is a JSON envelope: ``{"schema": 1, "policy": {...}, "author": ..., "note": ...}``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator, NamedTuple

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KV_DEL, KV_PURGE

from shared.log import log_event
from shared.kv_bucket import DETECT, HISTORY, KvBucket, detect_domain  # noqa: F401 - re-exported
from shared.policy import DEFAULT_POLICY, Policy, PolicyError, loads_policy, parse_policy
from shared.subjects import POLICY_BUCKET, POLICY_KEY

log = logging.getLogger("shared.policy_store")

ENVELOPE_SCHEMA = 1


class PolicyStoreError(Exception):
    """The store could not be used (NATS/JetStream problem or a corrupt entry); one readable line."""


class PolicyRevision(NamedTuple):
    revision: int
    time: datetime | None
    summary: str


@dataclass(frozen=True)
class StoredPolicy:
    """One decoded KV entry."""

    policy: Policy
    revision: int
    time: datetime | None
    author: str
    note: str

    def summary(self) -> str:
        head = f"{self.author}: {self.note}" if self.note else self.author
        return f"{head} | {self.policy.summary()}" if head else self.policy.summary()


def encode_envelope(policy: Policy, note: str = "", author: str | None = None) -> bytes:
    if author is None:
        author = f"{getpass.getuser()}@{socket.gethostname()}"
    return json.dumps({"schema": ENVELOPE_SCHEMA, "policy": policy.to_dict(), "author": author, "note": note},
                      ensure_ascii=False).encode()


def decode_envelope(data: bytes, revision: int, created: datetime | None = None) -> StoredPolicy:
    """Decode and validate a stored value; raises PolicyError (never trusts the bucket's content)."""
    try:
        env = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError([f"revision {revision}: not JSON: {exc}"]) from None
    if not isinstance(env, dict) or "policy" not in env:
        raise PolicyError([f"revision {revision}: not a policy envelope"])
    return StoredPolicy(parse_policy(env["policy"]), revision, created,
                        str(env.get("author", "")), str(env.get("note", "")))


class PolicyStore(KvBucket):
    """The policy key of the ``xz_policy`` bucket, through any connection (hub or leaf)."""

    def __init__(self, nc: NATS, domain: str | None = DETECT, bucket: str = POLICY_BUCKET,
                 key: str = POLICY_KEY, timeout: float = 3.0):
        super().__init__(nc, bucket, "xiaozhi-edge escalation policy", domain, timeout)
        self.key = key

    async def get_entry(self) -> StoredPolicy | None:
        """The current stored policy, or None before any was set (or after a delete)."""
        kv = await self.bucket(create=False)
        if kv is None:
            return None
        try:
            e = await kv.get(self.key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return decode_envelope(e.value or b"", e.revision or 0, getattr(e, "created", None))

    async def get(self) -> tuple[Policy, int] | None:
        entry = await self.get_entry()
        return None if entry is None else (entry.policy, entry.revision)

    async def set(self, doc: Policy | dict | str | bytes, note: str = "", author: str | None = None) -> int:
        """Validate ``doc`` and store it; returns the new revision. Raises PolicyError when invalid."""
        if isinstance(doc, Policy):
            policy = doc
        elif isinstance(doc, dict):
            policy = parse_policy(doc)
        else:
            policy = loads_policy(doc)
        rev = await self.put(self.key, encode_envelope(policy, note, author))
        log_event(log, "policy stored", revision=rev, summary=policy.summary())
        return rev

    async def entries(self) -> list[StoredPolicy | PolicyRevision]:
        """Every kept revision, oldest first (undecodable ones as a PolicyRevision with the error)."""
        kv = await self.bucket(create=False)
        if kv is None:
            return []
        try:
            raw = await kv.history(self.key)
        except nats.js.errors.NoKeysError:
            return []
        out: list[StoredPolicy | PolicyRevision] = []
        for e in raw:
            created = getattr(e, "created", None)
            if e.operation in (KV_DEL, KV_PURGE):
                out.append(PolicyRevision(e.revision or 0, created, "deleted (edges use the built-in default)"))
                continue
            try:
                out.append(decode_envelope(e.value or b"", e.revision or 0, created))
            except PolicyError as exc:
                out.append(PolicyRevision(e.revision or 0, created, f"invalid: {exc.errors[0]}"))
        return out

    async def history(self) -> list[PolicyRevision]:
        return [e if isinstance(e, PolicyRevision) else PolicyRevision(e.revision, e.time, e.summary())
                for e in await self.entries()]

    async def revision(self, rev: int) -> StoredPolicy:
        kv = await self.bucket(create=False)
        if kv is None:
            raise PolicyStoreError("no policy has been set yet")
        try:
            e = await kv.get(self.key, revision=rev)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, nats.js.errors.NotFoundError):
            raise PolicyStoreError(f"revision {rev} does not exist (see history)") from None
        if e.operation in (KV_DEL, KV_PURGE) or not e.value:
            raise PolicyStoreError(f"revision {rev} is a delete, not a policy")
        return decode_envelope(e.value, rev, getattr(e, "created", None))

    async def rollback(self, rev: int, author: str | None = None) -> int:
        """Re-put the document of revision ``rev``; returns the new revision."""
        old = await self.revision(rev)
        return await self.set(old.policy, note=f"rollback to revision {rev}", author=author)

    async def watch(self) -> AsyncIterator[tuple[Policy, int]]:
        """Yield ``(policy, revision)`` for the current value and every change.

        A delete yields the built-in default with the delete's revision; an invalid
        value is logged and skipped (edges keep their last good policy). Ends when
        the underlying watch stops, or at once while no bucket exists (edges may not
        create it); :class:`edge.policy_watcher.PolicyWatcher` restarts it.
        """
        kv = await self.bucket(create=False)
        if kv is None:
            return
        watcher = await kv.watch(self.key)
        try:
            async for e in watcher:
                if e is None:  # "initial values done" marker
                    continue
                rev = e.revision or 0
                if e.operation in (KV_DEL, KV_PURGE):
                    yield DEFAULT_POLICY, rev
                    continue
                try:
                    yield decode_envelope(e.value or b"", rev).policy, rev
                except PolicyError as exc:
                    log_event(log, "ignoring invalid stored policy", level=logging.ERROR,
                              revision=rev, error=str(exc))
        finally:
            try:
                await asyncio.shield(watcher.stop())
            except Exception:  # the connection may be gone already
                pass
