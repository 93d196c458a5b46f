"""The WebSocket relay driven by raw `websockets` clients: auth, refusals, byte fidelity, close codes, caps."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request

import pytest
import websockets
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from conftest import PROVIDER_KEY, VIRTUAL_KEY, recv_json, recv_until
from servers import ServerThread


def ws_url(server: ServerThread, path: str = "/v1/realtime", query: str = "model=gpt-realtime") -> str:
    return f"ws://127.0.0.1:{server.port}{path}?{query}"



def wait_for_sessions(server: ServerThread, count: int, timeout: float = 5.0) -> None:
    """Poll /readyz until the gateway reports `count` live sessions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.url}/readyz") as response:
            if json.loads(response.read())["sessions"] == count:
                return
        time.sleep(0.02)
    raise AssertionError(f"gateway never reported {count} session(s)")


async def expect_refusal(url: str, **connect_kwargs) -> tuple[dict, int, str, bytes]:
    """Connect, read the one error event, and the close code/reason that follows."""
    async with websockets.connect(url, **connect_kwargs) as ws:
        raw = await asyncio.wait_for(ws.recv(), 10)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return json.loads(raw), ws.close_code, ws.close_reason, raw.encode()


async def test_browser_subprotocol_auth_selects_realtime_and_never_echoes_the_key(gateway):
    server, _ = gateway
    async with websockets.connect(
        ws_url(server), subprotocols=["realtime", f"openai-insecure-api-key.{VIRTUAL_KEY}", "openai-project.proj_1"]
    ) as ws:
        assert ws.subprotocol == "realtime"
        assert VIRTUAL_KEY not in str(ws.response.headers)
        assert (await recv_json(ws))["type"] == "session.created"


@pytest.mark.parametrize("header", ["Authorization", "api-key", "x-api-key", "x-bf-vk"])
async def test_header_auth(gateway, header):
    server, _ = gateway
    value = f"Bearer {VIRTUAL_KEY}" if header == "Authorization" else VIRTUAL_KEY
    async with websockets.connect(ws_url(server), additional_headers={header: value}) as ws:
        assert ws.subprotocol is None  # no protocol offered, none selected
        assert (await recv_json(ws))["type"] == "session.created"


async def test_bad_key_is_refused_like_openai_without_an_upstream_connection(start_gateway):
    upstream_connections = 0

    async def count(ws):
        nonlocal upstream_connections
        upstream_connections += 1

    async with ws_serve(count, "127.0.0.1", 0) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        server, _ = start_gateway(f"http://127.0.0.1:{port}/v1")
        event, code, reason, raw = await expect_refusal(ws_url(server), additional_headers={"Authorization": "Bearer sk-bf-wrong"})
        assert event["error"]["type"] == "invalid_request_error"
        assert event["error"]["code"] == "invalid_api_key"
        assert (code, reason) == (3000, "invalid_request_error.invalid_api_key")
        assert b"sk-bf-wrong" not in raw
        event, code, _, _ = await expect_refusal(ws_url(server))  # no credential at all
        assert event["error"]["code"] == "invalid_api_key" and code == 3000
    assert upstream_connections == 0


async def test_refusal_after_browser_handshake_still_selects_realtime(gateway):
    server, _ = gateway
    async with websockets.connect(ws_url(server), subprotocols=["realtime", "openai-insecure-api-key.sk-bf-nope"]) as ws:
        assert ws.subprotocol == "realtime"  # a browser would otherwise drop the error unseen
        assert (await recv_json(ws))["error"]["code"] == "invalid_api_key"


async def test_missing_unknown_and_forbidden_models(simulator, start_gateway):
    auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
    server, _ = start_gateway(f"{simulator.url}/v1")
    event, code, reason, _ = await expect_refusal(ws_url(server, query=""), **auth)
    assert event["error"]["code"] == "missing_required_parameter" and event["error"]["param"] == "model"
    assert (code, reason) == (4000, "invalid_request_error.missing_required_parameter")

    event, code, reason, _ = await expect_refusal(
        ws_url(server, query="model=gpt-realtime"), additional_headers={"Authorization": "Bearer sk-bf-mini-only"}
    )
    assert event["error"]["code"] == "model_not_allowed" and code == 1008

    # Two providers and no default: a bare unknown name cannot be routed.
    two, _ = start_gateway(
        f"{simulator.url}/v1",
        providers={
            "openai": {"base_url": f"{simulator.url}/v1", "api_key": "sk-a"},
            "other": {"base_url": f"{simulator.url}/v1", "api_key": "sk-b"},
        },
    )
    event, code, reason, _ = await expect_refusal(ws_url(two, query="model=mystery"), **auth)
    assert event["error"]["code"] == "model_not_found" and (code, reason) == (4000, "invalid_request_error.model_not_found")
    async with websockets.connect(ws_url(two, query="model=other/gpt-realtime"), **auth) as ws:
        assert (await recv_json(ws))["session"]["model"] == "gpt-realtime"


