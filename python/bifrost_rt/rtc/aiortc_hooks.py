"""Every use of aiortc's private API, in one place, for aiortc 1.16.0 (pinned in pyproject.toml).

aiortc has no public way to choose the addresses ICE gathers on, nor to read RTP packets before its jitter buffer
and decoder. Both hooks wrap a method on one connection's own objects, so other connections in the process are
untouched. tests/test_aiortc_hooks.py checks the attributes used here and that the hooks work end to end, so an
aiortc upgrade that moves them fails there first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiortc
from aioice.ice import get_host_addresses
from aiortc import RTCPeerConnection

AIORTC_VERSION = "1.16.0"
LOOPBACK = "127.0.0.1"


def _dtls_transports(pc: RTCPeerConnection) -> set[Any]:
    transports = {transceiver.receiver.transport for transceiver in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    transports.discard(None)
    return transports


# --- ICE host candidates ---


def host_addresses(choice: str) -> list[str]:
    """The addresses a peer gathers host candidates on: "interfaces" (aioice's choice: every interface address but
    loopback), "loopback" (127.0.0.1 only), or "all" (both)."""
    interfaces = [] if choice == "loopback" else get_host_addresses(use_ipv4=True, use_ipv6=True)
    return interfaces if choice == "interfaces" else [LOOPBACK, *interfaces]


def restrict_host_candidates(pc: RTCPeerConnection, addresses: list[str]) -> None:
    """Makes `pc` gather its ICE host candidates on `addresses` instead of aioice's choice.

    aioice's `Connection.get_component_candidates(component, addresses)` binds one socket per address and has no
    setting for which. Call this once the transports exist (after `setRemoteDescription` when answering, after
    `addTransceiver`/`createDataChannel` when offering) and before `setLocalDescription`, which gathers.
    """
    for transport in _dtls_transports(pc):
        connection = transport.transport.iceGatherer._connection
        connection.get_component_candidates = _gathering_on(addresses, connection.get_component_candidates)


def _gathering_on(chosen: list[str], gather: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5) -> Any:
        return await gather(component=component, addresses=chosen, timeout=timeout)

    return get_component_candidates


# --- RTP receive tap ---


def tap_rtp(pc: RTCPeerConnection, on_packet: Callable[[bytes], None]) -> None:
    """Hands every RTP packet `pc` receives to `on_packet`, as decrypted RTP bytes, instead of to aiortc's receivers.

    `RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms)` is where aiortc parses a packet it has just taken
    out of SRTP and routes it to a receiver's jitter buffer and decoder. Replacing it skips all of that: packets
    reach `on_packet` the moment they are decrypted, nothing is decoded, and aiortc's tracks for this connection
    receive no audio. RTCP still reaches aiortc. Call it once the transports exist, like
    `restrict_host_candidates`.
    """

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        on_packet(data)

    for transport in _dtls_transports(pc):
        transport._handle_rtp_data = handle_rtp_data


def watch_datagrams(pc: RTCPeerConnection, on_datagram: Callable[[], None]) -> None:
    """Calls `on_datagram` for every datagram the remote peer sends `pc`: STUN checks, DTLS, SCTP, RTP and RTCP.

    aioice hands each datagram to its `Connection`, as `request_received` (STUN requests) or `data_received`
    (everything else). A peer that keeps its connection alive sends STUN consent checks every few seconds even
    when it sends no media, so silence here means the peer is gone, long before aiortc's own verdict (after about
    30 s of failed consent checks). Call it like `restrict_host_candidates`.
    """
    for transport in _dtls_transports(pc):
        connection = transport.transport.iceGatherer._connection
        connection.data_received = _noting(on_datagram, connection.data_received)
        connection.request_received = _noting(on_datagram, connection.request_received)


def _noting(on_datagram: Callable[[], None], handle: Callable[..., None]) -> Callable[..., None]:
    def handle_noted(*args: Any, **kwargs: Any) -> None:
        on_datagram()
        handle(*args, **kwargs)

    return handle_noted


def check_version() -> str | None:
    """Why the hooks may not fit the installed aiortc, or None when it is the version they were written for."""
    if aiortc.__version__ != AIORTC_VERSION:
        return f"aiortc {aiortc.__version__} is installed; the WebRTC relay's hooks are written for {AIORTC_VERSION}"
    return None
