"""Capacity over a real WebSocket: past its limits the edge sheds with the cached busy phrase or escalates
(policy rule ``edge-full``, the cloud a real worker on a real nats-server), never closes a session, serves
the next turn once the load drops, counts it all, and sends booting devices to another edge.

The engine is tests/fixtures_edge.py's stand-in models behind the real session, turn pipeline and admission
control (as EdgeEngine wires them); the ASR-refusal test uses the real Whisper service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from prometheus_client import REGISTRY

from cloud.backends import BackendPool, Endpoint
from cloud.breaker import CircuitBreaker
from cloud.worker import Worker
from edge.admission import ota_chooser_with_load
from edge.escalation import EscalationClient
from edge.ota import request_ws_url
from edge.pipeline.turn import Phrases
from scripts.device_sim import DeviceSimulator, TurnReport
from shared.chat import ChatClient, ChatDelta
from shared.discovery import StaticDiscovery
from shared.topology import BackendSpec, parse_topology
from tests.fixtures_edge import FakeEngine, make_topology, speak, tone

BUSY = Phrases().busy
HOLD = Phrases().hold
LOCAL_REPLY = "First sentence. Second sentence."
ONE_TURN = {"admission": {"max_active_turns": 1}}  # the edge is full while one turn is in flight


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def device(edge, device_id: str) -> DeviceSimulator:
    sim = DeviceSimulator(edge.ws_url, edge.token(device_id), device_id, turn_timeout_s=15)
    await sim.connect()
    return sim


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def hold_one_turn(engine: FakeEngine, sim: DeviceSimulator) -> asyncio.Task[TurnReport]:
    """A turn that stays in flight (its local model waits for ``engine.llm_gate``): the edge is now full."""
    engine.llm_gate = asyncio.Event()
    task = asyncio.create_task(sim.run_turn(tone(600)))
    await until(lambda: engine.llm_inflight.value == 1)
    return task


def assert_busy(report: TurnReport, sim: DeviceSimulator) -> None:
    assert report.reply == BUSY and report.answered_by == "cache"
    assert report.frames > 0 and report.tts_stop  # the phrase's audio, then tts stop
    assert report.stt is None  # shed before transcription
    assert sim.close_code is None  # the session stays open: no 1011, no close at all


async def test_beyond_capacity_the_device_hears_the_busy_phrase_and_is_served_once_load_drops(edge_server):
    engine = FakeEngine(edge=ONE_TURN)
    edge = await edge_server(engine)
    first, second = await device(edge, "aa:bb:cc:00:01:01"), await device(edge, "aa:bb:cc:00:01:02")
    shed, turns = sample("xz_edge_shed_turns_total", limit="active_turns"), \
        sample("xz_edge_turns_total", answered_by="cache", outcome="shed")
    try:
        held = await hold_one_turn(engine, first)
        busy = await second.run_turn(tone(600))
        assert_busy(busy, second)
        assert sample("xz_edge_shed_turns_total", limit="active_turns") == shed + 1
        assert sample("xz_edge_turns_total", answered_by="cache", outcome="shed") == turns + 1
        engine.llm_gate.set()  # the load drops
        assert (await held).reply == f"{HOLD} {LOCAL_REPLY}"  # it waited past hold_after_ms: "One moment." first
        again = await second.run_turn(tone(600))  # the same session, the next turn: answered as usual
        assert again.reply == LOCAL_REPLY and again.answered_by == "edge" and again.tts_stop
    finally:
        await first.close()
        await second.close()
    # a shed turn is not part of the conversation: the next prompt never saw it
    assert [m for m in engine.llm.seen[-1] if m["role"] == "assistant"] == []


async def test_a_queued_local_answer_is_preceded_by_the_hold_phrase_not_silence(edge_server):
    """The local model busy elsewhere: the cached "One moment." plays after hold_after_ms, then the answer, in one
    tts session; a turn whose model answers at once has no hold phrase."""
    engine = FakeEngine(edge={"session": {"hold_after_ms": 300}})
    edge = await edge_server(engine)
    sim = await device(edge, "aa:bb:cc:00:03:01")
    try:
        quick = await sim.run_turn(tone(600))
        assert quick.reply == LOCAL_REPLY
        engine.llm_gate = asyncio.Event()
        asyncio.get_running_loop().call_later(1.5, engine.llm_gate.set)  # its model is free 1.5 s later
        queued = await sim.run_turn(tone(600))
        assert queued.reply == f"{HOLD} {LOCAL_REPLY}" and queued.answered_by == "edge", queued.summary()
        states = [m.get("state") for m in queued.messages if m.get("type") == "tts"]
        assert states.count("start") == 1 and states[-1] == "stop" and states.count("stop") == 1
        hold_audio, answer_audio = queued.first_audio_after(set()), queued.first_audio_after({HOLD})
        assert hold_audio is not None and answer_audio is not None and answer_audio > hold_audio
        await sim.run_turn(tone(600))  # the conversation remembers the answer, not the phrase before it
        assert [m["content"] for m in engine.llm.seen[-1] if m["role"] == "assistant"] == [LOCAL_REPLY] * 2
    finally:
        await sim.close()


async def test_a_slow_decision_is_covered_by_the_hold_phrase_too(edge_server, monkeypatch):
    """Deciding may wait for a queued model (a tool call's arguments): speaking has already started, so the device
    hears "One moment." instead of silence, then the answer; a decision still pending PLANNING_HOLD_S after speaking
    began is waiting for a model, so the phrase does not wait out the hold window."""
    engine = FakeEngine(edge={"session": {"hold_after_ms": 1500}})
    edge = await edge_server(engine)
    deciding = engine.pipeline.deciding
    decide = deciding.run

    async def slow_decision(*args, **kwargs):
        await asyncio.sleep(1.5)
        return await decide(*args, **kwargs)

    monkeypatch.setattr(deciding, "run", slow_decision)
    sim = await device(edge, "aa:bb:cc:00:03:02")
    try:
        report = await sim.run_turn(tone(600))
        assert report.reply == f"{HOLD} {LOCAL_REPLY}" and report.tts_stop, report.summary()
        assert engine.results[-1].outcome == "ok" and engine.results[-1].reply_text == LOCAL_REPLY
        timings = report.timings_ms
        assert timings["first_audio"] - timings["stt"] < 700, timings  # ~300 ms, not the 1500 ms window
    finally:
        await sim.close()


async def test_the_asr_queue_refusing_an_utterance_is_shed_not_a_closed_session(edge_server, asr_service,
                                                                                 question_pcm, monkeypatch):
    engine = FakeEngine(asr=asr_service)  # the real Whisper queue behind the listening stage
    edge = await edge_server(engine)
    sim = await device(edge, "aa:bb:cc:00:02:01")
    shed = sample("xz_edge_shed_turns_total", limit="asr_queue")
    try:
        with monkeypatch.context() as patch:
            patch.setattr(asr_service, "max_queue", 0)  # full: every submission raises AsrOverloaded
            busy = await sim.run_turn(question_pcm)
        assert_busy(busy, sim)
        assert sample("xz_edge_shed_turns_total", limit="asr_queue") == shed + 1
        served = await sim.run_turn(question_pcm)
        assert "capital" in (served.stt or "").lower() and served.reply == LOCAL_REPLY
    finally:
        await sim.close()


# ---------------------------------------------------------------- escalated for load
class CloudModel(ChatClient):
    """The cloud worker's model: one fixed answer."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/v1", "cloud-stand-in")

    async def stream(self, messages, *, tools=None, max_tokens, temperature, logprobs=False):
        yield ChatDelta(text="The cloud answers.")
        yield ChatDelta(finish_reason="stop")


@pytest.fixture
async def cloud_client(nats_hub, nats_connect) -> Callable[[], Awaitable[EscalationClient]]:
    """A real worker on a real nats-server (scripted model); yields a factory of edge escalation clients."""
    spec = BackendSpec(name="scripted", url="http://127.0.0.1:9/v1", model="scripted")
    pool = BackendPool([Endpoint(spec, CloudModel(), CircuitBreaker("scripted", 3, 10.0))])
    worker = Worker(await nats_connect(nats_hub.url), "w-load", "large", pool)
    await worker.start()

    async def make() -> EscalationClient:
        return EscalationClient(await nats_connect(nats_hub.url), "edge-1", "local-site")

    yield make
    await worker.stop()
    await pool.stop()


async def test_beyond_capacity_with_a_healthy_cloud_the_turn_is_escalated(edge_server, cloud_client):
    engine = FakeEngine(edge=ONE_TURN)
    engine.cloud.attach(await cloud_client(), None, None)  # no watcher: the built-in default policy
    edge = await edge_server(engine)
    first, second = await device(edge, "aa:bb:cc:00:03:01"), await device(edge, "aa:bb:cc:00:03:02")
    escalated, verdicts = sample("xz_edge_load_escalations_total"), sample("xz_edge_admission_total",
                                                                           verdict="escalate")
    try:
        held = await hold_one_turn(engine, first)  # "heard 600 ms" is a local turn for the default policy
        report = await second.run_turn(tone(600))
        assert report.reply == "The cloud answers." and report.answered_by == "cloud" and report.tts_stop
        assert sample("xz_edge_load_escalations_total") == escalated + 1
        assert sample("xz_edge_admission_total", verdict="escalate") == verdicts + 1
        engine.llm_gate.set()
        assert (await held).answered_by == "edge"
        local = await second.run_turn(tone(600))  # room again: the same words stay on the edge
        assert local.answered_by == "edge" and local.reply == LOCAL_REPLY
    finally:
        await first.close()
        await second.close()


# ---------------------------------------------------------------- OTA: booting devices go elsewhere
async def test_a_full_edge_sends_a_booting_device_to_the_other_edge(edge_server):
    engine = FakeEngine(edge=ONE_TURN)
    two_edges = make_topology().model_dump(by_alias=True, exclude_none=True)
    two_edges["sites"][0]["edges"].append({"name": "edge-2", "host": "127.0.0.2", "port": 8001, "capacity": 150})
    chooser = ota_chooser_with_load(StaticDiscovery(parse_topology(two_edges, environ={})), "edge-1",
                                    engine.admission, request_ws_url)
    edge = await edge_server(engine, choose_edge=chooser)
    booting = [f"aa:bb:cc:00:04:{i:02x}" for i in range(16)]

    async def ota_urls() -> set[str]:
        async with aiohttp.ClientSession() as http:
            urls = set()
            for device_id in booting:
                async with http.post(edge.ota_url, json={}, headers={"Device-Id": device_id}) as resp:
                    assert resp.status == 200
                    urls.add((await resp.json())["websocket"]["url"])
            return urls

    assert edge.ws_url in await ota_urls()  # with room, some booting devices land here
    sim = await device(edge, "aa:bb:cc:00:04:ff")
    try:
        held = await hold_one_turn(engine, sim)
        assert await ota_urls() == {"ws://127.0.0.2:8001/xiaozhi/v1/"}  # full: every one goes to edge-2
        engine.llm_gate.set()
        await held
        assert edge.ws_url in await ota_urls()
    finally:
        await sim.close()




async def test_an_answer_queued_behind_the_local_models_others_hears_the_hold_phrase_sooner(edge_server):
    """Every slot of the local model taken (another device's answer and this one: the stand-in has two): waiting
    the hold window would only delay the phrase, so it plays PACED_HOLD_S after speaking began; an answer that is
    merely slow on an otherwise idle model waits the window as before."""
    engine = FakeEngine(edge={"session": {"hold_after_ms": 700}})
    edge = await edge_server(engine)
    first, second = await device(edge, "aa:bb:cc:00:03:03"), await device(edge, "aa:bb:cc:00:03:04")

    def hold_after_speech(report: TurnReport) -> float:
        assert report.reply == f"{HOLD} {LOCAL_REPLY}" and report.tts_stop, report.summary()
        return report.first_audio_after(set()) - report.speech_end

    try:
        engine.llm_gate = asyncio.Event()
        asyncio.get_running_loop().call_later(2.5, engine.llm_gate.set)  # an idle model, slow to answer
        idle = hold_after_speech(await second.run_turn(tone(600)))
        held = await hold_one_turn(engine, first)  # one slot taken by the first device's answer
        asyncio.get_running_loop().call_later(2.5, engine.llm_gate.set)
        queued = hold_after_speech(await second.run_turn(tone(600)))
        await held
        assert queued < idle - 0.3, (queued, idle)  # 150 ms after speaking began vs the 700 ms window
    finally:
        await first.close()
        await second.close()


async def test_on_a_loaded_edge_an_escalation_gets_its_lead_in_window_before_the_hold_phrase():
    """Every local slot taken: an escalated answer's first sentence is slow to synthesize, so the hold phrase plays
    right after the answer's own lead-in window (not the whole hold window); a lead-in said in that window comes
    first and no hold phrase follows it."""
    from edge.stages.speaking import PACED_HOLD_S, Speaking

    class Escalated:  # what WithFallback looks like to speaking: a lead-in and its window
        answered_by, reason, lead_in = "cloud", "", "One moment, let me think."

        def __init__(self, lead_in_s: float, texts: list[tuple[float, str]]):
            self.lead_in_s, self.texts = lead_in_s, texts

        async def stream(self):
            for after_s, text in self.texts:
                await asyncio.sleep(after_s)
                yield text

        async def aclose(self) -> None:
            pass

    engine = FakeEngine(reply_ms=120)
    tts = engine.tts
    fresh = tts.speak

    async def slow_fresh_sentences(text, language=None, needed_at=None):  # a loaded box: a new sentence takes 0.8 s
        if text not in (HOLD, Escalated.lead_in):
            await asyncio.sleep(0.8)
        return await fresh(text, language, needed_at)

    tts.speak = slow_fresh_sentences
    speaking = Speaking(tts, "Sorry.", HOLD, hold_after_s=1.5, local_busy=lambda: True)

    async def said(answer) -> list[tuple[float, str]]:
        return (await speak(speaking, answer, engine.audio))[1]

    starts = await said(Escalated(0.3, [(0.05, "The cloud answers.")]))  # its text came, its voice is slow
    assert [text for _, text in starts] == [HOLD, "The cloud answers."]
    assert 0.3 + PACED_HOLD_S - 0.05 <= starts[0][0] < 0.9, starts  # after the lead-in window, not at 1.5 s
    starts = await said(Escalated(0.3, [(0.3, "One moment, let me think. "), (0.5, "The cloud answers.")]))
    assert [text for _, text in starts] == ["One moment, let me think.", "The cloud answers."], starts


async def test_a_slow_transcript_is_covered_by_the_hold_phrase(edge_server):
    """A saturated CPU: the words take 1.2 s to transcribe. Speaking starts with the turn, so the device hears
    "One moment." hold_after_ms after the end of speech, then its words (stt) and the answer, in one tts session;
    a slow transcript with no words gets the phrase and its tts stop, and the next turn works."""
    engine = FakeEngine(edge={"session": {"hold_after_ms": 400}})
    edge = await edge_server(engine)
    sim = await device(edge, "aa:bb:cc:00:03:09")
    heard = engine.asr.submit

    def slow(text: str | None = None):
        def submit(pcm16k):
            job = asyncio.get_running_loop().create_future()
            done = heard(pcm16k)
            result = done.result() if text is None else type(done.result())(text, "en", 1.0, 0.0)
            asyncio.get_running_loop().call_later(1.2, job.set_result, result)
            return job
        return submit

    try:
        engine.asr.submit = slow()
        report = await sim.run_turn(tone(600))
        assert report.reply == f"{HOLD} {LOCAL_REPLY}", report.summary()
        hold_at = report.first_audio_after(set()) - report.speech_end
        stt_at = report.timings_ms["stt"] / 1000
        assert hold_at < stt_at and hold_at < 1.1, (hold_at, stt_at)  # not after the 1.2 s transcription
        states = [m.get("state") for m in report.messages if m.get("type") == "tts"]
        assert states.count("start") == 1 and states.count("stop") == 1 and states[-1] == "stop"
        engine.asr.submit = slow(text="")  # noise: no words, slowly
        empty = await sim.run_turn(tone(600))
        assert empty.reply == HOLD and empty.tts_stop, empty.summary()
        engine.asr.submit = heard
        assert (await sim.run_turn(tone(600))).reply == LOCAL_REPLY  # no hold for a quick turn
    finally:
        await sim.close()
