"""An open turn, and the record it leaves behind: inputs, output, usage, cost, latencies, status.

Every client-chosen string that reaches a record is bounded (ids in `inputs`; response metadata here, with a flag
when it was cut), so a record — and the log line made from it — stays small whatever a client sends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bifrost_rt import _native
from bifrost_rt.core.inputs import input_dict
from bifrost_rt.errors import new_id
from bifrost_rt.records import TurnInput, TurnRecord, cap

# OpenAI's own metadata limits: 16 keys, keys of 64 characters, values of 512.
METADATA_KEYS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512
TOOL_NAME_CHARS = 256


@dataclass(slots=True)
class OpenTurn:
    response_id: str | None  # None for refusals and transcription-only records
    requested_at: float  # monotonic: client response.create, or the commit that triggered it
    started_at: float  # monotonic: response.created
    started_unix: float
    inputs: list[TurnInput]
    conversation: str
    client_event_id: str | None
    first_delta_at: float | None = None
    raw_request: str | None = None
    transcription_usage: list[dict[str, Any]] = field(default_factory=list)
    transcription_cost: float = 0.0

    @classmethod
    def now(cls, response_id: str | None, conversation: str = "auto", client_event_id: str | None = None) -> OpenTurn:
        at = time.monotonic()
        return cls(response_id, at, at, time.time(), [], conversation, client_event_id)


def bounded_metadata(metadata: Any) -> tuple[Any, bool]:
    """The metadata as recorded, and whether it had to be cut."""
    if not isinstance(metadata, dict):
        return (None, metadata is not None) if not isinstance(metadata, (str, int, float, bool)) else (metadata, False)
    kept: dict[str, Any] = {}
    cut = len(metadata) > METADATA_KEYS
    for key, value in list(metadata.items())[:METADATA_KEYS]:
        short_key = str(key)[:METADATA_KEY_CHARS]
        if isinstance(value, str):
            short_value: Any = value[:METADATA_VALUE_CHARS]
            cut |= len(value) > METADATA_VALUE_CHARS
        elif value is None or isinstance(value, (int, float, bool)):
            short_value = value
        else:  # the API allows strings only; anything nested is not kept
            short_value, cut = None, True
        cut |= len(str(key)) > METADATA_KEY_CHARS
        kept[short_key] = short_value
    return kept, cut


def tool_calls(output: Any, response: dict[str, Any]) -> list[dict[str, Any]]:
    calls: dict[Any, dict[str, Any]] = {}
    if output is not None:
        for call in output.tool_calls:
            calls[call.call_id] = {"call_id": call.call_id, "name": call.name, "arguments": call.arguments, "truncated": call.truncated}
    # response.done lists the final items; it fills calls whose deltas we never saw.
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") == "function_call" and item.get("call_id") not in calls:
            calls[item.get("call_id")] = {
                "call_id": item.get("call_id"),
                "name": item.get("name"),
                "arguments": cap(item.get("arguments") or "", 65536),
                "truncated": False,
            }
    return list(calls.values())


@dataclass(slots=True)
class TurnContext:
    """What a record says about its session, as the session knows it when the turn ends."""

    session_id: str
    provider_session_id: str | None
    session_group: str
    principal: str
    key_id: str
    provider: str
    model: str | None
    transport: str
    voice: str | None
    tool_names: list[str]
    log_content: bool
    raw_frames: bool


def build_record(
    context: TurnContext,
    turn: OpenTurn,
    *,
    status: str,
    reason: str | None,
    error: dict[str, Any] | None,
    usage: Any,
    prices: Any,
    output: Any,
    response: dict[str, Any],
    transcription: tuple[list[dict[str, Any]], float],
    inputs: list[dict[str, Any]] | None = None,
    raw_response: str | None = None,
) -> TurnRecord:
    now = time.monotonic()
    transcription_usage, transcription_cost = transcription
    cost = _native.cost(usage, prices).to_dict() if usage is not None and prices is not None else {"total": 0.0}
    cost["transcription"] = transcription_cost
    cost["total"] = cost.get("total", 0.0) + transcription_cost
    calls = tool_calls(output, response)
    output_dict: dict[str, Any] = {
        "text": output.text if output else "",
        "transcript": output.transcript if output else "",
        "text_truncated": bool(output and output.text_truncated),
        "transcript_truncated": bool(output and output.transcript_truncated),
        "audio_bytes": output.audio_bytes if output else 0,
        "tool_calls": calls,
    }
    if inputs is None:
        inputs = [input_dict(i, final=True) for i in turn.inputs]
    input_summary = cap(" | ".join(i["text"] for i in inputs if i["text"]))
    parts = (output_dict["text"], output_dict["transcript"], *(f"{c['name']}({c['arguments']})" for c in calls))
    output_summary = cap(" ".join(part for part in parts if part))
    if not context.log_content:
        for i in inputs:
            i["text"] = None
        output_dict["text"] = output_dict["transcript"] = ""
        for call in calls:
            call["arguments"] = None
        input_summary = output_summary = ""
    metadata, metadata_cut = bounded_metadata(response.get("metadata"))
    return TurnRecord(
        id=new_id("turn"),
        session_id=context.session_id,
        provider_session_id=context.provider_session_id,
        session_group=context.session_group,
        principal=context.principal,
        key_id=context.key_id,
        provider=context.provider,
        model=context.model,
        transport=context.transport,
        response_id=turn.response_id,
        status=status,
        status_reason=reason,
        error=error,
        inputs=inputs,
        input_summary=input_summary,
        output=output_dict,
        output_summary=output_summary,
        usage=usage.to_dict() if usage is not None else None,
        transcription_usage=transcription_usage,
        cost=cost,
        latency_ms={
            "first_delta": round((turn.first_delta_at - turn.requested_at) * 1000, 3) if turn.first_delta_at else None,
            "total": round((now - turn.requested_at) * 1000, 3),
            "queue": round((turn.started_at - turn.requested_at) * 1000, 3),
        },
        started_at=turn.started_unix,
        ended_at=time.time(),
        metadata={
            "voice": context.voice,
            "tools": context.tool_names,
            "conversation": turn.conversation,
            "client_event_ids": [turn.client_event_id] if turn.client_event_id else [],
            "response_metadata": metadata,
            **({"response_metadata_truncated": True} if metadata_cut else {}),
            "priced": prices is not None,
        },
        raw={"request": turn.raw_request, "response": raw_response} if context.raw_frames else None,
    )
