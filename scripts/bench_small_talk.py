"""The small-talk book's decisions, routing only: which requests it answers, with which entry.

    .venv/bin/python -m scripts.bench_small_talk [--fresh tests/data/small_talk_fresh.yaml]

Runs the edge's router (shared/intent_router.py, MiniLM on onnxruntime, the default book)
over tests/data/small_talk_fresh.yaml (small talk with the entry that answers it right, and
requests the book must not answer) and over the answer benchmark's last turns
(tests/data/answer_bench*.yaml: a small_talk row answered by the book is counted, any other
category answered by it is a false reply). Prints, per set: small talk answered by the right
entry, by a wrong one, left to the model; false book replies to other requests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from scripts.bench_answers import SUITES, load_suite
from shared.embeddings import shared_embedder
from shared.intent_router import IntentRouter
from shared.small_talk import SmallTalkBook

FRESH = Path(__file__).resolve().parent.parent / "tests" / "data" / "small_talk_fresh.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fresh", type=Path, default=FRESH)
    args = ap.parse_args(argv)
    try:
        fresh = yaml.safe_load(args.fresh.read_text())
        sets = {"fresh": ([(r["text"], r["entry"]) for r in fresh["small_talk"]], list(fresh["not_small_talk"]))}
        for split, path in SUITES.items():
            last = [(d.category, d.turns[-1].text) for d in load_suite(path, split) if d.turns[-1].lang == "en"]
            sets[split] = ([(t, None) for c, t in last if c == "small_talk"], [t for c, t in last if c != "small_talk"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        print(f"bench_small_talk: {exc}", file=sys.stderr)
        return 2
    embedder = shared_embedder()
    router = IntentRouter(embedder, small_talk=SmallTalkBook(embedder))
    print(f"{'set':8s} {'small talk':>10s} {'right entry':>12s} {'wrong entry':>12s} {'to the model':>13s}"
          f"   {'others':>6s} {'false book replies':>19s}")
    for name, (chat, others) in sets.items():
        right = wrong = model = 0
        for text, entry in chat:
            got = router.route(text, None).small_talk
            if got is None:
                model += 1
                print(f"  [{name}] to the model: {text!r}")
            elif entry is None or got == entry:
                right += 1
            else:
                wrong += 1
                print(f"  [{name}] WRONG entry {got}: {text!r} (want {entry})")
        false = [t for t in others if router.route(t, None).small_talk is not None]
        for t in false:
            print(f"  [{name}] FALSE book reply: {t!r}")
        print(f"{name:8s} {len(chat):10d} {right:12d} {wrong:12d} {model:13d}   {len(others):6d} {len(false):19d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
