"""What a request does with its tool words: orders, asks how, tells, or talks about another object.

Similarity says a request is *about* volume; it cannot say whether the user
wants this device's volume changed. Three cheap cues from the request's form
settle most of the chat that shares a tool's words (issue 14), and
shared.tool_decision combines them with the router's margin:

- **another object**: the tool word belongs to something else, named as any
  one of its kind ("the volume of a sphere", "the battery of a car"):
  ``<tool word> of a|an ...``;
- **a how-to question or a request to explain**: "how do you mute someone on a
  call?", "can you explain what volume means in physics?" ask for knowledge, not
  for an action;
- **a first-person statement**: "I'm charging my phone", "my screen time is
  way too high" tell, they do not ask; a request marker anywhere ("please",
  "can you", "I want", "I'd like", "let's") or a question makes it a request;
- **asking at all**: a real question (a question word first, or a question mark
  that is not a tag like "..., huh?"), a request marker, or a terse request
  ("battery level?", "time please"); "time flies when you're having fun, huh?"
  does not ask, and an unsure reading tool needs a request that does.

English only, like the router's lexical signals (shared.tool_intent); the words
are closed classes (pronouns, auxiliaries, request markers), not topic lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOOL_WORDS = r"volume|brightness|battery|batteries|light|lights|lamp|screen|display|colou?r|theme|time|status"
_OTHER_OBJECT = re.compile(rf"\b(?:{_TOOL_WORDS})\s+of\s+(?:a|an|any|some|every|each)\b", re.IGNORECASE)
_HOW_TO = re.compile(r"^\W*(?:so\s+|and\s+|but\s+)?how\s+(?:do|does|did|can|could|should|would|to)\b"
                     r"(?:\s+(?:i|you|we|they|one|people|someone|somebody|anyone|he|she))?", re.IGNORECASE)
_EXPLAIN = re.compile(r"\b(?:explain|define|definition of|meaning of|what does \w+(?: \w+)? mean|"
                      r"what \w+(?: \w+)? means)\b", re.IGNORECASE)
_FIRST_PERSON = re.compile(r"^\W*(?:i|i'm|im|i've|i'd|i'll|my|we|we're|we've|our|me)\b", re.IGNORECASE)
_REQUEST = re.compile(r"\b(?:please|pls|can you|could you|would you|will you|would you mind|i want|i wanna|"
                      r"i'd like|i would like|i need|i'd love|let's|let me|make it|go ahead|tell me|show me|"
                      r"give me|remind me)\b", re.IGNORECASE)
_TAG = re.compile(r",\s*(?:huh|right|eh|no|yeah|isn't it|aren't they|don't you think|you know|innit)\s*\?\s*$",
                  re.IGNORECASE)
_QUESTION_WORDS = frozenset("what what's whats how how's is are which who who's why when where do does did can could "
                            "will would should have has am".split())
_TERSE_WORDS = 3  # "battery level?", "time please": a request in few words
_CLAUSE_ORDER = re.compile(r"[,;:.!]\s*(?:so\s+|and\s+|just\s+|now\s+)?(?:turn|set|switch|put|make|change|"
                           r"dim|mute|raise|lower|crank|bring|kill|shut|flick|check|read|open|close)\b",
                           re.IGNORECASE)


@dataclass(frozen=True)
class SpeechAct:
    other_object: bool = False  # the tool word belongs to something else ("the volume of a sphere")
    how_to: bool = False  # asks how something is done, or what something means
    statement: bool = False  # first-person statement with no request in it
    asks: bool = True  # a question, a request marker or a terse request (see the module docstring)

    @property
    def orders_nothing(self) -> bool:
        return self.other_object or self.how_to or self.statement


def speech_act(text: str) -> SpeechAct:
    normalized = text.replace("’", "'").strip()
    statement = bool(_FIRST_PERSON.match(normalized)) and not normalized.endswith("?") \
        and not _REQUEST.search(normalized) and not _CLAUSE_ORDER.search(normalized)
    words = re.findall(r"[a-z']+", normalized.lower())
    question = bool(words) and words[0] in _QUESTION_WORDS or (normalized.endswith("?") and not _TAG.search(normalized))
    asks = question or bool(_REQUEST.search(normalized) or _CLAUSE_ORDER.search(normalized)) or len(words) <= _TERSE_WORDS
    return SpeechAct(other_object=bool(_OTHER_OBJECT.search(normalized)),
                     how_to=bool(_HOW_TO.match(normalized) or _EXPLAIN.search(normalized)), statement=statement,
                     asks=asks)
