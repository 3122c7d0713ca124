"""One conversational turn, stage by stage, and the one place that makes sure it ends well.

    TurnStart ─► understanding ─► deciding ─► answering ─► speaking ─► TurnEnded
    (speech/      transcript,      policy,      AnswerSource  sentences,
     wake/text)   stt message      Route        (text stream) TTS, playback

Speaking starts with the decision (:mod:`edge.pipeline.planned`): deciding and answering run as the
first text of the answer it plays, so its hold phrase covers a slow decision as well.

Before the stages, admission control (:mod:`edge.admission`) may shed a speech or text
turn while the edge is full: the cached busy phrase and ``tts stop`` instead of an answer
(outcome ``shed``), or mark it ``over_capacity`` for the policy (which escalates it).

A turn is one asyncio task (the session's): cancelling it (barge-in, abort, a new
turn, disconnect) cancels every stage at once, and the speaking stage still sends
its ``tts stop``. Whatever fails inside a turn (ASR, the local model crashing or
stalling, the cloud, a tool, TTS, a bug) is handled here once: one ``TurnFailed``
event (so one log line and one count), the cached apology, ``tts stop``, and the
session goes on. The stages are passed in (built by :mod:`edge.engine`), so this
module depends on no model, transport or stage implementation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Protocol

import numpy as np

from edge.admission import AdmissionControl, Verdict
from edge.pipeline.deadline import DeadlinedAnswer
from edge.pipeline.errors import AnswerShed, as_stage_error
from edge.pipeline.planned import NothingToSay, PlannedAnswer
from edge.pipeline.events import Outcome, TurnEnded, TurnFailed, TurnShed, TurnStarted
from edge.pipeline.observers import LogObserver, MetricsObserver, Observer, TurnEvents
from edge.pipeline.ports import AnswerSource, DeviceOutput
from edge.phrases import localized
from shared.languages import answer_instruction
from shared.log import log_event, monotonic_ms, turn_id_var

if TYPE_CHECKING:
    from edge.mcp import McpClient

log = logging.getLogger("edge.turn")

APOLOGY_TIMEOUT_S = 2.5  # the apology (a cached phrase) and its tts stop go out within 3 s of a failure


@dataclass
class TurnStart:
    """What starts a turn: the end of an utterance (with its running ASR job), a wake word, or text."""

    turn_id: str
    session_id: str
    device_id: str
    kind: Literal["speech", "wake", "text"]
    pcm16k: np.ndarray | None = None
    transcript: Awaitable[Any] | None = None  # the listening stage's ASR job (speech turns)
    speculative: bool = False  # that job was started at the pause, before the end of speech
    silence_ms: float = 0.0  # the silence the VAD waited before ending the utterance (shorter when ended early)
    text: str | None = None
    speech_end_ms: float = 0.0
    language: str = ""  # the device's default (topology override, else its OTA Accept-Language); ASR beats it
    history: list[dict] = field(default_factory=list)  # the conversation's window, oldest first
    mcp: "McpClient | None" = None
    pending: Any = None  # a tool call the previous turn asked about (shared.tool_decision.PendingCall)
    over_capacity: bool = False  # set by admission: the edge was past its limits (a policy feature)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]


@dataclass
class TurnResult:
    user_text: str
    reply_text: str
    answered_by: str  # edge | cloud | cache | none
    timings_ms: dict[str, float]
    outcome: Outcome = "ok"
    reason: str = ""
    pending: Any = None  # this turn asked "Set the light to blue?": the call waits for the next turn's yes
    lead_in: str = ""  # a cached phrase said before the answer ("One moment."): not part of the conversation

    @property
    def answer_text(self) -> str:
        """What the conversation remembers as the reply: the spoken text without its lead-in."""
        if self.lead_in and self.reply_text.startswith(self.lead_in):
            return self.reply_text[len(self.lead_in):].lstrip()
        return self.reply_text


@dataclass(frozen=True)
class Phrases:
    """Fixed phrases the edge speaks itself; pre-warmed in the TTS cache, so they cost no synthesis."""

    greeting: str = "Hello! How can I help you?"
    no_answer: str = "Sorry, I didn't catch that."
    thinking: str = "One moment, let me think."
    hold: str = "One moment."  # a local answer slow to start (its model busy with other devices' answers)
    error: str = "Sorry, something went wrong."
    declined: str = "Okay, I won't."  # a "no" to a tool confirmation question
    busy: str = "I'm busy, one moment, please ask again."  # admission shed the turn (one clause: one cached clip)

    def said_in(self, role: str, language: str) -> str:
        """The phrase for ``role`` ("error", "no_answer", ...) in ``language`` (edge.phrases), else in English."""
        return localized(role, language, getattr(self, role))


def turn_messages(system_prompt: str, history: list[dict], user_text: str) -> list[dict]:
    """What the model (local or cloud) is asked: the system prompt, the conversation's window, the request."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + history + [{"role": "user", "content": user_text}]


