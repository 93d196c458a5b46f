"""The WebRTC relay: a call is two aiortc peer connections, client ↔ gateway and gateway ↔ provider.

Audio is never decoded. Each peer's RTP packets are taken the moment SRTP decrypts them (`aiortc_hooks.tap_rtp`),
pushed into a Rust forwarding ring, and sent by the other peer as encoded packets (`ForwardedAudio` hands aiortc
`av.Packet`s, which it packetises without encoding). No jitter buffer sits on the path: the far end has its own.

The `oai-events` data channel is relayed message by message, each as the same string object it arrived as, and
observed by the same session core as WebSocket frames, so turns, hooks, governance and logs are identical. Client
messages wait in a bounded queue until the provider's channel is open and while a `response.create` is checked;
provider messages wait in a bounded queue until the client's channel is open. A full queue ends the call.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from bifrost_rt import _native, errors
from bifrost_rt.config import IceServerConfig, WebRTCConfig
from bifrost_rt.core import ending as endings
from bifrost_rt.core.ending import Ending
from bifrost_rt.core.registry import SessionRegistry
from bifrost_rt.core.relay import FORWARD, Action, Check, End, Relay, Reply, ToClient, ToUpstream
from bifrost_rt.errors import RealtimeError
from bifrost_rt.rtc.aiortc_hooks import host_addresses, restrict_host_candidates, tap_rtp, watch_datagrams
from bifrost_rt.rtc.codecs import EVENTS_CHANNEL, OPUS_RATE, offers_opus, opus_codecs

logger = logging.getLogger("bifrost_rt.webrtc")

_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
_RING_BYTES_PER_PACKET = 1500  # the largest RTP payload a 1500-byte MTU allows
_FLUSH_WAIT_S = 1.0  # how long a closing call waits for its last data-channel messages to leave
_PEER_CLOSE_S = 5.0  # aiortc's close waits on its transports; a peer that never answers must not hold the call


def ice_configuration(servers: list[IceServerConfig], *, bundle: bool = False) -> RTCConfiguration:
    ice = [
        RTCIceServer(
            urls=server.urls,
            username=server.username,
            credential=server.credential.get_secret_value() if server.credential else None,
        )
        for server in servers
    ]
    return RTCConfiguration(iceServers=ice, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE if bundle else RTCBundlePolicy.BALANCED)


class ForwardedAudio(MediaStreamTrack):
    """An outgoing track fed by a forwarding ring: each packet leaves with the payload it arrived with."""

    kind = "audio"

    def __init__(self, ring_packets: int) -> None:
        super().__init__()
        self.ring = _native.RtpForwardRing(ring_packets, ring_packets * _RING_BYTES_PER_PACKET, OPUS_RATE)
        self.last_arrival_ns = 0
        self.dwell_ns_total = 0  # time packets spent in the gateway between decryption and hand-off to aiortc
        self.dwell_ns_max = 0
        # Kept, because asyncio.get_running_loop() costs a getpid() syscall per call before Python 3.12.
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self.recorder: Callable[[bytes], None] | None = None  # the session's audio capture, when its key records

    def push(self, packet: bytes) -> None:
        """The RTP tap of the opposite peer: one decrypted RTP packet."""
        now = time.monotonic_ns()
        self.last_arrival_ns = now
        if self.recorder is not None:
            self.recorder(packet)
        if self.ring.push(packet, now):
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def recv(self) -> av.Packet:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            forwarded = self.ring.pop()
            if forwarded is not None:
                payload, timestamp, arrival_ns = forwarded
                dwell = time.monotonic_ns() - arrival_ns
                self.dwell_ns_total += dwell
                self.dwell_ns_max = max(self.dwell_ns_max, dwell)
                packet = av.Packet(payload)
                packet.pts = timestamp
                packet.time_base = _TIME_BASE
                return packet
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def stop(self) -> None:
        super().stop()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def stats(self) -> dict[str, Any]:
        stats = dict(self.ring.stats())
        forwarded = stats["packets_out"]
        stats["dwell_ms_mean"] = self.dwell_ns_total / forwarded / 1e6 if forwarded else 0.0
        stats["dwell_ms_max"] = self.dwell_ns_max / 1e6
        return stats


class QueueFull(Exception):
    pass


class MessageQueue:
    """Data-channel messages waiting for their channel, bounded by count and by characters."""

    def __init__(self, max_messages: int, max_chars: int) -> None:
        self._items: deque[tuple[str | bytes, Any]] = deque()
        self._chars = 0
        self._max_messages = max_messages
        self._max_chars = max_chars
        self.ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: str | bytes, origin: Any = None) -> None:
        if len(self._items) >= self._max_messages or self._chars + len(message) > self._max_chars:
            raise QueueFull
        self._items.append((message, origin))
        self._chars += len(message)
        self.ready.set()

    def take(self) -> tuple[str | bytes, Any]:
        message, origin = self._items.popleft()
        self._chars -= len(message)
        if not self._items:
            self.ready.clear()
        return message, origin


class Sideband:
    """A WebSocket attached to a call (`GET /v1/realtime?call_id=`): it sees the provider's events and may send."""

    def __init__(self, send: Callable[[dict[str, Any]], Any], max_messages: int, max_chars: int) -> None:
        self._send = send
        self._queue = MessageQueue(max_messages, max_chars)
        self.overflowed = False
        self.finished = False

    def offer(self, text: str) -> None:
        try:
            self._queue.put(text)
        except QueueFull:
            self.overflowed = True
            self._queue.ready.set()

    def finish(self) -> None:
        """No more events will come: the pump returns once the queued ones are written."""
        self.finished = True
        self._queue.ready.set()

    async def pump(self) -> None:
        """Writes queued events until the call ends, the socket fails, or the reader falls too far behind."""
        queue = self._queue
        while not self.overflowed:
            if queue:
                text, _ = queue.take()
                await self._send({"type": "websocket.send", "text": text})
            elif self.finished:
                return
            else:
                await queue.ready.wait()


