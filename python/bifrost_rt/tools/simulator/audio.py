"""Audio formats, the generated output tone, and the energy measure used by voice activity detection.

Formats follow the GA `format` objects: `audio/pcm` (pcm16, 24 kHz mono, little endian), `audio/pcmu` and
`audio/pcma` (G.711 μ-law / A-law, 8 kHz). Output audio is a 440 Hz sine at about -12 dBFS. One second of it holds
exactly 440 cycles, so any chunk is a slice of one cached second and base64 chunks are cached by position.
"""

from __future__ import annotations

import base64
import math
import operator
import sys
from array import array
from functools import cache, lru_cache
from typing import Any

PCM16 = "audio/pcm"
PCMU = "audio/pcmu"
PCMA = "audio/pcma"
BYTES_PER_MS = {PCM16: 48, PCMU: 8, PCMA: 8}
SAMPLE_RATE = {PCM16: 24_000, PCMU: 8_000, PCMA: 8_000}

TONE_HZ = 440
TONE_AMPLITUDE = 8192  # of 32767

# VAD: a frame is speech when its RMS level (0..1 of full scale) reaches `threshold * SPEECH_LEVEL_PER_THRESHOLD`,
# so the default threshold 0.5 means an RMS of 0.025 (about -32 dBFS). The output tone sits at about 0.18.
SPEECH_LEVEL_PER_THRESHOLD = 0.05

_NATIVE_LITTLE_ENDIAN = sys.byteorder == "little"


def format_kind(fmt: Any) -> str:
    """The encoding named by a GA format object (`{"type": "audio/pcmu"}`); pcm16 when absent or unknown."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    return kind if kind in BYTES_PER_MS else PCM16


# --- G.711 μ-law and A-law (ITU-T G.711 segment encoding) ---

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _linear_to_ulaw(sample: int) -> int:
    sign = 0
    if sample < 0:
        sample, sign = -sample, 0x80
    sample = min(sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = max(0, min(7, sample.bit_length() - 8))
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_to_linear(value: int) -> int:
    value = ~value & 0xFF
    exponent = (value >> 4) & 0x07
    sample = ((((value & 0x0F) << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return -sample if value & 0x80 else sample


def _linear_to_alaw(sample: int) -> int:
    sample >>= 3
    if sample >= 0:
        mask = 0xD5
    else:
        mask, sample = 0x55, -sample - 1
    segment = next((i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if sample <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    value = segment << 4
    value |= (sample >> (1 if segment < 2 else segment)) & 0x0F
    return value ^ mask


def _alaw_to_linear(value: int) -> int:
    value ^= 0x55
    magnitude = (value & 0x0F) << 4
    segment = (value & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if value & 0x80 else -magnitude


_G711_SQUARES = {
    PCMU: tuple(_ulaw_to_linear(v) ** 2 for v in range(256)),
    PCMA: tuple(_alaw_to_linear(v) ** 2 for v in range(256)),
}


def encode(kind: str, samples: list[int]) -> bytes:
    """Linear 16-bit samples in the given encoding (the sample rate is the caller's business)."""
    if kind == PCMU:
        return bytes(map(_linear_to_ulaw, samples))
    if kind == PCMA:
        return bytes(map(_linear_to_alaw, samples))
    pcm = array("h", samples)
    if not _NATIVE_LITTLE_ENDIAN:
        pcm.byteswap()
    return pcm.tobytes()


# --- Output tone ---


@cache
def _tone_second(kind: str) -> bytes:
    rate = SAMPLE_RATE[kind]
    step = 2 * math.pi * TONE_HZ / rate
    return encode(kind, [round(TONE_AMPLITUDE * math.sin(step * n)) for n in range(rate)])


def tone_bytes(kind: str, start_ms: int, length_ms: int) -> bytes:
    """`length_ms` of the tone starting `start_ms` into it, phase-continuous with the neighbouring chunks."""
    second = _tone_second(kind)
    per_ms = BYTES_PER_MS[kind]
    start = (start_ms % 1000) * per_ms
    end = start + length_ms * per_ms
    return (second * (end // len(second) + 1))[start:end]


@lru_cache(maxsize=8192)
def tone_chunk_b64(kind: str, start_ms: int, length_ms: int) -> str:
    """Base64 of a tone chunk; callers pass `start_ms % 1000`, so a stream reuses a small set of chunks."""
    return base64.b64encode(tone_bytes(kind, start_ms, length_ms)).decode("ascii")


# --- Energy ---


def speech_level(frame: bytes, kind: str) -> float:
    """RMS level of a frame as a fraction of full scale; pcm16 frames are sampled every other sample."""
    if kind in _G711_SQUARES:
        if not frame:
            return 0.0
        total = sum(map(_G711_SQUARES[kind].__getitem__, frame))
        return math.sqrt(total / len(frame)) / 32768
    if _NATIVE_LITTLE_ENDIAN:
        samples = memoryview(frame[: len(frame) & ~1]).cast("h")[::2]
    else:
        pcm = array("h")
        pcm.frombytes(frame[: len(frame) & ~1])
        pcm.byteswap()
        samples = pcm[::2]
    if not len(samples):
        return 0.0
    return math.sqrt(sum(map(operator.mul, samples, samples)) / len(samples)) / 32768
