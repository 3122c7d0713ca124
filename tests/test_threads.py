"""The thread budget: the heavy stages share the cores instead of each taking all of them."""

from __future__ import annotations

import pytest

from edge.engine import EdgeEngine
from edge.threads import apply_budget, onnx_session, thread_budget
from shared.topology import ThreadsSpec, resolve_model_path
from tests.fixtures_edge import make_topology


def test_a_two_core_box_gives_each_heavy_stage_both_cores():
    b = thread_budget(ThreadsSpec(cores=2))  # they alternate within a turn: a split starves the single turn
    assert (b.asr, b.llm_servers * b.llm, b.vad, b.tts) == (2, 2, 1, 1)


def test_the_small_model_gets_a_single_threaded_server_per_core():
    b = thread_budget(ThreadsSpec(cores=2))
    assert (b.llm_servers, b.llm) == (2, 1)  # two answers at once, no thread waiting for another
    assert thread_budget(ThreadsSpec(cores=2), "multilingual").llm_servers == 1  # a bigger model: one server
    assert thread_budget(ThreadsSpec(cores=2, llm_servers=1, llm=2)).llm_servers == 1  # topology pins win


@pytest.mark.parametrize("cores", [4, 8, 16])
def test_asr_and_the_llm_together_fit_the_cores(cores):
    for tier in (None, "cpu-small", "cpu-medium", "cpu-large", "gpu"):
        b = thread_budget(ThreadsSpec(cores=cores), tier)
        assert b.asr + b.llm <= cores and min(b.vad, b.asr, b.tts, b.llm) >= 1
    assert thread_budget(ThreadsSpec(cores=cores), "gpu").asr == 1  # the accelerator does ASR's work
    ml, cpu = thread_budget(ThreadsSpec(cores=cores), "multilingual"), thread_budget(ThreadsSpec(cores=cores))
    assert ml.asr >= cpu.asr  # Whisper base costs more than tiny.en: ASR gets the bigger share


def test_topology_pins_win_over_the_budget():
    b = thread_budget(ThreadsSpec(cores=4, asr=3, tts=2))
    assert (b.asr, b.tts, b.llm * b.llm_servers) == (3, 2, 2)
    settings = make_topology({"asr": {"threads": 3}}).edge  # edge.asr.threads, explicit: wins over both
    applied, used = apply_budget(settings, thread_budget(ThreadsSpec(cores=2)))
    assert applied.asr.threads == used.asr == 3
    assert applied.llm.launch.n_threads == used.llm == 1  # not set in topology.yaml: the budget's


def test_the_engine_runs_with_its_budget():
    engine = EdgeEngine(make_topology({"threads": {"cores": 4}}))
    assert engine.threads == thread_budget(ThreadsSpec(cores=4))
    assert engine.settings.asr.threads == engine.threads.asr == 2
    assert engine.settings.llm.launch.n_threads == engine.threads.llm == 1
    assert engine.threads.llm_servers == 2  # the small model: a single-threaded server per LLM core
    assert engine.vad.threads == engine.tts.threads == 1


def test_onnx_sessions_get_the_budgeted_threads(models_topology):
    session = onnx_session(resolve_model_path(models_topology.edge.vad.model), 1)
    assert session.get_session_options().intra_op_num_threads == 1
