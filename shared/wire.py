"""The escalation wire format: msgpack-encoded dataclasses with a schema version.

Edges and workers are upgraded independently, so every message carries
``schema``; a peer speaking another version is refused with a clear error
instead of being half-understood. Decoding never trusts its input: size,
schema version, missing fields and every field's type are checked (msgpack
decodes, a pydantic TypeAdapter of the dataclass validates) and any problem
becomes a :class:`WireError` naming the field.
Unknown extra fields are ignored, so a peer may add optional fields within v1.

The reply to a request is a stream of :class:`ReplyChunk` published to the
request's reply inbox, numbered from 0; the last one has ``finish_reason`` or
``error`` set. :class:`ReplyStreamChecker` finds gaps, duplicates and chunks
after the end.

Tool calls (issue 5): a worker may end a round with ``finish_reason="tool_calls"``
and the calls in ``tool_calls``; the edge runs them on the device and sends a
continuation with :meth:`EscalationRequest.continue_with`: the same
``generation_id``, the calls and their results. Workers are stateless, so the
continuation carries the whole conversation and any worker can take it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

import msgpack
from pydantic import TypeAdapter, ValidationError

from shared import subjects

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 512 * 1024  # a long conversation with tool schemas fits; anything bigger is refused

T = TypeVar("T")


class WireError(ValueError):
    """A message that cannot be used: too big, not msgpack, wrong schema, missing or mistyped field."""


class StreamError(WireError):
    """A reply stream that is out of order, has a gap, or goes on after its final chunk."""


# ---------------------------------------------------------------- tool calls
@dataclass
class ToolCall:
    """One function call the model asked for; ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolResult:
    """What running one :class:`ToolCall` on the device returned."""

    call_id: str
    content: str
    is_error: bool = False


# ---------------------------------------------------------------- messages
@dataclass
class EscalationRequest:
    """One escalated turn (or one tool-call continuation of it), edge -> worker."""

    turn_id: str
    device_id: str
    messages: list[dict[str, Any]]  # OpenAI chat messages: {"role": ..., "content": ...}
    edge_id: str = ""
    site: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI tool definitions
    # few-shot (request, arguments) pairs by tool name, for workers whose models need them (grammar mode)
    tool_examples: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    language: str = "en"
    deadline: int = 0  # epoch milliseconds; 0 = none. Past it the answer is useless to the edge.
    policy_revision: int = 0
    reason: str = ""  # which policy rule escalated the turn
    max_tokens: int = 256
    temperature: float = 0.7
    cancel_subject: str = ""
    generation_id: str = ""  # stable across the tool-call rounds of one answer
    tool_calls: list[ToolCall] = field(default_factory=list)  # the calls the results answer
    tool_results: list[ToolResult] = field(default_factory=list)
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.generation_id:
            self.generation_id = self.turn_id
        if (not self.cancel_subject and subjects._TOKEN.match(self.turn_id or "")
                and subjects._TOKEN.match(self.site or subjects.NO_SITE)):
            self.cancel_subject = subjects.cancel(self.turn_id, self.site)

    def assign_site(self, site: str) -> None:
        """Name the sending site (once) and move the default cancel subject into its namespace."""
        if self.site or not site:
            return
        derived = self.cancel_subject == subjects.cancel(self.turn_id) if self.cancel_subject else False
        self.site = site
        if derived:
            self.cancel_subject = subjects.cancel(self.turn_id, site)

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation to generate from: the messages, then the pending tool round if any."""
        msgs = list(self.messages)
        if self.tool_calls:
            msgs.append({"role": "assistant", "content": None,
                         "tool_calls": [c.to_openai() for c in self.tool_calls]})
            for r in self.tool_results:
                msgs.append({"role": "tool", "tool_call_id": r.call_id, "content": r.content})
        return msgs

    def continue_with(self, tool_calls: list[ToolCall], results: list[ToolResult],
                      assistant_text: str = "") -> "EscalationRequest":
        """The next round of this generation: earlier rounds fold into ``messages``."""
        missing = {c.id for c in tool_calls} - {r.call_id for r in results}
        if missing:
            raise WireError(f"tool results missing for call ids {sorted(missing)}")
        msgs = self.chat_messages()
        if assistant_text:
            msgs.append({"role": "assistant", "content": assistant_text})
        return dataclasses.replace(self, messages=msgs, tool_calls=list(tool_calls), tool_results=list(results))

    def remaining_ms(self, now_ms: int | None = None) -> float:
        """Milliseconds left before the deadline (inf when there is none)."""
        if not self.deadline:
            return float("inf")
        return self.deadline - (now_ms if now_ms is not None else epoch_ms())

    def validate(self) -> None:
        """Semantic checks beyond types: what a worker must not accept."""
        if not self.turn_id:
            raise WireError("turn_id: must not be empty")
        if not self.messages:
            raise WireError("messages: at least one message is required")
        for i, m in enumerate(self.messages):
            if not isinstance(m.get("role"), str):
                raise WireError(f"messages[{i}].role: must be a string")
        if self.cancel_subject and not subjects.is_cancel_subject(self.cancel_subject):
            raise WireError(f"cancel_subject: {self.cancel_subject!r} is not a {subjects.CANCEL_PREFIX}.<site>.<id> subject")
        if self.max_tokens <= 0:
            raise WireError("max_tokens: must be positive")
        if not 0 <= self.temperature <= 2:
            raise WireError("temperature: must be within 0..2")


@dataclass
class ReplyChunk:
    """One piece of a streamed answer, worker -> edge. The final chunk has finish_reason or error."""

    seq: int
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | tool_calls | cancelled | deadline
    usage: dict[str, int] | None = None
    error: str | None = None  # busy | deadline | bad_request | backend | cancelled | internal
    detail: str = ""
    worker: str = ""
    generation_id: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass
class CancelRequest:
    """Sent to a request's ``cancel_subject`` when the device aborts or the edge gives up."""

    turn_id: str
    reason: str = "abort"
    schema: int = SCHEMA_VERSION


