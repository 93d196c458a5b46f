"""Client secrets: minting through the gateway, gateway tokens on WebSocket sessions, revocation, CORS."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import httpx
import pytest
import websockets
from openai import AsyncOpenAI
from test_serve import free_port, wait_until_listening
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bifrost_rt.policy.client_secrets import ClientSecrets
from bifrost_rt.state.kv import MemoryKV

from conftest import PROVIDER_KEY, VIRTUAL_KEY

SECRET = "test-client-secret-signing-key"
ADMIN_KEY = "adm-test-key"
APP_ORIGIN = "https://app.example"


def settings(secret: str = SECRET) -> dict:
    return {
        "client_secrets": {"secret": secret},
        "cors": {"allowed_origins": [APP_ORIGIN]},
        "admin_keys": [ADMIN_KEY],
    }


@pytest.fixture
def secrets_gateway(simulator, start_gateway):
    return start_gateway(f"{simulator.url}/v1", **settings())


def provider_token_of(token: str) -> str:
    """The provider secret inside a gateway token (the test knows the sealing secret)."""
    return ClientSecrets(SECRET, MemoryKV())._unseal(token).provider_token


async def mint(server, *, key: str = VIRTUAL_KEY, model: str = "gpt-realtime", seconds: int = 600) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{server.url}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {key}"},
            json={"expires_after": {"anchor": "created_at", "seconds": seconds}, "session": {"type": "realtime", "model": model}},
        )


async def refusal(server, token: str, via: str = "subprotocol") -> tuple[dict, int, str]:
    url = f"{server.ws_url}/v1/realtime"
    kwargs = (
        {"subprotocols": ["realtime", f"openai-insecure-api-key.{token}"]}
        if via == "subprotocol"
        else {"additional_headers": {"Authorization": f"Bearer {token}"}}
    )
    async with websockets.connect(url, **kwargs) as ws:
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return event, ws.close_code, ws.close_reason


async def text_turn(ws) -> list[str]:
    """A text turn on a raw socket; returns every frame received."""
    frames = []
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi from the browser"}]}}))
    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    while True:
        frames.append(await asyncio.wait_for(ws.recv(), 10))
        if json.loads(frames[-1])["type"] == "response.done":
            return frames


async def test_openai_python_mints_and_browser_sessions_bill_the_minting_key(secrets_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    server, sink = secrets_gateway
    client = AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{server.url}/v1", websocket_base_url=f"{server.ws_url}/v1")
    raw = await client.realtime.client_secrets.with_raw_response.create(
        expires_after={"anchor": "created_at", "seconds": 600},
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "be brief"},
    )
    minted = raw.parse()
    token = minted.value
    provider_token = provider_token_of(token)
    assert token.startswith("ek_") and provider_token.startswith("ek_") and token != provider_token
    assert minted.expires_at > time.time() and minted.session.model == "gpt-realtime"
    seen = [raw.http_response.content]

    async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as ws:
        assert ws.subprotocol == "realtime"
        seen.append(await ws.recv())
        seen += await text_turn(ws)
    async with websockets.connect(f"{server.ws_url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        seen.append(await ws.recv())
        seen += await text_turn(ws)
    async with client.realtime.connect(model="gpt-realtime", extra_headers={"Authorization": f"Bearer {token}"}) as conn:
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "sdk"}]})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                break

    records = sink.wait_for(3)
    assert {(r.principal, r.status) for r in records} == {("team-a", "completed")}
    assert all(r.cost["total"] > 0 for r in records)
    # The provider's secret never reaches the client, nor any log line of the gateway.
    for data in seen:
        assert provider_token not in (data if isinstance(data, str) else data.decode())
    gateway_log = "\n".join(r.getMessage() for r in caplog.records if r.name != "websockets.client")
    for secret in (provider_token, token, PROVIDER_KEY):
        assert secret not in gateway_log


async def test_legacy_sessions_route_answers_in_the_beta_shape(secrets_gateway):
    server, _ = secrets_gateway
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/openai/v1/realtime/sessions",
            headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
            json={"model": "gpt-realtime", "voice": "verse", "modalities": ["audio", "text"], "input_audio_format": "pcm16", "temperature": 0.7},
        )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "realtime.session" and body["model"] == "gpt-realtime" and body["voice"] == "verse"
    secret = body["client_secret"]
    assert secret["value"].startswith("ek_") and secret["expires_at"] > time.time()
    assert provider_token_of(secret["value"]) not in response.text
    async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{secret['value']}"]) as ws:
        session = json.loads(await ws.recv())["session"]
        assert session["audio"]["output"]["voice"] == "verse"  # the translated session reached the provider


@pytest.mark.parametrize(
    "content_type, body, status, code",
    [
        ("text/plain", b"{}", 415, "unsupported_media_type"),
        ("application/json", b"{not json", 400, "invalid_json"),
        ("application/json", b'{"session": {"type": "realtime"}}', 400, "missing_required_parameter"),
        ("application/json", b'{"session": []}', 400, "invalid_type"),
    ],
)
async def test_mint_request_errors_are_precise(secrets_gateway, content_type, body, status, code):
    server, _ = secrets_gateway
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {VIRTUAL_KEY}", "Content-Type": content_type},
            content=body,
        )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_unroutable_model_is_a_precise_400(simulator, start_gateway):
    providers = {"openai": {"base_url": f"{simulator.url}/v1"}, "other": {"base_url": f"{simulator.url}/v1"}}
    server, _ = start_gateway(f"{simulator.url}/v1", providers=providers, **settings())  # no default provider
    response = await mint(server, model="mystery-model")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "code": "model_not_found",
        "message": "The model 'mystery-model' is not served by this gateway.",
        "param": "session.model",
    }


async def test_mint_needs_a_virtual_key_and_accepts_json_variants(secrets_gateway):
    server, _ = secrets_gateway
    assert (await mint(server, key="sk-bf-unknown")).status_code == 401
    assert (await mint(server, key="sk-bf-mini-only")).json()["error"]["code"] == "model_not_allowed"
    token = (await mint(server)).json()["value"]
    assert (await mint(server, key=token)).status_code == 401  # a client secret cannot mint more
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/openai/realtime/client_secrets",
            headers={"Authorization": f"Bearer {VIRTUAL_KEY}", "Content-Type": "application/vnd.example+json; charset=utf-8"},
            content=b'{"session": {"model": "gpt-realtime"}}',
        )
    assert response.status_code == 200 and response.json()["session"]["type"] == "realtime"


async def test_expired_tampered_and_foreign_tokens_are_refused_before_upstream(simulator, start_gateway):
    server, _ = start_gateway(f"{simulator.url}/v1", **settings())
    other, _ = start_gateway(f"{simulator.url}/v1", **settings(secret="another-gateway-signing-key"))
    good = (await mint(server)).json()["value"]
    sealer = ClientSecrets(SECRET, MemoryKV())
    grant = sealer._unseal(good)
    expired = sealer.seal(
        key_id=grant.key_id, provider=grant.provider, model=grant.model, provider_token=grant.provider_token, expires_at=int(time.time()) - 1
    )
    flipped = good[:20] + ("A" if good[20] != "A" else "B") + good[21:]
    foreign = (await mint(other)).json()["value"]
    for token in (expired, flipped, foreign, "ek_not-a-token"):
        for via in ("subprotocol", "header"):
            event, code, reason = await refusal(server, token, via)
            assert event["error"]["code"] == "invalid_api_key" and (code, reason) == (3000, "invalid_request_error.invalid_api_key")
    async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{good}"]) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_revoking_a_token_and_a_key(secrets_gateway):
    server, _ = secrets_gateway
    first, second = (await mint(server)).json()["value"], (await mint(server)).json()["value"]
    async with httpx.AsyncClient() as http:
        revoke = f"{server.url}/api/client_secrets/revoke"
        assert (await http.post(revoke, json={"token": first})).status_code == 401  # admin only
        response = await http.post(revoke, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json={"token": first})
        assert response.status_code == 200 and response.json()["revoked"] == "token"
        assert (await refusal(server, first))[0]["error"]["code"] == "invalid_api_key"
        async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{second}"]) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"

        response = await http.post(revoke, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json={"virtual_key": "team-a"})
        assert response.json() == {"revoked": "virtual_key", "name": "team-a"}
        assert (await refusal(server, second))[0]["error"]["code"] == "invalid_api_key"
        later = (await mint(server)).json()["value"]  # minted after the revocation: valid
        async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{later}"]) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_a_token_minted_by_one_process_opens_a_session_on_another(simulator, tmp_path):
    import yaml

    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "providers": {"openai": {"base_url": f"{simulator.url}/v1", "api_key": "sk-provider"}},
                "virtual_keys": [{"key": VIRTUAL_KEY, "name": "team-a"}],
                "client_secrets": {"secret": SECRET},
                "turn_log": {"store": "none"},
            }
        )
    )
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen([sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(config), "--port", str(port)], stderr=subprocess.PIPE, text=True)
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            await asyncio.to_thread(wait_until_listening, port, process)
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"http://127.0.0.1:{ports[0]}/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
                json={"session": {"type": "realtime", "model": "gpt-realtime"}},
            )
        token = response.json()["value"]
        async with websockets.connect(f"ws://127.0.0.1:{ports[1]}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await text_turn(ws)
        for process in processes:
            process.terminate()
        logs = [process.communicate(timeout=15)[1] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    turns = [json.loads(line.split(" bifrost_rt.turns ", 1)[1]) for line in logs[1].splitlines() if " bifrost_rt.turns " in line]
    assert [t["principal"] for t in turns] == ["team-a"]
    assert provider_token_of(token) not in logs[0] + logs[1]


async def test_cors_preflight_actual_requests_and_websocket_origin(secrets_gateway):
    server, _ = secrets_gateway
    async with httpx.AsyncClient() as http:
        for path in ("/v1/realtime/calls", "/v1/realtime/client_secrets", "/openai/v1/realtime/sessions"):
            preflight = await http.options(
                f"{server.url}{path}",
                headers={
                    "Origin": APP_ORIGIN,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type, openai-beta, x-openai-agents-sdk",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
            allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type", "openai-beta", "x-openai-agents-sdk"} <= allowed
        refused = await http.options(
            f"{server.url}/v1/realtime/client_secrets",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

        body = {"session": {"model": "gpt-realtime"}}
        auth = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
        ok = await http.post(f"{server.url}/v1/realtime/client_secrets", headers={**auth, "Origin": APP_ORIGIN}, json=body)
        assert ok.headers["access-control-allow-origin"] == APP_ORIGIN
        other = await http.post(f"{server.url}/v1/realtime/client_secrets", headers={**auth, "Origin": "https://evil.example"}, json=body)
        assert "access-control-allow-origin" not in other.headers  # the browser will not hand it to the page

    url = f"{server.ws_url}/v1/realtime?model=gpt-realtime"
    with pytest.raises(InvalidStatus) as refused_ws:
        async with websockets.connect(url, origin="https://evil.example", additional_headers=auth):
            pass
    assert refused_ws.value.response.status_code == 403
    for origin in (APP_ORIGIN, None):
        async with websockets.connect(url, origin=origin, additional_headers=auth) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_the_forwarded_session_names_the_bare_upstream_model(secrets_gateway):
    server, _ = secrets_gateway
    response = await mint(server, model="openai/gpt-realtime")
    assert response.status_code == 200
    session = response.json()["session"]
    assert session["model"] == "gpt-realtime" and session["type"] == "realtime"  # what the provider was asked for
    token = response.json()["value"]
    async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as ws:
        assert json.loads(await ws.recv())["session"]["model"] == "gpt-realtime"


async def test_no_token_outlives_max_ttl_so_a_key_revocation_holds(simulator, start_gateway):
    server, _ = start_gateway(f"{simulator.url}/v1", **{**settings(), "client_secrets": {"secret": SECRET, "max_ttl_s": 2}})
    minted = (await mint(server, seconds=600)).json()
    assert minted["expires_at"] <= time.time() + 2  # capped at mint, and the answer says so
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/api/client_secrets/revoke", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json={"virtual_key": "team-a"}
        )
        assert response.status_code == 200
    assert (await refusal(server, minted["value"]))[0]["error"]["code"] == "invalid_api_key"
    await asyncio.sleep(3)  # the revocation record is gone by now; the token must be too
    event, code, _ = await refusal(server, minted["value"])
    assert event["error"]["code"] == "invalid_api_key" and code == 3000


async def test_a_token_sealed_with_a_long_expiry_still_ends_at_max_ttl(simulator, start_gateway):
    server, _ = start_gateway(f"{simulator.url}/v1", **{**settings(), "client_secrets": {"secret": SECRET, "max_ttl_s": 2}})
    grant = ClientSecrets(SECRET, MemoryKV())._unseal((await mint(server)).json()["value"])
    forged_long = ClientSecrets(SECRET, MemoryKV(), max_ttl_s=10**6).seal(  # as a gateway with another max_ttl_s would mint
        key_id=grant.key_id, provider=grant.provider, model=grant.model, provider_token=grant.provider_token, expires_at=int(time.time()) + 600
    )
    async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{forged_long}"]) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    await asyncio.sleep(2.5)
    assert (await refusal(server, forged_long))[0]["error"]["code"] == "invalid_api_key"


async def test_a_bad_client_secret_is_called_one_without_saying_which(secrets_gateway):
    server, _ = secrets_gateway
    token = (await mint(server)).json()["value"]
    forged = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    async with httpx.AsyncClient() as http:
        await http.post(f"{server.url}/api/client_secrets/revoke", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json={"token": token})
        for bad in (forged, token):
            event, _, _ = await refusal(server, bad, via="header")
            assert event["error"]["message"] == "Incorrect API key provided. The client secret is invalid, expired or revoked."
            call = await http.post(f"{server.url}/v1/realtime/calls", headers={"Authorization": f"Bearer {bad}", "Content-Type": "application/sdp"}, content="v=0\r\n")
            assert call.status_code == 401 and call.json()["error"]["message"].endswith("invalid, expired or revoked.")
        event, _, _ = await refusal(server, "sk-bf-not-a-key", via="header")
        assert "not a virtual key known to this gateway" in event["error"]["message"]
