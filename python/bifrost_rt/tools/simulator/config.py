"""GA session objects: defaults, `session.update` merging, and validation of `response.create` parameters.

Only the fields present in an update change; `audio.input` / `audio.output` merge key by key, a `turn_detection`
object is completed with its type's defaults, and every other field is replaced. Unknown fields are rejected the
way the API does (`unknown_parameter`), which also catches beta-shaped sessions. As in the API, an optional field
given as null is unset (absent), except the fields whose null is a value: it turns off tracing, a prompt, turn
detection, transcription or noise reduction.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from bifrost_rt.tools.simulator.events import ClientError, invalid_value, missing_parameter, unknown_parameter
from bifrost_rt.tools.simulator.ids import new_id

SESSION_TTL_S = 3600
DEFAULT_INSTRUCTIONS = (
    "You are a simulated realtime assistant. Replies are deterministic: you repeat what you were told, "
    "describe audio by its length, and call a tool when its name is mentioned."
)
DEFAULT_TRANSCRIPTION = {"model": "gpt-4o-transcribe", "language": None, "prompt": ""}

_REALTIME_FIELDS = frozenset(
    {
        "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice", "max_output_tokens",
        "tracing", "truncation", "prompt", "include", "parallel_tool_calls", "reasoning",
    }
)
_TRANSCRIPTION_FIELDS = frozenset({"type", "audio", "include"})
_AUDIO_INPUT_FIELDS = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
_AUDIO_OUTPUT_FIELDS = frozenset({"format", "voice", "speed"})
# Fields whose null is a value, not "unset".
_NULL_IS_VALUE = frozenset(
    {"tracing", "prompt", "include", "reasoning", "metadata", "turn_detection", "transcription", "noise_reduction"}
)
_RESPONSE_FIELDS = frozenset(
    {
        "audio", "conversation", "input", "instructions", "max_output_tokens", "metadata", "output_modalities",
        "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools",
    }
)


def _given(fields: dict[str, Any]) -> list[tuple[str, Any]]:
    """The fields that are set: a null optional field counts as absent."""
    return [(key, value) for key, value in fields.items() if value is not None or key in _NULL_IS_VALUE]


def _server_vad() -> dict[str, Any]:
    return {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
        "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
    }


def _semantic_vad() -> dict[str, Any]:
    return {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}


def new_realtime_session(model: str) -> dict[str, Any]:
    """The full default session, as `session.created` carries it."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + SESSION_TTL_S,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _server_vad(),
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def new_transcription_session() -> dict[str, Any]:
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": new_id("sess"),
        "expires_at": int(time.time()) + SESSION_TTL_S,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": dict(DEFAULT_TRANSCRIPTION),
                "noise_reduction": None,
                "turn_detection": _server_vad(),
            }
        },
        "include": None,
    }


def fresh_copy(session: dict[str, Any]) -> dict[str, Any]:
    """A configured session (e.g. from a client secret) with a new id and lifetime."""
    session = copy.deepcopy(session)
    session["id"] = new_id("sess")
    session["expires_at"] = int(time.time()) + SESSION_TTL_S
    return session


def apply_session_update(session: dict[str, Any], update: Any) -> dict[str, Any]:
    """The session with `update` applied; raises ClientError and leaves `session` untouched when it is invalid."""
    if update is None:
        raise missing_parameter("session")
    if not isinstance(update, dict):
        raise ClientError("Invalid type for 'session': expected an object.", code="invalid_type", param="session")
    kind = update.get("type")
    if kind is None:
        raise missing_parameter("session.type")
    if kind not in ("realtime", "transcription"):
        raise invalid_value(
            "session.type", f"Invalid value: '{kind}'. Supported values are: 'realtime' and 'transcription'."
        )
    if kind != session["type"]:
        raise invalid_value("session.type", f"Cannot change the session type from '{session['type']}' to '{kind}'.")
    allowed = _REALTIME_FIELDS if kind == "realtime" else _TRANSCRIPTION_FIELDS
    for key in update:
        if key not in allowed:
            raise unknown_parameter(f"session.{key}")
    merged = copy.deepcopy(session)
    for key, value in _given(update):
        if key == "audio":
            _merge_audio(merged.setdefault("audio", {}), value, realtime=kind == "realtime")
        elif key != "type":
            merged[key] = _checked_field(key, value, "session")
    return merged


def _checked_field(key: str, value: Any, prefix: str) -> Any:
    param = f"{prefix}.{key}"
    if key in ("model", "instructions"):
        _expect(isinstance(value, str), param, "a string")
    elif key == "output_modalities":
        _check_modalities(value, param)
    elif key == "tools":
        _expect(isinstance(value, list) and all(isinstance(t, dict) for t in value), param, "an array of tools")
        for index, tool in enumerate(value):
            if tool.get("type") == "function" and not isinstance(tool.get("name"), str):
                raise missing_parameter(f"{param}[{index}].name")
    elif key == "tool_choice":
        _expect(value in ("auto", "none", "required") or isinstance(value, dict), param,
                "'auto', 'none', 'required' or a tool object")
    elif key == "max_output_tokens":
        ok = value == "inf" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096)
        _expect(ok, param, "an integer between 1 and 4096, or 'inf'")
    elif key in ("prompt", "reasoning", "tracing", "include"):
        _expect(value is None or isinstance(value, (dict, list, str)), param, "an object or null")
    elif key == "parallel_tool_calls":
        _expect(isinstance(value, bool), param, "a boolean")
    return copy.deepcopy(value)


