"""The escalation policy: which turns an edge sends to the cloud, as a validated document.

Cloud operators own the document (YAML or JSON, stored in a JetStream KV bucket, see
:mod:`shared.policy_store`); edges evaluate it on every turn. Rules are tried in
order and the first one whose conditions all hold decides (``escalate`` / ``local`` /
``phrase``: the edge says the rule's fixed ``phrase``, e.g. "I can't look that up right
now" for a knowledge question while the cloud is down, instead of a small model's guess);
no match falls to ``default_action``. Every decision names the rule that fired.

Two phases: the local model's confidence (mean token log-probability of its first
``settings.confidence_tokens`` tokens) exists only after local generation started.
:func:`evaluate` without ``local_confidence`` walks the rules in order; if it reaches
a rule whose other conditions hold but that tests confidence, it returns a decision
with ``needs_confidence=True``: the edge starts generating locally, holds back the
first N tokens, and calls :func:`evaluate` again with ``local_confidence`` set.
That keeps exact first-match semantics while the confidence is computed lazily.

A budget caps the share of turns escalated over a sliding window; an escalation
the budget refuses becomes ``local`` (the rule is still named, the reason says why).
A rule with ``budgeted: false`` escalates outside the budget (the default policy's
knowledge-to-cloud: a local answer to a knowledge question is a wrong one).
"""

from __future__ import annotations

import functools
import json
import re
import time
import unicodedata
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.topology import _format_loc as format_loc

SCHEMA_VERSION = 1

# What a request needs (shared/intent_router.py classifies a turn into one of these, from the examples in
# shared/data/intent_examples.yaml); rules test it with ``match.intents``.
INTENT_CLASSES = ("small_talk", "command", "lookup", "arithmetic", "knowledge", "reasoning")


