"""One response: what it will say (the plan) and the GA event sequence that delivers it.

Replies are deterministic:
- when the context ends with a `function_call_output`: "The function returned: <output>";
- otherwise from the latest user message: with text T, "You said: T" (`[sim:...]` directives removed); with only
  audio, "I heard N ms of audio."; else "I received your message.";
- with no user message at all: "Hello from the simulator."
Instead of a message, the response calls a function when the effective tools hold a function tool whose name appears
(case-insensitively) in the latest user text, when `tool_choice` names one, or when `tool_choice` is "required"
(first function tool). The call's arguments are `{"query": "<user text>"}`, streamed in a few deltas.

`["text"]` output streams `output_text` deltas of a few words each; `["audio"]` streams transcript deltas spread over
the audio deltas (see audio.py for the tone and `SimulatorOptions` for pacing). On a WebRTC call the audio goes to the
call's outgoing track (an `AudioOutput`) instead of `response.output_audio.delta` events.

Faults (`SimulatorOptions.fault`, `metadata["sim.fault"]`, or `[sim:fault=...]` in the latest user text): `stall`
sends `response.created` and nothing more until the response is cancelled; `drop`, `failed` and `close:<code>`
strike after `FAULT_AFTER_DELTAS` deltas (or at the end of a shorter response): `drop` aborts the TCP connection
without a close frame, `close` closes the WebSocket with that code and reason "server_error", and `failed` ends
the response with status `failed`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from bifrost_rt.tools.simulator.audio import format_kind, tone_chunk_b64
from bifrost_rt.tools.simulator.config import DEFAULT_INSTRUCTIONS
from bifrost_rt.tools.simulator.conversation import Item
from bifrost_rt.tools.simulator.events import invalid_value
from bifrost_rt.tools.simulator.ids import new_id, obfuscation
from bifrost_rt.tools.simulator.options import MAX_AUDIO_MS, Fault, SimulatorOptions, parse_fault
from bifrost_rt.tools.simulator.usage import Tokens, output_audio_tokens, response_usage, text_tokens

logger = logging.getLogger("bifrost_rt.simulator")

FAULT_AFTER_DELTAS = 2
WORDS_PER_DELTA = 3
ARGUMENT_DELTAS = 4
TOKEN_RATE_LIMIT = 40_000
FAILURE = {
    "type": "server_error",
    "code": "server_error",
    "message": "The server had an error while processing your request. Sorry about that!",
}

_DIRECTIVE = re.compile(r"\[sim:([a-z_]+)=([^\]]*)\]")
_WORDS = re.compile(r"\S+\s*|\s+")


@dataclass
class ResponsePlan:
    response_id: str
    conversation_id: str | None  # None for an out-of-band response
    modalities: list[str]
    audio_output: dict[str, Any]
    max_output_tokens: Any
    metadata: dict[str, str] | None
    instructions: str
    text: str
    function_call: dict[str, str] | None  # name, call_id, arguments
    audio_ms: int
    fault: Fault | None
    input_tokens: Tokens
    cached_tokens: Tokens
    context_ids: list[str]


def plan_response(
    *,
    session: dict[str, Any],
    params: dict[str, Any],
    context: list[Item],
    seen_items: set[str],
    seen_instructions: str | None,
    options: SimulatorOptions,
    conversation_id: str,
) -> ResponsePlan:
    """Decides a response's content; raises ClientError for unusable `sim.*` metadata."""
    metadata = params.get("metadata")
    instructions = params.get("instructions", session.get("instructions", DEFAULT_INSTRUCTIONS))
    tools = params.get("tools", session.get("tools") or [])
    tool_choice = params.get("tool_choice", session.get("tool_choice", "auto"))
    output = {**session.get("audio", {}).get("output", {}), **params.get("audio", {}).get("output", {})}

    user_text, text, directives = _reply_text(context)
    call = None
    if not (context and context[-1].type == "function_call_output"):
        call = _function_call(tools, tool_choice, user_text)

    fault = options.default_fault
    spec = (metadata or {}).get("sim.fault") or directives.get("fault")
    if spec:
        try:
            fault = parse_fault(spec)
        except ValueError as exc:
            raise invalid_value("response.metadata", f"Invalid simulator fault: {exc}.") from None
    audio_ms = options.response_audio_ms
    if metadata and "sim.audio_ms" in metadata:
        value = metadata["sim.audio_ms"]
        if not (value.isascii() and value.isdigit() and int(value) <= MAX_AUDIO_MS):
            raise invalid_value("response.metadata",
                                f"Invalid 'sim.audio_ms': expected whole milliseconds, at most {MAX_AUDIO_MS}.")
        audio_ms = int(value)

    input_tokens = Tokens(text=text_tokens(instructions))
    cached = Tokens(text=input_tokens.text if instructions == seen_instructions else 0)
    for item in context:
        tokens = item.input_tokens()
        input_tokens += tokens
        if item.id in seen_items:
            cached += tokens
    return ResponsePlan(
        response_id=new_id("resp"),
        conversation_id=None if params.get("conversation") == "none" else conversation_id,
        modalities=params.get("output_modalities", session.get("output_modalities", ["audio"])),
        audio_output={"format": output.get("format", {"type": "audio/pcm", "rate": 24000}),
                      "voice": output.get("voice", "alloy")},
        max_output_tokens=params.get("max_output_tokens", session.get("max_output_tokens", "inf")),
        metadata=metadata,
        instructions=instructions,
        text=text,
        function_call=call,
        audio_ms=audio_ms,
        fault=fault,
        input_tokens=input_tokens,
        cached_tokens=cached,
        context_ids=[item.id for item in context],
    )


