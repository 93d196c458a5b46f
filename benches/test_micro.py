"""Micro benchmarks of the native hot path against orjson.loads on realistic GA frames.

Run with: .venv/bin/python -m pytest benches/test_micro.py --benchmark-only -q
"""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from bifrost_rt import _native

RNG = random.Random(20250828)

RESPONSE_ID = "resp_CsZyL5IuqSgPEut0cI82K"

# 100 ms of pcm16 at 24 kHz: 4800 bytes, 6400 base64 characters; the frame is about 6.5 KB.
AUDIO_DELTA = orjson.dumps(
    {
        "type": "response.output_audio.delta",
        "event_id": "event_CsZyNdzXT4hWhvq6Pv8ad",
        "response_id": RESPONSE_ID,
        "item_id": "item_CsZyLdZ3sHZ2DniSNrTKs",
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(RNG.randbytes(4800)).decode(),
    }
).decode()

TRANSCRIPT_DELTA = orjson.dumps(
    {
        "type": "response.output_audio_transcript.delta",
        "event_id": "event_CsZyNdzXT4hWhvq6Pv8ae",
        "response_id": RESPONSE_ID,
        "item_id": "item_CsZyLdZ3sHZ2DniSNrTKs",
        "output_index": 0,
        "content_index": 0,
        "delta": " tomorrow",
        "obfuscation": "k3Jd9QpXz1Lm",
    }
).decode()

RESPONSE_DONE = orjson.dumps(
    {
        "type": "response.done",
        "event_id": "event_CsZyNdzXT4hWhvq6Pv8af",
        "response": {
            "object": "realtime.response",
            "id": RESPONSE_ID,
            "status": "completed",
            "status_details": None,
            "output": [
                {
                    "id": "item_CsZyLdZ3sHZ2DniSNrTKs",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {
                            "type": "output_audio",
                            "transcript": "Sure. Tomorrow in Paris it will be mostly sunny in the morning, with clouds "
                            "building after lunch and a chance of light rain around six in the evening. Highs near "
                            "twenty-one degrees, lows around thirteen. A light jacket should be enough, and you "
                            "probably won't need an umbrella unless you plan to be out late. Anything else?",
                        }
                    ],
                },
                {
                    "id": "item_CsZyLdZ3sHZ2DniSNrTKt",
                    "type": "function_call",
                    "status": "completed",
                    "name": "get_weather",
                    "call_id": "call_CsZyLdZ3sHZ2DniS",
                    "arguments": '{"city":"Paris","country":"FR","date":"tomorrow","units":"metric"}',
                },
            ],
            "conversation_id": "conv_CsZyGLqmGCDohCYjjDPqf",
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}},
            "usage": {
                "total_tokens": 1320,
                "input_tokens": 1132,
                "output_tokens": 188,
                "input_token_details": {
                    "text_tokens": 959,
                    "audio_tokens": 173,
                    "image_tokens": 0,
                    "cached_tokens": 1024,
                    "cached_tokens_details": {"text_tokens": 896, "audio_tokens": 128, "image_tokens": 0},
                },
                "output_token_details": {"text_tokens": 41, "audio_tokens": 147},
            },
            "metadata": {"purpose": "weather", "session": "bench", "tenant": "team-a"},
        },
    }
).decode()


def test_frame_sizes() -> None:
    assert 6400 <= len(AUDIO_DELTA) <= 6700
    assert 1500 <= len(RESPONSE_DONE) <= 2500


@pytest.mark.benchmark(group="audio delta (6.5 KB)")
def test_orjson_loads_audio_delta(benchmark) -> None:
    benchmark(orjson.loads, AUDIO_DELTA)


@pytest.mark.benchmark(group="audio delta (6.5 KB)")
def test_scan_audio_delta(benchmark) -> None:
    info = benchmark(_native.scan, AUDIO_DELTA)
    assert info.type == "response.output_audio.delta" and info.payload_len == 6400


@pytest.mark.benchmark(group="audio delta (6.5 KB)")
def test_scan_audio_delta_bytes(benchmark) -> None:
    benchmark(_native.scan, AUDIO_DELTA.encode())


@pytest.mark.benchmark(group="audio delta (6.5 KB)")
def test_tracker_observe_audio_delta(benchmark) -> None:
    tracker = _native.Tracker()
    tracker.observe_server(AUDIO_DELTA)  # the first delta of the response comes back; the rest do not
    assert benchmark(tracker.observe_server, AUDIO_DELTA) is None
    assert tracker.open_responses() == [RESPONSE_ID]


@pytest.mark.benchmark(group="transcript delta")
def test_orjson_loads_transcript_delta(benchmark) -> None:
    benchmark(orjson.loads, TRANSCRIPT_DELTA)


@pytest.mark.benchmark(group="transcript delta")
def test_scan_transcript_delta(benchmark) -> None:
    assert benchmark(_native.scan, TRANSCRIPT_DELTA).payload_field == "delta"


@pytest.mark.benchmark(group="transcript delta")
def test_tracker_observe_transcript_delta(benchmark) -> None:
    tracker = _native.Tracker()
    tracker.observe_server(TRANSCRIPT_DELTA)
    benchmark(tracker.observe_server, TRANSCRIPT_DELTA)


@pytest.mark.benchmark(group="response.done (2 KB)")
def test_orjson_loads_response_done(benchmark) -> None:
    benchmark(orjson.loads, RESPONSE_DONE)


@pytest.mark.benchmark(group="response.done (2 KB)")
def test_scan_response_done(benchmark) -> None:
    assert benchmark(_native.scan, RESPONSE_DONE).response_has_metadata


@pytest.mark.benchmark(group="response.done (2 KB)")
def test_extract_usage_response_done(benchmark) -> None:
    assert benchmark(_native.extract_usage, RESPONSE_DONE).total_tokens == 1320


# One 100 ms append (6 400 base64 characters) resampled 24 → 16 kHz, as the Gemini dialect does per append.
APPEND_AUDIO = base64.b64encode(RNG.randbytes(4800)).decode()


@pytest.mark.benchmark(group="append resampled to 16 kHz (100 ms)")
def test_resample_append(benchmark) -> None:
    resampler = _native.Resampler24To16()
    assert len(benchmark(resampler.base64, APPEND_AUDIO)) == 4268  # 3 200 bytes of 16 kHz PCM16


@pytest.mark.benchmark(group="append resampled to 16 kHz (100 ms)")
def test_gemini_dialect_append(benchmark) -> None:
    from bifrost_rt.dialects.gemini import GeminiDialect

    dialect = GeminiDialect("gemini-live", "gemini-live-2.5-flash-preview")
    event = orjson.dumps({"type": "input_audio_buffer.append", "audio": APPEND_AUDIO}).decode()
    dialect.outbound(event)  # the first one carries the setup
    benchmark(dialect.outbound, event)