async def test_upstream_down_gives_error_without_secrets_then_1011(start_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    server, _ = start_gateway("http://127.0.0.1:9/v1")  # discard port: nothing listens
    event, code, _, raw = await expect_refusal(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"})
    assert event["error"]["type"] == "server_error" and code == 1011
    # The test's own client logs its headers on websockets.client; everything else is the gateway's.
    gateway_log = "\n".join(r.getMessage() for r in caplog.records if r.name != "websockets.client")
    for secret in (PROVIDER_KEY, "127.0.0.1:9", VIRTUAL_KEY):
        assert secret.encode() not in raw
        assert secret not in gateway_log


async def _scripted_upstream(script):
    """A provider stand-in that records what it receives and sends exact frames (OpenAI is off-machine)."""
    received: list[str | bytes] = []
    request_headers = {}

    async def handler(ws):
        request_headers.update(ws.request.headers)
        await script(ws, received)

    server = await ws_serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    return server, received, request_headers


ODD_FRAMES = [
    '{"event_id":"e1","type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"h\\u00e9llo \\"q\\" \\ud83d\\ude00"}]}}',
    '  {  "zz_unknown" : [1, 2.5e3, null, true], "type" : "response.create" , "response":{"metadata":{"k":"ü"}} }  ',
    '{"type":"x.custom.event","payload":"ünïcödé ✓","nested":{"type":"not.this"}}',
    "not json at all",
]
UPSTREAM_FRAMES = [
    '{"type":"session.created","event_id":"event_1","session":{"id":"sess_1","type":"realtime","model":"gpt-realtime"}}',
    '{"response_id":"resp_1","type":"response.output_text.delta","obfuscation":"xY","delta":"\\u00e9\\n","item_id":"i","output_index":0,"content_index":0,"event_id":"event_2"}',
    '{"type":"made.up.event","weird":{"a":[{}]},"event_id":"event_3"}   ',
]


async def test_frames_are_byte_identical_both_ways_and_close_codes_relay(start_gateway):
    done = asyncio.Event()

    async def script(ws, received):
        for frame in UPSTREAM_FRAMES:
            await ws.send(frame)
        try:
            async for frame in ws:
                received.append(frame)
        except ConnectionClosed:
            pass
        received.append(("closed", ws.close_code, ws.close_reason))
        done.set()

    upstream, received, request_headers = await _scripted_upstream(script)
    async with upstream:
        port = upstream.sockets[0].getsockname()[1]
        server, _ = start_gateway(f"http://127.0.0.1:{port}/v1")
        async with websockets.connect(
            ws_url(server), subprotocols=["realtime", f"openai-insecure-api-key.{VIRTUAL_KEY}", "openai-organization.org_9"]
        ) as ws:
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in UPSTREAM_FRAMES]
            assert got == UPSTREAM_FRAMES
            for frame in ODD_FRAMES:
                await ws.send(frame)
            await ws.close(4001, "client done")
        await asyncio.wait_for(done.wait(), 10)
    assert received[: len(ODD_FRAMES)] == ODD_FRAMES
    assert received[-1] == ("closed", 4001, "client done")
    assert request_headers["authorization"] == f"Bearer {PROVIDER_KEY}"  # the client's key never goes upstream
    assert request_headers["openai-organization"] == "org_9"


async def test_upstream_close_code_and_reason_reach_the_client(start_gateway):
    async def script(ws, received):
        await ws.send(UPSTREAM_FRAMES[0])
        await ws.close(4321, "upstream says bye")

    upstream, _, _ = await _scripted_upstream(script)
    async with upstream:
        port = upstream.sockets[0].getsockname()[1]
        server, _ = start_gateway(f"http://127.0.0.1:{port}/v1")
        async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
            assert (await recv_json(ws))["type"] == "session.created"
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert (ws.close_code, ws.close_reason) == (4321, "upstream says bye")


async def test_upstream_closing_mid_turn_with_1011_fails_the_turn(gateway):
    server, sink = gateway
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi [sim:fault=close:1011]"}]}}))
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_create_1"}))
        with pytest.raises(ConnectionClosed):
            while True:
                await recv_json(ws)
        assert ws.close_code == 1011
    (record,) = sink.wait_for(1)
    assert record.status == "failed"
    assert record.error["close_code"] == 1011
    assert record.inputs[0]["text"].startswith("hi")
    assert record.metadata["client_event_ids"] == ["evt_create_1"]


async def test_upstream_dropping_the_connection_gives_error_and_1011(gateway):
    server, sink = gateway
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "[sim:fault=drop]"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        events = []
        with pytest.raises(ConnectionClosed):
            while True:
                events.append(await recv_json(ws))
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "upstream_connection_lost"
        assert ws.close_code == 1011
    (record,) = sink.wait_for(1)
    assert record.status == "failed"


async def test_binary_frame_gets_an_error_and_the_session_continues(gateway):
    server, _ = gateway
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        await recv_json(ws)
        await ws.send(b"\x00\x01binary")
        event = await recv_json(ws)
        assert event["type"] == "error" and event["error"]["code"] == "invalid_event"
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}}))
        assert (await recv_until(ws, "session.updated"))[-1]["session"]["instructions"] == "still here"


