"""The beta protocol as Azure's preview realtime path speaks it: GA server events rewritten to their beta shapes,
beta client events rewritten to GA before the session sees them.

The session itself only speaks GA; this module is the whole difference. Shapes follow openai-python's
`openai.types.beta.realtime` models: beta event names (`response.audio.delta`, `response.text.delta`,
`conversation.item.created`), the flat session (`modalities`, `voice`, `input_audio_format`, …), `text`/`audio`
content types, and responses with `modalities`, `voice` and `output_audio_format`. GA events with no beta
counterpart (`conversation.item.done`) are not sent.
"""

from __future__ import annotations

from typing import Any

_SERVER_NAMES = {
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}
NOT_IN_BETA = frozenset({"conversation.item.done"})
_FORMAT_NAMES = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "g711_ulaw": {"type": "audio/pcmu"}, "g711_alaw": {"type": "audio/pcma"}}
_CONTENT_TO_BETA = {"output_text": "text", "output_audio": "audio"}
_CONTENT_TO_GA = {"text": "output_text", "audio": "output_audio"}
_BETA_TURN_DETECTION = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response", "eagerness")
DEFAULT_TEMPERATURE = 0.8


def beta_type(ga_type: str) -> str | None:
    """The beta name of a GA server event type; None when the beta protocol has no such event."""
    return None if ga_type in NOT_IN_BETA else _SERVER_NAMES.get(ga_type, ga_type)


def to_beta(event: dict[str, Any]) -> dict[str, Any] | None:
    """A GA server event in its beta shape; None when it has no beta counterpart."""
    name = beta_type(event.get("type", ""))
    if name is None:
        return None
    event = {**event, "type": name}
    if "session" in event and name in ("session.created", "session.updated"):
        event["session"] = _flat_session(event["session"])
    if isinstance(event.get("response"), dict):
        event["response"] = _beta_response(event["response"])
    if isinstance(event.get("item"), dict):
        event["item"] = _beta_item(event["item"])
    if isinstance(event.get("part"), dict):
        event["part"] = _beta_content(event["part"])
    return event


def _format_name(audio_format: Any) -> str | None:
    return _FORMAT_NAMES.get(audio_format.get("type")) if isinstance(audio_format, dict) else None


def _modalities(output_modalities: Any) -> list[str]:
    return ["text"] if output_modalities == ["text"] else ["text", "audio"]


def _flat_session(session: dict[str, Any]) -> dict[str, Any]:
    audio = session.get("audio") or {}
    audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
    flat: dict[str, Any] = {"object": "realtime.session"}
    for name in ("id", "model", "expires_at", "instructions", "tools", "tool_choice", "tracing"):
        if name in session:
            flat[name] = session[name]
    if session.get("type") != "transcription":
        flat["modalities"] = _modalities(session.get("output_modalities"))
        flat["temperature"] = DEFAULT_TEMPERATURE
        flat["max_response_output_tokens"] = session.get("max_output_tokens", "inf")
    flat["input_audio_format"] = _format_name(audio_in.get("format")) or "pcm16"
    if "output" in audio:
        flat["output_audio_format"] = _format_name(audio_out.get("format")) or "pcm16"
        for name in ("voice", "speed"):
            if name in audio_out:
                flat[name] = audio_out[name]
    flat["input_audio_transcription"] = audio_in.get("transcription")
    flat["input_audio_noise_reduction"] = audio_in.get("noise_reduction")
    detection = audio_in.get("turn_detection")
    flat["turn_detection"] = {k: detection[k] for k in _BETA_TURN_DETECTION if k in detection} if isinstance(detection, dict) else None
    return flat


def _beta_response(response: dict[str, Any]) -> dict[str, Any]:
    response = dict(response)
    if "output_modalities" in response:
        response["modalities"] = _modalities(response.pop("output_modalities"))
    audio_out = (response.pop("audio", None) or {}).get("output") or {}
    if "voice" in audio_out:
        response["voice"] = audio_out["voice"]
    if _format_name(audio_out.get("format")):
        response["output_audio_format"] = _format_name(audio_out["format"])
    if isinstance(response.get("output"), list):
        response["output"] = [_beta_item(item) for item in response["output"]]
    return response


