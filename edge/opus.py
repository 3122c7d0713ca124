"""Opus in both directions, and resampling: the audio formats devices speak.

Devices send 16 kHz mono Opus, 60 ms per packet, and play back whatever rate the
server hello announced. libopus (Debian ``libopus0``) through ``opuslib``;
resampling through libsoxr (``soxr``).
"""

from __future__ import annotations

import numpy as np
import opuslib
import opuslib.api.encoder  # noqa: F401  (ctl constants)
import soxr

SUPPORTED_RATES = (8000, 12000, 16000, 24000, 48000)
MAX_FRAME_MS = 120


class InvalidOpus(ValueError):
    """A binary frame that libopus could not decode."""


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """int16 mono at ``src_rate`` -> int16 mono at ``dst_rate``."""
    if src_rate == dst_rate or pcm.size == 0:
        return pcm.astype(np.int16, copy=False)
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, src_rate, dst_rate, quality="HQ")
    return np.clip(out * 32768.0, -32768, 32767).astype(np.int16)


class OpusDecoder:
    """Decodes one device's packets; keeps libopus state between packets as the stream requires."""

    def __init__(self, sample_rate: int = 16000, channels: int = 1):
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"opus: unsupported sample rate {sample_rate}")
        self.sample_rate = sample_rate
        self.channels = channels
        self._decoder = opuslib.Decoder(sample_rate, channels)
        self._max_samples = sample_rate * MAX_FRAME_MS // 1000

    def decode(self, packet: bytes) -> np.ndarray:
        if not packet:
            raise InvalidOpus("empty packet")
        try:
            data = self._decoder.decode(bytes(packet), self._max_samples)
        except opuslib.OpusError as exc:
            raise InvalidOpus(str(exc)) from None
        return np.frombuffer(data, dtype=np.int16)


class OpusEncoder:
    """Encodes int16 PCM into fixed-duration packets, buffering partial frames between calls."""

    def __init__(self, sample_rate: int = 24000, frame_ms: int = 60, channels: int = 1, bitrate: int | None = None,
                 complexity: int | None = None):
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"opus: unsupported sample rate {sample_rate}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self._encoder = opuslib.Encoder(sample_rate, channels, opuslib.APPLICATION_VOIP)
        if bitrate:
            self._encoder.bitrate = bitrate
        if complexity is not None:  # libopus' default is 10 (its slowest); see AudioSpec.opus_complexity
            self._encoder.complexity = complexity
        self._pending = np.zeros(0, dtype=np.int16)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Packets for every whole frame available; the remainder waits for more audio or flush()."""
        buf = np.concatenate([self._pending, pcm.astype(np.int16, copy=False)]) if self._pending.size else pcm.astype(np.int16, copy=False)
        n = buf.size // self.frame_samples
        packets = [
            self._encoder.encode(buf[i * self.frame_samples:(i + 1) * self.frame_samples].tobytes(), self.frame_samples)
            for i in range(n)
        ]
        self._pending = buf[n * self.frame_samples:].copy()
        return packets

    def flush(self) -> list[bytes]:
        """Encode what is left, padded with silence to a whole frame."""
        if not self._pending.size:
            return []
        pad = np.zeros(self.frame_samples - self._pending.size, dtype=np.int16)
        self._pending = np.concatenate([self._pending, pad])
        return self.encode(np.zeros(0, dtype=np.int16))


def encode_pcm(pcm: np.ndarray, sample_rate: int, frame_ms: int = 60, complexity: int | None = None) -> list[bytes]:
    """A whole clip to packets with a fresh encoder (clips such as one TTS sentence)."""
    enc = OpusEncoder(sample_rate, frame_ms, complexity=complexity)
    return enc.encode(pcm) + enc.flush()


def decode_packets(packets: list[bytes], sample_rate: int) -> np.ndarray:
    """A whole packet sequence to PCM with one decoder (tests, the simulator)."""
    dec = OpusDecoder(sample_rate)
    parts = [dec.decode(p) for p in packets]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
