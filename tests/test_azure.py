"""Azure OpenAI through the gateway, with real clients: an Azure provider (the simulator's Azure flavor), and
Azure-shaped clients (`AsyncAzureOpenAI`, `api-key`, `?api-key=`, `deployment`) on the client side.

A recorder in front of the simulator keeps what the gateway sent upstream (path, query, headers), so the tests see
which URL form, deployment and credential reached the provider, and that a client's key never did.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
import websockets
from openai import AsyncAzureOpenAI, AsyncOpenAI

from bifrost_rt import errors
from bifrost_rt.config import ConfigError, load_config, parse_config
from bifrost_rt.providers import ModelResolver
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY, beta_text_turn, recv_json
from rtc_client import Caller
from servers import ServerThread

AZURE_KEY = "azure-resource-key-0123456789"
ENTRA_TOKEN = "entra-token-from-a-command"
DEPLOYMENTS = {"prod-voice": "gpt-realtime", "old-chat": "gpt-4o"}
GA_VERSION = "2025-08-28"
TIMEOUT_S = 15
BETA_DIALECT = importlib.util.find_spec("bifrost_rt.dialects.beta") is not None
needs_beta = pytest.mark.skipif(not BETA_DIALECT, reason="the gateway's beta dialect (bifrost_rt.dialects.beta) is not on this branch")


class Recorder:
    """ASGI middleware keeping (path, query, headers) of every request the simulator receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.requests.append((scope["path"], parse_qs(scope["query_string"].decode()), headers))
        await self.app(scope, receive, send)

    def last(self, path: str) -> tuple[dict[str, list[str]], dict[str, str]]:
        return next((query, headers) for p, query, headers in reversed(self.requests) if p == path)


@pytest.fixture
def azure_sim() -> Iterator[tuple[ServerThread, Recorder]]:
    options = SimulatorOptions(pace=0, flavor="azure", api_keys=[AZURE_KEY, ENTRA_TOKEN], azure_deployments=DEPLOYMENTS,
                               response_audio_ms=300, audio_delta_ms=100)
    recorder = Recorder(create_simulator_app(options))
    with ServerThread(recorder) as server:
        yield server, recorder


def azure_settings(base_url: str, **provider: Any) -> dict[str, Any]:
    return {
        "providers": {
            "azure": {"kind": "azure", "base_url": base_url, "api_key": AZURE_KEY, **provider},
            "azure-preview": {"kind": "azure", "base_url": base_url, "api_key": AZURE_KEY, "url_form": "preview"},
        },
        "default_provider": "azure",
        "models": {
            "gpt-realtime": {"provider": "azure", "model": "prod-voice"},
            "voice-mini": {"provider": "azure", "model": "prod-voice", "priced_as": "gpt-realtime-mini"},
            "old-model": {"provider": "azure", "model": "old-chat"},
            "missing": {"provider": "azure", "model": "no-such-deployment"},
            "preview-voice": {"provider": "azure-preview", "model": "prod-voice", "priced_as": "gpt-realtime"},
        },
        "client_secrets": {"secret": "a-signing-secret-of-some-length"},
    }


@pytest.fixture
def azure_gateway(azure_sim, start_gateway):
    server, recorder = azure_sim
    gateway, sink = start_gateway(f"{server.url}/v1", **azure_settings(server.url))
    return gateway, sink, recorder


def azure_client(gateway: ServerThread, key: str = VIRTUAL_KEY, version: str = GA_VERSION) -> AsyncAzureOpenAI:
    """`AsyncAzureOpenAI` as an application builds it, pointed at the gateway (ws:// because tests have no TLS)."""
    return AsyncAzureOpenAI(azure_endpoint=gateway.url, api_key=key, api_version=version,
                            websocket_base_url=f"{gateway.ws_url}/openai")


async def text_turn(connection: Any, text: str) -> Any:
    await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await connection.response.create()
    async for event in connection:
        if event.type == "error":
            raise AssertionError(event.error)
        if event.type == "response.done":
            return event.response


def no_azure_headers(headers: Any) -> bool:
    return not any(name.lower().startswith(("x-ms-", "apim-")) for name in headers)


