"""`bifrost-rt demo`: the built-in simulator upstream, the gateway in front of it, and an openai-python client
holding a short conversation (text turn, audio turn, function-call turn) with a summary printed per turn, then the
same client code talking to a Gemini Live model (the simulator's Gemini flavor) through the same gateway."""

from __future__ import annotations

import asyncio
import base64
import math
import secrets
import socket
import struct
import sys
import tempfile

import uvicorn

from bifrost_rt.config import parse_config
from bifrost_rt.records import TurnRecord
from bifrost_rt.runtime.app import create_app
from bifrost_rt.runtime.server import uvicorn_settings
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

DEMO_KEY = "sk-bf-demo"
DEMO_ADMIN_KEY = "demo-admin-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tone(ms: int, rate: int = 24000) -> bytes:
    return b"".join(struct.pack("<h", int(9000 * math.sin(2 * math.pi * 330 * i / rate))) for i in range(rate * ms // 1000))


class _PrintingSink:
    def __init__(self, expected: int) -> None:
        self.count = 0
        self.all_written = asyncio.Event()
        self._expected = expected

    async def write(self, records: list[TurnRecord]) -> None:
        for record in records:
            self.count += 1
            usage = record.usage or {}
            latency = record.latency_ms
            said = record.output_summary or "-"
            print(
                f"  turn {self.count}: {record.status:<9} in {usage.get('input_tokens', 0):>4} tok"
                f" (cached {usage.get('cached_tokens', 0)}) out {usage.get('output_tokens', 0):>4} tok"
                f"  ${record.cost['total']:.6f}  first delta {latency['first_delta'] or 0:.1f} ms"
                f"  total {latency['total']:.1f} ms\n          heard: {record.input_summary or '-'}\n          said:  {said[:100]}"
            )
        if self.count >= self._expected:
            self.all_written.set()


async def _serve(app, port: int, **settings) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **settings))
    asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server


async def _converse(gateway_port: int, session_group: str) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(
        api_key=DEMO_KEY, base_url=f"http://127.0.0.1:{gateway_port}/v1", websocket_base_url=f"ws://127.0.0.1:{gateway_port}/v1"
    )

    async def until_done(connection) -> None:
        async for event in connection:
            if event.type == "response.function_call_arguments.done":
                await connection.conversation.item.create(
                    item={"type": "function_call_output", "call_id": event.call_id, "output": '{"forecast": "sunny, 21°C"}'}
                )
            if event.type == "response.done":
                return

    async with client.realtime.connect(model="gpt-realtime", extra_headers={"baggage": f"session-id={session_group}"}) as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}},
                "tools": [{"type": "function", "name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            }
        )
        print("\n> text turn")
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello, gateway!"}]})
        await conn.response.create()
        await until_done(conn)

        print("> audio turn (0.8 s of speech, committed)")
        audio = _tone(800)
        for offset in range(0, len(audio), 4800):  # 100 ms chunks
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[offset : offset + 4800]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        await until_done(conn)

        print("> function-call turn")
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Use get_weather for Lisbon"}]})
        await conn.response.create()
        await until_done(conn)  # the model asks for the tool; the output goes back
        await conn.response.create()
        await until_done(conn)


async def _converse_with_gemini(gateway_port: int) -> None:
    """The same openai-python code, a model routed to Gemini Live: the gateway translates both ways."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(
        api_key=DEMO_KEY, base_url=f"http://127.0.0.1:{gateway_port}/v1", websocket_base_url=f"ws://127.0.0.1:{gateway_port}/v1"
    )
    async with client.realtime.connect(model="gemini-live") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"], "instructions": "Be brief."})
        print("> Gemini Live turn (model gemini-live, same client code)")
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello, Gemini!"}]})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                return


async def _print_session_summary(gateway_port: int, session_group: str) -> None:
    """Read the session back from the durable turn log through the admin API."""
    import httpx

    url = f"http://127.0.0.1:{gateway_port}/api/logs/sessions/{session_group}/summary"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}) as http:
        for _ in range(100):  # the log writer batches off the relay path
            response = await http.get(url)
            if response.status_code == 200 and response.json()["turn_count"] >= 4:
                break
            await asyncio.sleep(0.05)
    summary = response.json()
    print(
        f"\nGET /api/logs/sessions/{session_group}/summary → {summary.get('turn_count')} turns, "
        f"{summary.get('total_tokens')} tokens, ${summary.get('total_cost', 0):.6f}, {summary.get('duration_ms', 0):.0f} ms"
    )


async def _demo(workdir: str) -> int:
    sim_port, gateway_port = _free_port(), _free_port()
    simulator = await _serve(create_simulator_app(SimulatorOptions(pace=4.0)), sim_port)
    config = parse_config(
        {
            "providers": {
                "openai": {"base_url": f"http://127.0.0.1:{sim_port}/v1", "api_key": "sk-simulated"},
                "gemini": {"kind": "gemini", "base_url": f"http://127.0.0.1:{sim_port}", "api_key": "simulated"},
            },
            "default_provider": "openai",
            "models": {"gemini-live": {"provider": "gemini", "model": "gemini-live-2.5-flash-preview"}},
            "virtual_keys": [{"key": DEMO_KEY, "name": "demo"}],
            "admin_keys": [DEMO_ADMIN_KEY],
            "turn_log": {"store": "sqlite", "sqlite_path": f"{workdir}/turns.db", "spill_path": f"{workdir}/turns.spill.jsonl"},
        }
    )
    sink = _PrintingSink(expected=5)
    settings = {k: v for k, v in uvicorn_settings(config.realtime).items() if k.startswith("ws")}
    gateway = await _serve(create_app(config, turn_sinks=[sink]), gateway_port, **settings)
    print(f"simulator on 127.0.0.1:{sim_port} · gateway on 127.0.0.1:{gateway_port} · key {DEMO_KEY}")
    print(f"turn log: SQLite at {workdir}/turns.db")
    session_group = f"demo-{secrets.token_hex(4)}"
    try:
        await _converse(gateway_port, session_group)
        await _converse_with_gemini(gateway_port)
        # The turn writer delivers records off the relay path; give it a moment to catch up.
        await asyncio.wait_for(sink.all_written.wait(), 10)
        await _print_session_summary(gateway_port, session_group)
    finally:
        gateway.should_exit = simulator.should_exit = True
        await asyncio.sleep(0.3)
    print(f"\n{sink.count} turns relayed, priced and logged.")
    return 0 if sink.count >= 5 else 1


def run_demo() -> int:
    try:
        import openai  # noqa: F401
    except ImportError:
        print("bifrost-rt demo talks to the gateway with openai-python: pip install 'bifrost-rt[demo]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bifrost-rt-demo-") as workdir:
        return asyncio.run(_demo(workdir))