def _reply_text(context: list[Item]) -> tuple[str, str, dict[str, str]]:
    """(latest user text without directives, reply text, directives found in the latest user text)."""
    if context and context[-1].type == "function_call_output":
        output = context[-1].data["output"]
        reply = f"The function returned: {output}"
    else:
        reply = ""
    for item in reversed(context):
        if item.type != "message" or item.role != "user":
            continue
        raw = " ".join(p["text"] for p in item.data["content"] if p["type"] == "input_text")
        directives = dict(_DIRECTIVE.findall(raw))
        user_text = " ".join(_DIRECTIVE.sub(" ", raw).split())
        if not reply:
            if user_text:
                reply = f"You said: {user_text}"
            elif item.audio_ms:
                reply = f"I heard {round(sum(item.audio_ms.values()))} ms of audio."
            else:
                reply = "I received your message."
        return user_text, reply, directives
    return "", reply or "Hello from the simulator.", {}


def _function_call(tools: list[dict[str, Any]], tool_choice: Any, user_text: str) -> dict[str, str] | None:
    functions = [t["name"] for t in tools if t.get("type") == "function" and isinstance(t.get("name"), str)]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict) and tool_choice.get("name") in functions:
        name = tool_choice["name"]
    elif tool_choice == "required":
        name = functions[0]
    else:
        lowered = user_text.lower()
        name = next((f for f in functions if f.lower() in lowered), None)
        if name is None:
            return None
    return {"name": name, "call_id": new_id("call"), "arguments": orjson.dumps({"query": user_text}).decode()}


