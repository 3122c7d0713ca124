"""The edge's CPU thread budget: how many threads each model may use, decided in one place.

VAD, ASR (CTranslate2), TTS (onnxruntime) and the local LLM (llama.cpp) each default to
"all the cores" in their libraries. Under load they run at the same time, so on a 2-core box
that is 6+ busy threads on 2 cores: every stage slows down, and llama.cpp's spinning threads
most of all. The budget keeps the two heavy, serial stages (ASR and the LLM) within the cores
together, and gives VAD and TTS one thread each (VAD batches every session into one call; the
TTS pool runs two syntheses at once, which is its parallelism).

The small model gets one single-threaded llama.cpp server per core it is given (llama-cpp-python's
server answers one request at a time, and two threads of one server wait on each other whenever a
core is busy elsewhere); ``shared.chat.PooledChat`` spreads the turns over them.

Tier matters: on ``gpu`` ASR runs on the accelerator (one host thread feeds it); on
``multilingual`` Whisper base costs 2-3x tiny.en, so ASR gets two thirds of the cores.
Each stage can be pinned in topology.yaml (``edge.threads``), and an explicit
``edge.asr.threads`` / ``edge.llm.launch.n_threads`` wins over both.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Mapping

from shared.tiers import pinned_tier
from shared.topology import EdgeSettings, EdgeHost, SiteSpec, ThreadsSpec, Topology


SMALL_BOX_CORES = 2  # up to here ASR and the LLM each get every core (see thread_budget)


@dataclass(frozen=True)
class ThreadBudget:
    cores: int
    vad: int
    asr: int
    tts: int
    llm: int  # per llama.cpp server
    llm_servers: int = 1

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def available_cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_budget(spec: ThreadsSpec = ThreadsSpec(), tier: str | None = None) -> ThreadBudget:
    """Threads per stage for ``spec.cores`` (default: available) cores and the edge's tier."""
    cores = spec.cores or available_cores()
    reserve = 1 if cores >= 6 else 0  # the event loop, Opus and VAD get a core of their own on bigger boxes
    heavy = max(1, cores - reserve)
    if tier == "gpu":
        asr = 1
    elif tier == "multilingual":
        asr = math.ceil(heavy * 2 / 3)
    else:
        asr = math.ceil(heavy / 2)
    llm = max(1, heavy - asr)
    servers = 1
    if tier not in ("gpu", "multilingual"):
        # The small model's cores go to one single-threaded server each. llama-cpp-python's server answers one
        # request at a time, and llama.cpp's threads wait for each other at every step (OpenMP spins): with a
        # core busy elsewhere (ASR, TTS, another turn) one 2-thread server fell from 1.5 to 0.5-0.7 answers/s,
        # two 1-thread servers kept 0.9-1.3 (60-token answers, scripts/bench_llama_servers.py).
        servers, llm = llm, 1
    if cores <= SMALL_BOX_CORES and tier not in ("gpu", "multilingual"):
        # Within one turn ASR and the LLM run one after the other: split 1+1 on 2 cores, one device's turn
        # waited 1376 ms (p50, end of speech -> first audio) against 818-939 ms with both stages on both cores.
        asr = servers = heavy
    return ThreadBudget(cores=cores, vad=spec.vad or 1, asr=spec.asr or asr, tts=spec.tts or (2 if cores >= 8 else 1),
                        llm=spec.llm or llm, llm_servers=spec.llm_servers or servers)


def edge_budget(topology: Topology, site: SiteSpec, edge: EdgeHost,
                environ: Mapping[str, str] | None = None) -> tuple[str | None, ThreadBudget]:
    """The tier an edge node runs as (``XZ_TIER``, its edge's, its site's; None: auto) and its thread budget:
    what the engine runs, and what ``make run`` reserves ports for (one per llama.cpp server)."""
    tier = pinned_tier(dict(os.environ if environ is None else environ), edge.tier, site.tier)
    name = tier.name if tier else None
    return name, thread_budget(topology.edge.threads, name)


def apply_budget(settings: EdgeSettings, budget: ThreadBudget) -> tuple[EdgeSettings, ThreadBudget]:
    """``settings`` with the budget's ASR and LLM threads unless topology.yaml set those explicitly,
    and the budget in force (explicit settings included: what start-up logs)."""
    asr, llm = settings.asr, settings.llm
    if "threads" not in asr.model_fields_set:
        asr = asr.model_copy(update={"threads": budget.asr})
    if llm.launch is not None and "n_threads" not in llm.launch.model_fields_set:
        llm = llm.model_copy(update={"launch": llm.launch.model_copy(update={"n_threads": budget.llm})})
    used = replace(budget, asr=asr.threads, llm=llm.launch.n_threads if llm.launch is not None else budget.llm)
    return settings.model_copy(update={"asr": asr, "llm": llm}), used


def onnx_session(path: object, threads: int, quiet: bool = False):
    """A CPU onnxruntime session on ``threads`` intra-op threads (onnxruntime's default is every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if quiet:
        opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class ArenaBoundedSession:
    """An onnxruntime session whose memory arena shrinks back after a run on a long input.

    onnxruntime's CPU arena grows to the largest run it has seen, per concurrent run, and keeps
    it: Piper on distinct sentences of up to 200 characters from 4 threads held 1.6-1.7 GB after
    600 sentences and was still growing. Shrinking after every run bounds it (~200 MB) but costs
    15% of a synthesis (arena off: 30%), so only runs whose largest input has more than
    ``shrink_above`` elements shrink the arena; short sentences, the first one of an answer
    among them, keep the fast path. Everything else goes to the wrapped session.
    """

    def __init__(self, session, shrink_above: int):
        import onnxruntime as ort

        self._session = session
        self.shrink_above = shrink_above
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names, input_feed, run_options=None):
        if run_options is None and max((getattr(v, "size", 0) for v in input_feed.values()), default=0) \
                > self.shrink_above:
            run_options = self._shrink
        return self._session.run(output_names, input_feed, run_options)

    def __getattr__(self, name: str):
        return getattr(self._session, name)
