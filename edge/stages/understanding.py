"""Understanding: the utterance's transcript (with its language) -> ``stt`` to the device and :class:`Transcribed`.

The turn's language is what the ASR detected (or its configured language); when it gives
none (text and wake turns, ASR backends without detection) the device's default.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from edge.asr import normalize_transcript
from edge.device.protocol import Stt
from edge.pipeline.errors import AsrError
from edge.pipeline.events import Transcribed
from edge.pipeline.observers import TurnEvents
from edge.pipeline.ports import DeviceOutput
from edge.pipeline.turn import TurnStart


@dataclass(frozen=True)
class Heard:
    text: str
    language: str = ""


class Understanding:
    """Awaits the listening stage's ASR job (never runs a second one); wake words and text arrive as text."""

    async def run(self, start: TurnStart, out: DeviceOutput, events: TurnEvents) -> Heard:
        if start.transcript is None:
            heard = Heard((start.text or "").strip(), start.language)
            hit = False
        else:
            try:
                # shielded: a cancelled turn leaves the shared job to finish (its result may be reused)
                transcript = await asyncio.shield(start.transcript)
            except Exception as exc:
                raise AsrError("asr_failed", f"{type(exc).__name__}: {exc}") from exc
            language = transcript.language or start.language
            heard = Heard(normalize_transcript(transcript.text.strip(), language), language)  # Simplified for zh
            hit = start.speculative
        if heard.text:
            await out.send(Stt(heard.text))
            events.emit(Transcribed(text=heard.text, language=heard.language, speculative_hit=hit))
        return heard
