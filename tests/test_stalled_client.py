"""A client that stops reading is let go within seconds, whatever it does: its turn is recorded once, its slot and its
provider connection are freed, and its socket is dropped."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY
from servers import ServerThread

MODEL = "gpt-realtime"


@pytest.fixture
def simulator_long_audio() -> Iterator[ServerThread]:
    """Two minutes of audio per response, unpaced: megabytes that a client which stops reading never takes."""
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, response_audio_ms=120_000))) as server:
        yield server


def _provider_sessions(simulator: ServerThread) -> int:
    return httpx.get(f"{simulator.url}/healthz").json()["sessions"]


async def _stalled_session(gateway) -> websockets.ClientConnection:
    """A session whose client asks for a long audio answer and then reads nothing."""
    ws = await websockets.connect(
        f"{gateway.ws_url}/v1/realtime?model={MODEL}",
        additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
        max_queue=1,  # the client library stops reading its socket once one message waits
        max_size=None,
    )
    await ws.recv()  # session.created
    await ws.send('{"type":"response.create","response":{"output_modalities":["audio"]}}')
    return ws


async def _drained_until_closed(ws: websockets.ClientConnection, timeout: float) -> bool:
    """Reads what the gateway had sent; True when the connection then turns out closed by the gateway."""
    async def drain() -> None:
        while True:
            await ws.recv()

    try:
        await asyncio.wait_for(drain(), timeout)
    except websockets.ConnectionClosed:
        return True
    except asyncio.TimeoutError:
        return False
    return False


async def test_a_client_that_stops_reading_is_dropped_and_its_turn_recorded_once(simulator_long_audio, start_gateway):
    gateway, sink = start_gateway(
        f"{simulator_long_audio.url}/v1", realtime={"write_timeout_s": 1, "close_timeout_s": 0.5, "max_sessions": 2}
    )
    registry = gateway.app.state.gateway.registry
    stalled = [await _stalled_session(gateway) for _ in range(2)]
    started = time.monotonic()
    records = await asyncio.to_thread(sink.wait_for, 2, 10.0)
    let_go_s = time.monotonic() - started
    assert sorted((r.status, r.status_reason) for r in records) == [("interrupted", "client_write_timeout")] * 2
    # The records are written as the sessions end; their slots go once each transport has closed both sides
    # (bounded by close_timeout_s).
    for _ in range(40):
        if len(registry) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(registry) == 0
    assert let_go_s < 6, f"the stalled clients were let go only after {let_go_s:.1f} s"

    # Their slots are free at once: new sessions are admitted while the stalled clients still hold their sockets.
    async with websockets.connect(f"{gateway.ws_url}/v1/realtime?model={MODEL}", additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    for ws in stalled:
        assert await _drained_until_closed(ws, 10.0), "the gateway kept the stalled client's connection"
    await asyncio.sleep(0.5)
    assert len(sink.records) == 2  # recorded exactly once each
    assert _provider_sessions(simulator_long_audio) == 0, "the provider connections stayed open"
