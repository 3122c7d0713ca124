"""Keeps an edge's escalation policy current: watches the KV key and swaps policies live.

The policy in force is one immutable :class:`PolicySnapshot`, replaced by a single
attribute assignment; a turn calls :meth:`PolicyWatcher.current` once at its start and
keeps that snapshot (and its revision) to the end, whatever changes meanwhile.

NATS trouble never takes the policy away: the last one stays in force (the built-in
default, revision 0, until one was ever received). The KV watch is restarted after
errors, and a light periodic check (one direct get every ``resync_s``) catches what a
watch can silently miss while the leaf link is down: a change made during the outage,
or a watch consumer that died with the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import NamedTuple

from nats.aio.client import Client as NATS

from edge import metrics
from shared.log import log_event
from shared.policy import DEFAULT_POLICY, Decision, Policy, PolicyError, PolicyState, TurnFeatures, evaluate
from shared.policy_store import PolicyStore

log = logging.getLogger("edge.policy_watcher")


class PolicySnapshot(NamedTuple):
    """The policy one turn uses, with its revision (0: the built-in default)."""

    policy: Policy
    revision: int

    def evaluate(self, features: TurnFeatures, state: PolicyState, now: float | None = None) -> Decision:
        return evaluate(features, state, self.policy, self.revision, now)


class PolicyWatcher:
    """``await start()``, then ``current()`` per turn; ``await stop()`` at shutdown."""

    def __init__(self, nc: NATS, store: PolicyStore | None = None, resync_s: float = 2.0):
        self._store = store or PolicyStore(nc)
        self._resync_s = resync_s
        self._snapshot = PolicySnapshot(DEFAULT_POLICY, 0)
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._watch_task: asyncio.Task | None = None
        metrics.POLICY_REVISION.set(0)

    def current(self) -> PolicySnapshot:
        return self._snapshot

    async def start(self) -> "PolicyWatcher":
        self._tasks = [asyncio.create_task(self._supervise(), name="policy-watch"),
                       asyncio.create_task(self._resync(), name="policy-resync")]
        return self

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []

    async def wait_revision(self, revision: int, timeout: float) -> PolicySnapshot:
        """Wait until a policy with at least ``revision`` is in force (asyncio.TimeoutError if not)."""
        async def until() -> PolicySnapshot:
            while self._snapshot.revision < revision:
                self._changed.clear()
                await self._changed.wait()
            return self._snapshot

        return await asyncio.wait_for(until(), timeout)

    def _apply(self, policy: Policy, revision: int, via: str) -> None:
        if revision == self._snapshot.revision:
            return
        old = self._snapshot.revision
        self._snapshot = PolicySnapshot(policy, revision)  # the atomic swap
        metrics.POLICY_REVISION.set(revision)
        self._changed.set()
        log_event(log, "escalation policy changed", revision=revision, previous=old, via=via,
                  summary=policy.summary())

    async def _supervise(self) -> None:
        """Run the KV watch forever, restarting it (with backoff) whenever it ends or fails."""
        backoff = 0.2
        while True:
            self._watch_task = asyncio.create_task(self._watch_once())
            try:
                await self._watch_task
                log_event(log, "policy watch ended; restarting", level=logging.DEBUG)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # stop() rather than a restart from _resync
                    self._watch_task.cancel()
                    raise
                backoff = 0.2
                continue  # _resync asked for a fresh watch: start it now
            except Exception as exc:
                log_event(log, "policy watch failed; keeping the current policy", level=logging.WARNING,
                          revision=self._snapshot.revision, error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _watch_once(self) -> None:
        async for policy, revision in self._store.watch():
            self._apply(policy, revision, "watch")

    async def _resync(self) -> None:
        """Periodic direct read: applies a missed change and restarts the watch after an outage."""
        reachable = True
        while True:
            await asyncio.sleep(self._resync_s)
            try:
                got = await self._store.get()
            except asyncio.CancelledError:
                raise
            except PolicyError:
                continue  # an invalid stored value: the watch logs it, the last good policy stays
            except Exception as exc:
                if reachable:
                    log_event(log, "policy store unreachable; keeping the current policy", level=logging.WARNING,
                              revision=self._snapshot.revision, error=f"{type(exc).__name__}: {exc}")
                reachable = False
                continue
            missed = got is not None and got[1] != self._snapshot.revision
            if missed:
                self._apply(got[0], got[1], "resync")
            if missed or not reachable:
                reachable = True
                if self._watch_task is not None and not self._watch_task.done():
                    self._watch_task.cancel()  # _supervise starts a fresh watch