class Call:
    """One relayed call, driven by the relay core; a `LiveSession` for the registry."""

    def __init__(
        self,
        call_id: str,
        relay: Relay,
        config: WebRTCConfig,
        registry: SessionRegistry,
        on_end: Callable[[Call], Any],
    ) -> None:
        self.id = call_id
        self.relay = relay
        self.session = relay.session
        self.provider_call_id: str | None = None
        self._config = config
        self._registry = registry
        self._on_end = on_end
        self._addresses = host_addresses(config.host_candidates)
        self.client_pc = RTCPeerConnection(ice_configuration(config.ice_servers))
        self.upstream_pc = RTCPeerConnection(ice_configuration(config.upstream_ice_servers, bundle=True))
        self.to_upstream = ForwardedAudio(config.ring_packets)  # the caller's voice
        self.to_client = ForwardedAudio(config.ring_packets)  # the model's voice
        if self.session.audio is not None:
            self.to_upstream.recorder = self.session.audio.client_audio
            self.to_client.recorder = self.session.audio.provider_audio
        self.client_channel: RTCDataChannel | None = None
        self.upstream_channel: RTCDataChannel | None = None
        self._up = MessageQueue(config.max_pending_messages, config.max_pending_bytes)
        self._down = MessageQueue(config.max_pending_messages, config.max_pending_bytes)
        self.sidebands: set[Sideband] = set()
        self._client_heard_ns = time.monotonic_ns()
        self._upstream_heard_ns = time.monotonic_ns()
        self._upstream_open = asyncio.Event()
        self._connected = asyncio.Event()  # both peers connected
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closer: asyncio.Task[None] | None = None
        self.started = False
        self.closed = asyncio.Event()

    # --- setup ---

    async def accept_offer(self, offer: str) -> bool:
        """Takes the client's offer; True when it carries audio. Raises ValueError for an unusable offer."""
        pc = self.client_pc
        pc.on("datachannel", self._on_client_channel)
        pc.on("connectionstatechange", lambda: self._on_state("client", pc))
        with_audio = any(line.startswith("m=audio ") for line in offer.splitlines())
        if with_audio:
            if not offers_opus(offer):
                raise ValueError("the offer's audio has no Opus codec; the gateway forwards Opus only")
            # Made before the offer is applied, so the answer offers Opus alone.
            pc.addTransceiver(self.to_client, direction="sendrecv").setCodecPreferences(opus_codecs())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        if not with_audio and pc.sctp is None:
            raise ValueError("the offer has neither audio nor a data channel")
        return with_audio

    async def offer_upstream(self, with_audio: bool) -> str:
        """The gateway's own offer to the provider: Opus audio (when the client has audio) and `oai-events`."""
        pc = self.upstream_pc
        pc.on("connectionstatechange", lambda: self._on_state("upstream", pc))
        if with_audio:
            transceiver = pc.addTransceiver(self.to_upstream, direction="sendrecv")
            transceiver.setCodecPreferences(opus_codecs())
        channel = pc.createDataChannel(EVENTS_CHANNEL)
        self.upstream_channel = channel
        channel.on("open", self._upstream_open.set)
        channel.on("message", self._from_upstream)
        channel.on("close", lambda: self.end_soon(endings.upstream_lost()))
        restrict_host_candidates(pc, self._addresses)
        tap_rtp(pc, self.to_client.push)
        await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), self._config.ice_gather_timeout_s)
        return pc.localDescription.sdp

    async def accept_upstream_answer(self, answer: str) -> None:
        await self.upstream_pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def answer_client(self) -> str:
        pc = self.client_pc
        restrict_host_candidates(pc, self._addresses)
        tap_rtp(pc, self.to_upstream.push)
        watch_datagrams(pc, self._client_heard)
        await asyncio.wait_for(pc.setLocalDescription(await pc.createAnswer()), self._config.ice_gather_timeout_s)
        return pc.localDescription.sdp

    def start(self) -> None:
        """Once the client has its answer: relay, supervise, and count as a live session."""
        self.started = True
        self._registry.add(self)
        self.relay.start()
        self._spawn(self._pump_up())
        self._spawn(self._await_connected())

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- LiveSession ---

    def activity(self) -> int:
        return self.relay.activity + self.to_upstream.ring.stats()["packets_in"] + self.to_client.ring.stats()["packets_in"]

    def relayed(self) -> dict[str, int]:
        counts = self.relay.relayed()
        for direction, track in (("up", self.to_upstream), ("down", self.to_client)):
            stats = track.ring.stats()
            counts[f"rtp_packets_{direction}"] = stats["packets_out"]
            counts[f"rtp_lost_{direction}"] = stats["lost"]
            counts[f"rtp_dropped_{direction}"] = stats["overflow_dropped"] + stats["malformed"]
        return counts

    def blocked_on_client(self) -> bool:
        channel = self.client_channel
        return channel is not None and channel.bufferedAmount > 0

    def end(self, error: RealtimeError, *, upstream_code: int = errors.CLOSE_NORMAL) -> None:
        self.end_soon(self.relay.stop(error, upstream_code))

    # --- data channels ---

    def _on_client_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_CHANNEL or self.client_channel is not None:
            channel.close()  # the API defines one channel; any other is not relayed
            return
        self.client_channel = channel
        channel.on("message", self._from_client)
        channel.on("close", lambda: self.end_soon(endings.client_gone("client_channel_closed")))
        self._flush_down()

    def _from_client(self, message: str | bytes) -> None:
        self._client_heard_ns = time.monotonic_ns()
        self._queue_up(message, None)

    def from_sideband(self, message: str, sideband: Sideband) -> None:
        self._queue_up(message, sideband)

    def _queue_up(self, message: str | bytes, origin: Sideband | None) -> None:
        try:
            self._up.put(message, origin)
        except QueueFull:
            self.end_soon(endings.queue_full("to the provider"))

    async def _pump_up(self) -> None:
        """Client and sideband messages to the provider, in arrival order, each through the relay core first."""
        await self._upstream_open.wait()
        queue = self._up
        from_client = self.relay.from_client
        while True:
            await queue.ready.wait()
            message, origin = queue.take()
            actions = from_client(message)
            if actions is FORWARD:
                self._send_upstream(message)
            elif not await self._perform(actions, origin):
                return

    async def _perform(self, actions: tuple[Action, ...], origin: Sideband | None) -> bool:
        """Performs the relay's actions for a message from `origin` (None: the client); False once the call ends."""
        for action in actions:
            if isinstance(action, Check) and action.response_id is None:  # a held response.create
                if not await self._perform(self.relay.checked(action, await self.relay.decide(action)), origin):
                    return False
            elif isinstance(action, Reply):
                if origin is None:
                    self._send_client(action.message)
                else:
                    origin.offer(action.message)
            elif not self._perform_now(action):
                return False
        return True

    def _perform_now(self, action: Action) -> bool:
        """An action that needs no waiting; False once the call ends."""
        if isinstance(action, ToUpstream):
            self._send_upstream(action.message)
        elif isinstance(action, ToClient):
            self._to_client(action.message)
        elif isinstance(action, Check):  # a turn the provider started: decided beside the relay
            self._spawn(self._check_started(action))
        elif isinstance(action, End):
            self.end_soon(action.ending)
            return False
        return True

    async def _check_started(self, check: Check) -> None:
        await self._perform(self.relay.checked(check, await self.relay.decide(check)), None)

    def _send_upstream(self, message: str | bytes) -> None:
        channel = self.upstream_channel
        if channel is not None and channel.readyState == "open":
            channel.send(message)

    def _from_upstream(self, message: str | bytes) -> None:
        self._upstream_heard_ns = time.monotonic_ns()
        actions = self.relay.from_server(message)
        if actions is FORWARD:
            self._to_client(message)
            return
        for action in actions:
            if not self._perform_now(action):
                return

    def _to_client(self, message: str | bytes) -> None:
        """A provider event (or one the relay made) for the client and every sideband."""
        self._send_client(message)
        if message.__class__ is str:
            for sideband in self.sidebands:
                sideband.offer(message)  # type: ignore[arg-type]

    def _send_client(self, message: str | bytes) -> None:
        channel = self.client_channel
        if channel is not None and channel.readyState == "open" and not self._down:
            if channel.bufferedAmount > self._config.max_pending_bytes:
                self.end_soon(endings.client_gone("client_not_reading"))
                return
            channel.send(message)
            return
        try:
            self._down.put(message)
        except QueueFull:
            self.end_soon(endings.queue_full("to the client"))
            return
        if channel is not None:
            if channel.readyState == "open":
                self._flush_down()
            else:
                channel.once("open", self._flush_down)

    def _flush_down(self) -> None:
        channel = self.client_channel
        if channel is None or channel.readyState != "open":
            if channel is not None:
                channel.once("open", self._flush_down)
            return
        while self._down:
            message, _ = self._down.take()
            channel.send(message)

    # --- connection supervision ---

    def _client_heard(self) -> None:
        self._client_heard_ns = time.monotonic_ns()

    def _on_state(self, side: str, pc: RTCPeerConnection) -> None:
        if self.client_pc.connectionState == "connected" and self.upstream_pc.connectionState == "connected":
            self._connected.set()
        if pc.connectionState in ("failed", "closed"):
            reason = f"{side}_connection_{pc.connectionState}"
            self.end_soon(endings.upstream_lost(reason) if side == "upstream" else endings.client_gone(reason))

    async def _await_connected(self) -> None:
        """Ends the call when a peer does not connect within `connect_timeout_s`."""
        try:
            await asyncio.wait_for(self._connected.wait(), self._config.connect_timeout_s)
        except asyncio.TimeoutError:
            if self.upstream_pc.connectionState != "connected":
                self.end_soon(endings.upstream_unreachable("upstream_connect_timeout"))
            else:
                self.end_soon(endings.client_gone("client_connect_timeout"))

    def watch(self, now: float) -> None:
        """The supervisor's tick: ends a call whose client, or whose provider mid-response, fell silent.

        aiortc reports a lost peer only once ICE consent has failed for about 30 s. Browsers send STUN checks every
        few seconds besides their audio, so a client that sent nothing for `disconnect_grace_s` is gone; one that
        comes back within it (a brief network drop) keeps its call. A provider owes nothing between responses, but
        one that sends neither audio nor events while a response is open for `upstream_silence_s` is gone too.
        """
        if not self._connected.is_set():
            return
        config = self._config
        now_ns = time.monotonic_ns()
        if now_ns - self._client_heard_ns > max(config.disconnect_grace_s, 1.0) * 1e9:
            self.end_soon(endings.client_disconnected())
            return
        heard_ns = max(self._upstream_heard_ns, self.to_client.last_arrival_ns)
        if config.upstream_silence_s and self.session.open_turns and now_ns - heard_ns > config.upstream_silence_s * 1e9:
            logger.warning("call %s: the provider sent nothing for %.0f s mid-response", self.id, (now_ns - heard_ns) / 1e9)
            self.end_soon(endings.upstream_lost("upstream_silent"))

    # --- teardown ---

    def end_soon(self, ending: Ending) -> None:
        """Ends the call once, whoever asks first; safe from the call's own callbacks and tasks. The open turns
        are recorded at once; the peers close in the background."""
        if self.relay.ended:
            return
        ending = self.relay.end(ending)
        self._closer = asyncio.get_running_loop().create_task(self._close(ending))

    async def hang_up(self) -> None:
        self.end_soon(endings.hangup())
        await self.closed.wait()

    async def _close(self, ending: Ending) -> None:
        try:
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if ending.client_error is not None:
                await self._say_last(ending.client_error.event())
            for sideband in self.sidebands:
                if ending.client_error is not None:
                    sideband.offer(ending.client_error.event())
                sideband.finish()
            self.to_client.stop()
            self.to_upstream.stop()
            closing = asyncio.gather(self.client_pc.close(), self.upstream_pc.close(), return_exceptions=True)
            await asyncio.wait_for(closing, _PEER_CLOSE_S)
        except Exception:
            logger.exception("call %s: closing failed", self.id)
        finally:
            self._registry.remove(self)
            logger.info("call %s ended: %s; audio up %s, down %s", self.id, ending.reason, _brief(self.to_upstream), _brief(self.to_client))
            try:
                await self._on_end(self)
            finally:
                self.closed.set()

    async def _say_last(self, text: str) -> None:
        """Sends a final event to the client and gives it a moment to leave before the peer closes."""
        channel = self.client_channel
        if channel is None or channel.readyState != "open":
            return
        channel.send(text)
        deadline = time.monotonic() + _FLUSH_WAIT_S
        while channel.bufferedAmount > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # sent is not yet acknowledged: SCTP needs a round trip


def _brief(track: ForwardedAudio) -> str:
    stats = track.stats()
    return f"{stats['packets_out']}/{stats['packets_in']} packets, {stats['lost']} lost, jitter {stats['jitter_ms']:.1f} ms"
