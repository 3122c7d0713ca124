"""Correctness benchmark: are the answers right, where were they answered, in which language, how fast.

Runs the requests of tests/data/answer_bench.yaml (the tuning part) and
tests/data/answer_bench_holdout.yaml (held out: never looked at while tuning)
against a running stack through the device protocol, like a device would: each
dialogue is a fresh simulated device (scripts/device_sim.py: OTA, WebSocket,
MCP board); a follow-up dialogue asks its turns in one session and only its last
turn is scored. Spoken input (default) synthesizes each request (Piper, espeak-ng
for Mandarin) and streams it as real-time Opus, so the edge's own ASR hears it;
``--input typed`` sends the words with ``listen detect`` instead.

Per category and split it prints where turns were answered (edge / cloud /
other), how many of the edge's and of the cloud's answers were right, whether
every sentence was in the request's language, whether the turn went where its
category should (local categories on the edge, knowledge and reasoning to the
cloud) and the time to the first audio frame; one CSV row per turn and a PNG.

    XZ_TOPOLOGY=/tmp/topo.yaml .venv/bin/python -m scripts.run_embedded --config /tmp/topo.yaml &
    .venv/bin/python -m scripts.bench_answers --config /tmp/topo.yaml --devices 3 --out .cache/bench_answers/base

A right answer passes every check of its request (see the YAML header) and has no
sentence in another language. When the cloud runs the same model as the edge
(the embedded default) the cloud column measures nothing more: the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import difflib
import hashlib
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import yaml

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.device_sim import DeviceSimulator, SimError, synthesize  # noqa: E402
from shared.text_language import UNDETERMINED, sentence_languages  # noqa: E402
from shared.topology import Topology, TopologyError, load_topology  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUITES = {"tuning": ROOT / "tests" / "data" / "answer_bench.yaml",
          "holdout": ROOT / "tests" / "data" / "answer_bench_holdout.yaml"}
CATEGORIES = ("small_talk", "command", "time_date", "arithmetic", "knowledge", "reasoning", "follow_up", "mandarin")
# Where a category's turns should be answered: the edge answers these well and fast, the cloud knows more.
INTENDED_ROUTE = {"small_talk": "edge", "command": "edge", "time_date": "edge", "arithmetic": "edge",
                  "knowledge": "cloud", "reasoning": "cloud"}
CHECK_KEYS = {"any", "all", "none", "regex", "number", "clock", "weekday", "date", "month", "year", "tool", "args",
              "min_words"}
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
ZH_WEEKDAYS = ["一", "二", "三", "四", "五", "六", "日"]


# ---------------------------------------------------------------- the suite
@dataclass
class Turn:
    text: str
    lang: str
    checks: dict[str, Any]


@dataclass
class Dialogue:
    id: str
    split: str
    category: str
    turns: list[Turn]


def load_suite(path: Path, split: str) -> list[Dialogue]:
    """Dialogues of one YAML file; a malformed entry is a ValueError naming it."""
    doc = yaml.safe_load(path.read_text())
    out = []
    for i, d in enumerate(doc.get("dialogues") or []):
        where = f"{path.name}: dialogue {i}"
        category = d.get("category")
        if category not in CATEGORIES:
            raise ValueError(f"{where}: unknown category {category!r}")
        raw_turns = d.get("turns") or [{k: v for k, v in d.items() if k != "category"}]
        turns = []
        for t in raw_turns:
            unknown = set(t) - CHECK_KEYS - {"text", "lang"}
            if not isinstance(t.get("text"), str) or unknown:
                raise ValueError(f"{where}: needs a text and known checks only (unknown: {sorted(unknown)})")
            turns.append(Turn(t["text"], t.get("lang", d.get("lang", "en")),
                              {k: v for k, v in t.items() if k in CHECK_KEYS}))
        out.append(Dialogue(f"{split}-{i:03d}", split, category, turns))
    return out


# ---------------------------------------------------------------- checking one answer
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("eighty-four", "one hundred twenty-one")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return f"{number_words(n // 1000)} thousand" + ("" if rest == 0 else " " + number_words(rest))


def _has_word(text: str, word: str) -> bool:
    """Whole-word, case-insensitive for ASCII words (``stem*`` matches a prefix); substring otherwise."""
    if not word.isascii():
        return word in text
    stem = word.endswith("*")
    body = re.escape(word.rstrip("*")).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]+")
    return re.search(rf"(?<![\w']){body}" + ("" if stem else r"(?![\w'])"), text, re.IGNORECASE) is not None


def _has_number(text: str, value: float) -> bool:
    for m in re.finditer(r"-?\d[\d,]*(?:\.\d+)?", text):
        try:
            if abs(float(m.group().replace(",", "")) - value) < 1e-6:
                return True
        except ValueError:
            continue
    return float(value).is_integer() and 0 <= value < 1_000_000 and _has_word(text, number_words(int(value)))


def _has_clock(text: str, now: datetime) -> bool:
    """A time of day within two minutes of ``now`` (24 h, or 12 h with or without am/pm)."""
    for m in re.finditer(r"\b(\d{1,2})[:.](\d{2})\b|(\d{1,2})\s*点(?:(\d{1,2})\s*分)?", text):
        h = int(m.group(1) or m.group(3))
        mi = int(m.group(2) or m.group(4) or 0)
        for hour in {h, (h + 12) % 24, h % 12}:
            said = now.replace(hour=hour % 24, minute=mi % 60, second=0, microsecond=0)
            if any(abs((said + timedelta(days=d) - now).total_seconds()) <= 150 for d in (-1, 0, 1)):
                return True
    return False


def _has_weekday(text: str, now: datetime) -> bool:
    return _has_word(text, WEEKDAYS[now.weekday()]) or f"星期{ZH_WEEKDAYS[now.weekday()]}" in text or (
        now.weekday() == 6 and "星期天" in text)


def _has_date(text: str, now: datetime) -> bool:
    month = _has_word(text, MONTHS[now.month - 1]) or re.search(rf"(?<!\d)0?{now.month}月", text)
    day = re.search(rf"(?<!\d)0?{now.day}(?:st|nd|rd|th|日|号)?(?!\d)", text)
    iso = now.strftime("%Y-%m-%d") in text
    return bool(iso or (month and day))


def check_answer(checks: dict[str, Any], reply: str, tool_calls: list[dict], now: datetime) -> list[str]:
    """The checks ``reply`` fails (empty: right)."""
    failed = []
    if "any" in checks and not any(_has_word(reply, str(w)) for w in checks["any"]):
        failed.append("any")
    if "all" in checks and not all(_has_word(reply, str(w)) for w in checks["all"]):
        failed.append("all")
    if "none" in checks and any(_has_word(reply, str(w)) for w in checks["none"]):
        failed.append("none")
    if "regex" in checks and not re.search(checks["regex"], reply, re.IGNORECASE):
        failed.append("regex")
    if "number" in checks and not _has_number(reply, float(checks["number"])):
        failed.append("number")
    if checks.get("clock") and not _has_clock(reply, now):
        failed.append("clock")
    if checks.get("weekday") and not _has_weekday(reply, now):
        failed.append("weekday")
    if checks.get("date") and not _has_date(reply, now):
        failed.append("date")
    if checks.get("month") and not (_has_word(reply, MONTHS[now.month - 1]) or f"{now.month}月" in reply):
        failed.append("month")
    if checks.get("year") and str(now.year) not in reply:
        failed.append("year")
    if "min_words" in checks and len(reply.split()) < int(checks["min_words"]):
        failed.append("min_words")
    if "tool" in checks:
        want = checks.get("args") or {}
        if not any(c["name"] == checks["tool"] and c.get("ok", True)
                   and all(c["arguments"].get(k) == v for k, v in want.items()) for c in tool_calls):
            failed.append("tool")
    return failed


def language_ok(reply: str, lang: str) -> tuple[bool, str]:
    """Every sentence in the request's language (or undetermined); and the languages seen, e.g. "fr+en"."""
    langs = sentence_languages(reply)
    seen = "+".join(dict.fromkeys(langs)) or UNDETERMINED
    return all(x in (lang, UNDETERMINED) for x in langs), seen


