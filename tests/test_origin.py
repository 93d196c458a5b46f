"""A browser origin outside `cors.allowed_origins` cannot act through the HTTP routes: 403 before anything happens.

The simulator behind the gateway records every HTTP request it receives, so "nothing happened" is checked where
it would have happened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from test_metrics import samples

from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY
from rtc_client import TIMEOUT_S, Caller
from servers import ServerThread

APP_ORIGIN = "https://app.example"
EVIL_ORIGIN = "https://evil.example"
ADMIN_KEY = "adm-origin-test-key"
PREFIXES = ("/v1", "/openai/v1", "/openai")
AUTH = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
MINT_BODY = {"session": {"type": "realtime", "model": "gpt-realtime"}}


class RecordingUpstream:
    """The simulator, noting each HTTP request's method and path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@pytest.fixture
def upstream() -> Iterator[tuple[ServerThread, RecordingUpstream]]:
    recorder = RecordingUpstream(create_simulator_app(SimulatorOptions(pace=0)))
    with ServerThread(recorder) as server:
        yield server, recorder


@pytest.fixture
def origin_gateway(upstream, start_gateway) -> ServerThread:
    server, _ = start_gateway(
        f"{upstream[0].url}/v1",
        client_secrets={"secret": "an-origin-test-sealing-secret"},
        cors={"allowed_origins": [APP_ORIGIN]},
        admin_keys=[ADMIN_KEY],
        webrtc={"host_candidates": "loopback"},
    )
    return server


def assert_origin_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "origin_not_allowed"
    assert set(error) == {"type", "code", "message", "param"}
    assert "access-control-allow-origin" not in response.headers


async def post_call(http: httpx.AsyncClient, path: str, origin: str | None) -> tuple[httpx.Response, Caller]:
    caller = Caller()
    headers = {**AUTH, "Content-Type": "application/sdp", **({"Origin": origin} if origin else {})}
    return await http.post(path, content=await caller.offer(), headers=headers), caller


async def test_a_disallowed_origin_acts_on_no_route_and_allowed_ones_still_do(origin_gateway, upstream):
    server, recorder = origin_gateway, upstream[1]
    evil = {"Origin": EVIL_ORIGIN}
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as http:
        for prefix in PREFIXES:
            assert_origin_refused(await http.post(f"{prefix}/realtime/client_secrets", headers={**AUTH, **evil}, json=MINT_BODY))
            assert_origin_refused(await http.post(f"{prefix}/realtime/sessions", headers={**AUTH, **evil}, json={"model": "gpt-realtime"}))
            for path in (f"{prefix}/realtime/calls?model=gpt-realtime", f"{prefix}/realtime?model=gpt-realtime"):
                response, caller = await post_call(http, path, EVIL_ORIGIN)
                await caller.close()
                assert_origin_refused(response)
        assert recorder.requests == [], "the provider was asked to mint or to call"

        # Allowed, and without an Origin (servers, SDKs): minted.
        minted = await http.post("/v1/realtime/client_secrets", headers={**AUTH, "Origin": APP_ORIGIN}, json=MINT_BODY)
        assert minted.status_code == 200 and minted.headers["access-control-allow-origin"] == APP_ORIGIN
        assert (await http.post("/openai/v1/realtime/client_secrets", headers=AUTH, json=MINT_BODY)).status_code == 200
        assert recorder.requests == [("POST", "/v1/realtime/client_secrets")] * 2
        token = minted.json()["value"]

        # A call from the allowed origin and one without an Origin are placed; the foreign origin cannot hang up.
        placed = []
        for origin in (APP_ORIGIN, None):
            response, caller = await post_call(http, "/v1/realtime/calls?model=gpt-realtime", origin)
            assert response.status_code == 201, response.text
            await caller.accept(response.text)
            placed.append((response.headers["location"].rsplit("/", 1)[-1], caller))
        try:
            call_id = placed[0][0]
            for prefix in PREFIXES:
                assert_origin_refused(await http.post(f"{prefix}/realtime/calls/{call_id}/hangup", headers={**AUTH, **evil}))
            # Still there to hang up: the refused requests did not.
            for (call_id, _), origin in zip(placed, (APP_ORIGIN, None), strict=True):
                hangup = await http.post(f"/v1/realtime/calls/{call_id}/hangup", headers={**AUTH, **({"Origin": origin} if origin else {})})
                assert hangup.status_code == 200, hangup.text
        finally:
            for _, caller in placed:
                await caller.close()

        # Revocation from the foreign origin is refused and the token keeps working.
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert_origin_refused(await http.post("/api/client_secrets/revoke", headers={**admin, **evil}, json={"token": token}))
        async with websockets.connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        revoked = await http.post("/api/client_secrets/revoke", headers={**admin, "Origin": APP_ORIGIN}, json={"token": token})
        assert revoked.status_code == 200 and revoked.json()["revoked"] == "token"

        metrics = samples((await http.get("/metrics")).text)
    assert metrics[("bifrost_rt_sessions_refused_total", (("reason", "origin_not_allowed"),))] == 2 * len(PREFIXES)


async def test_preflights_are_still_answered_by_the_cors_middleware(origin_gateway):
    async with httpx.AsyncClient(base_url=origin_gateway.url) as http:
        allowed = await http.options("/openai/realtime/calls", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
        refused = await http.options("/openai/realtime/calls", headers={"Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
