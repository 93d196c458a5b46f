"""The simulator's Gemini Live flavor: the `BidiGenerateContent` WebSocket as google-genai speaks it.

One connection: `setup` first (anything else closes 1007, as the service does), `setupComplete`, then
`clientContent`, `realtimeInput` (16 kHz PCM16 audio, text, `activityStart`/`activityEnd`, `audioStreamEnd`) and
`toolResponse`. Answers are `serverContent.modelTurn` parts — text, or 24 kHz PCM16 `inlineData` with
`outputTranscription` — then `generationComplete` and `turnComplete`; a function named in the user's words becomes a
`toolCall`. Speech while the model answers interrupts it (`interrupted`, and `toolCallCancellation` for a call still
awaited). Keys arrive camelCase or snake_case (google-genai sends snake_case top-level keys); messages go out
camelCase, as text or binary frames (`gemini_binary_frames`; the service sends binary).

Usage: `usageMetadata` is **per turn**, as the service reports it: every turn's prompt is the whole context again
(system instruction, history, this turn's input), and the `usageMetadata` of the message carrying `turnComplete`
holds the turn's complete counts. An earlier message of the same turn (`generationComplete`) carries a snapshot of
the same turn so far, so a meter must take the last one of a turn, not add them. Audio counts 32 tokens per second
(input and output), text ceil(characters / 4).

Resumption: with `setup.sessionResumption`, each `turnComplete` is followed by `sessionResumptionUpdate` with a new
handle; a later connection whose `setup.sessionResumption.handle` is one of them continues that conversation. With
`gemini_go_away_after_turns`, the connection sends `goAway` after that many turns and closes `gemini_go_away_ms`
later — how tests force a reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from bifrost_rt.tools.simulator.audio import PCM16, speech_level, tone_chunk_b64
from bifrost_rt.tools.simulator.ids import new_id
from bifrost_rt.tools.simulator.options import SimulatorOptions
from bifrost_rt.tools.simulator.response import word_chunks

logger = logging.getLogger("bifrost_rt.simulator.gemini")

INPUT_RATE = 16_000
OUTPUT_MIME = "audio/pcm;rate=24000"
AUDIO_TOKENS_PER_S = 32
SPEECH_THRESHOLD = 0.02  # RMS share of full scale that counts as speech
SILENCE_MS = 500  # automatic activity detection: this much quiet after speech ends the user's turn
FRAME_MS = 10
_FRAME_BYTES = INPUT_RATE * 2 * FRAME_MS // 1000
_WRONG_KEY = "API key not valid. Please pass a valid API key."
_OPAQUE = frozenset({"args", "response", "parameters", "parametersJsonSchema", "parameters_json_schema"})
_SNAKE = re.compile(r"_([a-z])")


def camel(value: Any) -> Any:
    """Keys as camelCase, except inside user payloads (function args, responses, schemas)."""
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            name = _SNAKE.sub(lambda m: m.group(1).upper(), key)
            out[name] = inner if name in _OPAQUE else camel(inner)
        return out
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def decode_b64(data: str) -> bytes:
    """Standard or URL-safe base64 (google-genai sends URL-safe)."""
    data = data.replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


def text_tokens(text: str) -> int:
    return -(-len(text) // 4)


def audio_tokens(ms: float) -> int:
    return -(-int(ms * AUDIO_TOKENS_PER_S) // 1000)


@dataclass
class Tokens:
    text: int = 0
    audio: int = 0

    def add(self, other: Tokens) -> None:
        self.text += other.text
        self.audio += other.audio


@dataclass
class Conversation:
    """What a resumption handle restores: the history as token counts, the turns and the last user words."""

    history: Tokens = field(default_factory=Tokens)
    turns: int = 0


class _Closed(Exception):
    """The connection is over (a fatal client message or a forced goAway)."""


class GeminiSession:
    def __init__(self, websocket: WebSocket, options: SimulatorOptions, handles: dict[str, Conversation]) -> None:
        self.ws = websocket
        self.options = options
        self.handles = handles
        self.conversation = Conversation()
        self.setup: dict[str, Any] | None = None
        self.text_only = False
        self.tools: list[str] = []
        self.system_tokens = 0
        self.manual_activity = False
        self.input_transcription = False
        self.output_transcription = False
        self.resumable = False
        self.pending_input = Tokens()  # this turn's input not yet answered
        self.user_text = ""
        self.speech_ms = 0.0  # the user's current utterance
        self.silence_ms = 0.0
        self.in_speech = False
        self.audio_remainder = b""
        self.answer: asyncio.Task[None] | None = None
        self.awaited_call: str | None = None
        self.turns_here = 0
        self.closer: asyncio.Task[None] | None = None

    # ---- frames --------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            if self.options.gemini_binary_frames:
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data.decode())

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            await self.ws.close(code, reason)
        raise _Closed

    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text") or message.get("bytes")
                if data is not None:
                    await self.handle(data)
        except _Closed:
            return
        finally:
            for task in (self.answer, self.closer):
                if task is not None:
                    task.cancel()

    async def handle(self, data: str | bytes) -> None:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            await self.close(1007, "Invalid JSON payload received.")
        if not isinstance(parsed, dict) or len(parsed) != 1:
            await self.close(1007, "Invalid message: exactly one of setup, clientContent, realtimeInput, toolResponse.")
        message = camel(parsed)
        kind, body = next(iter(message.items()))
        if self.setup is None:
            if kind != "setup":
                await self.close(1007, "Request contains an invalid argument: setup must be the first message.")
            await self.on_setup(body)
        elif kind == "setup":
            await self.close(1007, "Request contains an invalid argument: setup may be sent only once.")
        elif kind == "clientContent":
            await self.on_client_content(body)
        elif kind == "realtimeInput":
            await self.on_realtime_input(body)
        elif kind == "toolResponse":
            await self.on_tool_response(body)
        else:
            await self.close(1007, f'Invalid JSON payload received. Unknown name "{kind}".')

    # ---- client messages -------------------------------------------------------------------------

    async def on_setup(self, setup: Any) -> None:
        if not isinstance(setup, dict) or not isinstance(setup.get("model"), str):
            await self.close(1007, "Request contains an invalid argument: setup.model is required.")
        self.setup = setup
        generation = setup.get("generationConfig") or {}
        self.text_only = (generation.get("responseModalities") or ["AUDIO"]) == ["TEXT"]
        self.tools = [
            d["name"] for tool in setup.get("tools") or [] for d in tool.get("functionDeclarations") or [] if d.get("name")
        ]
        instruction = setup.get("systemInstruction") or {}
        self.system_tokens = sum(text_tokens(p.get("text") or "") for p in instruction.get("parts") or [])
        detection = (setup.get("realtimeInputConfig") or {}).get("automaticActivityDetection") or {}
        self.manual_activity = bool(detection.get("disabled"))
        self.input_transcription = "inputAudioTranscription" in setup
        self.output_transcription = "outputAudioTranscription" in setup
        resumption = setup.get("sessionResumption")
        self.resumable = isinstance(resumption, dict)
        handle = resumption.get("handle") if self.resumable else None
        if handle:
            restored = self.handles.get(handle)
            if restored is None:
                await self.close(1007, "Request contains an invalid argument: the session resumption handle is not valid.")
            self.conversation = restored
            if self.options.gemini_stall_resumed:
                return  # the fault: the resumed connection is never set up
        await self.send({"setupComplete": {}})

    async def on_client_content(self, content: Any) -> None:
        turns = content.get("turns") or []
        for turn in turns:
            text = " ".join(p.get("text") or "" for p in turn.get("parts") or []).strip()
            tokens = Tokens(text=text_tokens(text))
            if turn.get("role", "user") == "user":
                self.pending_input.add(tokens)
                if text:
                    self.user_text = text
            else:
                self.conversation.history.add(tokens)
        if content.get("turnComplete"):
            await self.start_answer()

    async def on_realtime_input(self, value: Any) -> None:
        if "text" in value:
            self.pending_input.add(Tokens(text=text_tokens(value["text"])))
            self.user_text = value["text"]
            await self.start_answer()
        chunks = [value["audio"]] if "audio" in value else list(value.get("mediaChunks") or [])
        for chunk in chunks:
            try:
                pcm = decode_b64(chunk.get("data") or "")
            except (binascii.Error, ValueError):
                await self.close(1007, "Invalid value at 'realtime_input.audio.data': not base64.")
            await self.on_audio(pcm)
        if "activityStart" in value:
            await self.speech_begins()
        if "activityEnd" in value or ("audioStreamEnd" in value and self.in_speech):
            await self.speech_ends()

    async def on_audio(self, pcm: bytes) -> None:
        ms = len(pcm) / (INPUT_RATE * 2 / 1000)
        if self.manual_activity:
            if self.in_speech:
                self.speech_ms += ms
            return
        data = self.audio_remainder + pcm
        whole = len(data) - len(data) % _FRAME_BYTES
        self.audio_remainder = data[whole:]
        for offset in range(0, whole, _FRAME_BYTES):
            loud = speech_level(data[offset : offset + _FRAME_BYTES], PCM16) >= SPEECH_THRESHOLD
            if loud:
                self.silence_ms = 0.0
                if not self.in_speech:
                    await self.speech_begins()
            if self.in_speech:
                self.speech_ms += FRAME_MS
                if not loud:
                    self.silence_ms += FRAME_MS
                    if self.silence_ms >= SILENCE_MS:
                        await self.speech_ends()

    async def speech_begins(self) -> None:
        self.in_speech = True
        self.speech_ms = 0.0
        self.silence_ms = 0.0
        if self.answer is not None and not self.answer.done():
            self.answer.cancel()
            await asyncio.gather(self.answer, return_exceptions=True)
            self.answer = None
            await self.send({"serverContent": {"interrupted": True}})
        if self.awaited_call is not None:
            await self.send({"toolCallCancellation": {"ids": [self.awaited_call]}})
            self.awaited_call = None

    async def speech_ends(self) -> None:
        self.in_speech = False
        heard = round(self.speech_ms)
        self.pending_input.add(Tokens(audio=audio_tokens(heard)))
        if self.input_transcription:
            words = f"I said {heard} milliseconds of audio."
            await self.send({"serverContent": {"inputTranscription": {"text": words}}})
        self.user_text = f"{heard} ms of audio"
        await self.start_answer()

    async def on_tool_response(self, value: Any) -> None:
        responses = value.get("functionResponses") or []
        known = [r for r in responses if r.get("id") == self.awaited_call]
        if not known:
            return  # the service ignores a response to a call it no longer awaits
        self.awaited_call = None
        payload = orjson.dumps(known[0].get("response") or {}).decode()
        self.pending_input.add(Tokens(text=text_tokens(payload)))
        await self.start_answer(reply=f"The function returned: {payload}", allow_tools=False)

    # ---- answers ---------------------------------------------------------------------------------

    async def start_answer(self, reply: str | None = None, allow_tools: bool = True) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.cancel()
            await asyncio.gather(self.answer, return_exceptions=True)
        user = self.user_text
        if reply is None:
            called = next((name for name in self.tools if name.lower() in user.lower()), None) if allow_tools else None
            if called is not None:
                await self.call_tool(called, user)
                return
            reply = f"You said: {user}" if user else "I received your message."
        self.answer = asyncio.get_running_loop().create_task(self.speak(reply))

    async def call_tool(self, name: str, user: str) -> None:
        call_id = new_id("function-call")
        self.awaited_call = call_id
        prompt = self.prompt_tokens()
        self.conversation.history.add(self.pending_input)
        self.pending_input = Tokens()
        args = {"query": user}
        output = Tokens(text=text_tokens(name) + text_tokens(orjson.dumps(args).decode()))
        self.conversation.history.add(output)
        # The call ends this generation: its usage comes with it, and the turn completes after the tool response.
        call = {"functionCalls": [{"id": call_id, "name": name, "args": args}]}
        await self.send({"toolCall": call, "usageMetadata": usage(prompt, output)})

    def prompt_tokens(self) -> Tokens:
        history = self.conversation.history
        return Tokens(self.system_tokens + history.text + self.pending_input.text, history.audio + self.pending_input.audio)

    async def speak(self, reply: str) -> None:
        prompt = self.prompt_tokens()
        self.conversation.history.add(self.pending_input)
        self.pending_input = Tokens()
        output = Tokens()
        if self.text_only:
            for chunk in word_chunks(reply):
                output.text += text_tokens(chunk)
                await self.send({"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": chunk}]}}})
                await asyncio.sleep(0)
        else:
            total_ms = self.options.response_audio_ms
            step = self.options.audio_delta_ms
            words = word_chunks(reply)
            sent = 0
            for index, start in enumerate(range(0, total_ms, step)):
                length = min(step, total_ms - start)
                data = tone_chunk_b64(PCM16, start % 1000, length)
                await self.send({"serverContent": {"modelTurn": {"role": "model", "parts": [{"inlineData": {"mimeType": OUTPUT_MIME, "data": data}}]}}})
                spoken_ms = start + length
                output.audio = audio_tokens(spoken_ms)
                if self.output_transcription and index < len(words):
                    await self.send({"serverContent": {"outputTranscription": {"text": words[index]}}})
                    sent += 1
                if self.options.pace:
                    await asyncio.sleep(length / 1000 / self.options.pace)
                else:
                    await asyncio.sleep(0)
            if self.output_transcription and sent < len(words):
                await self.send({"serverContent": {"outputTranscription": {"text": "".join(words[sent:])}}})
        await self.send({"serverContent": {"generationComplete": True}, "usageMetadata": usage(prompt, output, partial=True)})
        self.conversation.history.add(output)
        await self.turn_complete(prompt, output)

    async def turn_complete(self, prompt: Tokens, output: Tokens) -> None:
        self.conversation.turns += 1
        self.turns_here += 1
        await self.send({"serverContent": {"turnComplete": True}, "usageMetadata": usage(prompt, output)})
        if self.resumable:
            handle = new_id("handle")
            self.handles[handle] = self.conversation
            await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})
        limit = self.options.gemini_go_away_after_turns
        if limit is not None and self.turns_here >= limit:
            grace = self.options.gemini_go_away_ms
            await self.send({"goAway": {"timeLeft": f"{grace / 1000:g}s"}})
            self.closer = asyncio.get_running_loop().create_task(self._go_away(grace / 1000))

    async def _go_away(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        with contextlib.suppress(RuntimeError, OSError):
            await self.ws.close(1000, "The connection reached its lifetime.")


def usage(prompt: Tokens, output: Tokens, partial: bool = False) -> dict[str, Any]:
    """The turn's `usageMetadata`; `partial` is the snapshot before its last output (half of it, rounded down)."""
    out = Tokens(output.text // 2, output.audio // 2) if partial else output
    prompt_total = prompt.text + prompt.audio
    response_total = out.text + out.audio
    return {
        "promptTokenCount": prompt_total,
        "responseTokenCount": response_total,
        "totalTokenCount": prompt_total + response_total,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt.text}, {"modality": "AUDIO", "tokenCount": prompt.audio}],
        "responseTokensDetails": [
            {"modality": m, "tokenCount": n} for m, n in (("TEXT", out.text), ("AUDIO", out.audio)) if n or m == "TEXT"
        ],
    }


def api_key(websocket: WebSocket) -> str | None:
    """`x-goog-api-key` (google-genai), `?key=` (the docs), or a Vertex bearer token."""
    key = websocket.headers.get("x-goog-api-key") or websocket.query_params.get("key")
    if key:
        return key
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() in ("bearer", "token") else None


async def serve(websocket: WebSocket, options: SimulatorOptions, handles: dict[str, Conversation]) -> None:
    """One Gemini Live connection; a missing or wrong key closes 1007 after the upgrade, as the service does."""
    await websocket.accept()
    key = api_key(websocket)
    if key is None or (options.api_keys is not None and key not in options.api_keys):
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close(1007, _WRONG_KEY)
        return
    await GeminiSession(websocket, options, handles).run()