class PolicyError(Exception):
    """A policy document that cannot be used; ``errors`` are ``path: message`` lines."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def _keyword_regex(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    """Whole-word match for words in spaced scripts, substring match for CJK and the like."""
    if not keywords:
        return None
    parts = []
    for kw in keywords:
        esc = re.escape(kw.strip())
        parts.append(rf"(?<!\w){esc}(?!\w)" if kw.isascii() else esc)
    return re.compile("|".join(parts), re.IGNORECASE)


class Match(_Model):
    """Conditions of one rule; all given ones must hold (an empty match matches every turn)."""

    keywords: tuple[str, ...] = ()  # any of these words/phrases occurs in the text
    pattern: str | None = None  # regex searched in the text (case-insensitive)
    languages: tuple[str, ...] = ()  # the turn's language is one of these
    local_language: bool | None = None  # the edge's local model answers in the turn's language (edge.llm.languages)
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=0)
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=0)
    needs_tools: bool | None = None  # the turn needs tools the edge model cannot serve
    confidence_below: float | None = Field(None, le=0)  # mean log-prob of the first tokens below this
    min_queue_depth: int | None = Field(None, ge=0)
    max_queue_depth: int | None = Field(None, ge=0)
    min_active_turns: int | None = Field(None, ge=0)
    max_active_turns: int | None = Field(None, ge=0)
    cloud_healthy: bool | None = None  # link up and breaker closed
    local_available: bool | None = None  # the edge's own model serves (not crashed or restarting)
    intents: tuple[str, ...] = ()  # the turn's intent class is one of these (an unclassified turn matches none)
    over_capacity: bool | None = None  # the edge is past its admission limits (edge/admission.py) for this turn

    @field_validator("pattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value

    @field_validator("intents")
    @classmethod
    def _known_intents(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [i for i in value if i not in INTENT_CLASSES]
        if unknown:
            raise ValueError(f"unknown intent {unknown[0]!r} (known: {', '.join(INTENT_CLASSES)})")
        return value

    @field_validator("keywords")
    @classmethod
    def _non_empty_keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, kw in enumerate(value):
            if not kw.strip():
                raise ValueError(f"keyword {i} is empty")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> "Match":
        for lo, hi in (("min_words", "max_words"), ("min_chars", "max_chars"),
                       ("min_queue_depth", "max_queue_depth"), ("min_active_turns", "max_active_turns")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is greater than {hi} ({b})")
        return self

    @property
    def tests_confidence(self) -> bool:
        return self.confidence_below is not None

    def holds_before_confidence(self, f: "TurnFeatures") -> bool:
        """Every condition except the confidence one holds."""
        chars = f.char_count
        text = f.text or ""  # a trace without text (store_text: false) matches no keyword or pattern
        checks = (
            not self.keywords or bool(_keyword_regex(self.keywords).search(text)),
            self.pattern is None or bool(_regex(self.pattern).search(text)),
            not self.languages or f.language in self.languages,
            self.local_language is None or f.local_language == self.local_language,
            self.min_words is None or f.word_count >= self.min_words,
            self.max_words is None or f.word_count <= self.max_words,
            self.min_chars is None or chars >= self.min_chars,
            self.max_chars is None or chars <= self.max_chars,
            self.needs_tools is None or f.needs_tools == self.needs_tools,
            self.min_queue_depth is None or f.queue_depth >= self.min_queue_depth,
            self.max_queue_depth is None or f.queue_depth <= self.max_queue_depth,
            self.min_active_turns is None or f.active_turns >= self.min_active_turns,
            self.max_active_turns is None or f.active_turns <= self.max_active_turns,
            self.cloud_healthy is None or f.cloud_healthy == self.cloud_healthy,
            self.local_available is None or f.local_available == self.local_available,
            not self.intents or f.intent in self.intents,
            self.over_capacity is None or f.over_capacity == self.over_capacity,
        )
        return all(checks)

    def describe(self) -> str:
        """The conditions that are set, for decision reasons and summaries (computed once)."""
        return _describe(self)

    def _conditions_text(self) -> str:
        text = ", ".join(f"{k}={v!r}" for k, v in self.model_dump(mode="json", exclude_defaults=True).items())
        return (text[:117] + "...") if len(text) > 120 else (text or "always")


@functools.lru_cache(maxsize=1024)
def _describe(match: Match) -> str:
    return match._conditions_text()


class Rule(_Model):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    match: Match = Match()
    action: Literal["escalate", "local", "phrase"]
    phrase: str | None = Field(None, min_length=1, max_length=200)  # what the edge says for action "phrase"
    budgeted: bool = True  # false: this rule's escalations are outside the budget (no local answer is worth having)

    @model_validator(mode="after")
    def _phrase_with_its_action(self) -> "Rule":
        if (self.action == "phrase") != (self.phrase is not None):
            raise ValueError("a rule has a phrase exactly when its action is 'phrase'")
        return self


class Budget(_Model):
    """At most ``max_share`` of the turns in the last ``window_s`` seconds escalate.

    ``min_turns`` keeps a quiet edge from being starved: the share is taken over at
    least that many turns, so the first hard question of a minute may still escalate.
    """

    max_share: float = Field(0.5, ge=0, le=1)
    window_s: float = Field(60, gt=0, le=3600)
    min_turns: int = Field(10, ge=1)


class Settings(_Model):
    first_token_timeout_ms: int = Field(1500, gt=0, le=60000)
    model_class: str = Field("large", pattern=r"^[a-z0-9_-]+$")
    let_me_think: bool = True  # say the cached "let me think" phrase while waiting for the cloud
    let_me_think_phrase: str = "One moment, let me think."
    confidence_tokens: int = Field(8, ge=1, le=64)


class Policy(_Model):
    """One immutable, validated policy document."""

    version: Literal[1] = SCHEMA_VERSION
    settings: Settings = Settings()
    budget: Budget = Budget()
    rules: tuple[Rule, ...] = ()
    default_action: Literal["escalate", "local"] = "local"

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        names = [r.name for r in rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be unique, repeated: {dup}")
        return rules

    def to_dict(self) -> dict[str, Any]:
        """Plain data; a rule's match lists only the conditions it sets."""
        d = self.model_dump(mode="json")
        for rd, rule in zip(d["rules"], self.rules):
            rd["match"] = rule.match.model_dump(mode="json", exclude_defaults=True)
            if rule.phrase is None:
                del rd["phrase"]
        return d

    def to_yaml(self) -> str:
        """Canonical YAML (what ``show`` prints and ``diff`` compares)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    def summary(self) -> str:
        return (f"{len(self.rules)} rules, budget {self.budget.max_share:.0%}/{self.budget.window_s:g}s, "
                f"first token {self.settings.first_token_timeout_ms} ms, class {self.settings.model_class}, "
                f"default {self.default_action}")


# ---------------------------------------------------------------- parsing
def parse_policy(doc: Any) -> Policy:
    """Validate a parsed document; raises PolicyError listing every problem by path."""
    if not isinstance(doc, dict):
        raise PolicyError(["<root>: the policy must be a mapping"])
    try:
        return Policy.model_validate(doc)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            errors.append(f"{format_loc(e['loc'])}: {msg}")
        raise PolicyError(errors) from None


def loads_policy(text: str | bytes, source: str = "<policy>") -> Policy:
    """Parse YAML or JSON text (JSON is YAML) into a validated policy."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"{source}: not valid YAML/JSON: {exc}".replace("\n", " ")]) from None
    return parse_policy(doc)


