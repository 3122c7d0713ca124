"""Policy in a real JetStream KV on a real hub; edges watching through a real leaf node."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from edge.policy_watcher import PolicyWatcher
from shared.policy import DEFAULT_POLICY, PolicyError, PolicyState, TurnFeatures, parse_policy
from shared.policy_store import PolicyStore, PolicyStoreError
from shared.subjects import POLICY_BUCKET, POLICY_KEY

pytestmark = pytest.mark.timeout(60)


def variant(share: float, name: str = "all") -> dict:
    return {"budget": {"max_share": share}, "rules": [{"name": name, "action": "escalate"}]}


async def test_set_get_history_rollback_on_a_real_hub(nats_hub, nats_connect):
    store = PolicyStore(await nats_connect(nats_hub.url))
    assert await store.get() is None
    assert await store.history() == []
    r1 = await store.set(DEFAULT_POLICY, note="initial", author="op")
    r2 = await store.set(variant(0.2), note="tighter", author="op")
    assert r2 > r1 > 0
    policy, rev = await store.get()
    assert rev == r2 and policy.budget.max_share == 0.2
    hist = await store.history()
    assert [h.revision for h in hist] == [r1, r2]
    assert hist[1].summary.startswith("op: tighter | 1 rules, budget 20%") and hist[1].time is not None
    r3 = await store.rollback(r1)
    policy, rev = await store.get()
    assert rev == r3 and policy == DEFAULT_POLICY
    assert "rollback to revision" in (await store.history())[-1].summary
    with pytest.raises(PolicyStoreError, match="revision 999 does not exist"):
        await store.rollback(999)
    with pytest.raises(PolicyError) as exc:
        await store.set({"rules": [{"name": "x", "action": "escalate", "match": {"pattern": "(("}}]})
    assert exc.value.errors[0].startswith("rules[0].match.pattern: invalid regex")
    assert (await store.get())[1] == r3  # nothing stored


async def test_writes_and_reads_through_a_leaf_node(nats_hub, nats_leaf, nats_connect):
    """The plain nats-py kv.put fails behind a leaf ("no response from stream"); the store's put works."""
    leaf_store = PolicyStore(await nats_connect(nats_leaf.url))
    hub_store = PolicyStore(await nats_connect(nats_hub.url))
    rev = await leaf_store.set(variant(0.3), author="edge-op")
    assert (await hub_store.get())[1] == rev
    rev2 = await hub_store.set(variant(0.4))
    policy, got = await leaf_store.get()
    assert got == rev2 and policy.budget.max_share == 0.4


async def test_watcher_through_leaf_picks_up_a_change_and_turns_keep_their_snapshot(
        nats_hub, nats_leaf, nats_connect):
    hub_store = PolicyStore(await nats_connect(nats_hub.url))
    watcher = await PolicyWatcher(await nats_connect(nats_leaf.url)).start()
    try:
        assert watcher.current() == (DEFAULT_POLICY, 0)
        turn = watcher.current()  # a turn in flight took this snapshot
        await asyncio.sleep(0.5)  # the watch is established
        t0 = time.perf_counter()
        rev = await hub_store.set(variant(0.25, "everything"))
        snap = await watcher.wait_revision(rev, timeout=5)
        latency_ms = (time.perf_counter() - t0) * 1000
        print(f"\npolicy change reached the edge through the leaf in {latency_ms:.1f} ms")
        assert snap.revision == rev and snap.policy.rules[0].name == "everything"
        assert watcher.current() is snap
        # The in-flight turn still decides with the revision it started with.
        d = turn.evaluate(TurnFeatures.from_text("hello there"), PolicyState())
        assert (d.revision, d.rule, d.escalate) == (0, "greeting", False)
        d = watcher.current().evaluate(TurnFeatures.from_text("hello there"), PolicyState())
        assert (d.revision, d.rule, d.escalate) == (rev, "everything", True)
    finally:
        await watcher.stop()


async def test_watcher_skips_an_invalid_stored_value(nats_hub, nats_leaf, nats_connect):
    hub = await nats_connect(nats_hub.url)
    store = PolicyStore(hub)
    good = await store.set(variant(0.5))
    watcher = await PolicyWatcher(await nats_connect(nats_leaf.url)).start()
    try:
        await watcher.wait_revision(good, timeout=5)
        kv = await store.bucket()
        await kv.put(POLICY_KEY, json.dumps({"policy": {"rules": "nope"}}).encode())  # written around the CLI
        await asyncio.sleep(0.5)
        newer = await store.set(variant(0.6))
        snap = await watcher.wait_revision(newer, timeout=5)
        assert snap.policy.budget.max_share == 0.6
    finally:
        await watcher.stop()
    assert (await hub.jetstream(domain="hub").stream_info(f"KV_{POLICY_BUCKET}")).config.max_msgs_per_subject == 64


async def test_watcher_keeps_its_policy_across_a_hub_outage_and_resumes(nats_hub, nats_leaf, nats_connect):
    hub_store = PolicyStore(await nats_connect(nats_hub.url))
    r1 = await hub_store.set(variant(0.1))
    watcher = await PolicyWatcher(await nats_connect(nats_leaf.url), resync_s=0.5).start()
    try:
        await watcher.wait_revision(r1, timeout=5)
        await nats_hub.stop()  # leaf link and JetStream gone
        await asyncio.sleep(2.0)
        assert watcher.current().revision == r1  # the last policy stays in force
        await nats_hub.start()
        t0 = time.perf_counter()
        r2 = None
        while r2 is None:  # the hub's JetStream needs a moment after restart
            try:
                r2 = await hub_store.set(variant(0.9))
            except Exception:
                await asyncio.sleep(0.2)
        snap = await watcher.wait_revision(r2, timeout=15)
        print(f"\nafter the hub came back, the edge had the new policy {time.perf_counter() - t0:.2f} s later")
        assert snap.policy.budget.max_share == 0.9
        # And the fresh watch keeps delivering later changes.
        r3 = await hub_store.set(variant(0.8))
        assert (await watcher.wait_revision(r3, timeout=5)).policy.budget.max_share == 0.8
    finally:
        await watcher.stop()
