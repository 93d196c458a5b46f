"""Real SDK clients (openai-python, openai-agents) through the gateway to the simulator; turn records checked."""

from __future__ import annotations

import asyncio
import base64
import math
import struct

import pytest
from openai import AsyncOpenAI

from conftest import VIRTUAL_KEY

# gpt-realtime list prices, USD per 1M tokens (the shipped table), written out so costs are hand-computed here.
TEXT_IN, TEXT_CACHED, TEXT_OUT = 4.00, 0.40, 16.00
AUDIO_IN, AUDIO_CACHED, AUDIO_OUT = 32.00, 0.40, 64.00
MINI_TRANSCRIBE_TEXT_IN, MINI_TRANSCRIBE_AUDIO_IN, MINI_TRANSCRIBE_OUT = 1.25, 3.00, 5.00


def expected_cost(usage) -> float:
    details = usage.input_token_details
    cached = details.cached_tokens_details
    cached_text = cached.text_tokens or 0 if cached else 0
    cached_audio = cached.audio_tokens or 0 if cached else 0
    return (
        (details.text_tokens - cached_text) * TEXT_IN
        + cached_text * TEXT_CACHED
        + (details.audio_tokens - cached_audio) * AUDIO_IN
        + cached_audio * AUDIO_CACHED
        + usage.output_token_details.text_tokens * TEXT_OUT
        + usage.output_token_details.audio_tokens * AUDIO_OUT
    ) / 1e6


def tone_pcm16(ms: int, rate: int = 24000, freq: float = 440.0) -> bytes:
    samples = rate * ms // 1000
    return b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(samples))


def client_for(server) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key=VIRTUAL_KEY,
        base_url=f"http://127.0.0.1:{server.port}/v1",
        websocket_base_url=f"ws://127.0.0.1:{server.port}/v1",
    )


async def until_done(connection) -> list:
    events = []
    async for event in connection:
        events.append(event)
        if event.type == "response.done":
            return events
    raise AssertionError("connection closed before response.done")


async def test_text_audio_and_function_call_turns_are_recorded_and_priced(gateway):
    server, sink = gateway
    async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}},
                "tools": [{"type": "function", "name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {}}}],
            }
        )
        # 1. text turn
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]})
        await conn.response.create()
        text_events = await until_done(conn)
        # 2. audio turn: append, commit, respond
        audio = tone_pcm16(600)
        for offset in range(0, len(audio), 9600):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[offset : offset + 9600]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        audio_events = await until_done(conn)
        # 3. function call round trip
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "call get_weather for Paris"}]})
        await conn.response.create()
        call_events = await until_done(conn)
        call = next(e for e in call_events if e.type == "response.function_call_arguments.done")
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'})
        await conn.response.create()
        answer_events = await until_done(conn)

    records = sink.wait_for(4)
    by_response = {r.response_id: r for r in records}
    transcription_events = [e for e in audio_events + call_events + answer_events if e.type == "conversation.item.input_audio_transcription.completed"]

    for events in (text_events, audio_events, call_events, answer_events):
        done = events[-1]
        record = by_response[done.response.id]
        usage = done.response.usage
        assert record.status == "completed"
        assert record.usage["input_tokens"] == usage.input_tokens
        assert record.usage["output_tokens"] == usage.output_tokens
        assert record.usage["total_tokens"] == usage.total_tokens
        assert record.usage["cached_audio_tokens"] == (usage.input_token_details.cached_tokens_details.audio_tokens or 0)
        transcription = sum(
            (t.usage.input_token_details.text_tokens * MINI_TRANSCRIBE_TEXT_IN
             + t.usage.input_token_details.audio_tokens * MINI_TRANSCRIBE_AUDIO_IN
             + t.usage.output_tokens * MINI_TRANSCRIBE_OUT) / 1e6
            for t in transcription_events
            if any(u["item_id"] == t.item_id for u in record.transcription_usage)
        )
        assert record.cost["total"] == pytest.approx(expected_cost(usage) + transcription, rel=1e-9, abs=1e-12)
        assert record.latency_ms["total"] >= record.latency_ms["first_delta"] >= 0
        assert record.principal == "team-a" and record.transport == "websocket" and record.model == "gpt-realtime"

    # The later turns re-read the earlier audio from the provider's cache: cached audio is priced at its own rate.
    assert any(r.usage["cached_audio_tokens"] > 0 for r in records)
    assert any(r.usage["cached_text_tokens"] > 0 for r in records)

    text_record = by_response[text_events[-1].response.id]
    assert text_record.inputs == [{"kind": "text", "item_id": text_record.inputs[0]["item_id"], "call_id": None, "text": "Hello there"}]
    assert text_record.output["text"] == "".join(e.delta for e in text_events if e.type == "response.output_text.delta")

    audio_record = by_response[audio_events[-1].response.id]
    assert audio_record.inputs[0]["kind"] == "audio"
    # The transcription bill lands exactly once across the session's records.
    billed_items = [u["item_id"] for r in records for u in r.transcription_usage]
    assert sorted(billed_items) == sorted(t.item_id for t in transcription_events)
    assert len(transcription_events) == 1

    call_record = by_response[call_events[-1].response.id]
    assert call_record.output["tool_calls"] == [
        {"call_id": call.call_id, "name": "get_weather", "arguments": call.arguments, "truncated": False}
    ]
    answer_record = by_response[answer_events[-1].response.id]
    assert answer_record.inputs == [{"kind": "tool_output", "item_id": answer_record.inputs[0]["item_id"], "call_id": call.call_id, "text": '{"temp_c": 21}'}]
    assert answer_record.metadata["tools"] == ["get_weather"]


