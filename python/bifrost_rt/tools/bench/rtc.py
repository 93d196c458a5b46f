"""The WebRTC bench's load side: callers, the in-process simulator, and the RTP taps that time every packet.

Every Opus payload that enters the measured path carries a unique 8-byte tag in Opus padding (RFC 6716 §3.2.5, a
code-3 packet with one frame): decoders skip padding, and the gateway forwards payloads unchanged, so a payload
identifies its packet on both sides of the gateway. Callers send pre-encoded silence tagged this way (no encoder
in the load generator); the simulator's own packets are tagged as they leave its peer. Four taps note
`(payload, time.perf_counter_ns())`:

    uplink    caller  RTCDtlsTransport._send_rtp     ->  simulator  RTCDtlsTransport._handle_rtp_data
    downlink  simulator  _send_rtp                   ->  caller  _handle_rtp_data

Both ends live in this process, on one event loop, so both read one monotonic clock. Send taps fire before SRTP
protection, receive taps after SRTP unprotection; the simulator's receive tap wraps aiortc's handler, so the
simulator still decodes the caller's audio. The caller's receive tap replaces it: callers never decode.

That is the `full` media path, used to time packets. A caller and a simulator peer cost this process more CPU than
the gateway spends relaying them (aiortc's sender loop, the simulator's Opus encoder and decoder threads), so one
core of load could not fill one core of gateway. The `lean` path (`Probe.lean`) keeps aiortc for ICE, DTLS, SCTP
and signalling, and replaces media at both ends: a timer per peer sends a tagged payload every 20 ms straight
through the peer's SRTP session to its ICE socket, and arriving SRTP is unprotected and noted where aioice hands
the datagram over, without reaching aiortc. The gateway sees the same thing either way: one SRTP stream of
20 ms packets each way per call.

Like transports/aiortc_hooks.py, this reaches into aiortc's and aioice's private attributes (aiortc 1.16.0):
`RTCDtlsTransport._send_rtp`, `_handle_rtp_data`, `_tx_srtp`, `_rx_srtp`, `RTCRtpSender._ssrc`, and aioice's
`Connection._nominated` and `data_received`. The simulator's calls are reached by wrapping `Call.answer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import itertools
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import uvicorn
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import is_rtcp
from pylibsrtp import Error as SrtpError

from bifrost_rt.rtc.aiortc_hooks import LOOPBACK, restrict_host_candidates
from bifrost_rt.rtc.codecs import EVENTS_CHANNEL, OPUS_RATE, opus_codecs
from bifrost_rt.tools.bench.procs import BenchError
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator import webrtc as sim_webrtc

FRAME_SAMPLES = 960  # 20 ms
FRAME_S = FRAME_SAMPLES / OPUS_RATE
TAG_BYTES = 8
_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
_MAX_PADDING = 254  # one padding-length byte


# --- tagged Opus payloads ---


def tag_payload(payload: bytes, tag: int, size: int) -> bytes | None:
    """`payload` (a one-frame Opus packet) as a code-3 packet whose padding ends with `tag`, about `size` bytes
    long (never shorter than the frame and the tag need). None for packets that already use code 1-3."""
    toc = payload[0]
    if toc & 3:
        return None
    padding = min(_MAX_PADDING, max(TAG_BYTES, size - 3 - (len(payload) - 1)))
    # TOC with c=3; frame count byte: CBR, padding flag, one frame; padding length; the frame; the padding.
    return b"".join((bytes((toc | 3, 0x41, padding)), payload[1:], bytes(padding - TAG_BYTES),
                     tag.to_bytes(TAG_BYTES, "big")))


def rtp_payload_offset(packet: bytes) -> int:
    """Where the payload of an RTP packet starts (after CSRCs and the header extension)."""
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(packet[offset + 2:offset + 4], "big")
    return offset


def rtp_payload(packet: bytes) -> bytes:
    end = len(packet) - packet[-1] if packet[0] & 0x20 else len(packet)
    return packet[rtp_payload_offset(packet):end]


@functools.cache
def silence_payload() -> bytes:
    """One 20 ms Opus frame of digital silence, as aiortc's encoder makes it."""
    encoder, payloads = OpusEncoder(), []
    for n in range(5):
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(bytes(FRAME_SAMPLES * 2))
        frame.sample_rate, frame.pts, frame.time_base = OPUS_RATE, n * FRAME_SAMPLES, _TIME_BASE
        payloads += encoder.encode(frame)[0]
    return payloads[-1]


# --- packet ledgers ---


