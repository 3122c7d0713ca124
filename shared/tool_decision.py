"""What a tool turn may do with the router's decision: call, ask first, or just answer.

A voice device that acts on small talk loses its users' trust ("I love the
color blue" must not turn the lamp blue); one that reads the battery by mistake
only wastes a sentence. So the rule (issue 14) depends on what the tool does:

- reading tools (time, battery, status, calculator) run on any decision the
  router did not score as chat, clear or unsure (unsure: only in a request that
  asks something, see shared.speech_act);
- state-changing tools (volume, light, theme, reboot, anything not known to
  read) run only on a clear decision; an unsure one becomes a short yes/no
  question ("Set the light to blue?") and the call waits for the next turn's
  answer (:class:`PendingCall`, :func:`is_yes`);
- a turn the router scored as chat never calls anything;
- nor does one whose form orders nothing (shared.speech_act): a tool word that
  belongs to another object ("the volume of a sphere"), a how-to question, or a
  first-person statement with no request in it ("I'm charging my phone", "my
  laptop screen is cracked") neither reads nor asks; a state change the words do
  not name is asked only in a request the router classed as a command.

The edge's server tools (clock, calculator, the operator's HTTP lookups) read. For a
device tool, whether it reads is taken from MCP's ``annotations.readOnlyHint`` when the
tool carries it, else from its name: a name whose action word is one of
:data:`READING_VERBS` (``get_time``, ``self.battery.get_level``,
``self.get_device_status``, ``calculate``) reads; everything else is treated as
state-changing, the safe default for a device tool nobody described.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from shared.argument_hints import COLOURS
from shared.intent_router import CHAT_CLASSES as CHAT_INTENTS, RouteDecision
from shared.tool_calling import ToolDef

Effect = Literal["reads", "changes"]
Outcome = Literal["call", "confirm", "answer"]

READING_VERBS = frozenset("get read list query check calculate compute lookup search find status info describe "
                          "fetch show count measure".split())


def tool_effect(tool: ToolDef) -> Effect:
    """"reads" or "changes" (see the module docstring for the rule)."""
    if getattr(tool, "kind", None) == "server":  # the edge's own tools (clock, calculator, HTTP lookups) only read
        return "reads"
    annotations = getattr(tool, "annotations", None)
    hint = annotations.get("readOnlyHint") if isinstance(annotations, Mapping) else None
    if isinstance(hint, bool):
        return "reads" if hint else "changes"
    action = tool.name.rsplit(".", 1)[-1].lower()
    words = [w for w in re.split(r"[_\W]+", action) if w]
    if words and words[0] in READING_VERBS:
        return "reads"
    if tool.name.lower().endswith("status"):  # "self.get_device_status", "device.status"
        return "reads"
    return "changes"


@dataclass(frozen=True)
class ToolAction:
    """The outcome of one tool decision: call now, ask first (``question``), or answer without a tool."""

    outcome: Outcome
    reason: str  # chat | clear | reading tool, unsure | unsure state change | no tool chosen


def decide_action(route: RouteDecision, tool: ToolDef | None) -> ToolAction:
    """The decision rule of issue 14, as a pure function of the router's decision and the chosen tool.

    Two independent signals must agree before a device changes state without asking: the embedding
    router's clear margin and the request's words naming the tool (``route.words``), in a request that
    orders rather than asks ("how do you mute someone?" is about muting, not an order to mute).
    A reading tool runs on a clear margin, or on an unsure one when the words name it.
    """
    if route.is_chat:
        return ToolAction("answer", "chat")
    if tool is None:
        return ToolAction("answer", "no tool chosen")
    named = tool.name in route.words
    act = route.act
    if act.other_object:
        return ToolAction("answer", "the tool's word belongs to another object")
    if act.how_to or act.statement:
        return ToolAction("answer", "a how-to question" if act.how_to else "a statement, no request in it")
    if tool_effect(tool) == "reads":
        if not route.clear and not act.asks:  # "time flies when you're having fun, huh?"
            return ToolAction("answer", "reading tool, unsure and nothing is asked")
        if not route.clear and route.intent in CHAT_INTENTS:  # "the difference between weather and climate"
            return ToolAction("answer", f"reading tool, unsure and the request is {route.intent}")
        if route.clear or named:
            return ToolAction("call", "reading tool")
        return ToolAction("answer", "reading tool, unsure and not named")
    if not named and route.intent != "command":
        return ToolAction("answer", f"state change its words do not name, in a {route.intent} request")
    if route.clear and named and not route.question:
        return ToolAction("call", "clear")
    return ToolAction("confirm", "state change, unsure" if not route.clear else "state change, not ordered by name")


def _colour_name(args: Mapping[str, Any]) -> str | None:
    rgb = tuple(args.get(c) for c in "rgb")
    return next((name for name, value in COLOURS.items() if value == rgb), None)


def confirmation_question(tool: ToolDef, args: Mapping[str, Any]) -> str:
    """A short yes/no question that says what would happen: "Set the light to blue?", "Turn the light off?"."""
    parts = tool.name.removeprefix("self.").split(".")
    thing = " ".join(parts[:-1]).replace("_", " ").strip()
    action = parts[-1].split("_")
    verb, rest = action[0].lower(), " ".join(action[1:])
    the = f"the {thing}" if thing else ""
    if verb in ("turn", "switch") and rest in ("on", "off"):
        return f"{verb.capitalize()} {the or 'it'} {rest}?"
    if verb == "set" and {"r", "g", "b"} <= set(args):
        colour = _colour_name(args) or f"red {args['r']}, green {args['g']}, blue {args['b']}"
        return f"Set {the or 'the light'} to {colour}?"
    if verb == "set" and len(args) == 1:
        (value,) = args.values()
        what = " ".join(w for w in (thing, rest) if w)
        return f"Set the {what} to {value}?"
    given = ", ".join(f"{k} {v}" for k, v in args.items())
    words = " ".join(w for w in (verb.capitalize(), the, rest) if w)
    return f"{words}{f' ({given})' if given else ''}?"


_NO = frozenset("no nope nah not don't dont never cancel stop wait negative nevermind".split())
_NO_PHRASES = re.compile(r"\b(never mind|no way|leave it|forget it|not now|changed my mind)\b")
_YES = frozenset("yes yeah yep yup sure ok okay alright affirmative absolutely definitely correct please "
                 "certainly indeed right".split())
_YES_PHRASES = re.compile(r"\b(go ahead|do it|of course|please do|sounds good|go for it|that's right|why not)\b")
_WORDS = re.compile(r"[a-z']+")


def _declines(text: str) -> bool:
    return bool(set(_WORDS.findall(text)) & _NO or _NO_PHRASES.search(text))


def is_yes(answer: str) -> bool:
    """Does the follow-up turn confirm? "yes", "sure, go ahead" do; "no", "never mind", anything else does not."""
    text = answer.lower().replace("’", "'")
    if _declines(text):
        return False
    return bool(set(_WORDS.findall(text)) & _YES or _YES_PHRASES.search(text))


_REPLY_FILLER = frozenset("thanks thank you go ahead do it that's fine i said mind never way leave forget now "
                          "changed my of course sounds good for why".split())


def is_bare_reply(text: str) -> bool:
    """Only yes/no words ("yes please", "no thanks", "sure, go ahead"): a reply, never a request of its own."""
    words = set(_WORDS.findall(text.lower().replace("’", "'")))
    return bool(words & (_YES | _NO)) and words <= _YES | _NO | _REPLY_FILLER


def is_no(answer: str) -> bool:
    """A short refusal ("no", "no thanks", "never mind"): the question is answered. A longer turn that says
    no somewhere ("no, what time is it?") is a new request and is answered as one."""
    text = answer.lower().replace("’", "'")
    return _declines(text) and len(_WORDS.findall(text)) <= 4


@dataclass
class PendingCall:
    """A state-changing call waiting for the user's yes (kept by the session between two turns)."""

    tool: str
    arguments: dict[str, Any]
    question: str
    asked_at: float = field(default_factory=time.monotonic)
    ttl_s: float = 30.0  # an answer after this is a new request, not a confirmation

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) - self.asked_at > self.ttl_s

    def resolve(self, answer: str | None, now: float | None = None) -> bool:
        """True: make the call. Silence (None or empty), "no", anything unclear or a late answer: no call."""
        return bool(answer and answer.strip()) and not self.expired(now) and is_yes(answer)
