"""The input audio buffer and energy-based turn detection over 10 ms frames.

Speech starts at the first frame whose level reaches the threshold (see `audio.SPEECH_LEVEL_PER_THRESHOLD`);
`audio_start_ms` reaches back `prefix_padding_ms` before it. Speech stops once `silence_duration_ms` of frames in
a row fall below the threshold; `audio_end_ms` is the end of the last of them, and the committed segment runs from
`audio_start_ms` to `audio_end_ms`. Positions count milliseconds of all audio appended in the session.
`semantic_vad` is treated as energy VAD whose silence window follows `eagerness`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bifrost_rt.tools.simulator.audio import BYTES_PER_MS, PCM16, SPEECH_LEVEL_PER_THRESHOLD, speech_level

FRAME_MS = 10
_SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    @classmethod
    def from_config(cls, config: Any) -> TurnDetection | None:
        """Settings from a session's `turn_detection` object; None when turn detection is off."""
        if not isinstance(config, dict):
            return None
        if config.get("type") == "semantic_vad":
            return cls(silence_duration_ms=_SEMANTIC_SILENCE_MS.get(config.get("eagerness") or "auto", 500))
        return cls(
            threshold=_number(config.get("threshold"), cls.threshold),
            prefix_padding_ms=int(_number(config.get("prefix_padding_ms"), cls.prefix_padding_ms)),
            silence_duration_ms=int(_number(config.get("silence_duration_ms"), cls.silence_duration_ms)),
        )


def _number(value: Any, default: float) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else default


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int
    audio: bytes


class InputAudioBuffer:
    """Audio appended since the last commit or clear, plus the detector's state when turn detection is on."""

    def __init__(self, kind: str = PCM16, detection: TurnDetection | None = None) -> None:
        self._kind = kind
        self._detection = detection
        self._buffer = bytearray()
        self._base_ms = 0  # session position of the current format's first byte
        self._dropped = 0  # bytes of the current format consumed before `_buffer[0]`
        self._scanned = 0  # offset in `_buffer` of the next frame to analyse
        self._speaking = False
        self._silent_bytes = 0

    @property
    def duration_ms(self) -> float:
        return len(self._buffer) / BYTES_PER_MS[self._kind]

    def configure(self, kind: str, detection: TurnDetection | None) -> None:
        """Applies new settings; a format change discards the buffered audio, as its bytes no longer parse."""
        if kind != self._kind:
            self._base_ms = self._position_ms(len(self._buffer))
            self._kind, self._dropped = kind, 0
            self._buffer.clear()
        self._detection = detection
        self._scanned = min(self._scanned, len(self._buffer))
        self._speaking = self._speaking and detection is not None
        self._silent_bytes = 0

    def append(self, data: bytes) -> list[SpeechStarted | SpeechStopped]:
        self._buffer += data
        return self._detect() if self._detection is not None else []

    def take(self) -> bytes:
        """Removes and returns everything buffered (a manual commit)."""
        audio = bytes(self._buffer)
        self._consume(len(self._buffer))
        return audio

    def clear(self) -> None:
        self._consume(len(self._buffer))

    def _position_ms(self, offset: int) -> int:
        return self._base_ms + (self._dropped + offset) // BYTES_PER_MS[self._kind]

    def _consume(self, count: int) -> None:
        del self._buffer[:count]
        self._dropped += count
        self._scanned = max(0, self._scanned - count)
        self._speaking = False
        self._silent_bytes = 0

    def _detect(self) -> list[SpeechStarted | SpeechStopped]:
        detection = self._detection
        assert detection is not None
        per_ms = BYTES_PER_MS[self._kind]
        frame = FRAME_MS * per_ms
        level = detection.threshold * SPEECH_LEVEL_PER_THRESHOLD
        prefix = detection.prefix_padding_ms * per_ms
        events: list[SpeechStarted | SpeechStopped] = []
        while self._scanned + frame <= len(self._buffer):
            start = self._scanned
            end = start + frame
            loud = speech_level(self._buffer[start:end], self._kind) >= level
            self._scanned = end
            if not self._speaking:
                if loud:
                    # Keep `prefix_padding_ms` before the first loud frame; earlier audio is not part of the turn.
                    self._drop_front(max(0, start - prefix))
                    self._speaking, self._silent_bytes = True, 0
                    events.append(SpeechStarted(self._position_ms(0)))
                elif self._scanned > prefix:
                    self._drop_front(self._scanned - prefix)  # bounds the buffer while nobody speaks
            elif loud:
                self._silent_bytes = 0
            else:
                self._silent_bytes += frame
                if self._silent_bytes >= detection.silence_duration_ms * per_ms:
                    end_ms = self._position_ms(end)
                    segment = bytes(self._buffer[:end])
                    self._consume(end)
                    events.append(SpeechStopped(end_ms, segment))
        return events

    def _drop_front(self, count: int) -> None:
        del self._buffer[:count]
        self._dropped += count
        self._scanned -= count
