"""OpenAI GA clients talking to a Gemini Live model through the gateway (the simulator's Gemini flavor upstream).

openai-python `realtime.connect` and openai-agents `RealtimeRunner` complete text, audio and tool turns; every
event a client receives validates against openai-python's GA `RealtimeServerEvent` union; turn records are priced
with the Gemini Live entry of the price table, hand-checked here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY, GatewayFactory
from servers import ServerThread

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
MODEL = "gemini-live-2.5-flash-preview"
# The shipped Gemini Live prices, USD per 1M tokens, written out so costs are computed by hand here.
TEXT_IN, AUDIO_IN, TEXT_OUT, AUDIO_OUT, TEXT_CACHED, AUDIO_CACHED = 0.50, 3.00, 2.00, 12.00, 0.05, 0.30
GEMINI_KEY = "gemini-provider-key"
RECV_TIMEOUT_S = 10


def tone_pcm16(ms: int, rate: int = 24000, freq: float = 440.0) -> bytes:
    samples = rate * ms // 1000
    return b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(samples))


@pytest.fixture
def gemini() -> Iterator[ServerThread]:
    options = SimulatorOptions(pace=0, audio_delta_ms=100, response_audio_ms=300, api_keys=[GEMINI_KEY])
    with ServerThread(create_simulator_app(options)) as server:
        yield server


def gemini_gateway(start_gateway: GatewayFactory, gemini: ServerThread, **overrides: Any) -> Any:
    provider = {"kind": "gemini", "base_url": gemini.url, "api_key": GEMINI_KEY, **overrides}
    return start_gateway(
        f"{gemini.url}/v1",
        providers={"gemini": provider},
        models={"gemini-live": {"provider": "gemini", "model": MODEL}},
    )


def client_for(server: ServerThread) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{server.url}/v1", websocket_base_url=f"{server.ws_url}/v1")


async def until_done(connection: Any) -> list[Any]:
    events = []
    async for event in connection:
        events.append(event)
        if event.type == "response.done":
            return events
    raise AssertionError("connection closed before response.done")


def expected_cost(usage: Any) -> float:
    details, cached = usage.input_token_details, usage.input_token_details.cached_tokens_details
    return (
        (details.text_tokens - cached.text_tokens) * TEXT_IN
        + cached.text_tokens * TEXT_CACHED
        + (details.audio_tokens - cached.audio_tokens) * AUDIO_IN
        + cached.audio_tokens * AUDIO_CACHED
        + usage.output_token_details.text_tokens * TEXT_OUT
        + usage.output_token_details.audio_tokens * AUDIO_OUT
    ) / 1e6


async def test_openai_python_text_audio_and_tool_turns_against_gemini(gemini, start_gateway):
    server, sink = gemini_gateway(start_gateway, gemini)
    weather = {"type": "function", "name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {}}}
    async with client_for(server).realtime.connect(model="gemini-live") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "instructions": "Be brief.",
                "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}},
                "tools": [weather],
            }
        )
        created = await conn.recv()
        updated = await conn.recv()
        assert (created.type, updated.type) == ("session.created", "session.updated")
        assert updated.session.instructions == "Be brief." and updated.session.model == "gemini-live"
        # 1. text
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]})
        await conn.response.create()
        text_events = await until_done(conn)
        assert "".join(e.delta for e in text_events if e.type == "response.output_text.delta") == "You said: Hello there"
        # 2. audio in (manual turn: append, commit, create)
        audio = tone_pcm16(600)
        for offset in range(0, len(audio), 9600):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[offset : offset + 9600]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        audio_events = await until_done(conn)
        assert "".join(e.delta for e in audio_events if e.type == "response.output_text.delta") == "You said: 600 ms of audio"
        # 3. a function call and its output
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "get_weather for Paris"}]})
        await conn.response.create()
        call_events = await until_done(conn)
        call = next(e for e in call_events if e.type == "response.function_call_arguments.done")
        assert call.name == "get_weather" and json.loads(call.arguments) == {"query": "get_weather for Paris"}
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'})
        await conn.response.create()
        answer_events = await until_done(conn)
        assert "".join(e.delta for e in answer_events if e.type == "response.output_text.delta") == 'The function returned: {"temp_c":21}'

    records = {r.response_id: r for r in sink.wait_for(4)}
    for events in (text_events, audio_events, call_events, answer_events):
        done = events[-1]
        record = records[done.response.id]
        assert record.status == "completed" and record.model == MODEL and record.provider == "gemini"
        assert record.usage["input_tokens"] == done.response.usage.input_tokens > 0
        assert record.cost["total"] == pytest.approx(expected_cost(done.response.usage), rel=1e-9, abs=1e-12)
    assert records[audio_events[-1].response.id].inputs[0]["kind"] == "audio"
    assert records[call_events[-1].response.id].output["tool_calls"][0]["name"] == "get_weather"
    assert records[answer_events[-1].response.id].inputs[0]["kind"] == "tool_output"
