"""Open-loop load from firmware-like devices against a running edge; numbers that cannot flatter us.

    # against `make run` (the embedded default, edge on :8000), in a second terminal:
    .venv/bin/python scripts/bench_load.py --ota http://127.0.0.1:8000/xiaozhi/ota/ --devices 75 --rate 1 --duration 180
    # start a stack from a topology file, run, stop it (e.g. one with every port moved):
    .venv/bin/python scripts/bench_load.py --start /tmp/topology-bench.yaml --devices 10 --duration 60
    # the knee: one run per device count -> <out>.csv and <out>.png (latency vs devices)
    .venv/bin/python scripts/bench_load.py --ota ... --sweep 25,50,75,100,150 --duration 180 --out .cache/bench_load/sweep

What each simulated device does (like the firmware): boots once through OTA (WebSocket URL and
token); then, at open-loop Poisson arrival times (``--rate`` turns per device per minute, whether
or not the edge keeps up), wakes up: opens the WebSocket, says hello, speaks one utterance in
``auto`` mode as real 60 ms Opus frames at real-time pace followed by silence, waits for the answer
to finish (``tts stop``), closes. Utterances: ``--utterances`` (>= 30) different questions and
commands, synthesized once with the bundled Piper voice at several speaking rates and cached as
WAVs under ``.cache/bench_load/``; every device speaks them with its own gain and its own noise,
and every turn adds fresh noise, so no cache keyed on audio (the ASR memo) or on text answers a
turn for free.

Reported (one JSON object per run): turns, failed turns by kind (connect, no answer, timeout,
closed), first audio / stt / tts stop / connect p50, p95, max in ms, the edge's own per-stage
waterfall read from its ``/metrics`` (queue wait vs compute for VAD, ASR and TTS; the end-of-speech
window; the cumulative marks for stt, LLM first token and first audio), ASR batch sizes and skipped
prefetches, ``/health`` latency during the run, CPU of the edge process, of this generator and of
the whole box. Final numbers need a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.pipeline.turn import Phrases  # noqa: E402
from scripts.device_sim import (  # noqa: E402
    UPSTREAM_RATE, DeviceSimulator, SimError, read_wav, write_wav)

ROOT = Path(__file__).resolve().parent.parent
# Cached phrases that are not the answer: a turn's first_answer_audio is its first sentence not among these.
NOT_ANSWERS = {Phrases().thinking, Phrases().hold, Phrases().busy}
CACHE_DIR = ROOT / ".cache" / "bench_load"

# Questions and commands a household device hears; short and long, local and cloud-worthy.
UTTERANCES: tuple[str, ...] = (
    "What time is it?",
    "Tell me a joke.",
    "What is the weather like today?",
    "Turn on the kitchen lights.",
    "Set a timer for ten minutes.",
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "Play some relaxing music.",
    "Who wrote Romeo and Juliet?",
    "What is two plus two?",
    "Good morning!",
    "Turn the volume down a little.",
    "What's the tallest mountain in the world?",
    "Can you recommend a good book?",
    "How far away is the moon?",
    "What should I cook for dinner tonight?",
    "Remind me to call my mother tomorrow.",
    "What is the boiling point of water?",
    "Tell me something interesting about octopuses.",
    "How do you say thank you in Spanish?",
    "What day of the week is it?",
    "Is it going to rain this afternoon?",
    "Make the screen brighter.",
    "What is the largest planet in our solar system?",
    "Sing me a short song.",
    "How many legs does a spider have?",
    "What's a good name for a cat?",
    "Who painted the Mona Lisa?",
    "Give me a fun fact about space.",
    "What is the square root of eighty one?",
    "Thank you, that's all for now.",
    "How long should I boil an egg?",
    "What language do they speak in Brazil?",
    "Tell me a bedtime story about a dragon.",
    "What is the speed of light?",
    "Good night.",
)
LENGTH_SCALES = (0.85, 1.0, 1.15)  # piper speaking rate per utterance (faster .. slower)


# ---------------------------------------------------------------- audio
def utterance_set(count: int, cache_dir: Path = CACHE_DIR) -> list[tuple[str, np.ndarray]]:
    """``count`` (text, int16 16 kHz pcm) pairs, synthesized once with Piper and cached as WAVs."""
    if count > len(UTTERANCES):
        raise SystemExit(f"--utterances: at most {len(UTTERANCES)}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, np.ndarray]] = []
    voice = None
    for i, text in enumerate(UTTERANCES[:count]):
        scale = LENGTH_SCALES[i % len(LENGTH_SCALES)]
        path = cache_dir / f"utt-{i:02d}-{scale:.2f}.wav"
        if not path.is_file():
            voice = voice or _piper_voice()
            write_wav(str(path), _piper(voice, text, scale), UPSTREAM_RATE)
        out.append((text, read_wav(str(path))))
    return out


def _piper_voice():
    from piper import PiperVoice

    from shared.topology import load_topology, resolve_model_path

    return PiperVoice.load(resolve_model_path(load_topology(str(ROOT / "topology.yaml")).edge.tts.voice))


def _piper(voice, text: str, length_scale: float) -> np.ndarray:
    from piper import SynthesisConfig

    from edge.opus import resample

    chunks = list(voice.synthesize(text, syn_config=SynthesisConfig(length_scale=length_scale)))
    return resample(np.concatenate([c.audio_int16_array for c in chunks]), chunks[0].sample_rate, UPSTREAM_RATE)


@dataclass(frozen=True)
class DeviceVoice:
    """How one device's microphone colours speech: its gain and its noise floor."""

    gain_db: float
    snr_db: float

    @classmethod
    def for_device(cls, index: int, seed: int = 0) -> "DeviceVoice":
        rng = np.random.default_rng([seed, index])
        return cls(gain_db=float(rng.uniform(-9.0, 3.0)), snr_db=float(rng.uniform(18.0, 40.0)))


