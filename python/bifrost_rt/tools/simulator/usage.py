"""Deterministic token accounting, so tests and meters can predict every `usage` object.

Units:
- text: ceil(characters / 4) tokens;
- input audio: 10 tokens per second, ceil(ms / 100);
- output audio: 20 tokens per second, ceil(ms / 50).

`response.done.response.usage`:
- input: the response's context, which is the instructions (text) plus every conversation item that existed when
  the response started (for an out-of-band response with `input`, those items instead). Message text, function
  call name + arguments and function call outputs count as text; audio content, the user's or the assistant's,
  counts as input audio for its duration (its transcript is not counted again).
- cached: the instructions when the previous response on the connection had the same ones, plus the items that were
  already input to, or output of, an earlier response on the connection. `cached_tokens_details` splits them into
  text and audio.
- output: text deltas (text, audio transcripts, function call arguments) as text tokens, generated audio as output
  audio tokens. Cancelled and failed responses count what was sent before they ended.
- input_tokens = text + audio (images are 0); total_tokens = input_tokens + output_tokens.

`conversation.item.input_audio_transcription.completed.usage`: for `whisper-1`, `{"type": "duration", "seconds":
ms / 1000}`; for any other model, `{"type": "tokens"}` with ceil(ms / 100) input audio tokens, no input text tokens,
and ceil(len(transcript) / 4) output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def text_tokens(text: str) -> int:
    return -(-len(text) // 4)


def input_audio_tokens(ms: float) -> int:
    return -(-int(ms) // 100)


def output_audio_tokens(ms: float) -> int:
    return -(-int(ms) // 50)


@dataclass
class Tokens:
    text: int = 0
    audio: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.text + other.text, self.audio + other.audio)

    @property
    def total(self) -> int:
        return self.text + self.audio


def response_usage(input: Tokens, cached: Tokens, output: Tokens) -> dict[str, Any]:
    return {
        "total_tokens": input.total + output.total,
        "input_tokens": input.total,
        "output_tokens": output.total,
        "input_token_details": {
            "text_tokens": input.text,
            "audio_tokens": input.audio,
            "image_tokens": 0,
            "cached_tokens": cached.total,
            "cached_tokens_details": {"text_tokens": cached.text, "audio_tokens": cached.audio, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output.text, "audio_tokens": output.audio},
    }


def transcription_usage(model: str, audio_ms: float, transcript: str) -> dict[str, Any]:
    if model == "whisper-1":
        return {"type": "duration", "seconds": round(audio_ms / 1000, 3)}
    audio = input_audio_tokens(audio_ms)
    output = text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": audio,
        "output_tokens": output,
        "total_tokens": audio + output,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
    }
