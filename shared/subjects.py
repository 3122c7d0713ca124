"""Every NATS subject, queue group and KV name the edge and the cloud share, in one place.

Names carry the protocol version (``xz.v1``), so a future incompatible wire
schema can run beside this one during a rolling upgrade.
"""

from __future__ import annotations

import re

VERSION = "v1"
PREFIX = f"xz.{VERSION}"

# A single subject token: no dots, wildcards or whitespace (NATS would split or widen it).
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


class SubjectError(ValueError):
    """A name that cannot be used as one subject token."""


def token(value: str, what: str = "token") -> str:
    """``value`` if it is a safe single subject token, else SubjectError."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise SubjectError(f"{what} {value!r} is not a valid subject token (letters, digits, '_' and '-' only)")
    return value


# ---------------------------------------------------------------- escalation requests
ESCALATE_PREFIX = f"{PREFIX}.escalate"


def escalate(model_class: str) -> str:
    """Where edges send escalated turns for ``model_class``; workers subscribe in a queue group."""
    return f"{ESCALATE_PREFIX}.{token(model_class, 'model class')}"


def worker_queue(model_class: str) -> str:
    """The queue group of the workers serving ``model_class``: one request reaches one worker."""
    return f"xz-workers-{token(model_class, 'model class')}"


# ---------------------------------------------------------------- cancellation
# Each site cancels only in its own namespace (``cancel.<site>.<turn>``): the NATS user of a
# site may publish there and nowhere else under ``cancel``, so no site can stop another's turns.
CANCEL_PREFIX = f"{PREFIX}.cancel"
CANCEL_ALL = f"{CANCEL_PREFIX}.*.*"  # every worker listens here (no queue group): the holder acts
NO_SITE = "_"  # the namespace of requests that name no site (tests, benchmarks on an open NATS)


def cancel(turn_id: str, site: str = "") -> str:
    """The cancel subject of one escalated turn (carried in the request as ``cancel_subject``)."""
    return f"{CANCEL_PREFIX}.{token(site or NO_SITE, 'site')}.{token(turn_id, 'turn id')}"


def cancel_site(site: str) -> str:
    """Every cancel subject of one site: what its NATS user may publish."""
    return f"{CANCEL_PREFIX}.{token(site, 'site')}.*"


def is_cancel_subject(subject: str) -> bool:
    parts = subject.split(".")
    return (".".join(parts[:-2]) == CANCEL_PREFIX and len(parts) == CANCEL_PREFIX.count(".") + 3
            and all(_TOKEN.match(p) for p in parts[-2:]))


# ---------------------------------------------------------------- worker health
HEARTBEAT_PREFIX = f"{PREFIX}.worker.heartbeat"
HEARTBEAT_ALL = f"{HEARTBEAT_PREFIX}.>"  # <model_class>.<worker name>


def heartbeat(model_class: str, worker: str) -> str:
    """Where a worker publishes its periodic health (load, backends up); edges read cloud health here."""
    return f"{HEARTBEAT_PREFIX}.{token(model_class, 'model class')}.{token(worker, 'worker name')}"


def heartbeat_class(model_class: str) -> str:
    return f"{HEARTBEAT_PREFIX}.{token(model_class, 'model class')}.*"


# ---------------------------------------------------------------- escalation policy (JetStream KV)
POLICY_BUCKET = "xz_policy"
POLICY_KEY = "policy"

# ---------------------------------------------------------------- device admission (JetStream KV)
# approved.<activation code> and revoked.<device id, base64url>; the operator writes, edges watch.
DEVICES_BUCKET = "xz_devices"
