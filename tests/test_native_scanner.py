"""The native frame scanner against orjson, and the native turn tracker."""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
import pytest

from bifrost_rt import _native

AUDIO_B64 = base64.b64encode(os.urandom(4800)).decode()  # 100 ms of pcm16 at 24 kHz: 6400 chars

GA_SESSION = {
    "type": "realtime",
    "object": "realtime.session",
    "id": "sess_C9G5QPteg4UIbotdKLoYQ",
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "instructions": "Your knowledge cutoff is 2023-10. Be \"helpful\" \\ brief.\nAnswer in English.",
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "tracing": None,
    "truncation": "auto",
    "prompt": None,
    "expires_at": 1767233035,
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
                "idle_timeout_ms": None,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
    },
    "include": None,
}

RESPONSE_DONE = {
    "type": "response.done",
    "event_id": "event_CsZyNdzXT4hWhvq6Pv8ad",
    "response": {
        "object": "realtime.response",
        "id": "resp_CsZyL5IuqSgPEut0cI82K",
        "status": "completed",
        "status_details": None,
        "output": [
            {
                "id": "item_CsZyLdZ3sHZ2DniSNrTKs",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "Claro, …"}],
            }
        ],
        "conversation_id": "conv_CsZyGLqmGCDohCYjjDPqf",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        "usage": {
            "total_tokens": 320,
            "input_tokens": 132,
            "output_tokens": 188,
            "input_token_details": {
                "text_tokens": 59,
                "audio_tokens": 73,
                "image_tokens": 0,
                "cached_tokens": 64,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 64, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": 41, "audio_tokens": 147},
        },
        "metadata": None,
    },
}

