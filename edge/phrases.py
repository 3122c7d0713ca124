"""The edge's fixed phrases in other languages than English, by the English phrase's role.

The English phrases live with the code that says them (``edge.pipeline.turn.Phrases``, the tool
loop's); this catalogue gives the same roles in the languages the edge has voices for,
so a Mandarin turn that cannot be answered (cloud down, nothing heard) is told so in
Mandarin, from the phrase cache (``TtsService`` pre-warms these for every configured voice).
"""

from __future__ import annotations

from shared.languages import primary_subtag

# role -> phrase; roles are edge.pipeline.turn.Phrases' field names, plus ``unavailable`` for a turn in a
# language the local model lacks while the cloud is unreachable, or a local answer that failed its check.
LOCALIZED: dict[str, dict[str, str]] = {
    "zh": {
        "greeting": "你好！有什么可以帮你的吗？",
        "no_answer": "抱歉，我没听清。",
        "thinking": "请稍等。",
        "hold": "请稍等。",
        "error": "抱歉，出了点问题。",
        "unavailable": "这个我现在查不到。",
        "busy": "我现在有点忙，请稍后再问。",
        "declined": "好的，那就不做了。",
    },
}

UNAVAILABLE_EN = "Sorry, I can't answer that right now."


def localized(role: str, language: str | None, english: str) -> str:
    """The phrase for ``role`` in ``language``; ``english`` when that language has none."""
    return LOCALIZED.get(primary_subtag(language), {}).get(role, english)


def phrases_in(language: str | None) -> list[str]:
    """Every catalogued phrase of ``language`` (what the TTS cache pre-warms for its voice)."""
    return list(LOCALIZED.get(primary_subtag(language), {}).values())