def device_clip(pcm: np.ndarray, voice: DeviceVoice, rng: np.random.Generator) -> np.ndarray:
    """``pcm`` as this device hears it this time: its gain, fresh noise at its SNR, a random lead-in."""
    x = pcm.astype(np.float32) * (10 ** (voice.gain_db / 20))
    lead = np.zeros(int(rng.integers(0, UPSTREAM_RATE // 10)), dtype=np.float32)  # 0-100 ms
    x = np.concatenate([lead, x])
    power = float(np.mean(x ** 2)) or 1.0
    x += rng.normal(0.0, math.sqrt(power / 10 ** (voice.snr_db / 10)), x.size).astype(np.float32)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------- statistics
def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "max": pct(values, 100), "n": len(values)}


# ---------------------------------------------------------------- the edge's own numbers
def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def _hist(after: dict, before: dict, name: str, **labels: str) -> dict[str, float | None]:
    """Count, mean and (bucket-interpolated) p95 in ms of a histogram's change during the run."""
    count = _delta(after, before, f"{name}_count", **labels)
    if count <= 0:
        return {"n": 0, "mean": None, "p95": None}
    total = _delta(after, before, f"{name}_sum", **labels)
    buckets = sorted(
        (float(dict(k[1])["le"]), _delta(after, before, f"{name}_bucket", **{**labels, "le": dict(k[1])["le"]}))
        for k in after if k[0] == f"{name}_bucket" and all(dict(k[1]).get(a) == b for a, b in labels.items()))
    target, prev_le, prev_n, p95 = 0.95 * count, 0.0, 0.0, None
    for le, n in buckets:
        if n >= target:
            p95 = le if math.isinf(le) or n == prev_n else prev_le + (le - prev_le) * (target - prev_n) / (n - prev_n)
            break
        prev_le, prev_n = le, n
    return {"n": int(count), "mean": round(total / count * 1000, 1),
            "p95": None if p95 is None or math.isinf(p95) else round(p95 * 1000, 1)}


def waterfall(after: dict, before: dict) -> dict[str, Any]:
    """Where a turn's time went on the edge (ms): per-stage queue wait vs compute, and cumulative marks."""
    lat, wait, comp = "xz_edge_stage_latency_seconds", "xz_edge_stage_queue_wait_seconds", \
        "xz_edge_stage_compute_seconds"
    out: dict[str, Any] = {
        "vad_end_of_speech_window": _hist(after, before, lat, stage="vad_end_of_speech"),
        "cumulative_from_speech_end": {s: _hist(after, before, lat, stage=s)
                                       for s in ("asr", "llm_first_token", "first_audio")},
    }
    for stage in ("vad", "asr", "tts"):
        out[stage] = {"queue_wait": _hist(after, before, wait, stage=stage),
                      "compute": _hist(after, before, comp, stage=stage)}
    out["asr"]["batch_size"] = _hist(after, before, "xz_edge_batch_size", stage="asr")
    if out["asr"]["batch_size"]["mean"] is not None:  # a size, not seconds
        out["asr"]["batch_size"]["mean"] = round(out["asr"]["batch_size"]["mean"] / 1000, 2)
        out["asr"]["batch_size"].pop("p95")
    out["asr"]["prefetch_skipped"] = int(_delta(after, before, "xz_edge_asr_prefetch_skipped_total"))
    out["admission"] = {v: int(_delta(after, before, "xz_edge_admission_total", verdict=v))
                        for v in ("admit", "escalate", "busy", "redirected_device")}
    out["shed_turns"] = {lim: int(_delta(after, before, "xz_edge_shed_turns_total", limit=lim))
                         for lim in ("asr_queue", "asr_wait", "active_turns", "local_llm", "local_queue")}
    out["escalated_for_load"] = int(_delta(after, before, "xz_edge_load_escalations_total"))
    out["event_loop_lag"] = _hist(after, before, "xz_edge_event_loop_lag_seconds")
    out["event_loop_lag"]["over_100ms"] = int(
        _delta(after, before, "xz_edge_event_loop_lag_seconds_count")
        - _delta(after, before, "xz_edge_event_loop_lag_seconds_bucket", le="0.1"))
    out["turns_by_outcome"] = {dict(k[1]).get("outcome", "?") + "/" + dict(k[1]).get("answered_by", "?"):
                               int(_delta(after, before, "xz_edge_turns_total", **dict(k[1])))
                               for k in after if k[0] == "xz_edge_turns_total"}
    return out


def box_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine (Linux /proc/stat), or None elsewhere."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def process_cpu() -> dict[str, float]:
    """CPU seconds used so far by the stack's processes on this box, by role: edge, edge-llm (its llama.cpp
    servers), worker, worker-llm, nats, and this generator (llama.cpp servers are told apart by their
    parent). Where the cores go per turn, measured rather than guessed."""
    import psutil

    roles: dict[str, float] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "cpu_times"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        times = proc.info["cpu_times"]
        if times is None:
            continue
        if proc.info["pid"] == me:
            role = "generator"
        elif "shared.llama_serve" in cmd:
            try:
                parent = " ".join(psutil.Process(proc.info["ppid"]).cmdline())
            except psutil.Error:
                parent = ""
            role = "edge-llm" if "-m edge" in parent else "worker-llm"
        elif "-m edge" in cmd:
            role = "edge"
        elif "-m cloud" in cmd:
            role = "worker"
        elif "nats-server" in cmd:
            role = "nats"
        else:
            continue
        roles[role] = roles.get(role, 0.0) + times.user + times.system
    return roles


# ---------------------------------------------------------------- the devices
@dataclass
class TurnOutcome:
    ok: bool
    failure: str | None  # connect | no_answer | timeout | closed
    timings_ms: dict[str, float] = field(default_factory=dict)
    connect_ms: float | None = None
    late_start_ms: float = 0.0  # the device was still busy with its previous turn
    answered_by: str | None = None


class Device:
    """One firmware-like device: OTA once, then a fresh WebSocket per wake-up."""

    def __init__(self, index: int, args: argparse.Namespace, clips: list[tuple[str, np.ndarray]]):
        self.index = index
        self.args = args
        self.clips = clips
        self.device_id = f"02:00:00:{index // 65536:02x}:{index // 256 % 256:02x}:{index % 256:02x}"
        self.voice = DeviceVoice.for_device(index, args.seed)
        self.rng = np.random.default_rng([args.seed, index, 1])
        self.url: str | None = None
        self.token: str | None = None
        self.version = 1

    async def boot(self) -> None:
        answer = await DeviceSimulator.ota(self.args.ota, self.device_id)
        ws = answer.get("websocket") or {}
        if not ws.get("url"):
            raise SimError(f"OTA answer without websocket url: {answer}")
        self.url, self.token, self.version = ws["url"], ws.get("token"), int(ws.get("version") or 1)

    async def turn(self, late_ms: float) -> TurnOutcome:
        sim = DeviceSimulator(self.url, self.token, self.device_id, protocol_version=self.version, mode="auto",
                              turn_timeout_s=self.args.turn_timeout)
        _, pcm = self.clips[int(self.rng.integers(len(self.clips)))]
        packets = sim.encode(device_clip(pcm, self.voice, self.rng))
        t0 = time.monotonic()
        try:
            await sim.connect()
        except SimError:
            await sim.close()
            return TurnOutcome(False, "connect", late_start_ms=late_ms)
        connect_ms = round((time.monotonic() - t0) * 1000, 1)
        try:
            report = await sim.run_turn(packets)
        except SimError:
            return TurnOutcome(False, "closed", connect_ms=connect_ms, late_start_ms=late_ms)
        finally:
            await sim.close()
        answer_at = report.first_audio_after(NOT_ANSWERS)
        if answer_at is not None and report.speech_end:
            report.timings_ms["first_answer_audio"] = round((answer_at - report.speech_end) * 1000, 1)
        if report.tts_stop and "first_audio" in report.timings_ms:
            failure = None
        elif sim.close_code is not None and sim.close_code != 1000:  # (1000: our own close)
            failure = "closed"
        elif not report.timings_ms:
            failure = "timeout"  # nothing at all within --turn-timeout
        else:
            failure = "no_answer"  # something (stt, a tts start) but no finished answer
        return TurnOutcome(failure is None, failure, report.timings_ms, connect_ms, late_ms, report.answered_by)

    async def run(self, arrivals: list[float], t0: float, results: list[TurnOutcome]) -> None:
        for at in arrivals:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            results.append(await self.turn(late_ms=round(max(0.0, -delay) * 1000, 1)))


def poisson_arrivals(rng: random.Random, rate_per_min: float, duration_s: float) -> list[float]:
    """Open-loop arrival times (s) in [0, duration) with exponential gaps of mean 60 / rate."""
    out, t = [], rng.expovariate(rate_per_min / 60.0)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate_per_min / 60.0)
    return out


def _probe_health(base: str, stop, out) -> None:
    """``/health`` once a second until ``stop``; the latencies (ms, 5000 for a failure) go to ``out``."""
    import urllib.error
    import urllib.request

    samples: list[float] = []
    while not stop.is_set():
        t = time.monotonic()
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                resp.read()
            samples.append((time.monotonic() - t) * 1000)
            if samples[-1] >= 100:  # to be matched with the edge's "event loop stalled" lines
                print(f"bench_load: /health took {samples[-1]:.0f} ms at {time.time():.3f}", file=sys.stderr)
        except urllib.error.HTTPError:  # an answer all the same (503: cannot answer turns right now)
            samples.append((time.monotonic() - t) * 1000)
        except OSError:
            samples.append(5000.0)
        stop.wait(1.0)
    out.put(samples)


class HealthProbe:
    """``/health`` latency probed from a process of its own: from this event loop, busy with every device's
    audio, a late answer would be the generator's delay as much as the edge's."""

    def __init__(self, base: str):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._stop, self._out = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_probe_health, args=(base, self._stop, self._out), daemon=True)
        self._proc.start()

    async def finish(self) -> list[float]:
        self._stop.set()
        samples = await asyncio.to_thread(self._out.get, True, 30)
        await asyncio.to_thread(self._proc.join, 10)
        return samples


