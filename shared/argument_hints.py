"""Arguments that the words of a request already determine: colours, numbers, extremes, relative changes.

A model of SmolLM2's size cannot map "red" to ``{"r": 255, "g": 0, "b": 0}``,
misreads "fifty" and has no idea what "a bit louder" means; a table and a
number parser can, in microseconds. Used by the grammar strategy
(shared.grammar_tools) before it asks the model for arguments; whatever the
words do not settle still goes to the model, and every number is clamped to the
tool's schema range (:func:`clamp_arguments`) and validated before the call.

For a tool with one numeric property (volume, brightness):

- a number in digits or words, percentages included: "35 percent", "sixty";
- extremes: "max", "full", "all the way up" -> the schema maximum; "min",
  "mute", "silence", "all the way down" -> the minimum;
- relative changes: "a bit louder", "turn it down", "brighter by 20": the
  current value (``state``, what the device reported, e.g. from
  ``self.get_device_status``) plus or minus a step (10; "a lot" 25; "by N" N).
  When the device reported nothing the current value is taken as the middle of
  the schema range (so "a bit louder" -> 60 on 0-100): a documented default.

A calculator's one string property ``expression`` takes the arithmetic the words
say (shared.spoken_math: "subtract 17 from 50" -> "50 - 17").

A string property with named options (a JSON-schema ``enum``, or options in
backticks in the tool description as the firmware writes them: "`light` or
`dark`") takes the one option the request names.

Hand-rolled on purpose: the vocabulary is two dozen colour names, the English
number words up to the hundreds and a few dozen direction words; no dependency
is worth that (numbers in words: shared.spoken_math). English only.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from shared.spoken_math import spoken_expression, spoken_numbers, words_to_digits
from shared.tool_calling import ToolDef

__all__ = ["argument_hints", "clamp_arguments", "spoken_numbers", "COLOURS"]

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

_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


STEP = 10  # "a bit louder": +10 on the schema's scale
BIG_STEP = 25  # "a lot louder"
_UP = frozenset("louder higher brighter up increase raise more boost".split())
_DOWN = frozenset("quieter softer lower dimmer darker down decrease reduce less".split())
_BIG = re.compile(r"\b(a lot|much|way)\b")
_BY = re.compile(r"\bby\s+(\S+(?:\s+\S+)?)")
_MAX = re.compile(r"\b(max|maximum|full|fullest|highest|all the way up|as (?:loud|bright|high) as (?:possible|it (?:goes|gets|can go)))\b")
_MIN = re.compile(r"\b(min|minimum|lowest|mute|silence|silent|all the way down|as (?:quiet|low|dim) as possible)\b")
_PERCENT = re.compile(r"\b(percent|per cent)\b|%")
_BACKTICKED = re.compile(r"`([^`\s]+)`")


def _range(schema: Mapping[str, Any]) -> tuple[float | None, float | None]:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    return (lo if isinstance(lo, (int, float)) else None), (hi if isinstance(hi, (int, float)) else None)


def _clamp(value: float, schema: Mapping[str, Any]) -> int | float:
    lo, hi = _range(schema)
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return int(round(value)) if schema.get("type") == "integer" else value


def clamp_arguments(tool: ToolDef, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with every number inside its property's schema range ("volume 150" -> 100)."""
    props = tool.parameters.get("properties") or {}
    out = dict(args)
    for name, value in args.items():
        schema = props.get(name)
        if isinstance(schema, dict) and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and schema.get("type") in ("integer", "number"):
            out[name] = _clamp(value, schema)
    return out


def _number(name: str, schema: Mapping[str, Any], text: str, state: Mapping[str, Any] | None) -> float | None:
    """The value a request gives one numeric property, or None when its words do not settle it."""
    lo, hi = _range(schema)
    words = set(_TOKEN.findall(text))
    direction = 1 if words & _UP else -1 if words & _DOWN else 0
    by = _BY.search(text)
    if direction and by:  # "louder by 20", "turn it down by ten"
        step = spoken_numbers(by.group(1))
        if len(step) == 1:
            return _relative(name, schema, state, direction * float(step[0]))
    numbers = spoken_numbers(text)
    if len(numbers) == 1:
        value = float(numbers[0])
        if _PERCENT.search(text) and hi is not None and hi != 100:  # "50 percent" of a 0-255 scale
            value = (lo or 0) + value / 100 * (hi - (lo or 0))
        return value
    if numbers:
        return None  # "from 20 to 30": the model decides
    if _MAX.search(text) and hi is not None:
        return hi
    if _MIN.search(text) and lo is not None:
        return lo
    if direction:
        return _relative(name, schema, state, direction * (BIG_STEP if _BIG.search(text) else STEP))
    return None


def _relative(name: str, schema: Mapping[str, Any], state: Mapping[str, Any] | None, delta: float) -> float:
    current = (state or {}).get(name)
    if not isinstance(current, (int, float)) or isinstance(current, bool):
        lo, hi = _range(schema)
        current = ((lo or 0) + hi) / 2 if hi is not None else (lo or 0)  # nothing reported: the middle
    return float(current) + delta


def _option(name: str, schema: Mapping[str, Any], description: str, text: str) -> str | None:
    options = schema.get("enum") if isinstance(schema.get("enum"), list) else _BACKTICKED.findall(description)
    named = [o for o in options if isinstance(o, str) and re.search(rf"\b{re.escape(o.lower())}\b", text)]
    return named[0] if len(named) == 1 else None


def argument_hints(tool: ToolDef, text: str, state: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Complete arguments for ``tool`` read off ``text``, or None when the words do not settle them.

    ``state``: the device's current values by property name (``{"volume": 70}``), for relative changes.
    """
    props = tool.parameters.get("properties") or {}
    lowered = text.lower()
    if {"r", "g", "b"} <= set(props) and len(props) == 3:
        channels = dict(_CHANNELS.findall(words_to_digits(lowered)))  # "red two fifty-five" is 255
        if len(channels) == 3:  # "red 100 green 50 blue 0"
            return clamp_arguments(tool, {"r": int(channels["red"]), "g": int(channels["green"]),
                                          "b": int(channels["blue"])})
        named = _COLOUR.search(lowered)
        if named and not channels:
            return dict(zip("rgb", COLOURS[named.group(1)]))
        return None
    if len(props) == 1:
        (name, schema), = props.items()
        if not isinstance(schema, dict):
            return None
        if schema.get("type") in ("integer", "number"):
            value = _number(name, schema, lowered.replace("-", " "), state)
            if value is None or (schema["type"] == "integer" and not float(value).is_integer()
                                 and _range(schema) == (None, None)):
                return None
            return {name: _clamp(value, schema)}
        if schema.get("type") == "string" and name == "expression":  # a calculator: the words are the sum
            expression = spoken_expression(text)
            return {name: expression} if expression is not None else None
        if schema.get("type") == "string":
            option = _option(name, schema, tool.description or "", lowered)
            return {name: option} if option is not None else None
    return None
