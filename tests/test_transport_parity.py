"""One scenario table through both transports: a WebSocket client and a WebRTC caller see the same events and leave
the same turn records, because both drive the same relay core."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from bifrost_rt.config import parse_config
from bifrost_rt.policy.hooks import Decision, Plugin
from bifrost_rt.runtime.app import create_app
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY, CapturingSink, gateway_config
from rtc_client import TIMEOUT_S, call
from servers import ServerThread

MAX_FRAME = 4096


class ByMetadata(Plugin):
    """Decides each response.create by its `metadata.policy`."""

    name = "by-metadata"

    async def pre_turn(self, request: Any) -> Decision | None:
        policy = (request.response.get("metadata") or {}).get("policy")
        if policy == "deny":
            return Decision.deny("Denied by policy.", code="turn_denied")
        if policy == "disconnect":
            return Decision.disconnect("Disconnected by policy.", code="session_denied")
        return None


def _say(text: str) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


def _create(policy: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"output_modalities": ["text"]}
    if policy:
        response["metadata"] = {"policy": policy}
    return {"type": "response.create", "event_id": f"evt_{policy or 'ok'}", "response": response}


BINARY = b"\x00\x01binary"
OVERSIZE = json.dumps(_say("x" * MAX_FRAME))

# Each step: what the client sends, then the event type that ends the step (None: the session ends).
SCENARIOS: dict[str, list[tuple[list[Any], str | None]]] = {
    "text turn": [([_say("hello"), _create()], "response.done")],
    "binary frame, then a turn": [([BINARY], "error"), ([_say("again"), _create()], "response.done")],
    "denied, then allowed": [([_say("first")], "conversation.item.done"), ([_create("deny")], "error"), ([_create()], "response.done")],
    "oversize frame ends the session": [([OVERSIZE], None)],
    "disconnect decision ends the session": [([_say("bye")], "conversation.item.done"), ([_create("disconnect")], None)],
}


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[ServerThread, CapturingSink]]:
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as simulator:
        sink = CapturingSink()
        config = gateway_config(f"{simulator.url}/v1", realtime={"max_frame_bytes": MAX_FRAME}, webrtc={"host_candidates": "loopback"})
        with ServerThread(create_app(parse_config(config), turn_sinks=[sink], plugins=(ByMetadata(),))) as gateway:
            yield gateway, sink


def _seen(event: dict[str, Any]) -> str:
    """What the client sees of an event, without its ids."""
    if event["type"] == "error":
        return f"error:{event['error']['code']}:{event['error'].get('event_id')}"
    return event["type"]


def _as_message(item: Any) -> str | bytes:
    return item if isinstance(item, (str, bytes)) else json.dumps(item)


async def _over_websocket(gateway: ServerThread, steps: list[tuple[list[Any], str | None]]) -> tuple[list[str], str]:
    seen: list[str] = []
    async with websockets.connect(f"{gateway.ws_url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        session_id = gateway.app.state.gateway.registry.live().__next__().session.id
        for messages, until in steps:
            for message in messages:
                await ws.send(_as_message(message))
            while True:
                try:
                    event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                except websockets.ConnectionClosed:
                    seen.append("closed")
                    break
                seen.append(_seen(event))
                if event["type"] == until:
                    break
    return seen, session_id


async def _over_webrtc(gateway: ServerThread, steps: list[tuple[list[Any], str | None]]) -> tuple[list[str], str]:
    seen: list[str] = []
    async with call(gateway, key=VIRTUAL_KEY, path="/v1/realtime/calls?model=gpt-realtime") as (caller, call_id):
        session_id = gateway.app.state.calls.get(call_id).session.id
        for messages, until in steps:
            for message in messages:
                caller.channel.send(_as_message(message))
            while True:
                receiving = asyncio.ensure_future(caller.recv())
                closing = asyncio.ensure_future(caller.channel_closed.wait())
                done, _ = await asyncio.wait({receiving, closing}, timeout=TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
                assert done, "neither an event nor the end of the call"
                if receiving in done:
                    closing.cancel()
                    event = receiving.result()
                    seen.append(_seen(event))
                    if event["type"] == until:
                        break
                else:
                    receiving.cancel()
                    seen.append("closed")
                    break
    return seen, session_id


def _records(sink: CapturingSink, session_id: str) -> list[tuple[Any, ...]]:
    return [
        (r.status, r.status_reason, [i["text"] for i in r.inputs], r.output["text"], (r.error or {}).get("code"))
        for r in sink.records
        if r.session_id == session_id
    ]


async def _settled(sink: CapturingSink, session_id: str) -> list[tuple[Any, ...]]:
    """The session's records once no more arrive (closing records land just after the last event)."""
    previous = None
    for _ in range(50):
        await asyncio.sleep(0.1)
        current = _records(sink, session_id)
        if current and current == previous:
            return current
        previous = current
    return previous or []


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_websocket_and_webrtc_give_the_same_answer(stack, name):
    gateway, sink = stack
    steps = SCENARIOS[name]
    ws_seen, ws_session = await _over_websocket(gateway, steps)
    rtc_seen, rtc_session = await _over_webrtc(gateway, steps)
    assert ws_seen == rtc_seen
    assert await _settled(sink, ws_session) == await _settled(sink, rtc_session)
    if steps[-1][1] is None:
        assert ws_seen[-1] == "closed" and ws_seen[-2].startswith("error:")
