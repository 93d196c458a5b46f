"""A WebRTC caller for tests, made as the SDKs and browsers make one: data channel and microphone first, then the
offer; every data-channel event it receives is validated against openai-python's GA `RealtimeServerEvent` union.
"""

from __future__ import annotations

import asyncio
import fractions
import math
from array import array
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from itertools import pairwise
from typing import Any

import av
import httpx
import orjson
import pydantic
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent

from bifrost_rt.rtc.aiortc_hooks import LOOPBACK, restrict_host_candidates
from bifrost_rt.tools.simulator.webrtc import FRAME_SAMPLES, OPUS_RATE

from servers import ServerThread

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
BETA_SERVER_EVENT = pydantic.TypeAdapter(BetaServerEvent)
TIMEOUT_S = 10
KEY = "sk-test"
LOUD_RMS = 0.05  # of full scale; the simulator's tone is about 0.18, silence through Opus about 0
VOICE_HZ = 300  # the caller's tone, apart from the simulator's so neither can pass for the other


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
    """A WebRTC client as the SDKs make it: data channel and microphone first, then the offer.

    `beta`: a client of the retired beta protocol, whose events are checked against the beta models."""

    def __init__(self, beta: bool = False) -> None:
        self.beta = beta
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

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Drops every datagram this caller sends while it lasts, as a network outage would."""
        protocols = [
            protocol
            for transceiver in self.pc.getTransceivers()
            for protocol in transceiver.receiver.transport.transport.iceGatherer._connection._protocols
        ]

        async def send_nothing(data: bytes, addr: Any) -> None:
            pass

        for protocol in protocols:
            protocol.send_data = send_nothing
            protocol.send_stun = lambda message, addr: None
        try:
            yield
        finally:
            for protocol in protocols:
                del protocol.send_data, protocol.send_stun

    def send(self, event_type: str, **fields: Any) -> str:
        self._next_id += 1
        event_id = f"evt_client_{self._next_id}"
        self.channel.send(orjson.dumps({"type": event_type, "event_id": event_id, **fields}).decode())
        return event_id

    async def recv(self) -> dict[str, Any]:
        message = await asyncio.wait_for(self._messages.get(), TIMEOUT_S)
        assert isinstance(message, str), "events travel as text messages"
        event = orjson.loads(message)
        assert (BETA_SERVER_EVENT if self.beta else SERVER_EVENT).validate_python(event).type == event["type"]
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
        await self.expect(*(("conversation.item.created",) if self.beta else ("conversation.item.added", "conversation.item.done")))

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
    server: ServerThread, key: str = KEY, session: dict[str, Any] | None = None, path: str = "/v1/realtime/calls", beta: bool = False
) -> AsyncIterator[tuple[Caller, str]]:
    """A connected caller past `session.created` (and `session.updated` when `session` is given), with its call id."""
    caller = Caller(beta)
    try:
        offer = await caller.offer()
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            reply = await client.post(f"{server.url}{path}", content=offer,
                                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"})
        assert reply.status_code == 201, reply.text
        await caller.accept(reply.text)
        (created,) = await caller.expect("session.created")
        assert ("modalities" if beta else "type") in created["session"]
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
