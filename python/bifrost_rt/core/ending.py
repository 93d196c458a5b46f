"""How a relayed session ends: one value per situation, the same for every transport.

An `Ending` says what the client is told (an error event and its close code, or a bare close), what the provider
is told, and how the turns still open are recorded. The close-code mapping lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bifrost_rt import errors
from bifrost_rt.errors import RealtimeError
from bifrost_rt.policy.hooks import Decision


@dataclass(frozen=True, slots=True)
class Ending:
    turn_status: str  # how open turns are recorded: "interrupted" or "failed"
    reason: str
    client_error: RealtimeError | None = None  # an error event, then a close with its code
    client_close: tuple[int, str] | None = None  # a close with this code and reason, no event
    upstream_close: tuple[int, str] | None = (errors.CLOSE_NORMAL, "")  # None: the provider is already gone
    turn_error: dict[str, Any] | None = None

    @property
    def client_close_frame(self) -> tuple[int, str] | None:
        """The close code and reason the client gets, after the error event when there is one."""
        if self.client_error is not None:
            return self.client_error.close_code or errors.CLOSE_INTERNAL, self.client_error.close_reason
        return self.client_close


def sendable(code: int) -> bool:
    """A close code an endpoint may put in a close frame."""
    return code not in errors.UNSENDABLE_CLOSE_CODES and (1000 <= code <= 1014 or 3000 <= code <= 4999)


def upstream_lost(reason: str = "upstream_connection_lost") -> Ending:
    """The provider's connection dropped (no close frame, a data channel gone, a silent peer)."""
    return Ending(
        "failed",
        reason,
        client_error=errors.upstream_lost(),
        upstream_close=None,
        turn_error={"type": "server_error", "code": "upstream_connection_lost"},
    )


def upstream_closed(code: int | None, reason: str = "") -> Ending:
    """The provider closed; its code and reason are relayed. `code` None: no close frame came."""
    if code is None:
        return upstream_lost()
    relayed = code if sendable(code) else errors.CLOSE_NORMAL if code == 1005 else errors.CLOSE_INTERNAL
    failed = relayed not in (errors.CLOSE_NORMAL, errors.CLOSE_GOING_AWAY)
    return Ending(
        "failed" if failed else "interrupted",
        f"upstream_closed:{code}",
        client_close=(relayed, reason),
        upstream_close=None,
        turn_error={"type": "server_error", "code": "upstream_closed", "close_code": code, "close_reason": reason} if failed else None,
    )


def upstream_unreachable(reason: str) -> Ending:
    """The provider never connected (e.g. a WebRTC peer that did not come up in time)."""
    return Ending(
        "failed", reason, client_error=errors.upstream_unavailable(), upstream_close=None, turn_error={"type": "server_error", "code": reason}
    )


def client_disconnected(code: int | None = None, reason: str = "") -> Ending:
    """The client closed or vanished; its close code is passed on to the provider when it may be sent."""
    if code is None:
        return Ending("interrupted", "client_disconnected")
    return Ending("interrupted", f"client_disconnected:{code}", upstream_close=(code if sendable(code) else errors.CLOSE_NORMAL, reason))


def client_gone(reason: str = "client_gone") -> Ending:
    """A write to the client failed or it never connected: nothing can be told to it."""
    return Ending("interrupted", reason)


def setup_failed() -> Ending:
    return Ending("failed", "setup_failed")


def hangup() -> Ending:
    return Ending("interrupted", "hangup")


def frame_too_big(limit: int) -> Ending:
    return Ending("interrupted", "client_frame_too_big", client_error=errors.frame_too_big(limit))


def denied(decision: Decision) -> Ending:
    """A plugin's `disconnect` decision."""
    return Ending("interrupted", decision.code or "denied", client_error=decision.as_error())


def provider_limit(close: tuple[int, str]) -> Ending:
    """The provider's quota or rate-limit error was forwarded; the session then closes with policy."""
    return Ending("interrupted", "provider_limit", client_close=close)


def stopped(error: RealtimeError, upstream_code: int = errors.CLOSE_NORMAL) -> Ending:
    """Ended by the gateway: idle, max duration, write stall, budget, shutdown, a full queue."""
    return Ending("interrupted", error.code or error.type, client_error=error, upstream_close=(upstream_code, ""))


def reconnect_failed(error: RealtimeError) -> Ending:
    """The provider's next connection (after its own goAway, or for a configuration change) could not be had."""
    return Ending("failed", error.code or error.type, client_error=error, upstream_close=(errors.CLOSE_GOING_AWAY, ""),
                  turn_error={"type": error.type, "code": error.code})


def internal_error() -> Ending:
    error = RealtimeError("server_error", "internal_error", "The gateway hit an internal error.", close_code=errors.CLOSE_INTERNAL)
    return Ending("failed", "internal_error", client_error=error, turn_error={"type": "server_error", "code": "internal_error"})


def queue_full(direction: str) -> Ending:
    error = RealtimeError(
        "invalid_request_error",
        "message_queue_full",
        f"Too many messages are waiting to be delivered {direction}; the session was ended.",
        close_code=errors.CLOSE_POLICY,
    )
    return stopped(error)
