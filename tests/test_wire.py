"""The wire format: round trips, every class of malformed input, reply-stream integrity, subjects."""

from __future__ import annotations

import msgpack
import pytest

from shared import subjects
from shared.wire import (MAX_MESSAGE_BYTES, SCHEMA_VERSION, CancelRequest, EscalationRequest, ReplyChunk,
                         ReplyStreamChecker, StreamError, ToolCall, ToolResult, WireError, WorkerHeartbeat, decode,
                         encode)


def _request(**kw) -> EscalationRequest:
    base = dict(turn_id="t-1", device_id="aa:bb", edge_id="edge-1", site="s1",
                messages=[{"role": "user", "content": "Why is the sky blue?"}],
                tools=[{"type": "function", "function": {"name": "set_volume", "parameters": {"type": "object"}}}],
                language="en", deadline=1_900_000_000_000, policy_revision=7, reason="rule:long",
                max_tokens=80, temperature=0.4)
    base.update(kw)
    return EscalationRequest(**base)


def test_request_round_trip():
    req = _request()
    back = decode(encode(req), EscalationRequest)
    assert back == req
    assert back.cancel_subject == "xz.v1.cancel.s1.t-1"  # in the site's own namespace
    assert back.generation_id == "t-1"
    assert back.schema == SCHEMA_VERSION


def test_chunk_heartbeat_cancel_round_trip():
    chunk = ReplyChunk(3, text="Hel", tool_calls=[ToolCall("c1", "set_volume", '{"v": 3}')],
                       finish_reason="tool_calls", usage={"completion_tokens": 5}, worker="w1", generation_id="g")
    assert decode(encode(chunk), ReplyChunk) == chunk
    assert decode(encode(chunk), ReplyChunk).final
    beat = WorkerHeartbeat("w1", "large", 1, 4, 1, 1, 123)
    assert decode(encode(beat), WorkerHeartbeat) == beat
    assert decode(encode(CancelRequest("t-1", "abort")), CancelRequest).reason == "abort"


def test_tool_result_continuation_keeps_generation_and_folds_rounds():
    req = _request()
    call = ToolCall("call-1", "set_volume", '{"level": 3}')
    cont = req.continue_with([call], [ToolResult("call-1", "volume set to 3")])
    back = decode(encode(cont), EscalationRequest)
    assert back.generation_id == req.generation_id and back.turn_id == req.turn_id
    msgs = back.chat_messages()
    assert msgs[-2]["role"] == "assistant" and msgs[-2]["tool_calls"][0]["function"]["name"] == "set_volume"
    assert msgs[-1] == {"role": "tool", "tool_call_id": "call-1", "content": "volume set to 3"}
    # a second round folds the first into messages
    call2 = ToolCall("call-2", "get_time", "{}")
    cont2 = back.continue_with([call2], [ToolResult("call-2", "12:00")])
    assert len(cont2.messages) == len(req.messages) + 2
    assert cont2.chat_messages()[-1]["tool_call_id"] == "call-2"
    with pytest.raises(WireError, match="call-3"):
        back.continue_with([ToolCall("call-3", "x")], [])


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\xc1\xc1\xc1", "not valid msgpack"),
    (msgpack.packb([1, 2, 3]), "expected a map"),
    (msgpack.packb({"turn_id": "t"}), "missing schema"),
    (msgpack.packb({"schema": 99, "turn_id": "t"}), "unknown schema version 99"),
    (msgpack.packb({"schema": SCHEMA_VERSION, "device_id": "d", "messages": []}), "turn_id"),
    (msgpack.packb({"schema": SCHEMA_VERSION, "turn_id": 5, "device_id": "d", "messages": []}), r"\$.turn_id"),
    (msgpack.packb({"schema": SCHEMA_VERSION, "turn_id": "t", "device_id": "d", "messages": "hi"}), "messages"),
    (msgpack.packb({"schema": SCHEMA_VERSION, "turn_id": "t", "device_id": "d", "messages": [],
                    "deadline": "soon"}), "deadline"),
    (msgpack.packb({"schema": SCHEMA_VERSION, "turn_id": "t", "device_id": "d", "messages": [],
                    "tool_results": [{"call_id": 1, "content": "x"}]}), r"tool_results\[0\].call_id"),
    (msgpack.packb({"schema": SCHEMA_VERSION, "turn_id": "t", "device_id": "d", "messages": []})[:-3], "msgpack"),
])
def test_malformed_requests_are_wire_errors(data, message):
    with pytest.raises(WireError, match=message):
        decode(data, EscalationRequest)


