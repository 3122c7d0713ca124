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
CANCEL_PREFIX = f"{PREFIX}.cancel"
CANCEL_ALL = f"{CANCEL_PREFIX}.*"  # every worker listens here (no queue group): the holder acts


def cancel(turn_id: str) -> str:
    """The cancel subject of one escalated turn (carried in the request as ``cancel_subject``)."""
    return f"{CANCEL_PREFIX}.{token(turn_id, 'turn id')}"


def is_cancel_subject(subject: str) -> bool:
    head, _, tail = subject.rpartition(".")
    return head == CANCEL_PREFIX and bool(_TOKEN.match(tail))


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
