"""Gemini Live behind OpenAI GA: one stateful translator per session, on the provider side of the relay.

The core sees only GA events. This dialect turns the client's GA events into Gemini Live client messages
(`outbound`), Gemini's server messages into GA events (`inbound`), and answers in the provider's name what an
OpenAI server confirms and Gemini does not (`answers`: a created item, a committed or cleared buffer). It
synthesizes every id (`event_`, `resp_`, `item_`, `call_`) and the created/added/done bracketing in GA order.

The first `setup`: Gemini takes its whole configuration once, before anything else, and never again on that
connection. The gateway therefore sends `setup` with the client's first message: a `session.update` becomes the
`setup` (merged over the defaults), any other first message is preceded by the default `setup`. A client that
waits for `session.created` before it says anything gets the default `setup` after `gemini.setup_wait_ms` (the
transport asks for `opening()`); its later `session.update` then opens the next connection with the new setup. `setupComplete`
becomes `session.created` (and `session.updated` when a `session.update` asked for it) with the effective GA
session. A `session.update` after that which changes nothing Gemini was told is answered `session.updated`; one that
changes the setup is applied on the next connection (resumed with the latest handle, between turns) and answered
`session.updated` once that connection's `setupComplete` arrives; without a handle after a turn it is refused
with an error naming the fields.

Connections end: after `goAway` the next connection opens at the first moment no response is open, resumed with
the latest `sessionResumptionUpdate` handle (the relay's `Reconnect`), and the client sees nothing of it.

Usage: Gemini Live reports `usageMetadata` per turn (each turn's prompt is the whole context again), possibly on
several messages of one turn, each the turn so far; the last one before the GA response ends is its usage, so every
token is billed once. Input transcription is part of the Live model's own usage: its `completed` event carries zero
transcription tokens.

What Gemini cannot express is refused with an OpenAI-shaped error naming it, never dropped: other audio formats
than 24 kHz PCM16, `noise_reduction`, `prompt`, `include`, `tool_choice` other than auto, VAD without
`create_response`, out-of-band or per-response overrides in `response.create`, deleting or truncating an item
Gemini already has, `output_audio_buffer.*`. `response.cancel` is kept at the gateway: the rest of Gemini's turn is
not relayed and the response ends `cancelled` when Gemini completes the turn (with that turn's usage).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any

import orjson

from bifrost_rt import _native, errors
from bifrost_rt.dialects.seam import Untranslatable
from bifrost_rt.errors import RealtimeError

INPUT_MIME = "audio/pcm;rate=16000"
GEMINI_VOICES = frozenset(
    "Puck Charon Kore Fenrir Aoede Leda Orus Zephyr Achernar Achird Algenib Algieba Alnilam Autonoe Callirrhoe "
    "Despina Enceladus Erinome Gacrux Iapetus Laomedeia Pulcherrima Rasalgethi Sadachbia Sadaltager Schedar "
    "Sulafat Umbriel Vindemiatrix Zubenelgenubi".split()
)
DEFAULT_VOICE = "Puck"
RETAINED_ITEMS = 256  # items kept for `conversation.item.retrieve`
_PCM = {"type": "audio/pcm", "rate": 24000}
# GA session fields that go into `setup`; a later update that changes one of them cannot be applied in place.
_SETUP_FIELDS = ("output_modalities", "instructions", "tools", "tool_choice", "max_output_tokens", "truncation", "audio")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def _refuse(message: str, param: str | None = None, code: str = "unsupported_on_provider") -> Untranslatable:
    return Untranslatable(RealtimeError("invalid_request_error", code, message, param=param))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def default_session(model: str | None) -> dict[str, Any]:
    """The GA session the gateway opens a Gemini session with when the client sets nothing."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": _id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "audio": {
            "input": {
                "format": dict(_PCM),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                    "create_response": True, "interrupt_response": True, "idle_timeout_ms": None,
                },
            },
            "output": {"format": dict(_PCM), "voice": DEFAULT_VOICE, "speed": 1.0},
        },
        "include": None,
    }


