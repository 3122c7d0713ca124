"""Fixtures: real models, loaded once per test session, and speech made with piper at test time.

Spoken test audio is synthesized by the bundled piper voice (never stored files), so
tests of VAD/ASR and the whole pipeline run on real speech in any checkout.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import numpy as np
import pytest

from edge.opus import resample
from shared.topology import load_topology, resolve_model_path

SAMPLE_RATE = 16000
QUESTION = "What is the capital of France?"


def silence(ms: int) -> np.ndarray:
    """``ms`` of digital silence, int16 at 16 kHz."""
    return np.zeros(int(SAMPLE_RATE * ms / 1000), dtype=np.int16)


@pytest.fixture(scope="session")
def silence_pcm() -> Callable[[int], np.ndarray]:
    """The :func:`silence` helper as a fixture."""
    return silence


@pytest.fixture(scope="session")
def models_topology():
    """The repository's topology.yaml (the embedded default), validated."""
    return load_topology()


@pytest.fixture(scope="session")
def piper_voice(models_topology):
    """The bundled joe (en_US, medium) piper voice."""
    from piper import PiperVoice

    return PiperVoice.load(resolve_model_path(models_topology.edge.tts.voice))


@pytest.fixture(scope="session")
def speak(piper_voice) -> Callable[[str], np.ndarray]:
    """``speak(text)`` -> int16 16 kHz speech of ``text`` (cached per text; do not modify it)."""
    cache: dict[str, np.ndarray] = {}

    def _speak(text: str) -> np.ndarray:
        if text not in cache:
            chunks = list(piper_voice.synthesize(text))
            pcm = np.concatenate([c.audio_int16_array for c in chunks])
            pcm16 = resample(pcm, chunks[0].sample_rate, SAMPLE_RATE)
            pcm16.setflags(write=False)
            cache[text] = pcm16
        return cache[text]

    return _speak


@pytest.fixture(scope="session")
def question_pcm(speak) -> np.ndarray:
    """'What is the capital of France?' spoken, int16 16 kHz, no padding."""
    return speak(QUESTION)


@pytest.fixture(scope="session")
def vad_service(models_topology):
    """The real Silero VAD service (state lives in streams, so one serves every test's loop)."""
    from edge.vad import VadService

    svc = VadService(models_topology.edge.vad)
    asyncio.run(svc.load())
    return svc


@pytest.fixture(scope="session")
def asr_service(models_topology):
    """The real default ASR (faster-whisper tiny.en, int8)."""
    from edge.asr import AsrService

    svc = AsrService(models_topology.edge.asr)
    asyncio.run(svc.load())
    yield svc
    svc.close()


@pytest.fixture(scope="session")
def minilm():
    """The MiniLM embedder on onnxruntime (shared.embeddings), exported to ONNX on first use if set-up did not."""
    from shared.embeddings import shared_embedder

    return shared_embedder()


@pytest.fixture(scope="module")
def router(minilm):
    """The embedding router (shared.intent_router) on the real MiniLM; a test module may define its own."""
    from shared.intent_router import IntentRouter

    return IntentRouter(minilm)


@pytest.fixture(scope="module")
def tools():
    """The simulated board's MCP tools (scripts/sim_board.py) as a registry, as bench_tools.py sees them."""
    from scripts.bench_tools import board_registry
    from scripts.sim_board import SimBoard

    return board_registry(SimBoard())