def word_chunks(text: str, words: int = WORDS_PER_DELTA) -> list[str]:
    """`text` cut into pieces of a few words that concatenate back to it exactly."""
    tokens = _WORDS.findall(text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


class AudioOutput(Protocol):
    """Where spoken audio goes when it does not travel in events: a WebRTC call's track, which plays it in real time."""

    def play(self, response_id: str, ms: int) -> None:
        """Queues `ms` more of the response's audio."""

    def end(self, response_id: str) -> None:
        """The response will queue no more audio."""

    async def clear(self) -> None:
        """Drops the audio not yet played."""


class ResponseHost(Protocol):
    """What a response needs from its session."""

    options: SimulatorOptions
    audio_out: AudioOutput | None

    async def emit(self, event_type: str, fields: dict[str, Any], *, delta: bool = False) -> None: ...

    def add_output_item(self, item: Item) -> str | None: ...

    async def close(self, code: int, reason: str) -> None: ...

    async def abort(self) -> None: ...

    def response_finished(self, response: Response) -> None: ...


class Response:
    def __init__(self, plan: ResponsePlan, host: ResponseHost) -> None:
        self.plan = plan
        self.task: asyncio.Task[None] | None = None
        self._host = host
        self._cancel_reason: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deltas = 0
        self._item: dict[str, Any] | None = None  # the output item opened and not yet done
        self._stored: Item | None = None
        self._previous_item_id: str | None = None
        self._part_open = False
        self._text = ""  # text, transcript or arguments sent so far
        self._audio_ms = 0
        self.output: list[dict[str, Any]] = []

    @property
    def id(self) -> str:
        return self.plan.response_id

    @property
    def in_conversation(self) -> bool:
        return self.plan.conversation_id is not None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    def cancel(self, reason: str) -> None:
        """Asks the stream to end with status `cancelled`; it closes its open item and sends `response.done`."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self) -> None:
        try:
            await self._emit("response.created", response=self._snapshot("in_progress", None, None))
            fault = self.plan.fault
            if fault is not None and fault.kind == "stall":
                await self._pause(None)
            if self._cancel_reason is None:
                if self.plan.function_call is not None:
                    await self._stream_function_call(self.plan.function_call)
                else:
                    await self._stream_message()
            await self._end()
        except Exception:
            logger.exception("response %s failed", self.id)
        finally:
            self._host.response_finished(self)

    # --- streaming ---

    def _stopping(self) -> bool:
        if self._cancel_reason is not None:
            return True
        fault = self.plan.fault
        return fault is not None and fault.kind != "stall" and self._deltas >= FAULT_AFTER_DELTAS

    async def _open_item(self, item: dict[str, Any]) -> None:
        await self._emit("response.output_item.added", response_id=self.id, output_index=0, item=item)
        self._item = item
        if self.in_conversation:
            self._stored = Item(dict(item), audio_kind=format_kind(self.plan.audio_output["format"]))
            self._previous_item_id = self._host.add_output_item(self._stored)
            await self._emit("conversation.item.added", previous_item_id=self._previous_item_id, item=item)

    async def _stream_message(self) -> None:
        audio = self.plan.modalities == ["audio"]
        await self._open_item(
            {"id": new_id("item"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        )
        if self._stopping():
            return
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        await self._emit("response.content_part.added", **self._part_ids(), part=part)
        self._part_open = True
        if audio:
            await self._stream_audio()
        else:
            for piece in word_chunks(self.plan.text):
                if self._stopping():
                    return
                await self._delta("response.output_text.delta", piece)
                await asyncio.sleep(0)  # lets other sessions and this one's cancel get a turn

    async def _stream_audio(self) -> None:
        options = self._host.options
        output = self._host.audio_out
        kind = format_kind(self.plan.audio_output["format"])
        step = options.audio_delta_ms
        total = self.plan.audio_ms
        chunks = -(-total // step)
        pieces = word_chunks(self.plan.text)
        # Transcript piece k goes out just before audio chunk k * chunks // len(pieces): spread over the audio.
        sent_pieces = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index in range(chunks):
            while sent_pieces < len(pieces) and sent_pieces * chunks // len(pieces) <= index:
                if self._stopping():
                    return
                await self._delta("response.output_audio_transcript.delta", pieces[sent_pieces])
                sent_pieces += 1
            if options.pace > 0 and index:
                await self._pause(started + index * step / 1000 / options.pace - loop.time())
            if self._stopping():
                return
            start_ms = index * step
            length = min(step, total - start_ms)
            if output is None:
                await self._emit(
                    "response.output_audio.delta", **self._part_ids(),
                    delta=tone_chunk_b64(kind, start_ms % 1000, length), delta_event=True,
                )
            else:
                output.play(self.id, length)
            self._deltas += 1
            self._audio_ms += length
            if options.pace == 0:
                await asyncio.sleep(0)
        for piece in pieces[sent_pieces:]:
            if self._stopping():
                return
            await self._delta("response.output_audio_transcript.delta", piece)

    async def _stream_function_call(self, call: dict[str, str]) -> None:
        item = {"id": new_id("item"), "type": "function_call", "status": "in_progress", "name": call["name"],
                "call_id": call["call_id"], "arguments": ""}
        await self._open_item(item)
        arguments = call["arguments"]
        size = max(1, -(-len(arguments) // ARGUMENT_DELTAS))
        for start in range(0, len(arguments), size):
            if self._stopping():
                return
            piece = arguments[start : start + size]
            await self._emit(
                "response.function_call_arguments.delta", response_id=self.id, item_id=item["id"], output_index=0,
                call_id=call["call_id"], delta=piece, delta_event=True,
            )
            self._deltas += 1
            self._text += piece
            await asyncio.sleep(0)

    async def _delta(self, event_type: str, piece: str) -> None:
        await self._emit(event_type, **self._part_ids(), delta=piece, obfuscation=obfuscation(piece), delta_event=True)
        self._deltas += 1
        self._text += piece

    async def _pause(self, delay: float | None) -> None:
        """Waits `delay` seconds (until cancelled when None); a cancel request ends the wait early."""
        if self._cancel_reason is not None:
            return
        if delay is not None and delay <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(delay, _resolve, waiter) if delay is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    # --- endings ---

    async def _end(self) -> None:
        fault = self.plan.fault
        if self._cancel_reason is not None:
            await self._finish("cancelled", {"type": "cancelled", "reason": self._cancel_reason})
        elif fault is not None and fault.kind == "drop":
            await self._host.abort()
        elif fault is not None and fault.kind == "close":
            assert fault.close_code is not None
            await self._host.close(fault.close_code, "server_error")
        elif fault is not None and fault.kind == "failed":
            await self._finish("failed", {"type": "failed", "error": dict(FAILURE)})
        else:
            await self._finish("completed", None)

    async def _finish(self, status: str, details: dict[str, Any] | None) -> None:
        if self._item is not None:
            await self._close_item("completed" if status == "completed" else "incomplete")
        output = Tokens(text=text_tokens(self._text), audio=output_audio_tokens(self._audio_ms))
        usage = response_usage(self.plan.input_tokens, self.plan.cached_tokens, output)
        await self._emit("response.done", response=self._snapshot(status, details, usage))
        total = usage["total_tokens"]
        await self._emit("rate_limits.updated", rate_limits=[{
            "name": "tokens", "limit": TOKEN_RATE_LIMIT, "remaining": max(0, TOKEN_RATE_LIMIT - total),
            "reset_seconds": round(total * 60 / TOKEN_RATE_LIMIT, 3),
        }])

    async def _close_item(self, status: str) -> None:
        item = self._item
        assert item is not None
        final = {**item, "status": status}
        if item["type"] == "function_call":
            final["arguments"] = self._text
            if status == "completed":
                await self._emit(
                    "response.function_call_arguments.done", response_id=self.id, item_id=item["id"], output_index=0,
                    call_id=item["call_id"], name=item["name"], arguments=self._text,
                )
        elif self._part_open:
            ids = self._part_ids()
            if self.plan.modalities == ["audio"]:
                await self._emit("response.output_audio.done", **ids)
                await self._emit("response.output_audio_transcript.done", **ids, transcript=self._text)
                await self._emit("response.content_part.done", **ids, part={"type": "audio", "transcript": self._text})
                final["content"] = [{"type": "output_audio", "transcript": self._text}]
            else:
                await self._emit("response.output_text.done", **ids, text=self._text)
                await self._emit("response.content_part.done", **ids, part={"type": "text", "text": self._text})
                final["content"] = [{"type": "output_text", "text": self._text}]
        await self._emit("response.output_item.done", response_id=self.id, output_index=0, item=final)
        self._item = None
        self.output = [final]
        if self._stored is not None:
            self._stored.data = final
            if self._part_open and self.plan.modalities == ["audio"]:
                self._stored.audio_ms[0] = self._audio_ms
            await self._emit("conversation.item.done", previous_item_id=self._previous_item_id, item=final)

    # --- payloads ---

    def _part_ids(self) -> dict[str, Any]:
        assert self._item is not None
        return {"response_id": self.id, "item_id": self._item["id"], "output_index": 0, "content_index": 0}

    def _snapshot(self, status: str, details: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any]:
        plan = self.plan
        return {
            "object": "realtime.response",
            "id": plan.response_id,
            "status": status,
            "status_details": details,
            "output": self.output,
            "conversation_id": plan.conversation_id,
            "output_modalities": plan.modalities,
            "max_output_tokens": plan.max_output_tokens,
            "audio": {"output": plan.audio_output},
            "usage": usage,
            "metadata": plan.metadata,
        }

    async def _emit(self, event_type: str, delta_event: bool = False, **fields: Any) -> None:
        await self._host.emit(event_type, fields, delta=delta_event)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
