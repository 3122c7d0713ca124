"""Which language a short piece of text is in: writing system first, then common words.

Voice answers are one or two short sentences, too short for statistical language
identifiers (they call "Hi there!" Dutch or Tagalog). What matters here is cheap and
predictable: a Chinese answer to a Chinese question, and no French opening such as
"Bonjour, monsieur." before an English answer. So: the script decides between
Chinese, Japanese, Korean, Cyrillic and Latin text; within Latin text, small lists
of very common words (and a few letters only one language uses) decide between
English, French, Spanish, German, Italian and Portuguese. Another language needs two
common words, or one greeting such as "Bonjour"; text with no deciding evidence
(a name, a number) is ``und`` (undetermined), which never counts as a leak.
"""

from __future__ import annotations

import re
from collections import Counter

UNDETERMINED = "und"

# Frequent function words and the openings small models invent. Words two languages share
# ("la", "de", "no", "a") are left out: they would not decide anything.
_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset("""the is are was were be been am i you he she it we they this that these those what which who
        whom whose where when why how of and or but to in on at for with from by about as into than then there here
        yes not can could will would should shall may might must do does did have has had my your his her its our
        their me him us them an some any many much more most very just also only one two three hello hi hey thanks
        thank welcome sorry please okay sure good great well fine day time let let's i'm it's that's you're
        there's don't can't""".split()),
    "fr": frozenset("""le les est et je tu il elle nous vous ils elles un une des du au aux ce cette ces mon ma mes
        ton ta tes son sa ses notre votre leur qui que quoi où quand comment pourquoi avec pour dans sur pas oui
        merci bonjour bonsoir salut monsieur madame mademoiselle c'est suis sont êtes avez avons être avoir fait
        très bien aussi mais ou donc car voici voilà neige il y alors d'accord s'il plaît""".split()),
    "es": frozenset("""el los las es está están y yo tú usted él ella nosotros ellos un una unos unas del al este
        esta estos mi mis tu tus su sus qué quién dónde cuándo cómo por para con sin sí gracias hola señor señora
        buenos buenas días noches muy bien también pero soy eres somos hay""".split()),
    "de": frozenset("""der das und ist ich du er sie wir ihr ein eine einen dem den des nicht ja danke bitte hallo
        guten morgen tag abend nacht herr frau mit für auf ist sind bin bist wie was wer wo warum auch aber oder
        sehr gut""".split()),
    "it": frozenset("""il gli è e io tu lui lei noi voi loro uno una del della dei delle che chi dove quando come
        perché con per non sì grazie ciao buongiorno buonasera signore signora sono molto bene anche ma""".split()),
    "pt": frozenset("""o os as é e eu você ele ela nós eles um uma do da dos das no na nos nas que quem onde quando
        como porque com para não sim obrigado obrigada olá senhor senhora bom dia muito bem também mas sou está""".split()),
}
# Greetings and forms of address a model puts in an opening: one of these settles the sentence alone.
_STRONG = frozenset("""bonjour bonsoir monsieur madame mademoiselle merci oui hola señor señora gracias danke hallo
    guten ciao grazie buongiorno buonasera signore signora olá obrigado obrigada senhor senhora""".split())
# Letters that only one of those languages uses.
_LETTERS: dict[str, str] = {"ç": "fr", "è": "fr", "ê": "fr", "à": "fr", "œ": "fr", "ñ": "es", "¿": "es", "¡": "es",
                            "ß": "de", "ä": "de", "ö": "de", "ü": "de", "ã": "pt", "õ": "pt", "ò": "it", "ì": "it"}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s*|\n+")


def _script_language(text: str) -> str | None:
    """The language a non-Latin script settles, if the text is mostly in one."""
    counts = Counter()
    for ch in text:
        o = ord(ch)
        if 0x3040 <= o <= 0x30FF:
            counts["ja"] += 1
        elif 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
            counts["ko"] += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF:
            counts["han"] += 1
        elif 0x0400 <= o <= 0x04FF:
            counts["ru"] += 1
        elif ch.isalpha():
            counts["latin"] += 1
    if not counts:
        return None
    if counts["ja"]:
        counts["ja"] += counts.pop("han", 0)  # kanji within Japanese text
    else:
        counts["zh"] = counts.pop("han", 0)
    # A Latin word or two inside Chinese text (a name, "OK") keeps it Chinese: compare per character.
    best, n = max(((k, v) for k, v in counts.items() if k != "latin"), key=lambda kv: kv[1], default=("", 0))
    return best if n and n * 3 >= counts["latin"] else None


def guess_language(text: str) -> str:
    """ISO 639-1 code of ``text`` ("en", "fr", "zh", ...) or ``und`` when nothing decides it."""
    script = _script_language(text)
    if script is not None:
        return script
    scores: Counter[str] = Counter()
    for word in _WORD.findall(text.lower()):
        for lang, words in _WORDS.items():
            if word in words:
                scores[lang] += 2 if word in _STRONG else 1
    for ch in text.lower():
        if ch in _LETTERS:
            scores[_LETTERS[ch]] += 0.5
    # One common word is not evidence enough for another language (a name's "da" or "de").
    scores = Counter({lang: n for lang, n in scores.items() if lang == "en" or n >= 2})
    if not scores:
        return UNDETERMINED
    (best, top), *rest = scores.most_common()
    if rest and rest[0][1] == top:
        return "en" if "en" in (best, rest[0][0]) else UNDETERMINED
    return best


def sentences(text: str) -> list[str]:
    """The text cut at sentence ends (and newlines); empty pieces dropped."""
    return [s.strip() for s in _SENTENCE.split(text or "") if s and s.strip()]


def sentence_languages(text: str) -> list[str]:
    """The language of each sentence, in order (``und`` where nothing decides)."""
    return [guess_language(s) for s in sentences(text)]


def base_language(code: str | None) -> str:
    """"en-US" / "zh_CN" / "EN" -> "en" / "zh"; None or "" -> "und"."""
    return re.split(r"[-_]", code, maxsplit=1)[0].lower() if code else UNDETERMINED
