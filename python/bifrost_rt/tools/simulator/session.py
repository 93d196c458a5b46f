"""Per-connection state machine: client events in, GA server events out, in the order the API sends them.

A connection has one default conversation, an input audio buffer with optional turn detection, at most one
response writing to the conversation, and any number of out-of-band (`conversation: "none"`) responses.
Responses stream from their own tasks, so a `response.cancel` or a barge-in can arrive while they run.
Problems with a client event become an `error` event carrying that event's `event_id`; the socket stays open.
On a WebRTC call, input audio comes from the call's track (`append_audio`) and output audio goes to an `AudioOutput`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from bifrost_rt.tools.simulator.audio import BYTES_PER_MS, format_kind
from bifrost_rt.tools.simulator.config import apply_session_update, check_response_params
from bifrost_rt.tools.simulator.conversation import Conversation, Item, decode_audio, item_from_client
from bifrost_rt.tools.simulator.events import ClientError, invalid_value, missing_parameter
from bifrost_rt.tools.simulator.ids import new_id, obfuscation
from bifrost_rt.tools.simulator.options import SimulatorOptions
from bifrost_rt.tools.simulator.response import AudioOutput, Response, plan_response, word_chunks
from bifrost_rt.tools.simulator.usage import transcription_usage
from bifrost_rt.tools.simulator.vad import InputAudioBuffer, SpeechStarted, TurnDetection

logger = logging.getLogger("bifrost_rt.simulator")

_NOT_IN_TRANSCRIPTION = frozenset(
    {"response.create", "response.cancel", "conversation.item.create", "conversation.item.truncate"}
)


class Peer(Protocol):
    """The client connection as the session sees it."""

    closed: bool

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    async def abort(self) -> None: ...


class RealtimeSession:
    def __init__(
        self, peer: Peer, options: SimulatorOptions, config: dict[str, Any], audio_out: AudioOutput | None = None
    ) -> None:
        self.options = options
        self.config = config
        self.audio_out = audio_out
        self.conversation = Conversation()
        self._peer = peer
        self._input = InputAudioBuffer()
        self._speech_item_id: str | None = None  # announced by speech_started, used by the commit
        self._active: Response | None = None  # the response writing to the default conversation
        self._running: list[Response] = []
        self._seen_items: set[str] = set()
        self._seen_instructions: str | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_audio_buffer_clear,
        }
        self._configure_input()

    @property
    def is_transcription(self) -> bool:
        return self.config["type"] == "transcription"

    async def start(self) -> None:
        await self.emit("session.created", {"session": self.config})

    async def handle(self, message: str | bytes) -> None:
        """Processes one client frame; never raises for bad input."""
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            logger.debug("unparseable client frame: %.200r", message)
            await self._error(ClientError("We could not parse the JSON body of your request: invalid JSON.",
                                          code="invalid_event"), None)
            return
        if not isinstance(event, dict):
            await self._error(ClientError("Invalid event: expected a JSON object.", code="invalid_event"), None)
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        event_type = event.get("type")
        handler = self._handlers.get(event_type) if isinstance(event_type, str) else None
        try:
            if event_type is None:
                raise ClientError("The 'type' field is missing.", code="invalid_event", param="type")
            if handler is None:
                supported = ", ".join(f"'{name}'" for name in self._handlers)
                raise ClientError(f"Invalid value: '{event_type}'. Supported values are: {supported}.",
                                  code="invalid_event", param="type")
            if self.is_transcription and event_type in _NOT_IN_TRANSCRIPTION:
                raise ClientError(f"'{event_type}' is not supported in transcription sessions.",
                                  code="invalid_event", param="type")
            await handler(event)
        except ClientError as exc:
            await self._error(exc, event_id)
        except Exception:
            logger.debug("failed to handle %s", event_type, exc_info=True)
            await self._error(ClientError("The server had an error while processing your request.",
                                          code="server_error", type="server_error"), event_id)

    async def stop(self) -> None:
        """Ends every running response without further events (the connection is gone)."""
        tasks = [r.task for r in self._running if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- what responses need (ResponseHost) ---

    async def emit(self, event_type: str, fields: dict[str, Any], *, delta: bool = False) -> None:
        if self._peer.closed:
            return
        event = {"type": event_type, "event_id": new_id("event"), **fields}
        if delta and self.options.stamp_events:
            event["sim_sent_ns"] = time.time_ns()
        await self._peer.send(orjson.dumps(event).decode())

    def add_output_item(self, item: Item) -> str | None:
        return self.conversation.insert(item)

    async def close(self, code: int, reason: str) -> None:
        await self._peer.close(code, reason)

    async def abort(self) -> None:
        await self._peer.abort()

    def response_finished(self, response: Response) -> None:
        self._running.remove(response)
        if self._active is response:
            self._active = None
        self._seen_items.update(response.plan.context_ids)
        self._seen_items.update(item["id"] for item in response.output)
        self._seen_instructions = response.plan.instructions
        if self.audio_out is not None:
            self.audio_out.end(response.id)

    # --- session ---

    async def _session_update(self, event: dict[str, Any]) -> None:
        self.config = apply_session_update(self.config, event.get("session"))
        self._configure_input()
        await self.emit("session.updated", {"session": self.config})

    def _configure_input(self) -> None:
        audio_input = self.config["audio"]["input"]
        self._input.configure(format_kind(audio_input.get("format")),
                              TurnDetection.from_config(audio_input.get("turn_detection")))

    def _turn_detection(self) -> dict[str, Any]:
        return self.config["audio"]["input"].get("turn_detection") or {}

    def _formats(self) -> tuple[str, str]:
        audio = self.config["audio"]
        return format_kind(audio["input"].get("format")), format_kind(audio.get("output", {}).get("format"))

    # --- input audio ---

    async def _append(self, event: dict[str, Any]) -> None:
        await self.append_audio(decode_audio(event.get("audio"), "audio"))

    async def append_audio(self, audio: bytes) -> None:
        """Adds input audio in the session's input format and acts on the turns it completes."""
        for change in self._input.append(audio):
            if isinstance(change, SpeechStarted):
                self._speech_item_id = new_id("item")
                await self.emit("input_audio_buffer.speech_started",
                                {"audio_start_ms": change.audio_start_ms, "item_id": self._speech_item_id})
                interrupt = self._turn_detection().get("interrupt_response", True)
                active = self._active
                if active is not None and interrupt:
                    await self._cancel(active, "turn_detected")
                if interrupt and self.audio_out is not None:
                    await self.audio_out.clear()  # the user talks over audio that is still playing
            else:
                item_id = self._speech_item_id or new_id("item")
                self._speech_item_id = None
                await self.emit("input_audio_buffer.speech_stopped",
                                {"audio_end_ms": change.audio_end_ms, "item_id": item_id})
                await self._commit_audio(change.audio, item_id)
                wants_response = self._turn_detection().get("create_response", True)
                if wants_response and not self.is_transcription and self._active is None:
                    await self._start_response({}, self.conversation.items())

    async def _commit(self, event: dict[str, Any]) -> None:
        buffered = self._input.duration_ms
        if buffered < 100:
            raise ClientError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item_id or new_id("item")
        self._speech_item_id = None
        await self._commit_audio(self._input.take(), item_id)

    async def _clear(self, event: dict[str, Any]) -> None:
        self._input.clear()
        self._speech_item_id = None
        await self.emit("input_audio_buffer.cleared", {})

    async def _commit_audio(self, audio: bytes, item_id: str) -> None:
        kind = self._formats()[0]
        item = Item(
            {"id": item_id, "type": "message", "status": "completed", "role": "user",
             "content": [{"type": "input_audio", "transcript": None}]},
            audio_ms={0: len(audio) / BYTES_PER_MS[kind]}, audio={0: audio}, audio_kind=kind,
        )
        previous = self.conversation.insert(item)
        await self.emit("input_audio_buffer.committed", {"previous_item_id": previous, "item_id": item_id})
        await self.emit("conversation.item.added", {"previous_item_id": previous, "item": item.data})
        await self.emit("conversation.item.done", {"previous_item_id": previous, "item": item.data})
        transcription = self.config["audio"]["input"].get("transcription")
        if transcription:
            await self._transcribe(item, transcription)

    async def _transcribe(self, item: Item, transcription: dict[str, Any]) -> None:
        audio_ms = item.audio_ms[0]
        transcript = f"({round(audio_ms)} ms of audio)"
        for piece in word_chunks(transcript):
            await self.emit("conversation.item.input_audio_transcription.delta",
                            {"item_id": item.id, "content_index": 0, "delta": piece, "obfuscation": obfuscation(piece)},
                            delta=True)
        item.data["content"][0]["transcript"] = transcript
        await self.emit("conversation.item.input_audio_transcription.completed", {
            "item_id": item.id, "content_index": 0, "transcript": transcript,
            "usage": transcription_usage(transcription.get("model", ""), audio_ms, transcript),
        })

    # --- conversation ---

    async def _item_create(self, event: dict[str, Any]) -> None:
        item = item_from_client(event.get("item"), *self._formats())
        if item.id in self.conversation:
            raise invalid_value("item.id", f"Item with id '{item.id}' already exists.")
        after = event.get("previous_item_id")
        if after is not None and after != "root" and after not in self.conversation:
            raise invalid_value("previous_item_id", f"Previous item with id '{after}' does not exist.")
        previous = self.conversation.insert(item, after)
        await self.emit("conversation.item.added", {"previous_item_id": previous, "item": item.data})
        await self.emit("conversation.item.done", {"previous_item_id": previous, "item": item.data})

    def _existing_item(self, event: dict[str, Any], action: str, code: str) -> Item:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise missing_parameter("item_id")
        item = self.conversation.get(item_id)
        if item is None:
            raise ClientError(f"Error {action} item: the item with id '{item_id}' does not exist.",
                              code=code, param="item_id")
        return item

    async def _item_retrieve(self, event: dict[str, Any]) -> None:
        item = self._existing_item(event, "retrieving", "item_retrieve_invalid_item_id")
        await self.emit("conversation.item.retrieved", {"item": item.retrieved()})

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        item = self._existing_item(event, "truncating", "item_truncate_invalid_item_id")
        index, end_ms = event.get("content_index"), event.get("audio_end_ms")
        index = 0 if index is None else index
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise missing_parameter("audio_end_ms")
        content = item.data.get("content", [])
        if item.role != "assistant" or not isinstance(index, int) or not 0 <= index < len(content) \
                or content[index]["type"] != "output_audio":
            raise invalid_value("content_index", "Only assistant audio content can be truncated.")
        length = item.audio_ms.get(index, 0)
        if end_ms > length:
            raise invalid_value("audio_end_ms",
                                f"Audio content of {round(length)}ms is already shorter than {end_ms}ms.")
        item.audio_ms[index] = end_ms
        content[index]["transcript"] = ""  # the model must not keep words the user never heard
        await self.emit("conversation.item.truncated",
                        {"item_id": item.id, "content_index": index, "audio_end_ms": end_ms})

    async def _item_delete(self, event: dict[str, Any]) -> None:
        item = self._existing_item(event, "deleting", "item_delete_invalid_item_id")
        self.conversation.delete(item.id)
        await self.emit("conversation.item.deleted", {"item_id": item.id})

    # --- responses ---

    async def _response_create(self, event: dict[str, Any]) -> None:
        params = check_response_params(event.get("response"))
        if params.get("conversation") != "none" and self._active is not None:
            raise ClientError(
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        await self._start_response(params, self._context(params))

    def _context(self, params: dict[str, Any]) -> list[Item]:
        if "input" not in params:
            return self.conversation.items()
        context = []
        for index, raw in enumerate(params["input"]):
            if raw.get("type") == "item_reference":
                item = self.conversation.get(raw.get("id"))
                if item is None:
                    raise invalid_value(f"response.input[{index}].id",
                                        f"Item with id '{raw.get('id')}' does not exist.")
                context.append(item)
            else:
                context.append(item_from_client(raw, *self._formats()))
        return context

    async def _start_response(self, params: dict[str, Any], context: list[Item]) -> None:
        plan = plan_response(
            session=self.config, params=params, context=context, seen_items=self._seen_items,
            seen_instructions=self._seen_instructions, options=self.options, conversation_id=self.conversation.id,
        )
        response = Response(plan, self)
        self._running.append(response)
        if response.in_conversation:
            self._active = response
        response.start()

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        if response_id:
            target = next((r for r in self._running if r.id == response_id), None)
        else:
            target = self._active or (self._running[-1] if self._running else None)
        if target is None:
            raise ClientError("Cancellation failed: no active response found", code="response_cancel_not_active")
        await self._cancel(target, "client_cancelled")

    async def _cancel(self, response: Response, reason: str) -> None:
        """Cancels and waits for the response's closing events, so they precede whatever comes next."""
        response.cancel(reason)
        if response.task is not None:
            await response.task

    async def _output_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        if self.audio_out is None:
            raise ClientError("'output_audio_buffer.clear' is only supported for WebRTC and SIP connections.",
                              code="invalid_event", param="type")
        await self.audio_out.clear()

    async def _error(self, exc: ClientError, client_event_id: str | None) -> None:
        logger.debug("client error %s: %s", exc.code, exc.message)
        await self.emit("error", {"error": exc.payload(client_event_id)})
