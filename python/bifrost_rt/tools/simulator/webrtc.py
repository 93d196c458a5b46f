"""WebRTC calls (`POST /v1/realtime/calls`): an aiortc peer connection answers the client's offer, and the same
session state machine as the WebSocket drives the call.

The client opens a data channel labelled `oai-events` and sends one audio track. The channel carries the GA events
both ways, one JSON event per text message; `session.created` goes out when it opens. Audio never crosses the
channel: the caller's Opus track is decoded, converted to the session's input format and fed to turn detection, and
responses speak on an outgoing Opus track (`SpeakerTrack`) instead of sending `response.output_audio.delta`. Calls,
unlike WebSockets, get `output_audio_buffer.started` / `.stopped` around each response's audio and
`output_audio_buffer.cleared` when it is cut short (`output_audio_buffer.clear`, or the user talking over it).

A call ends on hangup, when its data channel closes or its peer connection fails, and when the app shuts down.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
from array import array
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from bifrost_rt.rtc.aiortc_hooks import host_addresses, restrict_host_candidates
from bifrost_rt.rtc.codecs import EVENTS_CHANNEL, OPUS_RATE
from bifrost_rt.tools.simulator.audio import SAMPLE_RATE, TONE_AMPLITUDE, TONE_HZ, encode, format_kind
from bifrost_rt.tools.simulator.ids import new_id
from bifrost_rt.tools.simulator.options import SimulatorOptions
from bifrost_rt.tools.simulator.session import RealtimeSession

logger = logging.getLogger("bifrost_rt.simulator")

FRAME_SAMPLES = 960  # 20 ms, the packet time aiortc sends
_FRAME_BYTES = FRAME_SAMPLES * 2
_TIME_BASE = fractions.Fraction(1, OPUS_RATE)


# --- audio ---


@cache
def _tone_two_seconds() -> bytes:
    """The output tone at 48 kHz, native-endian s16. A second holds whole cycles, so every frame is one slice."""
    step = 2 * math.pi * TONE_HZ / OPUS_RATE
    second = array("h", (round(TONE_AMPLITUDE * math.sin(step * n)) for n in range(OPUS_RATE))).tobytes()
    return second * 2


@dataclass
class _Speech:
    """One response's audio in the speaker's queue."""

    response_id: str
    samples: int = 0  # queued and not yet sent
    ended: bool = False  # the response will queue no more
    started: bool = False  # `output_audio_buffer.started` went out


class SpeakerTrack(MediaStreamTrack):
    """The call's outgoing audio (an `AudioOutput`): the tone while a response speaks, silence otherwise.

    Frames are 20 ms at 48 kHz, paced in real time however fast responses queue their audio. `announce` sends the
    output_audio_buffer events: `started` when a response's first samples go out, `stopped` once its last have gone
    and it has ended, `cleared` when `clear` drops audio.
    """

    kind = "audio"

    def __init__(self, announce: Callable[[str, str], Awaitable[None]]) -> None:
        super().__init__()
        self._announce = announce
        self._queue: deque[_Speech] = deque()
        self._cut: set[str] = set()  # responses cleared while still generating: the rest of their audio is dropped
        self._tone_at = 0  # tone samples sent, for a phase-continuous tone
        self._sent = 0  # samples sent: the next frame's pts
        self._epoch: float | None = None

    def play(self, response_id: str, ms: int) -> None:
        if response_id in self._cut:
            return
        if not self._queue or self._queue[-1].response_id != response_id:
            self._queue.append(_Speech(response_id))
        self._queue[-1].samples += ms * OPUS_RATE // 1000

    def end(self, response_id: str) -> None:
        self._cut.discard(response_id)
        for speech in self._queue:
            if speech.response_id == response_id:
                speech.ended = True

    async def clear(self) -> None:
        """Drops the queued audio; `cleared` names the response that was playing. Nothing queued: no event."""
        if not self._queue:
            return
        self._cut.update(speech.response_id for speech in self._queue if not speech.ended)
        response_id = self._queue[0].response_id
        self._queue.clear()
        await self._announce("output_audio_buffer.cleared", response_id)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._epoch is None:
            self._epoch = loop.time()
        delay = self._epoch + self._sent / OPUS_RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pcm, events = self._next_samples()
        for event_type, response_id in events:
            await self._announce(event_type, response_id)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(pcm)
        frame.sample_rate = OPUS_RATE
        frame.pts = self._sent
        frame.time_base = _TIME_BASE
        self._sent += FRAME_SAMPLES
        return frame

    def _next_samples(self) -> tuple[bytes, list[tuple[str, str]]]:
        """The next frame's samples, and the buffer events that sending them means."""
        pcm = bytearray()
        events: list[tuple[str, str]] = []
        while self._queue and len(pcm) < _FRAME_BYTES:
            head = self._queue[0]
            if head.samples:
                if not head.started:
                    head.started = True
                    events.append(("output_audio_buffer.started", head.response_id))
                count = min(head.samples, (_FRAME_BYTES - len(pcm)) // 2)
                start = self._tone_at % OPUS_RATE * 2
                pcm += _tone_two_seconds()[start : start + count * 2]
                self._tone_at += count
                head.samples -= count
            elif head.ended:
                self._queue.popleft()
                if head.started:
                    events.append(("output_audio_buffer.stopped", head.response_id))
            else:
                break  # the response is still generating: silence until it queues more
        pcm += bytes(_FRAME_BYTES - len(pcm))
        return bytes(pcm), events


class _Microphone:
    """The caller's decoded audio (48 kHz, from Opus) in the session's input format."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._rate = 0

    def convert(self, frame: av.AudioFrame, kind: str) -> bytes:
        rate = SAMPLE_RATE[kind]
        if self._resampler is None or rate != self._rate:
            self._resampler, self._rate = av.AudioResampler(format="s16", layout="mono", rate=rate), rate
        # Plane buffers may be padded past the samples; s16 mono is two bytes a sample.
        pcm = b"".join(bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(frame))
        return encode(kind, array("h", pcm).tolist())


# --- calls ---


class Call:
    """One call: a peer connection answering the client's offer, and the session its data channel drives.

    Channel messages and caller audio go through one queue, so the session sees them in arrival order, one at a
    time, as a WebSocket session sees its frames. The call is the session's `Peer`: a fault that would close or drop
    a WebSocket ends the call.
    """

    def __init__(
        self, call_id: str, options: SimulatorOptions, config: dict[str, Any], forget: Callable[[Call], None]
    ) -> None:
        self.id = call_id
        self.closed = False
        self._forget = forget
        self._addresses = host_addresses(options.webrtc_host_candidates)
        servers = [RTCIceServer(urls=url) for url in options.webrtc_ice_servers]
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._speaker = SpeakerTrack(self._announce)
        self._microphone = _Microphone()
        self.session = RealtimeSession(self, options, config, audio_out=self._speaker)
        self._channel: RTCDataChannel | None = None
        self._microphone_track: MediaStreamTrack | None = None
        self._inbox: asyncio.Queue[tuple[Callable[[Any], Awaitable[None]], Any]] = asyncio.Queue()
        self._listening = False  # caller audio counts from `session.created` on
        self._tasks: list[asyncio.Task[None]] = []
        self._closer: asyncio.Task[None] | None = None
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, offer: str) -> str:
        """The answer SDP; raises ValueError (or aiortc's InvalidAccessError) for an unusable offer."""
        pc = self._pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        if not pc.getTransceivers() and pc.sctp is None:
            raise ValueError("the offer has no media section")
        if any(transceiver.kind == "audio" for transceiver in pc.getTransceivers()):
            pc.addTrack(self._speaker)
        restrict_host_candidates(pc, self._addresses)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def hang_up(self) -> None:
        await asyncio.shield(self.hang_up_soon())

    def hang_up_soon(self) -> asyncio.Task[None]:
        """Starts ending the call once; safe from the call's own tasks, which the ending cancels."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._close())
        return self._closer

    # --- the session's Peer ---

    async def send(self, text: str) -> None:
        channel = self._channel
        if not self.closed and channel is not None and channel.readyState == "open":
            channel.send(text)

    async def close(self, code: int, reason: str) -> None:
        self.hang_up_soon()  # a call has no close codes: the `close` fault ends it

    async def abort(self) -> None:
        self.hang_up_soon()

    # --- peer connection events ---

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_CHANNEL or self._channel is not None:
            return  # the API defines no other channel
        self._channel = channel
        channel.on("message", lambda message: self._inbox.put_nowait((self.session.handle, message)))
        channel.on("close", self.hang_up_soon)
        self._tasks.append(asyncio.get_running_loop().create_task(self._serve()))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._microphone_track is None:  # the session has one input buffer
            self._microphone_track = track
            self._tasks.append(asyncio.get_running_loop().create_task(self._listen(track)))

    def _on_connection_state(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self.hang_up_soon()

    # --- tasks ---

    async def _serve(self) -> None:
        await self.session.start()
        self._listening = True
        while True:
            handle, payload = await self._inbox.get()
            try:
                await handle(payload)
            except Exception:
                logger.exception("call %s failed to handle its input", self.id)

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self._listening:
                self._inbox.put_nowait((self._hear, frame))

    async def _hear(self, frame: av.AudioFrame) -> None:
        kind = format_kind(self.session.config["audio"]["input"].get("format"))
        await self.session.append_audio(self._microphone.convert(frame, kind))

    async def _announce(self, event_type: str, response_id: str) -> None:
        await self.session.emit(event_type, {"response_id": response_id})

    async def _close(self) -> None:
        self.closed = True
        try:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.session.stop()
            self._speaker.stop()
            await self._pc.close()
        finally:
            self._forget(self)


class Calls:
    """The app's open calls, at most `options.webrtc_max_calls`."""

    def __init__(self, options: SimulatorOptions) -> None:
        self._options = options
        self._calls: dict[str, Call] = {}

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def full(self) -> bool:
        return len(self._calls) >= self._options.webrtc_max_calls

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    async def open(self, offer: str, config: dict[str, Any]) -> tuple[str, str]:
        """(call id, answer SDP). The call holds its place while it negotiates, so the limit holds under bursts."""
        call = Call(new_id("rtc"), self._options, config, lambda done: self._calls.pop(done.id, None))
        self._calls[call.id] = call
        try:
            return call.id, await call.answer(offer)
        except BaseException:
            await call.hang_up()
            raise

    async def close_all(self) -> None:
        await asyncio.gather(*(call.hang_up() for call in list(self._calls.values())))
