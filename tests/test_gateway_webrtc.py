"""WebRTC calls through the gateway: real aiortc callers and openai-python → gateway (two aiortc peers) → simulator.

Everything runs on loopback; the gateway gathers 127.0.0.1 candidates (`webrtc.host_candidates: loopback`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from bifrost_rt.config import parse_config
from bifrost_rt.policy.hooks import Decision, Plugin
from bifrost_rt.rtc.aiortc_hooks import LOOPBACK
from bifrost_rt.runtime.app import create_app
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator.audio import TONE_HZ
from bifrost_rt.tools.simulator.webrtc import OPUS_RATE

from conftest import PROVIDER_KEY, VIRTUAL_KEY, CapturingSink, gateway_config, recv_json, recv_until
from rtc_client import TIMEOUT_S, Caller, call, rms, zero_crossing_hz
from servers import ServerThread

MODEL_PATH = "/v1/realtime/calls?model=gpt-realtime"
SECRET = "a-client-secret-sealing-key-for-tests"
WEBRTC = {"host_candidates": "loopback", "max_calls_per_key": 3}
FAST_VAD = {"type": "server_vad", "silence_duration_ms": 200}
TEXT_ONLY = {"output_modalities": ["text"]}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def simulator_server() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, response_audio_ms=600))) as running:
        yield running


def _gateway(simulator: ServerThread, sink: CapturingSink, plugins: tuple[Plugin, ...] = (), **overrides: Any) -> ServerThread:
    config = gateway_config(f"{simulator.url}/v1", webrtc={**WEBRTC, **overrides.pop("webrtc", {})}, client_secrets={"secret": SECRET}, **overrides)
    return ServerThread(create_app(parse_config(config), turn_sinks=[sink], plugins=plugins))


@pytest.fixture(scope="module")
def sink() -> CapturingSink:
    return CapturingSink()


@pytest.fixture(scope="module")
def gateway(simulator_server: ServerThread, sink: CapturingSink) -> Iterator[ServerThread]:
    with _gateway(simulator_server, sink) as running:
        yield running


async def wait_for_record(sink: CapturingSink, predicate: Any) -> Any:
    async def found() -> Any:
        while True:
            for record in list(sink.records):
                if predicate(record):
                    return record
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(found(), TIMEOUT_S)


async def post_offer(gateway: ServerThread, path: str = MODEL_PATH, key: str = VIRTUAL_KEY) -> httpx.Response:
    """A fresh caller's offer posted raw; the caller is closed again (only the HTTP answer matters)."""
    caller = Caller()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as client:
            return await client.post(path, content=await caller.offer(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"})
    finally:
        await caller.close()


# --- media ---


async def test_audio_crosses_the_gateway_both_ways_without_decoding(gateway: ServerThread, sink: CapturingSink) -> None:
    async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH) as (caller, call_id):
        relay = gateway.app.state.calls.get(call_id)
        caller.send("session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": FAST_VAD}}})
        await caller.until("session.updated")
        caller.microphone.speak(600)
        # The simulator hears the caller's tone through the gateway: its VAD starts and commits a turn.
        events = await caller.until("response.done")
        types = [e["type"] for e in events]
        assert "input_audio_buffer.speech_started" in types and "input_audio_buffer.committed" in types
        # ... and the caller hears the simulator's 440 Hz answer, not silence.
        loud = await caller.loud_frames(15)
        assert abs(zero_crossing_hz(b"".join(loud), OPUS_RATE) - TONE_HZ) < 10
        assert min(rms(frame) for frame in loud) > 0.05

        up, down = relay.to_upstream.stats(), relay.to_client.stats()
        for stats in (up, down):
            assert stats["packets_out"] > 25 and stats["malformed"] == 0 and stats["overflow_dropped"] == 0
            assert stats["bytes_out"] > 0 and stats["dwell_ms_mean"] < 50
        # The gateway's own aiortc receivers never saw a packet: nothing was jitter-buffered or decoded.
        for pc in (relay.client_pc, relay.upstream_pc):
            for transceiver in pc.getTransceivers():
                assert not transceiver.receiver._RTCRtpReceiver__remote_streams

    record = await wait_for_record(sink, lambda r: r.session_id == relay.session.id and r.status == "completed")
    assert record.transport == "webrtc" and record.inputs[0]["kind"] == "audio"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as client:
        metrics = (await client.get("/metrics")).text
    for direction in ("up", "down"):
        forwarded = re.search(rf'^bifrost_rt_rtp_packets_total{{direction="{direction}"}} (\S+)$', metrics, re.M)
        assert forwarded and float(forwarded.group(1)) >= 25
        assert f'bifrost_rt_rtp_dropped_total{{direction="{direction}"}} 0.0' in metrics
    assert re.search(r'^bifrost_rt_sessions_opened_total\{transport="webrtc"\} [1-9]', metrics, re.M)


