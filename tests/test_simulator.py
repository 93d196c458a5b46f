"""The built-in simulator, driven over real sockets by raw `websockets`, openai-python and openai-agents clients.

Every server event a raw client receives is validated against openai-python's GA `RealtimeServerEvent` union and
its type recorded; the last test checks that the scenarios covered every type in `EMITTED_EVENT_TYPES`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pydantic
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from websockets.exceptions import ConnectionClosed

from bifrost_rt.tools.simulator import EMITTED_EVENT_TYPES, SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator.audio import PCMA, PCMU, encode, speech_level
from bifrost_rt.tools.simulator.config import DEFAULT_INSTRUCTIONS
from bifrost_rt.tools.simulator.response import FAULT_AFTER_DELTAS
from bifrost_rt.tools.simulator.usage import text_tokens
from bifrost_rt.tools.simulator.vad import InputAudioBuffer, SpeechStarted, SpeechStopped, TurnDetection

from conftest import VIRTUAL_KEY
from servers import ServerThread

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
SEEN_TYPES: set[str] = set()
RECV_TIMEOUT_S = 10
PCM16_PER_MS = 48

FAST = SimulatorOptions(pace=0, audio_delta_ms=100, response_audio_ms=300)
# Real-time pacing with long answers, so a response is still streaming when the test interrupts it.
PACED = SimulatorOptions(pace=1, audio_delta_ms=50, response_audio_ms=20_000)


# --- servers and clients ---


@pytest.fixture(scope="module")
def fast() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(FAST)) as server:
        yield server


@pytest.fixture(scope="module")
def paced() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(PACED)) as server:
        yield server


def tone(ms: int, amplitude: int = 8000) -> bytes:
    samples = array("h", (round(amplitude * math.sin(2 * math.pi * 440 * n / 24000)) for n in range(ms * 24)))
    return samples.tobytes()


def silence(ms: int) -> bytes:
    return bytes(ms * PCM16_PER_MS)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Client:
    """A raw client: every event received is validated against the GA union and its type recorded."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0

    async def send(self, event_type: str, **fields: Any) -> str:
        self._next_id += 1
        event_id = f"evt_client_{self._next_id}"
        await self.ws.send(orjson.dumps({"type": event_type, "event_id": event_id, **fields}).decode())
        return event_id

    async def recv(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S)
        assert isinstance(frame, str), "the simulator sends text frames only"
        event = orjson.loads(frame)
        parsed = SERVER_EVENT.validate_python(event)
        assert parsed.type == event["type"]
        SEEN_TYPES.add(event["type"])
        return event

    async def expect(self, *types: str) -> list[dict[str, Any]]:
        events = [await self.recv() for _ in types]
        assert [e["type"] for e in events] == list(types)
        return events

    async def until(self, event_type: str) -> list[dict[str, Any]]:
        """Events up to and including the first `event_type`."""
        events = []
        while not events or events[-1]["type"] != event_type:
            events.append(await self.recv())
        return events

    async def closed(self) -> ConnectionClosed:
        """Reads until the server ends the connection; returns how it ended."""
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await self.recv()
        return info.value