# ---------------------------------------------------------------- running against the stack
@dataclass
class Outcome:
    dialogue: Dialogue
    index: int  # turn index within the dialogue
    heard: str = ""
    reply: str = ""
    answered_by: str = ""
    failed: list[str] = field(default_factory=list)
    lang_ok: bool = True
    langs: str = ""
    first_audio_ms: float | None = None
    tts_stop_ms: float | None = None
    tools: str = ""
    error: str = ""

    @property
    def turn(self) -> Turn:
        return self.dialogue.turns[self.index]

    @property
    def scored(self) -> bool:
        return self.index == len(self.dialogue.turns) - 1

    @property
    def content_ok(self) -> bool:
        return not self.failed and not self.error

    @property
    def right(self) -> bool:
        return self.content_ok and self.lang_ok

    @property
    def heard_ok(self) -> bool:
        a, b = (re.sub(r"[^\w ]", "", s.lower()) for s in (self.turn.text, self.heard))
        return difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


class Speech:
    """Synthesized requests, cached on disk (synthesis is slow and the same every run)."""

    def __init__(self, cache_dir: Path):
        self.dir = cache_dir
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, text: str, lang: str) -> np.ndarray:
        path = self.dir / f"{hashlib.sha1(f'{lang}:{text}'.encode()).hexdigest()[:16]}.npy"
        if path.exists():
            return np.load(path)
        pcm = synthesize(text, lang)
        np.save(path, pcm)
        return pcm


