"""The simulator's Gemini Live flavor, checked against Google's own SDK.

Raw `websockets` clients validate every message the simulator sends against google-genai's `LiveServerMessage`
(strict: unknown fields fail); google-genai's own `client.aio.live.connect`, pointed at the simulator through
`http_options`, completes a text, an audio and a tool turn. With an API key google-genai only dials `wss`, so the
simulator is served over TLS with a certificate made for the test.
"""

from __future__ import annotations

import asyncio
import base64
import math
from array import array
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from google import genai
from google.genai import types
from tls import self_signed, trusting
from websockets.exceptions import ConnectionClosed

from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator.gemini import AUDIO_TOKENS_PER_S

from servers import ServerThread

MODEL = "models/gemini-live-2.5-flash-preview"
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
RECV_TIMEOUT_S = 10
FAST = SimulatorOptions(pace=0, audio_delta_ms=100, response_audio_ms=300, api_keys=["g-key"])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(FAST)) as running:
        yield running


def tone_16k(ms: int, hz: int = 440, amplitude: int = 8000) -> bytes:
    return array("h", (round(amplitude * math.sin(2 * math.pi * hz * n / 16_000)) for n in range(16 * ms))).tobytes()


class Live:
    """A raw Gemini Live client that validates every server message with google-genai's types."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.binary = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def recv(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S)
        self.binary += isinstance(frame, bytes)
        message = orjson.loads(frame)
        types.LiveServerMessage.model_validate(message)  # strict: extra fields are refused
        return message

    async def until(self, key: str, inner: str | None = None) -> list[dict[str, Any]]:
        """Messages up to and including the first with `key` (and `key.inner`)."""
        seen = []
        while True:
            message = await self.recv()
            seen.append(message)
            if key in message and (inner is None or inner in message[key]):
                return seen


@asynccontextmanager
async def live(server: ServerThread, setup: dict[str, Any], key: str = "g-key") -> AsyncIterator[Live]:
    async with websockets.connect(server.ws_url + PATH, additional_headers={"x-goog-api-key": key}) as ws:
        client = Live(ws)
        await client.send({"setup": {"model": MODEL, **setup}})
        assert await client.recv() == {"setupComplete": {}}
        yield client


def parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for m in messages for p in m.get("serverContent", {}).get("modelTurn", {}).get("parts", [])]


def detail(usage: dict[str, Any], field: str, modality: str) -> int:
    return next((d["tokenCount"] for d in usage.get(field, []) if d["modality"] == modality), 0)


async def test_text_turn_answers_in_text_parts_with_per_turn_usage(server: ServerThread) -> None:
    setup = {"generationConfig": {"responseModalities": ["TEXT"]}, "systemInstruction": {"parts": [{"text": "Be brief."}]}}
    async with live(server, setup) as client:
        await client.send({"client_content": {"turns": [{"role": "user", "parts": [{"text": "hello there"}]}], "turnComplete": True}})
        turn = await client.until("serverContent", "turnComplete")
        assert "".join(p["text"] for p in parts(turn)) == "You said: hello there"
        assert turn[-1]["usageMetadata"]["promptTokenCount"] == 3 + 3  # "Be brief." + "hello there", ceil(characters / 4) each
        first = turn[-1]["usageMetadata"]
        await client.send({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "again"}]}], "turnComplete": True}})
        second = (await client.until("serverContent", "turnComplete"))[-1]["usageMetadata"]
        # Per turn: the second prompt is the whole context again, not the difference.
        assert second["promptTokenCount"] == first["promptTokenCount"] + first["responseTokenCount"] + 2
        assert client.binary > 0  # binary frames, as the service sends them


async def test_audio_turn_hears_16k_speech_and_answers_24k_audio_with_transcripts(server: ServerThread) -> None:
    setup = {"inputAudioTranscription": {}, "outputAudioTranscription": {}}
    async with live(server, setup) as client:
        speech = base64.urlsafe_b64encode(tone_16k(600)).decode()  # google-genai's alphabet
        await client.send({"realtime_input": {"audio": {"data": speech, "mimeType": "audio/pcm;rate=16000"}}})
        silence = base64.b64encode(bytes(16 * 2 * 600)).decode()
        await client.send({"realtimeInput": {"audio": {"data": silence, "mimeType": "audio/pcm;rate=16000"}}})
        turn = await client.until("serverContent", "turnComplete")
        heard = [m["serverContent"]["inputTranscription"]["text"] for m in turn if "inputTranscription" in m.get("serverContent", {})]
        assert heard and "milliseconds" in heard[0]
        audio = [base64.b64decode(p["inlineData"]["data"]) for p in parts(turn)]
        assert all(p["inlineData"]["mimeType"] == "audio/pcm;rate=24000" for p in parts(turn))
        assert sum(map(len, audio)) == 300 * 48  # 300 ms at 24 kHz
        spoken = "".join(m["serverContent"]["outputTranscription"]["text"] for m in turn if "outputTranscription" in m.get("serverContent", {}))
        assert spoken.startswith("You said:")
        usage = turn[-1]["usageMetadata"]
        assert detail(usage, "responseTokensDetails", "AUDIO") == -(-300 * AUDIO_TOKENS_PER_S // 1000)
        assert detail(usage, "promptTokensDetails", "AUDIO") > 0


async def test_manual_activity_ends_the_turn_on_activity_end(server: ServerThread) -> None:
    setup = {"generationConfig": {"responseModalities": ["TEXT"]}, "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}}}
    async with live(server, setup) as client:
        await client.send({"realtimeInput": {"activityStart": {}}})
        await client.send({"realtimeInput": {"audio": {"data": base64.b64encode(bytes(16 * 2 * 250)).decode(), "mimeType": "audio/pcm;rate=16000"}}})
        await client.send({"realtimeInput": {"activityEnd": {}}})
        turn = await client.until("serverContent", "turnComplete")
        assert "".join(p["text"] for p in parts(turn)) == "You said: 250 ms of audio"


async def test_tool_call_then_tool_response_continues_the_turn(server: ServerThread) -> None:
    setup = {
        "generationConfig": {"responseModalities": ["TEXT"]},
        "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}],
    }
    async with live(server, setup) as client:
        await client.send({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "get_weather in Paris"}]}], "turnComplete": True}})
        call = (await client.until("toolCall"))[-1]
        function = call["toolCall"]["functionCalls"][0]
        assert function["name"] == "get_weather" and function["args"] == {"query": "get_weather in Paris"}
        assert call["usageMetadata"]["responseTokenCount"] > 0
        await client.send({"tool_response": {"functionResponses": [{"id": function["id"], "name": "get_weather", "response": {"sky": "clear"}}]}})
        turn = await client.until("serverContent", "turnComplete")
        assert "".join(p["text"] for p in parts(turn)) == 'The function returned: {"sky":"clear"}'


async def test_speech_during_an_answer_interrupts_it() -> None:
    paced = SimulatorOptions(pace=1, audio_delta_ms=50, response_audio_ms=20_000)
    with ServerThread(create_simulator_app(paced)) as running:
        async with live(running, {}) as client:
            await client.send({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "talk"}]}], "turnComplete": True}})
            await client.until("serverContent", "modelTurn")
            await client.send({"realtimeInput": {"audio": {"data": base64.b64encode(tone_16k(100)).decode(), "mimeType": "audio/pcm;rate=16000"}}})
            stopped = await client.until("serverContent", "interrupted")
            assert stopped[-1]["serverContent"] == {"interrupted": True}


async def test_go_away_then_resume_with_the_latest_handle() -> None:
    options = SimulatorOptions(pace=0, response_audio_ms=100, gemini_go_away_after_turns=1, gemini_go_away_ms=200)
    with ServerThread(create_simulator_app(options)) as running:
        setup = {"generationConfig": {"responseModalities": ["TEXT"]}, "sessionResumption": {}}
        async with live(running, setup) as client:
            await client.send({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "remember me"}]}], "turnComplete": True}})
            first = (await client.until("serverContent", "turnComplete"))[-1]["usageMetadata"]
            update = (await client.until("sessionResumptionUpdate"))[-1]["sessionResumptionUpdate"]
            assert update["resumable"] is True
            away = (await client.until("goAway"))[-1]["goAway"]
            assert away == {"timeLeft": "0.2s"}
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        async with live(running, {**setup, "sessionResumption": {"handle": update["newHandle"]}}) as resumed:
            await resumed.send({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "again"}]}], "turnComplete": True}})
            second = (await resumed.until("serverContent", "turnComplete"))[-1]["usageMetadata"]
            assert second["promptTokenCount"] == first["promptTokenCount"] + first["responseTokenCount"] + 2
        async with websockets.connect(running.ws_url + PATH, additional_headers={"x-goog-api-key": "k"}) as ws:
            await ws.send(orjson.dumps({"setup": {"model": MODEL, "sessionResumption": {"handle": "unknown"}}}).decode())
            with pytest.raises(ConnectionClosed) as refused:
                await ws.recv()
            assert refused.value.rcvd is not None and refused.value.rcvd.code == 1007


async def test_setup_must_come_first_and_only_once(server: ServerThread) -> None:
    async with websockets.connect(server.ws_url + PATH, additional_headers={"x-goog-api-key": "g-key"}) as ws:
        await ws.send(orjson.dumps({"clientContent": {"turns": [], "turnComplete": True}}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        assert "setup must be the first message" in closed.value.rcvd.reason
    async with live(server, {}) as client:
        await client.send({"setup": {"model": MODEL}})
        with pytest.raises(ConnectionClosed) as again:
            await client.recv()
        assert again.value.rcvd is not None and again.value.rcvd.code == 1007


async def test_a_wrong_key_closes_1007_like_the_service(server: ServerThread) -> None:
    async with websockets.connect(server.ws_url + PATH, additional_headers={"x-goog-api-key": "wrong"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        assert "API key not valid" in closed.value.rcvd.reason


async def test_text_frames_on_request() -> None:
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, gemini_binary_frames=False))) as running:
        async with websockets.connect(running.ws_url + PATH, additional_headers={"x-goog-api-key": "k"}) as ws:
            await ws.send(orjson.dumps({"setup": {"model": MODEL}}).decode())
            assert isinstance(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S), str)


# --- google-genai's own client ---


@pytest.fixture(scope="module")
def tls_server(certificate: tuple[Path, Path]) -> Iterator[ServerThread]:
    cert, key = certificate
    with ServerThread(create_simulator_app(FAST), ssl_certfile=str(cert), ssl_keyfile=str(key)) as running:
        yield running


def google_client(server: ServerThread, certificate: tuple[Path, Path]) -> genai.Client:
    options = types.HttpOptions(
        base_url=f"https://127.0.0.1:{server.port}", api_version="v1beta", async_client_args={"ssl": trusting(certificate[0])}
    )
    return genai.Client(api_key="g-key", http_options=options)


async def collect_turn(session: Any) -> list[types.LiveServerMessage]:
    seen = []
    async for message in session.receive():  # receive() ends after turnComplete
        seen.append(message)
    return seen


async def test_google_genai_completes_a_text_turn(tls_server: ServerThread, certificate: tuple[Path, Path]) -> None:
    client = google_client(tls_server, certificate)
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT], system_instruction="Be brief.")
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview", config=config) as session:
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="hi genai")]))
        turn = await asyncio.wait_for(collect_turn(session), RECV_TIMEOUT_S)
    assert "".join(m.text or "" for m in turn) == "You said: hi genai"
    assert turn[-1].usage_metadata is not None and turn[-1].usage_metadata.prompt_token_count == 3 + 2


async def test_google_genai_completes_an_audio_turn(tls_server: ServerThread, certificate: tuple[Path, Path]) -> None:
    client = google_client(tls_server, certificate)
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
    )
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview", config=config) as session:
        for chunk in (tone_16k(600), bytes(16 * 2 * 600)):
            await session.send_realtime_input(audio=types.Blob(data=chunk, mime_type="audio/pcm;rate=16000"))
        turn = await asyncio.wait_for(collect_turn(session), RECV_TIMEOUT_S)
    audio = b"".join(m.data for m in turn if m.data)
    assert len(audio) == 300 * 48
    assert any(m.server_content and m.server_content.input_transcription for m in turn)
    spoken = "".join(m.server_content.output_transcription.text or "" for m in turn if m.server_content and m.server_content.output_transcription)
    assert spoken.startswith("You said:")


async def test_google_genai_completes_a_tool_turn(tls_server: ServerThread, certificate: tuple[Path, Path]) -> None:
    client = google_client(tls_server, certificate)
    weather = types.FunctionDeclaration(name="get_weather", parameters=types.Schema(type=types.Type.OBJECT))
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT], tools=[types.Tool(function_declarations=[weather])])
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview", config=config) as session:
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="get_weather now")]))
        call = None
        async for message in session.receive():
            if message.tool_call:
                call = message.tool_call.function_calls[0]
                break
        assert call is not None and call.name == "get_weather"
        await session.send_tool_response(function_responses=[types.FunctionResponse(id=call.id, name=call.name, response={"sky": "clear"})])
        turn = await asyncio.wait_for(collect_turn(session), RECV_TIMEOUT_S)
    assert "".join(m.text or "" for m in turn) == 'The function returned: {"sky":"clear"}'