# --- an Azure provider, Azure-shaped and OpenAI-shaped clients ---


async def test_azure_client_text_and_audio_turns_priced_through_the_served_model(azure_gateway) -> None:
    gateway, sink, recorder = azure_gateway
    async with azure_client(gateway).realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        response = await text_turn(connection, "hello azure")
        assert response.output[0].content[0].text == "You said: hello azure"
        await connection.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
        await connection.response.create()
        audio = 0
        async for event in connection:
            if event.type == "response.output_audio.delta":
                audio += 1
            if event.type == "response.done":
                break
        assert audio > 0
    text, spoken = sink.wait_for(2)
    for record in (text, spoken):
        assert record.provider == "azure" and record.model == "prod-voice" and record.status == "completed"
        assert record.cost["total"] > 0 and record.metadata.get("priced") is not False
    assert spoken.output["audio_bytes"] > 0

    query, headers = recorder.last("/openai/v1/realtime")
    assert query == {"model": ["prod-voice"]}  # the deployment, in the GA form; no api-version or client deployment
    assert headers["api-key"] == AZURE_KEY and "authorization" not in headers
    assert VIRTUAL_KEY not in str(recorder.requests)


async def test_openai_shaped_clients_reach_an_azure_provider_and_priced_as_applies(azure_gateway) -> None:
    gateway, sink, recorder = azure_gateway
    costs = {}
    for base, model in ((f"{gateway.ws_url}/v1", "gpt-realtime"), (f"{gateway.ws_url}/openai/v1", "voice-mini")):
        client = AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{gateway.url}/v1", websocket_base_url=base)
        async with client.realtime.connect(model=model) as connection:
            await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await text_turn(connection, "the same words")
        (record,) = sink.wait_for(len(costs) + 1)[len(costs):]
        assert record.model == "prod-voice"
        costs[model] = record.cost["total"]
    # The same deployment and usage, priced as what each route says it serves.
    assert 0 < costs["voice-mini"] < costs["gpt-realtime"]


async def test_transcription_intent_needs_no_model(azure_gateway) -> None:
    gateway, _, recorder = azure_gateway
    async with websockets.connect(f"{gateway.ws_url}/openai/v1/realtime?intent=transcription", additional_headers={"api-key": VIRTUAL_KEY}) as ws:
        created = await recv_json(ws)
        assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
    query, _ = recorder.last("/openai/v1/realtime")
    assert query == {"intent": ["transcription"]}


async def test_client_secret_minted_at_azure_path_and_used(azure_gateway) -> None:
    gateway, sink, recorder = azure_gateway
    minted = await azure_client(gateway).realtime.client_secrets.with_raw_response.create(
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "From the secret."}
    )
    assert minted.http_response.status_code == 200 and no_azure_headers(minted.http_response.headers)
    token = minted.parse().value
    assert token.startswith("ek_")
    _, mint_headers = recorder.last("/openai/v1/realtime/client_secrets")
    assert mint_headers["api-key"] == AZURE_KEY

    client = AsyncOpenAI(api_key=token, websocket_base_url=f"{gateway.ws_url}/openai/v1")
    async with client.realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await text_turn(connection, "with a secret")
    (record,) = sink.wait_for(1)
    assert record.principal == "team-a" and record.provider == "azure"
    _, headers = recorder.last("/openai/v1/realtime")
    provider_secret = headers["authorization"].removeprefix("Bearer ")
    assert provider_secret.startswith("ek_") and provider_secret != token and "api-key" not in headers