def merge_session(session: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `session` (nested objects merged, lists replaced), with Gemini's limits checked."""
    merged = _merge(session, {k: v for k, v in update.items() if k not in ("type", "model", "object", "id")})
    audio = _dict(merged.get("audio"))
    audio_in, audio_out = _dict(audio.get("input")), _dict(audio.get("output"))
    for side, value in (("input", audio_in), ("output", audio_out)):
        fmt = _dict(value.get("format"))
        if fmt.get("type", "audio/pcm") != "audio/pcm" or fmt.get("rate", 24000) != 24000:
            raise _refuse(f"A Gemini model takes and gives 24 kHz audio/pcm only; got {fmt}.", f"session.audio.{side}.format")
        value["format"] = dict(_PCM)
    if audio_in.get("noise_reduction") is not None:
        raise _refuse("A Gemini model has no input noise reduction.", "session.audio.input.noise_reduction")
    detection = audio_in.get("turn_detection")
    if detection is not None and detection.get("create_response") is False:
        raise _refuse("A Gemini model always answers the speech it detects; use turn_detection null to decide yourself.",
                      "session.audio.input.turn_detection.create_response")
    voice = audio_out.get("voice")
    audio_out["voice"] = voice if voice in GEMINI_VOICES else DEFAULT_VOICE
    for name in ("prompt", "include"):
        if merged.get(name) is not None:
            raise _refuse(f"A Gemini model does not support session.{name}.", f"session.{name}")
    if merged.get("tool_choice", "auto") != "auto":
        raise _refuse("A Gemini model chooses its tools itself: tool_choice can only be auto.", "session.tool_choice")
    for index, tool in enumerate(merged.get("tools") or []):
        if _dict(tool).get("type") != "function" or not isinstance(tool.get("name"), str):
            raise _refuse("A Gemini model takes function tools only.", f"session.tools[{index}]")
    if merged.get("output_modalities") not in (["audio"], ["text"]):
        raise _refuse("output_modalities must be ['audio'] or ['text'].", "session.output_modalities")
    return merged


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("format", "turn_detection", "transcription"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def setup_message(session: dict[str, Any], model: str, handle: str | None = None) -> dict[str, Any]:
    """The Gemini `setup` for a GA session."""
    audio = _dict(session.get("audio"))
    audio_in, audio_out = _dict(audio.get("input")), _dict(audio.get("output"))
    text = session.get("output_modalities") == ["text"]
    generation: dict[str, Any] = {"responseModalities": ["TEXT" if text else "AUDIO"]}
    if not text:
        generation["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": audio_out.get("voice", DEFAULT_VOICE)}}}
    if isinstance(session.get("max_output_tokens"), int):
        generation["maxOutputTokens"] = session["max_output_tokens"]
    setup: dict[str, Any] = {"model": model if "/" in model else f"models/{model}", "generationConfig": generation}
    if session.get("instructions"):
        setup["systemInstruction"] = {"parts": [{"text": session["instructions"]}]}
    declarations = [
        {k: v for k, v in (("name", t["name"]), ("description", t.get("description")), ("parametersJsonSchema", t.get("parameters"))) if v}
        for t in session.get("tools") or []
    ]
    if declarations:
        setup["tools"] = [{"functionDeclarations": declarations}]
    detection = audio_in.get("turn_detection")
    if detection is None:
        setup["realtimeInputConfig"] = {"automaticActivityDetection": {"disabled": True}}
    else:
        automatic: dict[str, Any] = {}
        if isinstance(detection.get("silence_duration_ms"), int):
            automatic["silenceDurationMs"] = detection["silence_duration_ms"]
        if isinstance(detection.get("prefix_padding_ms"), int):
            automatic["prefixPaddingMs"] = detection["prefix_padding_ms"]
        setup["realtimeInputConfig"] = {"automaticActivityDetection": automatic}
    if audio_in.get("transcription") is not None:
        setup["inputAudioTranscription"] = {}
    if not text:
        setup["outputAudioTranscription"] = {}
    if session.get("truncation", "auto") != "disabled":
        setup["contextWindowCompression"] = {"slidingWindow": {}}  # also lifts the 15-minute audio-only cap
    setup["sessionResumption"] = {"handle": handle} if handle else {}
    return {"setup": setup}