@dataclass
class WorkerHeartbeat:
    """A worker's periodic health, published on ``subjects.heartbeat``."""

    worker: str
    model_class: str
    inflight: int
    max_inflight: int
    backends_up: int
    backends_total: int
    ts: int  # epoch ms
    schema: int = SCHEMA_VERSION


# ---------------------------------------------------------------- codec
@cache
def _adapter(cls: type[T]) -> TypeAdapter[T]:
    """The validator of one wire dataclass (built once per class).

    Pydantic's lax mode: a number never becomes a string and a list never a scalar, but an
    int is accepted for a float (as msgpack peers write whole numbers) and unknown keys are ignored.
    """
    return TypeAdapter(cls)


def _where(loc: tuple[Any, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def epoch_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def encode(obj: Any) -> bytes:
    """msgpack bytes of a wire dataclass; WireError if it is not one or is too big."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise WireError(f"cannot encode {type(obj).__name__}: not a wire message")
    try:
        data = msgpack.packb(_adapter(type(obj)).dump_python(obj), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode {type(obj).__name__}: {exc}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"{type(obj).__name__} is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} byte limit")
    return data


def decode(data: bytes, cls: type[T], max_bytes: int = MAX_MESSAGE_BYTES) -> T:
    """Decode and validate ``data`` as ``cls``; any problem is a WireError naming the field."""
    name = cls.__name__
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{name}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"{name}: message is {len(data)} bytes, over the {max_bytes} byte limit")
    if not data:
        raise WireError(f"{name}: empty message")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError, RecursionError) as exc:
        raise WireError(f"{name}: not valid msgpack: {exc}") from None
    if not isinstance(raw, dict):
        raise WireError(f"{name}: expected a map, got {type(raw).__name__}")
    version = raw.get("schema")
    if version is None:
        raise WireError(f"{name}: missing schema version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise WireError(f"{name}: unknown schema version {version!r} (this side speaks {SCHEMA_VERSION})")
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise WireError(f"{name}: {first['msg']} - at `{_where(first['loc'])}`{more}") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"{name}: invalid: {exc}") from None


# ---------------------------------------------------------------- reply stream integrity
class ReplyStreamChecker:
    """Checks a reply stream arrives complete and in order: 0, 1, 2, ... up to one final chunk."""

    def __init__(self) -> None:
        self.expected = 0
        self.done = False

    def feed(self, chunk: ReplyChunk) -> ReplyChunk:
        if self.done:
            raise StreamError(f"chunk {chunk.seq} after the final chunk {self.expected - 1}")
        if chunk.seq < self.expected:
            raise StreamError(f"chunk {chunk.seq} out of order or repeated (expected {self.expected})")
        if chunk.seq > self.expected:
            raise StreamError(f"chunks {self.expected}..{chunk.seq - 1} missing (got {chunk.seq})")
        self.expected += 1
        self.done = chunk.final
        return chunk