async def run_dialogue(dialogue: Dialogue, ota: str, device_id: str, speech: Speech | None, tz: ZoneInfo,
                       turn_timeout_s: float) -> list[Outcome]:
    outcomes = [Outcome(dialogue, i) for i in range(len(dialogue.turns))]
    try:
        sim = await DeviceSimulator.from_ota(ota, device_id, turn_timeout_s=turn_timeout_s)
        await sim.connect()
    except SimError as exc:
        for o in outcomes:
            o.error = str(exc)
        return outcomes
    try:
        for o in outcomes:
            turn = o.turn
            try:
                if speech is None:
                    report = await sim.run_text_turn(turn.text)
                else:
                    pcm = await asyncio.to_thread(speech.get, turn.text, turn.lang)
                    report = await sim.run_turn(pcm)
            except SimError as exc:
                o.error = str(exc)
                break
            now = datetime.now(tz)
            o.heard, o.reply, o.answered_by = report.stt or "", report.reply, report.answered_by or "none"
            o.failed = check_answer(turn.checks, report.reply, report.tool_calls, now)
            o.lang_ok, o.langs = language_ok(report.reply, turn.lang)
            o.first_audio_ms = report.timings_ms.get("first_audio")
            o.tts_stop_ms = report.timings_ms.get("tts_stop")
            o.tools = ";".join(f"{c['name']}({c['arguments']})" for c in report.tool_calls)
    finally:
        await sim.close()
    return outcomes


async def run_all(dialogues: list[Dialogue], ota: str, devices: int, speech: Speech | None, tz: ZoneInfo,
                  turn_timeout_s: float) -> list[Outcome]:
    gate = asyncio.Semaphore(devices)
    done = 0

    async def one(n: int, d: Dialogue) -> list[Outcome]:
        nonlocal done
        async with gate:
            result = await run_dialogue(d, ota, f"02:be:00:00:{n >> 8:02x}:{n & 255:02x}", speech, tz,
                                        turn_timeout_s)
        done += 1
        last = result[-1]
        mark = "ok " if last.right else "BAD"
        print(f"[{done:3d}/{len(dialogues)}] {mark} {d.category:10s} {last.answered_by or '-':5s} "
              f"{last.turn.text!r} -> {last.reply[:90]!r}{' ' + last.error if last.error else ''}", flush=True)
        return result

    results = await asyncio.gather(*(one(n, d) for n, d in enumerate(dialogues)))
    return [o for r in results for o in r]


# ---------------------------------------------------------------- reporting
def _pct(k: int, n: int) -> str:
    return f"{k}/{n} {100 * k / n:.0f}%" if n else "-"


