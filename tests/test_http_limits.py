"""Request-head limits of a real `bifrost-rt serve`: oversized heads get 431 at once, unfinished heads are closed after
`server.request_head_timeout_s`, and connections still in their first head are capped per process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
import yaml
from test_metrics import samples
from test_serve import free_port, wait_until_listening, write_config

from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY
from servers import ServerThread

HEAD_TIMEOUT_S = 1
UPGRADE = (
    "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
HUGE_AUTHORIZATION = "Authorization: Bearer " + "k" * 9000 + "\r\n"


@contextlib.contextmanager
def gateway_process(directory: Path, upstream_port: int, **sections: dict) -> Iterator[int]:
    """A `bifrost-rt serve` of test_serve's configuration with these sections added (`server` is merged); yields its port."""
    path = write_config(directory / "gateway.yaml", upstream_port)
    config = yaml.safe_load(path.read_text())
    config["server"].update(sections.pop("server", {}))
    config.update(sections)
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    with open(directory / "serve.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(path), "--port", str(port)], stderr=log
        )
        try:
            wait_until_listening(port, process)
            yield port
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def gateway_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as simulator:
        with gateway_process(tmp_path_factory.mktemp("limits"), simulator.port, server={"request_head_timeout_s": HEAD_TIMEOUT_S}) as port:
            yield port


async def until_closed(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Sends `data` and returns everything the gateway answers up to its closing the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def error_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


async def scrape(port: int) -> dict:
    answer = await until_closed(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return samples(answer.partition(b"\r\n\r\n")[2].decode())


def refused(metrics: dict, reason: str) -> float:
    return metrics.get(("bifrost_rt_http_connections_refused_total", (("reason", reason),)), 0)


async def test_an_upgrade_with_a_header_line_over_8_kib_is_answered_431_and_closed(gateway_port):
    before = await scrape(gateway_port)
    upgrades = [until_closed(gateway_port, (UPGRADE + HUGE_AUTHORIZATION + "\r\n").encode()) for _ in range(50)]
    answers = await asyncio.wait_for(asyncio.gather(*upgrades), 20)
    for answer in answers:
        status, error = error_of(answer)
        assert status == 431 and error["code"] == "request_header_fields_too_large" and error["param"] is None
        assert set(error) == {"type", "code", "message", "param"} and "kkkk" not in error["message"]
    post = f"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: x\r\n{HUGE_AUTHORIZATION}Content-Length: 2\r\n\r\n{{}}"
    assert error_of(await until_closed(gateway_port, post.encode()))[0] == 431
    assert refused(await scrape(gateway_port), "head_too_large") - refused(before, "head_too_large") == 51

    # A line under the cap still reaches the app (which upgrades, then refuses the key); a real session is relayed.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    try:
        writer.write((UPGRADE + "Authorization: Bearer " + "k" * 8000 + "\r\n\r\n").encode())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(b"HTTP/1.1 101")
    finally:
        writer.close()
    url = f"ws://127.0.0.1:{gateway_port}/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"


async def test_a_head_over_the_total_cap_is_answered_431_before_it_ends(gateway_port):
    lines = "".join(f"X-Filler-{n}: {'f' * 1000}\r\n" for n in range(17))  # over 16 KiB, no line too long, no end
    status, error = error_of(await until_closed(gateway_port, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{lines}".encode()))
    assert status == 431 and error["code"] == "request_header_fields_too_large"


async def test_unfinished_heads_are_closed_after_the_timeout(gateway_port):
    before = await scrape(gateway_port)
    # Half a request line, then nothing: closed without an answer.
    assert await until_closed(gateway_port, b"GET /v1/realtime?mod") == b""
    # Silence from the first byte on.
    assert await until_closed(gateway_port, b"") == b""
    # A kept-alive connection whose second head never ends.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readexactly(len(b'{"status":"ok"}')), 10)
        writer.write(b"GET /heal")
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert refused(await scrape(gateway_port), "head_timeout") - refused(before, "head_timeout") == 3


async def eventually(check, timeout: float = 10) -> None:
    """Waits for the async predicate `check` to hold; fails after `timeout` seconds."""

    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_connections_still_in_their_first_head_are_capped(tmp_path):
    cap = 4
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as simulator:
        with gateway_process(tmp_path, simulator.port, server={"max_pending_handshakes": cap, "request_head_timeout_s": 60}) as port:
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap - 1)]
            try:
                # The scrape's own connection is the cap-th while its head is read.
                async def all_pending() -> bool:
                    return (await scrape(port)).get(("bifrost_rt_http_pending_heads", ())) == cap - 1

                await eventually(all_pending)
                silent.append(await asyncio.open_connection("127.0.0.1", port))
                # One over the cap: closed at once, unanswered.
                try:
                    answer = await until_closed(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                except ConnectionResetError:
                    answer = b""
                assert answer == b""
            finally:
                for _, writer in silent:
                    writer.close()

            # Once they are gone, connections are served again.
            async def served() -> bool:
                try:
                    answer = await until_closed(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                except ConnectionResetError:
                    return False
                return answer.startswith(b"HTTP/1.1 200")

            await eventually(served)
            metrics = await scrape(port)
    assert refused(metrics, "pending_limit") >= 1
    assert metrics[("bifrost_rt_http_pending_heads", ())] == 0


async def test_the_floor_relay_keeps_serving_with_the_gateway_settings():
    """The bench's floor relay runs `uvicorn.run(**uvicorn_settings(...))`: it relays and has the default limits."""
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as simulator:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "bifrost_rt.tools.bench.floor", "--port", str(port), "--upstream", f"{simulator.ws_url}/v1/realtime"],
            stderr=subprocess.DEVNULL,
        )
        async def relays() -> bool:
            assert process.poll() is None, "the floor relay exited"
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime", open_timeout=2) as ws:
                    return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
            except OSError:  # not listening yet
                return False

        try:
            await eventually(relays, 20)
            assert error_of(await until_closed(port, (UPGRADE + HUGE_AUTHORIZATION + "\r\n").encode()))[0] == 431
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
