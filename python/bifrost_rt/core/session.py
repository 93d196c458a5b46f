"""The session core: one realtime session's turns, observed from its GA events, independent of transport and dialect.

The relay hands every event to `on_client_frame` / `on_server_frame`; the session only observes. The native
tracker absorbs the hot deltas; this module handles the rare events that open, feed and finish turns. A turn is one
response, keyed by `response_id`; parallel and out-of-band responses are separate turns. Its inputs
(`inputs.py`), the request it answers (`requests.py`), its transcription bills (`transcription.py`) and its record
(`turn_record.py`) each live in a module of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from bifrost_rt import _native
from bifrost_rt.config import RealtimeConfig
from bifrost_rt.core.audio import AudioCapture, audio_format
from bifrost_rt.core.inputs import Inputs, input_dict, input_from_item
from bifrost_rt.core.requests import PendingCreate, Requests
from bifrost_rt.core.transcription import Transcriptions
from bifrost_rt.core.turn_record import TOOL_NAME_CHARS, OpenTurn, TurnContext, build_record
from bifrost_rt.errors import CLOSE_POLICY, new_id
from bifrost_rt.policy.auth import Principal
from bifrost_rt.policy.hooks import Decision, HookPipeline, SessionInfo, TurnRequest
from bifrost_rt.policy.pricing import PriceTable
from bifrost_rt.providers import Route
from bifrost_rt.records import RAW_LIMIT, TurnInput, TurnRecord

_FIRST_DELTA_TYPES = frozenset(
    {
        "response.output_text.delta",
        "response.text.delta",
        "response.output_audio.delta",
        "response.audio.delta",
        "response.output_audio_transcript.delta",
        "response.audio_transcript.delta",
        "response.function_call_arguments.delta",
    }
)
_AUDIO_DELTA_TYPES = frozenset({"response.output_audio.delta", "response.audio.delta"})

# Provider error types/codes after which the session cannot usefully continue.
_ENDS_SESSION = frozenset({"insufficient_quota", "rate_limit_exceeded"})


class RecordWriter(Protocol):
    def submit(self, record: TurnRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class StartedTurn:
    """A turn the provider started on its own (server VAD) that plugins must check; it can only be cancelled."""

    request: TurnRequest
    response_id: str


def _loads(frame: str) -> dict[str, Any]:
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class RealtimeSession:
    def __init__(
        self,
        *,
        principal: Principal,
        route: Route,
        transport: str,
        session_group: str | None,
        limits: RealtimeConfig,
        prices: PriceTable,
        writer: RecordWriter,
        hooks: HookPipeline,
        on_turn: Callable[[TurnRecord], None] | None = None,
        log_content: bool = True,
        raw_frames: bool = False,
        session_id: str | None = None,
        audio: AudioCapture | None = None,
        traceparent: str | None = None,
    ) -> None:
        self.id = session_id or new_id("sess_bf")
        self.principal = principal
        self.route = route
        self.transport = transport
        self.session_group = session_group or self.id
        self.provider_session_id: str | None = None
        self.model = route.upstream_model
        self.started_at = time.monotonic()
        self.started_unix = time.time()
        self.traceparent = traceparent
        self._tracker = _native.Tracker(
            max_text_bytes=limits.max_text_bytes,
            max_arguments_bytes=limits.max_arguments_bytes,
            max_open_responses=limits.max_open_responses,
        )
        self._prices = prices
        self._writer = writer
        self._hooks = hooks
        self._on_turn = on_turn
        self._log_content = log_content
        self._raw_frames = raw_frames
        self._turns: dict[str, OpenTurn] = {}
        self._turn_by_item: dict[str, OpenTurn] = {}
        self._transcriptions = Transcriptions()
        self._inputs = Inputs(limits.max_pending_inputs, lambda dropped: self._transcriptions.orphan(self._transcriptions.take(dropped.item_id)))
        self._requests = Requests(limits.max_pending_creates, raw_frames)
        self._last_commit_at: float | None = None
        self._voice: str | None = None
        self._tools: list[dict[str, Any]] = []
        self._transcription_model: str | None = None
        self._upstream_connection = 1  # which provider connection of the session serves its turns now
        self._session_type = "realtime"
        self.closed = False
        self.turns_recorded = 0  # finished turns of this session, for the live view
        # Turn audio of a recording key; frames carry it only on a WebSocket (a call's audio is RTP).
        self.audio = audio
        self._frame_audio = audio if audio is not None and not audio.opus else None
        self._server_handlers: dict[str, Callable[[str, Any], Any]] = {
            "session.created": self._on_session,
            "session.updated": self._on_session,
            "response.created": self._on_response_created,
            "response.done": self._on_response_done,
            "conversation.item.done": self._on_item,
            "conversation.item.created": self._on_item,
            "conversation.item.deleted": self._on_item_deleted,
            "conversation.item.input_audio_transcription.completed": self._on_transcription,
            "input_audio_buffer.committed": self._on_committed,
            "input_audio_buffer.cleared": self._on_cleared,
            "output_audio_buffer.stopped": self._on_output_audio_stopped,
            "output_audio_buffer.cleared": self._on_output_audio_stopped,
            "error": self._on_error,
        }

    @property
    def info(self) -> SessionInfo:
        return SessionInfo(
            self.id, self.session_group, self.principal.name, self.principal.key_id, self.route.provider_name, self.model, self.transport,
            self.started_unix, self.traceparent,
        )  # fmt: skip

    @property
    def open_turns(self) -> int:
        return len(self._turns)

    def note_reconnect(self) -> None:
        """The provider's next connection now serves the session (between turns)."""
        self._upstream_connection += 1

    def is_open(self, response_id: str) -> bool:
        return response_id in self._turns

    # ---- observation entry points (hot path) -------------------------------------------------

    def on_client_frame(self, frame: str) -> TurnRequest | None:
        """Observe a client event; a `response.create` that plugins must check comes back as a TurnRequest."""
        info = self._tracker.observe_client(frame)
        if info is None:  # input_audio_buffer.append
            if self._frame_audio is not None:
                self._frame_audio.client_audio(frame)
            return None
        if info.type == "response.create":
            pending = self._requests.add(frame, _loads(frame), info.event_id)
            if self._hooks.checks_turns:
                return self._turn_request(pending)
        elif info.type == "conversation.item.create":
            turn_input = input_from_item(_loads(frame).get("item"))
            if turn_input is not None:
                self._inputs.submitted(turn_input, info.event_id)
        return None

    def on_server_frame(self, frame: str) -> StartedTurn | tuple[int, str] | None:
        """Observe a provider event. Comes back: a turn the provider started that plugins must check, or a close
        (code, reason) when the session must end once the event is forwarded."""
        info = self._tracker.observe_server(frame)
        if info is None:  # a delta the tracker absorbed
            if self._frame_audio is not None:
                self._frame_audio.provider_audio(frame)
            return None
        handler = self._server_handlers.get(info.type)  # type: ignore[arg-type]  # a scanned event always has a type
        if handler is not None:
            result: StartedTurn | tuple[int, str] | None = handler(frame, info)
            return result
        if info.type in _FIRST_DELTA_TYPES:
            turn = self._turns.get(info.response_id)  # type: ignore[arg-type]  # deltas always name their response
            if turn is not None and turn.first_delta_at is None:
                turn.first_delta_at = time.monotonic()
            if self._frame_audio is not None and info.type in _AUDIO_DELTA_TYPES:
                self._frame_audio.provider_audio(frame)
        return None

    # ---- checks --------------------------------------------------------------------------------

    def _turn_request(self, pending: PendingCreate) -> TurnRequest:
        inputs = self._inputs.pending() if pending.conversation != "none" else []
        inputs += pending.inputs
        request = TurnRequest(self.info, pending.event_id, [input_dict(i) for i in inputs], list(self._tools), pending.response)
        pending.request = request
        return request

    def refuse_turn(self, request: TurnRequest, decision: Decision) -> None:
        """The checked response.create is withheld: forget it and record the refusal as a turn."""
        self._requests.withdraw(request)
        turn = OpenTurn.now(None, request.response.get("conversation") or "auto", request.client_event_id)
        error = {"type": decision.type, "code": decision.code, "message": decision.message, "plugin": decision.plugin}
        self._finish(turn, status="refused", reason=decision.code, error=error, usage=None, response={}, inputs=request.inputs)

    # ---- provider events -----------------------------------------------------------------------

    def _on_session(self, frame: str, info: Any) -> None:
        session = _loads(frame).get("session")
        if not isinstance(session, dict):
            return
        self.provider_session_id = session.get("id") or self.provider_session_id
        self._session_type = session.get("type") or self._session_type
        if not self.model and isinstance(session.get("model"), str):
            self.model = session["model"]
        audio = _dict(session.get("audio"))
        voice = _dict(audio.get("output")).get("voice", session.get("voice"))
        if isinstance(voice, str):
            self._voice = voice
        if isinstance(session.get("tools"), list):
            self._tools = [t for t in session["tools"] if isinstance(t, dict)]
        if self.audio is not None:
            self.audio.formats(
                audio_format(_dict(audio.get("input")).get("format", session.get("input_audio_format"))),
                audio_format(_dict(audio.get("output")).get("format", session.get("output_audio_format"))),
            )
        transcription = _dict(audio.get("input")).get("transcription", session.get("input_audio_transcription"))
        self._transcription_model = transcription.get("model") if isinstance(transcription, dict) else None

    def _on_committed(self, frame: str, info: Any) -> None:
        self._last_commit_at = time.monotonic()
        if self.audio is not None:
            self.audio.committed(self._tracker.take_input_audio_bytes())

    def _on_cleared(self, frame: str, info: Any) -> None:
        if self.audio is not None:
            self._tracker.take_input_audio_bytes()
            self.audio.cleared()

    def _on_output_audio_stopped(self, frame: str, info: Any) -> None:
        if self.audio is not None:
            self.audio.output_stopped(info.response_id)

    def _on_item(self, frame: str, info: Any) -> None:
        turn_input = input_from_item(_loads(frame).get("item"))
        if turn_input is not None:
            self._inputs.confirmed(turn_input)

    def _on_item_deleted(self, frame: str, info: Any) -> None:
        self._inputs.deleted(info.item_id)

    def _on_transcription(self, frame: str, info: Any) -> None:
        item_id = info.item_id
        turn_input = self._inputs.by_item(item_id)
        transcript = _loads(frame).get("transcript")
        if turn_input is not None and isinstance(transcript, str):
            turn_input.text = transcript
        usage = _native.extract_transcription_usage(frame)
        if usage is None:
            return
        prices = self._prices.lookup(self._transcription_model)
        bill = ({**usage.to_dict(), "item_id": item_id, "model": self._transcription_model},
                _native.transcription_cost(usage, prices) if prices is not None else 0.0)  # fmt: skip
        turn = self._turn_by_item.get(item_id) if item_id else None
        if turn is not None and turn.response_id in self._turns:
            turn.transcription_usage.append(bill[0])
            turn.transcription_cost += bill[1]
        elif self._session_type == "transcription":
            self._record_transcription_only([bill[0]], bill[1], [turn_input] if turn_input else [])
        elif turn_input is not None and item_id:
            self._transcriptions.hold(item_id, bill)
        else:
            # The item's turn already finished: bill it with the next turn.
            self._transcriptions.orphan(bill)

    def _on_error(self, frame: str, info: Any) -> tuple[int, str] | None:
        error = _dict(_loads(frame).get("error"))
        if _ENDS_SESSION & {error.get("type"), error.get("code")}:
            # The provider's own quota or rate limit: the client sees its error, then the session ends.
            type_, code = error.get("type") or "", error.get("code") or ""
            return CLOSE_POLICY, f"{type_}.{code}" if code else type_
        client_event_id = error.get("event_id")
        if client_event_id:
            self._inputs.refused(client_event_id)
        if error.get("code") == "conversation_already_has_active_response" or client_event_id is not None:
            # A refused response.create will never get a response.created: forget it.
            self._requests.refused(client_event_id)
        return None

    def _on_response_created(self, frame: str, info: Any) -> StartedTurn | None:
        response_id = info.response_object_id
        if not response_id or response_id in self._turns:
            return None
        now = time.monotonic()
        metadata = _dict(_loads(frame).get("response")).get("metadata") if info.response_has_metadata else None
        pending = self._requests.match(metadata, info.response_has_metadata)
        if pending is not None and pending.conversation == "none":
            inputs = pending.inputs
        else:
            inputs = self._inputs.take() + (pending.inputs if pending is not None else [])
        turn = OpenTurn(
            response_id=response_id,
            requested_at=pending.at if pending is not None else (self._last_commit_at or now),
            started_at=now,
            started_unix=time.time(),
            inputs=inputs,
            conversation=pending.conversation if pending is not None else "auto",
            client_event_id=pending.event_id if pending is not None else None,
            raw_request=pending.raw if pending is not None else None,
        )
        self._last_commit_at = None
        self._turns[response_id] = turn
        if self.audio is not None:
            self.audio.turn_started(response_id)
        for turn_input in inputs:
            if turn_input.item_id:
                self._turn_by_item[turn_input.item_id] = turn
                self._inputs.forget(turn_input.item_id)
                bill = self._transcriptions.take(turn_input.item_id)
                if bill is not None:
                    turn.transcription_usage.append(bill[0])
                    turn.transcription_cost += bill[1]
        if pending is None and self._hooks.checks_turns:
            request = TurnRequest(self.info, None, [input_dict(i) for i in inputs], list(self._tools), {}, server_started=True)
            return StartedTurn(request, response_id)
        return None

    def _on_response_done(self, frame: str, info: Any) -> None:
        response_id = info.response_object_id
        if not response_id:
            return
        # A response.done without response.created (e.g. created before we attached) is still recorded.
        turn = self._turns.pop(response_id, None) or OpenTurn.now(response_id)
        response = _dict(_loads(frame).get("response"))
        details = _dict(response.get("status_details"))
        error = details.get("error")
        reason = details.get("reason")
        self._finish(
            turn,
            status=info.response_status or "completed",
            reason=reason if isinstance(reason, str) else None,
            error=error if isinstance(error, dict) else None,
            usage=_native.extract_usage(frame),
            response=response,
            raw_response=frame[:RAW_LIMIT] if self._raw_frames else None,
        )

    # ---- turn completion -----------------------------------------------------------------------

    def close(self, *, status: str = "interrupted", reason: str, error: dict[str, Any] | None = None) -> None:
        """Finalise every open turn (the transport ended); no turn is lost."""
        if self.closed:
            return
        self.closed = True
        for turn in list(self._turns.values()):
            self._turns.pop(turn.response_id or "", None)
            self._finish(turn, status=status, reason=reason, error=error, usage=None, response={})
        self._transcriptions.release_held()
        if self._transcriptions.has_orphans:
            # _finish folds pending orphan transcriptions into the record it writes.
            self._record_transcription_only([], 0.0, [])
        self._tracker.clear()
        if self.audio is not None:
            self.audio.close()

    def _finish(
        self,
        turn: OpenTurn,
        *,
        status: str,
        reason: str | None,
        error: dict[str, Any] | None,
        usage: Any,
        response: dict[str, Any],
        inputs: list[dict[str, Any]] | None = None,
        raw_response: str | None = None,
    ) -> None:
        output = self._tracker.take(turn.response_id) if turn.response_id else None
        for turn_input in turn.inputs:
            self._turn_by_item.pop(turn_input.item_id or "", None)
        orphans, orphan_cost = self._transcriptions.take_orphans()
        record = build_record(
            self._context(),
            turn,
            status=status,
            reason=reason,
            error=error,
            usage=usage,
            prices=self._prices.for_route(self.route, self.model),
            output=output,
            response=response,
            transcription=(turn.transcription_usage + orphans, turn.transcription_cost + orphan_cost),
            inputs=inputs,
            raw_response=raw_response,
        )
        if self.audio is not None:
            self.audio.turn_finished(record, output.audio_bytes if output else 0)
        if self._upstream_connection > 1:  # the session outlived a provider reconnect: its turns say on which connection
            record.metadata["upstream_connection"] = self._upstream_connection
        self._writer.submit(record)
        self.turns_recorded += 1
        self._hooks.turn_finished(record)
        if self._on_turn is not None:
            self._on_turn(record)

    def _context(self) -> TurnContext:
        tool_names = [str(t.get("name") or t.get("server_label") or t.get("type"))[:TOOL_NAME_CHARS] for t in self._tools]
        return TurnContext(
            self.id, self.provider_session_id, self.session_group, self.principal.name, self.principal.key_id,
            self.route.provider_name, self.model, self.transport, self._voice, tool_names, self._log_content, self._raw_frames,
        )  # fmt: skip

    def _record_transcription_only(self, usage: list[dict[str, Any]], cost: float, inputs: list[TurnInput]) -> None:
        turn = OpenTurn.now(None, "none")
        turn.inputs = inputs
        turn.transcription_usage = usage
        turn.transcription_cost = cost
        self._finish(turn, status="completed", reason="transcription", error=None, usage=None, response={})
