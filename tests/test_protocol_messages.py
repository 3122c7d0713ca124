"""Device protocol: message parsing/serialization and binary framing v1/v2/v3 both ways."""

from __future__ import annotations

import json
import struct

import pytest

from edge.opus import OpusDecoder, encode_pcm
from edge.device.protocol import (
    Abort, Alert, AudioParams, DeviceHello, Error, Listen, Llm, McpIn, McpOut, ProtocolError, ServerHello, Stt,
    System, Tts, check_version, pack_audio, parse_device_message, parse_server_message, serialize, unpack_audio,
)
from tests.fixtures_edge import tone

FIRMWARE_HELLO = ('{"type":"hello","version":3,"features":{"mcp":true},"transport":"websocket",'
                  '"audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}')


def test_firmware_hello_parses():
    msg = parse_device_message(FIRMWARE_HELLO)
    assert isinstance(msg, DeviceHello)
    assert msg.version == 3 and msg.mcp and msg.transport == "websocket"
    assert msg.audio_params == AudioParams("opus", 16000, 1, 60)
    bare = parse_device_message('{"type":"hello"}')  # older firmware: no features, defaults apply
    assert isinstance(bare, DeviceHello) and not bare.mcp and bare.audio_params.sample_rate == 16000


@pytest.mark.parametrize("text, expected", [
    ('{"session_id":"s","type":"listen","state":"start","mode":"auto"}', Listen("start", "auto", None, "s")),
    ('{"type":"listen","state":"start","mode":"manual"}', Listen("start", "manual")),
    ('{"type":"listen","state":"start","mode":"realtime"}', Listen("start", "realtime")),
    ('{"type":"listen","state":"stop"}', Listen("stop")),
    ('{"type":"listen","state":"detect","text":"你好小智"}', Listen("detect", None, "你好小智")),
    ('{"type":"abort","reason":"wake_word_detected"}', Abort("wake_word_detected")),
    ('{"type":"abort"}', Abort()),
    ('{"type":"mcp","payload":{"jsonrpc":"2.0","id":1,"result":{}}}',
     McpIn({"jsonrpc": "2.0", "id": 1, "result": {}})),
])
def test_device_messages_parse(text, expected):
    assert parse_device_message(text) == expected


