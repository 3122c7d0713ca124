"""One device's WebSocket session: hello, listening modes, turns, barge-in, MCP.

The session turns device traffic into turns for the engine and never lets bad
input or a failing turn take the connection (or any other session) down:

* The device hello must come first. Binary frames before it are dropped with a
  warning; after ``EARLY_BINARY_LIMIT`` of them the socket is closed (1008).
  No hello within ``edge.session.hello_timeout_s`` -> close 1002.
* Bad JSON, unknown types, bad fields: an ``error`` message to the device (the
  firmware ignores unknown types) and a log line; the session goes on.
* Binary frames larger than ``edge.session.max_frame_bytes`` -> close 1009.
  Undecodable Opus is counted and dropped (logged once per burst).
* No device traffic for ``edge.session.idle_timeout_s`` (and no turn running)
  -> close 1000.
* auto: the VAD's ``SpeechEnded`` starts a turn, after which upstream audio is
  ignored until the device's next ``listen start`` (it sends one after ``tts
  stop``). manual: audio between ``listen start`` and ``listen stop`` is the
  utterance. realtime: the VAD keeps running while the answer plays; new speech
  (``SpeechStarted``) during ``tts`` is a barge-in.
* One turn at a time: a new utterance, an ``abort`` or a barge-in cancels the
  running turn (its speaking stage drops queued audio and closes the ``tts``
  with a ``stop``). A failing turn is the pipeline's business
  (:mod:`edge.pipeline.turn`): the session just goes on.

The session owns the device's :class:`~edge.pipeline.conversation.Conversation`
and its listening stage (VAD, endpointing, speculative ASR: :mod:`edge.stages.listening`,
made by the engine for the current mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from edge import metrics
from edge.device.output import PacedOutput
from edge.device.protocol import (
    Abort, AudioParams, DeviceHello, Error, Listen, McpIn, McpOut, ProtocolError, ServerHello, parse_device_message,
    unpack_audio,
)
from edge.mcp import McpClient, McpError
from edge.opus import SUPPORTED_RATES, InvalidOpus, OpusDecoder, resample
from edge.pipeline.conversation import Conversation
from edge.pipeline.events import UserSpeaking, UtteranceEnded
from edge.pipeline.turn import TurnStart
from shared.log import device_id_var, log_event, monotonic_ms, session_id_var
from shared.topology import EdgeSettings

log = logging.getLogger("edge.session")

ASR_RATE = 16000
EARLY_BINARY_LIMIT = 50  # ~3 s of audio before any hello: not a xiaozhi device
CLOSE_NO_HELLO = 1002


class Engine(Protocol):
    """What a session needs from the engine (:class:`edge.engine.EdgeEngine`, or a test's stand-in)."""

    def listening(self, mode: str) -> Any: ...

    async def run_turn(self, start: TurnStart, out: PacedOutput) -> Any: ...


class DeviceSession:
    """Serves one device WebSocket until it closes; ``run()`` returns when the session is over."""

    def __init__(self, ws: web.WebSocketResponse, engine: Engine, settings: EdgeSettings, device_id: str,
                 protocol_version: int, client_id: str | None = None, language: str = "en"):
        self.ws = ws
        self.engine = engine
        self.settings = settings
        self.device_id = device_id
        self.language = language  # the default of this device's turns (the ASR's detection beats it)
        self.client_id = client_id
        self.protocol_version = protocol_version
        self.session_id = uuid.uuid4().hex
        audio = settings.audio
        self.output = PacedOutput(ws, protocol_version, audio.downstream_sample_rate, audio.frame_ms,
                                  audio.lead_ms, self.session_id)
        self.hello: DeviceHello | None = None
        self.mode = "auto"
        self.listening = False
        self.conversation = Conversation(settings.llm.history_turns)
        self._wake_words = {_folded(w) for w in settings.session.wake_words}
        self.mcp: McpClient | None = None
        self.turn_task: asyncio.Task | None = None
        self.close_code: int | None = None
        self._decoder: OpusDecoder | None = None
        self._listener: Any = None  # the engine's listening stage for the current mode
        self._early_binary = 0
        self._bad_opus_burst = 0
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        device_id_var.set(self.device_id)
        session_id_var.set(self.session_id)
        metrics.CONNECTED_DEVICES.inc()
        log_event(log, "device connected", client=self.client_id, protocol_version=self.protocol_version,
                  language=self.language)
        try:
            await self._serve()
        except (ConnectionResetError, ConnectionError):
            pass  # the device went away while we were sending
        except Exception:  # one broken session must never affect the others
            metrics.ERRORS.labels(kind="session").inc()
            log.exception("session failed")
            await self._close(WSCloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self._cleanup()
            metrics.CONNECTED_DEVICES.dec()
            log_event(log, "device disconnected", close_code=self.close_code or self.ws.close_code)

    async def _serve(self) -> None:
        hello_deadline = time.monotonic() + self.settings.session.hello_timeout_s
        while not self.ws.closed:
            if self.hello is None:
                timeout = max(hello_deadline - time.monotonic(), 0.001)
            else:
                timeout = self.settings.session.idle_timeout_s
            try:
                msg = await self.ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                if self.hello is None:
                    metrics.PROTOCOL_ERRORS.labels(kind="no_hello").inc()
                    log_event(log, "no hello in time, closing", logging.WARNING)
                    await self._close(CLOSE_NO_HELLO, "no hello")
                    return
                if self.turn_task is not None and not self.turn_task.done():
                    continue  # the device is quiet because it is listening to the answer
                log_event(log, "idle, closing")
                await self._close(WSCloseCode.OK, "idle")
                return
            if msg.type == WSMsgType.TEXT:
                await self._on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self._on_binary(msg.data)
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return

    async def _cleanup(self) -> None:
        if self.turn_task is not None and not self.turn_task.done():
            self.turn_task.cancel("disconnect")
            await asyncio.wait({self.turn_task})
        if self.mcp is not None:
            self.mcp.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if not self.ws.closed:
            await self.ws.close()

    async def _close(self, code: int, reason: str) -> None:
        self.close_code = int(code)
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode())

    async def _reject(self, exc: ProtocolError) -> None:
        """Count and log bad input, tell the device, carry on."""
        metrics.PROTOCOL_ERRORS.labels(kind=exc.kind).inc()
        log_event(log, "bad device message", logging.WARNING, kind=exc.kind, detail=exc.detail)
        if not self.ws.closed:
            await self.output.send(Error(exc.kind, exc.detail))

    # ------------------------------------------------------------ text
    async def _on_text(self, data: str) -> None:
        try:
            msg = parse_device_message(data)
        except ProtocolError as exc:
            await self._reject(exc)
            return
        if isinstance(msg, DeviceHello):
            await self._on_hello(msg)
        elif self.hello is None:
            await self._reject(ProtocolError("before_hello", f"{msg.type} before hello"))
        elif isinstance(msg, Listen):
            await self._on_listen(msg)
        elif isinstance(msg, Abort):
            log_event(log, "abort", reason=msg.reason)
            await self.cancel_turn("abort")
        elif isinstance(msg, McpIn):
            if self.mcp is None:
                await self._reject(ProtocolError("mcp_unexpected", "mcp message, but the hello did not offer mcp"))
            else:
                self.mcp.handle_payload(msg.payload)

    async def _on_hello(self, hello: DeviceHello) -> None:
        if hello.transport != "websocket":
            await self._reject(ProtocolError("bad_field", f"hello: transport {hello.transport!r}, expected websocket"))
            return
        first = self.hello is None
        self.hello = hello
        rate = hello.audio_params.sample_rate
        self._decoder = OpusDecoder(rate if rate in SUPPORTED_RATES else ASR_RATE)
        audio = self.settings.audio
        reply = ServerHello(self.session_id, AudioParams("opus", audio.downstream_sample_rate, 1, audio.frame_ms))
        await self.output.send(reply)
        log_event(log, "hello", version=hello.version, features=hello.features, upstream_rate=rate)
        if first and hello.mcp:
            self.mcp = McpClient(lambda payload: self.output.send(McpOut(payload)))
            self._spawn(self._init_mcp())

    async def _init_mcp(self) -> None:
        try:
            await self.mcp.initialize()
        except McpError as exc:
            log_event(log, "mcp initialize failed", logging.WARNING, error=str(exc))

    async def _on_listen(self, msg: Listen) -> None:
        if msg.state == "start":
            self.mode = msg.mode or self.mode
            self.listening = True
            self._reset_listening()
            log_event(log, "listen start", mode=self.mode)
        elif msg.state == "stop":
            self.listening = False
            if self.mode == "manual" and self._listener is not None:
                utterance = self._listener.stop()
                if utterance is not None:
                    await self._on_utterance(utterance)
        elif msg.state == "detect":
            if msg.text:
                kind = "wake" if _folded(msg.text) in self._wake_words else "text"
                await self.start_turn(self._start(kind, text=msg.text))

    def _reset_listening(self) -> None:
        self._listener = self.engine.listening(self.mode)

    def _start(self, kind: str, **kw: Any) -> TurnStart:
        return TurnStart(TurnStart.new_id(), self.session_id, self.device_id, kind, speech_end_ms=monotonic_ms(),
                         language=self.language, **kw)

    # ------------------------------------------------------------ binary
    async def _on_binary(self, data: bytes) -> None:
        if len(data) > self.settings.session.max_frame_bytes:
            metrics.PROTOCOL_ERRORS.labels(kind="oversized_frame").inc()
            log_event(log, "oversized frame, closing", logging.WARNING, bytes=len(data),
                      limit=self.settings.session.max_frame_bytes)
            await self._close(WSCloseCode.MESSAGE_TOO_BIG, "frame too big")
            return
        if self.hello is None:
            self._early_binary += 1
            metrics.PROTOCOL_ERRORS.labels(kind="binary_before_hello").inc()
            if self._early_binary == 1:
                log_event(log, "binary frame before hello, ignored", logging.WARNING)
            if self._early_binary > EARLY_BINARY_LIMIT:
                await self._close(WSCloseCode.POLICY_VIOLATION, "audio before hello")
            return
        try:
            kind, payload, _ = unpack_audio(self.protocol_version, data)
        except ProtocolError as exc:
            metrics.PROTOCOL_ERRORS.labels(kind=exc.kind).inc()
            log_event(log, "bad binary frame", logging.WARNING, detail=exc.detail)
            return
        if kind == "json":
            await self._on_text(payload.decode("utf-8", errors="replace"))
            return
        if not self.listening:
            return  # e.g. auto mode between end of speech and the next listen start
        try:
            pcm = self._decoder.decode(payload)
        except InvalidOpus as exc:
            self._bad_opus_burst += 1
            metrics.PROTOCOL_ERRORS.labels(kind="invalid_opus").inc()
            if self._bad_opus_burst == 1:
                log_event(log, "invalid opus frame(s), dropping", logging.WARNING, error=str(exc))
            return
        self._bad_opus_burst = 0
        if self._decoder.sample_rate != ASR_RATE:
            pcm = resample(pcm, self._decoder.sample_rate, ASR_RATE)
        if self._listener is None:
            self._reset_listening()
        for event in await self._listener.feed(pcm):
            match event:
                case UserSpeaking():
                    if self.mode == "realtime" and self.turn_task is not None and self.output.tts_open:
                        log_event(log, "barge-in")
                        await self.cancel_turn("barge-in")
                case UtteranceEnded():
                    await self._on_utterance(event)

    async def _on_utterance(self, utterance: UtteranceEnded) -> None:
        if self.mode == "auto":
            self.listening = False  # until the device's next listen start
        await self.start_turn(self._start("speech", pcm16k=utterance.pcm, transcript=utterance.transcript,
                                          speculative=utterance.speculative, silence_ms=utterance.eos_window_ms))

    # ------------------------------------------------------------ turns
    async def start_turn(self, start: TurnStart) -> None:
        """Run ``start`` as this session's only turn (a running one is cancelled first)."""
        await self.cancel_turn("new-turn")
        start.history = self.conversation.window()
        start.pending, self.conversation.pending = self.conversation.pending, None  # asked once, answered once
        start.mcp = self.mcp
        self.turn_task = asyncio.create_task(self._turn(start), name=f"turn-{start.turn_id}")

    async def cancel_turn(self, reason: str) -> None:
        """Stop the running turn now: its speaking stage drops queued audio and sends its ``tts stop``."""
        task, self.turn_task = self.turn_task, None
        if task is not None and not task.done():
            task.cancel(reason)  # the turn ends with outcome "cancelled" and this reason
            await asyncio.wait({task})

    async def _turn(self, start: TurnStart) -> None:
        starts = self.output.tts_starts
        result = await self.engine.run_turn(start, self.output)  # never raises: the pipeline owns failures
        self.conversation.pending = result.pending
        if result.outcome == "ok":
            self.conversation.add(result.user_text, result.answer_text)
        if self.output.tts_starts == starts and self.mode == "auto" and not self.ws.closed:
            # Nothing was spoken (e.g. silence transcribed to nothing): the device is still
            # listening and will not send another listen start, so listen again here.
            self.listening = True
            self._reset_listening()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _folded(text: str) -> str:
    """A wake word's comparable form: lower case, letters and digits only ("Hi, ESP!" -> "hiesp")."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())
