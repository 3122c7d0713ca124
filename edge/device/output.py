"""Downstream to one device: JSON at once, Opus frames at playback pace.

A device has a small audio buffer and shows ``sentence_start`` text when it
arrives, so the whole answer must not be pushed at once: frame *i* is due to
play at ``start + i * frame_ms`` and is sent ``lead_ms`` before that. An abort
clears the schedule at once, so at most ``lead_ms`` of audio is left on the
device and nothing more is sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

from aiohttp import web

from edge import metrics
from edge.device.protocol import ServerMessage, Tts, pack_audio, serialize


class PacedOutput:
    """The session's ``DeviceOutput``: typed ``send``, paced ``send_audio``, ``drain``, ``clear``."""

    def __init__(self, ws: web.WebSocketResponse, protocol_version: int, sample_rate: int, frame_ms: int,
                 lead_ms: int, session_id: str = ""):
        self.ws = ws
        self.protocol_version = protocol_version
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.lead_s = lead_ms / 1000.0
        self.session_id = session_id
        self.tts_open = False  # a tts start went out without its stop
        self.tts_starts = 0
        self.frames_sent = 0
        self._play_end = 0.0  # monotonic time at which the last scheduled frame finishes playing
        self._epoch = 0  # bumped by clear(): an in-flight send_audio stops at its next frame
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send(self, msg: ServerMessage) -> None:
        if isinstance(msg, Tts):
            if msg.state == "start":
                self.tts_open = True
                self.tts_starts += 1
            elif msg.state == "stop":
                self.tts_open = False
        await self.ws.send_str(serialize(msg, self.session_id))

    async def send_audio(self, frames: Sequence[bytes]) -> None:
        """Send frames, each ``lead_ms`` ahead of its play time; returns when the last one is out."""
        epoch = self._epoch
        step = self.frame_ms / 1000.0
        async with self._lock:
            for frame in frames:
                if epoch != self._epoch:
                    return
                now = time.monotonic()
                play_at = max(self._play_end, now)
                wait = play_at - self.lead_s - now
                if wait > 0:
                    await asyncio.sleep(wait)
                    if epoch != self._epoch:
                        return
                if self.ws.closed:
                    raise ConnectionResetError("device disconnected")
                await self.ws.send_bytes(pack_audio(self.protocol_version, frame, int(play_at * 1000)))
                self._play_end = play_at + step
                self.frames_sent += 1
                metrics.AUDIO_FRAMES_OUT.inc()

    async def drain(self) -> None:
        """Wait until the device has played everything sent so far."""
        wait = self._play_end - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def clear(self) -> None:
        """Drop the schedule: nothing queued is sent, the next audio starts fresh."""
        self._epoch += 1
        self._play_end = 0.0
