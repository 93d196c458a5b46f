"""The sans-I/O relay: one object per session that turns each message into what the transport must do.

A transport feeds it what arrives — a client message (`from_client`), a provider message (`from_server`) — and
performs the actions that come back, in order: `ToUpstream(text)`, `ToClient(text)`, `Reply(text)` (to whoever
sent the message being handled), `Check(...)` (await the plugins' decision, then hand it to `checked`), and
`End(ending)`. It never touches a socket, a clock or a task, so it is tested with strings alone (like `websockets`'
`protocol.py`); the WebSocket and the WebRTC transports drive the same object and so behave the same.

The hot path: with the identity dialect on both sides a message that needs nothing else returns `FORWARD`, and the
transport sends the very string it received. Messages are observed by the session core in their GA form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import orjson

from bifrost_rt import errors
from bifrost_rt.core import ending as endings
from bifrost_rt.core.ending import Ending
from bifrost_rt.core.session import RealtimeSession, StartedTurn
from bifrost_rt.dialects.seam import IDENTITY, Dialect, Reconnecting, Untranslatable
from bifrost_rt.errors import RealtimeError
from bifrost_rt.policy.hooks import Decision, HookPipeline, TurnRequest


@dataclass(frozen=True, slots=True)
class ToUpstream:
    message: str | bytes


@dataclass(frozen=True, slots=True)
class ToClient:
    message: str | bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """To the sender of the message being handled (the client, or a sideband socket)."""

    message: str


@dataclass(frozen=True, slots=True)
class Check:
    """Plugins must decide on this turn first. A client's `response.create` is held (`then` is sent if allowed;
    for a translating provider dialect, `event` is translated only then, so a stateful dialect never acts on a
    refused turn); a turn the provider started (`response_id` set) is already running and can only be cancelled."""

    request: TurnRequest
    then: tuple[Action, ...] = ()
    response_id: str | None = None
    event: str | None = None


@dataclass(frozen=True, slots=True)
class End:
    ending: Ending


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Open the provider's next connection and send `opening` on it; its first message goes to `reconnected`, and the
    client's messages wait (bounded) until then. Only ever between turns, so no output is lost or repeated."""

    opening: tuple[str | bytes, ...]


Action = ToUpstream | ToClient | Reply | Check | End | Reconnect


class _Forward(tuple):
    """An empty action list with an identity of its own (the empty tuple is a shared singleton)."""


# The message goes on unchanged to the other side: the common case, allocated once and tested with `is`.
FORWARD: tuple[Action, ...] = _Forward()
_NOTHING: tuple[Action, ...] = ()

