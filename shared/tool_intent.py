"""Does this request look like it needs a tool? A lexical gate in front of the tool loop.

Asking the model whether to call a tool costs an LLM round on every turn; most
turns are chat and questions that no tool serves. The gate matches the request's
content words against each offered tool's vocabulary (the words of its name, of
its description's first sentence and of its examples, plus a few everyday
synonyms such as "louder" for volume or "lamp" for light). Only turns that pass
go through the tool loop, and the escalation policy sees the result as the
``needs_tools`` feature. The same matching shortlists the tools a small model
chooses among (:func:`shortlist`, used by shared.grammar_tools).

A false positive costs one tool decision (the model then answers "none"); a
false negative answers without tools. ``scripts/bench_tools.py`` prints the
gate's recall and precision on the request suite.

Hand-rolled on purpose: a stop list, a suffix rule and a few dozen synonyms run in
microseconds with no NLP dependency on the edge. It is English; requests in other
languages match through tool names and examples only (or reach the model when the
policy escalates them).
"""

from __future__ import annotations

import functools
import re

from shared.tool_calling import ToolDef, ToolSet, examples_of

_WORD = re.compile(r"[^\W\d_]+")  # letters only: numbers say nothing about which tool
# Words too common in requests and tool descriptions to mean anything on their own.
_STOP = frozenset("""
a an the to of is it its me my please what whats i you your can could do does set get turn make self use
this that there their how which who why when where much many some any be are was were will would should
and or but for in at by with from as if then than so just also tell give show let now right currently
current real information including etc provides provide value values given one two both about
into want need like know say see have has had no not yes ok okay hey hi hello thanks thank
""".split())
# Words that tell tools apart ("turn_on" / "turn_off") but say nothing on their own ("a story on cats").
_PARTICLES = frozenset({"on", "off", "up", "down", "out"})
# Everyday words for what device tools are usually named after.
_SYNONYMS = {
    "loud": "volume", "louder": "volume", "quiet": "volume", "quieter": "volume", "mute": "volume",
    "sound": "volume", "softer": "volume", "unmute": "volume",
    "out": "off", "kill": "off", "lamp": "light", "lights": "light", "bulb": "light", "led": "light",
    "display": "screen", "dim": "brightness", "bright": "brightness", "brighter": "brightness",
    "darker": "brightness", "charge": "battery", "charging": "battery", "clock": "time", "today": "date",
    "month": "date", "year": "date", "weekday": "day", "plus": "calculate", "minus": "calculate",
    "times": "calculate", "power": "calculate", "square": "calculate", "multiplied": "calculate",
    "divided": "calculate", "squared": "calculate", "root": "calculate", "percent": "calculate", "compute": "calculate", "sum": "calculate",
}


def _stem(word: str) -> str:
    """Crude English suffix stripping: enough to match "lights"/"light", "divided"/"divide"."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str, synonyms: bool = True) -> set[str]:
    """Stemmed content words; for requests also the word tools are named after ("louder" -> volume)."""
    out: set[str] = set()
    for word in _WORD.findall(text.lower().replace("_", " ").replace(".", " ")):
        if word in _STOP or len(word) < 2:
            continue
        out.add(_stem(word))
        if synonyms and word in _SYNONYMS:
            out.add(_stem(_SYNONYMS[word]))
    return out


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0] if text else ""


def tool_vocabulary(tool: ToolDef) -> tuple[frozenset[str], frozenset[str]]:
    """(strong, weak) words of one tool: strong ones are in its name, weak ones come from its
    description and examples (colours, "status", ...) and count only in pairs."""
    return _vocabulary(tool.name, _first_sentence(tool.description), tuple(r for r, _ in examples_of(tool)))


@functools.lru_cache(maxsize=4096)  # every turn asks again for the same few tools
def _vocabulary(name: str, description: str, examples: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    strong = content_words(name, synonyms=False)
    weak = content_words(description, synonyms=False)
    for request in examples:
        weak |= content_words(request, synonyms=False)
    return frozenset(strong), frozenset(weak - strong)


def _hits(words: set[str], tool: ToolDef) -> tuple[set[str], set[str]]:
    """(strong, weak) words of the request that point at this tool; particles only along with others."""
    strong, weak = tool_vocabulary(tool)
    strong_hits, weak_hits = words & strong, words & weak
    if not (strong_hits | weak_hits) - _PARTICLES:
        return set(), set()
    return strong_hits, weak_hits


def matched_words(tools: ToolSet, text: str) -> set[str]:
    """The request's words that point at a tool (empty: no tool needed)."""
    words = content_words(text)
    strong_hit = False
    hits: set[str] = set()
    for tool in tools:
        strong, weak = _hits(words, tool)
        strong_hit = strong_hit or bool(strong - _PARTICLES)
        hits |= strong | weak
    return hits if strong_hit or len(hits - _PARTICLES) >= 2 else set()


def needs_tools(tools: ToolSet | None, text: str) -> bool:
    return bool(tools is not None and len(tools) and matched_words(tools, text))


def ranked(tools: ToolSet, text: str) -> list[tuple[int, ToolDef]]:
    """(score, tool) for the tools the request's words point at, best first; a strong word counts 2."""
    words = content_words(text)
    scored = []
    for i, tool in enumerate(tools):
        strong, weak = _hits(words, tool)
        score = 2 * len(strong) + len(weak)
        if score:
            scored.append((-score, i, tool))
    return [(-neg, tool) for neg, _, tool in sorted(scored, key=lambda x: x[:2])]


def shortlist(tools: ToolSet, text: str, limit: int = 4) -> list[ToolDef]:
    """The tools a small model chooses among: choosing from two or three candidates instead of a dozen
    is faster (a shorter prompt) and more accurate (tool retrieval). Empty when nothing matches."""
    return [tool for _, tool in ranked(tools, text)[:limit]]


_QUESTION = frozenset("what whats how is are which who why when where do does can could".split())
_CHANGES = re.compile(r"(^|[._])(set|turn|switch|change|toggle|mute|enable|disable|start|stop|play|open|close)",
                      re.IGNORECASE)


def clear_winner(tools: ToolSet, text: str, ranking: list[tuple[int, ToolDef]] | None = None) -> ToolDef | None:
    """The tool the words name unambiguously: a word of its name matches and it scores above every other.

    "set the volume to 30" names the volume tool and nothing else; "turn the light off" is told
    apart from "on" by the particle; "what is the speed of light" ties the light tools, and a
    question never picks a tool whose name says it changes something ("how loud is it" is no
    volume change): those go to the model. ``ranking``: :func:`ranked` if the caller has it already.
    """
    top = (ranking if ranking is not None else ranked(tools, text))[:2]
    if not top or top[0][0] < 2 or (len(top) > 1 and top[0][0] <= top[1][0]):
        return None
    tool = top[0][1]
    if is_question(text) and _CHANGES.search(tool.name):
        return None
    return tool


def is_question(text: str) -> bool:
    """Phrased as a question: a question word first, or a question mark."""
    first = next(iter(_WORD.findall(text.lower())), "")
    return first in _QUESTION or text.rstrip().endswith("?")
