"""Turn audio: recorded for keys with record_audio, stored off the relay path, served to admin keys only."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import re
import struct
import time
import wave
from pathlib import Path

import av
import httpx
import pytest
from openai import AsyncOpenAI

from bifrost_rt.config import parse_config
from bifrost_rt.runtime.app import create_app
from bifrost_rt.state.audio_formats import ogg_opus, wav
from bifrost_rt.state.audio_store import AudioStore
from bifrost_rt.state.audio_writer import AudioClip, AudioWriter
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator.audio import TONE_HZ
from bifrost_rt.tools.simulator.webrtc import OPUS_RATE

from conftest import VIRTUAL_KEY, CapturingSink, gateway_config
from rtc_client import LOUD_RMS, TIMEOUT_S, VOICE_HZ, call, rms, zero_crossing_hz
from servers import ServerThread
from test_gateway_clients import tone_pcm16, until_done

ADMIN_KEY = "sk-bf-admin-audio"
QUIET_KEY = "sk-bf-no-content"


def recording_config(directory: Path, **audio) -> dict:
    return {
        "admin_keys": [ADMIN_KEY],
        "virtual_keys": [
            {"key": VIRTUAL_KEY, "name": "team-a", "record_audio": True},
            {"key": QUIET_KEY, "name": "quiet", "record_audio": True, "log_content": False},
            {"key": "sk-bf-plain", "name": "plain"},
        ],
        "audio": {"directory": str(directory), **audio},
    }


def client(server, key: str = VIRTUAL_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{server.url}/v1", websocket_base_url=f"{server.ws_url}/v1")


async def audio_turn(server, key: str = VIRTUAL_KEY, ms: int = 600) -> tuple[bytes, bytes, str]:
    """One audio-in, audio-out turn from openai-python: (audio sent, audio received, response id)."""
    sent = tone_pcm16(ms)
    async with client(server, key).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"], "audio": {"input": {"turn_detection": None}}})
        for offset in range(0, len(sent), 9600):
            await conn.input_audio_buffer.append(audio=base64.b64encode(sent[offset : offset + 9600]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await until_done(conn)
    received = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    return sent, received, events[-1].response.id


def fetch(server, turn_id: str, direction: str, key: str | None = ADMIN_KEY, timeout: float = 10.0) -> httpx.Response:
    """The audio route, retried while the writer has not stored the file yet (404)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{server.url}/api/logs/turns/{turn_id}/audio/{direction}", headers=headers)
        if response.status_code != 404 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def pcm_of(response: httpx.Response) -> tuple[bytes, int, int]:
    with wave.open(io.BytesIO(response.content)) as reader:
        return reader.readframes(reader.getnframes()), reader.getframerate(), reader.getsampwidth()


async def test_websocket_turn_audio_is_recorded_and_served_as_wav(simulator, start_gateway, tmp_path):
    server, sink = start_gateway(f"{simulator.url}/v1", **recording_config(tmp_path))
    sent, received, response_id = await audio_turn(server)
    record = next(r for r in sink.wait_for(1) if r.response_id == response_id)
    assert record.audio == {
        "input": {"format": "pcm16", "bytes": len(sent), "duration_ms": 600.0},
        "output": {"format": "pcm16", "bytes": len(received), "duration_ms": pytest.approx(len(received) / 48)},
    }
    assert received
    for direction, expected in (("input", sent), ("output", received)):
        response = fetch(server, record.id, direction)
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        assert pcm_of(response) == (expected, 24000, 2)


def stored_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_keys_that_do_not_log_content_never_record(simulator, start_gateway, tmp_path):
    server, sink = start_gateway(f"{simulator.url}/v1", **recording_config(tmp_path))
    for key in (QUIET_KEY, "sk-bf-plain"):
        _, received, response_id = await audio_turn(server, key)
        assert received
        record = next(r for r in sink.wait_for(1) if r.response_id == response_id)
        assert record.audio is None and "audio_dropped" not in record.metadata
    assert stored_files(tmp_path) == []
    assert metric(server, "bifrost_rt_audio_clips_written") == 0


async def test_audio_is_served_to_admin_keys_only(simulator, start_gateway, tmp_path):
    server, sink = start_gateway(f"{simulator.url}/v1", **recording_config(tmp_path))
    _, _, response_id = await audio_turn(server)
    record = next(r for r in sink.wait_for(1) if r.response_id == response_id)
    assert fetch(server, record.id, "output").status_code == 200
    for key in (None, VIRTUAL_KEY, "sk-bf-admin-audio-wrong"):
        refused = fetch(server, record.id, "input", key=key)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert not refused.content.startswith(b"RIFF")
    assert fetch(server, "turn_doesnotexist", "input", timeout=0).status_code == 404
    assert fetch(server, "../../etc/passwd", "input", timeout=0).status_code == 404
    bad = fetch(server, record.id, "both", timeout=0)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "direction"