def ga_usage(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Gemini `usageMetadata` as GA `response.usage` (per-modality details, cached tokens)."""
    meta = _dict(metadata)

    def by_modality(field: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in meta.get(field) or []:
            modality = _dict(entry).get("modality", "")
            counts[modality] = counts.get(modality, 0) + int(entry.get("tokenCount") or 0)
        return counts

    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    details = by_modality("promptTokensDetails")
    for modality, count in by_modality("toolUsePromptTokensDetails").items():
        details[modality] = details.get(modality, 0) + count
    audio_in = details.get("AUDIO", 0)
    image_in = details.get("IMAGE", 0) + details.get("VIDEO", 0)
    text_in = prompt - audio_in - image_in if details else prompt
    cached = int(meta.get("cachedContentTokenCount") or 0)
    cached_details = by_modality("cacheTokensDetails")
    cached_audio = cached_details.get("AUDIO", 0)
    cached_image = cached_details.get("IMAGE", 0) + cached_details.get("VIDEO", 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    response = int(meta.get("responseTokenCount") or meta.get("candidatesTokenCount") or 0)
    out_details = by_modality("responseTokensDetails") or by_modality("candidatesTokensDetails")
    audio_out = out_details.get("AUDIO", 0)
    text_out = response - audio_out + thoughts  # thinking is billed as text output
    return {
        "total_tokens": prompt + response + thoughts,
        "input_tokens": prompt,
        "output_tokens": response + thoughts,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "image_tokens": image_in,
            "cached_tokens": cached,
            "cached_tokens_details": {
                "text_tokens": cached - cached_audio - cached_image,
                "audio_tokens": cached_audio,
                "image_tokens": cached_image,
            },
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


class _Response:
    """The GA response the gateway is building from one Gemini generation."""

    def __init__(self, modalities: list[str], voice: str, metadata: Any) -> None:
        self.id = _id("resp")
        self.modalities = modalities
        self.voice = voice
        self.metadata = metadata
        self.output: list[dict[str, Any]] = []  # finished items
        self.message: dict[str, Any] | None = None  # the assistant message being streamed
        self.text = ""  # its text or transcript
        self.audio = False
        self.cancelled = False  # by the client: Gemini's turn goes on unrelayed

    def body(self, status: str, details: dict[str, Any] | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": details,
            "output": self.output if status != "in_progress" else [],
            "conversation_id": None,
            "output_modalities": self.modalities,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": dict(_PCM), "voice": self.voice}},
            "usage": usage,
            "metadata": self.metadata,
        }


class GeminiDialect:
    """One session's Gemini Live translation (not thread-safe, not shared)."""

    identity = False

    def __init__(self, requested_model: str | None, upstream_model: str) -> None:
        self.upstream_model = upstream_model
        self.session = default_session(requested_model or upstream_model)
        self.setup_sent = False
        self._announce_update = False
        self._answers: list[str] = []
        self._resampler = _native.Resampler24To16()
        self._texts: list[dict[str, Any]] = []  # text turns for the next clientContent
        self._tool_outputs: list[dict[str, Any]] = []
        self._calls: dict[str, str] = {}  # call_id → name, awaiting their output
        self._cancelled_calls: set[str] = set()
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._provider_truncated: set[str] = set()
        self._audio_ms_of: OrderedDict[str, float] = OrderedDict()  # assistant item → ms of audio it carries
        self._last_item: str | None = None
        self._audio_ms = 0.0  # input audio appended on this session so far
        self._speech_from_ms: float | None = None  # start of input audio not yet in an item
        self._activity_open = False  # manual mode: activityStart sent
        self._input_item: str | None = None  # the user audio item of the current turn
        self._input_transcript = ""
        self._speech_announced = False  # speech_started already sent for the pending input (an interruption)
        self._response: _Response | None = None
        self._metadata: Any = None  # of the response.create waiting for its response
        self._usage: dict[str, Any] | None = None  # the latest usageMetadata of Gemini's current turn
        self.resumption_handle: str | None = None
        self.go_away: str | None = None  # `goAway.timeLeft` once Gemini announced the end of the connection
        self.turns = 0
        self._changed_setup = False  # a session.update waits for the next connection
        self._reopening = False  # the next connection's setupComplete is still to come
        self._created = False  # session.created sent

    # ---- helpers -------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> str:
        return orjson.dumps({"type": kind, "event_id": _id("event"), **fields}).decode()

    def _answer(self, kind: str, **fields: Any) -> None:
        self._answers.append(self._event(kind, **fields))

    def answers(self) -> list[str]:
        out, self._answers = self._answers, []
        return out

    def _remember(self, item: dict[str, Any]) -> str | None:
        """Keeps `item` for retrieval; the previous item's id (for `previous_item_id`)."""
        previous = self._last_item
        self._items[item["id"]] = item
        self._items.move_to_end(item["id"])
        while len(self._items) > RETAINED_ITEMS:
            self._items.popitem(last=False)
        self._last_item = item["id"]
        return previous

    def _voice(self) -> str:
        return _dict(_dict(self.session.get("audio")).get("output")).get("voice", DEFAULT_VOICE)

    def _manual(self) -> bool:
        return _dict(_dict(self.session.get("audio")).get("input")).get("turn_detection") is None

    def _setup(self) -> list[str | bytes]:
        if self.setup_sent:
            return []
        self.setup_sent = True
        return [orjson.dumps(setup_message(self.session, self.upstream_model, self.resumption_handle)).decode()]

    @staticmethod
    def _json(message: str | bytes) -> dict[str, Any]:
        try:
            value = orjson.loads(message)
        except orjson.JSONDecodeError:
            raise _refuse("The provider sent a message that is not JSON.", code="upstream_protocol_error") from None
        return _dict(value)

    # ---- client (GA) → Gemini --------------------------------------------------------------------

    def outbound(self, event: str) -> list[str | bytes]:
        message = self._json(event)
        kind = message.get("type")
        if kind == "input_audio_buffer.append":
            return self._append(message)
        if kind == "session.update":
            return self._session_update(_dict(message.get("session")))
        out = self._setup()
        handler = _CLIENT_EVENTS.get(kind)  # type: ignore[arg-type]
        if handler is None:
            raise _refuse(f"'{kind}' cannot be sent to a Gemini model.", "type")
        return out + handler(self, message)

    def _session_update(self, update: dict[str, Any]) -> list[str | bytes]:
        if update.get("type", "realtime") != "realtime":
            raise _refuse("A Gemini model serves realtime sessions, not transcription sessions.", "session.type")
        merged = merge_session(self.session, update)
        if not self.setup_sent:
            self.session = merged
            self._announce_update = True
            return self._setup()
        changed = [name for name in _SETUP_FIELDS if merged.get(name) != self.session.get(name)]
        if changed and self.turns and self.resumption_handle is None:
            fields = ", ".join(f"session.{name}" for name in changed)
            raise _refuse(f"This Gemini session cannot be resumed, so its configuration cannot change ({fields}).", f"session.{changed[0]}")
        self.session = merged
        if changed:  # Gemini takes a configuration only as a connection opens: the next one, between turns
            self._changed_setup = True
        else:
            self._answer("session.updated", session=self.session)
        return []

    # ---- the next connection (Reconnecting) --------------------------------------------------------

    def reconnect_due(self) -> list[str | bytes] | RealtimeError | None:
        if self._reopening or not (self.go_away or self._changed_setup) or self._response is not None:
            return None
        if self.turns and self.resumption_handle is None:
            return errors.upstream_not_resumable("Gemini gave no resumption handle")
        self._reopening = True
        self.setup_sent = True
        return [orjson.dumps(setup_message(self.session, self.upstream_model, self.resumption_handle)).decode()]

    def reconnect_failed(self) -> None:
        self._reopening = False

    def opening(self) -> list[str | bytes]:
        return self._setup()

    def _append(self, message: dict[str, Any]) -> list[str | bytes]:
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise _refuse("'audio' must be a base64 string.", "audio", code="invalid_value")
        try:
            resampled = self._resampler.base64(audio)
        except ValueError as exc:
            raise _refuse(f"'audio' is not valid base64: {exc}.", "audio", code="invalid_value") from None
        out = self._setup()
        if self._speech_from_ms is None:
            self._speech_from_ms = self._audio_ms
        self._audio_ms += len(audio) * 3 / 4 / 48  # 24 kHz PCM16: 48 bytes per ms
        if self._manual() and not self._activity_open:
            self._activity_open = True
            out.append('{"realtimeInput":{"activityStart":{}}}')
        out.append(orjson.dumps({"realtimeInput": {"audio": {"data": resampled, "mimeType": INPUT_MIME}}}).decode())
        return out

    def _commit(self, message: dict[str, Any]) -> list[str | bytes]:
        if self._speech_from_ms is None:
            raise _refuse("Error committing input audio buffer: buffer is empty.", code="input_audio_buffer_commit_empty")
        self._answers += self._audio_item()
        if self._manual():
            return []  # the activity ends with the response.create that asks for the answer, as in OpenAI
        return ['{"realtimeInput":{"audioStreamEnd":true}}']

    def _audio_item(self) -> list[str]:
        """The user audio item for the input since the last one: committed, added, done (GA order)."""
        item_id = self._input_item or _id("item")
        self._input_item = item_id
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        previous = self._remember(item)
        self._speech_from_ms = None
        self._input_transcript = ""
        return [
            self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            self._event("conversation.item.added", previous_item_id=previous, item=item),
            self._event("conversation.item.done", previous_item_id=previous, item=item),
        ]

    def _clear(self, message: dict[str, Any]) -> list[str | bytes]:
        # Gemini has already heard what was sent; the gateway can only forget it for the next item.
        self._speech_from_ms = None
        self._answer("input_audio_buffer.cleared")
        return []

    def _item_create(self, message: dict[str, Any]) -> list[str | bytes]:
        item = _dict(message.get("item"))
        kind = item.get("type")
        item_id = item.get("id") or _id("item")
        if kind == "message":
            role = item.get("role")
            parts = []
            for index, part in enumerate(item.get("content") or []):
                if part.get("type") not in ("input_text", "output_text", "text"):
                    raise _refuse("A Gemini model takes text conversation items only (send audio by appending it).",
                                  f"item.content[{index}].type")
                parts.append({"text": part.get("text") or ""})
            self._texts.append({"role": "model" if role == "assistant" else "user", "parts": parts})
            content = [{"type": "output_text" if role == "assistant" else "input_text", "text": p["text"]} for p in parts]
            stored = {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": "completed", "content": content}
        elif kind == "function_call_output":
            call_id = str(item.get("call_id"))
            if call_id in self._cancelled_calls:
                raise _refuse("The Gemini model cancelled this function call; its output is no longer awaited.", "item.call_id")
            name = self._calls.pop(call_id, None)
            if name is None:
                raise _refuse(f"No function call '{call_id}' awaits an output.", "item.call_id", code="invalid_value")
            output = item.get("output")
            try:
                response = orjson.loads(output) if isinstance(output, str) else output
            except orjson.JSONDecodeError:
                response = output
            self._tool_outputs.append({"id": call_id, "name": name, "response": response if isinstance(response, dict) else {"output": response}})
            stored = {"id": item_id, "object": "realtime.item", "type": "function_call_output", "call_id": call_id, "output": output, "status": "completed"}
        else:
            raise _refuse(f"A Gemini model cannot take a '{kind}' item.", "item.type")
        previous = self._remember(stored)
        self._answer("conversation.item.added", previous_item_id=previous, item=stored)
        self._answer("conversation.item.done", previous_item_id=previous, item=stored)
        return []

    def _response_create(self, message: dict[str, Any]) -> list[str | bytes]:
        response = _dict(message.get("response"))
        for name in response:
            if name != "metadata":
                raise _refuse(f"A Gemini model cannot take response.{name}: its responses use the session's configuration.", f"response.{name}")
        if self._response is not None and not self._response.cancelled:
            raise _refuse(f"Conversation already has an active response in progress: {self._response.id}.",
                          code="conversation_already_has_active_response")
        self._metadata = response.get("metadata")
        out: list[str | bytes] = []
        if self._tool_outputs:  # Gemini goes on by itself after the tool response
            out.append(orjson.dumps({"toolResponse": {"functionResponses": self._tool_outputs}}).decode())
            self._tool_outputs = []
        # Manual turns: committed audio ends its activity now; text items go first, without ending the turn.
        ends_activity = self._activity_open and self._speech_from_ms is None
        if self._texts or not (out or ends_activity):
            turn = {"turns": self._texts, "turnComplete": not ends_activity}
            out.append(orjson.dumps({"clientContent": turn}).decode())
            self._texts = []
        if ends_activity:
            self._activity_open = False
            out.append('{"realtimeInput":{"activityEnd":{}}}')
        return out

    def _response_cancel(self, message: dict[str, Any]) -> list[str | bytes]:
        response = self._response
        if response is None or response.cancelled:
            raise _refuse("Cancellation failed: no active response found.", code="response_cancel_not_active")
        response.cancelled = True  # Gemini cannot stop a turn; its rest is not relayed (see the module doc)
        return []

    def _item_retrieve(self, message: dict[str, Any]) -> list[str | bytes]:
        item = self._items.get(message.get("item_id"))  # type: ignore[arg-type]
        if item is None:
            raise _refuse(f"Item with item_id not found: {message.get('item_id')}.", "item_id", code="item_not_found")
        self._answer("conversation.item.retrieved", item=item)
        return []

    def _item_delete(self, message: dict[str, Any]) -> list[str | bytes]:
        raise _refuse("A Gemini model cannot forget a conversation item.", "item_id")

    def _item_truncate(self, message: dict[str, Any]) -> list[str | bytes]:
        item_id = str(message.get("item_id"))
        end_ms = message.get("audio_end_ms")
        whole = isinstance(end_ms, int) and item_id in self._audio_ms_of and end_ms >= int(self._audio_ms_of[item_id])
        # Nothing to cut (all of it was played), or Gemini cut it itself: confirmed. Cutting more is not possible.
        if item_id not in self._provider_truncated and not whole:
            raise _refuse("A Gemini model cannot truncate an item it did not cut short itself.", "item_id")
        self._answer("conversation.item.truncated", item_id=item_id, content_index=message.get("content_index", 0),
                     audio_end_ms=message.get("audio_end_ms", 0))
        return []

    # ---- Gemini → client (GA) --------------------------------------------------------------------

    def inbound(self, message: str | bytes) -> list[str]:
        server = self._json(message)
        out: list[str] = []
        if "setupComplete" in server:
            # The client hears of a connection's setup once (session.created), then only what it asked to change;
            # a replaced connection's late setupComplete says nothing new.
            announce = self._announce_update
            if self._reopening:
                self._reopening, self.go_away = False, None
                announce = announce or self._changed_setup
                self._changed_setup = False
            if not self._created:
                self._created = True
                out.append(self._event("session.created", session=self.session))
            if announce:
                self._announce_update = False
                out.append(self._event("session.updated", session=self.session))
        if "usageMetadata" in server:
            self._usage = server["usageMetadata"]  # the turn so far: the latest replaces, never adds
        content = _dict(server.get("serverContent"))
        if content.get("interrupted"):
            out += self._interrupted()
        transcription = _dict(content.get("inputTranscription")).get("text")
        if transcription:
            out += self._input_transcription(transcription)
        for part in _dict(content.get("modelTurn")).get("parts") or []:
            out += self._model_part(_dict(part))
        spoken = _dict(content.get("outputTranscription")).get("text")
        if spoken:
            out += self._transcript(spoken)
        if "toolCall" in server:
            out += self._tool_call(_dict(server["toolCall"]))
        if "toolCallCancellation" in server:
            self._cancelled_calls.update(_dict(server["toolCallCancellation"]).get("ids") or [])
        if content.get("turnComplete"):
            out += self._turn_complete()
        update = _dict(server.get("sessionResumptionUpdate"))
        if update.get("resumable") and update.get("newHandle"):
            self.resumption_handle = update["newHandle"]
        if "goAway" in server:
            self.go_away = str(_dict(server["goAway"]).get("timeLeft") or "0s")
        return out

    def _turn_input(self) -> list[str]:
        """Server VAD: Gemini heard the user; the GA events OpenAI's VAD would have sent for it."""
        if self._speech_from_ms is None or self._manual():
            return []
        start = self._speech_from_ms
        item_id = self._input_item or _id("item")
        self._input_item = item_id
        out = []
        if not self._speech_announced:
            out.append(self._event("input_audio_buffer.speech_started", audio_start_ms=int(start), item_id=item_id))
        self._speech_announced = False
        out.append(self._event("input_audio_buffer.speech_stopped", audio_end_ms=int(self._audio_ms), item_id=item_id))
        return out + self._audio_item()

    def _input_transcription(self, text: str) -> list[str]:
        out = self._turn_input()
        if self._input_item is None:
            return out
        self._input_transcript += text
        out.append(self._event("conversation.item.input_audio_transcription.delta", item_id=self._input_item, content_index=0, delta=text))
        return out

    def _open(self) -> list[str]:
        out = self._turn_input()
        if self._response is None:
            self._response = _Response(self.session["output_modalities"], self._voice(), self._metadata)
            self._metadata = None
            out.append(self._event("response.created", response=self._response.body("in_progress")))
        return out

    def _open_message(self, audio: bool) -> list[str]:
        out = self._open()
        response = self._response
        assert response is not None
        if response.message is None:
            item = {"id": _id("item"), "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            response.message, response.text, response.audio = item, "", audio
            index = len(response.output)
            previous = self._remember(item)
            part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
            out += [
                self._event("response.output_item.added", response_id=response.id, output_index=index, item=item),
                self._event("conversation.item.added", previous_item_id=previous, item=item),
                self._event("response.content_part.added", response_id=response.id, item_id=item["id"], output_index=index, content_index=0, part=part),
            ]
        return out

    def _model_part(self, part: dict[str, Any]) -> list[str]:
        if self._response is not None and self._response.cancelled:
            return []
        inline = _dict(part.get("inlineData"))
        if inline.get("data"):
            out = self._open_message(audio=True)
            response = self._response
            assert response is not None and response.message is not None
            item_id = response.message["id"]
            self._audio_ms_of[item_id] = self._audio_ms_of.get(item_id, 0.0) + len(inline["data"]) * 3 / 4 / 48
            if len(self._audio_ms_of) > RETAINED_ITEMS:
                self._audio_ms_of.popitem(last=False)
            return out + [self._event("response.output_audio.delta", response_id=response.id, item_id=item_id,
                                      output_index=len(response.output), content_index=0, delta=inline["data"])]
        text = part.get("text")
        if isinstance(text, str) and text and not part.get("thought"):
            out = self._open_message(audio=False)
            response = self._response
            assert response is not None and response.message is not None
            if response.audio:  # text beside audio: the spoken words
                return out + self._transcript(text)
            response.text += text
            return out + [self._event("response.output_text.delta", response_id=response.id, item_id=response.message["id"],
                                      output_index=len(response.output), content_index=0, delta=text)]
        return []

    def _transcript(self, text: str) -> list[str]:
        if self._response is not None and self._response.cancelled:
            return []
        out = self._open_message(audio=True)
        response = self._response
        assert response is not None and response.message is not None
        if not response.audio:
            return out
        response.text += text
        return out + [self._event("response.output_audio_transcript.delta", response_id=response.id, item_id=response.message["id"],
                                  output_index=len(response.output), content_index=0, delta=text)]

    def _close_message(self, status: str) -> list[str]:
        response = self._response
        if response is None or response.message is None:
            return []
        item, index = response.message, len(response.output)
        base = {"response_id": response.id, "item_id": item["id"], "output_index": index, "content_index": 0}
        if response.audio:
            part = {"type": "audio", "transcript": response.text}
            content = {"type": "output_audio", "transcript": response.text}
            out = [self._event("response.output_audio.done", **base),
                   self._event("response.output_audio_transcript.done", **base, transcript=response.text)]
        else:
            part = {"type": "text", "text": response.text}
            content = {"type": "output_text", "text": response.text}
            out = [self._event("response.output_text.done", **base, text=response.text)]
        item = {**item, "status": status, "content": [content]}
        self._items[item["id"]] = item
        response.output.append(item)
        response.message = None
        out += [
            self._event("response.content_part.done", **base, part=part),
            self._event("response.output_item.done", response_id=response.id, output_index=index, item=item),
            self._event("conversation.item.done", previous_item_id=None, item=item),
        ]
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[str]:
        out = self._open()
        response = self._response
        assert response is not None
        out += self._close_message("completed")
        for function in call.get("functionCalls") or []:
            call_id = function.get("id") or _id("call")
            name = function.get("name") or ""
            arguments = orjson.dumps(function.get("args") or {}).decode()
            self._calls[call_id] = name
            index = len(response.output)
            item = {"id": _id("item"), "object": "realtime.item", "type": "function_call", "status": "in_progress",
                    "name": name, "call_id": call_id, "arguments": ""}
            previous = self._remember(item)
            done = {**item, "status": "completed", "arguments": arguments}
            self._items[item["id"]] = done
            response.output.append(done)
            ids = {"response_id": response.id, "item_id": item["id"], "output_index": index, "call_id": call_id}
            out += [
                self._event("response.output_item.added", response_id=response.id, output_index=index, item=item),
                self._event("conversation.item.added", previous_item_id=previous, item=item),
                self._event("response.function_call_arguments.delta", **ids, delta=arguments),
                self._event("response.function_call_arguments.done", **ids, name=name, arguments=arguments),
                self._event("response.output_item.done", response_id=response.id, output_index=index, item=done),
                self._event("conversation.item.done", previous_item_id=previous, item=done),
            ]
        # Gemini waits for the tool response before it completes the turn; the GA response ends with the calls.
        return out + self._done("completed")

    def _done(self, status: str, reason: str | None = None) -> list[str]:
        response = self._response
        if response is None:
            return []
        out = self._close_message("completed" if status == "completed" else "incomplete")
        details = None if reason is None else {"type": status, "reason": reason}
        out.append(self._event("response.done", response=response.body(status, details, ga_usage(self._usage))))
        self._response = None
        self._usage = None
        self.turns += 1
        return out

    def _complete_transcription(self) -> list[str]:
        if self._input_item is None or not self._input_transcript:
            self._input_item = None
            return []
        usage = {"type": "tokens", "input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        event = self._event("conversation.item.input_audio_transcription.completed", item_id=self._input_item, content_index=0,
                            transcript=self._input_transcript, usage=usage)
        item = self._items.get(self._input_item)
        if item is not None:
            item["content"] = [{"type": "input_audio", "transcript": self._input_transcript}]
        self._input_item, self._input_transcript = None, ""
        return [event]

    def _turn_complete(self) -> list[str]:
        out = self._complete_transcription()
        response = self._response
        if response is None:
            self._usage = None
            return out
        if response.cancelled:
            return out + self._done("cancelled", "client_cancelled")
        return out + self._done("completed")

    def _interrupted(self) -> list[str]:
        """The user spoke over the answer: GA's speech_started, then the response ends cancelled/turn_detected."""
        response = self._response
        if response is not None and response.cancelled:  # the client's own cancel, overtaken by its next turn
            return self._done("cancelled", "client_cancelled")
        item_id = _id("item")
        self._input_item = item_id
        start = self._speech_from_ms if self._speech_from_ms is not None else self._audio_ms
        out = [self._event("input_audio_buffer.speech_started", audio_start_ms=int(start), item_id=item_id)]
        self._speech_announced = True
        if response is None:
            return out
        if response.message is not None:
            self._provider_truncated.add(response.message["id"])
        return out + self._done("cancelled", "turn_detected")


_CLIENT_EVENTS = {
    "input_audio_buffer.commit": GeminiDialect._commit,
    "input_audio_buffer.clear": GeminiDialect._clear,
    "conversation.item.create": GeminiDialect._item_create,
    "conversation.item.retrieve": GeminiDialect._item_retrieve,
    "conversation.item.delete": GeminiDialect._item_delete,
    "conversation.item.truncate": GeminiDialect._item_truncate,
    "response.create": GeminiDialect._response_create,
    "response.cancel": GeminiDialect._response_cancel,
}
