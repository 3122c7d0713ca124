"""How often would early end-of-turn (edge/end_of_turn.py) cut a speaker off, and how often would it help?

    .venv/bin/python scripts/eval_end_of_turn.py [--utterances 36] [--json]

For every utterance of the load benchmark's set (scripts/bench_load.py), each word prefix
("What", "What is", "What is the", ...) is spoken on its own by the Piper voice, coloured like
one device's microphone (gain, noise), and transcribed by the edge's ASR as the speculative
transcript at a pause would be. A prefix judged ``complete`` is a possible false cut-off (a speaker
pausing there for ``edge.vad.early_commit_ms`` would be answered); the full utterance judged
``complete`` is an early end (the edge answers ``min_silence_ms - early_commit_ms`` sooner, once its
transcript exists). ``unfinished`` ones wait ``unfinished_silence_ms`` instead of ``min_silence_ms``.
Speaking a prefix alone is harsher than a real mid-sentence pause (Piper ends it with falling
intonation, Whisper punctuates it as a sentence), so the false cut-off rate is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.asr import BACKENDS  # noqa: E402
from edge.end_of_turn import verdict  # noqa: E402
from scripts.bench_load import UTTERANCES, DeviceVoice, _piper, _piper_voice, device_clip  # noqa: E402
from shared.topology import load_topology  # noqa: E402

SILENCE_TAIL = 1600  # 100 ms: the VAD's tail after the last speech frame


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utterances", type=int, default=len(UTTERANCES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json", action="store_true", help="also print every case")
    args = p.parse_args(argv)
    spec = load_topology().edge.asr
    backend = BACKENDS[spec.backend](spec)
    backend.load()
    voice = _piper_voice()
    cases: list[dict] = []
    for i, text in enumerate(UTTERANCES[: args.utterances]):
        words = text.split()
        rng = np.random.default_rng(i)
        for k in range(1, len(words) + 1):
            pcm = device_clip(_piper(voice, " ".join(words[:k]), 1.0), DeviceVoice.for_device(i), rng)
            cases.append({"utterance": text, "prefix": " ".join(words[:k]), "final": k == len(words),
                          "pcm": np.concatenate([pcm, np.zeros(SILENCE_TAIL, np.int16)]).astype(np.float32) / 32768})
    for start in range(0, len(cases), args.batch):
        chunk = cases[start:start + args.batch]
        for case, (heard, *_) in zip(chunk, backend.transcribe_batch([c["pcm"] for c in chunk])):
            case["heard"] = heard
            case["verdict"] = verdict(heard, "en")
            case["complete"] = case["verdict"] == "complete"
    mid = [c for c in cases if not c["final"]]
    final = [c for c in cases if c["final"]]
    cut = [c for c in mid if c["complete"]]
    summary = {
        "utterances": len(final), "mid_sentence_pauses": len(mid),
        "false_cutoffs": len(cut), "false_cutoff_rate": round(len(cut) / max(1, len(mid)), 3),
        "false_cutoff_utterances": round(len({c["utterance"] for c in cut}) / max(1, len(final)), 3),
        "early_commits": sum(c["complete"] for c in final),
        "early_commit_rate": round(sum(c["complete"] for c in final) / max(1, len(final)), 3),
        # edge.vad.unfinished_silence_ms: a pause after these waits longer than min_silence_ms (fewer cut-offs)
        "mid_sentence_pauses_waiting_longer": sum(c["verdict"] == "unfinished" for c in mid),
        "finished_utterances_waiting_longer": sum(c["verdict"] == "unfinished" for c in final),
        "examples_cut": [f"{c['prefix']!r} heard {c['heard']!r}" for c in cut[:12]],
        "examples_missed": [f"{c['heard']!r}" for c in final if not c["complete"]][:12],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        for c in cases:
            print(json.dumps({k: v for k, v in c.items() if k != "pcm"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
