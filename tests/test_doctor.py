"""`python -m edge doctor` on this machine: real detection, real benchmark, a tier with reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edge.doctor import Gpu, Hardware, choose, detect, main, unmet
from shared.tiers import TIERS, get_tier

ROOT = Path(__file__).resolve().parent.parent


def meminfo_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    raise AssertionError("no MemTotal")


def test_detect_matches_this_machine():
    hw = detect(bench_s=0.2)
    assert hw.cores == len(os.sched_getaffinity(0))
    assert abs(hw.ram_gb - meminfo_gb()) < 0.2
    assert hw.gflops > 0.5  # numpy matmul ran and was timed
    assert hw.bench_s >= 0.2


def test_json_output_for_ansible(capsys):
    assert main(["--json", "--bench-seconds", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    tier = get_tier(out["tier"])
    assert out["hardware"]["cores"] == len(os.sched_getaffinity(0))
    assert not unmet(tier, Hardware(**{**out["hardware"], "gpus": [Gpu(**g) for g in out["hardware"]["gpus"]]}))
    assert out["overrides"]["XZ_CFG__edge__asr__model"] == tier.models.asr_model
    assert out["expected_s"]["first_audio"] == tier.expected_s["first_audio"]
    # every better tier is explained
    for better in (t for t in TIERS if t.rank > tier.rank):
        assert any(r.startswith(f"not {better.name}:") for r in out["reasons"])
    # the bundled tier's models are installed in this venv
    if tier.name == "cpu-small":
        assert out["models"] == {"asr": "ok", "llm": "ok", "tts": "ok"}


def test_choice_follows_hardware():
    small = Hardware(cores=2, ram_gb=4, ram_available_gb=3, cpu_model="x", gflops=20)
    assert choose(small).tier == "cpu-small"
    big = Hardware(cores=16, ram_gb=64, ram_available_gb=60, cpu_model="x", gflops=400)
    assert choose(big).tier == "cpu-large"
    gpu = Hardware(cores=16, ram_gb=64, ram_available_gb=60, cpu_model="x", gflops=400,
                   gpus=[Gpu("nvidia", "RTX 4070", 12.0)])
    assert choose(gpu).tier == "gpu"
    weak_gpu = Hardware(cores=16, ram_gb=64, ram_available_gb=60, cpu_model="x", gflops=400,
                        gpus=[Gpu("nvidia", "GT 1030", 2.0)])
    v = choose(weak_gpu)
    assert v.tier == "cpu-large" and any("needs 8 GB VRAM, best GPU has 2" in r for r in v.reasons)
    tiny = Hardware(cores=1, ram_gb=1, ram_available_gb=1, cpu_model="x", gflops=1)
    assert choose(tiny).tier is None


def test_cli_on_this_machine_and_bad_arguments():
    run = subprocess.run([sys.executable, "-m", "edge", "doctor", "--bench-seconds", "0.2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "tier     cpu-" in run.stdout and "bench" in run.stdout and "GFLOPS" in run.stdout
    pinned = subprocess.run([sys.executable, "-m", "edge.doctor", "--tier", "gpu", "--bench-seconds", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    has_gpu = "gpu      none" not in run.stdout
    assert pinned.returncode == (0 if has_gpu else 1)
    assert "tier gpu pinned" in pinned.stdout
    bad = subprocess.run([sys.executable, "-m", "edge.doctor", "--tier", "quantum"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown tier 'quantum'" in bad.stderr and "Traceback" not in bad.stderr
