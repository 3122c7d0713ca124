"""Per-device access tokens: HMAC-SHA256 over the device id and an expiry.

The OTA endpoint hands each device a token; the device sends it back as
``Authorization: Bearer <token>`` on every WebSocket handshake. Tokens are
stateless (any edge holding the shared secret can check them) and contain no
spaces: the firmware adds ``Bearer `` only to a token without one.
Format: ``v1.<base64url(device_id)>.<expiry unix seconds>.<base64url(hmac)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

from shared.log import log_event
from shared.topology import Topology, TopologyError

log = logging.getLogger("edge.tokens")

_PREFIX = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenCheck:
    """Outcome of a verification: truthy when valid; ``reason`` says why not."""

    ok: bool
    reason: str = ""
    device_id: str | None = None

    def __bool__(self) -> bool:
        return self.ok


class TokenIssuer:
    """Issues and verifies device tokens with one secret."""

    def __init__(self, secret: str, ttl_s: int = 30 * 86400):
        if not secret:
            raise ValueError("token secret must not be empty")
        self._key = secret.encode("utf-8")
        self.ttl_s = ttl_s

    @classmethod
    def from_topology(cls, topology: Topology) -> "TokenIssuer":
        """The issuer of ``edge.auth``; refuses the secret's lab default unless ``allow_insecure_dev``."""
        auth = topology.edge.auth
        if auth.secret.is_default():
            if not auth.allow_insecure_dev:
                raise TopologyError([f"edge.auth.secret: {auth.secret.env or auth.secret.file} is not set; refusing the "
                                     "insecure default token secret (set it, or edge.auth.allow_insecure_dev: true "
                                     "for a lab)"])
            log_event(log, "insecure default token secret in use (edge.auth.allow_insecure_dev)", logging.WARNING)
        return cls(auth.secret.resolve(), auth.token_ttl_s)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def issue(self, device_id: str, now: float | None = None, ttl_s: int | None = None) -> str:
        expiry = int((time.time() if now is None else now) + (self.ttl_s if ttl_s is None else ttl_s))
        body = f"{_PREFIX}.{_b64(device_id.encode('utf-8'))}.{expiry}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str | None, device_id: str | None = None, now: float | None = None) -> TokenCheck:
        """Valid signature, not expired, and (when given) issued to ``device_id``."""
        if not token:
            return TokenCheck(False, "missing token")
        if not token.isascii() or not token.isprintable():  # any bytes may arrive: never an exception
            return TokenCheck(False, "malformed token")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _PREFIX:
            return TokenCheck(False, "malformed token")
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(body), parts[3]):
            return TokenCheck(False, "bad signature")
        try:
            owner = _unb64(parts[1]).decode("utf-8")
            expiry = int(parts[2])
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return TokenCheck(False, "malformed token")
        if expiry < (time.time() if now is None else now):
            return TokenCheck(False, "token expired", owner)
        if device_id is not None and device_id.lower() != owner.lower():
            return TokenCheck(False, "token issued to another device", owner)
        return TokenCheck(True, "", owner)
