"""A cheap check on an answer before it is spoken: right language, and something useful said.

Small local models fail in recognisable ways: they open in another language
("Bonjour, monsieur." to an English question), say nothing, only greet, or
repeat the question. Those answers are worse than an honest "I can't look that
up right now" or the cloud's answer, so the answering stage checks the text
(the first sentence as soon as it is complete, or the whole answer) and
replaces a failing one. The check is microseconds of string work: writing
systems and common-word lists (:mod:`shared.text_language`), no model.

    verdict = check_answer("What is the capital of Japan?", "Bonjour, monsieur. Tokyo.")
    verdict.problem     -> "foreign_language"
    verdict.kept        -> "Tokyo."   (the sentences in the user's language)
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

from shared.text_language import UNDETERMINED, base_language, guess_language, sentences

Problem = Literal["empty", "foreign_language", "greeting_only", "echo"]

# Openings and fillers that carry no answer on their own (English and Mandarin).
_FILLER = re.compile(
    r"\b(?:hello|hi|hey|greetings|good (?:morning|afternoon|evening|day)|well|so|sure|okay|ok|of course|certainly"
    r"|absolutely|great question|good question|thanks? (?:you )?for (?:asking|your question)|i see|hmm+|oh"
    r"|dear|sir|madam|friend|there|how (?:can|may) i (?:help|assist) you(?: today)?"
    r"|what can i do for you(?: today)?|i'?m (?:here|happy|glad) to help|let me (?:see|think)|xiaozhi)\b"
    r"|你好|您好|嗨|好的|当然|嗯|请问有什么可以帮你的|有什么可以帮你的"
    r"|[\W_]+",
    re.IGNORECASE)
_GREETING_REQUEST = re.compile(
    r"^\W*(?:hello|hi|hey|good (?:morning|afternoon|evening|night)|greetings|yo|hiya|howdy|你好|您好|嗨|早上好|晚上好)\b",
    re.IGNORECASE)
_PUNCT = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class AnswerVerdict:
    """What the check found; ``problem`` is None for an answer fit to speak."""

    problem: Problem | None
    detail: str = ""
    language: str = UNDETERMINED  # the language the answer should be in
    kept: str = ""  # the answer without sentences in another language ("" if none remain)

    @property
    def ok(self) -> bool:
        return self.problem is None


def expected_language(question: str, heard_language: str | None = None) -> str:
    """The language to answer in: what the ASR heard if it says, else the question's own words (default en)."""
    lang = base_language(heard_language)
    if lang != UNDETERMINED:
        return lang
    guessed = guess_language(question)
    return "en" if guessed == UNDETERMINED else guessed


def _normalized(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _is_echo(question: str, answer: str) -> bool:
    q, a = _normalized(question), _normalized(answer)
    if not q or not a:
        return False
    return a == q or (len(a) >= len(q) * 0.6 and difflib.SequenceMatcher(None, q, a).ratio() >= 0.85)


def check_answer(question: str, answer: str, language: str | None = None) -> AnswerVerdict:
    """Judge ``answer`` (whole, or its first sentences) to ``question``.

    ``language`` is the user's language (an ASR code such as "en" or "zh-CN"); without it
    the question's words decide. Problems, in the order tested: ``empty`` (nothing
    speakable), ``foreign_language`` (a sentence in another language; ``kept`` holds the
    rest), ``echo`` (the question said back), ``greeting_only`` (only openings and fillers
    to a question that was not itself a greeting).
    """
    lang = expected_language(question, language)
    parts = sentences(answer)
    if not any(ch.isalnum() for ch in answer or ""):
        return AnswerVerdict("empty", "nothing speakable", lang)
    foreign = [(s, g) for s in parts if (g := guess_language(s)) not in (lang, UNDETERMINED)]
    kept = " ".join(s for s in parts if guess_language(s) in (lang, UNDETERMINED))
    if foreign:
        sentence, got = foreign[0]
        return AnswerVerdict("foreign_language", f"{got} sentence {sentence[:60]!r} in a {lang} answer", lang, kept)
    greeting = bool(_GREETING_REQUEST.search(question))  # "Hello there." -> "Hello there!" is a fine answer
    if not greeting and _is_echo(question, answer):
        return AnswerVerdict("echo", "the answer repeats the question", lang, kept)
    if not greeting and not _FILLER.sub("", answer).strip():
        return AnswerVerdict("greeting_only", "only openings and fillers", lang, kept)
    return AnswerVerdict(None, "", lang, kept)
