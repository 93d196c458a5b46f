"""Turn records: what one response (a turn) leaves behind. Plain data shared by every layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

SUMMARY_LIMIT = 1024
RAW_LIMIT = 16 * 1024
TRANSCRIPT_UNAVAILABLE = "[audio transcript unavailable]"


def cap(text: str, limit: int = SUMMARY_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class TurnInput:
    kind: str  # "text" | "audio" | "tool_output"
    item_id: str | None
    text: str | None  # None until an audio transcript arrives
    call_id: str | None = None
    # Set while a client-submitted item awaits the provider's confirmation: the client's event_id.
    unconfirmed_event: str | None = None


@dataclass(slots=True)
class TurnRecord:
    """One response (`response.created` … `response.done`) with the inputs that led to it."""

    id: str
    session_id: str
    provider_session_id: str | None
    session_group: str
    principal: str
    key_id: str
    provider: str
    model: str | None
    transport: str
    response_id: str | None  # None for transcription-only records
    status: str  # completed | cancelled | failed | incomplete | interrupted
    status_reason: str | None
    error: dict[str, Any] | None
    inputs: list[dict[str, Any]]
    input_summary: str
    output: dict[str, Any]
    output_summary: str
    usage: dict[str, int] | None
    transcription_usage: list[dict[str, Any]]
    cost: dict[str, float]
    latency_ms: dict[str, float | None]
    started_at: float  # unix seconds
    ended_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str | None] | None = None  # the request and final frames, each capped at RAW_LIMIT, when enabled
    # Recorded turn audio, when the key records it: {"input"|"output": {"format", "bytes", "duration_ms"[, "truncated"]}}
    # (format: pcm16 | g711_ulaw | g711_alaw | ogg-opus); served by GET /api/logs/turns/{id}/audio/{input|output}.
    audio: dict[str, dict[str, Any]] | None = None
    object: str = "realtime.turn"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        # orjson serialises dataclasses natively, far cheaper than building the dict first.
        return orjson.dumps(self)