async def test_audio_output_is_counted_and_cancelled_turns_are_recorded(gateway):
    server, sink = gateway
    async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "speak"}]})
        await conn.response.create()
        events = await until_done(conn)
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "[sim:fault=stall] long story"}]})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.created":
                await conn.response.cancel()
            if event.type == "response.done":
                cancelled = event
                break
    audio_bytes = sum(len(base64.b64decode(e.delta)) for e in events if e.type == "response.output_audio.delta")
    records = {r.response_id: r for r in sink.wait_for(2)}
    spoken = records[events[-1].response.id]
    assert audio_bytes > 0 and spoken.output["audio_bytes"] == audio_bytes
    assert spoken.output["transcript"] == "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert spoken.cost["output_audio"] > 0
    stopped = records[cancelled.response.id]
    assert stopped.status == "cancelled" and stopped.status_reason == "client_cancelled"


async def test_openai_agents_realtime_runner_reaches_agent_end(gateway):
    from agents.realtime import RealtimeAgent, RealtimeRunner

    server, sink = gateway
    runner = RealtimeRunner(
        starting_agent=RealtimeAgent(name="Assistant", instructions="Be brief."),
        config={"model_settings": {"model_name": "gpt-realtime", "modalities": ["text"]}},
    )
    session = await runner.run(
        model_config={"url": f"ws://127.0.0.1:{server.port}/v1/realtime?model=gpt-realtime", "api_key": VIRTUAL_KEY}
    )
    errors, saw_end = [], False
    async with session:
        await session.send_message("hello agent")

        async def consume():
            nonlocal saw_end
            async for event in session:
                if event.type == "error":
                    errors.append(event)
                if event.type == "agent_end":
                    saw_end = True
                    return

        await asyncio.wait_for(consume(), 20)
    assert saw_end and errors == []
    (record,) = sink.wait_for(1)
    assert record.status == "completed" and record.inputs[-1]["text"] == "hello agent"


async def test_duration_priced_transcription_and_keys_that_keep_no_content(simulator, start_gateway):
    # whisper-1 bills by the minute: 0.006 USD per minute of audio (shipped price table).
    server, sink = start_gateway(
        f"{simulator.url}/v1",
        virtual_keys=[{"key": VIRTUAL_KEY, "name": "private-team", "log_content": False}],
    )
    async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={"type": "realtime", "output_modalities": ["text"], "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}}}
        )
        audio = tone_pcm16(1500)
        await conn.input_audio_buffer.append(audio=base64.b64encode(audio).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await until_done(conn)
    (transcription,) = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert transcription.usage.type == "duration"
    (record,) = sink.wait_for(1)
    assert record.transcription_usage[0]["kind"] == "duration"
    assert record.cost["transcription"] == pytest.approx(transcription.usage.seconds / 60 * 0.006)
    assert record.cost["total"] == pytest.approx(expected_cost(events[-1].response.usage) + transcription.usage.seconds / 60 * 0.006)
    # The key keeps no content: usage and cost are recorded, text is not.
    assert record.inputs[0]["text"] is None and record.output["text"] == "" and record.input_summary == ""
