"""Fixtures: edge.

``fake_engine``: ``edge.engine.EdgeEngine``'s interface over the real turn pipeline
(listening, understanding, deciding, answering, speaking) with deterministic stand-in
models (energy VAD, a transcript of the audio's length, a two-sentence LLM, a TTS of
real Opus frames of a tone), so protocol and session tests need no models. ``edge_server``: runs ``edge.server.create_app`` on a free port.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from edge.opus import encode_pcm
from edge.tokens import TokenIssuer
from shared.topology import DEFAULT_PATH, Topology, parse_topology

# edge.vad, edge.pipeline and edge.server are imported where used: this plugin loads for every
# test of the suite, which must not depend on the edge pipeline's modules importing.

ASR_RATE = 16000


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_topology(edge: dict | None = None) -> Topology:
    """The repository's topology.yaml with ``edge`` settings merged in (environment ignored)."""
    doc = yaml.safe_load(DEFAULT_PATH.read_text())
    _merge(doc["edge"], copy.deepcopy(edge or {}))
    return parse_topology(doc, "tests", environ={})


def tone(ms: int, rate: int = ASR_RATE, freq: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


# ---------------------------------------------------------------- stand-in engine
class EnergyVadStream:
    """Speech = 60 ms chunks louder than ``rms``; same events as edge.vad, shorter windows."""

    def __init__(self, rms: float = 500.0, start_ms: float = 120, pause_ms: float = 180, end_ms: float = 360):
        self.rms, self.start_ms, self.pause_ms, self.end_ms = rms, start_ms, pause_ms, end_ms
        self._reset()

    def _reset(self) -> None:
        self.in_speech = False
        self.started = self.paused = False
        self.speech_ms = self.silence_ms = 0.0
        self.buf: list[np.ndarray] = []

    async def feed(self, pcm16k: np.ndarray) -> list[Any]:
        from edge.vad import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted

        events: list[Any] = []
        ms = pcm16k.size * 1000 / ASR_RATE
        loud = pcm16k.size > 0 and float(np.sqrt(np.mean(pcm16k.astype(np.float64) ** 2))) > self.rms
        if loud:
            self.in_speech = True
            self.buf.append(pcm16k)
            self.speech_ms += ms
            self.silence_ms = 0.0
            if self.paused:
                self.paused = False
                events.append(SpeechResumed())
            if not self.started and self.speech_ms >= self.start_ms:
                self.started = True
                events.append(SpeechStarted())
        elif self.in_speech:
            self.buf.append(pcm16k)
            self.silence_ms += ms
            if not self.paused and self.silence_ms >= self.pause_ms:
                self.paused = True
                self.paused_pcm = np.concatenate(self.buf)
                events.append(SpeechPaused(self.paused_pcm))
            if self.silence_ms >= self.end_ms:
                # as edge.vad guarantees: the utterance ends on the samples it paused on
                events.append(SpeechEnded(self.paused_pcm if self.paused else np.concatenate(self.buf)))
                self._reset()
        return events


class SentSocket:
    """What PacedOutput writes to, in place of a WebSocket: keeps each sentence_start with its monotonic time."""

    closed = False

    def __init__(self) -> None:
        self.sentence_starts: list[tuple[float, str]] = []

    async def send_str(self, text: str) -> None:
        msg = json.loads(text)
        if msg.get("state") == "sentence_start":
            self.sentence_starts.append((time.monotonic(), msg["text"]))

    async def send_bytes(self, _data: bytes) -> None:
        pass


async def speak(speaking: Any, answer: Any, audio: Any) -> tuple[str, list[tuple[float, str]]]:
    """Run the speaking stage on ``answer`` alone: the text it returns, and each sentence it started with the
    seconds since it began (the turn's end of speech is now)."""
    from edge.device.output import PacedOutput
    from edge.pipeline.events import TurnStarted
    from edge.pipeline.observers import TurnEvents

    events = TurnEvents("t", [])
    events.emit(TurnStarted(kind="voice", origin_ms=time.monotonic() * 1000))
    socket = SentSocket()
    out = PacedOutput(socket, 1, audio.downstream_sample_rate, audio.frame_ms, lead_ms=240)
    began = time.monotonic()
    text = await speaking.run(answer, out, events, "en")
    return text, [(at - began, sentence) for at, sentence in socket.sentence_starts]


@functools.lru_cache(maxsize=16)
def _reply_frames(ms: int, rate: int, frame_ms: int) -> tuple[bytes, ...]:
    """The stand-in answer, encoded once per shape (keeps Opus encoding off the benchmarked loop)."""
    return tuple(encode_pcm(tone(ms, rate), rate, frame_ms))


class FakeVad:
    def new_stream(self) -> EnergyVadStream:
        return EnergyVadStream()


class FakeAsr:
    """Hears "heard N ms"; ``jobs`` lists every transcription submitted (a reused speculative job counts once)."""

    max_batch = 4
    queue_depth = 0  # (admission control reads it) jobs are done at once

    def __init__(self) -> None:
        self.jobs: list[int] = []

    def should_speculate(self) -> bool:
        return True

    def expected_wait_s(self) -> float:
        return 0.0

    def submit(self, pcm16k: np.ndarray) -> asyncio.Future:
        from edge.asr import Transcript

        self.jobs.append(pcm16k.size)
        job = asyncio.get_running_loop().create_future()
        job.set_result(Transcript(f"heard {round(pcm16k.size * 1000 / ASR_RATE)} ms", "en", pcm16k.size / ASR_RATE, 0.0))
        return job


class FakeLlm:
    """The local model: answers two sentences (or fails, as a crashed server does); keeps what it was asked."""

    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine
        self.seen: list[list[dict]] = []

    async def stream(self, messages, *, tools=None, max_tokens, temperature, logprobs=False):
        from shared.chat import ChatDelta, ChatError

        self.seen.append(messages)
        if self.engine.llm_gate is not None:
            await self.engine.llm_gate.wait()  # a busy local model: the turn stays in flight until the test opens it
        if self.engine.fail_turns:
            raise ChatError("stand-in: cannot connect to http://127.0.0.1:9/v1")
        if self.engine.stall_turns:
            await asyncio.Event().wait()  # a hung server: no token, ever
        yield ChatDelta(text="First sentence. ")
        while self.engine.trickle_s:  # an overloaded server: a word now and then, never a stall, never done
            await asyncio.sleep(self.engine.trickle_s)
            yield ChatDelta(text="and ")
        if self.engine.break_midway:
            await asyncio.sleep(0.3)  # the first sentence is playing when the model's connection drops
            raise ChatError("stand-in: connection reset mid-answer")
        yield ChatDelta(text="Second sentence.")
        try:
            for n in range(self.engine.ramble):  # a small model that goes on and on
                yield ChatDelta(text=f" Sentence {n + 3}.")
        except GeneratorExit:  # the edge closed the stream: the model stops writing
            self.engine.llm_closed_early += 1
            raise
        yield ChatDelta(finish_reason="stop")


class FakeTts:
    """Every sentence is half of ``engine.reply_ms`` of tone (real Opus frames); phrases count as cached."""

    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine
        self.fail = False
        self.asked: list[tuple[str, float | None]] = []  # (sentence, needed_at) in the order asked

    async def speak(self, text: str, language: str | None = None, needed_at: float | None = None):
        from edge.tts import SpeechClip, TtsError

        self.asked.append((text, needed_at))
        if self.fail and not text.startswith("Sorry"):
            raise TtsError("stand-in: the voice is gone")
        audio = self.engine.audio
        frames = list(_reply_frames(self.engine.reply_ms // 2, audio.downstream_sample_rate, audio.frame_ms))
        return SpeechClip(text, frames, audio.downstream_sample_rate, audio.frame_ms, len(frames) * audio.frame_ms,
                          text.startswith("Sorry"), "tone")


@dataclass
class FakeEngine:
    """``EdgeEngine``'s interface over the real turn pipeline, with stand-in models (energy VAD, a
    transcript of the audio's length, a two-sentence LLM, a tone TTS)."""

    reply_ms: int = 1200
    fail_turns: bool = False  # the local model refuses connections
    stall_turns: bool = False  # the local model never sends a token
    break_midway: bool = False  # the model fails after its first sentence (audio already playing)
    trickle_s: float = 0.0  # after its first sentence the model writes a word every trickle_s seconds, forever
    ramble: int = 0  # after its two sentences the model writes this many more
    llm_closed_early: int = 0  # answers whose stream the edge closed while the model still wrote more
    llm_gate: asyncio.Event | None = None  # set: the local model waits for it before answering
    edge: dict = field(default_factory=dict)  # topology overrides for the pipeline (e.g. llm.stall_timeout_ms)
    ready: bool = True
    vad: FakeVad = field(default_factory=FakeVad)
    asr: FakeAsr = field(default_factory=FakeAsr)
    requests: list[Any] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    finished: int = 0
    cancelled: int = 0
    turn_started: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        from edge.admission import AdmissionControl, CountedChat, InflightCounter
        from edge.cloud_link import CloudLink
        from edge.engine import build_pipeline
        from edge.pipeline.turn import Phrases
        from edge.stages.answering.local import LocalHealth

        topology = make_topology(self.edge)
        settings = topology.edge
        self.audio = settings.audio
        self.llm = FakeLlm(self)
        self.tts = FakeTts(self)
        self.cloud = CloudLink()  # empty (every turn local) until a test attaches a cloud
        self.sessions: set = set()
        self.llm_inflight = InflightCounter()
        self.llm_health = LocalHealth()  # as EdgeEngine's: how the local model's calls ended
        # as EdgeEngine wires it: the edge's capacity and edge.admission, live turns, sessions, local generations
        self.admission = AdmissionControl.for_edge(
            topology.site().edges[0].capacity, settings.admission, self.asr, lambda: self.pipeline.active,
            lambda: len(self.sessions), self.llm_inflight,
            lambda: self.cloud.healthy(self.cloud.policy().policy.settings.model_class),
        ) if settings.admission.enabled else None
        self.pipeline = build_pipeline(self.tts, CountedChat(self.llm, self.llm_inflight), settings, Phrases(),
                                       self.cloud, admission=self.admission, health=self.llm_health,
                                       local_busy=lambda: self.llm_inflight.value >= 2)  # two slots

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False

    def health(self) -> dict:
        return {"ready": self.ready, "site": "fake"}

    def listening(self, mode: str):
        from edge.stages.listening import Listening

        return Listening(self.vad, self.asr, mode)

    async def run_turn(self, start, out):
        self.requests.append(start)
        self.turn_started.set()
        try:
            result = await self.pipeline.run(start, out)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.results.append(result)
        self.finished += result.outcome == "ok"
        return result


@pytest.fixture
def fake_engine() -> FakeEngine:
    """A FakeEngine; ``FakeEngine(edge={...})`` for other pipeline settings."""
    return FakeEngine()


# ---------------------------------------------------------------- server on a free port
@dataclass
class EdgeHandle:
    base_url: str
    app: web.Application
    topology: Topology
    engine: Any

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/xiaozhi/v1/"

    @property
    def ota_url(self) -> str:
        return self.base_url + "/xiaozhi/ota/"

    @property
    def sessions(self) -> set:
        from edge.server import SESSIONS_KEY

        return self.app[SESSIONS_KEY]

    def token(self, device_id: str, **kw) -> str:
        return TokenIssuer.from_topology(self.topology).issue(device_id, **kw)


TEST_EDGE = {"session": {"hello_timeout_s": 2, "idle_timeout_s": 30}}


@pytest_asyncio.fixture
async def edge_server() -> Callable[..., Awaitable[EdgeHandle]]:
    """``await edge_server(engine, edge={...overrides}, choose_edge=None)`` -> EdgeHandle (stopped at teardown)."""
    from edge.server import create_app

    runners: list[web.AppRunner] = []

    async def start(engine: Any, edge: dict | None = None, choose_edge=None) -> EdgeHandle:
        topo = make_topology(_merge(copy.deepcopy(TEST_EDGE), edge or {}))
        app = create_app(topo, None, engine, choose_edge=choose_edge)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return EdgeHandle(f"http://127.0.0.1:{port}", app, topo, engine)

    yield start
    for runner in runners:
        await runner.cleanup()