async def test_answers_offer_loopback_candidates_and_opus_only(gateway: ServerThread) -> None:
    caller = Caller()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as client:
            reply = await client.post(MODEL_PATH, content=await caller.offer(),
                                      headers={"Authorization": f"Bearer {VIRTUAL_KEY}", "Content-Type": "application/sdp"})
        assert reply.status_code == 201, reply.text
        assert reply.headers["content-type"] == "application/sdp"
        assert re.fullmatch(r"/v1/realtime/calls/rtc_[0-9A-Za-z]{21}", reply.headers["location"])
        answer = reply.text
        rtpmaps = re.findall(r"a=rtpmap:\d+ (\S+)", answer)
        assert rtpmaps == ["opus/48000/2"]
        assert "webrtc-datachannel" in answer
        assert set(re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) ", answer)) == {LOOPBACK}
        await caller.accept(answer)
        await caller.expect("session.created")
    finally:
        await caller.close()


# --- turns over the data channel ---


async def test_text_and_function_call_turns_are_recorded_like_websocket_turns(
    gateway: ServerThread, sink: CapturingSink
) -> None:
    async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH, session={**TEXT_ONLY, "tools": [WEATHER_TOOL]}) as (caller, call_id):
        session_id = gateway.app.state.calls.get(call_id).session.id
        await caller.say("hello over webrtc")
        caller.send("response.create", response={"tool_choice": "none"})
        events = await caller.until("rate_limits.updated")
        reply = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert reply == "You said: hello over webrtc"

        await caller.say("what is the weather in Paris?")
        caller.send("response.create", response={"tool_choice": "required"})
        done = (await caller.until("rate_limits.updated"))[-2]
        (function_call,) = [o for o in done["response"]["output"] if o["type"] == "function_call"]
        caller.send("conversation.item.create", item={"type": "function_call_output", "call_id": function_call["call_id"], "output": '{"temp": 21}'})
        await caller.until("conversation.item.done")
        caller.send("response.create", response={"tool_choice": "none"})
        await caller.until("rate_limits.updated")

    calls = await asyncio.wait_for(_records(sink, session_id, 3), TIMEOUT_S)
    text, tool, answer = calls
    assert [r.status for r in calls] == ["completed"] * 3
    assert text.inputs[0]["text"] == "hello over webrtc" and text.output["text"] == "You said: hello over webrtc"
    assert tool.output["tool_calls"][0]["name"] == "get_weather"
    assert answer.inputs[0]["kind"] == "tool_output"
    assert all(r.usage["total_tokens"] > 0 and r.cost["total"] > 0 for r in calls)

    # A WebSocket session doing the same turn produces a record of exactly the same shape.
    async with websockets.connect(f"{gateway.ws_url}/v1/realtime?model=gpt-realtime",
                                  additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", **TEXT_ONLY, "tools": [WEATHER_TOOL]}}))
        await recv_until(ws, "session.updated")
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello over webrtc"}]}}))
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_ws_1", "response": {"tool_choice": "none"}}))
        await recv_until(ws, "response.done")
    ws_record = await wait_for_record(sink, lambda r: r.transport == "websocket")
    assert _shape(dataclasses.asdict(ws_record)) == _shape(dataclasses.asdict(text))
    assert ws_record.output == text.output and ws_record.inputs[0]["text"] == text.inputs[0]["text"]


async def _until(condition: Any) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), TIMEOUT_S)


