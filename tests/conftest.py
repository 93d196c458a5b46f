"""Fixtures: a real simulator and a real gateway, each served by uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bifrost_rt.config import parse_config
from bifrost_rt.records import TurnRecord
from bifrost_rt.runtime.app import create_app
from bifrost_rt.runtime.server import uvicorn_settings
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from servers import ServerThread

VIRTUAL_KEY = "sk-bf-test-team"
PROVIDER_KEY = "sk-provider-secret-never-shown"


async def recv_json(ws, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, event_type: str) -> list[dict[str, Any]]:
    """Every event received up to and including the first of `event_type`."""
    events = [await recv_json(ws)]
    while events[-1]["type"] != event_type:
        events.append(await recv_json(ws))
    return events


async def beta_text_turn(connection: Any, text: str) -> str:
    """One text turn on an openai-python beta realtime connection; returns the model's text."""
    await connection.session.update(session={"modalities": ["text"]})
    await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await connection.response.create()
    answer = ""
    async for event in connection:
        if event.type == "response.text.delta":
            answer += event.delta
        if event.type == "response.done":
            return answer
    raise AssertionError("the connection closed before response.done")


class CapturingSink:
    """A turn sink that keeps records so tests can wait for them."""

    def __init__(self) -> None:
        self.records: list[TurnRecord] = []
        self._changed = threading.Condition()

    async def write(self, records: list[TurnRecord]) -> None:
        with self._changed:
            self.records.extend(records)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[TurnRecord]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.records) >= count, timeout):
                raise AssertionError(f"expected {count} turn record(s), got {len(self.records)}: {self.records}")
            return list(self.records)


def gateway_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        # Tests that need the durable log configure one; the others keep the working tree clean.
        "turn_log": {"store": "none"},
        "providers": {"openai": {"base_url": upstream_url, "api_key": PROVIDER_KEY}},
        "virtual_keys": [
            {"key": VIRTUAL_KEY, "name": "team-a"},
            {"key": "sk-bf-mini-only", "name": "mini-only", "allowed_models": ["gpt-realtime-mini"]},
        ],
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


@pytest.fixture
def simulator() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as server:
        yield server


GatewayFactory = Callable[..., tuple[ServerThread, CapturingSink]]


@pytest.fixture
def start_gateway() -> Iterator[GatewayFactory]:
    """Start a gateway in front of `upstream_url` (http base, e.g. http://127.0.0.1:N/v1)."""
    started: list[ServerThread] = []

    def start(upstream_url: str, with_plugins: tuple = (), **overrides: Any) -> tuple[ServerThread, CapturingSink]:
        config = parse_config(gateway_config(upstream_url, **overrides))
        sink = CapturingSink()
        settings = uvicorn_settings(config.realtime)
        server = ServerThread(
            create_app(config, turn_sinks=[sink], plugins=with_plugins),
            ws_ping_interval=settings["ws_ping_interval"],
            ws_ping_timeout=settings["ws_ping_timeout"],
            ws_max_size=settings["ws_max_size"],
            ws_per_message_deflate=settings["ws_per_message_deflate"],
        )
        server.start()
        started.append(server)
        return server, sink

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gateway(simulator: ServerThread, start_gateway: GatewayFactory) -> tuple[ServerThread, CapturingSink]:
    return start_gateway(f"{simulator.url}/v1")
