"""Does this request look like it needs a tool? A lexical gate in front of the tool loop.

Asking the model whether to call a tool costs an LLM round on every turn; most
turns are chat and questions that no tool serves. The gate matches the request's
content words against each offered tool's vocabulary (the words of its name, of
its description's first sentence and of its examples, plus a few everyday
synonyms such as "louder" for volume or "lamp" for light). Only turns that pass
go through the tool loop, and the escalation policy sees the result as the
``needs_tools`` feature.

A false positive costs one tool decision (the model then answers "none"); a
false negative answers without tools. ``scripts/bench_tools.py`` prints the
gate's recall and precision on the request suite.
"""

from __future__ import annotations

import re
from shared.grammar_tools import examples_of
from shared.tool_calling import ToolSet

_WORD = re.compile(r"[^\W\d_]+")  # letters only: numbers say nothing about which tool
# Words too common in requests and tool descriptions to mean anything on their own.
_STOP = frozenset("""
a an the to of is it its me my please what whats i you your can could do does set get turn make self use
this that there their how which who why when where much many some any be are was were will would should
and or but for in on at by with from as if then than so just also tell give show let now right currently
current real information including etc provides provide value values given one two both about up down
off out into want need like know say see have has had no not yes ok okay hey hi hello thanks thank
""".split())
# Everyday words for what device tools are usually named after.
_SYNONYMS = {
    "loud": "volume", "louder": "volume", "quiet": "volume", "quieter": "volume", "mute": "volume",
    "sound": "volume", "softer": "volume", "unmute": "volume",
    "lamp": "light", "lights": "light", "bulb": "light", "led": "light",
    "display": "screen", "dim": "brightness", "bright": "brightness", "brighter": "brightness",
    "darker": "brightness", "charge": "battery", "power": "battery", "clock": "time", "today": "date",
    "month": "date", "year": "date", "weekday": "day", "plus": "calculate", "minus": "calculate",
    "times": "calculate", "multiplied": "calculate", "divided": "calculate", "squared": "calculate",
    "root": "calculate", "percent": "calculate", "compute": "calculate", "sum": "calculate",
}


def _stem(word: str) -> str:
    """Crude English suffix stripping: enough to match "lights"/"light", "divided"/"divide"."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


_CANONICAL = frozenset(_stem(w) for w in _SYNONYMS.values())


def content_words(text: str) -> set[str]:
    """Stemmed content words, with synonyms mapped to the word tools are named after."""
    out: set[str] = set()
    for word in _WORD.findall(text.lower().replace("_", " ").replace(".", " ")):
        if word in _STOP or len(word) < 2:
            continue
        out.add(_stem(word))
        if word in _SYNONYMS:
            out.add(_stem(_SYNONYMS[word]))
    return out


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0] if text else ""


def tool_vocabulary(tools: ToolSet) -> tuple[set[str], set[str]]:
    """(strong, weak) words: strong ones name a tool (or are what everyday synonyms map to), weak ones
    come from descriptions and examples (colours, "status", ...) and count only in pairs."""
    strong: set[str] = set()
    weak: set[str] = set()
    for tool in tools:
        strong |= content_words(tool.name)
        weak |= content_words(_first_sentence(tool.description))
        for request, _ in examples_of(tool):
            weak |= content_words(request)
    strong |= _CANONICAL & weak  # e.g. "volume" in a volume tool's description
    return strong, weak - strong


def matched_words(tools: ToolSet, text: str) -> set[str]:
    """The request's words that point at a tool (empty: no tool needed)."""
    words = content_words(text)
    strong, weak = tool_vocabulary(tools)
    hits = words & (strong | weak)
    return hits if words & strong or len(hits) >= 2 else set()


def needs_tools(tools: ToolSet | None, text: str) -> bool:
    return bool(tools is not None and len(tools) and matched_words(tools, text))