async def _records(sink: CapturingSink, session_id: str, count: int) -> list[Any]:
    while True:
        records = [r for r in sink.records if r.session_id == session_id]
        if len(records) >= count:
            return records
        await asyncio.sleep(0.02)


def _shape(value: Any) -> Any:
    """The keys and value types of a record, recursively."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


# --- signalling ---


async def test_openai_python_creates_calls_raw_and_multipart(gateway: ServerThread) -> None:
    client = AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{gateway.url}/v1")
    raw_caller, multipart_caller = Caller(), Caller()
    try:
        raw = await client.realtime.calls.with_raw_response.create(sdp=await raw_caller.offer(), extra_query={"model": "gpt-realtime-mini"})
        assert raw.status_code == 201 and raw.headers["content-type"] == "application/sdp"
        await raw_caller.accept(raw.text)
        (created,) = await raw_caller.expect("session.created")
        assert created["session"]["model"] == "gpt-realtime-mini"

        session = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.", "output_modalities": ["text"]}
        multipart = await client.realtime.calls.with_raw_response.create(sdp=await multipart_caller.offer(), session=session)
        assert multipart.status_code == 201
        call_id = multipart.headers["location"].rsplit("/", 1)[-1]
        assert call_id.startswith("rtc_") and multipart.text.startswith("v=0")
        await multipart_caller.accept(multipart.text)
        (created,) = await multipart_caller.expect("session.created")
        assert created["session"]["instructions"] == "Be brief." and created["session"]["output_modalities"] == ["text"]

        await client.realtime.calls.hangup(call_id)
        await asyncio.wait_for(multipart_caller.channel_closed.wait(), TIMEOUT_S)
        await raw_caller.say("the other call is untouched")
    finally:
        await raw_caller.close()
        await multipart_caller.close()
        await client.close()


@pytest.mark.parametrize("prefix", ["/openai/v1", "/openai"])
async def test_provider_prefixed_routes_and_the_legacy_route(gateway: ServerThread, prefix: str) -> None:
    for path, beta in ((f"{prefix}/realtime/calls?model=gpt-realtime", False), (f"{prefix}/realtime?model=gpt-realtime", True)):
        # The legacy route's clients speak beta events on the data channel.
        async with call(gateway, key=VIRTUAL_KEY, path=path, beta=beta) as (caller, call_id):
            assert call_id.startswith("rtc_")
            await caller.say("hi")
            caller.send("response.create", response={"modalities": ["text"]} if beta else {"output_modalities": ["text"]})
            events = await caller.until("response.done")
            assert ("response.text.delta" if beta else "response.output_text.delta") in {e["type"] for e in events}


async def test_client_secret_places_a_call_billed_to_the_minting_key(gateway: ServerThread, sink: CapturingSink) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as client:
        minted = await client.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
                                   json={"session": {"type": "realtime", "model": "gpt-realtime", "instructions": "From the secret."}})
    assert minted.status_code == 200
    token = minted.json()["value"]
    assert token.startswith("ek_") and PROVIDER_KEY not in minted.text
    async with call(gateway, key=token) as (caller, call_id):
        session_id = gateway.app.state.calls.get(call_id).session.id
        caller.send("session.update", session={"type": "realtime", **TEXT_ONLY})
        updated = (await caller.until("session.updated"))[-1]
        assert updated["session"]["instructions"] == "From the secret."
        await caller.say("hello")
        caller.send("response.create")
        await caller.until("response.done")
    record = await wait_for_record(sink, lambda r: r.session_id == session_id)
    assert record.principal == "team-a" and record.status == "completed"


async def test_refusals_are_openai_shaped_http_errors(gateway: ServerThread) -> None:
    caller = Caller()
    offer = await caller.offer()
    await caller.close()
    sdp = {"Content-Type": "application/sdp"}
    key = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as client:
        async def refused(status: int, code: str, url: str = MODEL_PATH, **request: Any) -> dict[str, Any]:
            reply = await client.post(url, **request)
            assert reply.status_code == status, reply.text
            error = reply.json()["error"]
            assert error["code"] == code and error["type"] and error["message"]
            assert PROVIDER_KEY not in reply.text
            return error

        await refused(401, "invalid_api_key", content=offer, headers=sdp)
        await refused(401, "invalid_api_key", content=offer, headers={**sdp, "Authorization": "Bearer sk-bf-nope"})
        await refused(401, "invalid_api_key", content=offer, headers={**sdp, "Authorization": "Bearer ek_forged"})
        error = await refused(400, "missing_required_parameter", content=b"", headers={**key, **sdp})
        assert error["param"] == "sdp"
        await refused(400, "missing_required_parameter", "/v1/realtime/calls", content=offer, headers={**key, **sdp})
        await refused(403, "model_not_allowed", content=offer, headers={**sdp, "Authorization": "Bearer sk-bf-mini-only"})
        error = await refused(400, "invalid_value", "/v1/realtime/calls", headers=key,
                              files={"sdp": (None, offer, "application/sdp"), "session": (None, "{not json", "application/json")})
        assert error["param"] == "session"
        await refused(400, "invalid_offer", content=b"v=0\r\n", headers={**key, **sdp})
        pcmu_only = re.sub(r"a=rtpmap:\d+ opus/48000/2\r\n", "", offer)
        error = await refused(400, "invalid_offer", content=pcmu_only, headers={**key, **sdp})
        assert "Opus" in error["message"]
        await refused(413, "request_too_large", content=b"v=0" + b" " * 70_000, headers={**key, **sdp})
        # The provider's own 400 (an invalid session field) reaches the caller as it was.
        error = await refused(400, "unknown_parameter", "/v1/realtime/calls", headers=key,
                              files={"sdp": (None, offer, "application/sdp"),
                                     "session": (None, '{"type": "realtime", "model": "gpt-realtime", "voice": "x"}', "application/json")})
        assert error["param"] == "session.voice"
    assert len(gateway.app.state.calls) == 0


async def test_unknown_models_are_refused_before_the_provider_is_called(simulator_server: ServerThread) -> None:
    """With two providers and no default, a bare name that no provider serves is unknown."""
    providers = {name: {"base_url": f"{simulator_server.url}/v1", "api_key": PROVIDER_KEY} for name in ("openai", "backup")}
    config = gateway_config(f"{simulator_server.url}/v1", providers=providers, webrtc=WEBRTC)
    with ServerThread(create_app(parse_config(config))) as gateway:
        reply = await post_offer(gateway, "/v1/realtime/calls?model=gpt-realtime")
        assert reply.status_code == 400
        assert reply.json()["error"]["code"] == "model_not_found" and reply.json()["error"]["param"] == "model"
        async with call(gateway, key=VIRTUAL_KEY, path="/v1/realtime/calls?model=backup/gpt-realtime") as (caller, _):
            await caller.say("routed to the named provider")


async def test_per_key_call_cap(gateway: ServerThread) -> None:
    async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH), call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH), \
            call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH):
        reply = await post_offer(gateway)
        assert reply.status_code == 429 and reply.json()["error"]["code"] == "call_limit_reached"
        # Another key is not held back by this one's calls.
        async with call(gateway, key="sk-bf-mini-only", path="/v1/realtime/calls?model=gpt-realtime-mini"):
            pass


# --- hangup, sideband, teardown ---


async def test_hangup_mid_turn_records_it_interrupted(gateway: ServerThread, sink: CapturingSink) -> None:
    async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH) as (caller, call_id):
        session_id = gateway.app.state.calls.get(call_id).session.id
        await caller.say("a long answer please [sim:fault=stall]")
        caller.send("response.create")
        await caller.until("response.created")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as client:
            other = await client.post(f"/v1/realtime/calls/{call_id}/hangup", headers={"Authorization": "Bearer sk-bf-mini-only"})
            assert other.status_code == 404 and other.json()["error"]["code"] == "call_not_found"
            reply = await client.post(f"/v1/realtime/calls/{call_id}/hangup", headers={"Authorization": f"Bearer {VIRTUAL_KEY}"})
            assert reply.status_code == 200 and reply.content == b""
        await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)
    record = await wait_for_record(sink, lambda r: r.session_id == session_id)
    assert record.status == "interrupted" and record.status_reason == "hangup"
    assert len(gateway.app.state.calls) == 0


async def test_sideband_socket_sees_and_drives_the_call(gateway: ServerThread) -> None:
    async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH, session=TEXT_ONLY) as (caller, call_id):
        url = f"{gateway.ws_url}/v1/realtime?call_id={call_id}"
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer sk-bf-mini-only"}) as stranger:
            error = await recv_json(stranger)
            assert error["type"] == "error" and error["error"]["code"] == "call_not_found"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as sideband:
            await sideband.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "from the server"}]}}))
            await sideband.send(json.dumps({"type": "response.create"}))
            seen = await recv_until(sideband, "response.done")
            heard = await caller.until("response.done")
            # Both see the provider's events of the one session, as the same text.
            assert [e["event_id"] for e in seen if e["type"].startswith("response.")] == \
                   [e["event_id"] for e in heard if e["type"].startswith("response.")]
            reply = "".join(e["delta"] for e in heard if e["type"] == "response.output_text.delta")
            assert reply == "You said: from the server"
            await gateway_hangup(gateway, call_id)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(sideband.recv(), TIMEOUT_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    async with websockets.connect(f"{gateway.ws_url}/v1/realtime?call_id=rtc_unknown",
                                  additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as unknown:
        assert (await recv_json(unknown))["error"]["code"] == "call_not_found"


async def gateway_hangup(gateway: ServerThread, call_id: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as client:
        reply = await client.post(f"/v1/realtime/calls/{call_id}/hangup", headers={"Authorization": f"Bearer {VIRTUAL_KEY}"})
        assert reply.status_code == 200


class _SlowCheck(Plugin):
    """Holds every response.create for a second, so client messages pile up behind it."""

    name = "slow"

    async def pre_turn(self, request: Any) -> Decision:
        await asyncio.sleep(1.0)
        return Decision.allow()


async def test_a_full_message_queue_ends_the_call_with_an_error(simulator_server: ServerThread) -> None:
    sink = CapturingSink()
    with _gateway(simulator_server, sink, plugins=(_SlowCheck(),), webrtc={"max_pending_messages": 5},
                  hooks={"pre_turn_timeout_ms": 5000}) as gateway:
        async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH, session=TEXT_ONLY) as (caller, _):
            caller.send("response.create")
            for n in range(10):
                caller.send("conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"{n}"}]})
            events = await caller.until("error")
            assert events[-1]["error"]["code"] == "message_queue_full"
            await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)
        await _until(lambda: len(gateway.app.state.calls) == 0)  # the peers close just after the channel


async def test_a_silent_client_is_dropped_after_the_grace_period(simulator_server: ServerThread) -> None:
    sink = CapturingSink()
    with _gateway(simulator_server, sink, webrtc={"disconnect_grace_s": 1.5}) as gateway:
        async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH, session=TEXT_ONLY) as (caller, call_id):
            session_id = gateway.app.state.calls.get(call_id).session.id
            # A brief outage (shorter than the grace) is survived.
            with caller.outage():
                await asyncio.sleep(0.8)
            await caller.say("still connected")
            await caller.say("now vanish [sim:fault=stall]")
            caller.send("response.create")
            await caller.until("response.created")
            with caller.outage():
                record = await wait_for_record(sink, lambda r: r.session_id == session_id)
        assert record.status == "interrupted" and record.status_reason == "client_disconnected"


async def test_shutdown_tells_the_caller_on_the_data_channel(simulator_server: ServerThread) -> None:
    sink = CapturingSink()
    gateway = _gateway(simulator_server, sink)
    with gateway:
        async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH) as (caller, _):
            await asyncio.to_thread(gateway.stop)
            events = await caller.until("error")
            assert events[-1]["error"]["code"] == "server_shutting_down"
            await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)


# --- governance ---


async def test_budget_ends_the_call_after_its_turn_and_refuses_the_next_call(simulator_server: ServerThread) -> None:
    sink = CapturingSink()
    limited = [{"key": VIRTUAL_KEY, "name": "team-a", "budget": {"usd": 0.0001, "period": "day"}}]
    with _gateway(simulator_server, sink, virtual_keys=limited) as gateway:
        async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH, session=TEXT_ONLY) as (caller, _):
            await caller.say("spend it")
            caller.send("response.create")
            events = await caller.until("error")
            done = next(e for e in events if e["type"] == "response.done")
            assert done["response"]["status"] == "completed"  # the turn that crossed the budget was let finish
            assert events[-1]["error"]["code"] == "insufficient_quota"
            await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)
        record = await wait_for_record(sink, lambda r: r.status == "completed")
        assert record.transport == "webrtc" and record.cost["total"] > 0.0001
        reply = await post_offer(gateway)
        assert reply.status_code == 429 and reply.json()["error"]["type"] == "insufficient_quota"


async def test_an_unreachable_provider_is_a_502_without_its_address_or_key() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with ServerThread(create_app(parse_config(gateway_config(dead_url, webrtc=WEBRTC)))) as gateway:
        reply = await post_offer(gateway)
        assert reply.status_code == 502 and reply.json()["error"]["code"] == "upstream_unavailable"
        assert dead_url.split("//")[1] not in reply.text and PROVIDER_KEY not in reply.text
        assert len(gateway.app.state.calls) == 0 and len(gateway.app.state.gateway.registry) == 0


async def test_a_provider_that_falls_silent_mid_response_ends_the_call(simulator_server: ServerThread) -> None:
    sink = CapturingSink()
    with _gateway(simulator_server, sink, webrtc={"upstream_silence_s": 1.5}) as gateway:
        async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH, session=TEXT_ONLY) as (caller, call_id):
            relayed = gateway.app.state.calls.get(call_id)
            caller.send("response.create", response={"metadata": {"sim.fault": "stall"}})  # a response that stays open
            await caller.until("response.created")
            # From now on nothing the provider sends reaches the gateway, as when its host dies.
            for protocol in relayed.upstream_pc.sctp.transport.transport.iceGatherer._connection._protocols:
                protocol.datagram_received = lambda data, addr: None
            events = await caller.until("error")
            assert events[-1]["error"]["code"] == "upstream_connection_lost"
            await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)
        record = await wait_for_record(sink, lambda r: r.session_id == relayed.session.id)
        assert (record.status, record.status_reason, record.error["code"]) == ("failed", "upstream_silent", "upstream_connection_lost")


async def test_the_provider_closing_its_channel_mid_response_fails_the_turn(simulator_server: ServerThread) -> None:
    sink = CapturingSink()
    with _gateway(simulator_server, sink) as gateway:
        async with call(gateway, key=VIRTUAL_KEY, path=MODEL_PATH, session=TEXT_ONLY) as (caller, call_id):
            relayed = gateway.app.state.calls.get(call_id)
            caller.send("response.create", response={"metadata": {"sim.fault": "stall"}})
            await caller.until("response.created")
            relayed.upstream_channel.close()  # what the gateway sees when the provider closes its side
            events = await caller.until("error")
            assert events[-1]["error"]["code"] == "upstream_connection_lost"
        record = await wait_for_record(sink, lambda r: r.session_id == relayed.session.id)
        assert (record.status, record.error["code"]) == ("failed", "upstream_connection_lost")