async def fetch_metrics(base: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return parse_metrics(await resp.text())


async def run_level(args: argparse.Namespace, devices: int, clips: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """One load level: boot ``devices`` devices, run the arrivals for ``--duration`` s, report."""
    split = urlsplit(args.ota)
    base = f"{split.scheme}://{split.netloc}"
    fleet = [Device(i, args, clips) for i in range(devices)]
    boot_errors = 0
    for chunk in range(0, devices, 25):  # boots spread like a fleet powering on, not one burst
        got = await asyncio.gather(*(d.boot() for d in fleet[chunk:chunk + 25]), return_exceptions=True)
        boot_errors += sum(1 for g in got if isinstance(g, Exception))
    fleet = [d for d in fleet if d.url]
    rng = random.Random(args.seed)
    plans = [poisson_arrivals(rng, args.rate, args.duration) for _ in fleet]
    before = await fetch_metrics(base)
    results: list[TurnOutcome] = []
    prober = HealthProbe(base)
    cpu0, box0, roles0, t_start = time.process_time(), box_cpu(), process_cpu(), time.monotonic()
    t0 = time.monotonic() + 0.5
    await asyncio.gather(*(d.run(plan, t0, results) for d, plan in zip(fleet, plans)))
    wall, gen_cpu, box1, roles1 = time.monotonic() - t_start, time.process_time() - cpu0, box_cpu(), process_cpu()
    health = await prober.finish()
    after = await fetch_metrics(base)
    ok = [r for r in results if r.ok]
    failures: dict[str, int] = {}
    for r in results:
        if r.failure:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    timing = {k: [r.timings_ms[k] for r in ok if k in r.timings_ms]
              for k in ("stt", "first_audio", "first_answer_audio", "tts_stop")}
    edge_cpu = _delta(after, before, "process_cpu_seconds_total")
    return {
        "devices": devices, "rate_per_device_per_min": args.rate, "duration_s": args.duration,
        "turns": len(results), "turns_ok": len(ok), "failed": failures, "boot_errors": boot_errors,
        "answered_by": {k: sum(1 for r in ok if r.answered_by == k) for k in {r.answered_by for r in ok}},
        "first_audio_ms": stats(timing["first_audio"]), "first_answer_audio_ms": stats(timing["first_answer_audio"]),
        "stt_ms": stats(timing["stt"]),
        "tts_stop_ms": stats(timing["tts_stop"]),
        "connect_ms": stats([r.connect_ms for r in results if r.connect_ms is not None]),
        "late_starts": sum(1 for r in results if r.late_start_ms > 0),
        "health_ms": stats(health),
        "edge": waterfall(after, before),
        "cpu": {"edge_process_cores": round(edge_cpu / wall, 2), "generator_cores": round(gen_cpu / wall, 2),
                "box_busy_share": round((box1[0] - box0[0]) / (box1[1] - box0[1]), 2) if box0 and box1 else None,
                "cores": os.cpu_count(),
                # core-seconds per turn by process role: what one turn costs this box, and so its ceiling
                "per_turn_core_s": {role: round((roles1[role] - roles0.get(role, 0.0)) / max(len(results), 1), 3)
                                    for role in sorted(roles1)}},
        "wall_s": round(wall, 1),
    }


# ---------------------------------------------------------------- a stack of our own
async def start_stack(config: str) -> tuple[asyncio.subprocess.Process, str]:
    """``scripts/run_embedded.py --config CONFIG`` in the background (its output in .cache/bench_load/stack.log)."""
    from scripts.run_embedded import wait_http
    from shared.topology import load_topology

    edge = load_topology(config).site().edges[0]
    base = f"http://{edge.host}:{edge.port}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "stack.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "scripts.run_embedded", "--config", config,
                                                    cwd=str(ROOT), start_new_session=True, stdout=log, stderr=log)
    try:
        await wait_http(f"{base}/health", 600, proc)
    except BaseException:
        await stop_stack(proc)
        raise
    return proc, f"{base}/xiaozhi/ota/"


async def stop_stack(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------- sweep output
COLUMNS = ("devices", "turns", "turns_ok", "failed", "first_audio_p50", "first_audio_p95", "first_audio_max",
           "first_answer_audio_p50", "first_answer_audio_p95",
           "stt_p95", "tts_stop_p95", "connect_p95", "health_max", "asr_wait_mean", "asr_compute_mean",
           "asr_batch_mean", "edge_cores", "generator_cores", "box_busy")


def row(r: dict[str, Any]) -> dict[str, Any]:
    e = r["edge"]
    return {"devices": r["devices"], "turns": r["turns"], "turns_ok": r["turns_ok"],
            "failed": sum(r["failed"].values()), "first_audio_p50": r["first_audio_ms"]["p50"],
            "first_audio_p95": r["first_audio_ms"]["p95"], "first_audio_max": r["first_audio_ms"]["max"],
            "first_answer_audio_p50": r["first_answer_audio_ms"]["p50"],
            "first_answer_audio_p95": r["first_answer_audio_ms"]["p95"],
            "stt_p95": r["stt_ms"]["p95"], "tts_stop_p95": r["tts_stop_ms"]["p95"],
            "connect_p95": r["connect_ms"]["p95"], "health_max": r["health_ms"]["max"],
            "asr_wait_mean": e["asr"]["queue_wait"]["mean"], "asr_compute_mean": e["asr"]["compute"]["mean"],
            "asr_batch_mean": e["asr"]["batch_size"]["mean"], "edge_cores": r["cpu"]["edge_process_cores"],
            "generator_cores": r["cpu"]["generator_cores"], "box_busy": r["cpu"]["box_busy_share"]}


def write_sweep(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out.with_suffix(".csv")]
    with open(written[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_load: matplotlib missing (pip install 'xiaozhi-edge[plot]'): CSV only", file=sys.stderr)
        return written
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [r["devices"] for r in rows]
    for key, style in (("first_audio_p50", "o-"), ("first_audio_p95", "s-"), ("first_audio_max", "^:")):
        ax.plot(x, [r[key] if r[key] is not None else float("nan") for r in rows], style, label=key)
    ax.axhline(800, color="grey", ls="--", lw=1, label="p95 target 800 ms")
    ax.set_xlabel("devices (1 turn / device / min)")
    ax.set_ylabel("end of speech -> first audio (ms)")
    ax.set_title("xiaozhi-edge latency vs load")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    written.append(out.with_suffix(".png"))
    return written


async def run(args: argparse.Namespace) -> int:
    clips = utterance_set(args.utterances)
    levels = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.devices]
    rows = []
    for n in levels:
        # With --start every level gets a stack of its own: one warmed by the levels before it (the worker's
        # answer cache, the models' prompt caches) would flatter the higher levels.
        proc = None
        if args.start:
            proc, args.ota = await start_stack(args.start)
            print(f"bench_load: stack up, OTA {args.ota}", file=sys.stderr, flush=True)
        try:
            result = await run_level(args, n, clips)
        finally:
            if proc is not None:
                await stop_stack(proc)
        print(json.dumps(result), flush=True)
        rows.append(row(result))
    if args.sweep:
        for path in write_sweep(rows, Path(args.out)):
            print(f"bench_load: wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ota", help="OTA URL of a running edge (make run: http://127.0.0.1:8000/xiaozhi/ota/)")
    target.add_argument("--start", metavar="TOPOLOGY", help="start scripts/run_embedded.py with this file, stop after")
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--rate", type=float, default=1.0, help="turns per device per minute (Poisson)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    p.add_argument("--sweep", help="comma-separated device counts, e.g. 25,50,75,100,150")
    p.add_argument("--out", default=str(CACHE_DIR / "sweep"), help="sweep output: <out>.csv and <out>.png")
    p.add_argument("--utterances", type=int, default=len(UTTERANCES), help=f"30..{len(UTTERANCES)}")
    p.add_argument("--turn-timeout", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.utterances < 30:
        p.error("--utterances: at least 30 (fewer lets caches answer for free)")
    if args.devices < 1 or args.rate <= 0 or args.duration <= 0:
        p.error("--devices, --rate and --duration must be positive")
    try:
        return asyncio.run(run(args))
    except (SimError, RuntimeError) as exc:
        print(f"bench_load: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