@pytest.mark.parametrize("text, kind", [
    ("{not json", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('{"state":"start"}', "no_type"),
    ('{"type":""}', "no_type"),
    ('{"type":"iot","descriptors":[]}', "unknown_type"),
    ('{"type":"listen"}', "bad_field"),
    ('{"type":"listen","state":"pause"}', "bad_field"),
    ('{"type":"listen","state":"start","mode":"push"}', "bad_field"),
    ('{"type":"listen","state":"detect","text":42}', "bad_field"),
    ('{"type":"mcp","payload":"x"}', "bad_field"),
    ('{"type":"mcp"}', "bad_field"),
    ('{"type":"hello","audio_params":{"format":"pcm"}}', "bad_field"),
    ('{"type":"hello","version":true}', "bad_field"),
])
def test_bad_device_messages_raise_protocol_error(text, kind):
    with pytest.raises(ProtocolError) as err:
        parse_device_message(text)
    assert err.value.kind == kind and err.value.detail


def test_server_messages_serialize_like_the_firmware_expects():
    hello = json.loads(serialize(ServerHello("abc", AudioParams("opus", 24000, 1, 60))))
    assert hello == {"type": "hello", "session_id": "abc", "transport": "websocket",
                     "audio_params": {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60}}
    assert json.loads(serialize(Stt("hi"), "s1")) == {"type": "stt", "session_id": "s1", "text": "hi"}
    assert json.loads(serialize(Llm("happy", "😀"))) == {"type": "llm", "emotion": "happy", "text": "😀"}
    assert json.loads(serialize(Tts("start"))) == {"type": "tts", "state": "start"}
    assert json.loads(serialize(Tts("sentence_start", "Hi."))) == {"type": "tts", "state": "sentence_start",
                                                                     "text": "Hi."}
    assert json.loads(serialize(McpOut({"jsonrpc": "2.0", "id": 1, "method": "initialize"})))["payload"]["id"] == 1
    assert json.loads(serialize(System("reboot"))) == {"type": "system", "command": "reboot"}
    assert json.loads(serialize(Alert("warn", "low battery", "sad")))["status"] == "warn"
    assert json.loads(serialize(Error("bad_json", "x")))["type"] == "error"


# Server messages as the firmware's documentation shows them (main/protocols, docs/websocket.md).
GOLDEN_SERVER = [
    ('{"type":"hello","transport":"websocket","session_id":"s1",'
     '"audio_params":{"format":"opus","sample_rate":24000,"channels":1,"frame_duration":60}}',
     ServerHello("s1", AudioParams("opus", 24000, 1, 60))),
    ('{"session_id":"s1","type":"stt","text":"what time is it"}', Stt("what time is it")),
    ('{"session_id":"s1","type":"llm","emotion":"happy","text":"😀"}', Llm("happy", "😀")),
    ('{"type":"tts","state":"start"}', Tts("start")),
    ('{"type":"tts","state":"sentence_start","text":"It is noon."}', Tts("sentence_start", "It is noon.")),
    ('{"type":"tts","state":"stop"}', Tts("stop")),
    ('{"type":"mcp","payload":{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":""}}}',
     McpOut({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": ""}})),
    ('{"type":"system","command":"reboot"}', System("reboot")),
    ('{"type":"alert","status":"warning","message":"low battery","emotion":"sad"}',
     Alert("warning", "low battery", "sad")),
]


@pytest.mark.parametrize("text, expected", GOLDEN_SERVER)
def test_server_messages_round_trip_through_golden_firmware_json(text, expected):
    msg = parse_server_message(text)
    assert msg == expected
    session = json.loads(text).get("session_id")
    assert json.loads(serialize(msg, session)) == json.loads(text)  # serialize(parse(x)) == x
    assert parse_server_message(serialize(msg, "s9")) == msg  # parse(serialize(m)) == m


@pytest.mark.parametrize("text", [FIRMWARE_HELLO,
                                  '{"session_id":"s","type":"listen","state":"start","mode":"auto"}',
                                  '{"session_id":"s","type":"listen","state":"detect","text":"你好小明"}',
                                  '{"session_id":"s","type":"abort","reason":"wake_word_detected"}',
                                  '{"session_id":"s","type":"mcp","payload":{"jsonrpc":"2.0","id":2,"result":{}}}'])
def test_device_messages_round_trip_through_golden_firmware_json(text):
    msg = parse_device_message(text)
    assert msg.to_json() == json.loads(text)  # nothing lost, nothing invented
    assert parse_device_message(json.dumps(msg.to_json())) == msg


def test_llm_says_who_answered_and_bad_server_json_is_a_protocol_error():
    assert json.loads(serialize(Llm("neutral", "🙂", "cloud")))["answered_by"] == "cloud"
    for text, kind in (('{"type":"tts"}', "bad_field"), ('{"type":"tts","state":1}', "bad_field"),
                       ('{"type":"custom"}', "unknown_type"), ("[]", "bad_json")):
        with pytest.raises(ProtocolError) as err:
            parse_server_message(text)
        assert err.value.kind == kind


# ---------------------------------------------------------------- framing
def _opus_packet() -> bytes:
    return encode_pcm(tone(60), 16000, 60)[0]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_framing_round_trip_carries_decodable_opus(version):
    packet = _opus_packet()
    framed = pack_audio(version, packet, timestamp_ms=123456)
    kind, payload, ts = unpack_audio(version, framed)
    assert kind == "opus" and payload == packet
    assert ts == (123456 if version == 2 else 0)
    assert OpusDecoder(16000).decode(payload).size == 960


def test_framing_layouts_match_the_firmware_structs():
    payload = b"\x01\x02\x03"
    assert pack_audio(1, payload) == payload
    v2 = pack_audio(2, payload, timestamp_ms=7)
    assert v2[:16] == struct.pack("!HHIII", 2, 0, 0, 7, 3) and v2[16:] == payload
    v3 = pack_audio(3, payload)
    assert v3 == b"\x00\x00\x00\x03" + payload
    # frames built the way the firmware builds them (htons/htonl) decode here
    fw_v2 = struct.pack("!HHIII", 2, 0, 0, 99, 3) + payload
    assert unpack_audio(2, fw_v2) == ("opus", payload, 99)
    assert unpack_audio(3, struct.pack("!BBH", 0, 0, 3) + payload) == ("opus", payload, 0)
    assert unpack_audio(2, pack_audio(2, b"{}", kind="json"))[0] == "json"
    assert unpack_audio(3, pack_audio(3, b"{}", kind="json"))[0] == "json"


@pytest.mark.parametrize("version, data", [
    (1, b""),
    (2, b"\x00" * 15),  # shorter than the header
    (2, struct.pack("!HHIII", 2, 0, 0, 0, 10) + b"abc"),  # size says 10, has 3
    (2, struct.pack("!HHIII", 2, 0, 0, 0, 1) + b"abc"),  # trailing bytes
    (2, struct.pack("!HHIII", 2, 9, 0, 0, 1) + b"a"),  # unknown type
    (3, b"\x00\x00\x00"),
    (3, struct.pack("!BBH", 0, 0, 5) + b"ab"),
    (3, struct.pack("!BBH", 7, 0, 1) + b"a"),
    (4, b"abc"),
])
def test_bad_frames_raise(version, data):
    with pytest.raises(ProtocolError):
        unpack_audio(version, data)


def test_pack_checks_sizes_and_versions():
    with pytest.raises(ProtocolError):
        pack_audio(3, b"x" * 70000)
    with pytest.raises(ProtocolError):
        pack_audio(5, b"x")
    with pytest.raises(ProtocolError):
        pack_audio(1, b"{}", kind="json")


@pytest.mark.parametrize("value, expected", [(None, 1), ("", 1), ("1", 1), ("2", 2), ("3", 3), (3, 3)])
def test_protocol_version_header(value, expected):
    assert check_version(value) == expected


@pytest.mark.parametrize("value", ["0", "4", "abc", "2.5"])
def test_bad_protocol_version_header(value):
    with pytest.raises(ProtocolError) as err:
        check_version(value)
    assert err.value.kind == "bad_version"