def summarize(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One row per (category, split) over scored turns, then an "all" row per split."""
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.scored:
            groups[(o.dialogue.category, o.dialogue.split)].append(o)
            groups[("ALL", o.dialogue.split)].append(o)
    rows = []
    order = {c: i for i, c in enumerate((*CATEGORIES, "ALL"))}
    for (cat, split), group in sorted(groups.items(), key=lambda kv: (kv[0][1] != "tuning", order[kv[0][0]])):
        n = len(group)
        edge = [o for o in group if o.answered_by == "edge"]
        cloud = [o for o in group if o.answered_by == "cloud"]
        intended = [o for o in group if o.dialogue.category in INTENDED_ROUTE]
        lat = [o.first_audio_ms for o in group if o.first_audio_ms is not None]
        rows.append({
            "category": cat, "split": split, "n": n,
            "edge": len(edge), "cloud": len(cloud), "other": n - len(edge) - len(cloud),
            "right": sum(o.right for o in group),
            "edge_right": sum(o.right for o in edge), "cloud_right": sum(o.right for o in cloud),
            "lang_ok": sum(o.lang_ok for o in group),
            "routed": sum(o.answered_by == INTENDED_ROUTE[o.dialogue.category] for o in intended),
            "routable": len(intended),
            "heard_ok": sum(o.heard_ok for o in group),
            "first_audio_p50": round(statistics.median(lat)) if lat else None,
            "first_audio_p95": round(np.percentile(lat, 95)) if lat else None,
        })
    return rows


def print_table(rows: list[dict[str, Any]], cloud_note: str) -> None:
    head = (f"{'category':11s} {'split':7s} {'n':>3s}  {'edge':>4s} {'cloud':>5s} {'other':>5s}  {'right':>9s}  "
            f"{'edge right':>10s}  {'cloud right':>11s}  {'lang ok':>9s}  {'routed as intended':>18s}  "
            f"{'heard':>9s}  {'1st audio p50/p95 ms':>20s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        lat = f"{r['first_audio_p50']}/{r['first_audio_p95']}" if r["first_audio_p50"] is not None else "-"
        print(f"{r['category']:11s} {r['split']:7s} {r['n']:3d}  {r['edge']:4d} {r['cloud']:5d} {r['other']:5d}  "
              f"{_pct(r['right'], r['n']):>9s}  {_pct(r['edge_right'], r['edge']):>10s}  "
              f"{_pct(r['cloud_right'], r['cloud']):>11s}  {_pct(r['lang_ok'], r['n']):>9s}  "
              f"{_pct(r['routed'], r['routable']):>18s}  {_pct(r['heard_ok'], r['n']):>9s}  {lat:>20s}")
    print(f"\ncloud right: {cloud_note}")


def write_csv(path: Path, outcomes: list[Outcome]) -> None:
    cols = ["split", "dialogue", "turn", "scored", "category", "lang", "text", "heard", "reply", "answered_by",
            "intended", "content_ok", "failed", "lang_ok", "langs", "right", "first_audio_ms", "tts_stop_ms",
            "tools", "error"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for o in outcomes:
            w.writerow([o.dialogue.split, o.dialogue.id, o.index, o.scored, o.dialogue.category, o.turn.lang,
                        o.turn.text, o.heard, o.reply, o.answered_by, INTENDED_ROUTE.get(o.dialogue.category, ""),
                        o.content_ok, ";".join(o.failed), o.lang_ok, o.langs, o.right, o.first_audio_ms,
                        o.tts_stop_ms, o.tools, o.error])


def plot(path: Path, rows: list[dict[str, Any]], title: str, cloud_note: str) -> None:
    """Three panels per category (tuning and held-out side by side): where answered, right %, first audio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["category"] != "ALL"]
    labels = [f"{r['category']}\n{'held-out' if r['split'] == 'holdout' else 'tuning'}" for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.45 * len(rows) + 2.2), sharey=True)
    share = lambda k: np.array([100 * r[k] / r["n"] for r in rows])  # noqa: E731
    left = np.zeros(len(rows))
    for key, colour in (("edge", "#4c9a2a"), ("cloud", "#3a6ea5"), ("other", "#bbbbbb")):
        axes[0].barh(y, share(key), left=left, color=colour, label=key)
        left += share(key)
    axes[0].set_title("where answered (% of turns)")
    axes[0].legend(loc="lower right", fontsize=8)
    for offset, key, n_key, colour in ((0.2, "edge_right", "edge", "#4c9a2a"), (-0.2, "cloud_right", "cloud", "#3a6ea5")):
        vals = [100 * r[key] / r[n_key] if r[n_key] else 0 for r in rows]
        axes[1].barh(y + offset, vals, height=0.38, color=colour, label=f"{n_key}'s answers right")
        for yy, v, r in zip(y, vals, rows):
            if r[n_key]:
                axes[1].text(v + 1, yy + offset, f"{r[key]}/{r[n_key]}", va="center", fontsize=7)
    axes[1].axvline(90, color="grey", ls=":", lw=1)
    axes[1].set_xlim(0, 115)
    axes[1].set_title("right answers (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    p50 = [r["first_audio_p50"] or 0 for r in rows]
    p95 = [r["first_audio_p95"] or 0 for r in rows]
    axes[2].barh(y, p95, color="#f0c27b", label="p95")
    axes[2].barh(y, p50, color="#d9822b", label="p50")
    axes[2].set_title("first audio (ms after the request)")
    axes[2].legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(f"{title}\ncloud: {cloud_note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_category(suite: list[Dialogue], n: int) -> list[Dialogue]:
    """The first ``n`` dialogues of each category."""
    taken: dict[str, int] = defaultdict(int)
    out = []
    for d in suite:
        taken[d.category] += 1
        if taken[d.category] <= n:
            out.append(d)
    return out


def cloud_note(topo: Topology) -> str:
    """Whether the cloud's correctness means anything: only with a model stronger than the edge's."""
    edge_model = topo.edge.llm.model
    models = sorted({b.model for w in topo.cloud.workers for b in w.backends})
    if not models:
        return "no cloud worker configured"
    if models == [edge_model]:
        return (f"the cloud runs the same model as the edge ({edge_model}): its figures are not those of a "
                f"stronger model")
    return f"cloud models {', '.join(models)} vs edge {edge_model}"


def device_timezone(topo: Topology, site: str) -> ZoneInfo:
    spec = topo.tools
    site_spec = spec.sites.get(site)
    return ZoneInfo((site_spec.timezone if site_spec and site_spec.timezone else None) or spec.timezone)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="topology of the running stack (default: XZ_TOPOLOGY or ./topology.yaml)")
    p.add_argument("--ota", default=None, help="OTA URL (default: the site's first edge in --config)")
    p.add_argument("--split", choices=("all", "tuning", "holdout"), default="all")
    p.add_argument("--category", action="append", default=[], choices=CATEGORIES, help="only these (repeatable)")
    p.add_argument("--mandarin", action="store_true", help="include the Mandarin requests (multilingual tier)")
    p.add_argument("--input", choices=("spoken", "typed"), default="spoken",
                   help="spoken: synthesized audio through the edge's ASR; typed: listen detect with the text")
    p.add_argument("--devices", type=int, default=1, help="dialogues run at once (latency is cleanest with 1)")
    p.add_argument("--per-category", type=int, default=None,
                   help="at most this many dialogues per category and split (a quick, balanced sample)")
    p.add_argument("--turn-timeout", type=float, default=60.0)
    p.add_argument("--title", default="answer correctness")
    p.add_argument("--out", default=str(ROOT / ".cache" / "bench_answers" / "run"),
                   help="output prefix: PREFIX.csv and PREFIX.png")
    args = p.parse_args(argv)
    if args.devices < 1:
        p.error("--devices must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    import os

    args = parse_args(argv)
    config = args.config or os.environ.get("XZ_TOPOLOGY") or str(ROOT / "topology.yaml")
    try:
        topo = load_topology(config)
    except TopologyError as exc:
        print(f"bench_answers: {exc}", file=sys.stderr)
        return 1
    site = topo.site()
    edge = site.edges[0]
    ota = args.ota or f"http://{edge.host}:{edge.port}/xiaozhi/ota/"
    splits = ("tuning", "holdout") if args.split == "all" else (args.split,)
    dialogues = []
    for split in splits:
        suite = [d for d in load_suite(SUITES[split], split)
                 if (d.category != "mandarin" or args.mandarin)
                 and (not args.category or d.category in args.category)]
        dialogues += suite if args.per_category is None else per_category(suite, args.per_category)
    # Interleaved as a day's requests would be (and so that the policy's escalation budget, a share of the
    # last minute's turns, sees a mix rather than a block of knowledge questions); the same order every run.
    random.Random(0).shuffle(dialogues)
    speech = Speech(ROOT / ".cache" / "bench_answers" / "speech") if args.input == "spoken" else None
    note = cloud_note(topo)
    print(f"{len(dialogues)} dialogues ({', '.join(splits)}), {args.input} input, {args.devices} at once, "
          f"against {ota}; cloud: {note}", flush=True)
    started = time.monotonic()
    try:
        outcomes = asyncio.run(run_all(dialogues, ota, args.devices, speech, device_timezone(topo, site.name),
                                       args.turn_timeout))
    except KeyboardInterrupt:
        return 130
    rows = summarize(outcomes)
    print(f"\n{args.title}: {len(dialogues)} dialogues in {time.monotonic() - started:.0f} s "
          f"(scored: the last turn of each dialogue; right = every check passes and no sentence in another language)")
    print_table(rows, note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), outcomes)
    plot(out.with_suffix(".png"), rows, args.title, note)
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")
    errors = sum(bool(o.error) for o in outcomes)
    if errors:
        print(f"{errors} turns failed to run (see the error column)", file=sys.stderr)
    return 1 if errors == len(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
