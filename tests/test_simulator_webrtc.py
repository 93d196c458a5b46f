"""WebRTC calls to the simulator: a real aiortc client against the simulator served by uvicorn, on loopback only.

Like the browser and SDK clients, the caller makes its `oai-events` data channel and microphone track before the
offer. Every data-channel event is validated against openai-python's GA `RealtimeServerEvent` union.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import re
from array import array
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from itertools import pairwise
from typing import Any

import av
import httpx
import orjson
import pydantic
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

from bifrost_rt.simulator import SimulatorOptions, create_simulator_app
from bifrost_rt.simulator.audio import TONE_HZ
from bifrost_rt.simulator.webrtc import FRAME_SAMPLES, LOOPBACK, OPUS_RATE, restrict_host_candidates

from servers import ServerThread

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
TIMEOUT_S = 10
KEY = "sk-test"
RESPONSE_MS = 600
# Responses are generated at once (pace 0); the call's track still plays them in real time.
OPTIONS = SimulatorOptions(pace=0, response_audio_ms=RESPONSE_MS)
FAST_VAD = {"type": "server_vad", "silence_duration_ms": 200}
LOUD_RMS = 0.05  # of full scale; the simulator's tone is about 0.18, silence through Opus about 0
VOICE_HZ = 300  # the caller's tone, apart from the simulator's so neither can pass for the other

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


# --- audio ---


def rms(pcm: bytes) -> float:
    samples = array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / len(samples)) / 32768 if samples else 0.0


def zero_crossing_hz(pcm: bytes, rate: int) -> float:
    """The frequency of a pure tone from its sign changes (two per cycle)."""
    samples = array("h", pcm)
    crossings = sum(1 for a, b in pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate)


class Microphone(MediaStreamTrack):
    """The caller's microphone: silence, or a sine for as long as `speak` asks; 20 ms frames in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0
        self._epoch: float | None = None
        self._tone_left = 0

    def speak(self, ms: int) -> None:
        self._tone_left = ms * OPUS_RATE // 1000

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._epoch is None:
            self._epoch = loop.time()
        delay = self._epoch + self._sent / OPUS_RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        step = 2 * math.pi * VOICE_HZ / OPUS_RATE
        samples = array("h", bytes(FRAME_SAMPLES * 2))
        for n in range(min(self._tone_left, FRAME_SAMPLES)):
            samples[n] = round(8000 * math.sin(step * (self._sent + n)))
        self._tone_left = max(0, self._tone_left - FRAME_SAMPLES)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = OPUS_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, OPUS_RATE)
        self._sent += FRAME_SAMPLES
        return frame


# --- the caller ---


class Caller:
    """A WebRTC client as the SDKs make it: data channel and microphone first, then the offer."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("oai-events")
        self.microphone = Microphone()
        self.pc.addTrack(self.microphone)
        self.heard: list[bytes] = []  # the simulator's audio: decoded 20 ms frames, mono s16 at 48 kHz
        self._heard_more = asyncio.Condition()
        self._messages: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.channel_closed = asyncio.Event()
        self.channel.on("message", self._messages.put_nowait)
        self.channel.on("close", self.channel_closed.set)
        self.pc.on("track", self._on_track)
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id = 0

    async def offer(self) -> str:
        restrict_host_candidates(self.pc, [LOOPBACK])
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()

    def send(self, event_type: str, **fields: Any) -> str:
        self._next_id += 1
        event_id = f"evt_client_{self._next_id}"
        self.channel.send(orjson.dumps({"type": event_type, "event_id": event_id, **fields}).decode())
        return event_id

    async def recv(self) -> dict[str, Any]:
        message = await asyncio.wait_for(self._messages.get(), TIMEOUT_S)
        assert isinstance(message, str), "events travel as text messages"
        event = orjson.loads(message)
        assert SERVER_EVENT.validate_python(event).type == event["type"]
        return event

    async def expect(self, *types: str) -> list[dict[str, Any]]:
        events = [await self.recv() for _ in types]
        assert [e["type"] for e in events] == list(types)
        return events

    async def until(self, event_type: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != event_type:
            events.append(await self.recv())
        return events

    async def until_all(self, *types: str) -> list[dict[str, Any]]:
        """Events up to the first moment each of `types` has arrived, in whatever order they come."""
        events: list[dict[str, Any]] = []
        while not set(types) <= {e["type"] for e in events}:
            events.append(await self.recv())
        return events

    async def say(self, text: str) -> None:
        self.send("conversation.item.create",
                  item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
        await self.expect("conversation.item.added", "conversation.item.done")

    async def loud_frames(self, count: int) -> list[bytes]:
        """Waits until `count` loud frames of the simulator's audio have arrived; returns the loud frames."""

        def loud() -> list[bytes]:
            return [frame for frame in self.heard if rms(frame) > LOUD_RMS]

        async with self._heard_more:
            await asyncio.wait_for(self._heard_more.wait_for(lambda: len(loud()) >= count), TIMEOUT_S)
        return loud()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._listen(track)))

    async def _listen(self, track: MediaStreamTrack) -> None:
        to_mono = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in to_mono.resample(frame):
                self.heard.append(bytes(out.planes[0])[: out.samples * 2])
            async with self._heard_more:
                self._heard_more.notify_all()


@asynccontextmanager
async def call(
    server: ServerThread, key: str = KEY, session: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Caller, str]]:
    """A connected caller past `session.created` (and `session.updated` when `session` is given), with its call id."""
    caller = Caller()
    try:
        offer = await caller.offer()
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            reply = await client.post(f"{server.url}/v1/realtime/calls", content=offer,
                                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"})
        assert reply.status_code == 201, reply.text
        await caller.accept(reply.text)
        (created,) = await caller.expect("session.created")
        assert created["session"]["type"] == "realtime"
        if session:
            caller.send("session.update", session={"type": "realtime", **session})
            await caller.expect("session.updated")
        yield caller, reply.headers["location"].rsplit("/", 1)[-1]
    finally:
        await caller.close()


async def hang_up(server: ServerThread, call_id: str, key: str = KEY) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        return await client.post(f"{server.url}/v1/realtime/calls/{call_id}/hangup",
                                 headers={"Authorization": f"Bearer {key}"})


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
