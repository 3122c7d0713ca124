"""The xiaozhi device protocol: typed messages and binary audio framing.

The firmware (78/xiaozhi-esp32, main/protocols/websocket_protocol.cc) is the
authority. Text frames are JSON objects with a ``type``; binary frames carry one
Opus packet, framed by the protocol version negotiated at the handshake
(``Protocol-Version`` header): v1 raw, v2 a 16-byte header, v3 a 4-byte header.
Everything a device sends is parsed here, so a bad message becomes one
:class:`ProtocolError` with a ``kind`` the session can count and report.
"""

from __future__ import annotations

import json
import struct
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, Union

SUPPORTED_VERSIONS = (1, 2, 3)
LISTEN_MODES = ("auto", "manual", "realtime")
LISTEN_STATES = ("start", "stop", "detect")

_V2_HEADER = struct.Struct("!HHIII")  # version, type, reserved, timestamp_ms, payload_size
_V3_HEADER = struct.Struct("!BBH")  # type, reserved, payload_size
_FRAME_KINDS = {0: "opus", 1: "json"}
_FRAME_TYPES = {v: k for k, v in _FRAME_KINDS.items()}

ListenMode = Literal["auto", "manual", "realtime"]
FrameKind = Literal["opus", "json"]


class ProtocolError(ValueError):
    """Bad device input; ``kind`` is a short label (metrics), ``detail`` says what was wrong."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Message:
    """A protocol message: one dataclass per ``type``; ``to_json`` is its wire object (``None`` fields left out)."""

    type: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        out.update({k: v for k, v in asdict(self).items() if v is not None})
        return out


# ---------------------------------------------------------------- device -> server
@dataclass(frozen=True)
class AudioParams:
    format: str = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration: int = 60

    @classmethod
    def from_json(cls, obj: dict) -> "AudioParams":
        return cls(format=_field(obj, "format", str, default="opus"),
                   sample_rate=_field(obj, "sample_rate", int, default=16000),
                   channels=_field(obj, "channels", int, default=1),
                   frame_duration=_field(obj, "frame_duration", int, default=60))


@dataclass(frozen=True)
class DeviceHello(Message):
    version: int = 1
    transport: str = "websocket"
    features: dict[str, Any] = field(default_factory=dict)
    audio_params: AudioParams = field(default_factory=AudioParams)
    type: ClassVar[str] = "hello"

    @property
    def mcp(self) -> bool:
        return bool(self.features.get("mcp"))

    @classmethod
    def from_json(cls, obj: dict) -> "DeviceHello":
        params = AudioParams.from_json(_field(obj, "audio_params", dict, default={}))
        if params.format != "opus":
            raise ProtocolError("bad_field", f"hello: audio format {params.format!r} is not supported (opus only)")
        return cls(version=_field(obj, "version", int, default=1),
                   transport=_field(obj, "transport", str, default="websocket"),
                   features=_field(obj, "features", dict, default={}), audio_params=params)


@dataclass(frozen=True)
class Listen(Message):
    state: Literal["start", "stop", "detect"]
    mode: ListenMode | None = None  # the firmware sends it with "start" only
    text: str | None = None  # wake word, with "detect"
    session_id: str | None = None
    type: ClassVar[str] = "listen"

    @classmethod
    def from_json(cls, obj: dict) -> "Listen":
        state = _field(obj, "state", str, required=True)
        if state not in LISTEN_STATES:
            raise ProtocolError("bad_field", f"listen: unknown state {state!r}")
        mode = _field(obj, "mode", str)
        if mode is not None and mode not in LISTEN_MODES:
            raise ProtocolError("bad_field", f"listen: unknown mode {mode!r}")
        return cls(state=state, mode=mode, text=_field(obj, "text", str), session_id=_field(obj, "session_id", str))


@dataclass(frozen=True)
class Abort(Message):
    reason: str | None = None
    session_id: str | None = None
    type: ClassVar[str] = "abort"

    @classmethod
    def from_json(cls, obj: dict) -> "Abort":
        return cls(reason=_field(obj, "reason", str), session_id=_field(obj, "session_id", str))


@dataclass(frozen=True)
class McpIn(Message):
    """A JSON-RPC payload from the device (its MCP server's replies and notifications)."""

    payload: dict[str, Any]
    session_id: str | None = None
    type: ClassVar[str] = "mcp"

    @classmethod
    def from_json(cls, obj: dict) -> "McpIn":
        return cls(payload=_field(obj, "payload", dict, required=True), session_id=_field(obj, "session_id", str))


DeviceMessage = Union[DeviceHello, Listen, Abort, McpIn]
DEVICE: dict[str, Any] = {c.type: c for c in (DeviceHello, Listen, Abort, McpIn)}


def _field(obj: dict, name: str, kinds: type | tuple[type, ...], required: bool = False, default: Any = None) -> Any:
    value = obj.get(name)
    if value is None:
        if required:
            raise ProtocolError("bad_field", f"{obj.get('type')}: missing {name!r}")
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ProtocolError("bad_field", f"{obj.get('type')}: {name!r} must not be a boolean")
    if not isinstance(value, kinds):
        raise ProtocolError("bad_field", f"{obj.get('type')}: {name!r} has the wrong type ({type(value).__name__})")
    return value


def _json_object(text: str | bytes) -> tuple[str, dict]:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("no_type", "message has no 'type'")
    return kind, obj


def parse_device_message(text: str | bytes) -> DeviceMessage:
    """One text frame from a device -> its message; ProtocolError(kind, detail) otherwise."""
    kind, obj = _json_object(text)
    cls = DEVICE.get(kind)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    return cls.from_json(obj)


# ---------------------------------------------------------------- server -> device
@dataclass(frozen=True)
class ServerHello(Message):
    session_id: str
    audio_params: AudioParams
    transport: str = "websocket"
    type: ClassVar[str] = "hello"

    @classmethod
    def from_json(cls, obj: dict) -> "ServerHello":
        return cls(_field(obj, "session_id", str, required=True),
                   AudioParams.from_json(_field(obj, "audio_params", dict, default={})),
                   _field(obj, "transport", str, default="websocket"))


@dataclass(frozen=True)
class Stt(Message):
    text: str
    type: ClassVar[str] = "stt"


@dataclass(frozen=True)
class Llm(Message):
    emotion: str
    text: str = ""
    answered_by: str | None = None  # edge | cloud | cache: not in the firmware, which ignores it
    type: ClassVar[str] = "llm"


@dataclass(frozen=True)
class Tts(Message):
    state: Literal["start", "sentence_start", "stop"]
    text: str | None = None
    type: ClassVar[str] = "tts"


@dataclass(frozen=True)
class McpOut(Message):
    """A JSON-RPC request to the device's MCP server."""

    payload: dict[str, Any]
    type: ClassVar[str] = "mcp"


@dataclass(frozen=True)
class System(Message):
    command: str
    type: ClassVar[str] = "system"


@dataclass(frozen=True)
class Alert(Message):
    status: str
    message: str
    emotion: str = "neutral"
    type: ClassVar[str] = "alert"


@dataclass(frozen=True)
class Error(Message):
    """Not in the firmware (it ignores unknown types); tells a developer what the edge rejected."""

    kind: str
    message: str
    type: ClassVar[str] = "error"


ServerMessage = Union[ServerHello, Stt, Llm, Tts, McpOut, System, Alert, Error]
_SIMPLE_SERVER = {"stt": (Stt, {"text": str}), "llm": (Llm, {"emotion": str, "text": str, "answered_by": str}),
                  "tts": (Tts, {"state": str, "text": str}), "mcp": (McpOut, {"payload": dict}),
                  "system": (System, {"command": str}),
                  "alert": (Alert, {"status": str, "message": str, "emotion": str}),
                  "error": (Error, {"kind": str, "message": str})}


def serialize(msg: ServerMessage, session_id: str | None = None) -> str:
    """The text frame for a server message; ``session_id`` first, as xiaozhi servers send it."""
    obj = msg.to_json()
    if session_id and "session_id" not in obj:
        obj = {"type": obj.pop("type"), "session_id": session_id, **obj}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def parse_server_message(text: str | bytes) -> ServerMessage:
    """One text frame from a server (simulators, tests) -> its message; unknown fields are ignored."""
    kind, obj = _json_object(text)
    if kind == "hello":
        return ServerHello.from_json(obj)
    if kind not in _SIMPLE_SERVER:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    cls, kinds = _SIMPLE_SERVER[kind]
    required = {f.name for f in fields(cls) if f.default is MISSING}
    return cls(**{k: v for k, t in kinds.items()
                  if (v := _field(obj, k, t, required=k in required)) is not None})


# ---------------------------------------------------------------- binary framing
def check_version(value: str | int | None) -> int:
    """A Protocol-Version header value -> 1, 2 or 3 (missing means 1, as old firmware sends none)."""
    if value is None or value == "":
        return 1
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise ProtocolError("bad_version", f"Protocol-Version {str(value)[:20]!r} is not a number") from None
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError("bad_version", f"Protocol-Version {version} is not supported (1, 2 or 3)")
    return version


def pack_audio(version: int, payload: bytes, timestamp_ms: int = 0, kind: FrameKind = "opus") -> bytes:
    """One binary WebSocket message for ``payload`` in the given protocol version."""
    if version == 1:
        if kind != "opus":
            raise ProtocolError("bad_frame", "protocol v1 frames carry Opus only")
        return bytes(payload)
    if version == 2:
        return _V2_HEADER.pack(2, _FRAME_TYPES[kind], 0, timestamp_ms & 0xFFFFFFFF, len(payload)) + payload
    if version == 3:
        if len(payload) > 0xFFFF:
            raise ProtocolError("bad_frame", f"v3 payload of {len(payload)} bytes exceeds 65535")
        return _V3_HEADER.pack(_FRAME_TYPES[kind], 0, len(payload)) + payload
    raise ProtocolError("bad_version", f"protocol version {version} is not supported")


def unpack_audio(version: int, data: bytes) -> tuple[FrameKind, bytes, int]:
    """A binary WebSocket message -> (kind, payload, timestamp_ms); sizes are checked."""
    if version == 1:
        if not data:
            raise ProtocolError("bad_frame", "empty binary frame")
        return "opus", bytes(data), 0
    if version == 2:
        if len(data) < _V2_HEADER.size:
            raise ProtocolError("bad_frame", f"v2 frame of {len(data)} bytes is shorter than its 16-byte header")
        _, ftype, _, timestamp, size = _V2_HEADER.unpack_from(data)
        payload = bytes(data[_V2_HEADER.size:])
    elif version == 3:
        if len(data) < _V3_HEADER.size:
            raise ProtocolError("bad_frame", f"v3 frame of {len(data)} bytes is shorter than its 4-byte header")
        ftype, _, size = _V3_HEADER.unpack_from(data)
        timestamp = 0
        payload = bytes(data[_V3_HEADER.size:])
    else:
        raise ProtocolError("bad_version", f"protocol version {version} is not supported")
    if size != len(payload):
        raise ProtocolError("bad_frame", f"v{version} header says {size} payload bytes, frame has {len(payload)}")
    kind = _FRAME_KINDS.get(ftype)
    if kind is None:
        raise ProtocolError("bad_frame", f"v{version} frame type {ftype} is unknown")
    return kind, payload, timestamp
