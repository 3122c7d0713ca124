"""The faults of scripts/chaos.py against one real embedded stack (hub, leaf, worker, edge, every bundled
model, real Opus; the Consul double for discovery), bounded and fast.

Two simulated devices: A suffers each fault; B keeps one session for the whole module and
must never notice (same session, normal answers). Each case asserts that A's turn hit by
the fault ends with audio and ``tts stop``, that the broken component comes back by
itself (scripts/chaos.py's ``Fault.back``), and that A and B then get normal answers.
The faults come from scripts/chaos.py's :class:`Faults`, so the table and these tests
break things the same way. Cases run in file order on the shared stack; the TTS case is
first because it needs sentences that are not in the TTS cache yet.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
import pytest_asyncio

from scripts.chaos import Fault, Faults
from scripts.device_sim import DeviceSimulator
from scripts.embedded_harness import GREETINGS, QUESTIONS, DeviceFleet, EmbeddedRun, TurnRecord

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

# Shorter answers (less audio to play at real time); no answer cache (its model load costs start-up time).
FAST = {"edge": {"llm": {"max_tokens": 24}, "escalation": {"max_tokens": 32}}}
THANKS = "Thank you so much, goodbye!"  # said once, first: its answer is in no cache yet
BACK_WITHIN_S = 90.0  # a restarted worker reloads its model; generous for a busy 2-core box
# Transcript -> first audio with the leaf frozen: the "one moment" phrase (lead_in_ms 300) or a quick local answer.
# (The 800 ms target counts from the end of speech: VAD and ASR time too, which a busy box stretches; chaos.py.)
LEAF_FROZEN_ANSWER_MS = 1000.0


@dataclass
class Stage:
    run: EmbeddedRun
    fleet: DeviceFleet
    faults: Faults
    a: DeviceSimulator
    b: DeviceSimulator
    b_session: str

    async def say(self, who: str, utterance: str, drop: bool = False) -> TurnRecord:
        dev = self.a if who == "a" else self.b
        return await self.fleet.turn(0 if who == "a" else 1, dev, utterance, drop=drop)

    def fault(self, name: str) -> Fault:
        return self.faults.all()[name]

    async def during(self, name: str, utterance: str, meanwhile=None) -> TurnRecord:
        """A says ``utterance`` with fault ``name`` in force (a timed fault is healed after the turn, and
        after ``await meanwhile()``: checks while it is still broken)."""
        fault = self.fault(name)
        await fault.inject()
        try:
            rec = await self.say("a", utterance)
            if meanwhile is not None:
                await meanwhile()
            return rec
        finally:
            if fault.heal is not None:
                await fault.heal()

    async def reconnect_a(self) -> None:
        await self.a.close()
        self.a = await self.fleet.connect(0, retry=False)

    async def recovers(self, fault: Fault) -> None:
        """The component is back, and both devices get normal answers; B never left its session."""
        assert await self.run.until(fault.back, BACK_WITHIN_S, 0.5), f"{fault.name}: component not back"
        a, b = await asyncio.gather(self.say("a", GREETINGS[0]), self.say("b", GREETINGS[1]))
        assert a.normal, a
        assert b.normal, b
        assert self.b.session_id == self.b_session and self.b.close_code is None


def ended_well(rec: TurnRecord) -> bool:
    """The device heard something and was told the answer is over."""
    return rec.error is None and rec.frames > 0 and rec.tts_stop


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stage():
    async with EmbeddedRun(consul=True, overrides=FAST, worker_args=("--no-cache",), prefix="xz-test-chaos-") as run:
        fleet = DeviceFleet(run.ota_url, devices=2, turn_timeout_s=30.0)
        await fleet.prepare([*GREETINGS, *QUESTIONS, THANKS])
        a, b = await fleet.connect(0, retry=False), await fleet.connect(1, retry=False)
        s = Stage(run, fleet, Faults(run), a, b, b.session_id)
        try:
            yield s
        finally:
            await asyncio.gather(s.a.close(), s.b.close(), return_exceptions=True)


async def test_tts_failing_turn_ends_with_the_cached_apology(stage):
    rec = await stage.during("tts-fail", THANKS)
    assert ended_well(rec) and rec.apology, rec
    await stage.recovers(stage.fault("tts-fail"))


async def test_asr_raising_turn_ends_with_the_cached_apology(stage):
    rec = await stage.during("asr-fail", GREETINGS[0])
    assert ended_well(rec) and rec.apology, rec
    await stage.recovers(stage.fault("asr-fail"))


async def test_killed_local_model_turn_ends_and_the_model_comes_back(stage):
    rec = await stage.during("llm-kill", GREETINGS[1])  # local while the model is down: the cloud, or the apology
    assert ended_well(rec), rec
    await stage.recovers(stage.fault("llm-kill"))


async def test_worker_killed_mid_stream_turn_ends_and_the_worker_comes_back(stage):
    fault = stage.fault("worker-kill")
    turn = asyncio.create_task(stage.say("a", QUESTIONS[1]))
    note = await fault.inject()
    rec = await turn
    assert "no answer was streaming" not in note
    assert ended_well(rec), rec
    await stage.recovers(fault)


async def test_frozen_leaf_first_audio_comes_quickly_and_the_link_comes_back(stage):
    """The edge notices the freeze (pings) and answers locally, opening with the cached "one moment"."""
    async def health_tells_the_truth() -> None:
        health = await stage.run.edge_health()
        assert health["components"]["cloud_link"] == "down" and health["can_answer"], health

    rec = await stage.during("leaf-freeze", QUESTIONS[0], health_tells_the_truth)
    assert ended_well(rec), rec
    assert rec.first_audio_ms is not None and rec.stt_ms is not None, rec
    assert rec.first_audio_ms - rec.stt_ms <= LEAF_FROZEN_ANSWER_MS, rec
    await stage.recovers(stage.fault("leaf-freeze"))


async def test_killed_leaf_is_restarted_and_the_turn_ends(stage):
    rec = await stage.during("leaf-kill", QUESTIONS[1])
    assert ended_well(rec), rec
    await stage.recovers(stage.fault("leaf-kill"))


async def test_hub_restart_keeps_the_policy_revision(stage):
    rec = await stage.during("hub-restart", QUESTIONS[0])
    assert ended_well(rec), rec
    await stage.recovers(stage.fault("hub-restart"))  # hub back, link up, the edge still on the stored revision
    assert (await stage.run.edge_health())["policy_revision"] == stage.faults.policy_revision


async def test_consul_down_discovery_serves_the_snapshot(stage):
    fault = stage.faults.all()["consul-down"]
    await fault.inject()
    try:
        assert await stage.run.until(lambda: _metric_is(stage.run, "xz_discovery_consul_up", 0.0), 20.0)
        await stage.reconnect_a()  # OTA while Consul is down: the edge comes from the last good snapshot
        rec = await stage.say("a", GREETINGS[0])
    finally:
        await fault.heal()
    assert ended_well(rec) and rec.normal, rec
    await stage.recovers(fault)


async def test_device_dropping_mid_answer_leaves_the_others_alone(stage):
    t0 = time.monotonic()
    dropped, b = await asyncio.gather(stage.say("a", QUESTIONS[1], drop=True), stage.say("b", GREETINGS[0]))
    assert dropped.dropped and b.normal, (dropped, b)
    # the edge let go of A's session (and its MCP client): only B is connected
    assert await stage.run.until(lambda: _metric_is(stage.run, "xz_edge_connected_devices", 1.0), 15.0)
    assert time.monotonic() - t0 < 60
    await stage.reconnect_a()
    await stage.recovers(Fault("device-drop", stage.faults.always, None,
                               lambda: _metric_is(stage.run, "xz_edge_connected_devices", 2.0)))


async def _metric_is(run: EmbeddedRun, name: str, value: float) -> bool:
    return await run.edge_metric(name) == value