ITEM = {"id": "item_CsZyLdZ3sHZ2DniSNrTKs", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
IDS = {"response_id": "resp_CsZyL5IuqSgPEut0cI82K", "item_id": "item_CsZyLdZ3sHZ2DniSNrTKs", "output_index": 0, "content_index": 0}

SERVER_EVENTS: list[dict[str, Any]] = [
    {"type": "session.created", "event_id": "event_1", "session": GA_SESSION},
    {"type": "session.updated", "event_id": "event_2", "session": {**GA_SESSION, "output_modalities": ["text"]}},
    {"type": "conversation.created", "event_id": "event_3", "conversation": {"id": "conv_1", "object": "realtime.conversation"}},
    {"type": "conversation.item.added", "event_id": "event_4", "previous_item_id": None, "item": ITEM},
    {"type": "conversation.item.done", "event_id": "event_5", "previous_item_id": "item_0", "item": {**ITEM, "status": "completed"}},
    {"type": "conversation.item.created", "event_id": "event_6", "previous_item_id": "item_0", "item": ITEM},
    {"type": "conversation.item.retrieved", "event_id": "event_7", "item": {"id": "item_u", "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": AUDIO_B64, "transcript": "hi"}]}},
    {"type": "conversation.item.truncated", "event_id": "event_8", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
    {"type": "conversation.item.deleted", "event_id": "event_9", "item_id": "item_1"},
    {"type": "conversation.item.input_audio_transcription.delta", "event_id": "event_10", "item_id": "item_u", "content_index": 0, "delta": "Hel", "obfuscation": "aB3dE5fG7h"},
    {"type": "conversation.item.input_audio_transcription.completed", "event_id": "event_11", "item_id": "item_u", "content_index": 0, "transcript": "Hello.", "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 3, "total_tokens": 17, "input_token_details": {"text_tokens": 0, "audio_tokens": 14}}},
    {"type": "conversation.item.input_audio_transcription.failed", "event_id": "event_12", "item_id": "item_u", "content_index": 0, "error": {"type": "transcription_error", "code": "audio_unintelligible", "message": "bad audio", "param": None}},
    {"type": "conversation.item.input_audio_transcription.segment", "event_id": "event_13", "id": "seg_1", "item_id": "item_u", "content_index": 0, "text": "hi", "speaker": "A", "start": 0.0, "end": 0.4},
    {"type": "input_audio_buffer.committed", "event_id": "event_14", "previous_item_id": None, "item_id": "item_u"},
    {"type": "input_audio_buffer.cleared", "event_id": "event_15"},
    {"type": "input_audio_buffer.speech_started", "event_id": "event_16", "audio_start_ms": 1000, "item_id": "item_u"},
    {"type": "input_audio_buffer.speech_stopped", "event_id": "event_17", "audio_end_ms": 2000, "item_id": "item_u"},
    {"type": "input_audio_buffer.timeout_triggered", "event_id": "event_18", "audio_start_ms": 0, "audio_end_ms": 5000, "item_id": "item_u"},
    {"type": "input_audio_buffer.dtmf_event_received", "event": "5", "received_at": 1767233035},
    {"type": "output_audio_buffer.started", "event_id": "event_19", "response_id": "resp_1"},
    {"type": "output_audio_buffer.stopped", "event_id": "event_20", "response_id": "resp_1"},
    {"type": "output_audio_buffer.cleared", "event_id": "event_21", "response_id": "resp_1"},
    {"type": "response.created", "event_id": "event_22", "response": {**RESPONSE_DONE["response"], "status": "in_progress", "output": [], "usage": None}},
    RESPONSE_DONE,
    {"type": "response.output_item.added", "event_id": "event_23", "response_id": "resp_1", "output_index": 0, "item": ITEM},
    {"type": "response.output_item.done", "event_id": "event_24", "response_id": "resp_1", "output_index": 0, "item": {**ITEM, "status": "completed"}},
    {"type": "response.content_part.added", "event_id": "event_25", **IDS, "part": {"type": "audio", "transcript": ""}},
    {"type": "response.content_part.done", "event_id": "event_26", **IDS, "part": {"type": "audio", "transcript": "Hi there."}},
    {"type": "response.output_text.delta", "event_id": "event_27", **IDS, "delta": "Hi"},
    {"type": "response.output_text.done", "event_id": "event_28", **IDS, "text": "Hi there."},
    {"type": "response.output_audio.delta", "event_id": "event_29", **IDS, "delta": AUDIO_B64},
    {"type": "response.output_audio.done", "event_id": "event_30", **IDS},
    {"type": "response.output_audio_transcript.delta", "event_id": "event_31", **IDS, "delta": " there", "obfuscation": "xYz12"},
    {"type": "response.output_audio_transcript.done", "event_id": "event_32", **IDS, "transcript": "Hi there."},
    {"type": "response.function_call_arguments.delta", "event_id": "event_33", "response_id": "resp_1", "item_id": "item_f", "output_index": 1, "call_id": "call_1", "delta": "{\"city\":"},
    {"type": "response.function_call_arguments.done", "event_id": "event_34", "response_id": "resp_1", "item_id": "item_f", "output_index": 1, "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
    {"type": "rate_limits.updated", "event_id": "event_35", "rate_limits": [{"name": "tokens", "limit": 40000, "remaining": 38490, "reset_seconds": 2.265}]},
    {"type": "mcp_list_tools.in_progress", "event_id": "event_36", "item_id": "item_m"},
    {"type": "response.mcp_call_arguments.delta", "event_id": "event_37", "response_id": "resp_1", "item_id": "item_m", "output_index": 0, "delta": "{}", "obfuscation": "q"},
    {"type": "response.mcp_call.completed", "event_id": "event_38", "item_id": "item_m", "output_index": 0},
    {"type": "error", "event_id": "event_890", "error": {"type": "invalid_request_error", "code": "invalid_event", "message": "The 'type' field is missing.", "param": None, "event_id": "event_567"}},
    # Beta names.
    {"type": "response.text.delta", "event_id": "event_39", **IDS, "delta": "Hi"},
    {"type": "response.audio.delta", "event_id": "event_40", **IDS, "delta": AUDIO_B64[:640]},
    {"type": "response.audio_transcript.delta", "event_id": "event_41", **IDS, "delta": "Hi"},
    {"type": "transcription_session.updated", "event_id": "event_42", "session": {"input_audio_format": "pcm16"}},
]

CLIENT_EVENTS: list[dict[str, Any]] = [
    {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"]}},
    {"type": "input_audio_buffer.append", "audio": AUDIO_B64},
    {"type": "input_audio_buffer.append", "event_id": "evt_c1", "audio": AUDIO_B64[:1280]},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}},
    {"type": "conversation.item.create", "previous_item_id": "root", "item": {"type": "function_call_output", "call_id": "call_123", "output": "{\"temp\":21}"}},
    {"type": "conversation.item.retrieve", "item_id": "item_1"},
    {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
    {"type": "conversation.item.delete", "item_id": "item_1"},
    {"type": "response.create", "response": {"conversation": "none", "output_modalities": ["text"], "metadata": {"purpose": "summary"}}},
    {"type": "response.cancel", "response_id": "resp_1"},
    {"type": "output_audio_buffer.clear"},
    {"type": "transcription_session.update", "session": {"input_audio_transcription": {"model": "whisper-1"}}},
]

EDGE_FRAMES: list[str | bytes] = [
    '{"typ\\u0065":"response.output_text.delta","response_id":"resp_\\u00e9","delta":"a\\"b"}',
    '{"type":"x","event_id":"évènement_😀","item_id":"\\ud83d\\ude00\\u4e2d","call_id":"tab\\there\\/\\\\"}',
    '{"item":{"type":"function_call","event_id":"nested"},"response":{"type":"x","response_id":"nested"}}',
    '{"type":"x","extra":[{"type":"y","event_id":"nested"}],"event_id":"top"}',
    '{"type":"a","type":"b","event_id":"e1","event_id":null,"output_index":1,"output_index":"2"}',
    '{"type":"a","delta":"x","delta":5,"audio":"AAAA"}',
    '{"type":"a","delta":"x","audio":"AAAA"}',
    '{"type":"a","response":{"id":"r1"},"response":null}',
    '{"type":"a","response":{"id":"r1","status":"failed","metadata":{"k":"v"},"id":"r2"}}',
    '{"type":"a","response":{"metadata":null}}',
    '{"type":"a","output_index":-0,"content_index":9223372036854775807}',
    '{"type":"a","output_index":9223372036854775808,"content_index":-9223372036854775809}',
    '{"type":"a","output_index":1.0,"content_index":1e2}',
    '{"type":"a","output_index":true,"content_index":null}',
    '{"type":1}',
    '{"type":null}',
    '{"type":["x"]}',
    '{"event_id":"e"}',
    "{}",
    " \t\r\n{\"type\" : \"spaced\" , \"event_id\" :\"e\" } \n",
    '{"type":"a","big":18446744073709551616,"small":1e-400,"neg":-0.0e-0}',
    '{"type":"a","deep":' + "[" * 1023 + "]" * 1023 + "}",
    '{"type":"a","deep":' + "[" * 1024 + "]" * 1024 + "}",
    "[" * 1024 + "]" * 1024,
    "[" * 1025 + "]" * 1025,
    '{"type":"a","ctl":"\x7f"}',
    '{"type":"a","delta":"' + "A" * 1000 + '\\u00e9' + "B" * 1000 + '"}',
    # Not objects.
    "[]",
    '"response.done"',
    "1",
    "null",
    "true",
    # Invalid JSON.
    "",
    "   ",
    "{",
    '{"type"',
    '{"type":',
    '{"type":"a"',
    '{"type":"a"}}',
    '{"type":"a"} x',
    '{"type":"a"}{"type":"b"}',
    "{'type':'a'}",
    '{type:"a"}',
    '{"type":"a",}',
    '{"type":"a","x":[1,]}',
    '{"type":"a","x":[1 2]}',
    '{"type":"a" "x":1}',
    '{"type" "a"}',
    '{"type":"a","x":01}',
    '{"type":"a","x":1.}',
    '{"type":"a","x":.5}',
    '{"type":"a","x":1e}',
    '{"type":"a","x":-}',
    '{"type":"a","x":+1}',
    '{"type":"a","x":1e400}',
    '{"type":"a","x":NaN}',
    '{"type":"a","x":Infinity}',
    '{"type":"a","x":tru}',
    '{"type":"a","x":nul}',
    '{"type":"a","x":"\\x"}',
    '{"type":"a","x":"\\u12"}',
    '{"type":"a","x":"\\ud800"}',
    '{"type":"a","x":"\\udc00"}',
    '{"type":"a","x":"\\ud800\\u0041"}',
    '{"type":"a","x":"raw\ttab"}',
    '{"type":"a","x":"raw\nnewline"}',
    '{"type":"a","x":"nul\x00"}',
    '{"type":"a"}\x0b',
    "\ufeff{\"type\":\"a\"}",
    '{"type":"a","delta":"' + "A" * 1000 + '\x01"}',
    '{"type":"a","delta":"' + "A" * 1000,
    # Bytes that are not UTF-8.
    b'{"type":"\xff"}',
    b'{"type":"a","delta":"' + b"A" * 1000 + b'\xc3"}',
    b'{"type":"\xed\xa0\x80"}',
    b'{"type":"\xc0\xaf"}',
    b'{"type":"\xf4\x90\x80\x80"}',
    b"\xff",
]


def corpus() -> list[str | bytes]:
    frames: list[str | bytes] = [orjson.dumps(event).decode() for event in SERVER_EVENTS + CLIENT_EVENTS]
    frames += [orjson.dumps(event, option=orjson.OPT_INDENT_2).decode() for event in SERVER_EVENTS[:5]]
    return frames + EDGE_FRAMES


def as_bytes(frame: str | bytes) -> bytes:
    return frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass")


def string_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def int64_or_none(value: Any) -> int | None:
    if type(value) is int and -(2**63) <= value < 2**63:
        return value
    return None


def assert_matches_orjson(frame: str | bytes) -> None:
    info = _native.scan(frame)
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        assert info.type is None, frame
        assert info.unclassified_reason is not None
        assert info.unclassified_reason.startswith(("invalid JSON at byte ", "invalid UTF-8")), info
        assert (info.event_id, info.response_id, info.payload_field, info.payload_start) == (None, None, None, -1)
        return
    if not isinstance(obj, dict):
        assert info.type is None
        assert info.unclassified_reason == "not a JSON object"
        return
    if "type" not in obj:
        assert (info.type, info.unclassified_reason) == (None, "missing type")
    elif not isinstance(obj["type"], str):
        assert (info.type, info.unclassified_reason) == (None, "type is not a string")
    else:
        assert (info.type, info.unclassified_reason) == (obj["type"], None)
    for name in ("event_id", "response_id", "item_id", "call_id", "previous_item_id"):
        assert getattr(info, name) == string_or_none(obj.get(name)), name
    assert info.output_index == int64_or_none(obj.get("output_index"))
    assert info.content_index == int64_or_none(obj.get("content_index"))
    response = obj.get("response")
    assert info.has_response == isinstance(response, dict)
    response = response if isinstance(response, dict) else {}
    assert info.response_object_id == string_or_none(response.get("id"))
    assert info.response_status == string_or_none(response.get("status"))
    assert info.response_has_metadata == (response.get("metadata") is not None)
    field = next((name for name in ("delta", "audio") if isinstance(obj.get(name), str)), None)
    assert info.payload_field == field
    if field is None:
        assert (info.payload_start, info.payload_len) == (-1, 0)
    else:
        raw = as_bytes(frame)[info.payload_start : info.payload_start + info.payload_len]
        assert orjson.loads(b'"' + raw + b'"') == obj[field]


@pytest.mark.parametrize("frame", corpus(), ids=lambda frame: repr(frame)[:60])
def test_scan_agrees_with_orjson(frame: str | bytes) -> None:
    assert_matches_orjson(frame)
    if isinstance(frame, str):
        assert_matches_orjson(frame.encode())


def test_every_truncation_of_a_frame_is_invalid() -> None:
    frame = orjson.dumps(SERVER_EVENTS[0]).decode()
    for end in range(len(frame)):
        info = _native.scan(frame[:end])
        assert info.type is None and info.unclassified_reason.startswith("invalid JSON"), frame[:end]
    assert _native.scan(frame).type == "session.created"


def test_audio_delta_fields_and_payload_span() -> None:
    frame = orjson.dumps(SERVER_EVENTS[30]).decode()
    info = _native.scan(frame)
    assert info.type == "response.output_audio.delta"
    assert (info.event_id, info.response_id, info.item_id) == ("event_29", IDS["response_id"], IDS["item_id"])
    assert (info.output_index, info.content_index) == (0, 0)
    assert info.payload_field == "delta"
    assert info.payload_len == len(AUDIO_B64) == 6400
    assert frame.encode()[info.payload_start : info.payload_start + info.payload_len] == AUDIO_B64.encode()


def test_payload_span_counts_utf8_bytes_and_keeps_escapes() -> None:
    frame = '{"event_id":"évènement 😀","type":"response.output_text.delta","delta":"caf\\u00e9 \\"quoted\\" ünï"}'
    info = _native.scan(frame)
    raw = frame.encode()[info.payload_start : info.payload_start + info.payload_len]
    assert raw == 'caf\\u00e9 \\"quoted\\" ünï'.encode()
    assert info.payload_start == frame.encode().index(b'"delta":"') + len(b'"delta":"')
    assert info.event_id == "évènement 😀"


def test_audio_field_is_the_payload_of_appends() -> None:
    frame = orjson.dumps(CLIENT_EVENTS[1]).decode()
    info = _native.scan(frame)
    assert info.payload_field == "audio"
    assert frame[info.payload_start : info.payload_start + info.payload_len] == AUDIO_B64


def test_str_with_lone_surrogate_is_unclassified() -> None:
    info = _native.scan('{"type":"a\ud800"}')
    assert info.type is None
    assert info.unclassified_reason == "invalid UTF-8: lone surrogate"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads('{"type":"a\ud800"}')


@pytest.mark.parametrize("frame", [None, 1, bytearray(b"{}"), ["{}"]])
def test_other_argument_types_raise_type_error(frame: Any) -> None:
    with pytest.raises(TypeError):
        _native.scan(frame)
    with pytest.raises(TypeError):
        _native.Tracker().observe_server(frame)


def test_frame_info_is_read_only_and_has_a_repr() -> None:
    info = _native.scan('{"type":"response.created","event_id":"e\'1","response":{"id":"r","status":"in_progress","metadata":{}}}')
    with pytest.raises(AttributeError):
        info.type = "x"  # type: ignore[misc]
    assert repr(info) == (
        "FrameInfo(type='response.created', event_id=\"e'1\", has_response=True, "
        "response_object_id='r', response_status='in_progress', response_has_metadata=True)"
    )
    assert repr(_native.scan("[")) == "FrameInfo(type=None, unclassified_reason='invalid JSON at byte 1')"
    assert "payload_field='delta', payload_start=" in repr(_native.scan('{"type":"t","delta":"x"}'))


# Tracker


def server_frame(event_type: str, **fields: Any) -> str:
    return orjson.dumps({"type": event_type, "event_id": "event_x", **fields}).decode()


def ga_audio_turn(response_id: str = "resp_A") -> list[str]:
    """A server-VAD audio turn in the order a GA server sends it."""
    ids = {"response_id": response_id, "item_id": "item_A", "output_index": 0, "content_index": 0}
    audio = [AUDIO_B64, AUDIO_B64[:6396] + "AA==", AUDIO_B64[:1000] + "AAA="]
    return [
        server_frame("input_audio_buffer.speech_started", audio_start_ms=100, item_id="item_U"),
        server_frame("input_audio_buffer.speech_stopped", audio_end_ms=900, item_id="item_U"),
        server_frame("input_audio_buffer.committed", previous_item_id=None, item_id="item_U"),
        server_frame("conversation.item.added", previous_item_id=None, item={"id": "item_U", "type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": None}]}),
        server_frame("conversation.item.done", previous_item_id=None, item={"id": "item_U", "type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": None}]}),
        server_frame("response.created", response={"object": "realtime.response", "id": response_id, "status": "in_progress", "output": [], "usage": None, "metadata": None}),
        server_frame("response.output_item.added", response_id=response_id, output_index=0, item={"id": "item_A", "type": "message", "status": "in_progress", "role": "assistant", "content": []}),
        server_frame("conversation.item.added", previous_item_id="item_U", item={"id": "item_A", "type": "message", "role": "assistant", "content": []}),
        server_frame("response.content_part.added", **ids, part={"type": "audio", "transcript": ""}),
        server_frame("response.output_audio_transcript.delta", **ids, delta="Bonjour", obfuscation="f1Gh"),
        server_frame("response.output_audio.delta", **ids, delta=audio[0]),
        server_frame("response.output_audio_transcript.delta", **ids, delta=", ça va ?", obfuscation="xx"),
        server_frame("response.output_audio.delta", **ids, delta=audio[1]),
        server_frame("response.output_audio.delta", **ids, delta=audio[2]),
        server_frame("response.output_audio.done", **ids),
        server_frame("response.output_audio_transcript.done", **ids, transcript="Bonjour, ça va ?"),
        server_frame("response.content_part.done", **ids, part={"type": "audio", "transcript": "Bonjour, ça va ?"}),
        server_frame("response.output_item.done", response_id=response_id, output_index=0, item={"id": "item_A", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_audio", "transcript": "Bonjour, ça va ?"}]}),
        server_frame("conversation.item.done", previous_item_id="item_U", item={"id": "item_A", "type": "message", "role": "assistant", "content": []}),
        orjson.dumps({**RESPONSE_DONE, "response": {**RESPONSE_DONE["response"], "id": response_id}}).decode(),
        server_frame("rate_limits.updated", rate_limits=[{"name": "tokens", "limit": 40000, "remaining": 38490, "reset_seconds": 2.265}]),
    ]


def test_tracker_accumulates_a_ga_audio_turn() -> None:
    tracker = _native.Tracker()
    returned = [tracker.observe_server(frame) for frame in ga_audio_turn()]
    kinds = [None if info is None else info.type for info in returned]
    # The first delta of the response surfaces (for first-delta latency); later deltas do not.
    assert kinds[9] == "response.output_audio_transcript.delta"
    assert kinds[10:14] == [None, None, None, None]
    assert all(kind is not None for index, kind in enumerate(kinds) if not 10 <= index <= 13)
    assert kinds[19] == "response.done" and returned[19].response_object_id == "resp_A"
    assert tracker.open_responses() == ["resp_A"]

    output = tracker.take("resp_A")
    assert output is not None
    assert output.transcript == "Bonjour, ça va ?"
    assert not output.transcript_truncated
    assert (output.text, output.text_truncated) == ("", False)
    # 6400 chars → 4800 bytes; 6400 ending "==" → 4798; 1004 ending "=" → 251 * 3 - 1 = 752.
    assert output.audio_bytes == 4800 + 4798 + 752
    assert output.audio_bytes == sum(len(base64.b64decode(delta)) for delta in [AUDIO_B64, AUDIO_B64[:6396] + "AA==", AUDIO_B64[:1000] + "AAA="])
    assert output.audio_deltas == 3
    assert output.text_deltas == 2
    assert output.tool_calls == []
    assert tracker.take("resp_A") is None
    assert tracker.open_responses() == []


def test_tracker_text_turn_and_beta_names() -> None:
    tracker = _native.Tracker()
    ids = {"response_id": "resp_T", "item_id": "item_T", "output_index": 0, "content_index": 0}
    tracker.observe_server(server_frame("response.created", response={"id": "resp_T", "status": "in_progress"}))
    first = tracker.observe_server(server_frame("response.output_text.delta", **ids, delta="Hello"))
    assert first is not None and first.type == "response.output_text.delta" and first.payload_field == "delta"
    assert tracker.observe_server(server_frame("response.text.delta", **ids, delta=" \"world\"\n")) is None
    assert tracker.observe_server(server_frame("response.audio_transcript.delta", **ids, delta="beta")) is None
    assert tracker.observe_server(server_frame("response.audio.delta", **ids, delta="AAAA")) is None
    assert tracker.observe_server(server_frame("response.output_text.done", **ids, text="Hello \"world\"\n")).type == "response.output_text.done"
    output = tracker.take("resp_T")
    assert output.text == "Hello \"world\"\n"
    assert output.transcript == "beta"
    assert (output.audio_bytes, output.audio_deltas, output.text_deltas) == (3, 1, 3)


def test_tracker_function_call() -> None:
    tracker = _native.Tracker()
    rid = "resp_F"
    frames = [
        server_frame("response.created", response={"id": rid, "status": "in_progress"}),
        server_frame("response.output_item.added", response_id=rid, output_index=0, item={"id": "item_F", "type": "function_call", "status": "in_progress", "name": "get_weather", "call_id": "call_9", "arguments": ""}),
        server_frame("response.function_call_arguments.delta", response_id=rid, item_id="item_F", output_index=0, call_id="call_9", delta='{"city":'),
        server_frame("response.function_call_arguments.delta", response_id=rid, item_id="item_F", output_index=0, call_id="call_9", delta='"Zürich"}'),
        server_frame("response.function_call_arguments.done", response_id=rid, item_id="item_F", output_index=0, call_id="call_9", name="get_weather", arguments='{"city":"Zürich"}'),
        server_frame("response.output_item.done", response_id=rid, output_index=0, item={"id": "item_F", "type": "function_call", "status": "completed", "name": "get_weather", "call_id": "call_9", "arguments": '{"city":"Zürich"}'}),
        server_frame("response.output_item.added", response_id=rid, output_index=1, item={"id": "item_G", "type": "function_call", "name": "lookup", "call_id": "call_10"}),
        server_frame("response.function_call_arguments.done", response_id=rid, item_id="item_G", output_index=1, call_id="call_10", name="lookup", arguments="{}"),
    ]
    returned = [tracker.observe_server(frame) for frame in frames]
    assert [info is None for info in returned] == [False, False, False, True, False, False, False, False]
    calls = tracker.take(rid).tool_calls
    assert [(c.call_id, c.name, c.item_id, c.arguments, c.truncated) for c in calls] == [
        ("call_9", "get_weather", "item_F", '{"city":"Zürich"}', False),
        ("call_10", "lookup", "item_G", "{}", False),
    ]
    assert repr(calls[1]) == "ToolCall(call_id='call_10', name='lookup', item_id='item_G', arguments='{}', truncated=False)"


def test_tracker_caps_cut_on_utf8_boundaries() -> None:
    tracker = _native.Tracker(max_text_bytes=10, max_arguments_bytes=8)
    ids = {"response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0}
    tracker.observe_server(server_frame("response.output_text.delta", **ids, delta="12345678"))
    tracker.observe_server(server_frame("response.output_text.delta", **ids, delta="€uro"))  # "€" is 3 bytes: 8 + 3 > 10
    tracker.observe_server(server_frame("response.output_text.delta", **ids, delta="!"))  # would fit, but must not follow the gap
    tracker.observe_server(server_frame("response.output_audio_transcript.delta", **ids, delta="0123456789"))
    tracker.observe_server(server_frame("response.function_call_arguments.delta", response_id="r", item_id="f", call_id="c", delta='{"k":"vvvv"}'))
    output = tracker.take("r")
    assert (output.text, output.text_truncated) == ("12345678", True)
    assert (output.transcript, output.transcript_truncated) == ("0123456789", False)
    assert output.text_deltas == 4
    assert [(c.arguments, c.truncated) for c in output.tool_calls] == [('{"k":"vv', True)]


def test_tracker_open_response_cap_keeps_counters_only() -> None:
    tracker = _native.Tracker(max_open_responses=2)
    for rid in ("r1", "r2", "r3"):
        assert tracker.observe_server(server_frame("response.output_text.delta", response_id=rid, delta="hi")) is not None
        assert tracker.observe_server(server_frame("response.output_audio.delta", response_id=rid, delta="AAAAAAAA")) is None
    assert tracker.open_responses() == ["r1", "r2", "r3"]
    over = tracker.take("r3")
    assert (over.text, over.text_truncated, over.transcript_truncated) == ("", True, True)
    assert (over.text_deltas, over.audio_deltas, over.audio_bytes) == (1, 1, 6)
    kept = tracker.take("r1")
    assert (kept.text, kept.text_truncated) == ("hi", False)


def test_tracker_returns_frame_info_for_everything_else() -> None:
    tracker = _native.Tracker()
    for frame in ("", "{", "[1]", '{"no":"type"}', b'{"type":"\xff"}'):
        info = tracker.observe_server(frame)
        assert info is not None and info.type is None and info.unclassified_reason
    delta_without_response = tracker.observe_server('{"type":"response.output_text.delta","delta":"x"}')
    assert delta_without_response is not None and delta_without_response.response_id is None
    assert tracker.open_responses() == []
    assert tracker.take("never") is None


def test_tracker_counts_input_audio() -> None:
    tracker = _native.Tracker()
    assert tracker.observe_client(orjson.dumps(CLIENT_EVENTS[1])) is None  # bytes input
    assert tracker.observe_client(orjson.dumps(CLIENT_EVENTS[2]).decode()) is None
    assert tracker.observe_client('{"type":"input_audio_buffer.append","audio":"AAA="}') is None
    commit = tracker.observe_client('{"type":"input_audio_buffer.commit","event_id":"c1"}')
    assert commit is not None and commit.type == "input_audio_buffer.commit" and commit.event_id == "c1"
    assert tracker.observe_client("not json").type is None
    assert tracker.take_input_audio_bytes() == 4800 + 960 + 2
    assert tracker.take_input_audio_bytes() == 0


def test_tracker_clear() -> None:
    tracker = _native.Tracker()
    tracker.observe_server(server_frame("response.output_text.delta", response_id="r", delta="x"))
    tracker.observe_client('{"type":"input_audio_buffer.append","audio":"AAAA"}')
    tracker.clear()
    assert tracker.open_responses() == []
    assert tracker.take_input_audio_bytes() == 0
    assert tracker.observe_server(server_frame("response.output_text.delta", response_id="r", delta="x")) is not None
