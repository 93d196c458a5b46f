"""A recording session's turn audio, held by reference until its turn ends, then handed to the audio writer.

Nothing is decoded or copied on the relay path. A WebSocket session keeps the very `input_audio_buffer.append`
frames and the provider frames the tracker absorbed while a turn was open (the writer picks that turn's audio deltas
out of them); a WebRTC call keeps the RTP packets its rings forward. Input audio since the last commit is what the
commit fed, and it goes to the next turn that starts; output audio goes to the turns open while it arrives.
Each direction holds at most `max_turn_bytes`: older input is let go, later output is not kept (`truncated`).

On a call the provider streams a response's audio in real time, so it trails `response.done`: the output of the
turn that started last is kept until `output_audio_buffer.stopped` (or `cleared`, the next turn, the end of the
call) and only then written; its record names the format without a size, since the size is not known yet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from bifrost_rt.records import TurnRecord
from bifrost_rt.state.audio_formats import OGG_OPUS, OPUS_RATE, duration_ms, opus_samples, rtp_payload
from bifrost_rt.state.audio_writer import AudioClip

# The session's audio/format as the GA (`audio.input.format.type`) and beta (`input_audio_format`) APIs name it.
_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw", "pcm16": "pcm16",
            "g711_ulaw": "g711_ulaw", "g711_alaw": "g711_alaw"}  # fmt: skip


class AudioSink(Protocol):
    def submit(self, clips: list[AudioClip]) -> bool: ...


def audio_format(value: Any) -> str | None:
    """The recording format of a session's `format` field (a GA object or a beta string), if it names one."""
    if isinstance(value, dict):
        value = value.get("type")
    return _FORMATS.get(value) if isinstance(value, str) else None


@dataclass(slots=True)
class _Chunks:
    items: deque[str | bytes] = field(default_factory=deque)
    size: int = 0
    decoded: int = 0  # the tracker's count of decoded bytes (WebSocket input)
    truncated: bool = False


@dataclass(slots=True)
class _Speaking:
    """A call's output audio: the packets since its turn started, until the provider stops sending them."""

    response_id: str
    chunks: _Chunks = field(default_factory=_Chunks)
    turn_id: str | None = None  # set once the turn's record exists


@dataclass(slots=True)
class _OpenTurn:
    input: _Chunks
    output_from: int  # index in the shared output list where this turn's audio starts
    truncated: bool = False


