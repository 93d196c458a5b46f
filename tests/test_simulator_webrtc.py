"""WebRTC calls to the simulator: a real aiortc client against the simulator served by uvicorn, on loopback only.

Like the browser and SDK clients, the caller makes its `oai-events` data channel and microphone track before the
offer. Every data-channel event is validated against openai-python's GA `RealtimeServerEvent` union.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from bifrost_rt.rtc.aiortc_hooks import LOOPBACK
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator.audio import TONE_HZ
from bifrost_rt.tools.simulator.webrtc import OPUS_RATE

from rtc_client import KEY, TIMEOUT_S, Caller, call, hang_up, rms, zero_crossing_hz
from servers import ServerThread

RESPONSE_MS = 600
# Responses are generated at once (pace 0); the call's track still plays them in real time.
OPTIONS = SimulatorOptions(pace=0, response_audio_ms=RESPONSE_MS)
FAST_VAD = {"type": "server_vad", "silence_duration_ms": 200}

RESPONSE_HEAD = [
    "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
]
TEXT_TAIL = [
    "response.output_text.done", "response.content_part.done", "response.output_item.done",
    "conversation.item.done", "response.done", "rate_limits.updated",
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(OPTIONS)) as running:
        yield running


@pytest.fixture(scope="module")
def keyed() -> Iterator[ServerThread]:
    """Only `sk-good` is accepted, and only one call at a time."""
    options = SimulatorOptions(pace=0, response_audio_ms=RESPONSE_MS, api_keys=["sk-good"], webrtc_max_calls=1)
    with ServerThread(create_simulator_app(options)) as running:
        yield running




async def open_calls(server: ServerThread) -> int:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        return (await client.get(f"{server.url}/healthz")).json()["calls"]


async def no_calls_left(server: ServerThread) -> None:
    """Polls: the server notices a caller leaving on its own, with nothing to tell the caller."""
    while await open_calls(server):
        await asyncio.sleep(0.05)


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def without_deltas(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events if not e["type"].endswith(".delta")]


# --- signalling ---


CALL_SESSION = {"type": "realtime", "instructions": "Be brief.", "audio": {"output": {"voice": "marin"}}}


def offer_request(form: str, offer: str) -> dict[str, Any]:
    """httpx arguments for a call request: the raw offer, or multipart with parts as plain fields or as files."""
    if form == "raw":
        return {"url": "/v1/realtime/calls", "content": offer, "params": {"model": "gpt-realtime-mini"},
                "headers": {"Content-Type": "application/sdp"}}
    sdp_name, session_name = ("offer.sdp", "session.json") if form == "files" else (None, None)
    return {"url": "/realtime/calls" if form == "fields" else "/v1/realtime/calls", "files": {
        "sdp": (sdp_name, offer, "application/sdp"),
        "session": (session_name, json.dumps(CALL_SESSION), "application/json"),
    }}


@pytest.mark.parametrize("form", ["raw", "fields", "files"])
async def test_offers_get_sdp_answers(server: ServerThread, form: str) -> None:
    caller = Caller()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S,
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            reply = await client.post(**offer_request(form, await caller.offer()))
        assert reply.status_code == 201, reply.text
        assert reply.headers["content-type"] == "application/sdp"
        assert re.fullmatch(r"/v1/realtime/calls/rtc_[0-9A-Za-z]{21}", reply.headers["location"])
        answer = reply.text
        assert answer.startswith("v=0") and "a=setup:active" in answer and "opus/48000/2" in answer
        assert "webrtc-datachannel" in answer
        candidates = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) ", answer)
        assert candidates and set(candidates) == {LOOPBACK}

        await caller.accept(answer)
        (created,) = await caller.expect("session.created")
        if form == "raw":
            assert created["session"]["model"] == "gpt-realtime-mini"
        else:
            assert created["session"]["instructions"] == "Be brief."
            assert created["session"]["audio"]["output"]["voice"] == "marin"
    finally:
        await caller.close()


async def test_openai_python_creates_and_hangs_up_calls(server: ServerThread) -> None:
    client = AsyncOpenAI(api_key=KEY, base_url=f"{server.url}/v1")
    first, second = Caller(), Caller()
    try:
        answer = await client.realtime.calls.create(sdp=await first.offer())
        await first.accept(answer.text)
        await first.expect("session.created")

        session = {"type": "realtime", "model": "gpt-realtime", "output_modalities": ["text"]}
        raw = await client.realtime.calls.with_raw_response.create(sdp=await second.offer(), session=session)
        assert raw.status_code == 201 and raw.headers["content-type"] == "application/sdp"
        call_id = raw.headers["location"].rsplit("/", 1)[-1]
        assert call_id.startswith("rtc_")
        await second.accept(raw.text)
        (created,) = await second.expect("session.created")
        assert created["session"]["output_modalities"] == ["text"]

        await client.realtime.calls.hangup(call_id)
        await asyncio.wait_for(second.channel_closed.wait(), TIMEOUT_S)
        # The other call is untouched.
        await first.say("still here")
    finally:
        await first.close()
        await second.close()
        await client.close()


async def test_client_secret_configures_the_call(keyed: ServerThread) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        minted = await client.post(f"{keyed.url}/v1/realtime/client_secrets",
                                   headers={"Authorization": "Bearer sk-good"},
                                   json={"session": {"type": "realtime", "instructions": "From the secret."}})
    assert minted.status_code == 200
    async with call(keyed, key=minted.json()["value"]) as (caller, call_id):
        caller.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
        (updated,) = await caller.expect("session.updated")
        assert updated["session"]["instructions"] == "From the secret."
        # This server takes one call at a time; hang up so the next test finds it free.
        await hang_up(keyed, call_id, "sk-good")


# --- turns over the data channel ---


async def test_text_turn_with_usage(server: ServerThread) -> None:
    async with call(server, session={"output_modalities": ["text"]}) as (caller, _):
        await caller.say("hello over webrtc")
        caller.send("response.create")
        events = await caller.until("rate_limits.updated")
        assert without_deltas(events) == RESPONSE_HEAD + TEXT_TAIL
        reply = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert reply == "You said: hello over webrtc"
        usage = events[-2]["response"]["usage"]
        assert usage["output_tokens"] > 0 and usage["input_tokens"] > 0
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_function_call_turn(server: ServerThread) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}
    async with call(server, session={"output_modalities": ["text"], "tools": [tool]}) as (caller, _):
        await caller.say("please get_weather for Oslo")
        caller.send("response.create")
        events = await caller.until("rate_limits.updated")
        assert without_deltas(events) == [
            "response.created", "response.output_item.added", "conversation.item.added",
            "response.function_call_arguments.done", "response.output_item.done", "conversation.item.done",
            "response.done", "rate_limits.updated",
        ]
        done = events[-2]["response"]["output"][0]
        assert done["type"] == "function_call" and done["name"] == "get_weather"
        assert json.loads(done["arguments"]) == {"query": "please get_weather for Oslo"}

        caller.send("conversation.item.create",
                    item={"type": "function_call_output", "call_id": done["call_id"], "output": '{"temp_c": 3}'})
        await caller.expect("conversation.item.added", "conversation.item.done")
        caller.send("response.create")
        events = await caller.until("response.done")
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == 'The function returned: {"temp_c": 3}'


# --- audio both ways ---


async def test_spoken_turn_commits_and_the_answer_is_heard(server: ServerThread) -> None:
    async with call(server, session={"audio": {"input": {"turn_detection": FAST_VAD}}}) as (caller, _):
        caller.microphone.speak(600)
        events = await caller.until("output_audio_buffer.stopped")
        kinds = types_of(events)
        assert kinds[:5] == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
        ]
        started, stopped = events[0], events[1]
        # 600 ms of tone + 200 ms of silence, after up to 300 ms of prefix padding (the audio heard since
        # `session.created`), give or take the codec's smearing.
        assert 790 <= stopped["audio_end_ms"] - started["audio_start_ms"] <= 1150

        assert "response.output_audio.delta" not in kinds, "audio travels on the track, not the channel"
        done = next(e for e in events if e["type"] == "response.done")["response"]
        assert done["status"] == "completed" and done["usage"]["output_token_details"]["audio_tokens"] > 0
        assert re.fullmatch(r"I heard \d+ ms of audio\.", done["output"][0]["content"][0]["transcript"])
        playing = next(e for e in events if e["type"] == "output_audio_buffer.started")
        assert playing["response_id"] == events[-1]["response_id"] == done["id"]
        assert kinds.index("response.content_part.added") < kinds.index("output_audio_buffer.started")
        assert kinds.index("response.done") < kinds.index("output_audio_buffer.stopped")

        # The answer arrives as the tone: 600 ms is 30 frames; the first and last loud ones may be partial.
        loud = await caller.loud_frames(25)
        tone = b"".join(loud[1:-1])
        assert rms(tone) > 0.1
        assert abs(zero_crossing_hz(tone, OPUS_RATE) - TONE_HZ) < 10
        assert rms(caller.heard[0]) < 0.01, "the track is silent while nothing speaks"


async def test_clear_and_barge_in_cut_the_playing_audio(server: ServerThread) -> None:
    async with call(server, session={"audio": {"input": {"turn_detection": FAST_VAD}}}) as (caller, _):
        await caller.say("a long answer please")
        long_answer = {"metadata": {"sim.audio_ms": "20000"}}
        # Generated at once, the answer is done long before its 20 s have played.
        caller.send("response.create", response=long_answer)
        events = await caller.until_all("rate_limits.updated", "output_audio_buffer.started")
        response_id = next(e for e in events if e["type"] == "output_audio_buffer.started")["response_id"]
        caller.send("output_audio_buffer.clear")
        events = await caller.until("output_audio_buffer.cleared")
        assert types_of(events) == ["output_audio_buffer.cleared"] and events[0]["response_id"] == response_id

        # Talking over a playing answer clears it too.
        caller.send("response.create", response=long_answer)
        events = await caller.until_all("rate_limits.updated", "output_audio_buffer.started")
        response_id = next(e for e in events if e["type"] == "output_audio_buffer.started")["response_id"]
        caller.microphone.speak(300)
        events = await caller.until("output_audio_buffer.cleared")
        assert types_of(events) == ["input_audio_buffer.speech_started", "output_audio_buffer.cleared"]
        assert events[-1]["response_id"] == response_id


# --- ending calls and refusals ---


async def test_hangup_closes_the_call(server: ServerThread) -> None:
    async with call(server) as (caller, call_id):
        reply = await hang_up(server, call_id)
        assert reply.status_code == 200 and reply.content == b""
        await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)
        reply = await hang_up(server, call_id)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "call_not_found"


async def test_a_drop_fault_ends_the_call(server: ServerThread) -> None:
    async with call(server, session={"output_modalities": ["text"]}) as (caller, call_id):
        await caller.say("cut me off [sim:fault=drop]")
        caller.send("response.create")
        await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)
        assert (await hang_up(server, call_id)).status_code == 404


async def test_caller_leaving_or_app_shutdown_ends_calls() -> None:
    with ServerThread(create_simulator_app(OPTIONS)) as running:
        async with call(running):
            assert await open_calls(running) == 1
        # The caller closed its peer connection without hanging up.
        await asyncio.wait_for(no_calls_left(running), TIMEOUT_S)

        async with call(running) as (caller, _):
            await asyncio.to_thread(running.stop)
            await asyncio.wait_for(caller.channel_closed.wait(), TIMEOUT_S)


async def test_refusals(keyed: ServerThread) -> None:
    offer = await (caller := Caller()).offer()
    await caller.close()
    async with httpx.AsyncClient(base_url=keyed.url, timeout=TIMEOUT_S) as client:
        url = "/v1/realtime/calls"
        sdp = {"Content-Type": "application/sdp"}
        reply = await client.post(url, content=offer, headers=sdp)
        assert reply.status_code == 401 and reply.json()["error"]["type"] == "invalid_request_error"
        reply = await client.post(url, content=offer, headers={**sdp, "Authorization": "Bearer sk-bad"})
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        reply = await client.post(f"{url}/rtc_unknown/hangup", headers={"Authorization": "Bearer sk-bad"})
        assert reply.status_code == 401

        good = {"Authorization": "Bearer sk-good"}
        for body in [{"content": b"", "headers": {**good, **sdp}},
                     {"files": {"session": (None, '{"type": "realtime"}', "application/json")}, "headers": good}]:
            reply = await client.post(url, **body)
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "sdp"
            assert reply.json()["error"]["code"] == "missing_required_parameter"
        for session, param in [("{not json", "session"), ('{"type": "realtime", "voice": "x"}', "session.voice")]:
            reply = await client.post(url, headers=good, files={"sdp": (None, offer, "application/sdp"),
                                                                  "session": (None, session, "application/json")})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == param
        reply = await client.post(url, content=b"v=0\r\n", headers={**good, **sdp})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_offer"
        reply = await client.post(f"{url}/rtc_unknown/hangup", headers=good)
        assert reply.status_code == 404

        # One call at a time here: a second is refused until the first hangs up.
        async with call(keyed, key="sk-good") as (_, call_id):
            reply = await client.post(url, content=offer, headers={**good, **sdp})
            assert reply.status_code == 429 and reply.json()["error"]["code"] == "rate_limit_exceeded"
            assert (await hang_up(keyed, call_id, "sk-good")).status_code == 200
        reply = await client.post(url, content=offer, headers={**good, **sdp})
        assert reply.status_code == 201
        assert (await hang_up(keyed, reply.headers["location"].rsplit("/", 1)[-1], "sk-good")).status_code == 200