async def test_oversize_frame_gets_an_error_and_1009(simulator, start_gateway):
    server, _ = start_gateway(f"{simulator.url}/v1", realtime={"max_frame_bytes": 64 * 1024})
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}, max_size=None) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (80 * 1024)}))
        event = await recv_json(ws)
        assert event["error"]["code"] == "message_too_big"
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1009


async def test_concurrent_session_cap(simulator, start_gateway):
    server, _ = start_gateway(f"{simulator.url}/v1", realtime={"max_sessions": 1})
    auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
    async with websockets.connect(ws_url(server), **auth) as first:
        await recv_json(first)
        event, code, _, _ = await expect_refusal(ws_url(server), **auth)
        assert event["error"]["code"] == "session_limit_reached" and code == 1008
    await asyncio.to_thread(wait_for_sessions, server, 0)
    async with websockets.connect(ws_url(server), **auth) as again:  # the slot is free once the first closes
        assert (await recv_json(again))["type"] == "session.created"


async def test_idle_timeout_and_max_duration_end_the_session_with_an_error(simulator, start_gateway):
    auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
    idle, _ = start_gateway(f"{simulator.url}/v1", realtime={"idle_timeout_s": 1})
    async with websockets.connect(ws_url(idle), **auth) as ws:
        await recv_json(ws)
        event = await asyncio.wait_for(recv_json(ws), 5)
        assert event["error"]["code"] == "session_idle_timeout"
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1000
    capped, _ = start_gateway(f"{simulator.url}/v1", realtime={"max_session_s": 1})
    async with websockets.connect(ws_url(capped), **auth) as ws:
        await recv_json(ws)
        event = await asyncio.wait_for(recv_json(ws), 5)
        assert event["error"]["code"] == "session_expired"


async def test_a_client_that_stops_answering_pings_is_dropped(simulator, start_gateway):
    server, _ = start_gateway(f"{simulator.url}/v1", realtime={"ping_interval_s": 0.2, "ping_timeout_s": 0.3})
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}, ping_interval=None) as ws:
        await recv_json(ws)
        ws.transport.pause_reading()  # pings pile up unanswered
        # The heartbeat is a matter of time: 0.2 s interval + 0.3 s timeout, with room for a loaded machine.
        await asyncio.sleep(1.5)
        await asyncio.to_thread(wait_for_sessions, server, 0)  # the gateway has already dropped the session
        ws.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            while True:
                await recv_json(ws)