class AudioCapture:
    def __init__(self, sink: AudioSink, *, opus: bool, max_turn_bytes: int) -> None:
        self._sink = sink
        self.opus = opus
        self.input_format = self.output_format = OGG_OPUS if opus else "pcm16"
        self._max = max_turn_bytes
        self._pending = _Chunks()  # since the last commit
        self._committed = _Chunks()  # committed, not yet taken by a turn
        self._output: list[str | bytes] = []  # while any turn is open
        self._output_size = 0
        self._open: dict[str, _OpenTurn] = {}
        self._speaking: _Speaking | None = None

    # ---- the relay path: one append each ------------------------------------------------------

    def client_audio(self, chunk: str | bytes) -> None:
        """An `input_audio_buffer.append` frame, or an RTP packet from the client."""
        pending = self._pending
        pending.items.append(chunk)
        pending.size += len(chunk)
        while pending.size > self._max and len(pending.items) > 1:
            pending.size -= len(pending.items.popleft())
            pending.truncated = True

    def provider_audio(self, chunk: str | bytes) -> None:
        """A provider frame absorbed while a turn is open, or an RTP packet from the provider."""
        if self.opus:
            speaking = self._speaking
            if speaking is not None:
                chunks = speaking.chunks
                if chunks.size + len(chunk) > self._max:
                    chunks.truncated = True
                else:
                    chunks.items.append(chunk)
                    chunks.size += len(chunk)
            return
        if not self._open:
            return
        if self._output_size + len(chunk) > self._max:
            for turn in self._open.values():
                turn.truncated = True
            return
        self._output.append(chunk)
        self._output_size += len(chunk)

    # ---- turn boundaries ------------------------------------------------------------------------

    def formats(self, input_format: str | None, output_format: str | None) -> None:
        if not self.opus:
            self.input_format = input_format or self.input_format
            self.output_format = output_format or self.output_format

    def committed(self, decoded_bytes: int = 0) -> None:
        """The provider committed the input buffer: what was appended since is the next turn's input."""
        pending, committed = self._pending, self._committed
        pending.decoded = decoded_bytes
        if committed.items:  # two commits before a turn: both feed it
            committed.items.extend(pending.items)
            committed.size += pending.size
            committed.decoded += pending.decoded
            committed.truncated |= pending.truncated
        else:
            self._committed = pending
        self._pending = _Chunks()

    def cleared(self) -> None:
        self._pending = _Chunks()

    def turn_started(self, response_id: str) -> None:
        self._open[response_id] = _OpenTurn(self._committed, len(self._output))
        self._committed = _Chunks()
        if self.opus:
            self.output_stopped(None)
            self._speaking = _Speaking(response_id)

    def output_stopped(self, response_id: str | None) -> None:
        """A call's output audio for `response_id` (None: whichever) has stopped: write it if its turn has ended."""
        speaking = self._speaking
        if speaking is None or (response_id is not None and response_id != speaking.response_id):
            return
        if speaking.turn_id is None:  # the turn goes on (audio stopped before response.done): keep listening
            return
        self._speaking = None
        if speaking.chunks.items:
            self._sink.submit([AudioClip(speaking.turn_id, "output", OGG_OPUS, list(speaking.chunks.items), speaking.chunks.size)])

    def turn_finished(self, record: TurnRecord, output_bytes: int) -> None:
        """Hands the turn's clips to the writer and describes them on the record (or marks them dropped)."""
        turn = self._open.pop(record.response_id or "", None)
        if turn is None:
            return
        if self.opus:
            self._finish_call_turn(record, turn)
            return
        output = _Chunks(deque(self._output[turn.output_from :]), 0, output_bytes, turn.truncated)
        output.size = self._output_size - sum(len(c) for c in self._output[: turn.output_from])
        if not self._open:
            self._output.clear()
            self._output_size = 0
        clips, described = [], {}
        for direction, chunks, audio_format in (("input", turn.input, self.input_format), ("output", output, self.output_format)):
            if not chunks.items:
                continue
            description = self._describe(chunks, audio_format)
            if description is None:
                continue
            described[direction] = description
            clips.append(AudioClip(record.id, direction, audio_format, list(chunks.items), chunks.size, record.response_id))
        if not clips:
            return
        if self._sink.submit(clips):
            record.audio = described
        else:
            record.metadata["audio_dropped"] = True

    def _finish_call_turn(self, record: TurnRecord, turn: _OpenTurn) -> None:
        described: dict[str, dict[str, Any]] = {}
        if turn.input.items:
            description = self._describe(turn.input, OGG_OPUS)
            if description is not None:
                if self._sink.submit([AudioClip(record.id, "input", OGG_OPUS, list(turn.input.items), turn.input.size)]):
                    described["input"] = description
                else:
                    record.metadata["audio_dropped"] = True
        speaking = self._speaking
        if speaking is not None and speaking.response_id == record.response_id:
            speaking.turn_id = record.id
            described["output"] = {"format": OGG_OPUS}  # still arriving: written when the provider stops it
        if described:
            record.audio = described

    def _describe(self, chunks: _Chunks, audio_format: str) -> dict[str, Any] | None:
        if audio_format == OGG_OPUS:
            payloads = [rtp_payload(p) for p in chunks.items if isinstance(p, bytes)]
            size = sum(len(p) for p in payloads)
            duration = round(sum(opus_samples(p) for p in payloads) / OPUS_RATE * 1000, 3)
        else:
            size = chunks.decoded
            duration = duration_ms(audio_format, size)
        if not size:
            return None
        description: dict[str, Any] = {"format": audio_format, "bytes": size, "duration_ms": duration}
        if chunks.truncated:
            description["truncated"] = True
        return description

    def close(self) -> None:
        self.output_stopped(None)
        self._speaking = None
        self._pending = self._committed = _Chunks()
        self._output.clear()
        self._open.clear()
