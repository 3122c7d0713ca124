"""Small talk answered from a book of replies: greetings, thanks, goodbyes, "who are you", a joke.

These exchanges have one right kind of answer, and SmolLM2-135M gets them wrong
(a French "Bonjour, monsieur", an invented name, thanking the user for
thanking it): issue 15's benchmark had the local small-talk answers right 38% of
the time. The router already embeds every request (shared.intent_router); the
same vector is compared with each book entry's examples, and a request the
router classed as small talk that lies close enough to one entry gets one of its
replies, in the turn's language, without a model round (and from the TTS cache
once said). Anything else small-talk-like still goes to the model.

The book is data (``shared/data/small_talk.yaml``, or the operator's file from
``edge.router.small_talk_file``): ``replies: {entry: {examples: [...], unlike: [...], <lang>: [replies]}}``; a request
closer to one of an entry's ``unlike`` sentences than to its examples is not that entry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from shared.embeddings import Embedder
from shared.languages import primary_subtag

BOOK_FILE = Path(__file__).resolve().parent / "data" / "small_talk.yaml"
MIN_SCORE = 0.70  # cosine similarity to an entry's closest example
# When the intent router also classed the request as small talk, two signals agree: the closest entry then
# answers from a lower similarity if it clearly leads the next entry ("thanks so much for your help today").
# Calibrated on the answer benchmark's tuning split: the requests of other categories classed small talk led
# by at most 0.089 ("how many hours are in a day?"), the small talk answered by the book by at least 0.137.
AGREED_MIN_SCORE = 0.45
AGREED_MIN_LEAD = 0.12


class SmallTalkBookError(ValueError):
    """A small-talk book that does not have the expected shape."""


@dataclass(frozen=True)
class Entry:
    name: str
    examples: tuple[str, ...]
    replies: dict[str, tuple[str, ...]]  # primary language subtag -> replies
    unlike: tuple[str, ...] = ()  # close in words, not this entry ("what is my name" is not "what is your name")


def load_book(path: Path) -> list[Entry]:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SmallTalkBookError(f"{path}: cannot read the small-talk book: {exc}") from None
    replies = doc.get("replies") if isinstance(doc, dict) else None
    if not isinstance(replies, dict):
        raise SmallTalkBookError(f"{path}: expected 'replies: {{entry: {{examples: [...], en: [...]}}}}'")
    entries = []
    for name, body in replies.items():
        if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
            raise SmallTalkBookError(f"{path}: replies.{name} needs a list of examples")
        unlike = body.get("unlike") or []
        if not isinstance(unlike, list):
            raise SmallTalkBookError(f"{path}: replies.{name}.unlike must be a list")
        by_language = {str(k): v for k, v in body.items() if k not in ("examples", "unlike")}
        if not by_language or not all(isinstance(v, list) and v and all(isinstance(x, str) for x in v)
                                      for v in by_language.values()):
            raise SmallTalkBookError(f"{path}: replies.{name} needs replies by language, e.g. en: [\"...\"]")
        entries.append(Entry(str(name), tuple(str(e) for e in body["examples"]),
                             {k: tuple(v) for k, v in by_language.items()}, tuple(str(u) for u in unlike)))
    return entries


class SmallTalkBook:
    """The book's entries with their examples embedded once; thread-safe after construction."""

    def __init__(self, embedder: Embedder, path: Path = BOOK_FILE, min_score: float = MIN_SCORE,
                 rng: random.Random | None = None):
        self.entries = load_book(path)
        self.min_score = min_score
        self._vectors = [embedder.embed(list(e.examples)) for e in self.entries]
        self._unlike = [embedder.embed(list(e.unlike)) if e.unlike else None for e in self.entries]
        self._rng = rng or random.Random()

    def match(self, vector: np.ndarray, agreed: bool = False) -> tuple[str | None, float]:
        """(the closest entry's name, its score); the name is None below ``min_score`` or, when ``agreed``
        (the router classed the request as small talk), below AGREED_MIN_SCORE with a lead of AGREED_MIN_LEAD."""
        best, best_score, second, closer_unlike = None, 0.0, 0.0, False
        for entry, vectors, unlike in zip(self.entries, self._vectors, self._unlike):
            score = float((vectors @ vector).max()) if len(entry.examples) else 0.0
            if score > best_score:
                best, best_score, second = entry.name, score, best_score
                closer_unlike = unlike is not None and float((unlike @ vector).max()) >= score
            elif score > second:
                second = score
        close = best_score >= self.min_score or (
            agreed and best_score >= AGREED_MIN_SCORE and best_score - second >= AGREED_MIN_LEAD)
        return (best if close and not closer_unlike else None), best_score

    def reply(self, name: str, language: str | None) -> str | None:
        """One of the entry's replies in ``language``; None when the book has none in it."""
        entry = next((e for e in self.entries if e.name == name), None)
        replies = entry.replies.get(primary_subtag(language)) if entry else None
        return self._rng.choice(replies) if replies else None

    def all_replies(self, language: str | None) -> list[str]:
        """Every reply in ``language`` (the TTS cache pre-warms them)."""
        return [r for e in self.entries for r in e.replies.get(primary_subtag(language), ())]