@pytest.mark.parametrize("model", ["gpt-realtime", "preview-voice"])  # calls exist only in the GA form, for both
async def test_webrtc_call_through_the_gateway_to_azure(azure_gateway, azure_sim, model: str) -> None:
    gateway, sink, recorder = azure_gateway
    simulator, _ = azure_sim
    caller = Caller()
    try:
        offer = await caller.offer()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
            answer = await http.post(f"/openai/realtime/calls?api-version={GA_VERSION}&deployment={model}", content=offer,
                                     headers={"api-key": VIRTUAL_KEY, "Content-Type": "application/sdp"})
            assert answer.status_code == 201, answer.text
            assert no_azure_headers(answer.headers)
            location = answer.headers["location"]
            assert location.startswith("/openai/realtime/calls/rtc_")
            await caller.accept(answer.text)
            await caller.expect("session.created")
            caller.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
            await caller.expect("session.updated")
            call_id = location.rsplit("/", 1)[-1]
            sideband_url = f"{gateway.ws_url}/openai/v1/realtime?call_id={call_id}&api-key={VIRTUAL_KEY}"
            async with websockets.connect(sideband_url) as sideband:  # a server watching the call, Azure-style
                await caller.say("over webrtc")
                caller.send("response.create")
                await caller.until("response.done")
                while (await recv_json(sideband))["type"] != "response.done":
                    pass
            assert (await http.post(f"{location}/hangup", headers={"api-key": VIRTUAL_KEY})).status_code == 200
            # The gateway hangs up at the provider too: the simulator's call ends.
            async with asyncio.timeout(TIMEOUT_S):
                while (await http.get(f"{simulator.url}/healthz")).json()["calls"]:
                    await asyncio.sleep(0.05)
    finally:
        await caller.close()
    (record,) = sink.wait_for(1)
    assert record.provider in ("azure", "azure-preview") and record.transport == "webrtc" and record.model == "prod-voice"
    query, headers = recorder.last("/openai/v1/realtime/calls")
    assert headers["api-key"] == AZURE_KEY and VIRTUAL_KEY not in str(recorder.requests)


# --- refusals ---


@pytest.mark.parametrize(("model", "code"), [("old-model", "OperationNotSupported"), ("missing", "DeploymentNotFound")])
async def test_azure_refusals_reach_websocket_clients_openai_shaped(azure_gateway, azure_sim, model: str, code: str) -> None:
    gateway, _, _ = azure_gateway
    simulator, _ = azure_sim
    url = f"{gateway.ws_url}/openai/realtime?api-version={GA_VERSION}&deployment={model}"
    async with websockets.connect(url, additional_headers={"api-key": VIRTUAL_KEY}) as ws:
        assert no_azure_headers(ws.response.headers)
        error = await recv_json(ws)
        with pytest.raises(websockets.ConnectionClosed):
            await recv_json(ws)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error" and error["error"]["code"] == code
    assert ws.close_code == 4000 and ws.close_reason == f"invalid_request_error.{code}"
    message = error["error"]["message"]
    assert message and str(simulator.port) not in message and "127.0.0.1" not in message and "://" not in message


async def test_a_bad_provider_key_is_the_gateways_problem(azure_sim, start_gateway) -> None:
    simulator, _ = azure_sim
    gateway, _ = start_gateway(f"{simulator.url}/v1", **azure_settings(simulator.url, api_key="not-the-resource-key"))
    async with azure_client(gateway).realtime.connect(model="gpt-realtime") as connection:
        event = await connection.recv()
    assert event.type == "error" and event.error.code == "upstream_auth_failed" and event.error.type == "server_error"
    assert "not-the-resource-key" not in event.error.message


async def test_azure_refusals_reach_rest_clients_openai_shaped(azure_gateway) -> None:
    gateway, _, _ = azure_gateway
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
        minted = await http.post("/openai/v1/realtime/client_secrets", headers={"api-key": VIRTUAL_KEY},
                                 json={"session": {"type": "realtime", "model": "old-model"}})
        caller = Caller()
        try:
            call = await http.post("/openai/v1/realtime/calls?model=missing", content=await caller.offer(),
                                   headers={"api-key": VIRTUAL_KEY, "Content-Type": "application/sdp"})
        finally:
            await caller.close()
    for response, status, code in ((minted, 400, "OperationNotSupported"), (call, 404, "DeploymentNotFound")):
        assert response.status_code == status and no_azure_headers(response.headers)
        error = response.json()["error"]
        assert set(error) == {"type", "code", "message", "param"}
        assert error["type"] == "invalid_request_error" and error["code"] == code


# --- the client's key in the query ---