class Ledger:
    """One direction's packets: when each tagged payload was sent and when it arrived, inside a window."""

    def __init__(self) -> None:
        self.sending = False  # sends are noted inside the window
        self.receiving = False  # arrivals until the window has drained
        self.reset()

    def reset(self) -> None:
        self.sent: dict[bytes, int] = {}
        self.received: dict[bytes, int] = {}
        self.duplicates = 0

    def note_sent(self, payload: bytes) -> None:
        if self.sending:
            self.sent[payload] = time.perf_counter_ns()

    def note_received(self, payload: bytes) -> None:
        if self.receiving:
            if payload in self.received:
                self.duplicates += 1
            else:
                self.received[payload] = time.perf_counter_ns()

    def delays_ms(self) -> list[float]:
        """One-way delay of every packet sent in the window that arrived, matched 1:1 by payload."""
        received = self.received
        return [(received[p] - t) / 1e6 for p, t in self.sent.items() if p in received]


@dataclass
class Probe:
    """The run's taps write here; a phase opens a window, lets audio flow, then closes it."""

    payload_bytes: int
    lean: bool = False  # media of calls opened from now on: see the module's docstring
    up: Ledger = field(default_factory=Ledger)
    down: Ledger = field(default_factory=Ledger)
    tags: itertools.count = field(default_factory=itertools.count)

    def open(self) -> None:
        """Starts a window: the taps hold these ledgers, so they are emptied in place."""
        for ledger in (self.up, self.down):
            ledger.reset()
            ledger.sending = ledger.receiving = True

    def stop_sending(self) -> None:
        self.up.sending = self.down.sending = False

    def close(self) -> None:
        self.up.receiving = self.down.receiving = False


def _transports(pc: RTCPeerConnection) -> set[Any]:
    """The DTLS transports that carry `pc`'s RTP, once its remote description is set."""
    found = set()
    for transceiver in pc.getTransceivers():
        found.update((transceiver.sender.transport, transceiver.receiver.transport))
    found.discard(None)
    return found


def tap_sent(pc: RTCPeerConnection, ledger: Ledger, retag: Callable[[bytes], bytes | None] | None = None) -> None:
    """Notes every RTP payload `pc` sends, before SRTP; `retag` may replace the payload first (None: keep it)."""
    for transport in _transports(pc):
        transport._send_rtp = _sending(transport._send_rtp, ledger, retag)


def _sending(send: Callable[[bytes], Awaitable[None]], ledger: Ledger,
             retag: Callable[[bytes], bytes | None] | None) -> Callable[[bytes], Awaitable[None]]:
    async def send_rtp(data: bytes) -> None:
        if not is_rtcp(data):
            offset = rtp_payload_offset(data)
            payload = data[offset:]
            if retag is not None:
                tagged = retag(payload)
                if tagged is not None:
                    payload, data = tagged, data[:offset] + tagged
            ledger.note_sent(payload)
        await send(data)

    return send_rtp


def tap_received(pc: RTCPeerConnection, ledger: Ledger, *, deliver: bool) -> None:
    """Notes every RTP payload `pc` receives, after SRTP; with `deliver`, aiortc then handles it as usual."""
    for transport in _transports(pc):
        transport._handle_rtp_data = _receiving(transport._handle_rtp_data if deliver else None, ledger)


def _receiving(handle: Callable[[bytes, int], Awaitable[None]] | None,
               ledger: Ledger) -> Callable[[bytes, int], Awaitable[None]]:
    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        ledger.note_received(rtp_payload(data))
        if handle is not None:
            await handle(data, arrival_time_ms)

    return handle_rtp_data


# --- lean media ---


class Parked(MediaStreamTrack):
    """A track that never yields a frame: aiortc's sender waits on it while lean media sends in its place."""

    kind = "audio"

    async def recv(self) -> av.Packet:
        await asyncio.get_running_loop().create_future()  # until the sender stops and cancels the wait
        raise MediaStreamError


_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000", re.IGNORECASE | re.MULTILINE)
LEAN_READY_TIMEOUT_S = 15.0


