"""The warm pool: real clients (openai-python, websockets) through the real gateway to the simulator.

What a caller would notice: a pooled session is one the provider opened before the caller came (its id was
already listed by the simulator), it works, and it carries the right credential; a session the provider closed
while pooled is never handed out; an outage empties the pool and callers get `upstream_unavailable`; idle pooled
sessions count against no key's cap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import Any

import httpx
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from bifrost_rt.config import ConfigError, parse_config
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import PROVIDER_KEY, VIRTUAL_KEY, gateway_config, recv_json
from servers import ServerThread

OTHER_PROVIDER_KEY = "sk-provider-b-never-shown"
CAPPED_KEY = "sk-bf-capped"


def fingerprint(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


def pooled_provider(sim: ServerThread, key: str = PROVIDER_KEY, **pool: Any) -> dict[str, Any]:
    return {"base_url": f"{sim.url}/v1", "api_key": key, "warm_pool": {"models": ["gpt-realtime"], **pool}}


async def metric(server: ServerThread, name: str, provider: str = "openai") -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server.url}/metrics")).text
    match = re.search(rf'^bifrost_rt_warm_pool_{name}(?:_total)?{{provider="{provider}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def eventually(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


async def pool_holds(server: ServerThread, count: int, provider: str = "openai") -> None:
    async def check() -> bool:
        return await metric(server, "sessions", provider) == count

    await eventually(check, f"{count} pooled session(s) for {provider}")


async def sim_connections(sim: ServerThread) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{sim.url}/sim/connections")).json()["connections"]


def client(server: ServerThread, key: str = VIRTUAL_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{server.url}/v1", websocket_base_url=f"{server.ws_url}/v1")


def ws_url(server: ServerThread, model: str = "gpt-realtime") -> str:
    return f"{server.ws_url}/v1/realtime?model={model}"


async def raw_session(server: ServerThread, key: str = VIRTUAL_KEY, model: str = "gpt-realtime"):
    return await websockets.connect(ws_url(server, model), additional_headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def sim():
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0, response_audio_ms=200))) as server:
        yield server


async def test_a_caller_gets_a_session_opened_before_it_came_and_its_first_update_goes_there(sim, start_gateway):
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pooled_provider(sim, min_size=2)})
    await pool_holds(server, 2)
    pooled = {c["session_id"] for c in await sim_connections(sim) if c["open"]}
    assert len(pooled) == 2

    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.id in pooled
        assert created.event_id.startswith("event_")
        await conn.session.update(session={"type": "realtime", "instructions": "Speak like a pirate."})
        updated = await conn.recv()
        assert updated.type == "session.updated" and updated.session.instructions == "Speak like a pirate."
        at_sim = {c["session_id"]: c for c in await sim_connections(sim)}
        assert at_sim[created.session.id]["client_messages"] == 1  # that very upstream took the update
    assert await metric(server, "hits") == 1 and await metric(server, "misses") == 0
    await pool_holds(server, 2)  # refilled behind the claim


async def test_a_claims_refill_waits_the_refill_delay_so_it_stays_off_the_callers_first_turn(sim, start_gateway):
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pooled_provider(sim, min_size=1, refill_delay_s=1.5)})
    await pool_holds(server, 1)
    opened = len(await sim_connections(sim))
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.response.create()
        async for event in conn:  # the caller's first turn, start to end, with no refill connect beside it
            if event.type == "response.done":
                break
        assert len(await sim_connections(sim)) == opened
        assert await metric(server, "sessions") == 0
        await pool_holds(server, 1)  # then refilled, once the delay is over
        assert len(await sim_connections(sim)) == opened + 1


async def test_two_claims_never_share_a_session_and_event_ids_are_fresh(sim, start_gateway):
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pooled_provider(sim, min_size=2)})
    await pool_holds(server, 2)
    first, second = await raw_session(server), await raw_session(server)
    try:
        one, two = await recv_json(first), await recv_json(second)
    finally:
        await first.close()
        await second.close()
    assert one["session"]["id"] != two["session"]["id"]
    assert one["event_id"] != two["event_id"]
    assert await metric(server, "hits") == 2


async def test_a_miss_connects_as_today_and_the_pool_learns_the_demand(sim, start_gateway):
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pooled_provider(sim, min_size=0, models=[])})
    async with client(server).realtime.connect(model="gpt-realtime-mini") as conn:
        assert (await conn.recv()).type == "session.created"
    assert await metric(server, "misses") == 1 and await metric(server, "hits") == 0
    await pool_holds(server, 1)  # one asked for in the window: one kept ready
    async with client(server).realtime.connect(model="gpt-realtime-mini") as conn:
        created = await conn.recv()
        assert created.session.model == "gpt-realtime-mini"
    assert await metric(server, "hits") == 1
    async with client(server).realtime.connect(model="gpt-realtime") as conn:  # another model: another key
        assert (await conn.recv()).session.model == "gpt-realtime"
    assert await metric(server, "misses") == 2


async def test_sessions_are_recycled_before_they_age_and_closed_at_the_provider(sim, start_gateway):
    pool = pooled_provider(sim, min_size=1, recycle_after_s=0.3, max_age_s=3600)
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pool})

    async def recycled_twice() -> bool:
        return await metric(server, "recycled") >= 2

    await eventually(recycled_twice, "two sessions recycled")
    closed = {c["session_id"] for c in await sim_connections(sim) if not c["open"]}
    assert len(closed) >= 2  # each recycled session was closed at the provider, not leaked
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        created = await conn.recv()
        assert created.session.id not in closed


async def test_a_session_the_provider_closed_while_pooled_is_never_handed_out(sim, start_gateway):
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pooled_provider(sim, min_size=2, backoff_initial_s=5)})
    await pool_holds(server, 2)
    pooled = {c["session_id"] for c in await sim_connections(sim) if c["open"]}
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{sim.url}/sim/close_idle")).json() == {"closed": 2}

    async def noticed() -> bool:
        return await metric(server, "recycled") >= 2

    await eventually(noticed, "the gateway noticed the closed pooled sessions")
    for _ in range(3):  # whatever the pool holds now, and misses beyond it
        async with client(server).realtime.connect(model="gpt-realtime") as conn:
            created = await conn.recv()
            assert created.session.id not in pooled
            await conn.session.update(session={"type": "realtime", "instructions": "still here"})
            assert (await conn.recv()).type == "session.updated"


async def test_a_provider_outage_empties_the_pool_and_callers_get_upstream_unavailable(start_gateway):
    sim = ServerThread(create_simulator_app(SimulatorOptions(pace=0))).start()
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pooled_provider(sim, min_size=2)})
    await pool_holds(server, 2)
    sim.stop()
    await pool_holds(server, 0)

    async def refills_fail() -> bool:
        return await metric(server, "failures") >= 1

    await eventually(refills_fail, "a failed refill")
    async with await raw_session(server) as ws:
        event = await recv_json(ws)
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
    assert event["type"] == "error" and event["error"]["code"] == "upstream_unavailable"
    assert ws.close_code == 1011
    assert PROVIDER_KEY not in json.dumps(event)


async def test_idle_pooled_sessions_count_against_no_key_cap_or_budget(sim, start_gateway):
    server, sink = start_gateway(
        f"{sim.url}/v1",
        providers={"openai": pooled_provider(sim, min_size=3)},
        virtual_keys=[{"key": CAPPED_KEY, "name": "capped", "max_sessions": 1, "budget": {"usd": 1, "period": "day"}}],
    )
    await pool_holds(server, 3)  # three live upstream sessions, yet the key with a cap of one may connect
    assert sink.records == []
    async with client(server, CAPPED_KEY).realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"
        async with await raw_session(server, CAPPED_KEY) as second:  # the cap counts claimed sessions only
            refusal = await recv_json(second)
        assert refusal["error"]["code"] == "session_limit_reached"
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        await conn.response.create(response={"output_modalities": ["text"]})
        async for event in conn:
            if event.type == "response.done":
                break
    records = sink.wait_for(1)
    assert [r.principal for r in records] == ["capped"]  # the one turn of the claimed session, nothing for idle ones
    async with client(server, CAPPED_KEY).realtime.connect(model="gpt-realtime") as conn:  # the slot was freed
        assert (await conn.recv()).type == "session.created"


async def test_a_pooled_session_only_reaches_callers_of_its_own_credential(sim, start_gateway):
    server, _ = start_gateway(
        f"{sim.url}/v1",
        providers={"openai": pooled_provider(sim, min_size=1), "b": pooled_provider(sim, OTHER_PROVIDER_KEY, min_size=1)},
        client_secrets={"secret": "a-long-enough-secret-for-tokens"},
    )
    await pool_holds(server, 1, "openai")
    await pool_holds(server, 1, "b")
    seen = {}
    for model in ("openai/gpt-realtime", "b/gpt-realtime"):
        async with client(server).realtime.connect(model=model) as conn:
            seen[model] = (await conn.recv()).session.id
    by_session = {c["session_id"]: c["credential_sha256"] for c in await sim_connections(sim)}
    assert by_session[seen["openai/gpt-realtime"]] == fingerprint(PROVIDER_KEY)
    assert by_session[seen["b/gpt-realtime"]] == fingerprint(OTHER_PROVIDER_KEY)
    assert await metric(server, "hits", "openai") == 1 and await metric(server, "hits", "b") == 1

    # A gateway client secret carries the provider's own client secret: it bypasses the pool entirely.
    async with httpx.AsyncClient() as http:
        minted = await http.post(f"{server.url}/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
                                 json={"session": {"type": "realtime", "model": "openai/gpt-realtime"}})
    assert minted.status_code == 200, minted.text
    async with await raw_session(server, minted.json()["value"], "openai/gpt-realtime") as ws:
        session_id = (await recv_json(ws))["session"]["id"]
    by_session = {c["session_id"]: c["credential_sha256"] for c in await sim_connections(sim)}
    assert by_session[session_id] not in (fingerprint(PROVIDER_KEY), fingerprint(OTHER_PROVIDER_KEY))
    assert await metric(server, "hits", "openai") == 1 and await metric(server, "misses", "openai") == 0


async def test_a_pool_learned_from_callers_closes_when_they_stop_asking(sim, start_gateway):
    pool = pooled_provider(sim, min_size=1, models=[], key_idle_ttl_s=1.0)
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pool})
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        asked = (await conn.recv()).session.id
    await pool_holds(server, 1)
    await pool_holds(server, 0)  # nobody asked again within key_idle_ttl_s

    async def all_closed() -> bool:
        return not [c for c in await sim_connections(sim) if c["open"]]

    await eventually(all_closed, "the learned pool's sessions closed at the provider")
    assert asked in {c["session_id"] for c in await sim_connections(sim)}


async def test_stopping_the_gateway_closes_its_pooled_sessions_at_the_provider(sim, start_gateway):
    server, _ = start_gateway(f"{sim.url}/v1", providers={"openai": pooled_provider(sim, min_size=2)})
    await pool_holds(server, 2)
    assert len([c for c in await sim_connections(sim) if c["open"]]) == 2
    server.stop()

    async def all_closed() -> bool:
        return not [c for c in await sim_connections(sim) if c["open"]]

    await eventually(all_closed, "pooled sessions closed on shutdown")


@pytest.mark.parametrize(("pool", "message"), [
    ({"min_size": 5, "max_size": 2}, "min_size must not exceed max_size"),
    ({"recycle_after_s": 3600, "max_age_s": 3600}, "recycle_after_s must be below max_age_s"),
])
def test_inconsistent_pool_settings_are_refused_naming_the_field(pool, message):
    config = gateway_config("http://127.0.0.1:1/v1")
    config["providers"]["openai"]["warm_pool"] = pool
    with pytest.raises(ConfigError, match=message) as refused:
        parse_config(config)
    assert "providers.openai.warm_pool" in str(refused.value)


def test_a_gemini_provider_refuses_a_warm_pool() -> None:
    config = gateway_config("http://127.0.0.1:1/v1")
    config["providers"]["gemini"] = {"kind": "gemini", "api_key": "g", "warm_pool": {}}
    with pytest.raises(ConfigError, match="set up by the client's first message"):
        parse_config(config)
    del config["providers"]["gemini"]["warm_pool"]
    config["models"] = {"gemini-live": {"provider": "gemini", "model": "gemini-live-2.5-flash-preview", "warm_pool": {}}}
    with pytest.raises(ConfigError, match="models.gemini-live.warm_pool"):
        parse_config(config)


async def test_a_rotated_credential_never_reaches_a_caller_through_the_pool(start_gateway, tmp_path):
    old, new = "entra-token-before", "entra-token-after"
    options = SimulatorOptions(pace=0, flavor="azure", api_keys=[old, new], azure_deployments={"prod-voice": "gpt-realtime"})
    token = tmp_path / "token"
    token.write_text(old)
    with ServerThread(create_simulator_app(options)) as azure:
        server, _ = start_gateway(
            f"{azure.url}/v1",
            providers={"azure": {"kind": "azure", "base_url": azure.url, "entra": {"token_file": str(token), "refresh_s": 0.001}}},
            default_provider="azure",
            models={"gpt-realtime": {"provider": "azure", "model": "prod-voice",
                                     "warm_pool": {"min_size": 1, "recycle_after_s": 0.5}}},
        )
        await pool_holds(server, 1, "azure")
        assert {c["credential_sha256"] for c in await sim_connections(azure) if c["open"]} == {fingerprint(old)}
        token.write_text(new)

        async def rewarmed() -> bool:
            open_sessions = [c for c in await sim_connections(azure) if c["open"]]
            return bool(open_sessions) and {c["credential_sha256"] for c in open_sessions} == {fingerprint(new)}

        await eventually(rewarmed, "the pool re-warmed with the new token and closed the old sessions")
        async with await raw_session(server) as ws:
            created = await recv_json(ws)
        by_session = {c["session_id"]: c["credential_sha256"] for c in await sim_connections(azure)}
        assert created["type"] == "session.created" and by_session[created["session"]["id"]] == fingerprint(new)
