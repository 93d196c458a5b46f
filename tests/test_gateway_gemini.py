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
from openai.types.realtime import RealtimeServerEvent

from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY, GatewayFactory
from servers import ServerThread
from test_gateway_clients import client_for, until_done

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


def gemini_gateway(start_gateway: GatewayFactory, gemini: ServerThread, gemini_config: dict[str, Any] | None = None,
                   **sections: Any) -> Any:
    provider = {"kind": "gemini", "base_url": gemini.url, "api_key": GEMINI_KEY, "gemini": gemini_config or {}}
    return start_gateway(
        f"{gemini.url}/v1",
        providers={"gemini": provider},
        models={"gemini-live": {"provider": "gemini", "model": MODEL}},
        **sections,
    )


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


def test_a_text_turn_costs_what_the_price_table_says_by_hand() -> None:
    """6 text tokens in ("Be brief." and "Hello there", ceil(chars / 4) each), 6 out ("You said: Hello there")."""
    from bifrost_rt.policy.pricing import PriceTable

    prices = PriceTable().lookup(MODEL)
    assert prices is not None
    assert (prices.input_text, prices.input_audio, prices.output_text, prices.output_audio) == (TEXT_IN, AUDIO_IN, TEXT_OUT, AUDIO_OUT)
    assert 6 * 0.50 / 1e6 + 6 * 2.00 / 1e6 == pytest.approx(15e-6)


async def test_the_text_turn_record_is_priced_by_hand(gemini, start_gateway):
    server, sink = gemini_gateway(start_gateway, gemini)
    async with client_for(server).realtime.connect(model="gemini-live") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "instructions": "Be brief."})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]})
        await conn.response.create()
        await until_done(conn)
    (record,) = sink.wait_for(1)
    assert record.usage["input_text_tokens"] == 6 and record.usage["output_text_tokens"] == 6
    assert record.cost["total"] == pytest.approx(15e-6, rel=1e-9)  # 6 × $0.50/M + 6 × $2.00/M


