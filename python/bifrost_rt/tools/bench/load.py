"""Load generator: realtime sessions driven against one target, counting the events that cross it.

Frames are received as bytes and only parsed when a cheap substring test says they may be the event being
waited for, so the generator spends its CPU moving frames, not decoding them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bifrost_rt.tools.bench.procs import BenchError

PCM16_BYTES_PER_MS = 48  # 24 kHz mono, 2 bytes per sample
RESPONSE_CREATE = orjson.dumps({"type": "response.create"}).decode()
COMMIT = orjson.dumps({"type": "input_audio_buffer.commit"}).decode()
NO_TURN_DETECTION = orjson.dumps(
    {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
).decode()
BETA_NO_TURN_DETECTION = orjson.dumps({"type": "session.update", "session": {"turn_detection": None}}).decode()


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # ws://host:port/v1/realtime?model=...
    api_key: str
    beta: bool = False  # the client speaks the retired beta protocol (`OpenAI-Beta: realtime=v1`)


@dataclass
class Counts:
    sessions: int = 0
    sent: int = 0  # client events sent inside the measured window
    received: int = 0  # server events received inside the measured window
    wall_s: float = 0.0


# Reads the relay's CPU time at the start or at the end of the measured window of a phase.
Meter = Callable[[], Awaitable[None]]


def append_frame(chunk_ms: int) -> str:
    """One `input_audio_buffer.append` of `chunk_ms` of pcm16 (100 ms is 6 400 base64 chars)."""
    audio = base64.b64encode(os.urandom(chunk_ms * PCM16_BYTES_PER_MS)).decode()
    return orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode()


def _event_type(frame: bytes) -> str:
    return orjson.loads(frame).get("type", "")


async def recv_until(ws: ClientConnection, target: str, event_type: str) -> int:
    """Receives until an `event_type` event arrives; returns the number of frames received, that one included."""
    marker = f'"{event_type}"'.encode()
    received = 0
    while True:
        frame = await ws.recv(decode=False)
        received += 1
        if marker in frame and _event_type(frame) == event_type:
            return received
        if b'"error"' in frame and _event_type(frame) == "error":
            raise BenchError(f"{target}: server sent an error while waiting for {event_type}: {frame[:400]!r}")


async def open_session(target: Target) -> ClientConnection:
    # A session closed mid-phase (failure, Ctrl-C) may have frames queued behind the close frame; a short
    # close timeout keeps that from stalling the bench's exit.
    headers = {"Authorization": f"Bearer {target.api_key}", **({"OpenAI-Beta": "realtime=v1"} if target.beta else {})}
    ws = await connect(target.url, additional_headers=headers,
                       compression=None, max_size=None, open_timeout=30, close_timeout=1)
    try:
        await recv_until(ws, target.name, "session.created")
    except BaseException:
        await ws.close()
        raise
    return ws


async def open_sessions(target: Target, n: int) -> list[ClientConnection]:
    results = await asyncio.gather(*(open_session(target) for _ in range(n)), return_exceptions=True)
    sessions = [r for r in results if isinstance(r, ClientConnection)]
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        await close_sessions(sessions)
        if isinstance(failure, BenchError):
            raise failure
        raise BenchError(f"{target.name}: cannot open a session at {target.url}: {failure!r}") from failure
    return sessions


async def close_sessions(sessions: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sessions), return_exceptions=True)


async def setup(target: Target, sessions: int, rounds: int, start: Meter, stop: Meter) -> Counts:
    """Opens `sessions` sessions at once and closes them again, `rounds` times, all inside the window."""
    await start()
    began = time.perf_counter()
    for _ in range(rounds):
        await close_sessions(await open_sessions(target, sessions))
    counts = Counts(sessions=sessions * rounds, wall_s=time.perf_counter() - began)
    await stop()
    return counts


async def down(target: Target, sessions: int, responses: int, start: Meter, stop: Meter) -> Counts:
    """Each session asks for `responses` responses one after the other; every server event is counted."""
    conns = await open_sessions(target, sessions)
    try:
        await start()
        began = time.perf_counter()
        per_session = await asyncio.gather(*(_responses(ws, target.name, responses) for ws in conns))
        counts = Counts(sessions=sessions, sent=sessions * responses, received=sum(per_session),
                        wall_s=time.perf_counter() - began)
        await stop()
    finally:
        await close_sessions(conns)
    return counts


async def _responses(ws: ClientConnection, target: str, responses: int) -> int:
    received = 0
    for _ in range(responses):
        await ws.send(RESPONSE_CREATE)
        received += await recv_until(ws, target, "response.done")
    return received


async def up(target: Target, sessions: int, turns: int, appends: int, chunk_ms: int, start: Meter,
             stop: Meter) -> Counts:
    """Each session streams `turns` user turns: `appends` audio chunks as fast as the socket takes them, then a
    commit. The `input_audio_buffer.committed` answer proves the relay forwarded every append before it.
    """
    conns = await open_sessions(target, sessions)
    try:
        await asyncio.gather(*(_no_turn_detection(ws, target) for ws in conns))
        frame = append_frame(chunk_ms)
        await start()
        began = time.perf_counter()
        per_session = await asyncio.gather(*(_stream(ws, target.name, frame, turns, appends) for ws in conns))
        counts = Counts(sessions=sessions, sent=sessions * turns * (appends + 1), received=sum(per_session),
                        wall_s=time.perf_counter() - began)
        await stop()
    finally:
        await close_sessions(conns)
    return counts


async def _no_turn_detection(ws: ClientConnection, target: Target) -> None:
    await ws.send(BETA_NO_TURN_DETECTION if target.beta else NO_TURN_DETECTION)
    await recv_until(ws, target.name, "session.updated")


async def _stream(ws: ClientConnection, target: str, frame: str, turns: int, appends: int) -> int:
    received = 0
    for _ in range(turns):
        for _ in range(appends):
            await ws.send(frame)
        await ws.send(COMMIT)
        received += await recv_until(ws, target, "input_audio_buffer.committed")
    return received


async def latency(target: Target, sessions: int, responses: int) -> list[float]:
    """One-way delay in ms of every stamped delta, from the simulator's send to this process's receive."""
    conns = await open_sessions(target, sessions)
    samples: list[float] = []
    try:
        await asyncio.gather(*(_timed_responses(ws, target.name, responses, samples) for ws in conns))
    finally:
        await close_sessions(conns)
    if not samples:
        raise BenchError(f"{target.name}: no delta carried sim_sent_ns; is the simulator stamping events?")
    return samples


async def _timed_responses(ws: ClientConnection, target: str, responses: int, samples: list[float]) -> None:
    for _ in range(responses):
        await ws.send(RESPONSE_CREATE)
        while True:
            frame = await ws.recv(decode=False)
            now_ns = time.time_ns()
            if b'.delta"' in frame:
                sent_ns = orjson.loads(frame).get("sim_sent_ns")
                if sent_ns is not None:
                    samples.append((now_ns - sent_ns) / 1e6)
            elif b'"response.done"' in frame and _event_type(frame) == "response.done":
                break
            elif b'"error"' in frame and _event_type(frame) == "error":
                raise BenchError(f"{target}: server sent an error during a response: {frame[:400]!r}")