async def test_api_key_in_the_query_is_never_forwarded_nor_logged(azure_gateway, caplog) -> None:
    gateway, sink, recorder = azure_gateway
    caplog.set_level(logging.DEBUG)
    url = f"{gateway.ws_url}/openai/realtime?api-version={GA_VERSION}&deployment=gpt-realtime&api-key={VIRTUAL_KEY}"
    own = logging.getLogger("test.client")  # this test's own client logs its request line; the gateway must not
    async with websockets.connect(url, logger=own) as ws:
        assert (await recv_json(ws))["type"] == "session.created"
        await ws.send(orjson.dumps({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}).decode())
        await ws.send(orjson.dumps({"type": "response.create"}).decode())
        while (await recv_json(ws))["type"] != "response.done":
            pass
    assert sink.wait_for(1)[0].principal == "team-a"
    query, headers = recorder.last("/openai/v1/realtime")
    assert query == {"model": ["prod-voice"]} and headers["api-key"] == AZURE_KEY
    assert VIRTUAL_KEY not in str(recorder.requests)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != own.name)
    assert VIRTUAL_KEY not in logged and AZURE_KEY not in logged

    async with websockets.connect(url.replace(VIRTUAL_KEY, "sk-bf-wrong"), logger=own) as ws:
        refused = await recv_json(ws)
        with pytest.raises(websockets.ConnectionClosed):
            await recv_json(ws)
    assert refused["error"]["code"] == "invalid_api_key" and ws.close_code == 3000


# --- Entra tokens ---


async def test_entra_tokens_from_a_command_and_a_file(azure_sim, start_gateway, tmp_path) -> None:
    simulator, recorder = azure_sim
    command = [sys.executable, "-c", f"import json, time; print(json.dumps({{'accessToken': '{ENTRA_TOKEN}', 'expires_on': int(time.time()) + 3600}}))"]
    token_file = tmp_path / "token"
    token_file.write_text(AZURE_KEY + "\n")  # the simulator accepts it as a bearer token as well
    for entra in ({"token_command": command}, {"token_file": str(token_file), "refresh_s": 0.001}):
        gateway, _ = start_gateway(f"{simulator.url}/v1", **azure_settings(simulator.url, api_key=None, entra=entra))
        async with azure_client(gateway).realtime.connect(model="gpt-realtime") as connection:
            assert (await connection.recv()).type == "session.created"
        _, headers = recorder.last("/openai/v1/realtime")
        assert headers["authorization"] in (f"Bearer {ENTRA_TOKEN}", f"Bearer {AZURE_KEY}") and "api-key" not in headers
    # A file token is read again once stale: the renewed (here: revoked) token is the one sent.
    token_file.write_text("a-token-the-resource-refuses")
    async with azure_client(gateway).realtime.connect(model="gpt-realtime") as connection:
        event = await connection.recv()
    assert event.type == "error" and event.error.code == "upstream_auth_failed"


# --- the preview form (beta events) ---


def test_url_forms_and_dialects() -> None:
    config = parse_config({**azure_settings("https://res.openai.azure.com"), "virtual_keys": []})
    resolver = ModelResolver(config)
    ga, preview = resolver.resolve("gpt-realtime"), resolver.resolve("preview-voice")
    assert ga.upstream_url({"api-key": "x", "deployment": "y"}) == "wss://res.openai.azure.com/openai/v1/realtime?model=prod-voice"
    assert preview.upstream_url({}) == "wss://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=prod-voice"
    assert ga.http_url("/realtime/calls") == preview.http_url("/realtime/calls") == "https://res.openai.azure.com/openai/v1/realtime/calls"
    assert (ga.dialect, preview.dialect) == ("openai", "openai-beta")


@needs_beta
async def test_ga_client_to_the_preview_form(azure_gateway) -> None:
    gateway, sink, recorder = azure_gateway
    client = AsyncOpenAI(api_key=VIRTUAL_KEY, websocket_base_url=f"{gateway.ws_url}/v1")
    async with client.realtime.connect(model="preview-voice") as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        response = await text_turn(connection, "through the preview form")
    assert response.output[0].content[0].text == "You said: through the preview form"
    query, _ = recorder.last("/openai/realtime")
    assert query == {"api-version": ["2025-04-01-preview"], "deployment": ["prod-voice"]}
    (record,) = sink.wait_for(1)
    assert record.provider == "azure-preview" and record.cost["total"] > 0