def load_policy(path: str | Path) -> Policy:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise PolicyError([f"{file}: {exc.strerror or exc}"]) from None
    return loads_policy(text, str(file))


DEFAULT_POLICY = parse_policy({
    "settings": {"first_token_timeout_ms": 1500, "model_class": "large", "let_me_think": True,
                 "confidence_tokens": 8},
    "budget": {"max_share": 0.5, "window_s": 60, "min_turns": 10},
    "rules": [
        # Knowledge and reasoning need the cloud's larger model; the 135M edge model invents answers
        # (scripts/bench_answers.py). Without the cloud, an honest cached phrase beats a wrong answer.
        {"name": "knowledge-offline", "match": {"cloud_healthy": False, "intents": ["knowledge", "reasoning"]},
         "action": "phrase", "phrase": "Sorry, I can't look that up right now."},
        {"name": "cloud-unhealthy", "match": {"cloud_healthy": False}, "action": "local"},
        # The local model is down (restarting): the cloud answers (the budget does not apply), or nobody can.
        {"name": "local-down", "match": {"local_available": False}, "action": "escalate"},
        # The edge is past its admission limits (and the cloud healthy, or the rule above fired): the cloud answers,
        # outside the budget. Operators who prefer a local answer queued behind the others set this to local.
        {"name": "edge-full", "match": {"over_capacity": True}, "action": "escalate"},
        # A turn in a language the edge's model does not speak (SmolLM2 and Mandarin) goes to the cloud.
        {"name": "other-language", "match": {"local_language": False}, "action": "escalate"},
        {"name": "greeting", "action": "local", "match": {
            "max_words": 6,
            "keywords": ["hello", "hi", "hey", "thanks", "thank you", "good morning", "good night",
                         "bye", "goodbye", "你好", "谢谢", "再见"]}},
        # Tool turns stay local: the bundled edge model reaches 96% on scripts/bench_tools.py's suite (the
        # words settle most calls). Operators with a stronger cloud model flip this to escalate.
        {"name": "needs-tools", "match": {"needs_tools": True}, "action": "local"},
        # Outside the budget: what the budget would keep local is a question the edge's model answers wrong.
        {"name": "knowledge-to-cloud", "match": {"intents": ["knowledge", "reasoning"]}, "action": "escalate",
         "budgeted": False},
        # What the edge answers well stays there, however it is phrased ("How are you?" is no hard question).
        {"name": "edge-intents", "match": {"intents": ["small_talk", "command", "lookup", "arithmetic"]},
         "action": "local"},
        {"name": "long-question", "match": {"min_words": 13}, "action": "escalate"},
        {"name": "hard-question", "action": "escalate", "match": {
            "pattern": r"\b(explain|why|compare|difference between|summari[sz]e|analy[sz]e|calculate)\b"
                       r"|\bhow (does|do|did|can|could|would|is|are)\b|为什么|怎么|解释"}},
        {"name": "low-confidence", "match": {"confidence_below": -2.5}, "action": "escalate"},
    ],
    "default_action": "local",
})


# ---------------------------------------------------------------- features and decisions
def count_words(text: str) -> int:
    """Words in spaced scripts; every CJK ideograph / kana / hangul character counts as one."""
    words = 0
    for token in text.split():
        wide = sum(1 for ch in token if unicodedata.east_asian_width(ch) in ("W", "F") and ch.isalpha())
        rest = any(ch.isalnum() and not (unicodedata.east_asian_width(ch) in ("W", "F")) for ch in token)
        words += wide + (1 if rest else 0)
    return words


def mean_logprob(logprobs: Sequence[float], n: int) -> float | None:
    """The confidence the policy tests: mean log-probability of the first ``n`` generated tokens.

    OpenAI-compatible servers (llama.cpp, vLLM) return per-token ``logprobs`` when asked;
    None until at least one token exists.
    """
    head = list(logprobs[:n])
    return sum(head) / len(head) if head else None


