"""Cut streamed LLM text into sentences for TTS, as early as is safe.

Speech starts when the first sentence is synthesized, so the splitter hands out a
sentence the moment it is known to be complete, and the very first chunk may end
at a comma once it is long enough. A '.' only ends a sentence when whitespace
follows it, which keeps "3.5", "example.com" and "e.g." whole while tokens still
stream in; known abbreviations and initials never end one. Fragments shorter than
``min_chars`` are merged into the next sentence (one clip instead of two tiny ones),
and text with no boundary is cut at a space or clause mark once it reaches ``max_chars`` (the first
piece: ``first_max_chars``, as its synthesis is what the device waits for).

Chinese has no spaces: 。！？ end a sentence, and so do ASCII ``.!?`` right after a
CJK character (models and Whisper write both); a long clause is cut after ，、；：
(``clause_chars``), so a Mandarin answer that strings clauses together with commas
still reaches the voice in pieces. Every length is a *weight* in which a CJK
character counts twice, about what it takes to say compared with a Latin letter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENDS = ".!?…"
_CJK_ENDS = "。！？"
_CLOSERS = "\"')]}”’»」』）"
_COMMAS = ",;:"
_CJK_COMMAS = "，、：；"  # clause marks: a long Chinese clause is cut after one

# Lower-cased words that are followed by '.' without ending a sentence.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs mt ft no approx dept est fig inc ltd co corp jan feb mar apr jun jul aug "
    "sep sept oct nov dec mon tue wed thu fri sat sun e.g i.e a.m p.m u.s u.k u.n cf al".split()
)
_WORD_BEFORE = re.compile(r"([^\s\"'(\[{“‘]+)$")
# CJK punctuation, kana, ideographs, hangul, full-width forms ("。" is as wide as "好")
_WIDE_CHARS = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef"
_WIDE = re.compile(f"[{_WIDE_CHARS}]")
# where a forced cut may fall: a Chinese clause mark, or , ; : before a space ("1,000" stays whole) or after CJK
_CLAUSE_MARK = re.compile(f"[{_CJK_COMMAS}]|[{_COMMAS}](?=\\s)|(?<=[{_WIDE_CHARS}])[{_COMMAS}]")


@dataclass
class SplitterConfig:
    """Lengths are weights (:func:`_weight`: a CJK character counts twice)."""

    min_chars: int = 8  # shorter pieces are merged into the next sentence
    first_clause_chars: int = 24  # the first chunk may end at a comma once this long (0: never)
    clause_chars: int = 60  # a piece this long may end at a Chinese clause mark (，、；： or , after CJK)
    max_chars: int = 200  # no boundary by then: cut at the last space or clause mark
    # the same for the first piece, much sooner (0: max_chars): its synthesis is all the device waits for, and a
    # 100-character opening sentence takes ~1 s of Piper on a busy core before anything is heard
    first_max_chars: int = 48


class SentenceSplitter:
    """Feed LLM deltas, get whole sentences back; ``flush()`` at the end of the answer for the rest."""

    def __init__(self, config: SplitterConfig | None = None):
        self.config = config or SplitterConfig()
        self._buf = ""
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while (piece := self._next()) is not None:
            out.append(piece)
        return out

    def flush(self) -> list[str]:
        out = self.feed("")
        rest = self._buf.strip()
        self._buf = ""
        if rest:
            out.append(rest)
        return out

    def _next(self) -> str | None:
        """Take one complete sentence off the front of the buffer, if there is one."""
        buf, cfg = self._buf, self.config
        first_cut = cfg.first_max_chars if self._emitted == 0 else 0  # the first piece's own limit (0: none)
        n = len(buf)
        i = 0
        while i < n:
            ch = buf[i]
            end: int | None = None
            if ch == "\n":
                end = i + 1
            elif ch in _CJK_ENDS:
                end = _skip(buf, i + 1, _CJK_ENDS + _ENDS + _CLOSERS)
            elif ch in _ENDS:
                j = _skip(buf, i + 1, _ENDS)
                j = _skip(buf, j, _CLOSERS)
                if j >= n:
                    return None  # can't tell yet ("3." may become "3.5"): wait for the next token
                if _after_wide(buf, i) or (
                        buf[j].isspace() and not (ch == "." and j == i + 1 and _is_abbreviation(buf[:i]))):
                    end = j
                i = j - 1
            elif ch in _COMMAS or ch in _CJK_COMMAS:
                wide = ch in _CJK_COMMAS or _after_wide(buf, i)
                first = self._emitted == 0 and cfg.first_clause_chars > 0
                limit = cfg.first_clause_chars if first else cfg.clause_chars if wide else 0
                if limit:
                    if not wide and i + 1 >= n:
                        return None  # "1," may become "1,000"
                    if (wide or buf[i + 1].isspace()) and _weight(buf[: i + 1]) >= limit:
                        end = i + 1
            if end is not None and (weight := _weight(buf[:end])) >= cfg.min_chars:
                if first_cut and weight > first_cut:  # a long first sentence that came whole
                    return self._cut(_forced_cut(buf, cfg.min_chars, first_cut))
                return self._cut(end)
            i += 1
        if _weight(buf) >= (first_cut or cfg.max_chars):
            return self._cut(_forced_cut(buf, cfg.min_chars, first_cut or cfg.max_chars))
        return None

    def _cut(self, end: int) -> str:
        piece, self._buf = self._buf[:end].strip(), self._buf[end:].lstrip()
        self._emitted += 1
        return piece


def ends_sentence(piece: str) -> bool:
    """Does this piece (as the splitter hands it out) end a whole sentence, not a clause or a forced cut?"""
    last = piece.rstrip().rstrip(_CLOSERS)[-1:]
    return bool(last) and last in _ENDS + _CJK_ENDS


def _weight(text: str) -> int:
    """Length for the min/first-clause thresholds; a CJK character says about as much as two Latin ones."""
    text = text.strip()
    return len(text) + len(_WIDE.findall(text))


def _after_wide(text: str, i: int) -> bool:
    """Is ``text[i]`` right after a CJK character (where ASCII punctuation needs no space to count)?"""
    return i > 0 and _WIDE.match(text[i - 1]) is not None


def _forced_cut(buf: str, min_chars: int, max_chars: int) -> int:
    """Where to cut a piece with no boundary that reached ``max_chars``: after the last clause mark or at
    the last space within the limit, else at the limit itself."""
    limit, weight = 0, 0
    for k, ch in enumerate(buf):
        weight += 2 if _WIDE.match(ch) else 1
        if weight > max_chars:
            break
        limit = k + 1
    space = buf.rfind(" ", min_chars, limit)
    marks = [m.end() for m in _CLAUSE_MARK.finditer(buf, min_chars, limit)]
    best = max(space, marks[-1] if marks else -1)
    return best if best > 0 else max(limit, 1)


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _is_abbreviation(before: str) -> bool:
    """Does the word right before a '.' make it an abbreviation ("Mr", "e.g", "U.S", an initial)?"""
    m = _WORD_BEFORE.search(before)
    if not m:
        return False
    word = m.group(1)
    if word.lower() in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha() and word.isupper():
        return True  # an initial: "J. R. R. Tolkien"
    parts = word.split(".")
    return len(parts) > 1 and all(len(p) == 1 and p.isalpha() for p in parts)
