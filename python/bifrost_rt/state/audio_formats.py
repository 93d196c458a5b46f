"""Audio containers for recorded turns, written without transcoding: WAV around PCM16 or G.711, Ogg around Opus.

Opus comes from RTP packets as forwarded; their payloads become Ogg packets (RFC 7845) as they are, timed by the
TOC byte of each packet (RFC 6716 §3.1), so a recording plays in any Ogg/Opus player.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Iterable

# format → (WAVE format tag, sample rate, bits per sample); the realtime API's audio is mono.
WAV_FORMATS = {"pcm16": (1, 24_000, 16), "g711_ulaw": (7, 8_000, 8), "g711_alaw": (6, 8_000, 8)}
OGG_OPUS = "ogg-opus"
OPUS_RATE = 48_000


def media_type(audio_format: str) -> str:
    return "audio/ogg" if audio_format == OGG_OPUS else "audio/wav"


def extension(audio_format: str) -> str:
    return "ogg" if audio_format == OGG_OPUS else "wav"


def duration_ms(audio_format: str, size: int) -> float:
    """The duration of `size` bytes of PCM16 or G.711 audio."""
    _, rate, bits = WAV_FORMATS[audio_format]
    return round(size * 8 / bits / rate * 1000, 3)


def wav(audio_format: str, parts: Iterable[bytes]) -> bytes:
    """A WAV file around the audio `parts`, joined once (a turn's audio is large; it is not copied again)."""
    parts = list(parts)
    size = sum(len(part) for part in parts)
    tag, rate, bits = WAV_FORMATS[audio_format]
    block = bits // 8
    if tag == 1:
        fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * block, block, bits)
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    else:  # non-PCM formats carry cbSize and a fact chunk (the sample count)
        fmt = struct.pack("<HHIIHHH", tag, 1, rate, rate * block, block, bits, 0)
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<II", 4, size // block)
    pad = b"\x00" if size % 2 else b""
    header = b"WAVE" + chunks + b"data" + struct.pack("<I", size)
    riff = b"RIFF" + struct.pack("<I", len(header) + size + len(pad))
    return b"".join([riff, header, *parts, pad])


def rtp_payload(packet: bytes) -> bytes:
    """The payload of an RTP packet (RFC 3550): after the CSRCs and any header extension, before any padding."""
    if len(packet) < 12:
        return b""
    first = packet[0]
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10 and len(packet) >= offset + 4:
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    end = len(packet)
    if first & 0x20 and end > offset:
        end -= packet[-1]
    return packet[offset:end] if end > offset else b""


_FRAME_US = (10_000, 20_000, 40_000, 60_000)  # SILK configurations 0–11, by config % 4
_CELT_US = (2_500, 5_000, 10_000, 20_000)  # CELT configurations 16–31


def opus_samples(packet: bytes) -> int:
    """Samples at 48 kHz in one Opus packet, from its TOC byte."""
    if not packet:
        return 0
    config = packet[0] >> 3
    if config < 12:
        frame_us = _FRAME_US[config % 4]
    elif config < 16:
        frame_us = 10_000 if config % 2 == 0 else 20_000
    else:
        frame_us = _CELT_US[config % 4]
    code = packet[0] & 0x03
    frames = 1 if code == 0 else 2 if code in (1, 2) else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return frames * frame_us * OPUS_RATE // 1_000_000


_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def _crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, unreflected, no initial or final inversion), through zlib's reflected
    CRC-32 of the bit-reversed bytes, so it runs at C speed."""
    reflected = ~binascii.crc32(data.translate(_REVERSED), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


class _Pages:
    def __init__(self, serial: int) -> None:
        self._serial = serial
        self._sequence = 0
        self.out = bytearray()

    def write(self, packets: list[bytes], granule: int, flags: int) -> None:
        lacing = bytearray()
        for packet in packets:
            lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, self._serial, self._sequence, 0, len(lacing))
        page = bytearray(header + lacing + b"".join(packets))
        page[22:26] = struct.pack("<I", _crc(bytes(page)))
        self.out += page
        self._sequence += 1


def ogg_opus(packets: Iterable[bytes], serial: int = 0x62667274) -> bytes:
    """Opus packets in an Ogg stream: the identification and comment headers, then audio pages of up to ~1 s."""
    packets = [p for p in packets if p]
    channels = 2 if packets and packets[0][0] & 0x04 else 1
    pages = _Pages(serial)
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, OPUS_RATE, 0, 0)
    pages.write([head], 0, 0x02)
    vendor = b"bifrost-rt"
    pages.write([b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)], 0, 0)
    granule, segments = 0, 0
    page: list[bytes] = []
    for index, packet in enumerate(packets):
        need = len(packet) // 255 + 1
        if page and (segments + need > 255 or len(page) >= 50):
            pages.write(page, granule, 0)
            page, segments = [], 0
        page.append(packet)
        segments += need
        granule += opus_samples(packet)
        if index == len(packets) - 1:
            pages.write(page, granule, 0x04)
    if not packets:
        pages.write([], 0, 0x04)
    return bytes(pages.out)