class Walk:
    """A raw client that validates every event against the GA union and keeps their types in order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.types: list[str] = []

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S))
        SERVER_EVENT.validate_python(event)
        self.types.append(event["type"])
        return event

    async def until(self, kind: str) -> list[dict[str, Any]]:
        seen = [await self.recv()]
        while seen[-1]["type"] != kind:
            seen.append(await self.recv())
        return seen


async def walk(server: ServerThread) -> Any:
    ws = await websockets.connect(f"{server.ws_url}/v1/realtime?model=gemini-live", additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"})
    return Walk(ws)


AUDIO_RESPONSE_ORDER = [
    "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
    "response.output_audio.delta", "response.output_audio_transcript.delta",
]
AUDIO_RESPONSE_END = [
    "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
    "response.output_item.done", "conversation.item.done", "response.done",
]


async def test_every_event_of_a_voice_session_validates_against_the_ga_union(gemini, start_gateway):
    server, sink = gemini_gateway(start_gateway, gemini)
    client = await walk(server)
    try:
        # Server VAD (the default), audio out, input transcription.
        await client.send(type="session.update", session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
        await client.until("session.updated")
        speech = tone_pcm16(600) + bytes(24 * 2 * 700)
        for offset in range(0, len(speech), 4800):
            await client.send(type="input_audio_buffer.append", audio=base64.b64encode(speech[offset : offset + 4800]).decode())
        events = await client.until("response.done")
        kinds = [e["type"] for e in events]
        assert kinds[:3] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
        assert kinds.index("conversation.item.input_audio_transcription.delta") < kinds.index("response.created")
        response_kinds = kinds[kinds.index("response.created") :]
        assert [k for k in response_kinds if k in AUDIO_RESPONSE_ORDER][: len(AUDIO_RESPONSE_ORDER)] == AUDIO_RESPONSE_ORDER
        assert kinds[-len(AUDIO_RESPONSE_END) :] == AUDIO_RESPONSE_END
        done = events[-1]["response"]
        assert done["status"] == "completed" and done["usage"]["output_token_details"]["audio_tokens"] > 0
        user_item = next(e for e in events if e["type"] == "input_audio_buffer.committed")["item_id"]
        transcript = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert transcript["item_id"] == user_item and "milliseconds" in transcript["transcript"]
        audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
        assert len(audio) == 300 * 48  # Gemini's 24 kHz, unchanged

        # What Gemini cannot do is refused by name, and the session goes on.
        noise = {"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "near_field"}}}}
        await client.send(type="session.update", event_id="evt_noise", session=noise)
        refused = await client.until("error")
        assert refused[-1]["error"]["param"] == "session.audio.input.noise_reduction" and refused[-1]["error"]["event_id"] == "evt_noise"
        await client.send(type="session.update", session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
        assert (await client.until("session.updated"))[-1]["session"]["audio"]["output"]["voice"] == "Puck"
        await client.send(type="conversation.item.delete", item_id=user_item)
        assert (await client.until("error"))[-1]["error"]["code"] == "unsupported_on_provider"
        await client.send(type="conversation.item.retrieve", item_id=user_item)
        retrieved = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert retrieved["content"][0]["transcript"] == transcript["transcript"]
        await client.send(type="response.create", response={"instructions": "other"})
        assert (await client.until("error"))[-1]["error"]["param"] == "response.instructions"
        await client.send(type="input_audio_buffer.append", audio="not base64!")
        assert (await client.until("error"))[-1]["error"]["code"] == "invalid_value"

    finally:
        await client.ws.close()
    (record,) = sink.wait_for(1)
    assert record.status == "completed" and record.inputs[0]["kind"] == "audio"


async def test_speech_over_an_answer_and_response_cancel_end_it_cancelled(start_gateway):
    options = SimulatorOptions(pace=1, audio_delta_ms=50, response_audio_ms=4_000, api_keys=[GEMINI_KEY])
    with ServerThread(create_simulator_app(options)) as paced:
        server, sink = gemini_gateway(start_gateway, paced)
        client = await walk(server)
        try:
            await client.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell a story"}]})
            await client.send(type="response.create")
            await client.until("response.output_audio.delta")
            await client.send(type="input_audio_buffer.append", audio=base64.b64encode(tone_pcm16(100)).decode())
            events = await client.until("response.done")
            kinds = [e["type"] for e in events]
            assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
            status = events[-1]["response"]
            assert status["status"] == "cancelled" and status["status_details"]["reason"] == "turn_detected"
            item = next(e for e in events if e["type"] == "response.output_item.done")["item"]
            assert item["status"] == "incomplete"
            # Gemini cut it short itself, so truncating it is confirmed.
            await client.send(type="conversation.item.truncate", item_id=item["id"], content_index=0, audio_end_ms=100)
            assert (await client.until("conversation.item.truncated"))[-1]["item_id"] == item["id"]
            # A cancelled response ends cancelled when Gemini completes its turn, with nothing more relayed.
            await client.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "talk"}]})
            await client.send(type="response.create", response={"metadata": {"turn": "cancel-me"}})
            created = await client.until("response.created")
            assert created[-1]["response"]["metadata"] == {"turn": "cancel-me"}
            await client.send(type="response.cancel")
            ended = await client.until("response.done")
            cancelled = ended[-1]["response"]
            relayed = [e for e in ended if e["type"] == "response.output_audio.delta"]
            assert len(relayed) < 4_000 // 50  # the rest of Gemini's turn was not relayed
            assert cancelled["status"] == "cancelled" and cancelled["status_details"]["reason"] == "client_cancelled"
            await client.send(type="response.cancel")
            assert (await client.until("error"))[-1]["error"]["code"] == "response_cancel_not_active"
        finally:
            await client.ws.close()
    interrupted, cancelled_record = sink.wait_for(2)
    assert interrupted.status == "cancelled" and interrupted.status_reason == "turn_detected"
    assert cancelled_record.status == "cancelled" and cancelled_record.status_reason == "client_cancelled"
    assert cancelled_record.usage["output_audio_tokens"] > 0  # Gemini's whole turn, billed once


async def test_openai_agents_runner_completes_text_audio_and_tool_turns(gemini, start_gateway):
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    calls: list[str] = []

    @function_tool
    def get_weather(query: str) -> str:
        """The weather for a query (the simulator's calls carry the user's words as `query`)."""
        calls.append(query)
        return "sunny"

    server, sink = gemini_gateway(start_gateway, gemini)
    runner = RealtimeRunner(
        starting_agent=RealtimeAgent(name="Assistant", instructions="Be brief.", tools=[get_weather]),
        config={"model_settings": {"model_name": "gemini-live", "voice": "Kore"}},
    )
    session = await runner.run(model_config={"url": f"{server.ws_url}/v1/realtime?model=gemini-live", "api_key": VIRTUAL_KEY})
    errors: list[Any] = []

    async def until_agent_end() -> list[Any]:
        seen = []
        async for event in session:
            seen.append(event)
            if event.type == "error":
                errors.append(event)
            if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                SERVER_EVENT.validate_python(event.data.data)
            if event.type == "agent_end":
                return seen
        raise AssertionError("session ended")

    async with session:
        await session.send_message("hello agent")
        text_turn = await asyncio.wait_for(until_agent_end(), 20)
        assert any(e.type == "audio" for e in text_turn)
        # The user speaks once the answer has played (300 ms of audio); speech over unplayed audio would ask
        # for a truncation Gemini cannot make, which is refused (see test_speech_over_an_answer…).
        await asyncio.sleep(0.5)
        await session.send_audio(tone_pcm16(600) + bytes(24 * 2 * 700))
        audio_turn = await asyncio.wait_for(until_agent_end(), 20)
        assert any(e.type == "audio" for e in audio_turn)
        await session.send_message("get_weather in Paris")
        # The call's turn, the tool run (the runner may report it after that turn's end), then the answer.
        tool_turns = await asyncio.wait_for(until_agent_end(), 20)
        while not any(e.type == "tool_end" for e in tool_turns):
            tool_turns += await asyncio.wait_for(until_agent_end(), 20)
        answer_turn = tool_turns[[e.type for e in tool_turns].index("tool_end") :]
        if not any(e.type == "agent_end" for e in answer_turn):
            answer_turn += await asyncio.wait_for(until_agent_end(), 20)
        assert any(e.type == "audio" for e in answer_turn)
    assert [e.error for e in errors] == [] and calls == ["get_weather in Paris"]
    records = sink.wait_for(4)
    assert [r.status for r in records] == ["completed"] * 4
    assert records[0].inputs[-1]["text"] == "hello agent" and records[0].metadata.get("voice", "Kore") == "Kore"


async def test_the_session_outlives_gemini_ending_its_connections(start_gateway):
    # Every connection says goAway after one turn and closes 3 s later; the client notices nothing.
    options = SimulatorOptions(pace=0, api_keys=[GEMINI_KEY], gemini_go_away_after_turns=1, gemini_go_away_ms=3000)
    with ServerThread(create_simulator_app(options)) as leaving:
        server, sink = gemini_gateway(start_gateway, leaving)
        dones, kinds = [], []
        async with client_for(server).realtime.connect(model="gemini-live") as conn:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            for words in ("first", "second", "third"):
                # Sent at once after the previous turn: it may arrive during the switch, and waits for it.
                await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": words}]})
                await conn.response.create()
                events = await until_done(conn)
                kinds += [e.type for e in events]
                assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == f"You said: {words}"
                dones.append(events[-1].response)
    assert kinds.count("session.created") == 1 and "error" not in kinds
    records = sink.wait_for(3)
    assert [r.metadata.get("upstream_connection") for r in records] == [None, 2, 3]
    # The resumed connection has the conversation: each prompt is the previous context plus the new words.
    first, second, _ = (d.usage for d in dones)
    assert second.input_tokens == first.input_tokens + first.output_tokens + 2  # "second": ceil(6 / 4)


async def test_a_config_change_after_a_turn_takes_effect_on_the_next_connection(gemini, start_gateway):
    server, sink = gemini_gateway(start_gateway, gemini)
    async with client_for(server).realtime.connect(model="gemini-live") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]})
        await conn.response.create()
        first = (await until_done(conn))[-1].response.usage
        await conn.session.update(session={"type": "realtime", "instructions": "Twelve characters."})
        async for event in conn:
            if event.type in ("session.updated", "error"):
                break
        assert event.type == "session.updated" and event.session.instructions == "Twelve characters."
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}]})
        await conn.response.create()
        second = (await until_done(conn))[-1].response.usage
    # The new system instruction (18 characters: 5 tokens) is in the resumed prompt with the history.
    assert second.input_tokens == 5 + first.input_tokens + first.output_tokens + 1
    assert [r.metadata.get("upstream_connection") for r in sink.wait_for(2)] == [None, 2]


def test_webrtc_calls_and_client_secrets_for_a_gemini_model_are_refused_by_name(gemini, start_gateway):
    import httpx

    server, _ = gemini_gateway(start_gateway, gemini, client_secrets={"secret": "s" * 32})
    auth = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
    offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
    call = httpx.post(f"{server.url}/v1/realtime/calls?model=gemini-live", content=offer, headers={**auth, "Content-Type": "application/sdp"})
    assert call.status_code == 400
    error = call.json()["error"]
    assert error["code"] == "webrtc_not_supported_for_model" and "Gemini Live" in error["message"] and error["param"] == "model"
    secret = httpx.post(f"{server.url}/v1/realtime/client_secrets", json={"session": {"type": "realtime", "model": "gemini-live"}}, headers=auth)
    assert secret.status_code == 400 and secret.json()["error"]["code"] == "client_secrets_not_supported_for_model"


async def test_a_client_that_waits_for_session_created_gets_it_and_may_still_configure(gemini, start_gateway):
    server, sink = gemini_gateway(start_gateway, gemini)
    client = await walk(server)
    try:
        created = await client.recv()  # sent nothing: the default setup went after gemini.setup_wait_ms
        assert created["type"] == "session.created" and created["session"]["output_modalities"] == ["audio"]
        await client.send(type="session.update", session={"type": "realtime", "output_modalities": ["text"], "instructions": "Be brief."})
        updated = await client.until("session.updated")
        assert updated[-1]["session"]["output_modalities"] == ["text"]
        await client.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]})
        await client.send(type="response.create")
        events = await client.until("response.done")
        assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "You said: Hello there"
        assert events[-1]["response"]["usage"]["input_tokens"] == 6  # the new instructions were set up
        assert client.types.count("session.created") == 1
    finally:
        await client.ws.close()
    (record,) = sink.wait_for(1)
    assert record.metadata["upstream_connection"] == 2


LEAVING_STALLED = SimulatorOptions(pace=0, api_keys=[GEMINI_KEY], gemini_go_away_after_turns=1, gemini_go_away_ms=30_000,
                                   gemini_stall_resumed=True)


async def first_turn_then_go_away(server: ServerThread) -> Walk:
    client = await walk(server)
    await client.send(type="session.update", session={"type": "realtime", "output_modalities": ["text"]})
    await client.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
    await client.send(type="response.create")
    await client.until("response.done")  # then goAway: the next connection opens, and is never set up
    return client


async def closed_with(client: Walk) -> tuple[dict[str, Any], int]:
    error = (await client.until("error"))[-1]["error"]
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return error, closed.value.rcvd.code


async def test_a_next_connection_that_is_never_set_up_ends_the_session_with_an_error_and_1011(start_gateway):
    with ServerThread(create_simulator_app(LEAVING_STALLED)) as leaving:
        server, sink = gemini_gateway(start_gateway, leaving, {"setup_timeout_s": 0.5})
        client = await first_turn_then_go_away(server)
        error, code = await closed_with(client)
    assert error["code"] == "upstream_session_not_resumable" and code == 1011
    assert [r.status for r in sink.wait_for(1)] == ["completed"]


async def test_input_beyond_the_reconnect_buffer_ends_the_session_rather_than_dropping_it(start_gateway):
    with ServerThread(create_simulator_app(LEAVING_STALLED)) as leaving:
        server, _ = gemini_gateway(start_gateway, leaving, {"buffer_bytes": 65536, "setup_timeout_s": 30})
        client = await first_turn_then_go_away(server)
        chunk = base64.b64encode(tone_pcm16(100)).decode()  # about 4.3 KB once resampled and wrapped
        for _ in range(40):  # 170 KB while the switch waits: more than the 64 KiB held
            await client.send(type="input_audio_buffer.append", audio=chunk)
        error, code = await closed_with(client)
    assert error["code"] == "reconnect_buffer_full" and code == 1011


async def test_gemini_closing_on_a_bad_key_reaches_the_client_as_an_openai_error(gemini, start_gateway):
    server, sink = start_gateway(
        f"{gemini.url}/v1",
        providers={"gemini": {"kind": "gemini", "base_url": gemini.url, "api_key": "not-the-key"}},
        models={"gemini-live": {"provider": "gemini", "model": MODEL}},
    )
    client = await walk(server)  # Gemini closes right after the upgrade, as the service does on a bad key
    error, code = await closed_with(client)
    assert code == 1007 and error["code"] == "upstream_closed" and "API key not valid" in error["message"]
    assert "not-the-key" not in json.dumps(error)
