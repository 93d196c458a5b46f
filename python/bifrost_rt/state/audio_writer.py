"""The bounded queue that carries finished turns' audio to the audio store, off the relay path.

A clip holds what the relay saw, untouched: WebSocket frames (the writer decodes their base64 audio) or RTP
packets (the writer takes their Opus payloads). `submit` never blocks: a turn whose clips would overflow the queue,
by count or by bytes, is dropped and counted. One task encodes and stores the clips and sweeps the store.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from dataclasses import dataclass

import orjson
import pybase64

from bifrost_rt import _native
from bifrost_rt.state.audio_formats import OGG_OPUS, ogg_opus, rtp_payload, wav
from bifrost_rt.state.audio_store import AudioStore
from bifrost_rt.tasks import stop_task

logger = logging.getLogger("bifrost_rt.audio")

_OUTPUT_AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


@dataclass(slots=True)
class AudioClip:
    """One direction of one turn, as received. `response_id` picks the turn's deltas from shared provider frames."""

    turn_id: str
    direction: str  # input | output
    format: str  # pcm16 | g711_ulaw | g711_alaw | ogg-opus
    chunks: list[str | bytes]
    size: int  # characters or bytes held
    response_id: str | None = None


_YIELD_EVERY = 32  # frames decoded between yields to the event loop, so a long turn never holds the relay up


def _base64_audio(frame: str | bytes, direction: str, response_id: str | None) -> str | None:
    """The base64 audio of an append frame (input) or of one of the turn's audio deltas (output).

    The native scanner finds the field without parsing the rest; its offsets are UTF-8 bytes, so a frame with
    other characters, or an escaped payload, is parsed in full instead."""
    if not isinstance(frame, str):
        return None
    info = _native.scan(frame)
    if direction == "output" and (info.type not in _OUTPUT_AUDIO_DELTAS or info.response_id != response_id):
        return None
    if info.payload_start >= 0 and frame.isascii():
        payload = frame[info.payload_start : info.payload_start + info.payload_len]
        if "\\" not in payload:
            return payload
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    encoded = event.get("audio" if direction == "input" else "delta") if isinstance(event, dict) else None
    return encoded if isinstance(encoded, str) else None


def _decode_base64(encoded: str) -> bytes:
    """SIMD base64 (an order of magnitude faster than binascii's); binascii's lenient decoder for odd input."""
    try:
        return pybase64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        try:
            return binascii.a2b_base64(encoded)
        except binascii.Error:
            return b""


async def _decoded(clip: AudioClip) -> bytes:
    """The clip's audio in its container: Opus payloads of RTP packets in Ogg, or the PCM/G.711 bytes of the frames'
    base64 fields in WAV."""
    if clip.format == OGG_OPUS:
        return ogg_opus(rtp_payload(p) for p in clip.chunks if isinstance(p, bytes))
    parts = []
    for index, frame in enumerate(clip.chunks):
        if index % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)
        encoded = _base64_audio(frame, clip.direction, clip.response_id)
        if encoded is not None:
            parts.append(_decode_base64(encoded))
    return wav(clip.format, parts)


class AudioWriter:
    def __init__(self, store: AudioStore, *, queue_size: int, max_queued_bytes: int, sweep_interval_s: float) -> None:
        self.store = store
        self._queue: asyncio.Queue[list[AudioClip]] = asyncio.Queue(queue_size)
        self._max_queued = max_queued_bytes
        self._queued_bytes = 0
        self._sweep_interval_s = sweep_interval_s
        self._task: asyncio.Task[None] | None = None
        self.dropped_turns = 0
        self.written = 0
        self.failures = 0

    def start(self) -> None:
        if self._task is None:
            self.store.open()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bifrost-rt-audio-writer")

    def submit(self, clips: list[AudioClip]) -> bool:
        """Queues one turn's clips; False (and counted) when the queue is full or they would overflow its bytes."""
        size = sum(clip.size for clip in clips)
        if self._task is None or self._queued_bytes + size > self._max_queued or self._queue.full():
            self.dropped_turns += 1
            return False
        self._queue.put_nowait(clips)
        self._queued_bytes += size
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            if loop.time() >= next_sweep:
                await self._sweep()
                next_sweep = loop.time() + self._sweep_interval_s
            try:
                clips = await asyncio.wait_for(self._queue.get(), max(0.0, next_sweep - loop.time()))
            except asyncio.TimeoutError:
                continue
            try:
                for clip in clips:
                    await self._write(clip)
            finally:
                self._queued_bytes -= sum(clip.size for clip in clips)
                self._queue.task_done()

    async def _write(self, clip: AudioClip) -> None:
        try:
            data = await _decoded(clip)
            if await asyncio.to_thread(self.store.put, clip.turn_id, clip.direction, clip.format, data):
                self.written += 1
        except Exception:
            self.failures += 1
            logger.exception("audio of turn %s (%s) could not be stored", clip.turn_id, clip.direction)

    async def _sweep(self) -> None:
        try:
            await asyncio.to_thread(self.store.sweep)
        except Exception:
            self.failures += 1
            logger.exception("audio store sweep failed")

    async def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (within `timeout`), then stops."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            logger.error("audio writer: %d turn(s) still queued at shutdown are not stored", self.depth)
        await stop_task(self._task)
        self._task = None