@asynccontextmanager
async def connect(
    server: ServerThread, key: str | None = "sk-test", query: str = "?model=gpt-realtime", **options: Any
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(options.pop("headers", {}))
    async with websockets.connect(f"{server.ws_url}/v1/realtime{query}", additional_headers=headers,
                                  max_size=None, **options) as ws:
        yield Client(ws)


@asynccontextmanager
async def session_with(server: ServerThread, **session: Any) -> AsyncIterator[Client]:
    """A connected client past `session.created` and, when `session` fields are given, `session.updated`."""
    async with connect(server) as client:
        (created,) = await client.expect("session.created")
        assert created["session"]["type"] == "realtime"
        if session:
            await client.send("session.update", session={"type": "realtime", **session})
            await client.expect("session.updated")
        yield client


async def say(client: Client, text: str) -> dict[str, Any]:
    await client.send("conversation.item.create",
                      item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    added, _ = await client.expect("conversation.item.added", "conversation.item.done")
    return added["item"]


async def http(method: str, url: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    """(status, parsed JSON body) of a plain HTTP request, made off the event loop."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)

    def run() -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=RECV_TIMEOUT_S) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as failure:
            return failure.code, json.loads(failure.read())

    return await asyncio.to_thread(run)


def deltas(events: list[dict[str, Any]], event_type: str) -> str:
    return "".join(e["delta"] for e in events if e["type"] == event_type)


def audio_of(events: list[dict[str, Any]]) -> bytes:
    """Output audio bytes; each delta is base64 on its own (padding may end any of them)."""
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")


def without_deltas(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events if not e["type"].endswith(".delta")]


TEXT_TAIL = [
    "response.output_text.done", "response.content_part.done", "response.output_item.done",
    "conversation.item.done", "response.done", "rate_limits.updated",
]
AUDIO_TAIL = [
    "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
    "response.output_item.done", "conversation.item.done", "response.done", "rate_limits.updated",
]
RESPONSE_HEAD = [
    "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
]


# --- turns ---


async def test_text_turns_and_usage(fast: ServerThread) -> None:
    async with session_with(fast, output_modalities=["text"]) as client:
        user = await say(client, "hello there friend")
        assert user["content"] == [{"type": "input_text", "text": "hello there friend"}]
        await client.send("response.create")
        events = await client.until("rate_limits.updated")
        assert without_deltas(events) == RESPONSE_HEAD + TEXT_TAIL
        text_deltas = [e for e in events if e["type"] == "response.output_text.delta"]
        assert len(text_deltas) > 1 and all("obfuscation" in e for e in text_deltas)
        reply = "You said: hello there friend"
        assert deltas(events, "response.output_text.delta") == reply
        done = events[-2]["response"]
        assert done["status"] == "completed" and done["status_details"] is None
        assert done["output"][0]["content"] == [{"type": "output_text", "text": reply}]
        assert done["conversation_id"].startswith("conv_") and done["id"].startswith("resp_")

        instructions = text_tokens(DEFAULT_INSTRUCTIONS)
        first_input = instructions + text_tokens("hello there friend")
        assert done["usage"] == {
            "total_tokens": first_input + text_tokens(reply),
            "input_tokens": first_input,
            "output_tokens": text_tokens(reply),
            "input_token_details": {
                "text_tokens": first_input, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_tokens(reply), "audio_tokens": 0},
        }
        limits = events[-1]["rate_limits"][0]
        assert limits["name"] == "tokens" and limits["remaining"] == limits["limit"] - done["usage"]["total_tokens"]

        # The second turn re-reads the whole conversation; what earlier turns saw counts as cached.
        await say(client, "again")
        await client.send("response.create")
        usage = (await client.until("response.done"))[-1]["response"]["usage"]
        cached = first_input + text_tokens(reply)
        assert usage["input_tokens"] == cached + text_tokens("again")
        assert usage["input_token_details"]["cached_tokens"] == cached
        assert usage["input_token_details"]["cached_tokens_details"]["text_tokens"] == cached


async def test_server_vad_audio_turn_with_transcription(fast: ServerThread) -> None:
    async with session_with(fast, audio={"input": {"transcription": {"model": "gpt-4o-transcribe"}}}) as client:
        # 500 ms silence, 600 ms speech, 300 ms silence: speech starts at 500 (reported 300 ms earlier, the prefix
        # padding) and stops after the default 200 ms of silence.
        await client.send("input_audio_buffer.append", audio=b64(silence(500) + tone(600) + silence(300)))
        events = await client.until("rate_limits.updated")
        started, stopped, committed, added, done = events[:5]
        assert [started["type"], stopped["type"], committed["type"], added["type"], done["type"]] == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
        ]
        assert started["audio_start_ms"] == 200 and stopped["audio_end_ms"] == 1300
        item_id = started["item_id"]
        assert stopped["item_id"] == committed["item_id"] == added["item"]["id"] == item_id
        assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]

        transcription = [e for e in events if e["type"].startswith("conversation.item.input_audio_transcription")]
        assert transcription[-1]["type"] == "conversation.item.input_audio_transcription.completed"
        assert "".join(e["delta"] for e in transcription[:-1]) == "(1100 ms of audio)"
        assert transcription[-1]["transcript"] == "(1100 ms of audio)"
        assert transcription[-1]["usage"] == {
            "type": "tokens", "input_tokens": 11, "output_tokens": text_tokens("(1100 ms of audio)"),
            "total_tokens": 11 + text_tokens("(1100 ms of audio)"),
            "input_token_details": {"text_tokens": 0, "audio_tokens": 11},
        }

        response = events[events.index(transcription[-1]) + 1:]
        assert without_deltas(response) == RESPONSE_HEAD + AUDIO_TAIL
        assert response[3]["part"] == {"type": "audio", "transcript": ""}
        reply = "I heard 1100 ms of audio."
        assert deltas(response, "response.output_audio_transcript.delta") == reply
        streamed = [e["type"] for e in response[4:-len(AUDIO_TAIL)]]
        first_audio = streamed.index("response.output_audio.delta")
        assert "response.output_audio_transcript.delta" in streamed[first_audio:], "transcript interleaves with audio"
        audio = audio_of(response)
        assert len(audio) == FAST.response_audio_ms * PCM16_PER_MS
        assert speech_level(audio, "audio/pcm") > 0.1
        assert streamed.count("response.output_audio.delta") == FAST.response_audio_ms // FAST.audio_delta_ms

        final = response[-2]["response"]
        assert final["output"][0]["content"] == [{"type": "output_audio", "transcript": reply}]
        usage = final["usage"]
        assert usage["output_token_details"] == {"text_tokens": text_tokens(reply), "audio_tokens": 6}  # 300 ms * 20/s
        assert usage["input_token_details"]["audio_tokens"] == 11  # 1100 ms * 10/s


async def test_manual_commit_clear_retrieve_and_whisper_transcription(fast: ServerThread) -> None:
    async with session_with(fast, audio={"input": {"turn_detection": None,
                                                   "transcription": {"model": "whisper-1"}}}) as client:
        await client.send("input_audio_buffer.append", audio=b64(tone(50)))
        commit_id = await client.send("input_audio_buffer.commit")
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == commit_id
        assert error["error"]["message"].endswith("but buffer only has 50.00ms of audio.")

        await client.send("input_audio_buffer.clear")
        await client.expect("input_audio_buffer.cleared")
        await client.send("input_audio_buffer.commit")
        (error,) = await client.expect("error")
        assert "only has 0.00ms" in error["error"]["message"]

        audio = tone(250)
        await client.send("input_audio_buffer.append", audio=b64(audio[: len(audio) // 2]))
        await client.send("input_audio_buffer.append", audio=b64(audio[len(audio) // 2:]))
        await client.send("input_audio_buffer.commit")
        events = await client.until("conversation.item.input_audio_transcription.completed")
        assert without_deltas(events) == [
            "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
            "conversation.item.input_audio_transcription.completed",
        ]
        assert events[-1]["usage"] == {"type": "duration", "seconds": 0.25}
        item_id = events[0]["item_id"]

        await client.send("conversation.item.retrieve", item_id=item_id)
        (retrieved,) = await client.expect("conversation.item.retrieved")
        part = retrieved["item"]["content"][0]
        assert base64.b64decode(part["audio"]) == audio and part["transcript"] == "(250 ms of audio)"

        await client.send("response.create")
        response = await client.until("rate_limits.updated")
        assert deltas(response, "response.output_audio_transcript.delta") == "I heard 250 ms of audio."
        assistant_id = response[1]["item"]["id"]
        await client.send("conversation.item.retrieve", item_id=assistant_id)
        (retrieved,) = await client.expect("conversation.item.retrieved")
        assert len(base64.b64decode(retrieved["item"]["content"][0]["audio"])) == FAST.response_audio_ms * PCM16_PER_MS

        missing_id = await client.send("conversation.item.retrieve", item_id="item_missing")
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "item_retrieve_invalid_item_id" and error["error"]["event_id"] == missing_id


async def test_function_call_round_trip(fast: ServerThread) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}
    async with session_with(fast, output_modalities=["text"], tools=[tool]) as client:
        await say(client, "Please call get_weather for Paris")
        await client.send("response.create")
        events = await client.until("rate_limits.updated")
        assert without_deltas(events) == [
            "response.created", "response.output_item.added", "conversation.item.added",
            "response.function_call_arguments.done", "response.output_item.done", "conversation.item.done",
            "response.done", "rate_limits.updated",
        ]
        item = events[1]["item"]
        assert item["type"] == "function_call" and item["status"] == "in_progress" and item["arguments"] == ""
        assert item["call_id"].startswith("call_")
        arguments = '{"query":"Please call get_weather for Paris"}'
        assert len([e for e in events if e["type"] == "response.function_call_arguments.delta"]) > 1
        assert deltas(events, "response.function_call_arguments.delta") == arguments
        done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert done["name"] == "get_weather" and done["arguments"] == arguments and done["call_id"] == item["call_id"]
        assert events[-2]["response"]["output"][0]["arguments"] == arguments

        await client.send("conversation.item.create", item={
            "type": "function_call_output", "call_id": item["call_id"], "output": '{"temp_c": 21}'})
        await client.expect("conversation.item.added", "conversation.item.done")
        await client.send("response.create")
        events = await client.until("response.done")
        assert deltas(events, "response.output_text.delta") == 'The function returned: {"temp_c": 21}'


async def test_response_tools_override_and_out_of_band_metadata(fast: ServerThread) -> None:
    async with session_with(fast, output_modalities=["text"]) as client:
        await say(client, "lookup the order")
        await client.send("response.create", response={
            "conversation": "none", "metadata": {"purpose": "summary"},
            "tools": [{"type": "function", "name": "lookup"}],
        })
        events = await client.until("rate_limits.updated")
        assert "conversation.item.added" not in without_deltas(events)
        created = events[0]["response"]
        assert created["conversation_id"] is None and created["metadata"] == {"purpose": "summary"}
        assert events[-2]["response"]["output"][0]["name"] == "lookup"


# --- interruptions ---


async def test_cancel_and_cancel_with_nothing_active(paced: ServerThread) -> None:
    async with session_with(paced) as client:
        await say(client, "tell me a long story")
        await client.send("response.create")
        before = await client.until("response.output_audio.delta")
        await client.send("response.cancel")
        after = await client.until("rate_limits.updated")
        assert without_deltas(after) == AUDIO_TAIL
        response = after[-2]["response"]
        assert response["status"] == "cancelled"
        assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert response["output"][0]["status"] == "incomplete"
        sent_ms = PACED.audio_delta_ms * sum(e["type"] == "response.output_audio.delta" for e in before + after)
        assert response["usage"]["output_token_details"]["audio_tokens"] == -(-sent_ms // 50)

        cancel_id = await client.send("response.cancel")
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "response_cancel_not_active"
        assert error["error"]["message"] == "Cancellation failed: no active response found"
        assert error["error"]["event_id"] == cancel_id


async def test_concurrent_response_rejected_but_out_of_band_allowed(paced: ServerThread) -> None:
    async with session_with(paced) as client:
        await say(client, "first")
        await client.send("response.create")
        (created,) = await client.expect("response.created")
        second = await client.send("response.create")
        error = next(e for e in await client.until("error") if e["type"] == "error")
        assert error["error"]["code"] == "conversation_already_has_active_response"
        assert error["error"]["message"] == (
            f"Conversation already has an active response in progress: {created['response']['id']}. "
            "Wait until the response is finished before creating a new one."
        )
        assert error["error"]["event_id"] == second

        await client.send("response.create", response={"conversation": "none", "output_modalities": ["text"],
                                                       "metadata": {"purpose": "side"}})
        events = await client.until("response.done")
        side = [e for e in events if e["type"] == "response.done"][0]["response"]
        assert side["metadata"] == {"purpose": "side"} and side["status"] == "completed"
        assert side["id"] != created["response"]["id"]

        await client.send("response.cancel", response_id=created["response"]["id"])
        events = await client.until("response.done")
        assert events[-1]["response"]["id"] == created["response"]["id"]
        assert events[-1]["response"]["status"] == "cancelled"


async def test_barge_in_cancels_and_truncate(paced: ServerThread) -> None:
    async with session_with(paced) as client:
        await say(client, "talk for a while")
        await client.send("response.create")
        head = await client.until("response.output_audio.delta")
        assistant_id = head[1]["item"]["id"]
        await client.send("input_audio_buffer.append", audio=b64(tone(300)))
        events = await client.until("rate_limits.updated")
        started = next(i for i, e in enumerate(events) if e["type"] == "input_audio_buffer.speech_started")
        assert without_deltas(events[started + 1:]) == AUDIO_TAIL
        done = events[-2]["response"]
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}

        await client.send("conversation.item.truncate", item_id=assistant_id, content_index=0, audio_end_ms=20)
        (truncated,) = await client.expect("conversation.item.truncated")
        assert truncated == {**truncated, "item_id": assistant_id, "content_index": 0, "audio_end_ms": 20}
        await client.send("conversation.item.retrieve", item_id=assistant_id)
        (retrieved,) = await client.expect("conversation.item.retrieved")
        assert len(base64.b64decode(retrieved["item"]["content"][0]["audio"])) == 20 * PCM16_PER_MS

        too_long = await client.send("conversation.item.truncate", item_id=assistant_id, content_index=0,
                                     audio_end_ms=10_000)
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "invalid_value" and error["error"]["event_id"] == too_long
        await client.send("conversation.item.truncate", item_id="item_gone", content_index=0, audio_end_ms=0)
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "item_truncate_invalid_item_id"


# --- conversation editing and bad input ---


async def test_item_insert_delete_and_errors(fast: ServerThread) -> None:
    async with session_with(fast) as client:
        first = await say(client, "one")
        await client.send("conversation.item.create", previous_item_id="root", item={
            "type": "message", "role": "system", "content": [{"type": "input_text", "text": "zero"}]})
        added, _ = await client.expect("conversation.item.added", "conversation.item.done")
        assert added["previous_item_id"] is None
        await client.send("conversation.item.create", previous_item_id=first["id"], item={
            "id": "item_custom", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}]})
        added, _ = await client.expect("conversation.item.added", "conversation.item.done")
        assert added["previous_item_id"] == first["id"] and added["item"]["id"] == "item_custom"

        await client.send("conversation.item.delete", item_id="item_custom")
        (deleted,) = await client.expect("conversation.item.deleted")
        assert deleted["item_id"] == "item_custom"
        await client.send("conversation.item.delete", item_id="item_custom")
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "item_delete_invalid_item_id"
        assert error["error"]["message"] == "Error deleting item: the item with id 'item_custom' does not exist."

        await client.send("conversation.item.create", previous_item_id="item_nowhere", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]})
        (error,) = await client.expect("error")
        assert error["error"]["param"] == "previous_item_id"


async def test_malformed_and_unknown_events(fast: ServerThread) -> None:
    async with session_with(fast) as client:
        await client.ws.send("{not json")
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "invalid_event" and error["error"]["event_id"] is None
        unknown = await client.send("session.frobnicate")
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "invalid_event" and error["error"]["event_id"] == unknown
        await client.ws.send(orjson.dumps({"event_id": "no_type"}).decode())
        (error,) = await client.expect("error")
        assert error["error"]["message"] == "The 'type' field is missing." and error["error"]["event_id"] == "no_type"
        await client.ws.send(orjson.dumps([1, 2]).decode())
        await client.expect("error")
        await client.ws.send(orjson.dumps({"type": "response.create", "event_id": "bin"}))  # a binary frame
        await client.expect("response.created")
        await client.until("rate_limits.updated")

        beta_update = await client.send("session.update", session={"modalities": ["text"]})
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "missing_required_parameter" and error["error"]["event_id"] == beta_update
        await client.send("session.update", session={"type": "realtime", "modalities": ["text"]})
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "unknown_parameter" and error["error"]["param"] == "session.modalities"
        await client.send("session.update", session={"type": "realtime", "output_modalities": ["text", "audio"]})
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "invalid_value"
        await client.send("input_audio_buffer.append", audio="***")
        (error,) = await client.expect("error")
        assert error["error"]["param"] == "audio"
        await client.send("response.create", response={"metadata": {"sim.audio_ms": "soon"}})
        (error,) = await client.expect("error")
        assert error["error"]["param"] == "response.metadata"


async def test_session_update_merges_into_full_session(fast: ServerThread) -> None:
    async with session_with(fast) as client:
        await client.send("session.update", session={
            "type": "realtime", "instructions": "Be brief.",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}},
                      "output": {"voice": "marin"}},
        })
        (updated,) = await client.expect("session.updated")
        session = updated["session"]
        assert session["instructions"] == "Be brief." and session["output_modalities"] == ["audio"]
        assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin",
                                              "speed": 1.0}
        detection = session["audio"]["input"]["turn_detection"]
        assert detection["silence_duration_ms"] == 700 and detection["threshold"] == 0.5
        assert detection["create_response"] is True
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


# Optional fields the API reads as unset when they are null (livekit-agents sends `"instructions": null`).
SESSION_UNSET = dict.fromkeys((
    "model", "instructions", "output_modalities", "tools", "tool_choice", "max_output_tokens", "truncation",
    "parallel_tool_calls", "audio",
))
RESPONSE_UNSET = dict.fromkeys((
    "instructions", "output_modalities", "tools", "tool_choice", "max_output_tokens", "conversation", "input", "audio",
    "parallel_tool_calls", "prompt", "reasoning", "metadata",
))


async def next_is(client: Client, event_type: str) -> dict[str, Any]:
    event = await client.recv()
    assert event["type"] == event_type, event
    return event


async def null_fields_read_as_unset(client: Client) -> None:
    """Drives a session (past `session.created`) with null optional fields in every client event that has some."""
    lookup = {"type": "function", "name": "lookup"}
    await client.send("session.update", session={"type": "realtime", "instructions": "Be brief.",
                                                  "output_modalities": ["text"], "tools": [lookup]})
    configured = (await next_is(client, "session.updated"))["session"]
    await client.send("session.update", session={"type": "realtime", **SESSION_UNSET})
    assert (await next_is(client, "session.updated"))["session"] == configured
    await client.send("session.update", session={"type": "realtime", "audio": {"input": None, "output": None}})
    assert (await next_is(client, "session.updated"))["session"] == configured
    await client.send("session.update", session={"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": None}, "noise_reduction": {"type": "near_field"},
                  "turn_detection": {"type": None, "threshold": None, "silence_duration_ms": 700,
                                     "create_response": None}},
        "output": {"format": None, "voice": None, "speed": None},
    }})
    session = (await next_is(client, "session.updated"))["session"]
    assert session["audio"]["output"] == configured["audio"]["output"]
    assert session["audio"]["input"]["format"] == configured["audio"]["input"]["format"]
    assert session["audio"]["input"]["turn_detection"] == {**configured["audio"]["input"]["turn_detection"],
                                                           "silence_duration_ms": 700}
    # Where null is a value, it still turns the feature off.
    await client.send("session.update", session={"type": "realtime", "tracing": None, "audio": {
        "input": {"turn_detection": None, "transcription": None, "noise_reduction": None}}})
    session = (await next_is(client, "session.updated"))["session"]
    assert session["audio"]["input"]["turn_detection"] is None and session["audio"]["input"]["noise_reduction"] is None

    await client.send("conversation.item.create", previous_item_id=None, item={
        "id": None, "type": "message", "role": "user", "status": None,
        "content": [{"type": "input_text", "text": "hello"},
                    {"type": "input_image", "image_url": "data:,", "detail": None}]})
    added = (await next_is(client, "conversation.item.added"))["item"]
    await client.expect("conversation.item.done")
    assert added["id"].startswith("item_") and added["content"][1]["detail"] == "auto"
    await client.send("response.create", response=RESPONSE_UNSET)
    await next_is(client, "response.created")
    done = (await client.until("rate_limits.updated"))[-2]["response"]
    assert done["status"] == "completed" and done["conversation_id"] is not None
    assert done["output_modalities"] == ["text"] and done["output"][0]["type"] == "message"
    # The session's instructions were read: "Be brief." and the user's text are the whole text input.
    assert done["usage"]["input_tokens"] == text_tokens("Be brief.") + text_tokens("hello")
    for audio in ({"output": None}, {"output": {"voice": None, "format": None}}):
        await client.send("response.create", response={"output_modalities": ["audio"], "audio": audio})
        await next_is(client, "response.created")
        done = (await client.until("rate_limits.updated"))[-2]["response"]
        assert done["status"] == "completed" and done["audio"]["output"]["voice"] == "alloy"

    spoken = done["output"][0]
    await client.send("conversation.item.truncate", item_id=spoken["id"], content_index=None, audio_end_ms=10)
    assert (await next_is(client, "conversation.item.truncated"))["content_index"] == 0
    await client.send("conversation.item.create", item={"type": "function_call", "name": "lookup", "call_id": None,
                                                        "arguments": None})
    call = (await next_is(client, "conversation.item.added"))["item"]
    await client.expect("conversation.item.done")
    assert call["arguments"] == "" and call["call_id"].startswith("call_")
    await client.send("response.cancel", response_id=None)
    assert (await client.recv())["error"]["code"] == "response_cancel_not_active"


async def test_null_optional_fields_read_as_unset(fast: ServerThread) -> None:
    async with connect(fast) as client:
        await client.expect("session.created")
        await null_fields_read_as_unset(client)
    status, body = await http("POST", f"{fast.url}/v1/realtime/client_secrets", "sk-test", {
        "expires_after": {"anchor": None, "seconds": None}, "session": {"type": "realtime", "instructions": None}})
    assert status == 200, body
    assert body["session"]["instructions"] == DEFAULT_INSTRUCTIONS and body["expires_at"] > time.time() + 590
    # Null is not a way around the checks: unknown fields and missing required ones are still refused.
    async with connect(fast) as client:
        await client.expect("session.created")
        await client.send("response.create", response={"modalities": None})
        assert (await client.recv())["error"]["param"] == "response.modalities"
        await client.send("session.update", session={"type": None, "instructions": None})
        assert (await client.recv())["error"]["code"] == "missing_required_parameter"


async def test_null_optional_fields_through_the_gateway(fast: ServerThread, start_gateway: Any) -> None:
    gateway, _ = start_gateway(f"{fast.url}/v1")
    async with connect(gateway, key=VIRTUAL_KEY) as client:
        await client.expect("session.created")
        await null_fields_read_as_unset(client)


async def test_g711_audio_in_and_out(fast: ServerThread) -> None:
    formats = {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}}
    async with session_with(fast, audio=formats) as client:
        speech = [round(8000 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(8 * 400)]
        await client.send("input_audio_buffer.append",
                          audio=b64(bytes([0xFF]) * 8 * 100 + encode(PCMU, speech) + bytes([0xFF]) * 8 * 300))
        events = await client.until("rate_limits.updated")
        assert [e["audio_start_ms"] for e in events if e["type"] == "input_audio_buffer.speech_started"] == [0]
        assert deltas(events, "response.output_audio_transcript.delta") == "I heard 700 ms of audio."
        audio = audio_of(events)
        assert len(audio) == 8 * FAST.response_audio_ms and speech_level(audio, PCMA) > 0.1


# --- sessions of other kinds ---


async def test_transcription_session(fast: ServerThread) -> None:
    async with connect(fast, query="?intent=transcription") as client:
        (created,) = await client.expect("session.created")
        assert created["session"]["type"] == "transcription"
        await client.send("input_audio_buffer.append", audio=b64(tone(400) + silence(300)))
        events = await client.until("conversation.item.input_audio_transcription.completed")
        assert events[-1]["transcript"] == "(600 ms of audio)"
        rejected = await client.send("response.create")
        (error,) = await client.expect("error")
        assert error["error"]["event_id"] == rejected and "transcription" in error["error"]["message"]
        await client.send("session.update", session={"type": "realtime"})
        (error,) = await client.expect("error")
        assert error["error"]["param"] == "session.type"


# --- faults ---


async def test_fault_failed_by_directive(fast: ServerThread) -> None:
    async with session_with(fast, output_modalities=["text"]) as client:
        await say(client, "[sim:fault=failed] hello")
        await client.send("response.create")
        events = await client.until("rate_limits.updated")
        response = events[-2]["response"]
        assert response["status"] == "failed"
        assert response["status_details"]["type"] == "failed"
        assert response["status_details"]["error"]["type"] == "server_error"
        assert response["output"][0]["status"] == "incomplete"
        assert deltas(events, "response.output_text.delta") == "You said: hello"
        assert response["usage"]["output_tokens"] == text_tokens("You said: hello")


async def test_fault_close_by_metadata(fast: ServerThread) -> None:
    async with session_with(fast) as client:
        await say(client, "hello")
        await client.send("response.create", response={"metadata": {"sim.fault": "close:1011"}})
        closed = await client.closed()
        assert closed.rcvd is not None and closed.rcvd.code == 1011 and closed.rcvd.reason == "server_error"


async def test_fault_drop_cuts_tcp_mid_response(fast: ServerThread) -> None:
    async with session_with(fast) as client:
        await say(client, "[sim:fault=drop] hello")
        await client.send("response.create")
        received: list[str] = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                received.append((await client.recv())["type"])
        assert info.value.rcvd is None, "no close frame: the TCP connection was cut"
        assert received[0] == "response.created" and "response.done" not in received
        assert sum(t.endswith(".delta") for t in received) == FAULT_AFTER_DELTAS


async def test_fault_stall_then_cancel(fast: ServerThread) -> None:
    async with session_with(fast) as client:
        user = await say(client, "[sim:fault=stall] hello")
        await client.send("response.create")
        await client.expect("response.created")
        # The next event answers this retrieve: the stalled response sent nothing in between.
        await client.send("conversation.item.retrieve", item_id=user["id"])
        await client.expect("conversation.item.retrieved")
        await client.send("response.cancel")
        (done, _) = await client.expect("response.done", "rate_limits.updated")
        assert done["response"]["status"] == "cancelled" and done["response"]["output"] == []


async def test_default_fault_from_options() -> None:
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, fault="close:4001"))) as server:
        async with session_with(server, output_modalities=["text"]) as client:
            await say(client, "hello")
            await client.send("response.create")
            closed = await client.closed()
            assert closed.rcvd is not None and closed.rcvd.code == 4001


def test_options_reject_unknown_faults() -> None:
    for fault in ("boom", "close:1006", "close:abc"):
        with pytest.raises(pydantic.ValidationError):
            SimulatorOptions(fault=fault)


async def test_stamped_deltas() -> None:
    options = SimulatorOptions(pace=0, response_audio_ms=200, stamp_events=True)
    with ServerThread(create_simulator_app(options)) as server:
        async with session_with(server) as client:
            await say(client, "hi")
            await client.send("response.create")
            events = await client.until("response.done")
            assert all(isinstance(e.get("sim_sent_ns"), int) for e in events if e["type"].endswith(".delta"))
            assert not any("sim_sent_ns" in e for e in events if not e["type"].endswith(".delta"))


# --- authentication ---


@pytest.fixture(scope="module")
def keyed() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, api_keys=["sk-good"]))) as server:
        yield server


async def test_wrong_and_missing_keys(keyed: ServerThread) -> None:
    async with connect(keyed, key="sk-bad") as client:
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "invalid_api_key" and error["error"]["type"] == "invalid_request_error"
        closed = await client.closed()
        assert closed.rcvd is not None and closed.rcvd.code == 3000
        assert closed.rcvd.reason == "invalid_request_error.invalid_api_key"
    async with connect(keyed, key=None) as client:
        (error,) = await client.expect("error")
        assert error["error"]["message"] == "Missing bearer or basic authentication in header"
        assert (await client.closed()).rcvd.code == 3000


async def test_subprotocol_key_selects_realtime(keyed: ServerThread) -> None:
    async with connect(keyed, key=None, subprotocols=["realtime", "openai-insecure-api-key.sk-good"]) as client:
        assert client.ws.subprotocol == "realtime"
        (created,) = await client.expect("session.created")
        assert created["session"]["model"] == "gpt-realtime"
    async with connect(keyed, key="sk-good", query="?model=gpt-realtime-mini") as client:
        assert client.ws.subprotocol is None
        (created,) = await client.expect("session.created")
        assert created["session"]["model"] == "gpt-realtime-mini"


async def test_beta_shape_rejected(fast: ServerThread) -> None:
    attempts: list[dict[str, Any]] = [
        {"headers": {"OpenAI-Beta": "realtime=v1"}},
        {"subprotocols": ["realtime", "openai-beta.realtime-v1"]},
    ]
    for options in attempts:
        async with connect(fast, **options) as client:
            (error,) = await client.expect("error")
            assert error["error"] == {
                "type": "invalid_request_error", "code": "beta_api_shape_disabled",
                "message": "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
                "param": None, "event_id": None,
            }
            closed = await client.closed()
            assert closed.rcvd.code == 4000 and closed.rcvd.reason == "invalid_request_error.beta_api_shape_disabled"


async def test_client_secret_then_websocket(keyed: ServerThread) -> None:
    async with AsyncOpenAI(api_key="sk-good", base_url=f"{keyed.url}/v1") as openai:
        secret = await openai.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 600},
            session={"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
                     "audio": {"output": {"voice": "marin"}}},
        )
    assert secret.value.startswith("ek_") and len(secret.value) == 35
    int(secret.value[3:], 16)
    assert secret.session.type == "realtime" and secret.session.instructions == "Be brief."

    async with connect(keyed, key=None, subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"]) as client:
        (created,) = await client.expect("session.created")
        assert created["session"]["instructions"] == "Be brief."
        assert created["session"]["audio"]["output"]["voice"] == "marin"
    async with connect(keyed, key="ek_" + "0" * 32) as client:
        (error,) = await client.expect("error")
        assert error["error"]["code"] == "invalid_api_key"

    secrets_url = f"{keyed.url}/v1/realtime/client_secrets"
    status, body = await http("POST", secrets_url, "sk-bad", {})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = await http("POST", secrets_url, "sk-good", {"session": {"type": "realtime", "voice": "alloy"}})
    assert status == 400 and body["error"]["param"] == "session.voice"
    status, body = await http("POST", secrets_url, "sk-good", {"expires_after": {"seconds": 5}})
    assert status == 400 and body["error"]["param"] == "expires_after.seconds"
    status, body = await http("GET", f"{keyed.url}/healthz")
    assert status == 200 and body["status"] == "ok"


# --- real SDK clients ---


async def test_openai_python_client_text_and_function_call(fast: ServerThread) -> None:
    client = AsyncOpenAI(api_key="sk-test", base_url=f"{fast.url}/v1", websocket_base_url=f"{fast.ws_url}/v1")
    async with client, client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={
            "type": "realtime", "output_modalities": ["text"],
            "tools": [{"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}],
        })
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        await conn.response.create()
        text = ""
        async for event in conn:
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.done":
                assert event.response.status == "completed"
                break
        assert text == "You said: hi"

        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "use get_time"}]})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.function_call_arguments.done":
                assert event.name == "get_time" and event.arguments == '{"query":"use get_time"}'
                call_id = event.call_id
            if event.type == "response.done":
                break
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": call_id, "output": "12:00"})
        await conn.response.create()
        text = ""
        async for event in conn:
            assert event.type != "error"
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.done":
                break
        assert text == "The function returned: 12:00"


async def test_openai_agents_realtime_runner(fast: ServerThread) -> None:
    from agents.realtime import RealtimeAgent, RealtimeRunner

    runner = RealtimeRunner(
        starting_agent=RealtimeAgent(name="Assistant", instructions="Be brief."),
        config={"model_settings": {"model_name": "gpt-realtime", "modalities": ["text"]}},
    )
    session = await runner.run(model_config={"url": f"{fast.ws_url}/v1/realtime?model=gpt-realtime",
                                             "api_key": "sk-test"})
    errors: list[Any] = []
    seen: list[str] = []

    async def converse() -> None:
        async with session:
            await session.send_message("hello")
            async for event in session:
                seen.append(event.type)
                if event.type == "error":
                    errors.append(event.error)
                if event.type == "agent_end":
                    break

    await asyncio.wait_for(converse(), RECV_TIMEOUT_S)
    assert not errors
    assert "agent_end" in seen and "history_added" in seen


async def test_committing_more_audio_than_is_retained_for_retrieve(fast: ServerThread) -> None:
    """An item larger than the retrieve budget is committed normally; only its retained bytes are dropped."""
    async with websockets.connect(f"{fast.ws_url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": "Bearer sk-test"}, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}))
        chunk = b64(silence(10_000))  # 10 s per append; 90 s ≈ 4.3 MB of pcm16
        for _ in range(9):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
            assert event["type"] != "error", event
            if event["type"] == "input_audio_buffer.committed":
                break


# --- pure units ---


def test_vad_positions_and_segments() -> None:
    buffer = InputAudioBuffer(detection=TurnDetection(prefix_padding_ms=100, silence_duration_ms=300))
    assert buffer.append(silence(1000)) == []
    assert buffer.append(tone(200)) == [SpeechStarted(900)]
    (stopped,) = buffer.append(silence(400))
    assert isinstance(stopped, SpeechStopped) and stopped.audio_end_ms == 1500
    assert len(stopped.audio) == (1500 - 900) * PCM16_PER_MS
    assert buffer.duration_ms == 100  # the silence after the stop waits for the next turn


def test_g711_codec_reference_values() -> None:
    assert encode(PCMU, [0, 32767, -32768]) == bytes([0xFF, 0x80, 0x00])
    assert encode(PCMA, [0, 32767, -32768]) == bytes([0xD5, 0xAA, 0x2A])
    assert speech_level(encode(PCMU, [0] * 80), PCMU) < 0.001


# --- coverage of the emitted types (keep last: it reads what the tests above recorded) ---


def test_every_emitted_event_type_was_seen_and_validated() -> None:
    if not SEEN_TYPES:
        pytest.skip("run together with the scenario tests above")
    assert EMITTED_EVENT_TYPES - SEEN_TYPES == set()
    assert SEEN_TYPES <= EMITTED_EVENT_TYPES