async def test_a_full_queue_drops_the_turns_audio_and_counts_it_while_the_relay_goes_on(simulator, start_gateway, tmp_path):
    # Far less room than one turn's audio: the writer's queue cannot take it.
    server, sink = start_gateway(f"{simulator.url}/v1", **recording_config(tmp_path, max_queued_bytes=1024))
    sent, received, response_id = await audio_turn(server)
    assert received  # the client got its whole answer
    record = next(r for r in sink.wait_for(1) if r.response_id == response_id)
    assert record.status == "completed"
    assert record.audio is None and record.metadata["audio_dropped"] is True
    assert metric(server, "bifrost_rt_audio_turns_dropped") == 1
    assert stored_files(tmp_path) == []
    assert fetch(server, record.id, "input", timeout=0).status_code == 404


async def test_the_size_cap_deletes_the_oldest_turns_audio_first(simulator, start_gateway, tmp_path):
    server, sink = start_gateway(f"{simulator.url}/v1", **recording_config(tmp_path, max_bytes=100_000))
    first = await audio_turn(server, ms=600)
    first_record = next(r for r in sink.wait_for(1) if r.response_id == first[2])
    assert fetch(server, first_record.id, "input").status_code == 200
    second = await audio_turn(server, ms=800)
    second_record = next(r for r in sink.wait_for(2) if r.response_id == second[2])
    assert pcm_of(fetch(server, second_record.id, "input"))[0] == second[0]
    files = stored_files(tmp_path)
    assert f"{second_record.id}.input.wav" in files and f"{first_record.id}.input.wav" not in files
    assert sum((tmp_path / name).stat().st_size for name in files) <= 100_000
    assert fetch(server, first_record.id, "input", timeout=0).status_code == 404
    assert metric(server, "bifrost_rt_audio_clips_evicted") >= 1


def test_the_store_keeps_its_cap_and_retention_across_restarts(tmp_path):
    store = AudioStore(tmp_path, max_bytes=10_000, retention_s=3600)
    store.open()
    for n in range(4):
        assert store.put(f"turn_{n}", "input", "pcm16", wav("pcm16", [bytes(3000)]))
    assert store.total_bytes <= 10_000
    assert stored_files(tmp_path) == ["turn_1.input.wav", "turn_2.input.wav", "turn_3.input.wav"]
    assert not store.put("turn_big", "output", "pcm16", bytes(10_001))  # alone over the cap: not stored
    old = tmp_path / "turn_1.input.wav"
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    reopened = AudioStore(tmp_path, max_bytes=10_000, retention_s=3600)
    reopened.open()
    assert reopened.total_bytes == sum((tmp_path / n).stat().st_size for n in stored_files(tmp_path))
    assert reopened.sweep() == 1
    assert stored_files(tmp_path) == ["turn_2.input.wav", "turn_3.input.wav"]
    assert reopened.find("turn_1", "input") is None and reopened.find("turn_2", "input") is not None


async def test_the_sweep_deletes_audio_past_its_retention(simulator, start_gateway, tmp_path):
    server, sink = start_gateway(f"{simulator.url}/v1", **recording_config(tmp_path, retention_s=0.5, sweep_interval_s=0.1))
    _, _, response_id = await audio_turn(server)
    record = next(r for r in sink.wait_for(1) if r.response_id == response_id)
    assert record.audio is not None
    deadline = time.monotonic() + 10
    while (stored_files(tmp_path) or metric(server, "bifrost_rt_audio_clips_expired") < 2) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert stored_files(tmp_path) == []
    assert metric(server, "bifrost_rt_audio_clips_expired") == 2
    assert fetch(server, record.id, "output", timeout=0).status_code == 404


def test_g711_recordings_are_wav_with_their_format_tag():
    for audio_format, tag in (("g711_ulaw", 7), ("g711_alaw", 6)):
        data = wav(audio_format, [bytes(range(256)) * 3, bytes(range(256))])
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
        fmt_tag, channels, rate, byte_rate, block, bits = struct.unpack("<HHIIHH", data[20:36])
        assert (fmt_tag, channels, rate, byte_rate, block, bits) == (tag, 1, 8000, 8000, 1, 8)
        decoded = decode_with_pyav(data, "wav")
        assert decoded.rate == 8000 and decoded.samples == 1024


@dataclasses.dataclass
class Decoded:
    pcm: bytes  # s16 mono at `rate`
    rate: int
    samples: int