# ---------------------------------------------------------------- the stages, as the turn sees them
class Heard(Protocol):
    text: str
    language: str


class RouteLike(Protocol):
    source: str
    reason: str
    pending: Any


class UnderstandingStage(Protocol):
    async def run(self, start: TurnStart, out: DeviceOutput, events: TurnEvents) -> Heard: ...


class DecidingStage(Protocol):
    async def run(self, start: TurnStart, heard: Heard, messages: list[dict], events: TurnEvents) -> RouteLike: ...


class AnsweringStage(Protocol):
    def source(self, route: Any, start: TurnStart) -> AnswerSource: ...


class SpeakingStage(Protocol):
    async def run(self, answer: AnswerSource, out: DeviceOutput, events: TurnEvents, language: str = "") -> str: ...

    async def say(self, text: str, out: DeviceOutput, events: TurnEvents, answered_by: str = "cache",
                  language: str = "") -> str: ...

    async def close(self, out: DeviceOutput, events: TurnEvents) -> None: ...


class TurnPipeline:
    """Runs turns through the stages; one per engine, shared by every session."""

    def __init__(self, understanding: UnderstandingStage, deciding: DecidingStage, answering: AnsweringStage,
                 speaking: SpeakingStage, phrases: Phrases, greeting: Callable[[str], AnswerSource],
                 system_prompt: str = "", observers: Callable[[TurnStart], list[Observer]] = lambda start: [],
                 admission: AdmissionControl | None = None, answer_deadline_s: float = 30.0):
        self.understanding = understanding
        self.deciding = deciding
        self.answering = answering
        self.speaking = speaking
        self.phrases = phrases
        self.greeting = greeting
        self.system_prompt = system_prompt
        self.observers = observers
        self.admission = admission  # None: every turn is admitted
        self.answer_deadline_s = answer_deadline_s  # edge.session.answer_deadline_s (edge.pipeline.deadline)
        self.active = 0  # turns running now (a policy feature; metrics have their own gauge)

    def messages(self, start: TurnStart, heard: Heard) -> list[dict]:
        """The model's conversation: the system prompt asking for an answer in the turn's language, the
        history window, the user's words (the cloud gets the same, so its model answers in that language too)."""
        system = " ".join(p for p in (self.system_prompt, answer_instruction(heard.language)) if p)
        return turn_messages(system, start.history, heard.text)

    async def run(self, start: TurnStart, out: DeviceOutput) -> TurnResult:
        """Run one turn to its end; never raises except CancelledError (the turn was stopped)."""
        turn_id_var.set(start.turn_id)
        events = TurnEvents(start.turn_id, [])
        events.observers = [MetricsObserver(), LogObserver(events.timings_ms), *self.observers(start)]
        origin_ms = start.speech_end_ms or monotonic_ms()
        events.emit(TurnStarted(kind=start.kind, origin_ms=origin_ms, silence_ms=start.silence_ms))
        result = TurnResult("", "", "none", {}, "ok")
        answer: AnswerSource | None = None
        # Decided before this turn counts as active; a greeting is a cached phrase: always served.
        admission = self.admission.decide(start.transcript) if start.kind != "wake" and self.admission else None
        language = start.language  # until the transcript says otherwise (the apology's language)
        self.active += 1
        try:
            if admission is not None and admission.verdict is Verdict.BUSY:
                await self._shed(start, out, events, admission.limit, admission.reason, result)
                return result
            start.over_capacity = admission is not None and admission.verdict is Verdict.ESCALATE

            async def understand() -> Heard:
                nonlocal language
                heard = await self.understanding.run(start, out, events)
                result.user_text, language = heard.text, heard.language or language
                return heard

            if start.kind == "wake":
                await understand()
                answer = self.greeting(language)
            else:
                async def plan(planned: PlannedAnswer) -> AnswerSource:
                    heard = await understand()
                    planned.understood(language)
                    if not heard.text:  # silence or noise: nothing to answer (nothing said unless the hold was)
                        result.outcome = "empty"
                        return NothingToSay()
                    route = await self.deciding.run(start, heard, self.messages(start, heard), events)
                    result.pending = route.pending
                    return self.answering.source(route, start)

                answer = DeadlinedAnswer(PlannedAnswer(plan), origin_ms / 1000 + self.answer_deadline_s,
                                         self.answer_deadline_s)
            result.reason = answer.reason
            result.reply_text = await self.speaking.run(answer, out, events, language)
            result.lead_in = getattr(answer, "lead_in_said", "")
            return result
        except asyncio.CancelledError as stop:
            result.outcome = "cancelled"
            result.reason = str(stop.args[0]) if stop.args else "cancelled"  # barge-in, abort, new turn, disconnect
            raise
        except Exception as exc:  # the one owner of a failed turn
            if out.closed:  # the device went away mid-turn: nobody to answer, nothing of ours failed
                result.outcome, result.reason = "cancelled", "device disconnected"
                return result
            err = as_stage_error(exc)
            if isinstance(err, AnswerShed):  # no room after all: the honest busy phrase, not the apology
                events.emit(TurnShed(limit=err.limit, reason=str(err)))
                result.outcome, result.reason = "shed", f"edge full: {err}"
                await self._apologize(out, events, language, "busy")
                return result
            result.outcome = "error"
            events.emit(TurnFailed(stage=err.stage, code=err.code, detail=str(err), error=exc))
            await self._apologize(out, events, language)
            return result
        finally:
            self.active -= 1
            if answer is not None:  # both may change while streaming (a fallback, a replaced answer)
                result.answered_by, result.reason = answer.answered_by, answer.reason or result.reason
            result.timings_ms = events.timings_ms()
            events.emit(TurnEnded(outcome=result.outcome, answered_by=result.answered_by, reason=result.reason,
                                  user_text=result.user_text, reply_text=result.reply_text))

    async def _shed(self, start: TurnStart, out: DeviceOutput, events: TurnEvents, limit: str, reason: str,
                    result: TurnResult) -> None:
        """The busy phrase (cached) and ``tts stop`` at once; the turn's queued ASR job is dropped."""
        if start.transcript is not None and hasattr(start.transcript, "cancel"):
            start.transcript.cancel()  # still waiting in the ASR queue: skipped (one already running finishes)
        events.emit(TurnShed(limit=limit, reason=reason))
        result.outcome, result.reason, result.answered_by = "shed", f"edge full: {reason}", "cache"
        result.reply_text = await self.speaking.say(self.phrases.said_in("busy", start.language), out, events,
                                                    language=start.language)

    async def _apologize(self, out: DeviceOutput, events: TurnEvents, language: str, phrase: str = "error") -> None:
        """The cached apology (or ``phrase``) in the turn's language, bounded in time; speaking sends tts stop even
        if this fails."""
        if out.closed:
            return
        try:
            async with asyncio.timeout(APOLOGY_TIMEOUT_S):
                await self.speaking.say(self.phrases.said_in(phrase, language), out, events, language=language)
        except Exception as exc:  # noqa: BLE001 - nothing more to try: the device gets its tts stop below
            log_event(log, "apology failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
        finally:
            await self.speaking.close(out, events)  # a session the failed answer left open, if still open