class LeanMedia:
    """One peer's audio on the lean path: see the module's docstring."""

    def __init__(self, pc: RTCPeerConnection, probe: Probe, sent: Ledger, received: Ledger) -> None:
        self._pc, self._probe, self._sent, self._received = pc, probe, sent, received
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        """Waits until the audio transport's SRTP keys exist, then hooks receiving and starts the 20 ms timer."""
        pc = self._pc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEAN_READY_TIMEOUT_S
        transceiver = next(t for t in pc.getTransceivers() if t.kind == "audio")
        while True:
            dtls = transceiver.sender.transport
            connection = dtls.transport._connection if dtls is not None else None
            if dtls is not None and dtls._tx_srtp is not None and dtls._rx_srtp is not None \
                    and connection._nominated.get(1) is not None and pc.remoteDescription is not None:
                break
            if self._stopped or pc.connectionState in ("closed", "failed") or loop.time() > deadline:
                return
            await asyncio.sleep(0.01)
        pair = connection._nominated[1]
        match = _OPUS_RTPMAP.search(pc.remoteDescription.sdp)
        self._dtls = dtls
        self._sendto, self._address = pair.protocol.transport.sendto, pair.remote_addr
        self._first_byte, self._payload_type = 0x80, int(match.group(1)) if match else 111
        self._ssrc = transceiver.sender._ssrc.to_bytes(4, "big")
        self._sequence, self._timestamp = random.getrandbits(16), random.getrandbits(32)
        self._silence = silence_payload()
        connection.data_received = self._receiving(connection.data_received)
        self._epoch, self._ticks = loop.time(), 0
        self._loop = loop
        self._tick()

    def _tick(self) -> None:
        if self._stopped or self._dtls.state != "connected":
            return
        probe = self._probe
        payload = tag_payload(self._silence, next(probe.tags), probe.payload_bytes)
        header = bytes((self._first_byte, self._payload_type)) + self._sequence.to_bytes(2, "big") \
            + self._timestamp.to_bytes(4, "big") + self._ssrc
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self._sent.note_sent(payload)
        try:
            self._sendto(self._dtls._tx_srtp.protect(header + payload), self._address)
        except (OSError, SrtpError, AttributeError):  # the peer is closing
            return
        self._ticks += 1
        self._loop.call_at(self._epoch + self._ticks * FRAME_S, self._tick)

    def _receiving(self, data_received: Callable[[bytes, int], None]) -> Callable[[bytes, int], None]:
        ledger, dtls = self._received, self._dtls

        def lean_data_received(data: bytes, component: int) -> None:
            if 127 < data[0] < 192 and not is_rtcp(data):
                try:
                    ledger.note_received(rtp_payload(dtls._rx_srtp.unprotect(data)))
                except SrtpError:
                    pass
                return
            data_received(data, component)

        return lean_data_received


# --- the simulator, in this process ---


@contextlib.contextmanager
def tapped_simulator_calls(probe: Probe) -> Any:
    """While active, every simulator call's peer is tapped: caller audio noted on arrival (and still decoded),
    the simulator's own packets tagged and noted as they leave."""
    original = sim_webrtc.Call.answer

    async def answer(call: sim_webrtc.Call, offer: str) -> str:
        sdp = await original(call, offer)
        pc = call._pc  # the transports exist once the answer is set; media flows only after the caller's DTLS
        if probe.lean:
            for sender in pc.getSenders():
                sender.replaceTrack(Parked())  # the simulator's speaker is not read: lean media speaks instead
            LeanMedia(pc, probe, sent=probe.down, received=probe.up).start()
        else:
            tap_received(pc, probe.up, deliver=True)
            tap_sent(pc, probe.down, lambda payload: tag_payload(payload, next(probe.tags), probe.payload_bytes))
        return sdp

    sim_webrtc.Call.answer = answer  # type: ignore[method-assign]
    try:
        yield
    finally:
        sim_webrtc.Call.answer = original  # type: ignore[method-assign]