def decode_with_pyav(data: bytes, container: str) -> Decoded:
    with av.open(io.BytesIO(data), format=container) as source:
        stream = source.streams.audio[0]
        rate = stream.codec_context.sample_rate
        to_mono = av.AudioResampler(format="s16", layout="mono", rate=rate)
        pcm = b"".join(bytes(out.planes[0])[: out.samples * 2] for frame in source.decode(stream) for out in to_mono.resample(frame))
    return Decoded(pcm, rate, len(pcm) // 2)


async def test_webrtc_turn_audio_is_recorded_as_ogg_opus_that_plays(tmp_path):
    sink = CapturingSink()
    config = gateway_config(
        "http://unused/v1", webrtc={"host_candidates": "loopback"}, **recording_config(tmp_path)
    )
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, response_audio_ms=600))) as simulator:
        config["providers"]["openai"]["base_url"] = f"{simulator.url}/v1"
        with ServerThread(create_app(parse_config(config), turn_sinks=[sink])) as server:
            async with call(server, key=VIRTUAL_KEY, path="/v1/realtime/calls?model=gpt-realtime") as (caller, call_id):
                caller.send("session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}}})
                await caller.until("session.updated")
                caller.microphone.speak(600)
                done = (await caller.until("response.done"))[-1]
                await caller.until("output_audio_buffer.stopped")  # the provider's last audio packet has gone out
            record = await asyncio.wait_for(_record_for(sink, done["response"]["id"]), TIMEOUT_S)
            assert record.transport == "webrtc"
            assert record.audio["input"]["format"] == record.audio["output"]["format"] == "ogg-opus"
            # The provider's audio trails response.done on a call: the record names its format, the file follows.
            assert record.audio["output"] == {"format": "ogg-opus"}
            assert record.audio["input"]["bytes"] > 0
            heard = {}
            for direction in ("input", "output"):
                response = fetch(server, record.id, direction)
                assert response.status_code == 200 and response.headers["content-type"] == "audio/ogg"
                assert response.content[:4] == b"OggS"
                decoded = decode_with_pyav(response.content, "ogg")
                assert decoded.rate == OPUS_RATE
                if direction == "input":
                    assert decoded.samples * 1000 / OPUS_RATE == pytest.approx(record.audio["input"]["duration_ms"], abs=1)
                loud = [decoded.pcm[i : i + 1920] for i in range(0, len(decoded.pcm) - 1920, 1920)]
                heard[direction] = b"".join(chunk for chunk in loud if rms(chunk) > LOUD_RMS)
            # What the caller said (a 300 Hz tone) and what the model answered (440 Hz), each in its own file.
            assert abs(zero_crossing_hz(heard["input"], OPUS_RATE) - VOICE_HZ) < 10
            assert abs(zero_crossing_hz(heard["output"], OPUS_RATE) - TONE_HZ) < 10
            assert len(heard["output"]) // 2 >= OPUS_RATE * 500 // 1000


async def _record_for(sink: CapturingSink, response_id: str):
    while True:
        for record in list(sink.records):
            if record.response_id == response_id:
                return record
        await asyncio.sleep(0.02)


def test_ogg_pages_carry_granules_and_a_valid_checksum():
    packets = [bytes([0xFC]) + bytes(40)] * 120  # CELT 20 ms mono frames
    data = ogg_opus(packets)
    decoded = decode_with_pyav(data, "ogg")
    assert decoded.samples == 120 * 960


async def test_the_writer_queue_is_bounded_by_turns_and_never_waits(tmp_path):
    writer = AudioWriter(AudioStore(tmp_path, max_bytes=10**9, retention_s=3600), queue_size=2, max_queued_bytes=10**9, sweep_interval_s=60)
    writer.start()
    try:
        frame = '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(bytes(4800)).decode() + '"}'
        # Submitted back to back from the event loop, as turns end: the writer has taken none of them yet.
        accepted = [writer.submit([AudioClip(f"turn_{n}", "input", "pcm16", [frame], len(frame))]) for n in range(4)]
        assert accepted == [True, True, False, False] and writer.dropped_turns == 2
        deadline = time.monotonic() + 10
        while writer.written < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert stored_files(tmp_path) == ["turn_0.input.wav", "turn_1.input.wav"]
        assert writer.submit([AudioClip("turn_4", "input", "pcm16", [frame], len(frame))])  # room again
    finally:
        await writer.close()
    assert "turn_4.input.wav" in stored_files(tmp_path)


async def test_g711_sessions_are_recorded_in_their_own_formats(simulator, start_gateway, tmp_path):
    server, sink = start_gateway(f"{simulator.url}/v1", **recording_config(tmp_path))
    sent = bytes((n * 7) % 256 for n in range(4800))  # 600 ms of 8 kHz μ-law
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"], "audio": {
            "input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}}})
        for offset in range(0, len(sent), 1600):
            await conn.input_audio_buffer.append(audio=base64.b64encode(sent[offset : offset + 1600]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await until_done(conn)
    received = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    record = next(r for r in sink.wait_for(1) if r.response_id == events[-1].response.id)
    assert record.audio["input"] == {"format": "g711_ulaw", "bytes": 4800, "duration_ms": 600.0}
    assert record.audio["output"]["format"] == "g711_alaw" and record.audio["output"]["bytes"] == len(received) > 0
    for direction, expected, tag in (("input", sent, 7), ("output", received, 6)):
        data = fetch(server, record.id, direction).content
        fmt_tag, channels, rate = struct.unpack("<HHI", data[20:28])
        assert (fmt_tag, channels, rate) == (tag, 1, 8000)
        data_at = data.index(b"data") + 8
        assert data[data_at : data_at + len(expected)] == expected
        assert decode_with_pyav(data, "wav").samples == len(expected)
