"""Benchmark: N spoken turns through the device simulator against a running edge.

    .venv/bin/python scripts/bench_turn.py [--ota http://127.0.0.1:8000/xiaozhi/ota/] [--turns 10]
    XZ_TIER=multilingual make run   # then:
    .venv/bin/python scripts/bench_turn.py --language zh --turns 12

Prints p50/p95 per stage, in ms from the end of the user's speech (what the
device measures): `stt` (VAD end-of-speech window + ASR), first `llm` message,
first TTS audio frame (any: a cached "one moment" lead-in counts), first audio of
the answer itself (`first_answer_audio`: the first sentence that is not a cached
lead-in phrase), `tts stop`. The VAD's end-of-speech silence window is part of
every figure; it is printed separately so the rest can be read off. One device at
a time, like the targets (English first audio p50 <= 1.2 s; Mandarin first audio
p50 <= 1.0 s and first answer audio p50 <= 2.0 s). ``--language zh``: Mandarin
questions spoken at run time by the Mandarin voice (edge/tts_zh.py), from a device
whose OTA check says ``Accept-Language: zh-CN``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.phrases import localized  # noqa: E402
from edge.pipeline.turn import Phrases  # noqa: E402
from scripts.device_sim import DeviceSimulator, SimError, synthesize  # noqa: E402
from shared.topology import ModelNotFound, TopologyError, load_topology  # noqa: E402

QUESTIONS = [
    "Hello there.",
    "What is the capital of France?",
    "Good morning, how are you?",
    "What color is the sky?",
    "Tell me a joke.",
    "What is two plus two?",
    "Thank you very much.",
    "What day comes after Monday?",
]
# Mandarin: what people ask a voice assistant (the default policy escalates them: SmolLM2 has no Chinese)
ZH_QUESTIONS = [
    "你好。",
    "今天天气怎么样？",
    "中国的首都是哪里？",
    "给我讲一个笑话吧。",
    "现在几点了？",
    "熊猫喜欢吃什么？",
    "谢谢你的帮助。",
    "地球离太阳有多远？",
]
STAGES = ("stt", "llm", "first_audio", "first_answer_audio", "tts_stop")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> int:
    vad_window = load_topology(args.config).edge.vad.min_silence_ms
    zh = args.language == "zh"
    questions = ZH_QUESTIONS if zh else QUESTIONS
    lead_ins = {Phrases().thinking, localized("thinking", args.language, Phrases().thinking)}
    clips = [synthesize(q) for q in questions]
    sim = await DeviceSimulator.from_ota(args.ota, device_id="02:00:00:00:be:01",
                                         accept_language="zh-CN" if zh else "en-US",
                                         protocol_version=args.protocol_version)
    await sim.connect()
    stages: dict[str, list[float]] = {}
    by: dict[str, int] = {}
    try:
        for i in range(args.turns):
            report = await sim.run_turn(clips[i % len(clips)])
            answer_at = report.first_audio_after(lead_ins)
            if answer_at is not None:
                report.timings_ms["first_answer_audio"] = round((answer_at - report.speech_end) * 1000, 1)
            by[report.answered_by or "none"] = by.get(report.answered_by or "none", 0) + 1
            for k, v in report.timings_ms.items():
                stages.setdefault(k, []).append(v)
            if args.verbose:
                print(json.dumps(report.summary(), ensure_ascii=False), flush=True)
    finally:
        await sim.close()
    print(f"language: {args.language}  turns: {args.turns}  answered_by: {by}")
    print(f"VAD end-of-speech window (included in every figure): {vad_window} ms")
    print(f"{'stage':<20}{'p50 ms':>10}{'p95 ms':>10}{'p50 - VAD window':>20}{'turns':>7}")
    for stage in STAGES:
        vals = stages.get(stage, [])
        p50 = pct(vals, 0.5)
        print(f"{stage:<20}{p50:>10.0f}{pct(vals, 0.95):>10.0f}{p50 - vad_window:>20.0f}{len(vals):>7}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ota", default="http://127.0.0.1:8000/xiaozhi/ota/")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--language", choices=("en", "zh"), default="en",
                   help="zh: Mandarin questions spoken by the Mandarin voice (needs the multilingual tier's edge)")
    p.add_argument("--protocol-version", type=int, default=1, choices=(1, 2, 3))
    p.add_argument("--config", default=None, help="topology.yaml (for the VAD window)")
    p.add_argument("--verbose", action="store_true", help="print each turn's JSON line")
    args = p.parse_args()
    try:
        return asyncio.run(run(args))
    except (SimError, TopologyError, ModelNotFound, OSError) as exc:
        print(f"bench_turn: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
