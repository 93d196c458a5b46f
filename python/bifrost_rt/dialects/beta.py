"""The retired beta protocol (`OpenAI-Beta: realtime=v1`) ↔ OpenAI GA.

One mapping, used in both directions: `BetaClient` serves a beta client while the provider speaks GA (client
events beta → GA, server events GA → beta); `BetaProvider` reaches a provider that still speaks beta (client events
GA → beta, server events beta → GA). The legacy REST routes use the session mapping too.

What differs: event names (`response.audio.delta` ↔ `response.output_audio.delta`, `conversation.item.created` ↔
`conversation.item.added`, …), the flat beta session ↔ the nested GA one (`modalities` ↔ `output_modalities`,
formats as strings ↔ objects, voice, transcription and turn detection under `audio`), `response.create` fields,
and the assistant content types in items (`text`/`audio` ↔ `output_text`/`output_audio`; content-part events
use `text`/`audio` in both). GA events with no beta
counterpart (`DROPPED_FOR_BETA`) are not sent to beta clients; GA-only fields are left out of beta objects.

The hot path stays cheap: audio appends pass as the same string, and deltas whose `type` comes first (as every
OpenAI server and SDK writes them) are renamed by slicing, without parsing the payload.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import orjson

from bifrost_rt import errors
from bifrost_rt._native import scan
from bifrost_rt.dialects.seam import Untranslatable

# ---- event names ---------------------------------------------------------------------------------------------------

# Server events whose GA name differs; the payload is otherwise the same.
_RENAMED_SERVER = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
}
_RENAMED_SERVER_BACK = {beta: ga for ga, beta in _RENAMED_SERVER.items()}

# GA server events the beta protocol has no way to express.
DROPPED_FOR_BETA = frozenset(
    {
        "conversation.item.done",  # beta has only `created`; the final item reaches beta clients in `response.output_item.done`
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.dtmf_event_received",
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "mcp_list_tools.failed",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
    }
)

# ---- field shapes --------------------------------------------------------------------------------------------------

_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "g711_ulaw": {"type": "audio/pcmu"}, "g711_alaw": {"type": "audio/pcma"}}
_FORMAT_NAMES = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
_TURN_DETECTION_FIELDS = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response", "eagerness")
_ASSISTANT_PARTS = {"output_text": "text", "output_audio": "audio"}
_ASSISTANT_PARTS_BACK = {beta: ga for ga, beta in _ASSISTANT_PARTS.items()}
_BETA_PART_FIELDS = ("id", "type", "text", "audio", "transcript")
_BETA_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "item_reference"})
_BETA_ITEM_FIELDS = ("id", "object", "type", "status", "role", "content", "call_id", "name", "arguments", "output")
_BETA_USAGE_DETAILS = {"input_token_details": ("text_tokens", "audio_tokens", "cached_tokens"), "output_token_details": ("text_tokens", "audio_tokens")}

# Beta session field ↔ GA path; the value converters below handle the fields whose values differ.
_SESSION_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("id", ("id",)),
    ("object", ("object",)),
    ("model", ("model",)),
    ("expires_at", ("expires_at",)),
    ("instructions", ("instructions",)),
    ("tools", ("tools",)),
    ("tool_choice", ("tool_choice",)),
    ("tracing", ("tracing",)),
    ("include", ("include",)),
    ("modalities", ("output_modalities",)),
    ("max_response_output_tokens", ("max_output_tokens",)),
    ("input_audio_format", ("audio", "input", "format")),
    ("input_audio_transcription", ("audio", "input", "transcription")),
    ("input_audio_noise_reduction", ("audio", "input", "noise_reduction")),
    ("turn_detection", ("audio", "input", "turn_detection")),
    ("output_audio_format", ("audio", "output", "format")),
    ("voice", ("audio", "output", "voice")),
    ("speed", ("audio", "output", "speed")),
)
# `response.create` parameters.
_RESPONSE_PARAM_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("instructions", ("instructions",)),
    ("tools", ("tools",)),
    ("tool_choice", ("tool_choice",)),
    ("conversation", ("conversation",)),
    ("metadata", ("metadata",)),
    ("input", ("input",)),
    ("modalities", ("output_modalities",)),
    ("max_response_output_tokens", ("max_output_tokens",)),
    ("output_audio_format", ("audio", "output", "format")),
    ("voice", ("audio", "output", "voice")),
)
# The response object of `response.created` / `response.done`.
_RESPONSE_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("id", ("id",)),
    ("object", ("object",)),
    ("status", ("status",)),
    ("status_details", ("status_details",)),
    ("conversation_id", ("conversation_id",)),
    ("metadata", ("metadata",)),
    ("output", ("output",)),
    ("usage", ("usage",)),
    ("max_output_tokens", ("max_output_tokens",)),
    ("modalities", ("output_modalities",)),
    ("output_audio_format", ("audio", "output", "format")),
    ("voice", ("audio", "output", "voice")),
)
_TRANSCRIPTION_SESSION_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("id", ("id",)),
    ("object", ("object",)),
    ("expires_at", ("expires_at",)),
    ("include", ("include",)),
    ("input_audio_format", ("audio", "input", "format")),
    ("input_audio_transcription", ("audio", "input", "transcription")),
    ("input_audio_noise_reduction", ("audio", "input", "noise_reduction")),
    ("turn_detection", ("audio", "input", "turn_detection")),
)


def _to_ga_value(name: str, value: Any) -> Any:
    if name == "modalities" and isinstance(value, list):
        return ["audio"] if "audio" in value else ["text"]  # GA: audio always comes with its transcript
    if name.endswith("_audio_format") and isinstance(value, str):
        return _FORMATS.get(value, value)
    if name in ("input", "output") and isinstance(value, list):
        return [ga_item(item) if isinstance(item, dict) else item for item in value]
    return value


def _to_beta_value(name: str, value: Any) -> Any:
    if name == "modalities" and isinstance(value, list):
        return ["text", "audio"] if "audio" in value else ["text"]
    if name.endswith("_audio_format") and isinstance(value, dict):
        media_type = value.get("type")
        return _FORMAT_NAMES.get(media_type, media_type) if isinstance(media_type, str) else None
    if name == "turn_detection" and isinstance(value, dict):
        return {key: value[key] for key in _TURN_DETECTION_FIELDS if key in value}
    if name == "voice" and isinstance(value, dict):
        return value.get("id")
    if name == "tools" and isinstance(value, list):
        return [tool for tool in value if not isinstance(tool, dict) or tool.get("type", "function") == "function"]
    if name == "tool_choice" and isinstance(value, dict):
        return "required"  # beta names no tool; a chosen tool is one the model must call
    if name in ("input", "output") and isinstance(value, list):
        return [converted for item in value if (converted := beta_item(item) if isinstance(item, dict) else item) is not None]
    if name == "usage" and isinstance(value, dict):
        return _beta_usage(value)
    return value


def _nest(flat: dict[str, Any], paths: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, path in paths:
        if name not in flat:
            continue
        node = nested
        for step in path[:-1]:
            node = node.setdefault(step, {})
        node[path[-1]] = _to_ga_value(name, flat[name])
    return nested


def _flatten(nested: dict[str, Any], paths: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, path in paths:
        node: Any = nested
        for step in path:
            if not isinstance(node, dict) or step not in node:
                break
            node = node[step]
        else:
            value = _to_beta_value(name, node)
            if value is not None or node is None:
                flat[name] = value
    return flat


def ga_session(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat beta session as a GA realtime session (`temperature` has no GA counterpart and is dropped)."""
    return {"type": "realtime", **_nest(flat, _SESSION_PATHS)}


