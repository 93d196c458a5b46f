"""Beta-protocol clients on a GA provider: translated both ways, validated against openai-python's beta models.

The simulator speaks GA only (it refuses the beta selection, as providers do), so every beta session here that
works proves the gateway translated it and sent no `OpenAI-Beta` upstream.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import orjson
import websockets
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

from bifrost_rt.dialects import beta

from conftest import VIRTUAL_KEY, recv_json, recv_until
from test_gateway_clients import client_for, tone_pcm16

BETA_EVENT = TypeAdapter(BetaServerEvent)
GA_EVENT = TypeAdapter(RealtimeServerEvent)
GA_CLIENT_EVENT = TypeAdapter(RealtimeClientEvent)

# Fields a beta client receives that the beta models do not declare, passed on as unknown fields are: delta
# padding (GA adds it), the session's `object`/`expires_at` (beta servers sent them too), the function name GA
# adds to `response.function_call_arguments.done`.
ALLOWED_EXTRAS = {
    "ResponseAudioDeltaEvent": {"obfuscation"},
    "ResponseTextDeltaEvent": {"obfuscation"},
    "ResponseAudioTranscriptDeltaEvent": {"obfuscation"},
    "ResponseFunctionCallArgumentsDeltaEvent": {"obfuscation"},
    "ConversationItemInputAudioTranscriptionDeltaEvent": {"obfuscation"},
    "Session": {"object", "expires_at"},
    "ResponseFunctionCallArgumentsDoneEvent": {"name"},
}

# GA events the translation handles but the simulator never emits over a WebSocket (MCP, diarization, DTMF, and
# the WebRTC-only output buffer events, which carry the same names in both protocols).
NOT_EMITTED = beta.DROPPED_FOR_BETA - {"conversation.item.done"}

TOOLS = [{"type": "function", "name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {}}}]


def undeclared(model: Any, path: str = "") -> list[str]:
    """Every field in the validated model (recursively) that its class does not declare."""
    found: list[str] = []
    if isinstance(model, BaseModel):
        for name in model.model_extra or {}:
            if name not in ALLOWED_EXTRAS.get(type(model).__name__, ()):
                found.append(f"{path}.{name}")
        for name in type(model).model_fields:
            found += undeclared(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for index, item in enumerate(model):
            found += undeclared(item, f"{path}[{index}]")
    return found


def assert_beta(text: str) -> Any:
    event = BETA_EVENT.validate_json(text)
    assert not undeclared(event), (undeclared(event), text[:300])
    return event


async def ga_session_events(simulator) -> list[str]:
    """Every server event of a GA session that exercises what the simulator can do, as raw text."""
    received: list[str] = []
    url = f"{simulator.ws_url}/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer sk-test"}) as ws:

        async def send(event: dict[str, Any]) -> None:
            await ws.send(json.dumps(event))

        async def until(event_type: str) -> None:
            while True:
                text = await asyncio.wait_for(ws.recv(), 10)
                received.append(text)
                if json.loads(text)["type"] == event_type:
                    return

        await until("session.created")
        await send({"type": "session.update", "session": {"type": "realtime", "tools": TOOLS, "audio": {"input": {
            "turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}}}})
        await until("session.updated")
        await send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}})
        await until("conversation.item.done")
        await send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await until("response.done")
        audio = base64.b64encode(tone_pcm16(400)).decode()
        await send({"type": "input_audio_buffer.append", "audio": audio})
        await send({"type": "input_audio_buffer.commit"})
        await until("input_audio_buffer.committed")
        await send({"type": "response.create"})  # audio out, with its transcript
        await until("response.done")
        await send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "get_weather in Paris"}]}})
        await send({"type": "response.create"})
        await until("response.function_call_arguments.done")
        await until("response.done")
        done = orjson.loads(received[-1])
        call = done["response"]["output"][0]
        await send({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "{}"}})
        await send({"type": "response.create"})
        await until("response.done")
        answer = orjson.loads(received[-1])["response"]["output"][0]["id"]
        await send({"type": "conversation.item.retrieve", "item_id": answer})
        await until("conversation.item.retrieved")
        await send({"type": "conversation.item.truncate", "item_id": answer, "content_index": 0, "audio_end_ms": 10})
        await until("conversation.item.truncated")
        await send({"type": "conversation.item.delete", "item_id": answer})
        await until("conversation.item.deleted")
        await send({"type": "input_audio_buffer.clear"})
        await until("input_audio_buffer.cleared")
        await send({"type": "response.cancel"})  # nothing to cancel: an error event
        await until("error")
        # Server VAD: speech is detected, committed and answered by the provider.
        await send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}}}})
        await until("session.updated")
        silence = base64.b64encode(bytes(24000)).decode()
        await send({"type": "input_audio_buffer.append", "audio": audio})
        await send({"type": "input_audio_buffer.append", "audio": silence})
        await until("response.done")
    return received


async def test_every_ga_event_the_simulator_emits_reaches_a_beta_client_in_beta_shape(simulator) -> None:
    received = await ga_session_events(simulator)
    seen_ga = {orjson.loads(text)["type"] for text in received}
    seen_beta: set[str] = set()
    for text in received:
        GA_EVENT.validate_json(text)  # the simulator's own output is GA
        translated = beta.BETA_CLIENT.outbound(text)
        if orjson.loads(text)["type"] in beta.DROPPED_FOR_BETA:
            assert translated == []
            continue
        assert len(translated) == 1
        event = assert_beta(translated[0])  # type: ignore[arg-type]
        seen_beta.add(event.type)
        # Back through the provider side of the same mapping: GA again (what a beta provider's events become).
        for back in beta.BETA_PROVIDER.inbound(translated[0]):  # type: ignore[arg-type]
            GA_EVENT.validate_json(back)
    translated_names = set(beta._RENAMED_SERVER) | set(beta._SERVER_TO_BETA)
    missing = translated_names - seen_ga - NOT_EMITTED
    assert not missing, f"the scenario no longer exercises {missing}"
    assert {"response.audio.delta", "response.text.delta", "response.audio_transcript.delta", "conversation.item.created",
            "conversation.item.input_audio_transcription.completed", "input_audio_buffer.speech_started"} <= seen_beta
    assert not seen_beta & set(beta._RENAMED_SERVER)


def test_beta_client_events_become_valid_ga_events() -> None:
    events = [
        {"type": "session.update", "session": {
            "modalities": ["text", "audio"], "instructions": "Be brief.", "voice": "verse", "input_audio_format": "g711_ulaw",
            "output_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1"}, "turn_detection": {"type": "server_vad", "threshold": 0.6},
            "input_audio_noise_reduction": {"type": "near_field"}, "tools": TOOLS, "tool_choice": "auto", "temperature": 0.7,
            "max_response_output_tokens": 200, "speed": 1.1}},
        {"type": "transcription_session.update", "session": {"input_audio_format": "pcm16", "input_audio_transcription": {"model": "gpt-4o-transcribe"}, "turn_detection": None}},
        {"type": "response.create", "response": {"modalities": ["text"], "voice": "alloy", "output_audio_format": "g711_alaw", "temperature": 0.9,
                                                 "max_response_output_tokens": "inf", "metadata": {"purpose": "x"}, "conversation": "none"}},
        {"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "Earlier answer"}]}},
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}},
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
    ]
    translated = [beta.BETA_CLIENT.inbound(orjson.dumps(event).decode())[0] for event in events]
    parsed = [GA_CLIENT_EVENT.validate_json(text) for text in translated]
    session = parsed[0].session
    assert session.type == "realtime" and session.output_modalities == ["audio"]
    assert session.audio.input.format.type == "audio/pcmu" and session.audio.output.format.type == "audio/pcm"
    assert session.audio.output.voice == "verse" and session.audio.output.speed == 1.1
    assert session.audio.input.transcription.model == "whisper-1" and session.audio.input.turn_detection.threshold == 0.6
    assert session.audio.input.noise_reduction.type == "near_field" and session.max_output_tokens == 200
    assert "temperature" not in translated[0]
    assert parsed[1].type == "session.update" and parsed[1].session.type == "transcription"
    assert parsed[1].session.audio.input.transcription.model == "gpt-4o-transcribe"
    response = parsed[2].response
    assert response.output_modalities == ["text"] and response.audio.output.voice == "alloy" and response.audio.output.format.type == "audio/pcma"
    assert response.max_output_tokens == "inf" and response.conversation == "none" and "temperature" not in translated[2]
    assert parsed[3].item.content[0].type == "output_text"
    # What needs no translation is the very same string (the hot path).
    audio = orjson.dumps(events[-1]).decode()
    assert beta.BETA_CLIENT.inbound(audio)[0] is audio


def test_deltas_are_renamed_without_parsing_their_payload() -> None:
    delta = '{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"AAAA"}'
    assert beta.BETA_CLIENT.outbound(delta) == [delta.replace("response.output_audio.delta", "response.audio.delta")]
    late = '{"event_id":"event_1","type":"response.output_text.delta","response_id":"r","item_id":"i","output_index":0,"content_index":0,"delta":"hi"}'
    assert orjson.loads(beta.BETA_CLIENT.outbound(late)[0])["type"] == "response.text.delta"
    unknown = '{"type":"some.future.event","x":1}'
    assert beta.BETA_CLIENT.outbound(unknown)[0] is unknown


async def beta_turns(conn) -> list[list[Any]]:
    """Text, audio and tool turns from a beta connection; the SDK parses every event into its beta models."""

    async def until_done() -> list[Any]:
        events = []
        async for event in conn:
            events.append(event)
            if event.type == "response.done":
                return events
        raise AssertionError("closed before response.done")

    await conn.session.update(session={"modalities": ["text"], "turn_detection": None, "tools": TOOLS,
                                       "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"}})
    await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]})
    await conn.response.create()
    text = await until_done()
    audio = tone_pcm16(600)
    await conn.input_audio_buffer.append(audio=base64.b64encode(audio).decode())
    await conn.input_audio_buffer.commit()
    await conn.response.create(response={"modalities": ["text", "audio"], "voice": "alloy"})
    spoken = await until_done()
    await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "call get_weather for Paris"}]})
    await conn.response.create()
    tool = await until_done()
    return [text, spoken, tool]


async def ga_turns(conn) -> None:
    """The same turns from a GA client."""

    async def until_done() -> None:
        async for event in conn:
            if event.type == "response.done":
                return

    await conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "tools": TOOLS,
                                       "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}}})
    await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]})
    await conn.response.create()
    await until_done()
    audio = tone_pcm16(600)
    await conn.input_audio_buffer.append(audio=base64.b64encode(audio).decode())
    await conn.input_audio_buffer.commit()
    await conn.response.create(response={"output_modalities": ["audio"], "audio": {"output": {"voice": "alloy"}}})
    await until_done()
    await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "call get_weather for Paris"}]})
    await conn.response.create()
    await until_done()


def comparable(record) -> dict[str, Any]:
    """A turn record without what differs between any two sessions (ids, clocks)."""
    return {
        "status": record.status, "model": record.model, "provider": record.provider, "principal": record.principal,
        "usage": record.usage, "cost": record.cost, "output": {**record.output, "tool_calls": [{**c, "call_id": None} for c in record.output.get("tool_calls", [])]},
        "inputs": [{**i, "item_id": None} for i in record.inputs], "metadata": record.metadata,
        "transcription_usage": [{**u, "item_id": None} for u in record.transcription_usage],
    }


async def test_openai_python_beta_client_and_a_ga_client_share_one_gateway_and_log_the_same_turns(gateway) -> None:
    server, sink = gateway
    async with client_for(server).beta.realtime.connect(model="gpt-realtime") as conn:
        text, spoken, tool = await beta_turns(conn)
    beta_records = sink.wait_for(3)
    async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
        await ga_turns(conn)
    records = sink.wait_for(6)
    ga_records = records[3:]

    assert [e.type for e in text if "text" in e.type] == ["response.text.delta"] * (len([e for e in text if e.type == "response.text.delta"])) + ["response.text.done"]
    assert any(e.type == "response.audio.delta" for e in spoken) and any(e.type == "response.audio_transcript.done" for e in spoken)
    assert any(e.type == "conversation.item.created" for e in text)
    assert spoken[-1].response.modalities == ["text", "audio"] and spoken[-1].response.output[0].content[0].type == "audio"
    assert text[-1].response.output[0].content[0].type == "text"
    assert any(e.type == "response.function_call_arguments.done" for e in tool)
    for events in (text, spoken, tool):
        for event in events:
            assert not undeclared(event), (event.type, undeclared(event))

    assert [comparable(r) for r in beta_records] == [comparable(r) for r in ga_records]
    assert all(r.status == "completed" and r.cost["total"] > 0 for r in beta_records)


async def test_beta_subprotocol_from_a_browser_gets_the_beta_session(gateway) -> None:
    server, _ = gateway
    protocols = ["realtime", f"openai-insecure-api-key.{VIRTUAL_KEY}", "openai-beta.realtime-v1"]
    async with websockets.connect(f"{server.ws_url}/v1/realtime?model=gpt-realtime", subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        created = await recv_json(ws)
        event = assert_beta(json.dumps(created))
        assert event.type == "session.created" and event.session.modalities == ["text", "audio"]
        assert event.session.input_audio_format == "pcm16" and "audio" not in created["session"]
        await ws.send(json.dumps({"type": "session.update", "session": {"modalities": ["text"], "instructions": "Short."}}))
        updated = await recv_json(ws)
        assert updated["type"] == "session.updated" and updated["session"]["modalities"] == ["text"]
        assert updated["session"]["instructions"] == "Short."
        await ws.send(b"\x00binary")  # refused as for a GA client, and the session goes on
        error = await recv_json(ws)
        assert error["type"] == "error" and error["error"]["code"] == "invalid_event"
        await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}))
        events = await recv_until(ws, "response.done")
        for event in events:
            assert_beta(json.dumps(event))
        assert "response.text.delta" in {e["type"] for e in events}


async def test_beta_header_client_is_never_forwarded_upstream_as_beta(gateway) -> None:
    server, _ = gateway
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}", "OpenAI-Beta": "realtime=v1"}
    async with websockets.connect(f"{server.ws_url}/v1/realtime?model=gpt-realtime", additional_headers=headers) as ws:
        created = await recv_json(ws)
        # The simulator closes a beta-shaped handshake with beta_api_shape_disabled; this one became GA upstream.
        assert created["type"] == "session.created" and "modalities" in created["session"]
