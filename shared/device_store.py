"""Device admission decisions that change without a restart, in a JetStream KV bucket.

Operators write them (``python -m cloud devices approve CODE`` / ``revoke DEVICE_ID``);
every edge watches the bucket and applies them at once:

- ``approved.<code>``: the activation code a device showed was approved by an operator.
- ``revoked.<base64url(device id)>``: the device's tokens are refused from now on
  (deleting the key lifts the revocation).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import AsyncIterator

from nats.aio.client import Client as NATS
from nats.js.kv import KV_DEL, KV_PURGE

from shared.kv_bucket import DETECT, KvBucket
from shared.subjects import DEVICES_BUCKET

APPROVED = "approved"
REVOKED = "revoked"


def device_key(device_id: str) -> str:
    """A device id (a MAC, with colons) as one KV key token."""
    return base64.urlsafe_b64encode(device_id.lower().encode()).rstrip(b"=").decode()


def device_from_key(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


@dataclass(frozen=True)
class DeviceChange:
    kind: str  # APPROVED or REVOKED
    value: str  # the code, or the device id
    active: bool  # False when the key was deleted


class DevicesStore(KvBucket):
    def __init__(self, nc: NATS, domain: str | None = DETECT, timeout: float = 3.0):
        super().__init__(nc, DEVICES_BUCKET, "xiaozhi-edge device admission", domain, timeout)

    @staticmethod
    def _note(author: str) -> bytes:
        return json.dumps({"by": author, "at": int(time.time())}).encode()

    async def approve(self, code: str, author: str = "") -> int:
        if not code.isdigit():
            raise ValueError(f"activation code {code!r}: digits only")
        return await self.put(f"{APPROVED}.{code}", self._note(author))

    async def revoke(self, device_id: str, author: str = "") -> int:
        return await self.put(f"{REVOKED}.{device_key(device_id)}", self._note(author))

    async def unrevoke(self, device_id: str) -> None:
        kv = await self.bucket(create=False)
        if kv is not None:
            await kv.delete(f"{REVOKED}.{device_key(device_id)}")

    async def watch(self) -> AsyncIterator[DeviceChange]:
        """Every current entry, then every change; ends at once while the bucket does not exist."""
        kv = await self.bucket(create=False)
        if kv is None:
            return
        watcher = await kv.watch(">")
        try:
            async for e in watcher:
                if e is None:
                    continue
                kind, _, token = (e.key or "").partition(".")
                active = e.operation not in (KV_DEL, KV_PURGE)
                if kind == APPROVED:
                    yield DeviceChange(APPROVED, token, active)
                elif kind == REVOKED:
                    try:
                        yield DeviceChange(REVOKED, device_from_key(token), active)
                    except (ValueError, UnicodeDecodeError):
                        continue
        finally:
            try:
                await watcher.stop()
            except Exception:  # the connection may be gone already
                pass
