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
from dataclasses import asdict, dataclass, field
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


# ---------------------------------------------------------------- device -> server
@dataclass
class AudioParams:
    format: str = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration: int = 60


@dataclass
class DeviceHello:
    version: int = 1
    transport: str = "websocket"
    features: dict[str, Any] = field(default_factory=dict)
    audio_params: AudioParams = field(default_factory=AudioParams)
    type: ClassVar[str] = "hello"

    @property
    def mcp(self) -> bool:
        return bool(self.features.get("mcp"))


@dataclass
class Listen:
    state: Literal["start", "stop", "detect"]
    mode: ListenMode | None = None  # the firmware sends it with "start" only
    text: str | None = None  # wake word, with "detect"
    session_id: str | None = None
    type: ClassVar[str] = "listen"


@dataclass
class Abort:
    reason: str | None = None
    session_id: str | None = None
    type: ClassVar[str] = "abort"


@dataclass
class McpMessage:
    payload: dict[str, Any]
    session_id: str | None = None
    type: ClassVar[str] = "mcp"


DeviceMessage = Union[DeviceHello, Listen, Abort, McpMessage]


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


def _parse_hello(obj: dict) -> DeviceHello:
    ap = _field(obj, "audio_params", dict, default={})
    params = AudioParams(
        format=_field(ap, "format", str, default="opus"),
        sample_rate=_field(ap, "sample_rate", int, default=16000),
        channels=_field(ap, "channels", int, default=1),
        frame_duration=_field(ap, "frame_duration", int, default=60),
    )
    if params.format != "opus":
        raise ProtocolError("bad_field", f"hello: audio format {params.format!r} is not supported (opus only)")
    return DeviceHello(
        version=_field(obj, "version", int, default=1),
        transport=_field(obj, "transport", str, default="websocket"),
        features=_field(obj, "features", dict, default={}),
        audio_params=params,
    )


def _parse_listen(obj: dict) -> Listen:
    state = _field(obj, "state", str, required=True)
    if state not in LISTEN_STATES:
        raise ProtocolError("bad_field", f"listen: unknown state {state!r}")
    mode = _field(obj, "mode", str)
    if mode is not None and mode not in LISTEN_MODES:
        raise ProtocolError("bad_field", f"listen: unknown mode {mode!r}")
    return Listen(state=state, mode=mode, text=_field(obj, "text", str), session_id=_field(obj, "session_id", str))


def _parse_abort(obj: dict) -> Abort:
    return Abort(reason=_field(obj, "reason", str), session_id=_field(obj, "session_id", str))


def _parse_mcp(obj: dict) -> McpMessage:
    return McpMessage(payload=_field(obj, "payload", dict, required=True), session_id=_field(obj, "session_id", str))


_PARSERS = {"hello": _parse_hello, "listen": _parse_listen, "abort": _parse_abort, "mcp": _parse_mcp}


def parse_device_message(text: str | bytes) -> DeviceMessage:
    """One text frame from a device -> its message; ProtocolError(kind, detail) otherwise."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("no_type", "message has no 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    return parser(obj)


# ---------------------------------------------------------------- server -> device
@dataclass
class ServerHello:
    session_id: str
    audio_params: AudioParams
    transport: str = "websocket"
    type: ClassVar[str] = "hello"


@dataclass
class Stt:
    text: str
    type: ClassVar[str] = "stt"


@dataclass
class Llm:
    emotion: str
    text: str = ""
    type: ClassVar[str] = "llm"


@dataclass
class Tts:
    state: Literal["start", "sentence_start", "stop"]
    text: str | None = None
    type: ClassVar[str] = "tts"


@dataclass
class ServerMcp:
    payload: dict[str, Any]
    type: ClassVar[str] = "mcp"


@dataclass
class System:
    command: str
    type: ClassVar[str] = "system"


@dataclass
class Alert:
    status: str
    message: str
    emotion: str = "neutral"
    type: ClassVar[str] = "alert"


@dataclass
class Error:
    """Not in the firmware (it ignores unknown types); tells a developer what the edge rejected."""

    kind: str
    message: str
    type: ClassVar[str] = "error"


ServerMessage = Union[ServerHello, Stt, Llm, Tts, ServerMcp, System, Alert, Error]


def to_dict(msg: ServerMessage, session_id: str | None = None) -> dict[str, Any]:
    """The JSON object for a server message (``None`` fields left out)."""
    out: dict[str, Any] = {"type": msg.type}
    if session_id:
        out["session_id"] = session_id
    out.update({k: v for k, v in asdict(msg).items() if v is not None})
    return out


def serialize(msg: ServerMessage, session_id: str | None = None) -> str:
    return json.dumps(to_dict(msg, session_id), ensure_ascii=False, separators=(",", ":"))


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
