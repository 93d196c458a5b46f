"""The simulator's emulated WAN and its test endpoints, over real sockets (websockets, httpx).

Delays are checked as lower bounds only (a slow machine can make a trip longer, never shorter), and order as
exact sequences: jitter must stretch gaps without ever reordering what TCP would deliver in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app
from bifrost_rt.tools.simulator.wan import Wan

from servers import ServerThread

RTT_MS = 100


async def recv_event(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_the_delays_repeat_with_a_seed_and_stay_within_the_jitter():
    wans = [Wan(80, 30, 2, seed) for seed in (7, 7, 8)]
    draws = [[wan.one_way_s() for _ in range(200)] for wan in wans]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]
    assert all(0.010 <= d <= 0.070 for d in draws[0])  # 40 ms ± 30 ms one way
    assert len(set(draws[0])) > 100  # jitter, not a constant


async def test_a_websocket_pays_the_handshake_and_each_message_a_one_way_trip():
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, rtt_ms=RTT_MS, response_audio_ms=200))) as sim:
        began = time.perf_counter()
        async with websockets.connect(f"{sim.ws_url}/v1/realtime?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer sk-a"}) as ws:
            assert (await recv_event(ws))["type"] == "session.created"
            # TCP + TLS 1.3 (2 round trips), then the upgrade request and session.created (one more).
            assert time.perf_counter() - began >= 3 * RTT_MS / 1000
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "response.create"}))
            assert (await recv_event(ws))["type"] == "response.created"
            assert time.perf_counter() - sent >= RTT_MS / 1000  # there and back


async def test_http_answers_take_a_round_trip_and_new_connections_the_handshake_too():
    with ServerThread(create_simulator_app(SimulatorOptions(rtt_ms=RTT_MS))) as sim:
        async with httpx.AsyncClient(base_url=sim.url) as http:
            times = []
            for _ in range(2):
                began = time.perf_counter()
                answer = await http.post("/v1/realtime/client_secrets", headers={"Authorization": "Bearer sk-a"}, json={})
                times.append(time.perf_counter() - began)
                assert answer.status_code == 200 and answer.json()["value"].startswith("ek_")
    assert times[0] >= 3 * RTT_MS / 1000  # a new connection: handshake, then the request and its answer
    assert times[1] >= RTT_MS / 1000  # kept alive: the request and its answer only


async def test_jitter_never_reorders_messages_either_way():
    options = SimulatorOptions(pace=0, rtt_ms=20, jitter_ms=20, wan_seed=1)
    with ServerThread(create_simulator_app(options)) as sim:
        async with websockets.connect(f"{sim.ws_url}/v1/realtime?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer sk-a"}) as ws:
            assert (await recv_event(ws))["type"] == "session.created"
            ids = [f"item_{n:03}" for n in range(40)]
            for item_id in ids:  # a burst: every one must arrive, in order, behind the one before
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": item_id}]}}))
            added = []
            while len(added) < len(ids):
                event = await recv_event(ws)
                assert event["type"] != "error", event
                if event["type"] == "conversation.item.added":
                    added.append(event)
    assert [e["item"]["id"] for e in added] == ids
    assert [e["previous_item_id"] for e in added] == [None, *ids[:-1]]


async def test_connections_report_credential_fingerprints_and_idle_ones_can_be_closed():
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as sim:
        url = f"{sim.ws_url}/v1/realtime?model=gpt-realtime"
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer sk-idle"}) as idle, \
                websockets.connect(url, additional_headers={"Authorization": "Bearer sk-busy"}) as busy:
            await recv_event(idle), await recv_event(busy)
            await busy.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            assert (await recv_event(busy))["type"] == "session.updated"
            async with httpx.AsyncClient(base_url=sim.url) as http:
                assert (await http.post("/sim/close_idle")).json() == {"closed": 1}
                with pytest.raises(ConnectionClosed) as closed:
                    await recv_event(idle)
                assert closed.value.rcvd.code == 1001
                await busy.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
                assert (await recv_event(busy))["type"] == "session.updated"  # a session in use stays open
                report = (await http.get("/sim/connections")).json()["connections"]
    by_key = {c["credential_sha256"]: c for c in report}
    fingerprint = {key: hashlib.sha256(key.encode()).hexdigest()[:16] for key in ("sk-idle", "sk-busy")}
    assert set(by_key) == set(fingerprint.values())
    assert by_key[fingerprint["sk-idle"]]["open"] is False
    assert by_key[fingerprint["sk-busy"]]["client_messages"] == 2
    assert "sk-idle" not in json.dumps(report) and "sk-busy" not in json.dumps(report)