def test_oversized_and_non_bytes_are_refused():
    with pytest.raises(WireError, match="byte limit"):
        decode(b"\x80" * (MAX_MESSAGE_BYTES + 1), EscalationRequest)
    with pytest.raises(WireError, match="expected bytes"):
        decode("text", EscalationRequest)  # type: ignore[arg-type]
    huge = _request(messages=[{"role": "user", "content": "x" * MAX_MESSAGE_BYTES}])
    with pytest.raises(WireError, match="byte limit"):
        encode(huge)
    with pytest.raises(WireError, match="not a wire message"):
        encode({"a": 1})


def test_unknown_extra_fields_are_ignored_within_a_version():
    raw = msgpack.unpackb(encode(ReplyChunk(0, text="a")))
    raw["added_in_v1_1"] = {"x": 1}
    assert decode(msgpack.packb(raw), ReplyChunk).text == "a"


def test_semantic_validation():
    _request().validate()
    for bad, field in [(_request(messages=[]), "messages"), (_request(max_tokens=0), "max_tokens"),
                       (_request(temperature=5.0), "temperature"),
                       (_request(cancel_subject="other.subject"), "cancel_subject"),
                       (_request(messages=[{"content": "no role"}]), "role")]:
        with pytest.raises(WireError, match=field):
            bad.validate()


def test_reply_stream_checker_detects_gap_reorder_duplicate_and_trailing():
    ok = ReplyStreamChecker()
    for c in [ReplyChunk(0, "a"), ReplyChunk(1, "b"), ReplyChunk(2, finish_reason="stop")]:
        ok.feed(c)
    assert ok.done
    with pytest.raises(StreamError, match="after the final"):
        ok.feed(ReplyChunk(3, "late"))

    gap = ReplyStreamChecker()
    gap.feed(ReplyChunk(0, "a"))
    with pytest.raises(StreamError, match="1..1 missing"):
        gap.feed(ReplyChunk(2, "c"))

    dup = ReplyStreamChecker()
    dup.feed(ReplyChunk(0, "a"))
    dup.feed(ReplyChunk(1, "b"))
    with pytest.raises(StreamError, match="out of order"):
        dup.feed(ReplyChunk(0, "a"))


def test_subjects_are_versioned_and_reject_unsafe_tokens():
    assert subjects.escalate("large") == "xz.v1.escalate.large"
    assert subjects.worker_queue("large") == "xz-workers-large"
    assert subjects.cancel("abc", "ams") == "xz.v1.cancel.ams.abc"
    assert subjects.cancel("abc") == "xz.v1.cancel._.abc"
    assert subjects.is_cancel_subject("xz.v1.cancel.ams.abc")
    assert not subjects.is_cancel_subject("xz.v1.cancel.abc")
    assert not subjects.is_cancel_subject("xz.v1.cancel.a.b.c")
    assert subjects.heartbeat("large", "worker-1") == "xz.v1.worker.heartbeat.large.worker-1"
    for bad in ["a.b", "*", ">", "", "has space"]:
        with pytest.raises(subjects.SubjectError):
            subjects.escalate(bad)
    # a turn id that is not a subject token gets no cancel subject, instead of a wrong one
    assert EscalationRequest("a.b", "d", [{"role": "user", "content": "x"}]).cancel_subject == ""
