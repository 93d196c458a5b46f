"""Hot path of the gateway: frame scanning, turn accumulation, usage extraction and pricing.

Frames are passed as ``str`` (read in place) or ``bytes``. Malformed frames never raise: they come
back as a ``FrameInfo`` whose ``type`` is None and whose ``unclassified_reason`` says why.
"""

from typing import final

@final
class FrameInfo:
    """What the scanner found in one frame. Read-only.

    String attributes hold the JSON-unescaped value of a top-level key when that key holds a
    string; integer attributes hold the value when the key holds an integer within int64. With
    duplicate keys the last one wins.
    """

    @property
    def type(self) -> str | None:
        """The event type; None when the frame is unclassified."""
    @property
    def unclassified_reason(self) -> str | None:
        """e.g. "invalid JSON at byte 17", "invalid UTF-8 at byte 3", "invalid UTF-8: lone
        surrogate" (a str that cannot be encoded), "missing type", "type is not a string",
        "not a JSON object"."""
    @property
    def event_id(self) -> str | None: ...
    @property
    def response_id(self) -> str | None: ...
    @property
    def item_id(self) -> str | None: ...
    @property
    def call_id(self) -> str | None: ...
    @property
    def previous_item_id(self) -> str | None: ...
    @property
    def output_index(self) -> int | None: ...
    @property
    def content_index(self) -> int | None: ...
    @property
    def has_response(self) -> bool:
        """The top-level "response" key holds an object."""
    @property
    def response_object_id(self) -> str | None:
        """response.id"""
    @property
    def response_status(self) -> str | None:
        """response.status"""
    @property
    def response_has_metadata(self) -> bool:
        """response.metadata is present and not null."""
    @property
    def payload_field(self) -> str | None:
        """"delta" or "audio" when that top-level key holds a string ("delta" wins if both do)."""
    @property
    def payload_start(self) -> int:
        """Offset in the UTF-8 frame of the first byte inside the payload's quotes; -1 if none."""
    @property
    def payload_len(self) -> int:
        """Byte length of the payload's raw, still-escaped contents."""

def scan(frame: str | bytes) -> FrameInfo:
    """Validates the frame as JSON and locates its routing fields without decoding the payload."""