def ga_transcription_session(flat: dict[str, Any]) -> dict[str, Any]:
    return {"type": "transcription", **_nest(flat, _TRANSCRIPTION_SESSION_PATHS)}


def beta_session(session: dict[str, Any]) -> dict[str, Any]:
    """A GA session object, flattened, with only the fields a beta session has."""
    if session.get("type") == "transcription":
        return _flatten(session, _TRANSCRIPTION_SESSION_PATHS)
    flat = _flatten(session, _SESSION_PATHS)
    flat.pop("include", None)  # a GA-only session field (beta clients asked for it on transcription sessions only)
    return flat


def ga_item(item: dict[str, Any]) -> dict[str, Any]:
    content = item.get("content")
    if not isinstance(content, list) or not any(isinstance(p, dict) and p.get("type") in _ASSISTANT_PARTS_BACK for p in content):
        return item
    parts = [{**p, "type": _ASSISTANT_PARTS_BACK[p["type"]]} if isinstance(p, dict) and p.get("type") in _ASSISTANT_PARTS_BACK else p for p in content]
    return {**item, "content": parts}


def beta_item(item: dict[str, Any]) -> dict[str, Any] | None:
    """A GA item as beta has it; None for the kinds beta cannot express (MCP items)."""
    if item.get("type") not in _BETA_ITEM_TYPES:
        return None
    beta = {key: item[key] for key in _BETA_ITEM_FIELDS if key in item}
    content = item.get("content")
    if isinstance(content, list):
        beta["content"] = [part for part in (beta_part(p) for p in content if isinstance(p, dict)) if part is not None]
    return beta


