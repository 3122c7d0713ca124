"""Which devices may use this deployment: allow list, revocation, the firmware's activation flow.

- Allow list (``edge.auth.allowed_devices``): device id prefixes; empty admits any device.
- Revocation: ``edge.auth.revoked`` plus ``revoked.*`` keys of the devices KV, watched, so a
  ``python -m cloud devices revoke ID`` takes effect on every edge without a restart.
- Activation (``edge.auth.activation.enabled``): a device that is not admitted gets
  ``activation {code, message, challenge, timeout_ms}`` from OTA instead of a token; it shows
  the code, an operator approves it (``python -m cloud devices approve CODE``), the device posts
  ``{algorithm: hmac-sha256, serial_number, challenge, hmac}`` to ``/activate``, where ``hmac``
  is HMAC-SHA256 of the challenge with the device's eFuse key (``HMAC_KEY0``), lowercase hex,
  as the firmware's ``Ota::GetActivationPayload`` computes it. 202 while waiting, 200 when done.
  The code is derived from the device id with the token secret, so any edge computes the same one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from shared.device_store import APPROVED, REVOKED, DevicesStore
from shared.log import log_event
from shared.topology import AuthSpec, TopologyError

log = logging.getLogger("edge.device_access")

CHALLENGE_TTL_S = 600.0


def read_device_keys(text: str) -> dict[str, bytes]:
    """``SERIAL HEXKEY`` lines (``#`` comments) -> {serial: key}; a bad line is a TopologyError."""
    keys = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            keys[parts[0]] = bytes.fromhex(parts[1])
        except ValueError:
            raise TopologyError([f"edge.auth.activation.device_keys: line {n}: expected 'SERIAL HEXKEY'"]) from None
    return keys


def activation_hmac(key: bytes, challenge: str) -> str:
    """What the firmware sends as ``hmac``: HMAC-SHA256(HMAC_KEY0, challenge bytes), lowercase hex."""
    return hmac.new(key, challenge.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass
class _Pending:
    device_id: str
    serial: str
    expires: float


class DeviceAdmission:
    """The admission state of one edge; ``watch(nc)`` keeps the dynamic part current."""

    def __init__(self, auth: AuthSpec, secret: str):
        self._secret = secret.encode("utf-8")
        self.prefixes = [p.lower() for p in auth.allowed_devices]
        self.revoked_static = {d.lower() for d in auth.revoked}
        self.revoked_dynamic: set[str] = set()
        self.approved_codes: set[str] = set()
        self.activation = auth.activation
        self.device_keys = (read_device_keys(auth.activation.device_keys.resolve())
                            if auth.activation.enabled and auth.activation.device_keys else {})
        self._pending: dict[str, _Pending] = {}  # challenge -> device
        self._proved: set[str] = set()  # devices that proved their key at /activate

    # ------------------------------------------------------------ decisions
    def code_for(self, device_id: str) -> str:
        digest = hmac.new(self._secret, b"activation:" + device_id.lower().encode(), hashlib.sha256).digest()
        return f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"

    def revoked(self, device_id: str) -> bool:
        d = device_id.lower()
        return d in self.revoked_static or d in self.revoked_dynamic

    def listed(self, device_id: str) -> bool:
        if not self.prefixes:
            return not self.activation.enabled
        return device_id.lower().startswith(tuple(self.prefixes))

    def activated(self, device_id: str) -> bool:
        if not self.activation.enabled or self.code_for(device_id) not in self.approved_codes:
            return False
        return not self.device_keys or device_id.lower() in self._proved

    def admitted(self, device_id: str) -> tuple[bool, str]:
        """(admitted, reason if not)."""
        if self.revoked(device_id):
            return False, "device revoked"
        if self.listed(device_id) or self.activated(device_id):
            return True, ""
        return False, "device not activated" if self.activation.enabled else "device not allowed"

    # ------------------------------------------------------------ activation
    def start_activation(self, device_id: str, serial: str) -> dict:
        now = time.monotonic()
        self._pending = {c: p for c, p in self._pending.items() if p.expires > now}
        challenge = secrets.token_hex(16)
        self._pending[challenge] = _Pending(device_id.lower(), serial, now + CHALLENGE_TTL_S)
        code = self.code_for(device_id)
        return {"code": code, "challenge": challenge, "timeout_ms": self.activation.timeout_ms,
                "message": f"Activation code {code}. Ask your operator to approve it."}

    def check_activation(self, body: dict, device_id: str) -> tuple[int, str]:
        """HTTP status for ``POST /activate``: 200 done, 202 waiting, 400/403 refused."""
        if not self.activation.enabled:
            return 200, "activation not required"
        challenge = body.get("challenge") if isinstance(body.get("challenge"), str) else ""
        pending = self._pending.get(challenge)
        if pending is None or pending.expires < time.monotonic():
            return 400, "unknown or expired challenge: check the OTA endpoint again"
        if device_id and device_id.lower() != pending.device_id:
            return 403, "challenge issued to another device"
        if self.device_keys:
            serial = body.get("serial_number") if isinstance(body.get("serial_number"), str) else ""
            key = self.device_keys.get(serial)
            given = body.get("hmac") if isinstance(body.get("hmac"), str) else ""
            if key is None or not hmac.compare_digest(activation_hmac(key, challenge).encode(),
                                                      given.lower().encode("ascii", "replace")):
                log_event(log, "activation proof refused", logging.WARNING, device=pending.device_id, serial=serial)
                return 403, "the device could not prove its key"
            self._proved.add(pending.device_id)
        if self.code_for(pending.device_id) not in self.approved_codes:
            return 202, "waiting for the operator's approval"
        log_event(log, "device activated", device=pending.device_id)
        return 200, "activated"

    # ------------------------------------------------------------ live updates
    def apply(self, kind: str, value: str, active: bool) -> None:
        target = self.approved_codes if kind == APPROVED else self.revoked_dynamic if kind == REVOKED else None
        if target is None:
            return
        value = value.lower()
        if active and value not in target:
            target.add(value)
            log_event(log, "device admission changed", kind=kind, value=value)
        elif not active and value in target:
            target.discard(value)
            log_event(log, "device admission changed", kind=f"un{kind}", value=value)

    async def watch(self, nc, retry_s: float = 2.0) -> None:
        """Follow the devices KV forever (restarted when it ends, e.g. before the bucket exists)."""
        store = DevicesStore(nc)
        while True:
            try:
                async for change in store.watch():
                    self.apply(change.kind, change.value, change.active)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS trouble: keep the last known state, retry
                log_event(log, "devices watch failed; keeping the current state", logging.DEBUG,
                          error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(retry_s)
