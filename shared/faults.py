"""Debug-only fault injection, for scripts/chaos.py and the fault tests.

Off unless the environment variable ``XZ_FAULTS_FILE`` names a file; then every
word in that file (e.g. ``tts asr``) is a fault in force, and the hooks named
after it raise :class:`InjectedFault`. The file is re-read when it changes, so a
running edge can be broken and healed without a restart. Hooks: ``asr`` (every
transcription), ``tts`` (every sentence, cached or not, except the edge's pre-warmed
phrases: the apology must still play).
"""

from __future__ import annotations

import os

ENV = "XZ_FAULTS_FILE"
_seen: tuple[float, frozenset[str]] = (-1.0, frozenset())


class InjectedFault(RuntimeError):
    """A failure asked for through XZ_FAULTS_FILE."""


def active() -> frozenset[str]:
    """The faults in force now (empty when injection is off or the file is missing)."""
    global _seen
    path = os.environ.get(ENV)
    if not path:
        return frozenset()
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return frozenset()
    if mtime != _seen[0]:
        try:
            with open(path) as f:
                _seen = (mtime, frozenset(f.read().split()))
        except OSError:
            return frozenset()
    return _seen[1]


def check(name: str) -> None:
    """Raise InjectedFault if fault ``name`` is in force."""
    if os.environ.get(ENV) and name in active():
        raise InjectedFault(f"injected fault: {name}")
