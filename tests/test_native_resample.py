"""The native 24 kHz → 16 kHz resampler through its binding: what the Gemini dialect calls once per append."""

from __future__ import annotations

import base64
import math
from array import array

import pytest

from bifrost_rt._native import Resampler24To16


def tone(hz: float, samples: int, rate: int = 24_000, amplitude: float = 10_000) -> bytes:
    return array("h", (round(amplitude * math.sin(2 * math.pi * hz * n / rate)) for n in range(samples))).tobytes()


def rms(pcm: bytes) -> float:
    values = array("h", pcm)
    return math.sqrt(sum(v * v for v in values) / len(values))


def test_a_second_of_24k_is_a_second_of_16k_with_the_tone_kept() -> None:
    out = base64.b64decode(Resampler24To16().base64(base64.b64encode(tone(1000, 24_000)).decode()))
    assert len(out) == 16_000 * 2
    # Settled part of the output against the same tone made at 16 kHz: unit gain at 1 kHz.
    assert rms(out[2000:30_000]) == pytest.approx(rms(tone(1000, 16_000, rate=16_000)), rel=0.01)


def test_a_10_khz_tone_is_removed_not_aliased() -> None:
    out = Resampler24To16().pcm(tone(10_000, 24_000))
    assert 20 * math.log10(rms(out[2000:30_000]) / rms(tone(10_000, 24_000))) <= -40


def test_appends_split_anywhere_give_the_same_audio() -> None:
    pcm = tone(440, 2400)
    whole = Resampler24To16().pcm(pcm)
    stream = Resampler24To16()
    pieces = b"".join(base64.b64decode(stream.base64(base64.urlsafe_b64encode(pcm[i : i + 641]))) for i in range(0, len(pcm), 641))
    assert pieces == whole


def test_bad_base64_raises_value_error_naming_the_position() -> None:
    with pytest.raises(ValueError, match="invalid base64 at character 2"):
        Resampler24To16().base64("AA*A")
