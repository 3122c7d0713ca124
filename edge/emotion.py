"""The face the device shows for an answer: the firmware's ``llm`` message ``{"emotion", "text": emoji}``.

The firmware knows a fixed set of emotion names (xiaozhi-esp32 ``emoji_collection``); anything else
shows its default face. A model that starts its answer with an emoji picks the face itself; otherwise
a small keyword map guesses one, and a plain answer gets the neutral face.
Emoji never reach the TTS: ``strip_emoji`` removes them before synthesis.
"""

from __future__ import annotations

import regex

# Emotion names the firmware knows, each with the emoji the xiaozhi servers send for it.
EMOTIONS: dict[str, str] = {
    "neutral": "😶",
    "happy": "🙂",
    "laughing": "😆",
    "funny": "😂",
    "sad": "😔",
    "angry": "😠",
    "crying": "😭",
    "loving": "😍",
    "embarrassed": "😳",
    "surprised": "😲",
    "shocked": "😱",
    "thinking": "🤔",
    "winking": "😉",
    "cool": "😎",
    "relaxed": "😌",
    "delicious": "🤤",
    "kissy": "😘",
    "confident": "😏",
    "sleepy": "😴",
    "silly": "😜",
    "confused": "🙄",
}

DEFAULT: tuple[str, str] = ("neutral", "🙂")

# Emoji a model commonly writes, beyond the canonical ones above, folded onto the firmware's names.
_EMOJI_ALIASES: dict[str, str] = {
    "😀": "happy", "😃": "happy", "😄": "happy", "😊": "happy", "☺": "happy", "👍": "happy", "🎉": "happy",
    "😁": "laughing", "🤣": "funny", "😅": "embarrassed", "😢": "sad", "😞": "sad", "🙁": "sad", "☹": "sad",
    "😡": "angry", "🤬": "angry", "🥰": "loving", "❤": "loving", "💕": "loving", "😮": "surprised",
    "😯": "surprised", "🤯": "shocked", "😨": "shocked", "🧐": "thinking", "😋": "delicious", "😗": "kissy",
    "😚": "kissy", "💪": "confident", "🥱": "sleepy", "😝": "silly", "🤪": "silly", "😛": "silly",
    "😕": "confused", "🤨": "confused", "😐": "neutral", "🥲": "sad", "😇": "relaxed", "😴": "sleepy",
}
_BY_EMOJI: dict[str, str] = {**_EMOJI_ALIASES, **{e: name for name, e in EMOTIONS.items()}}

# Words that suggest a face when the model wrote no emoji; first match in this order wins.
_KEYWORDS: list[tuple[str, tuple[str, ...]]] = [
    ("crying", ("heartbroken", "devastated")),
    ("sad", ("sorry", "sad", "unfortunately", "condolences", "miss you", "抱歉", "难过", "遗憾")),
    ("angry", ("angry", "furious", "annoyed", "生气")),
    ("laughing", ("haha", "lol", "hehe", "哈哈")),
    ("funny", ("funny", "joke", "hilarious", "好笑")),
    ("shocked", ("shocking", "oh no", "terrible", "天哪")),
    ("surprised", ("wow", "amazing", "incredible", "really?", "哇")),
    ("loving", ("love", "adore", "喜欢", "爱")),
    ("delicious", ("delicious", "tasty", "yummy", "好吃")),
    ("sleepy", ("sleepy", "good night", "tired", "晚安", "困")),
    ("thinking", ("let me think", "hmm", "i think", "想想")),
    ("confused", ("confused", "not sure", "don't understand", "不明白")),
    ("happy", ("great", "glad", "happy", "congratulations", "hello", "hi!", "welcome", "开心", "高兴", "你好")),
]

_EMOJI_PART = r"\p{Extended_Pictographic}\p{Emoji_Modifier}\p{Regional_Indicator}\uFE0F\u200D\u20E3"
_EMOJI_RUN = regex.compile(f"[{_EMOJI_PART}]+")
_LEADING = regex.compile(r"^\s*(\p{Extended_Pictographic})")
_WORD_CHARS = regex.compile(r"[a-z]")


def strip_emoji(text: str) -> str:
    """``text`` without emoji (and their modifiers / joiners), spaces collapsed where they were."""
    return regex.sub(r"[ \t]{2,}", " ", _EMOJI_RUN.sub("", text)).strip()


def pick_emotion(text: str) -> tuple[str, str]:
    """(firmware emotion name, emoji) for an answer: its leading emoji, else keywords, else neutral."""
    m = _LEADING.match(text or "")
    if m:
        name = _BY_EMOJI.get(m.group(1))
        if name:
            return name, EMOTIONS[name]
    low = (text or "").lower()
    for name, words in _KEYWORDS:
        for w in words:
            if _has_word(low, w):
                return name, EMOTIONS[name]
    return DEFAULT


def _has_word(text: str, word: str) -> bool:
    """Latin keywords match whole words only ("hi" not in "this"); CJK ones as substrings."""
    if not _WORD_CHARS.search(word):
        return word in text
    return regex.search(rf"(?<![a-z]){regex.escape(word)}(?![a-z])", text) is not None