async def test_openai_paths_and_baggage_session_grouping(gateway):
    server, sink = gateway
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}", "baggage": "user=7,session-id=conv-42;ttl=1"}
    for path in ("/openai/v1/realtime", "/openai/realtime"):
        async with websockets.connect(ws_url(server, path=path), additional_headers=headers) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}}))
            await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            await recv_until(ws, "response.done")
    records = sink.wait_for(2)
    assert {r.session_group for r in records} == {"conv-42"}
    assert records[0].session_id != records[1].session_id


async def test_parallel_out_of_band_responses_are_separate_turns(gateway):
    server, sink = gateway
    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        await recv_json(ws)
        for purpose in ("summary", "title"):
            await ws.send(json.dumps({
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "output_modalities": ["text"],
                    "metadata": {"purpose": purpose},
                    "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"make a {purpose}"}]}],
                },
            }))
        done = 0
        while done < 2:
            done += (await recv_json(ws))["type"] == "response.done"
    records = sink.wait_for(2)
    by_purpose = {r.metadata["response_metadata"]["purpose"]: r for r in records}
    assert by_purpose["summary"].inputs[0]["text"] == "make a summary"
    assert by_purpose["title"].inputs[0]["text"] == "make a title"
    assert all(r.metadata["conversation"] == "none" and r.status == "completed" for r in records)


async def test_query_passes_through_but_credentials_do_not(start_gateway):
    paths = []

    async def script(ws, received):
        paths.append(ws.request.path)
        await ws.send(UPSTREAM_FRAMES[0])
        await ws.wait_closed()

    upstream, _, _ = await _scripted_upstream(script)
    async with upstream:
        port = upstream.sockets[0].getsockname()[1]
        server, _ = start_gateway(f"http://127.0.0.1:{port}/v1", models={"voice": {"provider": "openai", "model": "gpt-realtime-mini"}})
        auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
        for query in ("model=voice&api-key=leak&trace=7", "intent=transcription"):
            async with websockets.connect(ws_url(server, query=query), **auth) as ws:
                await recv_json(ws)
    assert paths == [
        "/v1/realtime?model=gpt-realtime-mini&trace=7",  # configured name mapped to the upstream model
        "/v1/realtime?intent=transcription",
    ]


async def test_a_key_limited_to_one_provider(simulator, start_gateway):
    server, _ = start_gateway(
        f"{simulator.url}/v1",
        providers={"openai": {"base_url": f"{simulator.url}/v1", "api_key": "sk-a"}, "backup": {"base_url": f"{simulator.url}/v1", "api_key": "sk-b"}},
        default_provider="openai",
        virtual_keys=[{"key": VIRTUAL_KEY, "name": "backup-only", "allowed_providers": ["backup"]}],
    )
    auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
    event, code, _, _ = await expect_refusal(ws_url(server, query="model=gpt-realtime"), **auth)
    assert event["error"]["code"] == "model_not_allowed" and code == 1008
    async with websockets.connect(ws_url(server, query="model=backup/gpt-realtime"), **auth) as ws:
        assert (await recv_json(ws))["type"] == "session.created"


async def test_permessage_deflate_is_a_deliberate_choice(simulator, start_gateway):
    auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}  # websockets offers deflate by default
    plain, _ = start_gateway(f"{simulator.url}/v1")
    async with websockets.connect(ws_url(plain), **auth) as ws:
        assert ws.protocol.extensions == []
        assert (await recv_json(ws))["type"] == "session.created"
    compressed, _ = start_gateway(f"{simulator.url}/v1", realtime={"permessage_deflate": True})
    async with websockets.connect(ws_url(compressed), **auth) as ws:
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        assert (await recv_json(ws))["type"] == "session.created"


async def test_client_chosen_strings_reach_records_and_log_lines_bounded(gateway):
    server, sink = gateway
    huge_id = "e" * (1 << 20)
    metadata = {f"key{n}": "v" * 4096 for n in range(16)}
    async with websockets.connect(f"{server.ws_url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}, max_size=None) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "response.create", "event_id": huge_id, "response": {"output_modalities": ["text"], "metadata": metadata}}))
        await recv_until(ws, "response.done")
    (record,) = await asyncio.to_thread(sink.wait_for, 1)
    assert record.metadata["client_event_ids"] == [huge_id[:256]]
    assert record.metadata["response_metadata_truncated"] is True
    assert all(len(value) == 512 for value in record.metadata["response_metadata"].values())
    assert len(record.to_json()) < 32 * 1024  # the log line, which is this JSON, stays small too