@final
class ToolCall:
    @property
    def call_id(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def item_id(self) -> str | None: ...
    @property
    def arguments(self) -> str: ...
    @property
    def truncated(self) -> bool: ...

@final
class TurnOutput:
    """Everything one response produced, as accumulated by a Tracker."""

    @property
    def text(self) -> str:
        """output_text (and beta text) deltas, concatenated."""
    @property
    def text_truncated(self) -> bool: ...
    @property
    def transcript(self) -> str:
        """output_audio_transcript (and beta audio_transcript) deltas, concatenated."""
    @property
    def transcript_truncated(self) -> bool: ...
    @property
    def audio_bytes(self) -> int:
        """Decoded size of the output audio, computed from the base64 lengths."""
    @property
    def audio_deltas(self) -> int: ...
    @property
    def text_deltas(self) -> int:
        """Text and transcript deltas together."""
    @property
    def tool_calls(self) -> list[ToolCall]:
        """In order of first appearance; a new list on every read."""

class Tracker:
    """Per-session turn accumulator.

    Text, transcript and each tool call's arguments stop at their byte cap (cut on a character
    boundary) with the matching truncated flag set. At most ``max_open_responses`` responses keep
    content: a response opened while that many are open keeps counters only, and its TurnOutput
    has ``text_truncated`` and ``transcript_truncated`` set and no tool calls. Counters-only
    responses are capped at the same number, the oldest dropped first.
    """

    def __init__(
        self,
        max_text_bytes: int = 65536,
        max_arguments_bytes: int = 65536,
        max_open_responses: int = 64,
    ) -> None: ...
    def observe_server(self, frame: str | bytes) -> FrameInfo | None:
        """Folds in a server event. Returns None for a response delta that was accumulated,
        except the first delta of each response; any other frame (including a delta without a
        response_id) comes back as its FrameInfo."""
    def observe_client(self, frame: str | bytes) -> FrameInfo | None:
        """Folds in a client event. Returns None for input_audio_buffer.append carrying audio
        (its decoded size is counted), the FrameInfo otherwise."""
    def take(self, response_id: str) -> TurnOutput | None:
        """Removes and returns a response's accumulation; None if it was never seen."""
    def open_responses(self) -> list[str]:
        """Ids of the responses being tracked, in order of opening."""
    def take_input_audio_bytes(self) -> int:
        """Decoded input-audio bytes appended since the previous call."""
    def clear(self) -> None: ...

@final
class Usage:
    """Token usage of one response; counts are 0 when absent."""

    def __init__(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        total_tokens: int = 0,
        input_text_tokens: int = 0,
        input_audio_tokens: int = 0,
        input_image_tokens: int = 0,
        cached_tokens: int = 0,
        cached_text_tokens: int = 0,
        cached_audio_tokens: int = 0,
        cached_image_tokens: int = 0,
        output_text_tokens: int = 0,
        output_audio_tokens: int = 0,
    ) -> None:
        """``total_tokens`` falls back to input + output when 0."""
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def input_text_tokens(self) -> int: ...
    @property
    def input_audio_tokens(self) -> int: ...
    @property
    def input_image_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def cached_text_tokens(self) -> int: ...
    @property
    def cached_audio_tokens(self) -> int: ...
    @property
    def cached_image_tokens(self) -> int: ...
    @property
    def output_text_tokens(self) -> int: ...
    @property
    def output_audio_tokens(self) -> int: ...
    def to_dict(self) -> dict[str, int]: ...
    def __eq__(self, other: object) -> bool: ...

def extract_usage(frame: str | bytes) -> Usage | None:
    """Usage from a response.done frame's response.usage; None if absent, null or unparseable.
    Cached tokens without a cached_tokens_details breakdown count as text."""

@final
class TranscriptionUsage:
    """Usage of one input-audio transcription."""

    def __init__(
        self,
        *,
        kind: str = "tokens",
        input_tokens: int = 0,
        output_tokens: int = 0,
        total_tokens: int = 0,
        input_text_tokens: int = 0,
        input_audio_tokens: int = 0,
        seconds: float = 0.0,
    ) -> None: ...
    @property
    def kind(self) -> str:
        """"tokens" or "duration"."""
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def input_text_tokens(self) -> int: ...
    @property
    def input_audio_tokens(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    def to_dict(self) -> dict[str, str | int | float]: ...
    def __eq__(self, other: object) -> bool: ...

def extract_transcription_usage(frame: str | bytes) -> TranscriptionUsage | None:
    """Usage from a conversation.item.input_audio_transcription.completed frame."""

@final
class Prices:
    """USD per 1M tokens; ``per_minute`` in USD per minute of transcribed audio."""

    def __init__(
        self,
        *,
        input_text: float = 0.0,
        cached_text: float = 0.0,
        input_audio: float = 0.0,
        cached_audio: float = 0.0,
        input_image: float = 0.0,
        cached_image: float = 0.0,
        output_text: float = 0.0,
        output_audio: float = 0.0,
        per_minute: float = 0.0,
    ) -> None: ...
    @property
    def input_text(self) -> float: ...
    @property
    def cached_text(self) -> float: ...
    @property
    def input_audio(self) -> float: ...
    @property
    def cached_audio(self) -> float: ...
    @property
    def input_image(self) -> float: ...
    @property
    def cached_image(self) -> float: ...
    @property
    def output_text(self) -> float: ...
    @property
    def output_audio(self) -> float: ...
    @property
    def per_minute(self) -> float: ...

@final
class Cost:
    """USD per usage category, and their sum."""

    @property
    def input_text(self) -> float: ...
    @property
    def cached_text(self) -> float: ...
    @property
    def input_audio(self) -> float: ...
    @property
    def cached_audio(self) -> float: ...
    @property
    def input_image(self) -> float: ...
    @property
    def cached_image(self) -> float: ...
    @property
    def output_text(self) -> float: ...
    @property
    def output_audio(self) -> float: ...
    @property
    def total(self) -> float: ...
    def to_dict(self) -> dict[str, float]: ...

def cost(usage: Usage, prices: Prices) -> Cost:
    """Uncached input of each modality at its input rate, cached input (clamped to the input
    count) at its cached rate, outputs at the output rates."""

def transcription_cost(usage: TranscriptionUsage, prices: Prices) -> float:
    """Tokens: input text, input audio and output tokens at input_text, input_audio and
    output_text (input counts as audio when there is no breakdown). Duration: seconds / 60 *
    per_minute."""

@final
class RtpForwardRing:
    """One direction of a relayed RTP audio stream: packets pushed as they arrive, popped by the sender.

    Bounded by packet count and payload bytes; when full, the oldest queued packets are dropped. What is popped is
    re-stamped onto one continuous timeline, so a source restarting (new SSRC, timestamp jump) reads as one stream.
    """

    def __init__(self, capacity_packets: int = 256, capacity_bytes: int = 384000, clock_rate: int = 48000) -> None: ...
    def push(self, packet: bytes, arrival_ns: int) -> bool:
        """Queues one RTP packet; False when it was dropped (duplicate, malformed, larger than the ring)."""
    def pop(self) -> tuple[bytes, int, int] | None:
        """`(payload, output timestamp, arrival_ns)` of the oldest queued packet, or None."""
    def __len__(self) -> int: ...
    def stats(self) -> dict[str, int | float]:
        """packets_in/out, bytes_in/out, duplicates, reordered, lost, overflow_dropped, malformed, ssrc_changes,
        jitter_ms."""

@final
class Resampler24To16:
    """One stream's PCM16 24 kHz → 16 kHz resampler: a polyphase windowed-sinc low-pass (flat to ~6 kHz, ≥ 40 dB
    down above 8 kHz) whose state carries across calls, so chunk boundaries, even inside a sample, change nothing."""

    def __init__(self) -> None: ...
    def base64(self, audio: str | bytes) -> str:
        """One append's base64 audio (standard or URL-safe alphabet) resampled, as standard base64; ValueError when
        the input is not base64."""
    def pcm(self, pcm: bytes) -> bytes:
        """Little-endian PCM16 bytes in, resampled bytes out."""
