"""The private aiortc/aioice API the WebRTC relay depends on (`transports/aiortc_hooks.py`).

An aiortc upgrade that renames or reroutes any of it fails here, by name, before a call silently stops carrying
audio.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import aiortc
import pytest
from aioice.ice import Connection, StunProtocol
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport

from bifrost_rt import _native
from bifrost_rt.rtc.aiortc_hooks import AIORTC_VERSION, LOOPBACK, check_version, restrict_host_candidates, tap_rtp, watch_datagrams

from rtc_client import TIMEOUT_S, Microphone


def test_the_installed_aiortc_is_the_pinned_version() -> None:
    assert check_version() is None, check_version()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(rf'"aiortc=={re.escape(AIORTC_VERSION)}"', pyproject), "pyproject.toml must pin the hooks' aiortc"
    assert aiortc.__version__ == AIORTC_VERSION


def test_the_private_entry_points_exist_with_the_signatures_used() -> None:
    assert inspect.iscoroutinefunction(RTCDtlsTransport._handle_rtp_data)
    assert list(inspect.signature(RTCDtlsTransport._handle_rtp_data).parameters) == ["self", "data", "arrival_time_ms"]
    # Decrypted RTP reaches the method through the instance, so a per-connection override takes effect.
    assert "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in inspect.getsource(RTCDtlsTransport._recv_next)
    assert list(inspect.signature(Connection.get_component_candidates).parameters)[:3] == ["self", "component", "addresses"]
    assert list(inspect.signature(Connection.data_received).parameters) == ["self", "data", "component"]
    assert list(inspect.signature(Connection.request_received).parameters)[:3] == ["self", "message", "addr"]
    receiving = inspect.getsource(StunProtocol.datagram_received)
    assert "self.receiver.data_received(" in receiving and "self.receiver.request_received(" in receiving


async def test_the_hooks_work_on_a_real_connection() -> None:
    """Two peers on loopback: the answerer's RTP goes to the tap as raw packets, not to its receiver."""
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    callee = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    microphone = Microphone()
    microphone.speak(2000)
    caller.addTrack(microphone)
    caller.createDataChannel("oai-events")
    packets: list[bytes] = []
    datagrams = 0
    got_packets = asyncio.Event()

    def on_packet(packet: bytes) -> None:
        packets.append(packet)
        if len(packets) >= 10:
            got_packets.set()

    def on_datagram() -> None:
        nonlocal datagrams
        datagrams += 1

    received_tracks: list[aiortc.MediaStreamTrack] = []
    callee.on("track", received_tracks.append)
    try:
        restrict_host_candidates(caller, [LOOPBACK])
        await caller.setLocalDescription(await caller.createOffer())
        assert set(re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) ", caller.localDescription.sdp)) == {LOOPBACK}
        await callee.setRemoteDescription(caller.localDescription)
        restrict_host_candidates(callee, [LOOPBACK])
        tap_rtp(callee, on_packet)
        watch_datagrams(callee, on_datagram)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        await asyncio.wait_for(got_packets.wait(), TIMEOUT_S)

        ring = _native.RtpForwardRing()
        assert all(ring.push(packet, n) for n, packet in enumerate(packets))
        assert ring.stats()["malformed"] == 0 and ring.stats()["bytes_in"] > 0
        assert datagrams > len(packets)  # STUN and DTLS were seen too
        # aiortc's own receiver got nothing: its track yields no frame.
        (track,) = received_tracks
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(track.recv(), 0.5)
    finally:
        microphone.stop()
        await caller.close()
        await callee.close()
