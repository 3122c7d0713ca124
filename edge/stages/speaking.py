"""Speaking: answer text -> sentences -> TTS clips -> paced playback; the only sender of ``tts start/stop``.

Three concurrent steps joined by bounded queues, so each works while the next is busy:
the first sentence is synthesized while the model still writes the rest, and the
next sentence is synthesized while the current one plays. ``tts stop`` goes out
from ``finally``: exactly once per ``tts start``, also when the turn is cancelled
(barge-in, abort). When an answer fails after its audio began, the session stays
open for the apology (one start, one stop: the firmware returns to listening at
the stop, so a second start would find it listening).

No long silence: when a model's answer has not reached the device ``hold_after_s`` after the end of
speech (the transcript slow on a saturated CPU, the model queued behind other devices' answers, or
its first sentence slow to synthesize), the cached "One moment." plays first (once the words are
known, never sooner than ``HOLD_MIN_WAIT_S`` after that, so an answer about to come is not preceded by
it). Speaking starts with the turn, so this covers the transcription too. It is not part of the
returned text: the conversation remembers the answer. While every slot of the local model is taken
(``local_busy``: the edge is loaded, a local answer queues and every first sentence synthesizes slowly), the wait
only delays the phrase: it plays ``PACED_HOLD_S`` after the words were known, or after the answer's own lead-in window
(an escalation's "let me think", which then comes first); a route still being decided ``PLANNING_HOLD_S`` after
the words were known is waiting for a model too.

A model's answer ends after ``max_sentences[answered_by]`` whole sentences (``edge.llm.max_sentences``,
``edge.escalation.max_sentences``): the stream is closed there, so the model stops writing what would
not be said, and the device hears a short answer instead of a small model's ramble.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Callable, Mapping, Protocol

from edge import metrics
from edge.device.protocol import Llm, Tts
from edge.emotion import pick_emotion
from edge.pipeline.errors import TtsFailed
from edge.pipeline.events import FirstToken, SentenceSpoken, SpeechStarted, SpeechStopped, TurnStarted
from edge.pipeline.observers import TurnEvents
from edge.pipeline.planned import NothingToSay, PlannedAnswer
from edge.phrases import localized
from edge.pipeline.ports import AnswerSource, DeviceOutput
from edge.sentences import SentenceSplitter, ends_sentence
from edge.stages.answering.phrase import PhraseAnswer
from edge.tts import SpeechClip, normalize_text

_END = object()  # queue sentinel
SYNTH_AHEAD = 2  # sentences synthesized ahead of playback
# An idle local model's first sentence is synthesized within this (quiet box: ~0.15 s), and an escalated answer's
# own lead-in ("One moment, let me think.", edge.escalation.lead_in_ms 300 ms) is playing by then.
HOLD_MIN_WAIT_S = 0.5
# The hold phrase's wait on a loaded edge (and how often the route of a planned answer is looked at while waiting):
# a fixed phrase or a cached lead-in is ready by then, a model's sentence is not.
PACED_HOLD_S = 0.15
# The hold phrase's wait while the route is still being decided: past this the decision needs a model (a tool call's
# arguments; the policy and the router take tens of milliseconds), and the answer's own words come after it.
PLANNING_HOLD_S = 0.3
# A later sentence is asked of the (shared, earliest-deadline-first) TTS pool for this long before the audio
# ahead of it runs out: about what one sentence takes to synthesize on a busy CPU.
SYNTH_MARGIN_S = 1.0


class Synthesizer(Protocol):
    async def speak(self, text: str, language: str | None = None, needed_at: float | None = None) -> SpeechClip: ...


class Speaking:
    def __init__(self, tts: Synthesizer, no_answer: str, hold: str = "One moment.", hold_after_s: float = 0.0,
                 max_sentences: Mapping[str, int] | None = None, local_busy: Callable[[], bool] = lambda: False):
        self.tts = tts
        self.no_answer = no_answer
        self.hold = hold  # said when a model's answer is late (0 s: never)
        self.hold_after_s = hold_after_s
        self.max_sentences = dict(max_sentences or {})  # answered_by -> whole sentences said at most (0: all)
        self.local_busy = local_busy  # every slot of the local model is taken

    async def run(self, answer: AnswerSource, out: DeviceOutput, events: TurnEvents, language: str = "") -> str:
        """Speak ``answer`` in ``language`` (it picks each sentence's voice); returns the text spoken.
        An answer error propagates with the tts session still open when audio was already playing: the
        caller (the turn's failure owner) speaks the apology in it, then ``close`` (or the apology) stops it."""
        return await _Utterance(self, answer, out, events, language).run()

    async def close(self, out: DeviceOutput, events: TurnEvents) -> None:
        """``tts stop`` for a session a failed answer left open (when its apology could not be spoken)."""
        if out.tts_open and not out.closed:
            out.clear()
            with contextlib.suppress(ConnectionError):
                await out.send(Tts("stop"))
            events.emit(SpeechStopped())

    async def say(self, text: str, out: DeviceOutput, events: TurnEvents, answered_by: str = "cache",
                  language: str = "") -> str:
        """Speak one fixed (cached) phrase, e.g. the apology (no model: no FirstToken)."""
        return await _Utterance(self, PhraseAnswer(text, answered_by=answered_by), out, events, language,
                                model=False).run()


class _Utterance:
    """One answer being spoken (the state of one ``Speaking.run``)."""

    def __init__(self, owner: Speaking, answer: AnswerSource, out: DeviceOutput, events: TurnEvents,
                 language: str = "", model: bool = True):
        self.tts = owner.tts
        self.language = language  # the device's until a planned answer's transcript says otherwise
        self.answer = answer
        self.out = out
        self.events = events
        self.sentences: asyncio.Queue = asyncio.Queue()
        self.clips: asyncio.Queue = asyncio.Queue(maxsize=SYNTH_AHEAD)
        self.spoken: list[str] = []
        self.started = False
        self.playing_since: float | None = None  # when the first clip began to play
        self.ahead_s = 0.0  # seconds of audio synthesized for this answer so far (the hold phrase included)
        self.told_by = ""  # answered_by in the last llm message
        self.owner = owner
        self.model = model  # the text comes from a model (its first delta is the turn's FirstToken)
        self.whole_sentences = 0  # queued so far that end a sentence (not a clause)
        self.hold = localized("hold", language, owner.hold) if model and owner.hold_after_s else ""
        started = events.first(TurnStarted)
        self.began = time.monotonic()
        origin_s = started.origin_ms / 1000 if started else self.began
        self.hold_at = origin_s + owner.hold_after_s
        self.loaded = False  # every slot of the local model was taken while this answer waited for its first clip

    async def run(self) -> str:
        failed = False
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._split())
                tg.create_task(self._synthesize())
                tg.create_task(self._play())
        except BaseExceptionGroup as group:
            failed = True
            raise group.exceptions[0] from None  # one failure is the turn's failure (the others were cancelled)
        finally:
            if failed and self.started and not self.out.closed:
                self.out.clear()  # the apology follows in this same tts session; ``close`` ends it
            else:
                await self._stop()
        return " ".join(self.spoken)

    async def _split(self) -> None:
        splitter = SentenceSplitter()
        count = 0
        capped = False
        try:
            async with contextlib.aclosing(self.answer.stream()) as deltas:  # closed at the cap too
                async for delta in deltas:
                    if self.model and not count and not self.events.first(FirstToken):
                        self.events.emit(FirstToken(source=self.answer.answered_by))
                    for s in splitter.feed(delta):
                        count += 1
                        await self.sentences.put(s)
                        if capped := self._enough(s):
                            break
                    if capped:
                        metrics.ANSWERS_CAPPED.labels(answered_by=self.answer.answered_by).inc()
                        break
        finally:
            await self.answer.aclose()
        for s in [] if capped else splitter.flush():
            count += 1
            await self.sentences.put(s)
        if not count and not isinstance(_unwrapped(self.answer)[-1], NothingToSay):
            # the model said nothing: never leave the device waiting in silence
            await self.sentences.put(localized("no_answer", self._language(), self.owner.no_answer))
        await self.sentences.put(_END)

    def _enough(self, piece: str) -> bool:
        """Has the answer, with ``piece``, said as many whole sentences as its source may?"""
        limit = 0 if isinstance(_unwrapped(self.answer)[-1], PhraseAnswer) else self.owner.max_sentences.get(
            self.answer.answered_by, 0)  # a fixed phrase is never cut
        if limit and ends_sentence(piece):
            self.whole_sentences += 1
        return bool(limit) and self.whole_sentences >= limit

    async def _synthesize(self) -> None:
        while (sentence := await self.sentences.get()) is not _END:
            if normalize_text(sentence):
                try:
                    clip = await self.tts.speak(sentence, self._language(), self._needed_at())
                except Exception as exc:
                    raise TtsFailed("tts_failed", f"{type(exc).__name__}: {exc}") from exc
                self.ahead_s += clip.duration_ms / 1000
                await self.clips.put((sentence, clip, self.answer.answered_by))
        await self.clips.put(_END)

    def _needed_at(self) -> float | None:
        """When the next sentence's audio is needed: now for the first, else once the audio ahead of it has
        played (less the margin it takes to synthesize). The TTS pool serves the soonest first, so a new
        turn's first sentence does not wait behind sentences other devices will hear only seconds later."""
        if not self.ahead_s:
            return None
        return (self.playing_since or time.monotonic()) + self.ahead_s - SYNTH_MARGIN_S

    async def _next_clip(self):
        """The next clip; before the first one, the hold phrase if the answer is late."""
        if not self.hold or self.started:
            return await self.clips.get()
        while (wait := self._hold_at() - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(min(wait, PACED_HOLD_S)):  # the route may become known meanwhile
                    return await self.clips.get()
            except TimeoutError:
                pass
        try:
            clip = await self.tts.speak(self.hold, self.language)  # pre-warmed: from the cache
        except Exception as exc:
            raise TtsFailed("tts_failed", f"{type(exc).__name__}: {exc}") from exc
        self.ahead_s += clip.duration_ms / 1000
        await self._play_one(self.hold, clip, self.answer.answered_by, remembered=False)
        return await self.clips.get()

    def _planned(self) -> PlannedAnswer | None:
        return next((a for a in _unwrapped(self.answer) if isinstance(a, PlannedAnswer)), None)

    def _language(self) -> str:
        """The transcript's language once known (a planned answer's), else the device's."""
        planned = self._planned()
        return (planned.language if planned is not None else "") or self.language

    def _hold_at(self) -> float:
        """When the hold phrase plays: ``hold_at`` while the words are still being transcribed; once they are
        known, on a loaded edge ``PACED_HOLD_S`` after that (after the answer's own lead-in window, if it has
        one), ``PLANNING_HOLD_S`` after it while still deciding, else ``hold_at`` (and not sooner than
        ``HOLD_MIN_WAIT_S`` after the words were known: an answer about to come is not preceded by it)."""
        chain = _unwrapped(self.answer)  # looked at again as the route becomes known
        planned = self._planned()
        if planned is not None and planned.understood_at is None:
            return self.hold_at  # transcribing (a saturated CPU): the silence window alone
        known = planned.understood_at if planned is not None else self.began
        self.loaded = self.loaded or self.owner.local_busy()
        if self.loaded:
            lead_in_s = max((getattr(a, "lead_in_s", 0.0) for a in chain if getattr(a, "lead_in", None)), default=0.0)
            return known + lead_in_s + PACED_HOLD_S
        hold_at = max(self.hold_at, known + HOLD_MIN_WAIT_S)
        if isinstance(chain[-1], PlannedAnswer):  # still deciding
            return min(hold_at, known + PLANNING_HOLD_S)
        return hold_at

    async def _play(self) -> None:
        while (item := await self._next_clip()) is not _END:
            await self._play_one(*item)
        await self.out.drain()

    async def _play_one(self, sentence: str, clip: SpeechClip, answered_by: str, remembered: bool = True) -> None:
        out = self.out
        if answered_by != self.told_by:  # the first sentence, or a cloud answer that fell back locally
            emotion, emoji = pick_emotion(sentence)
            await out.send(Llm(emotion, emoji, answered_by))
            self.told_by = answered_by
        if not self.started:
            self.started = True
            self.playing_since = time.monotonic()
            if not out.tts_open:  # else: the apology, in the session a failed answer left open
                await out.send(Tts("start"))
                self.events.emit(SpeechStarted())
        text = normalize_text(sentence)
        await out.send(Tts("sentence_start", text))
        if remembered:
            self.spoken.append(text)
        first = bool(clip.frames) and not any(isinstance(e, SentenceSpoken) and e.first_audio
                                              for e in self.events.events)
        self.events.emit(SentenceSpoken(text=text, cached=clip.cached, first_audio=first))
        if clip.frames:
            await out.send_audio(clip.frames)

    async def _stop(self) -> None:
        """``tts stop`` for our ``tts start`` (and the schedule dropped), whatever happened."""
        if not self.started:
            return
        self.out.clear()
        if not self.out.closed:
            with contextlib.suppress(ConnectionError):
                await self.out.send(Tts("stop"))
        self.events.emit(SpeechStopped())


def _unwrapped(answer: AnswerSource) -> list[AnswerSource]:
    """The answer and what it wraps (the turn's deadline and plan, the local answer's check), outermost first;
    a planned answer ends the list until its route is known."""
    chain = [answer]
    while (inner := getattr(chain[-1], "answer", None) or getattr(chain[-1], "inner", None)) is not None:
        chain.append(inner)
    return chain
