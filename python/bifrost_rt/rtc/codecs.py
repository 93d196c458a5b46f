"""What both hops of a relayed call must agree on: the events channel and Opus, the one codec forwarded as is."""

from __future__ import annotations

from typing import Any

from aiortc import RTCRtpSender

EVENTS_CHANNEL = "oai-events"
OPUS_RATE = 48_000


def opus_codecs() -> list[Any]:
    """Opus alone: audio is forwarded as it arrives, so both hops must speak the same codec."""
    return [codec for codec in RTCRtpSender.getCapabilities("audio").codecs if codec.mimeType.lower() == "audio/opus"]


def offers_opus(sdp: str) -> bool:
    return any(line.lower().startswith("a=rtpmap:") and " opus/48000" in line.lower() for line in sdp.splitlines())
