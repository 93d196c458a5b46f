"""The simulator's Azure OpenAI flavor over real sockets: the resource's paths, keys, refusals and headers, and the
beta protocol of the preview path.

Every event a preview-path client receives is validated against openai-python's beta `RealtimeServerEvent` union
(`openai.types.beta.realtime`); the scenario walks every type the simulator emits, in its beta name.
"""

from __future__ import annotations

import asyncio
import base64
import math
from array import array
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pydantic
import pytest
import websockets
from openai import AsyncAzureOpenAI
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent
from websockets.exceptions import InvalidStatus

from bifrost_rt.tools.simulator import EMITTED_EVENT_TYPES, SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator.beta import beta_type

from conftest import beta_text_turn
from servers import ServerThread

KEY = "azure-resource-key"
BETA_EVENT = pydantic.TypeAdapter(BetaServerEvent)
GA_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
PREVIEW = "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime"
TIMEOUT_S = 10


@pytest.fixture(scope="module")
def azure() -> Iterator[ServerThread]:
    options = SimulatorOptions(pace=0, flavor="azure", api_keys=[KEY], response_audio_ms=300, audio_delta_ms=100)
    with ServerThread(create_simulator_app(options)) as server:
        yield server


def tone(ms: int) -> bytes:
    return array("h", (round(8000 * math.sin(2 * math.pi * 440 * n / 24000)) for n in range(ms * 24))).tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class BetaClient:
    """A raw beta client: each event received must validate against the beta union."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.seen: set[str] = set()

    async def send(self, event_type: str, **fields: Any) -> None:
        await self.ws.send(orjson.dumps({"type": event_type, **fields}).decode())

    async def recv(self) -> dict[str, Any]:
        event = orjson.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
        assert BETA_EVENT.validate_python(event).type == event["type"]
        self.seen.add(event["type"])
        return event

    async def until(self, event_type: str) -> list[dict[str, Any]]:
        events = [await self.recv()]
        while events[-1]["type"] != event_type:
            events.append(await self.recv())
        return events


@asynccontextmanager
async def beta_session(server: ServerThread, path: str = PREVIEW) -> AsyncIterator[BetaClient]:
    async with websockets.connect(f"{server.ws_url}{path}", additional_headers={"api-key": KEY}, max_size=None) as ws:
        yield BetaClient(ws)


def refusal(error: pytest.ExceptionInfo[InvalidStatus]) -> tuple[int, dict[str, Any], Any]:
    response = error.value.response
    return response.status_code, orjson.loads(response.body)["error"], response.headers


async def test_preview_path_walks_every_event_in_its_beta_shape(azure: ServerThread) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    async with beta_session(azure) as client:
        created = await client.recv()
        assert created["type"] == "session.created" and "type" not in created["session"]
        assert created["session"]["modalities"] == ["text", "audio"] and created["session"]["input_audio_format"] == "pcm16"

        await client.send("session.update", session={
            "modalities": ["text"], "tools": [tool], "input_audio_transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 200}, "voice": "verse",
        })
        updated = (await client.until("session.updated"))[-1]["session"]
        assert updated["modalities"] == ["text"] and updated["voice"] == "verse"
        assert updated["input_audio_transcription"]["model"] == "gpt-4o-transcribe"

        await client.send("conversation.item.create", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]})
        item = (await client.until("conversation.item.created"))[-1]["item"]
        await client.send("response.create")
        events = await client.until("response.done")
        assert "".join(e["delta"] for e in events if e["type"] == "response.text.delta") == "You said: hello there"
        assert events[-1]["response"]["modalities"] == ["text"]
        assert events[-1]["response"]["output"][0]["content"][0]["type"] == "text"

        await client.send("conversation.item.create", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "call get_weather"}]})
        await client.send("response.create")
        events = await client.until("response.done")
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert call["name"] == "get_weather"

        await client.send("conversation.item.create", item={
            "type": "function_call_output", "call_id": call["call_id"], "output": '{"temp_c": 21}'})
        await client.send("response.create", response={"modalities": ["audio", "text"], "output_audio_format": "pcm16"})
        events = await client.until("response.done")
        assert any(e["type"] == "response.audio.delta" for e in events)
        assert events[-1]["response"]["output_audio_format"] == "pcm16"
        assistant = events[-1]["response"]["output"][0]
        assert assistant["content"][0]["type"] == "audio"
        # Speech through server VAD, transcribed, answered.
        await client.send("input_audio_buffer.append", audio=b64(bytes(480 * 48) + tone(600) + bytes(300 * 48)))
        await client.until("conversation.item.input_audio_transcription.completed")
        await client.until("response.done")

        await client.send("conversation.item.truncate", item_id=assistant["id"], content_index=0, audio_end_ms=100)
        await client.until("conversation.item.truncated")
        await client.send("conversation.item.retrieve", item_id=item["id"])
        await client.until("conversation.item.retrieved")
        await client.send("conversation.item.delete", item_id=item["id"])
        await client.until("conversation.item.deleted")
        await client.send("input_audio_buffer.append", audio=b64(tone(200)))
        await client.send("input_audio_buffer.clear")
        await client.until("input_audio_buffer.cleared")
        await client.send("input_audio_buffer.commit")
        assert (await client.until("error"))[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
        await client.send("response.create")  # rate limits follow each response
        await client.until("rate_limits.updated")

    expected = {beta_type(name) for name in EMITTED_EVENT_TYPES} - {None}
    assert expected - client.seen == set()
    assert "conversation.item.done" not in client.seen  # it has no beta counterpart


async def test_azure_python_clients_beta_and_ga(azure: ServerThread) -> None:
    beta = AsyncAzureOpenAI(azure_endpoint=azure.url, api_key=KEY, api_version="2025-04-01-preview",
                            websocket_base_url=f"{azure.ws_url}/openai")
    async with beta.beta.realtime.connect(model="gpt-realtime") as connection:
        assert await beta_text_turn(connection, "hi") == "You said: hi"

    # A GA api-version on the api-versioned path speaks GA events.
    ga = AsyncAzureOpenAI(azure_endpoint=azure.url, api_key=KEY, api_version="2025-08-28",
                          websocket_base_url=f"{azure.ws_url}/openai")
    async with ga.realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        await connection.response.create()
        async for event in connection:
            if event.type == "response.done":
                assert event.response.output[0].content[0].text == "You said: hi"
                break


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/openai/v1/realtime", 400, "OperationNotSupported"),
    ("/openai/v1/realtime?model=gpt-4o", 400, "OperationNotSupported"),
    ("/openai/v1/realtime?model=no-such-deployment", 404, "DeploymentNotFound"),
    ("/openai/realtime?deployment=gpt-realtime", 404, "404"),
    ("/openai/realtime?api-version=1999-01-01&deployment=gpt-realtime", 400, "BadRequest"),
])
async def test_handshake_refusals_are_azure_json(azure: ServerThread, path: str, status: int, code: str) -> None:
    with pytest.raises(InvalidStatus) as error:
        async with websockets.connect(f"{azure.ws_url}{path}", additional_headers={"api-key": KEY}):
            pass
    got_status, body, headers = refusal(error)
    assert (got_status, body["code"]) == (status, code) and set(body) == {"code", "message"}
    assert headers["x-ms-region"] == "swedencentral" and headers["apim-request-id"]


async def test_keys_headers_query_and_bearer(azure: ServerThread) -> None:
    with pytest.raises(InvalidStatus) as error:
        async with websockets.connect(f"{azure.ws_url}/openai/v1/realtime?model=gpt-realtime", additional_headers={"api-key": "wrong"}):
            pass
    assert refusal(error)[:2] == (401, {"code": "401", "message": refusal(error)[1]["message"]})
    for path, headers in ((f"/openai/v1/realtime?model=gpt-realtime&api-key={KEY}", {}),
                          ("/openai/v1/realtime?intent=transcription", {"Authorization": f"Bearer {KEY}"})):
        async with websockets.connect(f"{azure.ws_url}{path}", additional_headers=headers) as ws:
            created = orjson.loads(await ws.recv())
            assert GA_EVENT.validate_python(created).type == "session.created"
            assert ws.response.headers["x-ms-region"] == "swedencentral"


async def test_client_secret_at_azure_path_opens_a_session(azure: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=azure.url) as http:
        minted = await http.post("/openai/v1/realtime/client_secrets", headers={"api-key": KEY},
                                 json={"session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Minted."}})
        assert minted.status_code == 200 and minted.headers["apim-request-id"]
        refused = await http.post("/openai/v1/realtime/client_secrets", headers={"api-key": KEY},
                                  json={"session": {"type": "realtime", "model": "gpt-4o"}})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "OperationNotSupported"
    token = minted.json()["value"]
    async with websockets.connect(f"{azure.ws_url}/openai/v1/realtime", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        created = orjson.loads(await ws.recv())
        assert created["session"]["instructions"] == "Minted."
