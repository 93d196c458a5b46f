"""The call directory on both stores, and calls reached across gateways by redirect and by a forged forward.

Two in-process gateways share a real Redis, each named as its own forwarding address (what `serve` sets up from
`server.instance_url`); the heavier end-to-end runs, behind nginx, are in test_multi_instance.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from bifrost_rt.config import parse_config
from bifrost_rt.http.call_peers import FORWARDED_HEADER, InstancePeers
from bifrost_rt.runtime.app import create_app
from bifrost_rt.runtime.gateway import Placement
from bifrost_rt.state.call_directory import CallDirectory, CallOwner
from bifrost_rt.state.kv import MemoryKV
from bifrost_rt.state.redis_kv import RedisKV

from conftest import VIRTUAL_KEY, gateway_config
from rtc_client import call, hang_up
from servers import ServerThread
from services import free_port

pytest_plugins = ["redis_service"]  # the redis_server fixture

SECRET = "instance-secret-of-the-directory-tests"
MODEL_PATH = "/v1/realtime/calls?model=gpt-realtime"


async def test_an_entry_is_found_until_removed_or_its_owner_stops_renewing_it(redis_server) -> None:
    now = [0.0]
    for kv in (MemoryKV(clock=lambda: now[0]), RedisKV(redis_server.url)):
        directory = CallDirectory(kv, ttl_s=3)
        owner = CallOwner("http://10.0.0.5:9080", "vk_0123")
        await directory.register("rtc_a", owner)
        await directory.register("rtc_b", owner)
        assert await directory.lookup("rtc_a") == owner
        await directory.remove("rtc_a")
        assert await directory.lookup("rtc_a") is None
        assert await directory.lookup("rtc_unknown") is None
        if isinstance(kv, MemoryKV):
            now[0] += 3.01
        else:
            while await kv.get("bifrost_rt:call:rtc_b") is not None:  # Redis expires it on its own clock
                await asyncio.sleep(0.1)
        assert await directory.lookup("rtc_b") is None
        await kv.close()


def test_a_forwarded_header_speaks_for_one_call_and_one_secret() -> None:
    peers = InstancePeers(SECRET, httpx.AsyncClient())
    header = peers.sign("rtc_a", "vk_0123")
    assert peers.verify(header, "rtc_a") == "vk_0123"
    assert peers.verify(header, "rtc_b") is None
    assert InstancePeers("another-secret-of-enough-length", httpx.AsyncClient()).verify(header, "rtc_a") is None
    expires, key_id, signature = header.split(":")
    assert peers.verify(f"{expires}:vk_other:{signature}", "rtc_a") is None
    assert peers.verify(f"{int(expires) - 3600}:{key_id}:{signature}", "rtc_a") is None
    assert peers.verify("garbage", "rtc_a") is None


@pytest.fixture
def simulator() -> Iterator[ServerThread]:
    from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as server:
        yield server


@pytest.fixture
def two_gateways(simulator: ServerThread, redis_server) -> Iterator[tuple[ServerThread, ServerThread]]:
    servers = []
    for _ in range(2):
        port = free_port()
        config = parse_config(
            gateway_config(
                f"{simulator.url}/v1",
                server={"instance_secret": SECRET, "call_forwarding": "redirect"},
                store={"redis_url": redis_server.url},
                webrtc={"host_candidates": "loopback"},
            )
        )
        app = create_app(config, turn_sinks=[], placement=Placement(forward_url=f"http://127.0.0.1:{port}"))
        servers.append(ServerThread(app, port=port).start())
    try:
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


async def test_with_redirects_a_hangup_and_a_sideband_are_sent_to_the_owner(two_gateways: tuple[ServerThread, ServerThread]) -> None:
    owner, other = two_gateways
    async with call(owner, key=VIRTUAL_KEY, path=MODEL_PATH) as (caller, call_id):
        # websockets follows the redirect to the owner, which serves the sideband itself.
        async with websockets.connect(f"{other.ws_url}/v1/realtime?call_id={call_id}", additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as sideband:
            await sideband.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "redirected"}}))
            while (event := json.loads(await asyncio.wait_for(sideband.recv(), 10)))["type"] != "session.updated":
                assert event["type"] != "error", event
        async with httpx.AsyncClient() as http:
            path = f"/v1/realtime/calls/{call_id}/hangup"
            redirected = await http.post(f"{other.url}{path}", headers={"Authorization": f"Bearer {VIRTUAL_KEY}"})
            assert redirected.status_code == 307 and redirected.headers["location"] == f"{owner.url}{path}"
            # A header that claims to come from a peer but was not signed with the secret reaches nothing.
            forged = await http.post(f"{owner.url}{path}", headers={FORWARDED_HEADER: f"9999999999:{call_id}:00"})
            assert forged.status_code == 404 and forged.json()["error"]["code"] == "call_not_found"
            # Clients drop the credential on a redirect to another origin (httpx, browsers): the caller sends it again.
            reply = await http.post(redirected.headers["location"], headers={"Authorization": f"Bearer {VIRTUAL_KEY}"})
            assert reply.status_code == 200
        await asyncio.wait_for(caller.channel_closed.wait(), 10)
        assert (await hang_up(other, call_id, key=VIRTUAL_KEY)).status_code == 404  # type: ignore[arg-type]


async def test_without_the_store_a_call_is_reached_only_where_it_lives(two_gateways: tuple[ServerThread, ServerThread], redis_server) -> None:
    owner, other = two_gateways
    redis_server.stop()
    async with call(owner, key=VIRTUAL_KEY, path=MODEL_PATH) as (caller, call_id):
        refused = await hang_up(other, call_id, key=VIRTUAL_KEY)  # type: ignore[arg-type]
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "call_not_found"
        assert (await hang_up(owner, call_id, key=VIRTUAL_KEY)).status_code == 200  # type: ignore[arg-type]
        await asyncio.wait_for(caller.channel_closed.wait(), 10)