def _check_modalities(value: Any, param: str) -> None:
    if value not in (["audio"], ["text"]):
        raise invalid_value(param, f"Invalid value for '{param}': expected ['audio'] or ['text'] (not both).")


def _expect(ok: bool, param: str, what: str) -> None:
    if not ok:
        raise ClientError(f"Invalid type for '{param}': expected {what}.", code="invalid_type", param=param)


def _merge_audio(audio: dict[str, Any], update: Any, *, realtime: bool) -> None:
    _expect(isinstance(update, dict), "session.audio", "an object")
    for side in update:
        if side not in ("input", "output") or (side == "output" and not realtime):
            raise unknown_parameter(f"session.audio.{side}")
    for side, value in _given(update):
        param = f"session.audio.{side}"
        _expect(isinstance(value, dict), param, "an object")
        allowed = _AUDIO_INPUT_FIELDS if side == "input" else _AUDIO_OUTPUT_FIELDS
        for key in value:
            if key not in allowed:
                raise unknown_parameter(f"{param}.{key}")
        target = audio.setdefault(side, {})
        for key, field in _given(value):
            target[key] = _audio_field(key, field, f"{param}.{key}")


def _audio_field(key: str, value: Any, param: str) -> Any:
    if key == "format":
        return _check_format(value, param)
    if key == "turn_detection":
        if value is None:
            return None
        _expect(isinstance(value, dict), param, "an object or null")
        set_fields = dict(_given(value))
        defaults = {"server_vad": _server_vad, "semantic_vad": _semantic_vad}.get(set_fields.get("type", "server_vad"))
        if defaults is None:
            raise invalid_value(f"{param}.type", "Invalid turn detection: expected 'server_vad' or 'semantic_vad'.")
        return {**defaults(), **set_fields}
    if key == "transcription":
        if value is not None:
            _expect(isinstance(value, dict) and isinstance(value.get("model"), str), param,
                    "an object with a 'model' string, or null")
        return copy.deepcopy(value)
    if key == "noise_reduction":
        if value is not None:
            _expect(isinstance(value, dict) and value.get("type") in ("near_field", "far_field"), param,
                    "an object with type 'near_field' or 'far_field', or null")
        return copy.deepcopy(value)
    if key == "voice":
        _expect(isinstance(value, str) or (isinstance(value, dict) and "id" in value), param,
                "a voice name or {'id': ...}")
        return copy.deepcopy(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.25 <= value <= 1.5
    _expect(ok, param, "a number between 0.25 and 1.5")  # speed
    return value


def _check_format(value: Any, param: str) -> dict[str, Any]:
    _expect(isinstance(value, dict), param, "a format object")
    kind = value.get("type")
    if kind == "audio/pcm":
        if value.get("rate") not in (None, 24000):
            raise invalid_value(f"{param}.rate", "Invalid value: only 24000 is supported for 'audio/pcm'.")
        return {"type": "audio/pcm", "rate": 24000}
    if kind in ("audio/pcmu", "audio/pcma"):
        return {"type": kind}
    raise invalid_value(f"{param}.type", "Invalid value: expected 'audio/pcm', 'audio/pcmu' or 'audio/pcma'.")


def check_response_params(params: Any) -> dict[str, Any]:
    """Validated `response.create` overrides (all optional)."""
    if params is None:
        return {}
    _expect(isinstance(params, dict), "response", "an object")
    for key in params:
        if key not in _RESPONSE_FIELDS:
            raise unknown_parameter(f"response.{key}")
    checked: dict[str, Any] = {}
    for key, value in _given(params):
        param = f"response.{key}"
        if key == "conversation":
            if value not in ("auto", "none"):
                raise invalid_value(param, f"Invalid value: '{value}'. Supported values are: 'auto' and 'none'.")
            checked[key] = value
        elif key == "metadata":
            ok = value is None or (
                isinstance(value, dict) and len(value) <= 16
                and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            )
            _expect(ok, param, "at most 16 string key-value pairs")
            checked[key] = copy.deepcopy(value)
        elif key == "input":
            _expect(isinstance(value, list) and all(isinstance(i, dict) for i in value), param, "an array of items")
            checked[key] = value
        elif key == "audio":
            output = value.get("output") if isinstance(value, dict) else None
            ok = isinstance(value, dict) and set(value) <= {"output"} and (output is None or isinstance(output, dict))
            _expect(ok, param, "an object with 'output'")
            output = output or {}
            for field in output:
                if field not in ("format", "voice"):
                    raise unknown_parameter(f"{param}.output.{field}")
            checked[key] = {"output": {k: _audio_field(k, v, f"{param}.output.{k}") for k, v in _given(output)}}
        else:
            checked[key] = _checked_field(key, value, "response")
    return checked
