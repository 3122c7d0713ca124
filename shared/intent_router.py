"""One embedding per turn decides two things: does the request need a tool (which), and what kind of request is it.

Word lists cannot tell "make the lamp blue" from "I love the color blue"; a
sentence embedding can. The request's MiniLM vector (shared.embeddings) is
compared with

- each offered tool's documents: its name and description's first sentence,
  its few-shot examples, and routing examples for the firmware's standard tools
  and the edge's server tools (``shared/data/tool_routes.yaml``);
- chat that needs no tool, many of them with tool words in another sense (the
  same file's ``no_tool`` list, plus the small_talk / knowledge / reasoning
  label sets);
- the intent label sets (``shared/data/intent_examples.yaml``:
  ``classes: {small_talk: [...], command: [...], ...}``; any file of that shape).

With a small-talk book (shared.small_talk), a request classed as small talk and
close to one of its entries names that entry (the edge says its reply).

The intent class is checked against the words where they can say more: "arithmetic"
needs a sum the parser reads (else it is a fact to know: "how many minutes are in
an hour?"), "lookup" needs a tool that would read it (else: knowledge), and a
question that is barely small talk and not about the assistant is knowledge; the
calculator is a candidate only for a request with a number in it ("how many sides
does a square have?" has none).

A request whose words are plainly a sum ("what's seventeen times twenty-three",
shared.spoken_math) is a clear decision for the offered calculator, whatever the
similarities say.

A tool's score is its best match; the margin is the best tool's score minus the
best chat match. ``clear`` decisions have a margin of at least
``RouterConfig.clear_margin``; "unsure" ones lie between ``weak_margin`` and
that; below ``weak_margin`` the turn is chat. What an unsure decision may do
(a reading tool runs, a state-changing one asks first) is shared.tool_decision's
rule. The thresholds were calibrated on tests/data/tool_suite.yaml only
(``scripts/bench_tools.py`` prints the scores), never on the held-out or fresh suites.

Tool documents are embedded once per tool definition and kept (an LRU keyed by
the tool's name, description and examples), so a session's registry costs one
embedding batch the first time and nothing after.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml
from cachetools import LRUCache

from shared.embeddings import Embedder
from shared.policy import INTENT_CLASSES  # the policy matches on them; one list
from shared.small_talk import SmallTalkBook
from shared.speech_act import SpeechAct, speech_act
from shared.spoken_math import spoken_expression, spoken_numbers
from shared.tool_calling import ToolDef, ToolSet, examples_of, llm_name
from shared.tool_intent import is_question, ranked, needs_tools

DATA = Path(__file__).resolve().parent / "data"
INTENT_FILE = DATA / "intent_examples.yaml"
ROUTES_FILE = DATA / "tool_routes.yaml"
CHAT_CLASSES = ("small_talk", "knowledge", "reasoning")  # their examples count as "no tool" too
SMALL_TALK_WEAK = 0.35  # below the tuning split's least small-talk-like small-talk question ("are you a robot?")
_YOU = re.compile(r"\byou(?:r|rs|rself)?\b", re.IGNORECASE)  # small-talk questions are about the assistant
SMALL_TALK_ANY_INTENT = 0.85  # a small-talk book match this close needs no small_talk class


class LabelSetError(ValueError):
    """An intent or routing file that does not have the expected shape."""


def load_intent_examples(paths: Iterable[Path]) -> dict[str, list[str]]:
    """``classes: {name: [examples]}`` from each file, merged in order."""
    out: dict[str, list[str]] = {}
    for path in paths:
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise LabelSetError(f"{path}: cannot read label sets: {exc}") from None
        classes = doc.get("classes") if isinstance(doc, dict) else None
        if not isinstance(classes, dict):
            raise LabelSetError(f"{path}: expected 'classes: {{name: [examples]}}'")
        for name, examples in classes.items():
            if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
                raise LabelSetError(f"{path}: classes.{name} must be a list of strings")
            out.setdefault(str(name), []).extend(e.strip() for e in examples if e.strip())
    return {k: v for k, v in out.items() if v}


def load_routes(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(tool name -> example requests, no-tool chat examples) from a routing file."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LabelSetError(f"{path}: cannot read routing examples: {exc}") from None
    tools, chat = doc.get("tools") or {}, doc.get("no_tool") or []
    if not isinstance(tools, dict) or not isinstance(chat, list):
        raise LabelSetError(f"{path}: expected 'tools: {{name: [requests]}}' and 'no_tool: [requests]'")
    return {str(k): [str(x) for x in v or []] for k, v in tools.items()}, [str(x) for x in chat]


@dataclass(frozen=True)
class RouterConfig:
    """Margins in cosine similarity (calibrated on tests/data/tool_suite.yaml)."""

    clear_margin: float = 0.10  # best tool - best chat match: a clear tool decision
    weak_margin: float = 0.0  # from here up a tool is possible (unsure below clear_margin)
    min_score: float = 0.40  # a best tool match below this is chat whatever the margin
    shortlist_delta: float = 0.08  # tools this close to the best one go to the caller as candidates
    max_candidates: int = 3


@dataclass(frozen=True)
class RouteDecision:
    """What the router saw in one request."""

    tool: str | None  # the best tool (its registry name) when a tool is possible, else None (chat)
    score: float  # the best tool's similarity
    chat_score: float  # the best no-tool example's similarity
    margin: float  # score - chat_score
    clear: bool  # margin >= clear_margin and the best tool is a tool
    candidates: tuple[str, ...]  # tools within shortlist_delta of the best, best first (empty for chat)
    intent: str | None  # small_talk | command | lookup | arithmetic | knowledge | reasoning
    intent_score: float
    ms: float  # time spent routing (embedding + scoring)
    words: tuple[str, ...] = ()  # tools the request's words name (shared.tool_intent's gate and ranking)
    question: bool = False  # phrased as a question ("how do you mute ...?"): asks about, does not order
    act: SpeechAct = SpeechAct()  # the request's form: orders, asks how, tells, or about another object
    small_talk: str | None = None  # the small-talk book's entry that answers it (shared.small_talk), if any

    @property
    def is_chat(self) -> bool:
        return self.tool is None

    @property
    def unsure(self) -> bool:
        return self.tool is not None and not self.clear


def _first_sentence(text: str) -> str:
    for stop in (". ", "\n"):
        text = text.split(stop, 1)[0]
    return text.strip()


def tool_documents(tool: ToolDef, routes: dict[str, Sequence[str]]) -> list[str]:
    """What a request for this tool looks like: its name and description, its examples, routing examples."""
    words = tool.name.removeprefix("self.").replace(".", " ").replace("_", " ")
    docs = [f"{words}: {_first_sentence(tool.description)}" if tool.description else words]
    docs += [text for text, _ in examples_of(tool)]
    docs += list(routes.get(tool.name) or routes.get(llm_name(tool.name)) or ())
    return list(dict.fromkeys(d for d in docs if d))


class IntentRouter:
    """Tool routing and intent class from one embedding; thread-safe, CPU-bound (call it off the event loop)."""

    def __init__(self, embedder: Embedder, config: RouterConfig | None = None,
                 intent_files: Sequence[Path] = (INTENT_FILE,), routes_file: Path = ROUTES_FILE,
                 tool_cache_size: int = 256, small_talk: SmallTalkBook | None = None):
        self.embedder = embedder
        self.small_talk = small_talk  # answers small talk from the book, same vector
        self.config = config or RouterConfig()
        self.routes, chat = load_routes(routes_file)
        self.intents = load_intent_examples(intent_files)
        unknown = set(self.intents) - set(INTENT_CLASSES)
        if unknown:
            raise LabelSetError(f"unknown intent classes {sorted(unknown)} (known: {', '.join(INTENT_CLASSES)})")
        self._intent_names = [name for name in INTENT_CLASSES if name in self.intents]
        self._intent_vectors = [embedder.embed(self.intents[name]) for name in self._intent_names]
        chat = chat + [e for name in CHAT_CLASSES for e in self.intents.get(name, [])]
        self._chat = embedder.embed(list(dict.fromkeys(chat))) if chat else np.zeros((0, 0), np.float32)
        self._tool_vectors: LRUCache[tuple, np.ndarray] = LRUCache(maxsize=tool_cache_size)

    def _vectors_of(self, tool: ToolDef) -> np.ndarray:
        key = (tool.name, tool.description, tuple(text for text, _ in examples_of(tool)))
        vectors = self._tool_vectors.get(key)
        if vectors is None:  # a race computes the same thing twice: harmless
            vectors = self._tool_vectors[key] = self.embedder.embed(tool_documents(tool, self.routes))
        return vectors

    def warm(self, tools: ToolSet) -> None:
        """Embed a registry's tools now (a session start), so its first turn pays only its own embedding."""
        for tool in tools:
            self._vectors_of(tool)

    def intent_of(self, vector: np.ndarray) -> tuple[str | None, float]:
        """The class whose examples are closest (mean of the best three matches)."""
        best, best_score = None, -1.0
        for name, vectors in zip(self._intent_names, self._intent_vectors):
            sims = np.sort(vectors @ vector)[::-1][:3]
            score = float(sims.mean())
            if score > best_score:
                best, best_score = name, score
        return best, max(best_score, 0.0)

    def _small_talk(self, act: SpeechAct, vector: np.ndarray, intent: str | None) -> str | None:
        """The small-talk book's entry for a request classed as small talk; a very close match ("can you hear
        me?") counts whatever the class. A question about how to say or do something ("how do you say goodbye
        in French?") is not the class agreeing with the book, however close its words."""
        if self.small_talk is None:
            return None
        name, score = self.small_talk.match(vector, agreed=intent == "small_talk" and not act.how_to)
        return name if intent == "small_talk" or score >= SMALL_TALK_ANY_INTENT else None

    def route(self, text: str, tools: ToolSet | None) -> RouteDecision:
        """The decision for one request; ``tools`` None or empty: intent only, always chat."""
        start = time.perf_counter()
        text = text.strip()
        if not text:
            return RouteDecision(None, 0.0, 0.0, 0.0, False, (), None, 0.0, 0.0)
        vector = self.embedder.embed_one(text)
        seen, intent_score = self.intent_of(vector)
        arithmetic = spoken_expression(text) is not None
        intent = "knowledge" if seen == "arithmetic" and not arithmetic else seen  # "minutes in an hour?": a fact
        if intent == "small_talk" and intent_score < SMALL_TALK_WEAK and is_question(text) and not _YOU.search(text):
            intent = "knowledge"  # "what do bees make?": a question about the world, barely like small talk
        chat_score = float((self._chat @ vector).max()) if self._chat.size else 0.0
        calculator = _calculator(tools)
        scored = sorted(((float((self._vectors_of(t) @ vector).max()), t.name) for t in tools or ()
                         if t.name != calculator or arithmetic or spoken_numbers(text)),  # "sides of a square"?
                        reverse=True)
        cfg = self.config
        act = speech_act(text)
        book = self._small_talk(act, vector, intent)
        if not scored:
            return RouteDecision(None, 0.0, chat_score, -chat_score, False, (), intent, intent_score,
                                 (time.perf_counter() - start) * 1000, small_talk=book)
        if arithmetic and calculator is not None:  # plainly a sum (shared.spoken_math): no similarity beats that
            return RouteDecision(calculator, scored[0][0], chat_score, 1.0, True, (calculator,), "arithmetic",
                                 intent_score, (time.perf_counter() - start) * 1000, (calculator,))
        score, best = scored[0]
        margin = score - chat_score
        possible = score >= cfg.min_score and margin >= cfg.weak_margin
        clear = possible and margin >= cfg.clear_margin
        words = words_naming(tools, text)
        if intent == "lookup" and not (clear or (possible and best in words)):  # nothing here would read it
            intent = "knowledge"  # ("the freezing point of water", "minutes in an hour")
        candidates = tuple(name for s, name in scored[: cfg.max_candidates] if s >= score - cfg.shortlist_delta)
        return RouteDecision(best if possible else None, score, chat_score, margin, clear,
                             candidates if possible else (), intent, intent_score, (time.perf_counter() - start) * 1000,
                             words, is_question(text) and not _POLITE.match(text),
                             act, None if possible else book)


def _calculator(tools: ToolSet | None) -> str | None:
    """The offered tool whose one argument is an arithmetic ``expression`` (the edge's ``calculate``)."""
    for tool in tools or ():
        props = tool.parameters.get("properties") or {}
        if list(props) == ["expression"] and (props["expression"] or {}).get("type") == "string":
            return tool.name
    return None


_POLITE = re.compile(r"\s*(can|could|would|will)\s+you\b", re.IGNORECASE)  # a request, not a question


def words_naming(tools: ToolSet, text: str) -> tuple[str, ...]:
    """The tools the lexical gate lets through and ranks first (ties included): the second, independent
    signal a state-changing call needs before it runs without asking."""
    if not needs_tools(tools, text):
        return ()
    ranking = ranked(tools, text)
    return tuple(t.name for s, t in ranking if s == ranking[0][0]) if ranking else ()