@dataclass
class TurnFeatures:
    """What the policy looks at for one turn; one JSON object in the turn trace.

    ``text`` is None for a turn traced with ``store_text: false``: its length and word
    count are kept, its words are not.
    """

    text: str | None
    language: str = "en"
    word_count: int = 0
    char_count: int = 0
    needs_tools: bool = False
    local_confidence: float | None = None
    queue_depth: int = 0
    active_turns: int = 0
    cloud_healthy: bool = True
    local_available: bool = True  # false while the local model server is down: escalating is the only answer
    local_language: bool = True  # the local model answers in ``language`` (see local_language())
    intent: str | None = None  # the request's intent class (INTENT_CLASSES); None: not classified
    over_capacity: bool = False  # admission found the edge past its limits when the turn started

    @classmethod
    def from_text(cls, text: str, **kw: Any) -> "TurnFeatures":
        return cls(text=text, word_count=count_words(text), char_count=len(text), **kw)

    def without_text(self) -> "TurnFeatures":
        """The same turn with the user's words dropped (lengths kept)."""
        return replace(self, text=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TurnFeatures":
        """Build from a trace record; unknown keys are ignored, a bad record raises ValueError.

        A record needs the text, or (traced without text) its word count.
        """
        if not isinstance(d, dict):
            raise ValueError("features must be an object")
        text = d.get("text")
        if not isinstance(text, str) and not (text is None and "word_count" in d):
            raise ValueError("features need a 'text' string (or 'word_count' when traced without text)")
        try:
            conf = d.get("local_confidence")
            return cls(
                text=text,
                language=str(d.get("language", "en")),
                word_count=int(d["word_count"]) if "word_count" in d else count_words(text),
                char_count=int(d["char_count"]) if "char_count" in d else len(text or ""),
                needs_tools=bool(d.get("needs_tools", False)),
                local_confidence=None if conf is None else float(conf),
                queue_depth=int(d.get("queue_depth", 0)),
                active_turns=int(d.get("active_turns", 0)),
                cloud_healthy=bool(d.get("cloud_healthy", True)),
                local_available=bool(d.get("local_available", True)),
                local_language=bool(d.get("local_language", True)),
                intent=None if d.get("intent") is None else str(d["intent"]),
                over_capacity=bool(d.get("over_capacity", False)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad features: {exc}") from None


def local_language(language: str, local_languages: Sequence[str]) -> bool:
    """Does a local model declared to answer ``local_languages`` speak ``language``? (unknown: assume so)"""
    return not language or language in local_languages


@dataclass(frozen=True)
class Decision:
    """The outcome for one turn: where it goes and which rule said so."""

    escalate: bool
    rule: str
    reason: str
    revision: int
    needs_confidence: bool = False  # phase 1 only: generate locally, then evaluate again with confidence
    budget_limited: bool = False  # a rule said escalate, the budget said no
    phrase: str | None = None  # action "phrase": the edge says this (a cached phrase) and nothing else

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PolicyState:
    """Per-edge memory the policy needs across turns: the budget's sliding window (O(1) per turn)."""

    _turns: deque[tuple[float, bool]] = field(default_factory=deque)
    _escalated: int = 0

    def _trim(self, now: float, window_s: float) -> None:
        while self._turns and self._turns[0][0] <= now - window_s:
            _, escalated = self._turns.popleft()
            self._escalated -= escalated

    def counts(self, now: float, window_s: float) -> tuple[int, int]:
        """(turns, escalated turns) in the window ending at ``now``."""
        self._trim(now, window_s)
        return len(self._turns), self._escalated

    def record(self, now: float, escalated: bool) -> None:
        self._turns.append((now, escalated))
        self._escalated += escalated


def evaluate(
    features: TurnFeatures,
    state: PolicyState,
    policy: Policy = DEFAULT_POLICY,
    revision: int = 0,
    now: float | None = None,
) -> Decision:
    """Decide one turn; final decisions are recorded in ``state`` for the budget.

    ``now`` (seconds, any monotonic clock) defaults to ``time.monotonic()``; replays pass
    the recorded time.
    """
    now = time.monotonic() if now is None else now
    rule_name, action, reason, phrase, budgeted = "", policy.default_action, "no rule matched", None, True
    for rule in policy.rules:
        if not rule.match.holds_before_confidence(features):
            continue
        if rule.match.tests_confidence:
            if features.local_confidence is None:
                return Decision(False, rule.name, f"needs the local model's confidence ({rule.match.describe()})",
                                revision, needs_confidence=True)
            if not features.local_confidence < rule.match.confidence_below:
                continue
        rule_name, action, reason, phrase, budgeted = (rule.name, rule.action, rule.match.describe(), rule.phrase,
                                                       rule.budgeted)
        break

    escalate = action == "escalate"
    budget_limited = False
    # With the local model down, the edge full or a language the local model lacks, the budget has no good
    # alternative (a Mandarin device's every turn escalates): it does not apply; nor to a rule outside it.
    if escalate and budgeted and features.local_available and not features.over_capacity and features.local_language:
        b = policy.budget
        turns, escalated = state.counts(now, b.window_s)
        allowed = b.max_share * max(turns + 1, b.min_turns)
        if escalated + 1 > allowed + 1e-9:
            escalate, budget_limited = False, True
            reason = f"budget: {escalated}/{turns} turns escalated in {b.window_s:g}s (max {b.max_share:.0%})"
    state.record(now, escalate)
    return Decision(escalate, rule_name or "default", reason, revision, budget_limited=budget_limited, phrase=phrase)
