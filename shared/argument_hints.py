"""Arguments that the words of a request already determine: colours for RGB tools, a single spoken number.

A model of SmolLM2's size cannot map "red" to ``{"r": 255, "g": 0, "b": 0}`` and
misreads "fifty"; a table and a number parser can, in microseconds. Used by the
grammar strategy (shared.grammar_tools) before it asks the model for arguments;
whatever the words do not settle still goes to the model, and every argument is
validated against the tool's schema before the call either way.

Hand-rolled on purpose: the vocabulary is two dozen colour names and the English
number words up to the hundreds; no dependency is worth that. English only.
"""

from __future__ import annotations

import re
from typing import Any

from shared.tool_calling import ToolDef

# Colours a lamp can show, as a person names them (full saturation where that reads right on an LED).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
    "warm white": (255, 180, 100), "yellow": (255, 255, 0), "orange": (255, 165, 0), "purple": (128, 0, 128),
    "violet": (143, 0, 255), "pink": (255, 105, 180), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
    "turquoise": (64, 224, 208), "teal": (0, 128, 128), "gold": (255, 215, 0), "lime": (50, 205, 50),
    "navy": (0, 0, 128), "indigo": (75, 0, 130), "amber": (255, 191, 0), "black": (0, 0, 0),
}
_COLOUR = re.compile(r"\b(" + "|".join(sorted(map(re.escape, COLOURS), key=len, reverse=True)) + r")\b")
_CHANNELS = re.compile(r"\b(red|green|blue)\s*(?:to|at|=|:)?\s*(\d{1,3})\b")

_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                      "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split(), 0)
         if w != "_"}
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


def spoken_numbers(text: str) -> list[float | int]:
    """Numbers in digits or English words: "set it to 30" -> [30], "fifty five" -> [55], "a hundred" -> [100]."""
    out: list[float | int] = []
    current: int | None = None
    for token in _TOKEN.findall(text.lower().replace("-", " ")):
        if token[0].isdigit():
            if current is not None:
                out.append(current)
                current = None
            out.append(float(token) if "." in token else int(token))
        elif token in _TENS:
            if current is not None and current % 100:
                out.append(current)
                current = None
            current = (current or 0) + _TENS[token]
        elif token in _UNITS and token != "zero" or (token == "zero" and current is None):
            if current is not None and current % 10 and current % 100:
                out.append(current)
                current = None
            current = (current or 0) + _UNITS[token]
        elif token == "hundred":
            current = (current or 1) * 100
        elif token == "and" and current is not None and current % 100 == 0:
            continue  # "one hundred and five"
        elif current is not None:
            out.append(current)
            current = None
    if current is not None:
        out.append(current)
    return out


def argument_hints(tool: ToolDef, text: str) -> dict[str, Any] | None:
    """Complete arguments for ``tool`` read off ``text``, or None when the words do not settle them."""
    props = tool.parameters.get("properties") or {}
    lowered = text.lower()
    if {"r", "g", "b"} <= set(props) and len(props) == 3:
        channels = dict(_CHANNELS.findall(lowered))
        if len(channels) == 3:  # "red 100 green 50 blue 0"
            return {"r": int(channels["red"]), "g": int(channels["green"]), "b": int(channels["blue"])}
        named = _COLOUR.search(lowered)
        if named and not channels:
            return dict(zip("rgb", COLOURS[named.group(1)]))
        return None
    if len(props) == 1:
        (name, schema), = props.items()
        if schema.get("type") in ("integer", "number"):
            numbers = spoken_numbers(lowered)
            if len(numbers) == 1 and (schema["type"] == "number" or float(numbers[0]).is_integer()):
                return {name: int(numbers[0]) if schema["type"] == "integer" else numbers[0]}
    return None
