"""`GET /metrics` after real traffic: the numbers match what the client saw."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from bifrost_rt.policy.hooks import Plugin, TurnRequest

from conftest import VIRTUAL_KEY


class Faulty(Plugin):
    name = "faulty"

    async def pre_turn(self, request: TurnRequest) -> None:
        raise RuntimeError("bug")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_sessions_frames_turns_tokens_and_hook_failures(simulator, start_gateway):
    server, sink = start_gateway(f"{simulator.url}/v1", with_plugins=(Faulty(),))
    url = f"{server.ws_url}/v1/realtime?model=gpt-realtime"
    received = sent = 0
    received_chars = 0
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        frames = [
            json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}),
            json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}),
        ]
        for frame in frames:
            await ws.send(frame)
        sent = len(frames)
        while True:
            frame = await asyncio.wait_for(ws.recv(), 10)
            received += 1
            received_chars += len(frame)
            if json.loads(frame)["type"] == "rate_limits.updated":
                break
        async with httpx.AsyncClient() as http:
            during = samples((await http.get(f"{server.url}/metrics")).text)
        assert during[("bifrost_rt_sessions_active", (("transport", "websocket"),))] == 1
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer sk-bf-wrong"}) as refused:
        await refused.recv()
    (record,) = sink.wait_for(1)

    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    metrics = samples(response.text)
    assert metrics[("bifrost_rt_sessions_opened_total", (("transport", "websocket"),))] == 1
    assert metrics[("bifrost_rt_sessions_refused_total", (("reason", "invalid_api_key"),))] == 1
    assert metrics[("bifrost_rt_frames_relayed_total", (("direction", "down"),))] == received
    assert metrics[("bifrost_rt_frames_relayed_total", (("direction", "up"),))] == sent
    assert metrics[("bifrost_rt_bytes_relayed_total", (("direction", "down"),))] == received_chars
    assert metrics[("bifrost_rt_turns_total", (("status", "completed"),))] == 1
    key_model = (("key", "team-a"), ("kind", "input"), ("model", "gpt-realtime"))
    assert metrics[("bifrost_rt_tokens_total", key_model)] == record.usage["input_tokens"]
    assert metrics[("bifrost_rt_cost_usd_total", (("key", "team-a"), ("model", "gpt-realtime")))] == record.cost["total"]
    assert metrics[("bifrost_rt_hook_failures_total", (("kind", "exception"), ("plugin", "faulty")))] == 1
    assert metrics[("bifrost_rt_turn_latency_seconds_count", (("stage", "total"),))] == 1
    assert ("bifrost_rt_turn_queue_depth", ()) in metrics
