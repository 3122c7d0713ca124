"""Language codes for a turn: normalizing them, a device's default, and the answer instruction.

A turn's language is an ISO 639 primary subtag ("en", "zh"): what Whisper detects, what
the policy's ``languages`` rules and ``local_language`` feature test, what picks the voice.
A device's default comes from a per-device override in topology.yaml
(``devices.languages``, longest id prefix) or else the ``Accept-Language`` header of its
OTA request (the firmware sends its configured UI language, e.g. ``zh-CN``).
"""

from __future__ import annotations

import re

from shared.topology import Topology

_SUBTAG = re.compile(r"^[A-Za-z]{2,3}$")

# What the LLM is told so that it answers in the user's language (appended to the system prompt).
_ANSWER_IN = {
    "en": "Answer in English.",
    "zh": "请用简体中文回答，一两句话，口语化，不要列表。",  # Simplified Chinese, one or two spoken sentences
}


def primary_subtag(code: str | None) -> str:
    """"zh-CN" / "zh_Hans" / "EN" -> "zh" / "zh" / "en"; "" for nothing usable."""
    head = re.split(r"[-_]", (code or "").strip(), maxsplit=1)[0]
    return head.lower() if _SUBTAG.match(head) else ""


def accept_language(header: str | None) -> str:
    """The preferred language of an HTTP ``Accept-Language`` header ("zh-CN,zh;q=0.9,en;q=0.8" -> "zh")."""
    best, best_q = "", -1.0
    for part in (header or "").split(","):
        tag, _, params = part.strip().partition(";")
        lang = primary_subtag(tag)
        if not lang:
            continue  # "*", empty, malformed
        q = 1.0
        m = re.search(r"q\s*=\s*([0-9.]+)", params)
        if m:
            try:
                q = float(m.group(1))
            except ValueError:
                continue
        if q > best_q:
            best, best_q = lang, q
    return best if best_q > 0 else ""


def device_language(topology: Topology, device_id: str, accept_language_header: str | None = None,
                    default: str = "en") -> str:
    """A device's default language: its topology override, else its Accept-Language, else ``default``."""
    matches = [d for d in topology.devices.languages if device_id.startswith(d.prefix)]
    if matches:
        return max(matches, key=lambda d: len(d.prefix)).language
    return accept_language(accept_language_header) or default


def answer_instruction(language: str) -> str:
    """The system-prompt sentence asking for an answer in ``language`` ("" when none is known)."""
    return _ANSWER_IN.get(primary_subtag(language), "")