def _beta_item(item: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(item.get("content"), list):
        return item
    return {**item, "content": [_beta_content(part) for part in item["content"]]}


def _beta_content(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    return {**part, "type": _CONTENT_TO_BETA[kind]} if kind in _CONTENT_TO_BETA else part


# --- client events: beta → GA ---


def to_ga(event: dict[str, Any]) -> dict[str, Any]:
    """A beta client event in its GA shape (what the session understands); unknown events pass unchanged."""
    kind = event.get("type")
    if kind == "session.update" and isinstance(event.get("session"), dict):
        return {**event, "session": ga_session(event["session"], "realtime")}
    if kind == "transcription_session.update" and isinstance(event.get("session"), dict):
        return {**event, "type": "session.update", "session": ga_session(event["session"], "transcription")}
    if kind == "response.create" and isinstance(event.get("response"), dict):
        return {**event, "response": _ga_response(event["response"])}
    if kind == "conversation.item.create" and isinstance(event.get("item"), dict):
        return {**event, "item": _ga_item(event["item"])}
    return event


def ga_session(flat: dict[str, Any], kind: str) -> dict[str, Any]:
    """A flat beta session as a GA `session.update` session (`temperature` has no GA field)."""
    session: dict[str, Any] = {"type": kind}
    for name in ("model", "instructions", "tools", "tool_choice", "tracing", "include"):
        if name in flat:
            session[name] = flat[name]
    if isinstance(flat.get("modalities"), list):
        session["output_modalities"] = ["audio"] if "audio" in flat["modalities"] else ["text"]
    if "max_response_output_tokens" in flat:
        session["max_output_tokens"] = flat["max_response_output_tokens"]
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    if "input_audio_format" in flat:
        audio_in["format"] = _FORMATS.get(flat["input_audio_format"], flat["input_audio_format"])
    for beta, ga in (("input_audio_transcription", "transcription"), ("input_audio_noise_reduction", "noise_reduction"),
                     ("turn_detection", "turn_detection")):
        if beta in flat:
            audio_in[ga] = flat[beta]
    if "output_audio_format" in flat:
        audio_out["format"] = _FORMATS.get(flat["output_audio_format"], flat["output_audio_format"])
    for name in ("voice", "speed"):
        if name in flat:
            audio_out[name] = flat[name]
    audio = {key: value for key, value in (("input", audio_in), ("output", audio_out)) if value}
    if audio:
        session["audio"] = audio
    return session


def _ga_response(response: dict[str, Any]) -> dict[str, Any]:
    ga: dict[str, Any] = {}
    for name in ("instructions", "tools", "tool_choice", "conversation", "metadata"):
        if name in response:
            ga[name] = response[name]
    if isinstance(response.get("modalities"), list):
        ga["output_modalities"] = ["audio"] if "audio" in response["modalities"] else ["text"]
    if "max_response_output_tokens" in response:
        ga["max_output_tokens"] = response["max_response_output_tokens"]
    if "max_output_tokens" in response:
        ga["max_output_tokens"] = response["max_output_tokens"]
    audio_out = {}
    if "voice" in response:
        audio_out["voice"] = response["voice"]
    if "output_audio_format" in response:
        audio_out["format"] = _FORMATS.get(response["output_audio_format"], response["output_audio_format"])
    if audio_out:
        ga["audio"] = {"output": audio_out}
    if isinstance(response.get("input"), list):
        ga["input"] = [_ga_item(item) if isinstance(item, dict) else item for item in response["input"]]
    return ga


def _ga_item(item: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(item.get("content"), list):
        return item
    content = [{**part, "type": _CONTENT_TO_GA[part["type"]]} if isinstance(part, dict) and part.get("type") in _CONTENT_TO_GA else part
               for part in item["content"]]
    return {**item, "content": content}
