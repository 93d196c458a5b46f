"""Turn audio: recorded for keys with record_audio, stored off the relay path, served to admin keys only."""

from __future__ import annotations

import base64
import io
import time
import wave
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI
from test_gateway_clients import tone_pcm16, until_done

from conftest import VIRTUAL_KEY

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