class Relay:
    def __init__(
        self,
        session: RealtimeSession,
        hooks: HookPipeline,
        *,
        max_message_bytes: int,
        client_dialect: Dialect = IDENTITY,
        upstream_dialect: Dialect = IDENTITY,
    ) -> None:
        self.session = session
        self._hooks = hooks
        self._max_bytes = max_message_bytes
        # A str of at most limit/4 code points cannot exceed `limit` UTF-8 bytes; only longer ones are encoded.
        self._quick_limit = max_message_bytes // 4
        self._client = client_dialect
        self._upstream = upstream_dialect
        self._identity = client_dialect.identity and upstream_dialect.identity
        self._reconnecting = upstream_dialect if isinstance(upstream_dialect, Reconnecting) else None
        self.ending: Ending | None = None
        self._started = False
        self.messages_up = 0
        self.messages_down = 0
        self.chars_up = 0
        self.chars_down = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._hooks.session_started(self.session.info)

    def end(self, ending: Ending) -> Ending:
        """Settle how the session ends; the first ending wins and the session's open turns are recorded with it."""
        if self.ending is None:
            self.ending = ending
            self.session.close(status=ending.turn_status, reason=ending.reason, error=ending.turn_error)
            if self._started:
                self._hooks.session_ended(self.session.info, ending.reason)
        return self.ending

    @property
    def ended(self) -> bool:
        return self.ending is not None

    def relayed(self) -> dict[str, int]:
        return {"frames_up": self.messages_up, "frames_down": self.messages_down, "bytes_up": self.chars_up, "bytes_down": self.chars_down}

    @property
    def activity(self) -> int:
        return self.messages_up + self.messages_down

    # ---- client → provider -------------------------------------------------------------------

    def from_client(self, message: str | bytes) -> tuple[Action, ...]:
        if self.ending is not None:  # nothing crosses a session that has ended
            return _NOTHING
        if message.__class__ is not str:
            if self._client.identity:
                return (Reply(errors.binary_frame().event()),)
        elif len(message) > self._quick_limit and len(message.encode()) > self._max_bytes:
            return (End(endings.frame_too_big(self._max_bytes)),)
        self.messages_up += 1
        self.chars_up += len(message)
        if self._identity:
            request = self.session.on_client_frame(message)  # type: ignore[arg-type]
            return FORWARD if request is None else (Check(request, (ToUpstream(message),)),)
        try:
            events = self._client.inbound(message)
        except Untranslatable as refused:
            return (Reply(self._for_client(refused.error.event())),)
        if self._upstream.identity and len(events) == 1 and events[0] is message:  # nothing to translate after all
            request = self.session.on_client_frame(message)
            return FORWARD if request is None else (Check(request, (ToUpstream(message),)),)
        actions: list[Action] = []
        for event in events:
            request = self.session.on_client_frame(event)
            if request is None:
                actions.extend(self._to_provider(event))
            elif self._upstream.identity:
                actions.append(Check(request, tuple(ToUpstream(m) for m in self._upstream.outbound(event))))
            else:
                actions.append(Check(request, event=event))
        return self._with_reconnect(tuple(actions))

    def _to_provider(self, event: str) -> tuple[Action, ...]:
        """A GA event for the provider, in its dialect, with whatever its dialect answers the client at once."""
        try:
            upstream = tuple(ToUpstream(m) for m in self._upstream.outbound(event))
        except Untranslatable as refused:
            # The provider's side refuses it: the core sees the error as the provider's, so the refused
            # request or item is forgotten, exactly as for an OpenAI server's error.
            return self._from_provider([*self._upstream.answers(), refused.error.event(_event_id(event))])
        return (*upstream, *self._from_provider(self._upstream.answers()))

    def checked(self, check: Check, decision: Decision) -> tuple[Action, ...]:
        """What follows the plugins' decision on `check`."""
        if decision.allowed:
            return check.then if check.event is None else self._with_reconnect(self._to_provider(check.event))
        refusal = decision.as_error()
        if check.response_id is not None:  # a turn already running: cancel it if it still is
            if decision.action == "disconnect":
                return (End(endings.denied(decision)),)
            if not self.session.is_open(check.response_id):
                return ()
            cancel = orjson.dumps({"type": "response.cancel", "response_id": check.response_id}).decode()
            return (*(ToUpstream(m) for m in self._upstream.outbound(cancel)), ToClient(self._for_client(refusal.event())))
        self.session.refuse_turn(check.request, decision)
        if decision.action == "disconnect":
            return (End(endings.denied(decision)),)
        return (Reply(self._for_client(refusal.event(check.request.client_event_id))),)

    async def decide(self, check: Check) -> Decision:
        """The plugins' decision on a check (the only await the relay asks of a transport)."""
        return await self._hooks.pre_turn(check.request)

    # ---- provider → client -------------------------------------------------------------------

    def from_server(self, message: str | bytes) -> tuple[Action, ...]:
        if self.ending is not None:
            return _NOTHING
        if self._identity:
            after = self.forwarded(message)
            return FORWARD if after is _NOTHING else (ToClient(message), *after)
        self.messages_down += 1
        self.chars_down += len(message)
        try:
            events = self._upstream.inbound(message)
        except Untranslatable as refused:
            return (ToClient(self._for_client(refused.error.event())),)
        return self._with_reconnect(self._from_provider(events, message))

    @property
    def passes_server_frames(self) -> bool:
        """Whether every provider frame reaches the client exactly as it came (no dialect translates and the
        session goes on), so a transport may send one before the relay notes it with `forwarded`: the client
        hears it without waiting on the bookkeeping."""
        return self._identity and self.ending is None

    def forwarded(self, message: str | bytes) -> tuple[Action, ...]:
        """Notes a provider frame the client was sent as it came; returns what must follow it (a check of a turn
        the provider started, or the session's end)."""
        self.messages_down += 1
        self.chars_down += len(message)
        if message.__class__ is not str:  # OpenAI sends text only; anything else passes through untouched
            return _NOTHING
        note = self.session.on_server_frame(message)
        return _NOTHING if note is None else self._noted((), note)

    def _with_reconnect(self, actions: tuple[Action, ...]) -> tuple[Action, ...]:
        """`actions`, then the provider's next connection if its dialect says one is due now."""
        if self._reconnecting is None:
            return actions
        due = self._reconnecting.reconnect_due()
        if due is None:
            return actions
        if isinstance(due, RealtimeError):
            return (*actions, End(endings.reconnect_failed(due)))
        return (*actions, Reconnect(tuple(due)))

    def opening(self) -> tuple[Action, ...]:
        """For a provider that waits for its configuration: what it is sent if the client has said nothing yet."""
        if self._reconnecting is None or self.ending is not None:
            return ()
        return tuple(ToUpstream(m) for m in self._reconnecting.opening())

    def provider_closed(self, code: int | None, reason: str) -> Ending:
        """The provider's connection closed (`code` None: without a close frame)."""
        ending = endings.upstream_closed(code, reason)
        if self._upstream.identity or ending.turn_error is None or ending.client_close is None:
            return ending
        # A provider that speaks no OpenAI errors (Gemini closes with a reason only): its close is explained with
        # one, as an OpenAI server would, under the same close code.
        detail = f"{code}: {reason}" if reason else str(code)
        error = errors.RealtimeError(
            "server_error", "upstream_closed", f"The realtime provider closed the connection ({detail}).",
            close_code=ending.client_close[0],
        )  # fmt: skip
        return dataclasses.replace(ending, client_error=error, client_close=None)

    def reconnected(self, message: str | bytes) -> tuple[Action, ...]:
        """The next connection's first message (its `setupComplete`): the session goes on there."""
        self.session.note_reconnect()
        return self.from_server(message)

    def reconnect_failed(self, reason: str) -> Ending:
        if self._reconnecting is not None:
            self._reconnecting.reconnect_failed()
        return endings.reconnect_failed(errors.upstream_not_resumable(reason))

    def _from_provider(self, events: list[str], message: str | bytes | None = None) -> tuple[Action, ...]:
        """GA events in the provider's name (`message`: the provider's own, when it is one of them), observed by the
        core and sent to the client in its dialect."""
        actions: list[Action] = []
        for event in events:
            note = self.session.on_server_frame(event)
            translated = self._client.outbound(event)
            if translated and translated[0] is message and len(events) == len(translated) == 1:  # unchanged after all
                return FORWARD if note is None else self._noted((ToClient(message),), note)
            out = tuple(ToClient(m) for m in translated)
            actions.extend(out if note is None else self._noted(out, note))
        return tuple(actions)

    def _noted(self, out: tuple[Action, ...], note: StartedTurn | tuple[int, str]) -> tuple[Action, ...]:
        if isinstance(note, StartedTurn):
            return (*out, Check(note.request, response_id=note.response_id))
        return (*out, End(endings.provider_limit(note)))

    # ---- gateway-initiated ---------------------------------------------------------------------

    def stop(self, error: RealtimeError, upstream_code: int = errors.CLOSE_NORMAL) -> Ending:
        """The ending for a session the gateway stops (idle, max duration, write stall, budget, shutdown)."""
        return endings.stopped(error, upstream_code)

    def _for_client(self, event: str) -> str:
        """A gateway-made GA event (an error) as the client's dialect has it."""
        if self._client.identity:
            return event
        translated = [m for m in self._client.outbound(event) if isinstance(m, str)]
        return translated[0] if translated else event


def _event_id(event: str) -> str | None:
    """The client's `event_id` of a GA event text, for the error that refuses it."""
    try:
        value = orjson.loads(event).get("event_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None