class _QuietServer(uvicorn.Server):
    """uvicorn on the bench's own loop: the bench, not uvicorn, handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def simulator(options: SimulatorOptions) -> AsyncIterator[int]:
    """The simulator served on this loop; yields its port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _QuietServer(uvicorn.Config(create_simulator_app(options), log_level="warning", lifespan="on",
                                         timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise BenchError("the simulator stopped while starting")
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


# --- callers ---


class TaggedSilence(MediaStreamTrack):
    """A microphone that sends pre-encoded Opus silence every 20 ms in real time, each payload tagged."""

    kind = "audio"

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self._probe = probe
        self._silence = silence_payload()
        self._sent = 0
        self._epoch: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._epoch is None:
            self._epoch = loop.time()
        delay = self._epoch + self._sent * FRAME_S - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(tag_payload(self._silence, next(self._probe.tags), self._probe.payload_bytes))
        packet.pts = self._sent * FRAME_SAMPLES
        packet.time_base = _TIME_BASE
        self._sent += 1
        return packet


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str  # http://host:port/v1/realtime/calls?model=...
    api_key: str


@dataclass
class Setup:
    answered_ms: float  # POST sent -> 201 received
    created_ms: float  # POST sent -> session.created received on the data channel


class Caller:
    """A WebRTC client as the SDKs make one (data channel and microphone, then the offer), tapped for the bench."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel(EVENTS_CHANNEL)
        self.created_ns = 0
        self.created = asyncio.Event()
        self.began_ns = 0
        self.first_audio_ns = 0  # the first RTP packet from the far end
        self.heard = asyncio.Event()
        self.messages = 0
        self.channel.on("message", self._on_message)
        self.lean = LeanMedia(self.pc, probe, sent=probe.up, received=probe.down) if probe.lean else None
        self.microphone = Parked() if probe.lean else TaggedSilence(probe)
        transceiver = self.pc.addTransceiver(self.microphone, direction="sendrecv")
        transceiver.setCodecPreferences(opus_codecs())

    def _on_message(self, message: str | bytes) -> None:
        self.messages += 1
        if not self.created_ns and isinstance(message, str) and '"session.created"' in message:
            self.created_ns = time.perf_counter_ns()
            self.created.set()

    async def connect(self, http: httpx.AsyncClient, endpoint: Endpoint, timeout_s: float) -> Setup:
        restrict_host_candidates(self.pc, [LOOPBACK])
        await self.pc.setLocalDescription(await self.pc.createOffer())
        began = self.began_ns = time.perf_counter_ns()
        reply = await http.post(endpoint.url, content=self.pc.localDescription.sdp,
                                headers={"Authorization": f"Bearer {endpoint.api_key}",
                                         "Content-Type": "application/sdp"})
        answered = time.perf_counter_ns()
        if reply.status_code != 201:
            raise BenchError(f"{endpoint.name}: POST {endpoint.url} answered {reply.status_code}: {reply.text[:400]}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
        if self.lean is not None:
            self.lean.start()
        else:
            tap_sent(self.pc, self.probe.up)
            tap_received(self.pc, self.probe.down, deliver=False)
        for transport in _transports(self.pc):
            transport._handle_rtp_data = self._first_audio(transport._handle_rtp_data)
        try:
            await asyncio.wait_for(self.created.wait(), timeout_s)
        except asyncio.TimeoutError:
            raise BenchError(f"{endpoint.name}: no session.created within {timeout_s:.0f} s of the answer "
                             f"(connection {self.pc.connectionState})") from None
        return Setup((answered - began) / 1e6, (self.created_ns - began) / 1e6)

    def _first_audio(self, handle: Callable[[bytes, int], Awaitable[None]]) -> Callable[[bytes, int], Awaitable[None]]:
        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            if not self.first_audio_ns:
                self.first_audio_ns = time.perf_counter_ns()
                self.heard.set()
            await handle(data, arrival_time_ms)

        return handle_rtp_data

    async def first_audio_ms(self, timeout_s: float) -> float:
        """POST sent -> the first audio packet from the far end."""
        try:
            await asyncio.wait_for(self.heard.wait(), timeout_s)
        except asyncio.TimeoutError:
            raise BenchError(f"no audio packet within {timeout_s:.0f} s of session.created") from None
        return (self.first_audio_ns - self.began_ns) / 1e6

    async def close(self) -> None:
        if self.lean is not None:
            self.lean.stop()
        self.microphone.stop()
        await self.pc.close()


async def open_call(http: httpx.AsyncClient, endpoint: Endpoint, probe: Probe, timeout_s: float) -> tuple[Caller, Setup]:
    caller = Caller(probe)
    try:
        return caller, await caller.connect(http, endpoint, timeout_s)
    except BaseException:
        await caller.close()
        raise


async def open_calls(http: httpx.AsyncClient, endpoint: Endpoint, probe: Probe, n: int, timeout_s: float,
                     batch: int) -> list[Caller]:
    """`n` connected calls, opened `batch` at a time so setup does not starve the audio of calls already open."""
    callers: list[Caller] = []
    try:
        for start in range(0, n, batch):
            opened = await asyncio.gather(*(open_call(http, endpoint, probe, timeout_s)
                                            for _ in range(min(batch, n - start))), return_exceptions=True)
            callers.extend(r[0] for r in opened if isinstance(r, tuple))
            failure = next((r for r in opened if isinstance(r, BaseException)), None)
            if failure is not None:
                raise failure
    except BaseException:
        await close_calls(callers)
        raise
    return callers


async def close_calls(callers: list[Caller]) -> None:
    await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
