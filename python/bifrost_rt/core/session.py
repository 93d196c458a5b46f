"""One realtime session, independent of its transport.

Transports hand every frame to `on_client_frame` / `on_server_frame` and forward the same bytes themselves;
the session only observes. The native tracker absorbs the hot deltas; this module handles the rare events
that open, feed and finish turns. A turn is one response, keyed by `response_id`; parallel and out-of-band
responses are separate turns.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bifrost_rt import _native
from bifrost_rt.policy.auth import Principal
from bifrost_rt.config import RealtimeConfig
from bifrost_rt.errors import CLOSE_POLICY, new_id
from bifrost_rt.policy.hooks import Decision, HookPipeline, SessionInfo, TurnRequest
from bifrost_rt.policy.pricing import PriceTable
from bifrost_rt.providers import Route
from bifrost_rt.records import RAW_LIMIT, TRANSCRIPT_UNAVAILABLE, TurnInput, TurnRecord, cap
from bifrost_rt.state.turn_writer import TurnWriter

logger = logging.getLogger("bifrost_rt.session")

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


@dataclass(slots=True)
class _PendingCreate:
    """A client `response.create` not yet matched to a `response.created`."""

    event_id: str | None
    at: float
    conversation: str
    metadata: Any
    inputs: list[TurnInput]
    response: dict[str, Any]
    request: TurnRequest | None = None  # set when plugins checked it
    raw: str | None = None  # the frame, when raw frames are kept


@dataclass(slots=True)
class _OpenTurn:
    response_id: str
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


# Provider error types/codes after which the session cannot usefully continue.
_ENDS_SESSION = frozenset({"insufficient_quota", "rate_limit_exceeded"})


@dataclass(frozen=True, slots=True)
class StartedTurn:
    """A turn the provider started on its own (server VAD) that plugins must check; it can only be cancelled."""

    request: TurnRequest
    response_id: str


def _loads(frame: str) -> dict[str, Any] | None:
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _item_text(item: dict[str, Any]) -> tuple[str, str | None]:
    """(kind, text) of a user message or tool output item."""
    if item.get("type") == "function_call_output":
        output = item.get("output")
        return "tool_output", output if isinstance(output, str) else None
    kind, parts = "text", []
    for part in item.get("content") or ():
        if not isinstance(part, dict):
            continue
        part_type = part.get("type")
        if part_type in ("input_text", "text") and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif part_type == "input_audio":
            kind = "audio"
            if isinstance(part.get("transcript"), str):
                parts.append(part["transcript"])
    return kind, (" ".join(parts) if parts else None)


def _input_from_item(item: Any) -> TurnInput | None:
    if not isinstance(item, dict):
        return None
    if item.get("type") == "function_call_output" or (item.get("type") == "message" and item.get("role") == "user"):
        kind, text = _item_text(item)
        return TurnInput(kind, item.get("id"), text, item.get("call_id"))
    return None


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
        writer: TurnWriter,
        hooks: HookPipeline,
        on_turn: Callable[[TurnRecord], None] | None = None,
        log_content: bool = True,
        raw_frames: bool = False,
        session_id: str | None = None,
    ) -> None:
        self.id = session_id or new_id("sess_bf")
        self.principal = principal
        self.route = route
        self.transport = transport
        self.session_group = session_group or self.id
        self.provider_session_id: str | None = None
        self.model = route.upstream_model
        self.started_at = time.monotonic()
        self.tracker = _native.Tracker(
            max_text_bytes=limits.max_text_bytes,
            max_arguments_bytes=limits.max_arguments_bytes,
            max_open_responses=limits.max_open_responses,
        )
        self._limits = limits
        self._prices = prices
        self._writer = writer
        self._hooks = hooks
        self._on_turn = on_turn
        self._log_content = log_content
        self._raw_frames = raw_frames
        self._turns: dict[str, _OpenTurn] = {}
        self._pending_inputs: deque[TurnInput] = deque()
        self._inputs_by_item: dict[str, TurnInput] = {}
        self._turn_by_item: dict[str, _OpenTurn] = {}
        self._pending_creates: deque[_PendingCreate] = deque(maxlen=limits.max_pending_creates)
        self._last_commit_at: float | None = None
        # Transcription bills for audio items no turn has taken yet, keyed by item id.
        self._pending_transcriptions: dict[str, tuple[dict[str, Any], float]] = {}
        self._orphan_transcriptions: list[dict[str, Any]] = []
        self._orphan_transcription_cost = 0.0
        self.voice: str | None = None
        self.tools: list[dict[str, Any]] = []
        self.transcription_model: str | None = None
        self.session_type = "realtime"
        self.turns_recorded = 0
        self.closed = False
        self._server_handlers = {
            "session.created": self._on_session,
            "session.updated": self._on_session,
            "response.created": self._on_response_created,
            "response.done": self._on_response_done,
            "conversation.item.done": self._on_item,
            "conversation.item.created": self._on_item,
            "conversation.item.deleted": self._on_item_deleted,
            "conversation.item.input_audio_transcription.completed": self._on_transcription,
            "input_audio_buffer.committed": self._on_committed,
            "error": self._on_error,
        }

    @property
    def info(self) -> SessionInfo:
        return SessionInfo(
            self.id, self.session_group, self.principal.name, self.principal.key_id, self.route.provider_name, self.model, self.transport
        )

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name") or t.get("server_label") or t.get("type") for t in self.tools]

    # ---- observation entry points (hot path) -------------------------------------------------

    def on_client_frame(self, frame: str) -> TurnRequest | None:
        """Observe a client frame; a `response.create` that plugins must check comes back as a TurnRequest."""
        info = self.tracker.observe_client(frame)
        if info is None:
            return None
        if info.type == "response.create":
            pending = self._on_response_create(frame, info)
            if self._hooks.checks_turns:
                return self._turn_request(pending, server_started=False)
        elif info.type == "conversation.item.create":
            self._on_client_item(frame, info)
        return None

    async def check_turn(self, request: TurnRequest) -> Decision:
        return await self._hooks.pre_turn(request)

    def refuse_turn(self, request: TurnRequest, decision: Decision) -> None:
        """The checked response.create is withheld: forget it and record the refusal as a turn."""
        for pending in self._pending_creates:
            if pending.request is request:
                self._pending_creates.remove(pending)
                break
        now = time.monotonic()
        turn = _OpenTurn(None, now, now, time.time(), [], request.response.get("conversation") or "auto", request.client_event_id)  # type: ignore[arg-type]
        error = {"type": decision.type, "code": decision.code, "message": decision.message, "plugin": decision.plugin}
        self._finish(turn, status="refused", reason=decision.code, error=error, usage=None, response={}, inputs=request.inputs)

    def _turn_request(self, pending: _PendingCreate | None, *, server_started: bool) -> TurnRequest:
        inputs = list(self._pending_inputs) if pending is None or pending.conversation != "none" else []
        if pending is not None:
            inputs += pending.inputs
        request = TurnRequest(
            session=self.info,
            client_event_id=pending.event_id if pending else None,
            inputs=[self._input_dict(i) for i in inputs],
            tools=list(self.tools),
            response=pending.response if pending else {},
            server_started=server_started,
        )
        if pending is not None:
            pending.request = request
        return request

    def on_server_frame(self, frame: str) -> StartedTurn | tuple[int, str] | None:
        """Observe a provider frame. Comes back: a turn the provider started that plugins must check, or a close
        (code, reason) when the session must end once the frame is forwarded."""
        info = self.tracker.observe_server(frame)
        if info is None:
            return None
        handler = self._server_handlers.get(info.type)
        if handler is not None:
            return handler(frame, info)
        elif info.type in _FIRST_DELTA_TYPES:
            turn = self._turns.get(info.response_id)
            if turn is not None and turn.first_delta_at is None:
                turn.first_delta_at = time.monotonic()

    @property
    def open_turns(self) -> int:
        return len(self._turns)

    def is_open(self, response_id: str) -> bool:
        return response_id in self._turns

    # ---- client events -------------------------------------------------------------------------

    def _on_response_create(self, frame: str, info: Any) -> _PendingCreate:
        event = _loads(frame) or {}
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        inputs = []
        for item in response.get("input") or ():
            turn_input = _input_from_item(item)
            if turn_input is not None:
                inputs.append(turn_input)
        pending = _PendingCreate(
            info.event_id,
            time.monotonic(),
            response.get("conversation") or "auto",
            response.get("metadata"),
            inputs,
            response,
            raw=frame[:RAW_LIMIT] if self._raw_frames else None,
        )
        self._pending_creates.append(pending)
        return pending

    # ---- server events -------------------------------------------------------------------------

    def _on_session(self, frame: str, info: Any) -> None:
        event = _loads(frame)
        session = event.get("session") if event else None
        if not isinstance(session, dict):
            return
        self.provider_session_id = session.get("id") or self.provider_session_id
        self.session_type = session.get("type") or self.session_type
        if not self.model and isinstance(session.get("model"), str):
            self.model = session["model"]
        audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
        output = audio.get("output") if isinstance(audio.get("output"), dict) else {}
        voice = output.get("voice", session.get("voice"))
        if isinstance(voice, str):
            self.voice = voice
        if isinstance(session.get("tools"), list):
            self.tools = [t for t in session["tools"] if isinstance(t, dict)]
        audio_input = audio.get("input") if isinstance(audio.get("input"), dict) else {}
        transcription = audio_input.get("transcription", session.get("input_audio_transcription"))
        self.transcription_model = transcription.get("model") if isinstance(transcription, dict) else None

    def _on_committed(self, frame: str, info: Any) -> None:
        self._last_commit_at = time.monotonic()

    def _on_client_item(self, frame: str, info: Any) -> None:
        """A client-submitted item counts as an input at once, so a pre_turn check right after it sees it."""
        event = _loads(frame)
        turn_input = _input_from_item(event.get("item")) if event else None
        if turn_input is not None:
            turn_input.unconfirmed_event = info.event_id or ""
            self._add_input(turn_input)

    def _on_item(self, frame: str, info: Any) -> None:
        event = _loads(frame)
        turn_input = _input_from_item(event.get("item")) if event else None
        if turn_input is None:
            return
        known = self._inputs_by_item.get(turn_input.item_id) if turn_input.item_id else None
        if known is None:
            known = self._unconfirmed_match(turn_input)
        if known is not None:
            known.unconfirmed_event = None
            if known.item_id is None and turn_input.item_id:
                known.item_id = turn_input.item_id
                self._inputs_by_item[turn_input.item_id] = known
            if turn_input.text is not None:
                known.text = turn_input.text
            return
        self._add_input(turn_input)

    def _on_item_deleted(self, frame: str, info: Any) -> None:
        turn_input = self._inputs_by_item.pop(info.item_id, None) if info.item_id else None
        if turn_input is not None and turn_input in self._pending_inputs:
            self._pending_inputs.remove(turn_input)

    def _unconfirmed_match(self, confirmed: TurnInput) -> TurnInput | None:
        """The oldest client-submitted input the provider's confirmation corresponds to."""
        for candidate in self._pending_inputs:
            if (
                candidate.unconfirmed_event is not None
                and candidate.kind == confirmed.kind
                and candidate.call_id == confirmed.call_id
                and (candidate.kind == "audio" or candidate.text == confirmed.text)
            ):
                return candidate
        return None

    def _add_input(self, turn_input: TurnInput) -> None:
        if len(self._pending_inputs) >= self._limits.max_pending_inputs:
            dropped = self._pending_inputs.popleft()
            self._inputs_by_item.pop(dropped.item_id or "", None)
            self._orphan_bill(self._pending_transcriptions.pop(dropped.item_id or "", None))
        self._pending_inputs.append(turn_input)
        if turn_input.item_id:
            self._inputs_by_item[turn_input.item_id] = turn_input

    def _on_transcription(self, frame: str, info: Any) -> None:
        event = _loads(frame) or {}
        transcript = event.get("transcript")
        item_id = info.item_id
        turn_input = self._inputs_by_item.get(item_id) if item_id else None
        if turn_input is not None and isinstance(transcript, str):
            turn_input.text = transcript
        usage = _native.extract_transcription_usage(frame)
        if usage is None:
            return
        usage_dict = {**usage.to_dict(), "item_id": item_id, "model": self.transcription_model}
        prices = self._prices.lookup(self.transcription_model)
        cost = _native.transcription_cost(usage, prices) if prices is not None else 0.0
        turn = self._turn_by_item.get(item_id) if item_id else None
        if turn is not None and turn.response_id in self._turns:
            turn.transcription_usage.append(usage_dict)
            turn.transcription_cost += cost
        elif turn_input is not None and item_id and self.session_type != "transcription":
            self._pending_transcriptions[item_id] = (usage_dict, cost)
        elif self.session_type == "transcription":
            self._record_transcription_only([usage_dict], cost, [turn_input] if turn_input else [])
        else:
            # The item's turn already finished: bill it with the next turn.
            self._orphan_bill((usage_dict, cost))

    def _orphan_bill(self, billed: tuple[dict[str, Any], float] | None) -> None:
        if billed is not None:
            self._orphan_transcriptions.append(billed[0])
            self._orphan_transcription_cost += billed[1]

    def _on_error(self, frame: str, info: Any) -> tuple[int, str] | None:
        event = _loads(frame) or {}
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        if _ENDS_SESSION & {error.get("type"), error.get("code")}:
            # The provider's own quota or rate limit: the client sees its error, then the session ends.
            type_, code = error.get("type") or "", error.get("code") or ""
            return CLOSE_POLICY, f"{type_}.{code}" if code else type_
        client_event_id = error.get("event_id")
        if client_event_id:
            # A conversation.item.create the provider refused never becomes an input.
            for turn_input in [i for i in self._pending_inputs if i.unconfirmed_event == client_event_id]:
                self._pending_inputs.remove(turn_input)
        if error.get("code") != "conversation_already_has_active_response" and client_event_id is None:
            return
        # A refused response.create will never get a response.created: forget it.
        for pending in reversed(self._pending_creates):
            if client_event_id is None or pending.event_id == client_event_id:
                self._pending_creates.remove(pending)
                break

    def _on_response_created(self, frame: str, info: Any) -> StartedTurn | None:
        response_id = info.response_object_id
        if not response_id or response_id in self._turns:
            return None
        now = time.monotonic()
        pending = self._match_pending_create(frame, info)
        if pending is not None and pending.conversation == "none":
            inputs = pending.inputs
        else:
            inputs = list(self._pending_inputs)
            self._pending_inputs.clear()
            if pending is not None:
                inputs.extend(pending.inputs)
        requested_at = pending.at if pending is not None else (self._last_commit_at or now)
        self._last_commit_at = None
        turn = _OpenTurn(
            response_id=response_id,
            requested_at=requested_at,
            started_at=now,
            started_unix=time.time(),
            inputs=inputs,
            conversation=pending.conversation if pending is not None else "auto",
            client_event_id=pending.event_id if pending is not None else None,
            raw_request=pending.raw if pending is not None else None,
        )
        self._turns[response_id] = turn
        for turn_input in inputs:
            if turn_input.item_id:
                self._turn_by_item[turn_input.item_id] = turn
                self._inputs_by_item.pop(turn_input.item_id, None)
                billed = self._pending_transcriptions.pop(turn_input.item_id, None)
                if billed is not None:
                    turn.transcription_usage.append(billed[0])
                    turn.transcription_cost += billed[1]
        if pending is None and self._hooks.checks_turns:
            request = TurnRequest(self.info, None, [self._input_dict(i) for i in inputs], list(self.tools), {}, server_started=True)
            return StartedTurn(request, response_id)
        return None

    def _match_pending_create(self, frame: str, info: Any) -> _PendingCreate | None:
        if not self._pending_creates:
            return None
        if info.response_has_metadata:
            event = _loads(frame) or {}
            metadata = (event.get("response") or {}).get("metadata")
            for pending in self._pending_creates:
                if pending.metadata == metadata:
                    self._pending_creates.remove(pending)
                    return pending
        else:
            # A request that set metadata gets a response carrying it: an unlabelled response is someone else's.
            for pending in self._pending_creates:
                if pending.metadata is None:
                    self._pending_creates.remove(pending)
                    return pending
        return self._pending_creates.popleft()

    def _on_response_done(self, frame: str, info: Any) -> None:
        response_id = info.response_object_id
        if not response_id:
            return
        turn = self._turns.pop(response_id, None)
        if turn is None:
            # response.done without response.created (e.g. created before we attached): still record it.
            now = time.monotonic()
            turn = _OpenTurn(response_id, now, now, time.time(), [], "auto", None)
        event = _loads(frame) or {}
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        details = response.get("status_details") if isinstance(response.get("status_details"), dict) else {}
        status = info.response_status or "completed"
        usage = _native.extract_usage(frame)
        error = details.get("error") if isinstance(details.get("error"), dict) else None
        self._finish(
            turn,
            status=status,
            reason=details.get("reason") if isinstance(details.get("reason"), str) else None,
            error=error,
            usage=usage,
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
            self._turns.pop(turn.response_id, None)
            self._finish(turn, status=status, reason=reason, error=error, usage=None, response={})
        for billed in self._pending_transcriptions.values():
            self._orphan_bill(billed)
        self._pending_transcriptions.clear()
        if self._orphan_transcriptions:
            # _finish folds pending orphan transcriptions into the record it writes.
            self._record_transcription_only([], 0.0, [])
        self.tracker.clear()

    def _finish(
        self,
        turn: _OpenTurn,
        *,
        status: str,
        reason: str | None,
        error: dict[str, Any] | None,
        usage: Any,
        response: dict[str, Any],
        inputs: list[dict[str, Any]] | None = None,
        raw_response: str | None = None,
    ) -> None:
        now = time.monotonic()
        output = self.tracker.take(turn.response_id) if turn.response_id else None
        for turn_input in turn.inputs:
            self._turn_by_item.pop(turn_input.item_id or "", None)
        transcription_usage = turn.transcription_usage + self._orphan_transcriptions
        transcription_cost = turn.transcription_cost + self._orphan_transcription_cost
        self._orphan_transcriptions, self._orphan_transcription_cost = [], 0.0
        prices = self._prices.lookup(self.model)
        cost = _native.cost(usage, prices).to_dict() if usage is not None and prices is not None else {"total": 0.0}
        cost["transcription"] = transcription_cost
        cost["total"] = cost.get("total", 0.0) + transcription_cost
        tool_calls = self._tool_calls(output, response)
        output_dict = {
            "text": output.text if output else "",
            "transcript": output.transcript if output else "",
            "text_truncated": bool(output and output.text_truncated),
            "transcript_truncated": bool(output and output.transcript_truncated),
            "audio_bytes": output.audio_bytes if output else 0,
            "tool_calls": tool_calls,
        }
        if inputs is None:
            inputs = [self._input_dict(i, final=True) for i in turn.inputs]
        input_summary = cap(" | ".join(i["text"] for i in inputs if i["text"]))
        output_summary = cap(
            " ".join(
                part
                for part in (output_dict["text"], output_dict["transcript"], *(f"{c['name']}({c['arguments']})" for c in tool_calls))
                if part
            )
        )
        if not self._log_content:
            for i in inputs:
                i["text"] = None
            output_dict["text"] = output_dict["transcript"] = ""
            for call in tool_calls:
                call["arguments"] = None
            input_summary = output_summary = ""
        record = TurnRecord(
            id=new_id("turn"),
            session_id=self.id,
            provider_session_id=self.provider_session_id,
            session_group=self.session_group,
            principal=self.principal.name,
            key_id=self.principal.key_id,
            provider=self.route.provider_name,
            model=self.model,
            transport=self.transport,
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
                "voice": self.voice,
                "tools": self.tool_names,
                "conversation": turn.conversation,
                "client_event_ids": [turn.client_event_id] if turn.client_event_id else [],
                "response_metadata": response.get("metadata"),
                "priced": prices is not None,
            },
            raw={"request": turn.raw_request, "response": raw_response} if self._raw_frames else None,
        )
        self.turns_recorded += 1
        self._writer.submit(record)
        self._hooks.turn_finished(record)
        if self._on_turn is not None:
            self._on_turn(record)

    @staticmethod
    def _input_dict(turn_input: TurnInput, final: bool = False) -> dict[str, Any]:
        """An input as records and plugins see it; a finished turn marks a transcript that never came."""
        text = turn_input.text
        if text is None and final and turn_input.kind == "audio":
            text = TRANSCRIPT_UNAVAILABLE
        return {"kind": turn_input.kind, "item_id": turn_input.item_id, "call_id": turn_input.call_id, "text": text}

    @staticmethod
    def _tool_calls(output: Any, response: dict[str, Any]) -> list[dict[str, Any]]:
        calls = {}
        if output is not None:
            for call in output.tool_calls:
                calls[call.call_id] = {
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                    "truncated": call.truncated,
                }
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

    def _record_transcription_only(self, usage: list[dict[str, Any]], cost: float, inputs: list[TurnInput]) -> None:
        now = time.monotonic()
        turn = _OpenTurn(None, now, now, time.time(), inputs, "none", None)  # type: ignore[arg-type]
        turn.transcription_usage = usage
        turn.transcription_cost = cost
        self._finish(turn, status="completed", reason="transcription", error=None, usage=None, response={})
