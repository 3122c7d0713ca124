"""Early end of turn: may the edge answer at the first pause instead of after the full silence window?

The VAD ends an utterance after ``min_silence_ms`` (480 ms) of silence, and that wait is inside
every latency figure. At the first short pause (``SpeechPaused``, 160 ms) the speculative
transcript already exists; when it reads as a finished sentence or question, committing then
saves ~320 ms. When it does not ("What is the capital of", "Turn on the"), the edge keeps
waiting. Whisper punctuates almost everything it hears, so the final punctuation alone proves
little: the last word decides (a sentence does not end on an article, a preposition or a
conjunction). ``scripts/eval_end_of_turn.py`` measures false cut-offs on the load set.

Wiring (edge/stages/listening.py): once the speculative job of a pause is done, its transcript is
judged. ``complete`` -> the turn commits at ``edge.vad.early_commit_ms`` of silence (not before the
transcript exists); ``unfinished`` (it ends on a word a sentence does not end on) -> the silence
window grows to ``edge.vad.unfinished_silence_ms`` when it ends on an article, a conjunction or a
possessive, so a speaker searching for the next word is not cut off; ``unsure`` (no final punctuation, too short, not English) -> ``min_silence_ms`` as always.
"""

from __future__ import annotations

import re

# Words an English sentence rarely ends on: articles, prepositions, conjunctions, auxiliaries,
# possessives, subject pronouns. A transcript ending on one was most likely cut mid-thought.
# (Particles that do end sentences stay out: "turn it up", "lights on", "what time is it".)
DANGLING = frozenset("""
a an the and or but nor so because if when while than that which whose whether
to of in at by for with from into onto about as like between through during without within
against toward towards upon via per
my your his her its our their these those some every each no
is are was were be been being am does have has had will would shall should can could may might must
i he she we they
just really very also
plus minus
""".split())
# The words a finished sentence practically never ends on: a transcript ending on one waits longer. Auxiliaries,
# pronouns and prepositions do end questions ("What does a spider have?", "Where are you from?"): not these.
UNFINISHED = frozenset("a an the and or but nor because if than my your our their plus minus".split())
# The word rules are English ones and only English was measured (eval_end_of_turn.py); "" = the ASR did not
# say (an English-only model). A Chinese transcript's final punctuation alone is not trusted for an early end.
JUDGED_LANGUAGES = ("en", "")
_FINAL = re.compile(r"[.?!。？！]\s*$")
_WORD = re.compile(r"[\w']+")
_CJK = re.compile("[\u4e00-\u9fff]")
MIN_WORDS = 3  # "What time?" and "How many?" are too often the start of more (measured)


def verdict(text: str, language: str = "") -> str:
    """``complete``, ``unfinished`` or ``unsure``: what a speculative transcript says about the turn's end."""
    if language.split("-")[0] not in JUDGED_LANGUAGES or _CJK.search(text):
        return "unsure"
    if looks_complete(text):
        return "complete"
    words = _WORD.findall(text.lower())
    if words and (words[-1] in UNFINISHED or text.rstrip().endswith(("...", ","))):
        return "unfinished"
    return "unsure"


def looks_complete(text: str, min_words: int = MIN_WORDS) -> bool:
    """True when ``text`` (a speculative transcript) reads as a finished sentence or question."""
    text = text.strip()
    if not text or not _FINAL.search(text):
        return False
    if _CJK.search(text):  # Chinese: the final punctuation is all we have
        return len(text) >= 2
    words = _WORD.findall(text.lower())
    if len(words) < min_words:
        return False
    if text.endswith("..."):  # trailing off
        return False
    return words[-1] not in DANGLING