@needs_beta
async def test_beta_azure_client_on_the_preview_path(azure_gateway) -> None:
    gateway, sink, _ = azure_gateway
    client = azure_client(gateway, version="2025-04-01-preview")
    async with client.beta.realtime.connect(model="gpt-realtime") as connection:
        text = await beta_text_turn(connection, "beta hello")
    assert text == "You said: beta hello"
    (record,) = sink.wait_for(1)
    assert record.provider == "azure" and record.output["text"] == text


def test_the_azure_example_configuration_loads(monkeypatch) -> None:
    for name in ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY", "TEAM_A_KEY", "BIFROST_RT_CLIENT_SECRET_KEY"):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    config = load_config(Path(__file__).parent.parent / "examples" / "azure.yaml")
    resolver = ModelResolver(config)
    assert resolver.resolve("gpt-realtime").upstream_url({}) == "wss://my-resource.openai.azure.com/openai/v1/realtime?model=prod-voice"
    assert resolver.resolve("legacy-voice").dialect == "openai-beta"
    assert config.providers["azure-entra"].entra.token_command[0] == "az"


def test_azure_provider_credentials_are_checked() -> None:
    base = {"kind": "azure", "base_url": "https://res.openai.azure.com"}
    for provider, message in (
        (base, "exactly one of api_key or entra"),
        ({**base, "api_key": "k", "entra": {"token": "t"}}, "exactly one of api_key or entra"),
        ({**base, "entra": {"token": "t", "token_file": "/f"}}, "exactly one of token, token_file or token_command"),
        ({"base_url": "https://api.openai.com/v1", "url_form": "preview"}, "kind: azure only"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"providers": {"p": provider}})


@needs_beta
@pytest.mark.parametrize("deployment", ["gpt-realtime", "preview-voice"])  # to a GA and to a preview-form provider
async def test_a_preview_api_version_alone_means_a_beta_client(azure_gateway, deployment: str) -> None:
    gateway, sink, _ = azure_gateway
    url = f"{gateway.ws_url}/openai/realtime?api-version=2025-04-01-preview&deployment={deployment}"
    async with websockets.connect(url, additional_headers={"api-key": VIRTUAL_KEY}) as ws:  # no OpenAI-Beta header
        created = await recv_json(ws)
        assert created["type"] == "session.created" and "modalities" in created["session"]
        await ws.send(orjson.dumps({"type": "session.update", "session": {"modalities": ["text"]}}).decode())
        await ws.send(orjson.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "flat and beta"}]}}).decode())
        await ws.send(orjson.dumps({"type": "response.create"}).decode())
        types, text = [], ""
        while not types or types[-1] != "response.done":
            event = await recv_json(ws)
            assert event["type"] != "error", event
            types.append(event["type"])
            text += event.get("delta", "") if event["type"] == "response.text.delta" else ""
    assert text == "You said: flat and beta" and "response.output_text.delta" not in types
    (record,) = sink.wait_for(1)
    assert record.output["text"] == text and record.cost["total"] > 0


def test_provider_refusal_bodies_become_openai_shaped_errors() -> None:
    azure_body = orjson.dumps({"error": {"code": "OperationNotSupported", "message":
        "Deployment of my-resource at my-resource.openai.azure.com is not realtime; see https://go.microsoft.com/x."}})
    error = errors.provider_refusal(400, azure_body, "my-resource.openai.azure.com")
    assert (error.type, error.code, error.param, error.close_code) == ("invalid_request_error", "OperationNotSupported", None, 4000)
    assert "my-resource" not in error.message and "http" not in error.message and error.message.startswith("Deployment of")
    openai_body = orjson.dumps({"error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Bad.", "param": "model"}})
    assert errors.provider_refusal(404, openai_body, "api.openai.com") == errors.RealtimeError(
        "invalid_request_error", "invalid_value", "Bad.", "model", close_code=4000)
    assert errors.provider_refusal(401, azure_body, None).code == "upstream_auth_failed"
    assert errors.provider_refusal(503, openai_body, None).code == "upstream_unavailable"
    assert errors.provider_refusal(400, b"<html>no</html>", None).code == "upstream_unavailable"
