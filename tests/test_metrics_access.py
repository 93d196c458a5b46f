"""Who may read `GET /metrics` (`metrics.bearer_token`) and how keys are named in it (`metrics.key_label`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import websockets
from test_http_limits import gateway_process
from test_metrics import samples

from bifrost_rt.policy.auth import key_id
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY
from servers import ServerThread

METRICS_TOKEN = "metrics-scrape-token-for-tests"


async def test_metrics_need_the_bearer_token_when_one_is_configured(simulator, start_gateway, monkeypatch):
    monkeypatch.setenv("BF_TEST_METRICS_TOKEN", METRICS_TOKEN)
    server, _ = start_gateway(f"{simulator.url}/v1", metrics={"bearer_token": "${BF_TEST_METRICS_TOKEN}"})
    async with httpx.AsyncClient(base_url=server.url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {METRICS_TOKEN}"}, {"Authorization": f"Bearer {VIRTUAL_KEY}"}):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"].startswith("Bearer")
            error = refused.json()["error"]
            assert set(error) == {"type", "code", "message", "param"} and error["code"] == "invalid_api_key"
            assert METRICS_TOKEN not in refused.text and "bifrost_rt_" not in refused.text
        allowed = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert allowed.status_code == 200 and "bifrost_rt_sessions_opened_total" in allowed.text
        # Other routes do not take the scrape token, and the health checks stay open.
        assert (await http.get("/healthz")).status_code == 200


async def test_metrics_are_open_without_a_token(gateway):
    server, _ = gateway
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.url}/metrics")).status_code == 200


async def _text_turn(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "response.done":
            pass


async def _key_labels_after_a_turn(directory: Path, upstream_port: int) -> tuple[set[str], str]:
    with gateway_process(directory, upstream_port, metrics={"key_label": "id"}) as port:
        await _text_turn(port)
        async with httpx.AsyncClient() as http:
            for _ in range(200):  # the turn reaches the metrics through the turn writer, off the relay path
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                keys = {dict(labels)["key"] for (name, labels) in samples(text) if name in ("bifrost_rt_tokens_total", "bifrost_rt_cost_usd_total")}
                if keys:
                    return keys, text
                await asyncio.sleep(0.05)
    raise AssertionError("the turn never reached /metrics")


async def test_key_label_id_names_no_key_and_is_stable_across_restarts(tmp_path):
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as simulator:
        first, text = await _key_labels_after_a_turn(tmp_path, simulator.port)
        assert "team-a" not in text and VIRTUAL_KEY not in text
        second, _ = await _key_labels_after_a_turn(tmp_path, simulator.port)  # a new process, same configuration
    assert first == second == {key_id(VIRTUAL_KEY)}
