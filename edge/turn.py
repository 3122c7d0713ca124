"""One conversational turn: user audio -> text -> answer text -> speech frames to the device.

The turn is a small pipeline of three concurrent stages joined by bounded queues,
so that each stage works while the next one is busy:

    answer source (LLM tokens) -> sentences -> TTS clips -> paced playback

The first sentence is synthesized while the LLM still writes the rest, and the
next sentence is synthesized while the current one plays. Cancelling the turn
(device abort, disconnect) cancels every stage at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Literal, Protocol, Sequence

import numpy as np

from edge import metrics
from edge.emotion import pick_emotion
from edge.sentences import SentenceSplitter
from edge.tts import normalize_text
from shared.log import log_event, monotonic_ms, turn_id_var

if TYPE_CHECKING:
    from edge.mcp import McpClient

log = logging.getLogger("edge.turn")

_END = object()  # queue sentinel


@dataclass
class TurnRequest:
    """What the session hands the engine when the user has finished speaking (or woke the device)."""

    turn_id: str
    session_id: str
    device_id: str
    kind: Literal["speech", "wake", "text"]
    pcm16k: np.ndarray | None = None
    text: str | None = None
    speech_end_ms: float = 0.0
    history: list[dict] = field(default_factory=list)
    mcp: "McpClient | None" = None

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]


@dataclass
class TurnResult:
    user_text: str
    reply_text: str
    answered_by: str  # edge | cloud | cache | none
    timings_ms: dict[str, float]
    reason: str = ""


class DeviceOutput(Protocol):
    """Where a turn's messages and audio go (implemented by edge.playback)."""

    sample_rate: int
    frame_ms: int

    async def send_json(self, msg: dict) -> None: ...

    async def send_audio(self, frames: Sequence[bytes]) -> None: ...

    async def drain(self) -> None: ...


@dataclass(frozen=True)
class Phrases:
    """Fixed phrases the edge speaks itself; pre-warmed in the TTS cache, so they cost no synthesis."""

    greeting: str = "Hello! How can I help you?"
    no_answer: str = "Sorry, I didn't catch that."
    thinking: str = "One moment, let me think."
    error: str = "Sorry, something went wrong."


@dataclass
class AnswerStream:
    """A source of answer text: the local LLM, the cloud, or a fixed phrase."""

    answered_by: str
    deltas: AsyncIterator[str]
    reason: str = ""


class TurnTimer:
    """Milliseconds since the end of the user's speech, per milestone (first one wins)."""

    def __init__(self, origin_ms: float):
        self.origin = origin_ms or monotonic_ms()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> float:
        if name not in self.marks:
            self.marks[name] = round(monotonic_ms() - self.origin, 1)
        return self.marks[name]


# An answer planner turns the user's text into an AnswerStream (local LLM or cloud).
AnswerPlanner = Callable[["TurnRequest", str, list[dict], "TurnTimer"], Awaitable[AnswerStream]]


class TurnRunner:
    """Runs turns with the engine's ASR, answer planner and TTS."""

    def __init__(self, asr, tts, plan_answer: AnswerPlanner, system_prompt: str, phrases: "Phrases",
                 history_turns: int = 10):
        self.asr = asr
        self.tts = tts
        self.plan_answer = plan_answer
        self.system_prompt = system_prompt
        self.phrases = phrases
        self.history_turns = history_turns

    def _messages(self, req: TurnRequest, user_text: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if self.history_turns:
            msgs += req.history[-2 * self.history_turns:]
        msgs.append({"role": "user", "content": user_text})
        return msgs

    async def run(self, req: TurnRequest, out: DeviceOutput) -> TurnResult:
        turn_id_var.set(req.turn_id)
        timer = TurnTimer(req.speech_end_ms)
        metrics.ACTIVE_TURNS.inc()
        outcome = "ok"
        result = TurnResult("", "", "none", timer.marks)
        try:
            user_text = await self._user_text(req, timer)
            result.user_text = user_text
            if not user_text:
                outcome = "empty"
                return result
            await out.send_json({"type": "stt", "text": user_text})
            timer.mark("stt")
            if req.kind == "wake":
                answer = AnswerStream("cache", _one(self.phrases.greeting), "wake word")
            else:
                answer = await self.plan_answer(req, user_text, self._messages(req, user_text), timer)
            result.answered_by, result.reason = answer.answered_by, answer.reason
            result.reply_text = await self._speak(answer, out, timer)
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:  # a broken turn must not take the session down
            outcome = "error"
            metrics.ERRORS.labels(kind=type(exc).__name__).inc()
            log.exception("turn failed")
            raise
        finally:
            metrics.ACTIVE_TURNS.dec()
            metrics.TURNS.labels(answered_by=result.answered_by, outcome=outcome).inc()
            for stage, key in (("asr", "stt"), ("llm_first_token", "llm_first_token"), ("first_audio", "first_audio")):
                if key in timer.marks:
                    metrics.STAGE_LATENCY.labels(stage=stage).observe(timer.marks[key] / 1000.0)
            log_event(log, "turn done", outcome=outcome, answered_by=result.answered_by, reason=result.reason,
                      user_text=result.user_text, reply=result.reply_text, timings_ms=timer.marks)

    async def _user_text(self, req: TurnRequest, timer: TurnTimer) -> str:
        if req.kind != "speech":
            return (req.text or "").strip()
        transcript = await self.asr.transcribe(req.pcm16k)
        return transcript.text.strip()

    async def _speak(self, answer: AnswerStream, out: DeviceOutput, timer: TurnTimer) -> str:
        """Run the sentence -> TTS -> playback stages; returns the text spoken."""
        sentences: asyncio.Queue = asyncio.Queue()
        clips: asyncio.Queue = asyncio.Queue(maxsize=2)  # synthesize at most two sentences ahead
        spoken: list[str] = []

        async def split() -> None:
            splitter = SentenceSplitter()
            count = 0
            async for delta in answer.deltas:
                timer.mark("llm_first_token")
                for s in splitter.feed(delta):
                    count += 1
                    await sentences.put(s)
            for s in splitter.flush():
                count += 1
                await sentences.put(s)
            if not count:  # the model said nothing: never leave the device waiting in silence
                await sentences.put(self.phrases.no_answer)
            await sentences.put(_END)

        async def synthesize() -> None:
            while (sentence := await sentences.get()) is not _END:
                if normalize_text(sentence):
                    await clips.put((sentence, await self.tts.speak(sentence)))
            await clips.put(_END)

        async def play() -> None:
            started = False
            while (item := await clips.get()) is not _END:
                sentence, clip = item
                if not started:
                    emotion, emoji = pick_emotion(sentence)
                    await out.send_json({"type": "llm", "emotion": emotion, "text": emoji,
                                         "answered_by": answer.answered_by})
                    await out.send_json({"type": "tts", "state": "start"})
                    started = True
                text = normalize_text(sentence)
                await out.send_json({"type": "tts", "state": "sentence_start", "text": text})
                spoken.append(text)
                if clip.frames:
                    timer.mark("first_audio")
                    await out.send_audio(clip.frames)
            if started:
                await out.drain()
                await out.send_json({"type": "tts", "state": "stop"})
                timer.mark("tts_stop")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(split())
            tg.create_task(synthesize())
            tg.create_task(play())
        return " ".join(spoken)


async def _one(text: str) -> AsyncIterator[str]:
    yield text