def beta_part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    kind = _ASSISTANT_PARTS.get(kind, kind) if isinstance(kind, str) else kind
    if kind not in ("input_text", "input_audio", "item_reference", "text", "audio"):
        return None  # e.g. images: beta sessions had no image input
    return {**{key: part[key] for key in _BETA_PART_FIELDS if key in part}, "type": kind}


def _beta_usage(usage: dict[str, Any]) -> dict[str, Any]:
    beta: dict[str, Any] = {key: usage[key] for key in ("total_tokens", "input_tokens", "output_tokens") if key in usage}
    for name, fields in _BETA_USAGE_DETAILS.items():
        details = usage.get(name)
        if isinstance(details, dict):
            beta[name] = {key: details[key] for key in fields if key in details}
    return beta


def ga_response_params(params: dict[str, Any]) -> dict[str, Any]:
    return _nest(params, _RESPONSE_PARAM_PATHS)


def beta_response_params(params: dict[str, Any]) -> dict[str, Any]:
    return _flatten(params, _RESPONSE_PARAM_PATHS)


def beta_response(response: dict[str, Any]) -> dict[str, Any]:
    return _flatten(response, _RESPONSE_PATHS)


def ga_response(response: dict[str, Any]) -> dict[str, Any]:
    return _nest(response, _RESPONSE_PATHS)


# ---- events --------------------------------------------------------------------------------------------------------

# A frame whose first key is `type`, written compactly (servers, orjson) or with `json.dumps`'s space.
_LEADING = ('{"type":"', '{"type": "')
_LEADING_TYPE = re.compile(r'\{\s*"type"\s*:\s*"([a-z_.]+)"')  # other whitespace
_NOTHING: list[Any] = []


def _type_span(message: str) -> tuple[int, int] | None:
    """Where the value of a leading `type` key is in the frame, found without parsing the rest."""
    for prefix in _LEADING:
        if message.startswith(prefix):
            start = len(prefix)
            end = message.find('"', start)
            if end > start and "\\" not in message[start:end]:
                return start, end
            return None
    leading = _LEADING_TYPE.match(message)
    return None if leading is None else leading.span(1)


def _event_type(message: str) -> str | None:
    span = _type_span(message)
    return message[span[0] : span[1]] if span is not None else scan(message).type


def _renamed(message: str, old: str, new: str) -> str:
    """The frame with its event type replaced: sliced when the type leads, re-encoded otherwise."""
    span = _type_span(message)
    if span is not None:
        return message[: span[0]] + new + message[span[1] :]
    event = orjson.loads(message)
    event["type"] = new
    return orjson.dumps(event).decode()


def _rewrite(message: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> list[str]:
    event = orjson.loads(message)
    changed = change(event)
    return _NOTHING if changed is None else [orjson.dumps(changed).decode()]


def _with_item(event: dict[str, Any], convert: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any] | None:
    item = event.get("item")
    if not isinstance(item, dict):
        return event
    converted = convert(item)
    return None if converted is None else {**event, "item": converted}


# Client events, beta → GA.
def _client_session_update(event: dict[str, Any]) -> dict[str, Any]:
    session = event.get("session")
    return {**event, "session": ga_session(session)} if isinstance(session, dict) else event


def _client_transcription_update(event: dict[str, Any]) -> dict[str, Any]:
    session = event.get("session")
    return {**event, "type": "session.update", "session": ga_transcription_session(session if isinstance(session, dict) else {})}


def _client_response_create(event: dict[str, Any]) -> dict[str, Any]:
    params = event.get("response")
    return {**event, "response": ga_response_params(params)} if isinstance(params, dict) else event


_CLIENT_TO_GA: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "session.update": _client_session_update,
    "transcription_session.update": _client_transcription_update,
    "response.create": _client_response_create,
    "conversation.item.create": lambda event: _with_item(event, ga_item),
}


# Client events, GA → beta.
def _client_session_update_beta(event: dict[str, Any]) -> dict[str, Any]:
    session = event.get("session")
    if not isinstance(session, dict):
        return event
    if session.get("type") == "transcription":
        return {**event, "type": "transcription_session.update", "session": beta_session(session)}
    return {**event, "session": beta_session(session)}


def _client_response_create_beta(event: dict[str, Any]) -> dict[str, Any]:
    params = event.get("response")
    return {**event, "response": beta_response_params(params)} if isinstance(params, dict) else event


_CLIENT_TO_BETA: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "session.update": _client_session_update_beta,
    "response.create": _client_response_create_beta,
    "conversation.item.create": lambda event: _with_item(event, beta_item),
}


