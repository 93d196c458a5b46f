"""Governance and the durable turn log on a real gateway: budgets, rate limits, session caps, Redis shared by two
gateway processes, provider quota errors, and the session-log API over a real session."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
import websockets
import yaml
from openai import AsyncOpenAI
from test_serve import free_port, wait_until_listening
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from conftest import VIRTUAL_KEY, recv_json, recv_until

pytest_plugins = ["redis_service"]

ADMIN_KEY = "adm-pipeline"


def connect(server, key: str = VIRTUAL_KEY):
    return websockets.connect(f"{server.ws_url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {key}"})





async def text_turn(ws, text: str = "hello", event_id: str | None = None) -> list[dict]:
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    create = {"type": "response.create", "response": {"output_modalities": ["text"]}}
    if event_id:
        create["event_id"] = event_id
    await ws.send(json.dumps(create))
    return await recv_until(ws, "response.done")


def limited_key(**policy) -> list[dict]:
    return [{"key": VIRTUAL_KEY, "name": "team-a", **policy}]


async def test_a_turn_that_exhausts_the_budget_finishes_then_the_session_ends(simulator, start_gateway):
    server, sink = start_gateway(f"{simulator.url}/v1", virtual_keys=limited_key(budget={"usd": 0.0001, "period": "day"}))
    async with connect(server) as ws:
        await recv_json(ws)
        done = (await text_turn(ws))[-1]
        assert done["response"]["status"] == "completed"  # the turn that crossed the budget was let finish
        event = (await recv_until(ws, "error"))[-1]
        assert event["error"]["code"] == "insufficient_quota"
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert (ws.close_code, ws.close_reason) == (1008, "insufficient_quota.insufficient_quota")
    assert sink.wait_for(1)[0].cost["total"] > 0.0001
    # Out of budget: refused at connect, before any upstream connection.
    async with connect(server) as ws:
        event = await recv_json(ws)
        assert event["error"]["type"] == "insufficient_quota"
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1008
    # Minting a client secret is refused too.
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
            json={"session": {"type": "realtime", "model": "gpt-realtime"}},
        )
    assert response.status_code in (429, 503)


async def test_turns_per_minute_refuse_the_turn_not_the_session(simulator, start_gateway):
    server, sink = start_gateway(f"{simulator.url}/v1", virtual_keys=limited_key(rate_limits={"turns_per_minute": 2}))
    async with connect(server) as ws:
        await recv_json(ws)
        for n in range(2):
            assert (await text_turn(ws, event_id=f"evt_{n}"))[-1]["response"]["status"] == "completed"
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_third"}))
        error = (await recv_until(ws, "error"))[-1]["error"]
        assert (error["type"], error["code"], error["event_id"]) == ("rate_limit_exceeded", "turns_per_minute", "evt_third")
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}}))
        assert (await recv_until(ws, "session.updated"))[-1]["session"]["instructions"] == "still here"
    assert [r.status for r in sink.wait_for(3)] == ["completed", "completed", "refused"]


async def test_concurrent_session_cap_per_key(simulator, start_gateway):
    server, _ = start_gateway(f"{simulator.url}/v1", virtual_keys=limited_key(max_sessions=1))
    async with connect(server) as first:
        await recv_json(first)
        async with connect(server) as second:
            event = await recv_json(second)
            assert event["error"]["code"] == "session_limit_reached"
            with pytest.raises(ConnectionClosed):
                await recv_json(second)
            assert second.close_code == 1008
    for _ in range(50):  # the slot is released as the first session's handler finishes
        async with connect(server) as again:
            event = await recv_json(again)
            if event["type"] == "session.created":
                break
        await asyncio.sleep(0.02)
    assert event["type"] == "session.created"


async def test_the_providers_quota_error_is_forwarded_then_the_session_ends(start_gateway):
    quota_error = '{"type":"error","event_id":"event_q","error":{"type":"insufficient_quota","code":"insufficient_quota","message":"You exceeded your current quota.","param":null,"event_id":null}}'

    async def provider(ws):
        await ws.send('{"type":"session.created","event_id":"event_1","session":{"id":"sess_1","type":"realtime","model":"gpt-realtime"}}')
        await ws.send(quota_error)
        await ws.wait_closed()

    async with ws_serve(provider, "127.0.0.1", 0) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        server, _ = start_gateway(f"http://127.0.0.1:{port}/v1")
        async with connect(server) as ws:
            await recv_json(ws)
            assert await asyncio.wait_for(ws.recv(), 10) == quota_error  # byte-identical
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert (ws.close_code, ws.close_reason) == (1008, "insufficient_quota.insufficient_quota")


async def test_two_gateway_processes_share_one_budget_and_one_session_cap(simulator, redis_server, tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "providers": {"openai": {"base_url": f"{simulator.url}/v1", "api_key": "sk-provider"}},
                "virtual_keys": [{"key": VIRTUAL_KEY, "name": "team-a", "max_sessions": 1, "budget": {"usd": 0.0001, "period": "month"}}],
                "store": {"redis_url": redis_server.url},
                "turn_log": {"store": "none"},
            }
        )
    )
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen([sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(config), "--port", str(port)], stderr=subprocess.DEVNULL)
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            await asyncio.to_thread(wait_until_listening, port, process)
        urls = [f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime" for port in ports]
        auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
        async with websockets.connect(urls[0], **auth) as first:
            await recv_json(first)
            async with websockets.connect(urls[1], **auth) as second:  # the other process knows the slot is taken
                assert (await recv_json(second))["error"]["code"] == "session_limit_reached"
            await text_turn(first)  # spends more than the whole budget
            assert (await recv_until(first, "error"))[-1]["error"]["code"] == "insufficient_quota"
        for _ in range(100):  # wait for process 0 to release its slot; then the budget is what refuses
            async with websockets.connect(urls[1], **auth) as late:
                error = (await recv_json(late))["error"]
            if error["code"] != "session_limit_reached":
                break
            await asyncio.sleep(0.05)
        assert error["type"] == "insufficient_quota"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(15)


async def test_session_logs_api_over_a_real_session(simulator, start_gateway, tmp_path):
    server, _ = start_gateway(
        f"{simulator.url}/v1",
        turn_log={"store": "sqlite", "sqlite_path": str(tmp_path / "turns.db"), "spill_path": str(tmp_path / "spill.jsonl")},
        admin_keys=[ADMIN_KEY],
    )
    client = AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{server.url}/v1", websocket_base_url=f"{server.ws_url}/v1")
    usages = []
    async with client.realtime.connect(model="gpt-realtime", extra_headers={"baggage": "session-id=support-call-7"}) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        for text in ("first question", "second question", "third question"):
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
            await conn.response.create()
            async for event in conn:
                if event.type == "response.done":
                    usages.append(event.response.usage)
                    break
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, headers=admin) as http:
        for _ in range(100):  # records reach the database through the batching writer
            page = (await http.get("/api/logs/sessions/support-call-7", params={"limit": 2})).json()
            if page["total_count"] == 3:
                break
            await asyncio.sleep(0.05)
        assert (page["returned_count"], page["has_more"]) == (2, True)
        assert [log["inputs"][-1]["text"] for log in page["logs"]] == ["first question", "second question"]
        newest = (await http.get("/api/logs/sessions/support-call-7", params={"order": "desc", "limit": 1})).json()["logs"][0]
        assert newest["usage"]["total_tokens"] == usages[-1].total_tokens and newest["principal"] == "team-a"
        summary = (await http.get("/api/logs/sessions/support-call-7/summary")).json()
        assert summary["turn_count"] == 3
        assert summary["total_tokens"] == sum(u.total_tokens for u in usages)
        assert (await http.get("/api/logs/sessions/support-call-7", params={"limit": 501})).status_code == 400
        filtered = (await http.get("/api/logs", params={"virtual_key": "team-a", "status": "completed"})).json()
        assert filtered["total_count"] == 3
        assert (await http.get("/api/logs", headers={"Authorization": f"Bearer {VIRTUAL_KEY}"})).status_code == 401
