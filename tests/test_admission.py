"""Admission control: admit under the limits, escalate or shed beyond them, send booting devices elsewhere."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY

from edge.admission import AdmissionControl, InflightCounter, Limits, Load, Verdict, ota_chooser_with_load
from shared.discovery import StaticDiscovery
from shared.topology import AdmissionSpec, load_topology


def admissions(verdict: str) -> float:
    return REGISTRY.get_sample_value("xz_edge_admission_total", {"verdict": verdict}) or 0.0


LIMITS = Limits(max_active_turns=10, max_asr_queue=4, max_llm_inflight=2, max_devices=3)


def control(load: Load, cloud: bool = True) -> AdmissionControl:
    return AdmissionControl(LIMITS, lambda: load, lambda: cloud)


def test_limits_follow_the_topology_capacity():
    small, big = Limits.for_capacity(50), Limits.for_capacity(150)
    assert big.max_devices == 150 and small.max_devices == 50
    assert big.max_active_turns > small.max_active_turns and big.max_llm_inflight >= small.max_llm_inflight
    pinned = Limits.for_capacity(150, spec=AdmissionSpec(max_active_turns=3, max_llm_inflight=1))
    assert (pinned.max_active_turns, pinned.max_llm_inflight, pinned.max_asr_queue) == (3, 1, big.max_asr_queue)


def test_under_the_limits_every_turn_is_admitted():
    before = admissions("admit")
    decision = control(Load(active_turns=3, asr_queue=1, llm_inflight=1)).decide()
    assert decision.admitted and decision.verdict is Verdict.ADMIT
    assert admissions("admit") == before + 1


@pytest.mark.parametrize("load", [Load(active_turns=10), Load(llm_inflight=2)])
def test_llm_bound_overload_escalates_while_the_cloud_is_healthy(load):
    before = admissions("escalate")
    decision = control(load, cloud=True).decide()
    assert decision.verdict is Verdict.ESCALATE
    assert admissions("escalate") == before + 1


def test_overload_without_a_cloud_gets_the_busy_phrase():
    before = admissions("busy")
    decision = control(Load(llm_inflight=5), cloud=False).decide()
    assert decision.verdict is Verdict.BUSY and "local llm" in decision.reason
    assert admissions("busy") == before + 1


def test_a_deep_asr_queue_sheds_even_with_a_healthy_cloud():
    decision = control(Load(asr_queue=4), cloud=True).decide()
    assert decision.verdict is Verdict.BUSY and "asr queue" in decision.reason


def test_a_starved_cpu_sheds_on_the_expected_asr_wait_even_with_a_short_queue():
    decision = control(Load(asr_queue=2, asr_wait_ms=LIMITS.max_asr_wait_ms), cloud=True).decide()
    assert (decision.verdict, decision.limit) == (Verdict.BUSY, "asr_wait")
    assert not control(Load(asr_queue=2, asr_wait_ms=LIMITS.max_asr_wait_ms)).has_room_for_device()


async def test_a_turn_whose_text_is_already_transcribed_owes_nothing_to_the_asr_queue():
    """The speculative ASR at the pause finished: a backed-up ASR queue (other devices' clips) is no reason to
    shed this turn; the limits past transcription still apply."""
    done = asyncio.get_running_loop().create_future()
    done.set_result("the text")
    backed_up = Load(asr_queue=9, asr_wait_ms=5 * LIMITS.max_asr_wait_ms)
    assert control(backed_up).decide(done).verdict is Verdict.ADMIT
    assert control(backed_up).decide(asyncio.get_running_loop().create_future()).verdict is Verdict.BUSY  # still queued
    full = Load(asr_queue=9, llm_inflight=LIMITS.max_llm_inflight)
    assert control(full, cloud=False).decide(done).verdict is Verdict.BUSY


def test_inflight_counter_counts_and_releases_on_error():
    c = InflightCounter()
    with c.track():
        with c.track():
            assert c.value == 2
    with pytest.raises(RuntimeError):
        with c.track():
            raise RuntimeError("llm broke")
    assert c.value == 0


def two_edge_topology(tmp_path):
    text = open("topology.yaml").read().replace(
        "        capacity: 150              # devices\n",
        "        capacity: 150              # devices\n"
        "      - {name: edge-2, host: 127.0.0.2, port: 8001, capacity: 150}\n")
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return load_topology(str(path))


def test_a_full_edge_sends_booting_devices_to_another_with_room(tmp_path):
    topo = two_edge_topology(tmp_path)
    discovery = StaticDiscovery(topo)
    load = {"now": Load(devices=0)}
    admission = AdmissionControl(LIMITS, lambda: load["now"], lambda: True)
    choose = ota_chooser_with_load(discovery, "edge-1", admission, local_url=lambda req: "ws://me/xiaozhi/v1/")
    devices = [f"aa:bb:cc:00:00:{i:02x}" for i in range(40)]
    spread = {choose(d, None) for d in devices}
    assert "ws://me/xiaozhi/v1/" in spread  # with room, devices keep landing here (rendezvous spreads them)
    load["now"] = Load(devices=3)  # at capacity
    before = admissions("redirected_device")
    assert {choose(d, None) for d in devices} == {"ws://127.0.0.2:8001/xiaozhi/v1/"}
    assert admissions("redirected_device") > before


def test_every_edge_full_still_answers_a_booting_device(tmp_path):
    topo = load_topology()
    admission = AdmissionControl(LIMITS, lambda: Load(devices=99), lambda: True)
    choose = ota_chooser_with_load(StaticDiscovery(topo), "edge-1", admission)
    assert choose("aa:bb:cc:00:00:01", None).startswith("ws://")  # least loaded: never no answer


async def test_wired_to_a_real_asr_queue(asr_service, question_pcm, silence_pcm):
    """The live load comes from the edge itself: the ASR queue, the turns gauge, sessions, the LLM counter."""
    llm = InflightCounter()
    sessions = {"n": 0}
    control = AdmissionControl.for_edge(150, AdmissionSpec(), asr_service, lambda: 0, lambda: sessions["n"], llm,
                                        lambda: False)
    assert control.limits == Limits.for_capacity(150, asr_service.max_batch)
    assert control.decide().admitted
    with llm.track(), llm.track(), llm.track(), llm.track(), llm.track(), llm.track():
        assert control.load().llm_inflight == 6
        assert control.decide().verdict is Verdict.BUSY  # 150 devices -> at most 6 local generations
    jobs = [asr_service.transcribe(np.concatenate([question_pcm, silence_pcm(20 + k)]))
            for k in range(control.limits.max_asr_queue + 2 * asr_service.max_batch + 2)]
    tasks = [asyncio.ensure_future(j) for j in jobs]
    await asyncio.sleep(0)  # every job submitted; the model holds one at most
    assert control.load().asr_queue >= control.limits.max_asr_queue
    assert control.decide().verdict is Verdict.BUSY
    sessions["n"] = 150
    assert not control.has_room_for_device()
    await asyncio.gather(*tasks, return_exceptions=True)  # past the service's own bound: AsrOverloaded
    assert control.load().asr_queue == 0
    # the time-based signal: the recent model time per clip, times the clips queued
    assert asr_service.clip_s > 0 and control.load().asr_wait_ms == 0.0