# Server events, GA → beta.
def _server_session_beta(event: dict[str, Any]) -> dict[str, Any]:
    session = event.get("session")
    if not isinstance(session, dict):
        return event
    if session.get("type") == "transcription" and event.get("type") == "session.updated":
        return {**event, "type": "transcription_session.updated", "session": beta_session(session)}
    return {**event, "session": beta_session(session)}


def _server_response_beta(event: dict[str, Any]) -> dict[str, Any]:
    response = event.get("response")
    return {**event, "response": beta_response(response)} if isinstance(response, dict) else event


def _server_item_added_beta(event: dict[str, Any]) -> dict[str, Any] | None:
    converted = _with_item(event, beta_item)
    return None if converted is None else {**converted, "type": "conversation.item.created"}


_SERVER_TO_BETA: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "session.created": _server_session_beta,
    "session.updated": _server_session_beta,
    "response.created": _server_response_beta,
    "response.done": _server_response_beta,
    "conversation.item.added": _server_item_added_beta,
    "conversation.item.retrieved": lambda event: _with_item(event, beta_item),
    "response.output_item.added": lambda event: _with_item(event, beta_item),
    "response.output_item.done": lambda event: _with_item(event, beta_item),
}


# Server events, beta → GA.
def _server_session_ga(event: dict[str, Any]) -> dict[str, Any]:
    session = event.get("session")
    if not isinstance(session, dict):
        return event
    if event.get("type") == "transcription_session.updated":
        return {**event, "type": "session.updated", "session": ga_transcription_session(session)}
    return {**event, "session": ga_session(session)}


def _server_response_ga(event: dict[str, Any]) -> dict[str, Any]:
    response = event.get("response")
    return {**event, "response": ga_response(response)} if isinstance(response, dict) else event


_SERVER_TO_GA: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "session.created": _server_session_ga,
    "session.updated": _server_session_ga,
    "transcription_session.updated": _server_session_ga,
    "response.created": _server_response_ga,
    "response.done": _server_response_ga,
    "conversation.item.retrieved": lambda event: _with_item(event, ga_item),
    "response.output_item.added": lambda event: _with_item(event, ga_item),
    "response.output_item.done": lambda event: _with_item(event, ga_item),
}


def _item_created_ga(message: str) -> list[str]:
    """`conversation.item.created` is GA's `added`, followed by `done` when the item is already complete."""
    event = orjson.loads(message)
    item = event.get("item")
    item = ga_item(item) if isinstance(item, dict) else item
    added = {**event, "type": "conversation.item.added", "item": item}
    out = [orjson.dumps(added).decode()]
    if isinstance(item, dict) and item.get("status") == "completed":
        out.append(orjson.dumps({**added, "type": "conversation.item.done", "event_id": errors.new_id("event")}).decode())
    return out


def _translate(message: str, kind: str | None, renames: dict[str, str], rewrites: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]]) -> list[str]:
    if kind is None:
        return [message]
    renamed = renames.get(kind)
    if renamed is not None:
        return [_renamed(message, kind, renamed)]
    rewrite = rewrites.get(kind)
    return [message] if rewrite is None else _rewrite(message, rewrite)


class BetaClient:
    """The client speaks beta; the relay and the provider see GA."""

    identity = False

    def inbound(self, message: str | bytes) -> list[str]:
        if not isinstance(message, str):
            raise Untranslatable(errors.binary_frame())
        return _translate(message, _event_type(message), {}, _CLIENT_TO_GA)

    def outbound(self, event: str) -> list[str | bytes]:
        kind = _event_type(event)
        if kind in DROPPED_FOR_BETA:
            return _NOTHING
        return _translate(event, kind, _RENAMED_SERVER, _SERVER_TO_BETA)  # type: ignore[return-value]


class BetaProvider:
    """The provider speaks beta; the relay and the client see GA."""

    identity = False

    def inbound(self, message: str | bytes) -> list[str]:
        if not isinstance(message, str):
            return _NOTHING
        kind = _event_type(message)
        if kind == "conversation.item.created":
            return _item_created_ga(message)
        return _translate(message, kind, _RENAMED_SERVER_BACK, _SERVER_TO_GA)

    def outbound(self, event: str) -> list[str | bytes]:
        return _translate(event, _event_type(event), {}, _CLIENT_TO_BETA)  # type: ignore[return-value]


BETA_CLIENT = BetaClient()
BETA_PROVIDER = BetaProvider()


def requested(headers: Mapping[str, str], subprotocols: Collection[str]) -> bool:
    """The client asked for the beta protocol: `OpenAI-Beta: realtime=v1` or the `openai-beta.realtime-v1` subprotocol."""
    return "realtime=v1" in headers.get("openai-beta", "") or "openai-beta.realtime-v1" in subprotocols
