"""What recording turn audio costs the relay path per frame (on vs off), and what the writer spends per frame after.

Run with: .venv/bin/python -m pytest benches/test_audio_capture.py --benchmark-only -q
"""

from __future__ import annotations

import asyncio
import base64
import random

import orjson
import pytest

from bifrost_rt.config import parse_config
from bifrost_rt.core.audio import AudioCapture
from bifrost_rt.core.relay import FORWARD, Relay
from bifrost_rt.core.session import RealtimeSession
from bifrost_rt.policy.auth import Authenticator
from bifrost_rt.policy.hooks import HookPipeline
from bifrost_rt.policy.pricing import PriceTable
from bifrost_rt.providers import ModelResolver
from bifrost_rt.state.audio_formats import wav
from bifrost_rt.state.audio_store import AudioStore
from bifrost_rt.state.audio_writer import AudioClip, _decoded

RNG = random.Random(20251202)
RESPONSE_ID = "resp_CsZyL5IuqSgPEut0cI82K"
KEY = "sk-bf-bench"
# 100 ms of pcm16 at 24 kHz per frame, as in test_micro.py.
AUDIO_DELTA = orjson.dumps({
    "type": "response.output_audio.delta", "event_id": "event_CsZyNdzXT4hWhvq6Pv8ad", "response_id": RESPONSE_ID,
    "item_id": "item_CsZyLdZ3sHZ2DniSNrTKs", "output_index": 0, "content_index": 0,
    "delta": base64.b64encode(RNG.randbytes(4800)).decode(),
}).decode()  # fmt: skip
APPEND = orjson.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(RNG.randbytes(4800)).decode()}).decode()


class _Sink:
    def submit(self, clips: list[AudioClip]) -> bool:
        return True


def _relay(recording: bool) -> Relay:
    config = parse_config({"providers": {"openai": {"base_url": "http://127.0.0.1:1/v1"}}, "virtual_keys": [{"key": KEY, "name": "bench"}]})
    principal = Authenticator(config).authenticate(KEY)
    route = ModelResolver(config).resolve("gpt-realtime")
    assert principal is not None and route is not None
    hooks = HookPipeline([])
    audio = AudioCapture(_Sink(), opus=False, max_turn_bytes=2**62) if recording else None
    session = RealtimeSession(
        principal=principal, route=route, transport="websocket", session_group=None, limits=config.realtime,
        prices=PriceTable(), writer=_Sink(), hooks=hooks, audio=audio,  # type: ignore[arg-type]
    )  # fmt: skip
    relay = Relay(session, hooks, max_message_bytes=16 * 1024 * 1024)
    relay.from_server(orjson.dumps({"type": "response.created", "response": {"id": RESPONSE_ID, "object": "realtime.response"}}).decode())
    relay.from_server(AUDIO_DELTA)  # the first delta comes back to Python; the bench measures the absorbed ones
    return relay


@pytest.mark.parametrize("recording", [False, True], ids=["off", "on"])
def test_relay_output_audio_delta(benchmark, recording: bool) -> None:
    relay = _relay(recording)
    assert benchmark(relay.from_server, AUDIO_DELTA) is FORWARD


@pytest.mark.parametrize("recording", [False, True], ids=["off", "on"])
def test_relay_input_audio_append(benchmark, recording: bool) -> None:
    relay = _relay(recording)
    assert benchmark(relay.from_client, APPEND) is FORWARD


def test_writer_decodes_a_turn_of_output_deltas(benchmark) -> None:
    """30 frames (3 s of audio) into one WAV; divide by 30 for the writer's cost per frame."""
    clip = AudioClip("turn_bench", "output", "pcm16", [AUDIO_DELTA] * 30, len(AUDIO_DELTA) * 30, RESPONSE_ID)
    loop = asyncio.new_event_loop()
    try:
        data = benchmark(lambda: loop.run_until_complete(_decoded(clip)))
    finally:
        loop.close()
    assert len(data) == 44 + 30 * 4800


def test_store_writes_a_turn_of_audio(benchmark, tmp_path) -> None:
    """One 3 s PCM16 recording to the directory (temporary name, then rename): the file system's share."""
    store = AudioStore(tmp_path, max_bytes=2**40, retention_s=3600)
    store.open()
    data = wav("pcm16", [RNG.randbytes(3 * 48_000)])
    counter = iter(range(10**9))
    assert benchmark(lambda: store.put(f"turn_{next(counter)}", "output", "pcm16", data))
