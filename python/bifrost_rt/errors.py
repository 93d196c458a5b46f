"""OpenAI-shaped error events and the close codes that follow them.

After the WebSocket handshake, a fatal error is an `error` event followed by a close whose reason is
`<error.type>.<error.code>`, as OpenAI itself answers. Messages never carry secrets or upstream URLs.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

import orjson

_BASE62 = string.digits + string.ascii_letters

# Close codes (RFC 6455 and the application range OpenAI uses).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_AUTH = 3000
CLOSE_PROTOCOL = 4000
# Codes a peer may report but an endpoint must never put in a close frame.
UNSENDABLE_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})


def new_id(prefix: str) -> str:
    """`<prefix>_` + 21 base62 characters (about 125 random bits), the shape OpenAI's ids have."""
    number = int.from_bytes(secrets.token_bytes(16), "big")
    chars = []
    for _ in range(21):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return prefix + "_" + "".join(chars)


@dataclass(frozen=True, slots=True)
class RealtimeError:
    type: str
    code: str | None
    message: str
    param: str | None = None
    close_code: int | None = None  # set when the error ends the session

    @property
    def close_reason(self) -> str:
        return f"{self.type}.{self.code}" if self.code else self.type

    def event(self, client_event_id: str | None = None) -> str:
        return orjson.dumps(
            {
                "type": "error",
                "event_id": new_id("event"),
                "error": {
                    "type": self.type,
                    "code": self.code,
                    "message": self.message,
                    "param": self.param,
                    "event_id": client_event_id,
                },
            }
        ).decode()

    def http_body(self) -> bytes:
        return orjson.dumps(
            {"error": {"type": self.type, "code": self.code, "message": self.message, "param": self.param}}
        )


def missing_credential() -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "invalid_api_key",
        "Missing bearer or basic authentication in header. Provide a virtual key as `Authorization: Bearer sk-bf-…` "
        "or the `openai-insecure-api-key.<key>` subprotocol.",
        close_code=CLOSE_AUTH,
    )


def invalid_credential() -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. The key is not a virtual key known to this gateway.",
        close_code=CLOSE_AUTH,
    )


def invalid_client_secret() -> RealtimeError:
    """A gateway client secret that is forged, expired or revoked; which of these is not said."""
    return RealtimeError(
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. The client secret is invalid, expired or revoked.",
        close_code=CLOSE_AUTH,
    )


def missing_model() -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "missing_required_parameter",
        "Missing required parameter: 'model'. Pass ?model=<name> (or provider/name).",
        param="model",
        close_code=CLOSE_PROTOCOL,
    )


def unknown_model(model: str) -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "model_not_found",
        f"The model '{model}' is not served by this gateway. Use provider/model or a configured model name.",
        param="model",
        close_code=CLOSE_PROTOCOL,
    )


def model_not_allowed(model: str | None) -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "model_not_allowed",
        f"This key is not allowed to use the model '{model or ''}'.",
        param="model",
        close_code=CLOSE_POLICY,
    )


def origin_not_allowed() -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "origin_not_allowed",
        "This origin is not allowed to connect to the gateway.",
        close_code=CLOSE_POLICY,
    )


def too_many_sessions() -> RealtimeError:
    return RealtimeError(
        "rate_limit_exceeded",
        "session_limit_reached",
        "The gateway is at its concurrent session limit. Retry later.",
        close_code=CLOSE_POLICY,
    )


def upstream_unavailable() -> RealtimeError:
    return RealtimeError(
        "server_error",
        "upstream_unavailable",
        "The realtime provider could not be reached. Retry later.",
        close_code=CLOSE_INTERNAL,
    )


def upstream_lost() -> RealtimeError:
    return RealtimeError(
        "server_error",
        "upstream_connection_lost",
        "The connection to the realtime provider was lost.",
        close_code=CLOSE_INTERNAL,
    )


def upstream_auth_failed() -> RealtimeError:
    """The provider refused the gateway's own credential: the caller's key was fine, so it is told nothing more."""
    return RealtimeError(
        "server_error",
        "upstream_auth_failed",
        "The realtime provider rejected the gateway's credentials.",
        close_code=CLOSE_INTERNAL,
    )


_URL = re.compile(r"(?:https?|wss?)://\S+")
_MAX_PROVIDER_MESSAGE = 512


def provider_refusal(status: int, body: bytes | str | None, host: str | None = None) -> RealtimeError:
    """What the caller is told when the provider refused a request with HTTP `status` and a JSON `body`.

    OpenAI's `{"error": {type, code, message, param}}` and Azure's `{"error": {code, message}}` both carry over
    (type defaulting to `invalid_request_error`, closing 4000 on a socket), with any URL, the provider's `host` and
    its first label (an Azure resource name) cut from the message. 401/403 is the gateway's credential, not the
    caller's; 5xx and bodies that are not such JSON say only that the provider is unavailable.
    """
    if status in (401, 403):
        return upstream_auth_failed()
    error = None
    if 400 <= status < 500 and body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return RealtimeError(
            "server_error", "upstream_unavailable", f"The realtime provider refused the connection (HTTP {status}).", close_code=CLOSE_INTERNAL
        )
    given = error.get("message")
    message = _URL.sub("", given) if isinstance(given, str) else ""
    for name in _host_names(host):
        message = message.replace(name, "…")
    message = " ".join(message.split())[:_MAX_PROVIDER_MESSAGE] or f"The realtime provider refused the request (HTTP {status})."

    def text(name: str) -> str | None:
        value = error.get(name)
        return value[:128] if isinstance(value, str) and value else None

    return RealtimeError(text("type") or "invalid_request_error", text("code"), message, text("param"), close_code=CLOSE_PROTOCOL)


def _host_names(host: str | None) -> list[str]:
    if not host:
        return []
    label = host.split(".", 1)[0]
    return [host, label] if label[:1].isalpha() and len(label) > 3 else [host]


def frame_too_big(limit: int) -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "message_too_big",
        f"Client event exceeds the maximum frame size of {limit} bytes.",
        close_code=CLOSE_TOO_BIG,
    )


def binary_frame() -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "invalid_event",
        "Binary frames are not supported; send each event as a JSON text frame.",
    )


def session_expired(limit_s: float) -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "session_expired",
        f"Your session hit the maximum duration of {limit_s:g} seconds.",
        close_code=CLOSE_NORMAL,
    )


def session_idle(limit_s: float) -> RealtimeError:
    return RealtimeError(
        "invalid_request_error",
        "session_idle_timeout",
        f"The session was idle for {limit_s:g} seconds and has been closed.",
        close_code=CLOSE_NORMAL,
    )


def budget_exhausted() -> RealtimeError:
    return RealtimeError(
        "insufficient_quota",
        "insufficient_quota",
        "The budget of this key is used up; the session has ended after its last turn.",
        close_code=CLOSE_POLICY,
    )


def governance_refusal(type_: str, code: str, message: str) -> RealtimeError:
    """A governance refusal at connect: policy refusals close 1008; a store outage (fail-closed) 1011."""
    return RealtimeError(type_, code, message, close_code=CLOSE_INTERNAL if type_ == "server_error" else CLOSE_POLICY)


def shutting_down() -> RealtimeError:
    return RealtimeError(
        "server_error",
        "server_shutting_down",
        "The gateway is shutting down. Reconnect to continue.",
        close_code=CLOSE_GOING_AWAY,
    )
