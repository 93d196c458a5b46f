"""Several gateways as production runs them: two `bifrost-rt serve` instances on their own loopback addresses
behind nginx, sharing Redis and PostgreSQL, and one instance with `--workers 2`; the simulator plays the provider.

Calls placed on one instance are hung up and watched from the other; one budget, one session cap and one client
secret (minted with openai-python on one, used with it on the other) hold across both; an instance restarted while
50 sessions run loses no turn and records none twice. nginx (Debian package `nginx`) runs as a child of the test,
everything under its temporary directory; its access log says which instance took each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
import yaml
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from bifrost_rt.config import ConfigError, parse_config
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

import rtc_client
from servers import ServerThread
from services import PostgresServer, free_port, postgres_dsn, postgres_server  # noqa: F401 (fixtures)

pytest_plugins = ["redis_service"]  # the redis_server fixture

KEY = rtc_client.KEY
CAPPED_KEY = "sk-bf-capped"
BUDGET_KEY = "sk-bf-budget"
INSTANCE_SECRET = "instance-secret-shared-by-the-test-instances"
SEALING_SECRET = "client-secret-sealing-key-of-the-tests"
HOSTS = ("127.0.0.2", "127.0.0.3")
START_TIMEOUT_S = 30.0
CALLS_PATH = "/v1/realtime/calls?model=gpt-realtime"
# 100 calls, placed ten at a time, each watched by one sideband socket and then hung up, give 100 sideband and
# 100 hangup requests through the balancer.
CALLS = 100
SIDEBANDS_PER_CALL = 1


def gateway_config(directory: Path, host: str, port: int, forward_port: int | None, upstream: str, redis_url: str, dsn: str, **server: Any) -> Path:
    config = {
        "server": {
            "host": host,
            "port": port,
            "log_level": "info",
            "instance_secret": INSTANCE_SECRET,
            "call_directory_ttl_s": 3,
            **({"instance_url": f"http://{host}:{forward_port}"} if forward_port else {}),
            **server,
        },
        "providers": {"openai": {"base_url": upstream, "api_key": "sk-provider"}},
        "virtual_keys": [
            {"key": KEY, "name": "team-a"},
            {"key": CAPPED_KEY, "name": "capped", "max_sessions": 2},
            {"key": BUDGET_KEY, "name": "budgeted", "budget": {"usd": 1.0, "period": "day"}},
        ],
        "store": {"redis_url": redis_url},
        "client_secrets": {"secret": SEALING_SECRET},
        "turn_log": {"store": "postgres", "postgres_dsn": dsn, "spill_path": str(directory / f"spill-{host}.jsonl")},
        "webrtc": {"host_candidates": "loopback"},
        "realtime": {"shutdown_drain_s": 10},
        # A text turn of the simulator costs about $0.3 to $0.5 at these prices: a $1 budget lasts a few turns.
        "prices": {"gpt-realtime": {"input_text": 10000.0, "output_text": 10000.0}},
    }
    path = directory / f"gateway-{host}-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Instance:
    """One `bifrost-rt serve` process; `url` is its public address, `forward_url` where its peers reach it."""

    def __init__(self, config: Path, host: str, port: int, *extra: str) -> None:
        self.config, self.host, self.port, self.extra = config, host, port, extra
        self.url = f"http://{host}:{port}"
        self.process: subprocess.Popen[str] | None = None
        self.log = config.with_suffix(".log")

    def start(self) -> Instance:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(self.config), *self.extra],
                stderr=log, stdout=log, text=True,
            )  # fmt: skip
        return self

    def wait_ready(self, workers: int = 1) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2)
                if ready.status_code == 200 and ready.json()["workers"] == workers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.url} did not become ready:\n{self.log.read_text()}")

    def stop(self) -> int:
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format routed '$request_method $request_uri $upstream_addr $status $sent_http_location';
    access_log {root}/access.log routed;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream gateways {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            proxy_buffering off;
            proxy_next_upstream error http_503 non_idempotent;
        }}
    }}
}}
"""


class Nginx:
    """nginx from Debian as a non-daemon child, round-robin over `upstreams`, everything under `root`."""

    def __init__(self, root: Path, upstreams: list[str]) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            pytest.fail("nginx is not installed; these tests need it (Debian/Ubuntu: apt-get install -y nginx)", pytrace=False)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"        server {address} max_fails=1 fail_timeout=2s;" for address in upstreams)
        root.mkdir(parents=True, exist_ok=True)
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, servers=servers, port=self.port))
        # -e: the error log before the configuration is read; as root, workers drop to nobody, so the root is open.
        root.chmod(0o777)
        self._process = subprocess.Popen(
            [binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._root = root
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return
            except httpx.HTTPError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((root / "error.log").read_text(errors="replace")) from None
                time.sleep(0.05)

    def stop(self) -> None:
        self._process.send_signal(signal.SIGQUIT)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclass
class Cluster:
    a: Instance
    b: Instance
    nginx: Nginx
    dsn: str

    @property
    def instances(self) -> tuple[Instance, Instance]:
        return self.a, self.b

    async def turns(self) -> list[dict[str, Any]]:
        connection = await asyncpg.connect(self.dsn)
        try:
            rows = await connection.fetch(
                "SELECT id, session_id, principal, response_id, status, cost_total FROM realtime_turns ORDER BY started_at, id"
            )
        finally:
            await connection.close()
        return [dict(row) for row in rows]


@pytest.fixture
def simulator() -> Iterator[ServerThread]:
    # Paced, so audio turns are still streaming when an instance is told to drain.
    with ServerThread(create_simulator_app(SimulatorOptions(pace=1.0, response_audio_ms=600))) as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path, simulator: ServerThread, redis_server, postgres_dsn: str) -> Iterator[Cluster]:  # noqa: F811
    port = free_port()
    instances = []
    for host in HOSTS:
        config = gateway_config(tmp_path, host, port, free_port(host), f"{simulator.url}/v1", redis_server.url, postgres_dsn)
        instances.append(Instance(config, host, port).start())
    nginx = None
    try:
        for instance in instances:
            instance.wait_ready()
        nginx = Nginx(tmp_path / "nginx", [f"{host}:{port}" for host in HOSTS])
        yield Cluster(instances[0], instances[1], nginx, postgres_dsn)
    finally:
        if nginx is not None:
            nginx.stop()
        for instance in instances:
            instance.kill()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def text_turn(ws: Any, text: str = "hello") -> dict[str, Any]:
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if event["type"] in ("response.done", "error"):
            return event


async def open_session(base: str, key: str = KEY) -> Any:
    ws = await websockets.connect(f"{base.replace('http', 'ws', 1)}/v1/realtime?model=gpt-realtime", additional_headers=bearer(key))
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws, first


def sessions_on(instance: Instance) -> int:
    return httpx.get(f"{instance.url}/readyz", timeout=5).json()["sessions"]


def routed(nginx: Nginx) -> list[tuple[str, str, str, str, str]]:
    """The access log: method, URI, the instance nginx chose, status, Location."""
    lines = (nginx_root(nginx) / "access.log").read_text().splitlines()
    return [tuple(line.split(" ", 4)) for line in lines]  # type: ignore[misc]


def nginx_root(nginx: Nginx) -> Path:
    return nginx._root


async def test_calls_placed_on_either_instance_are_hung_up_and_watched_through_the_balancer(cluster: Cluster) -> None:
    balancer = cluster.nginx
    ws_balancer = balancer.url.replace("http", "ws", 1)

    async def control(number: int) -> None:
        async with rtc_client.call(balancer, path=CALLS_PATH) as (caller, call_id):  # type: ignore[arg-type]
            for watch in range(SIDEBANDS_PER_CALL):
                async with websockets.connect(f"{ws_balancer}/v1/realtime?call_id={call_id}", additional_headers=bearer(KEY)) as sideband:
                    instructions = f"call {number}, sideband {watch}"
                    await sideband.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": instructions}}))
                    while (event := json.loads(await asyncio.wait_for(sideband.recv(), 10)))["type"] != "session.updated":
                        assert event["type"] != "error", event
                    assert event["session"]["instructions"] == instructions
            refused = await rtc_client.hang_up(balancer, call_id, key=CAPPED_KEY)  # type: ignore[arg-type]
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "call_not_found"
            reply = await rtc_client.hang_up(balancer, call_id)  # type: ignore[arg-type]
            assert reply.status_code == 200, reply.text
            await asyncio.wait_for(caller.channel_closed.wait(), 10)

    for batch in range(CALLS // 10):
        await asyncio.wait_for(asyncio.gather(*(control(batch * 10 + n) for n in range(10))), 90)

    owners: dict[str, str] = {}
    requests: dict[str, list[tuple[str, str]]] = {"hangup": [], "sideband": []}
    for method, uri, upstream, status, location in routed(balancer):
        if method == "POST" and uri == CALLS_PATH:
            assert status == "201"
            owners[location.rsplit("/", 1)[-1]] = upstream
        elif uri.endswith("/hangup") and status == "200":
            requests["hangup"].append((uri.split("/")[-2], upstream))
        elif "call_id=" in uri:
            assert status == "101"
            requests["sideband"].append((uri.split("call_id=")[1], upstream))
    assert len(owners) == CALLS
    assert (len(requests["hangup"]), len(requests["sideband"])) == (CALLS, CALLS * SIDEBANDS_PER_CALL)
    for kind, landed in requests.items():
        crossed = {(owners[call_id], upstream) for call_id, upstream in landed if owners[call_id] != upstream}
        # Requests landed on the instance that does not own the call, in both directions, and reached the owner.
        assert len(crossed) == 2, (kind, crossed)

    # A dead owner's call is gone: its peer says so at once, and the entry expires from the directory.
    async with rtc_client.call(cluster.b, path=CALLS_PATH) as (_, call_id):  # type: ignore[arg-type]
        cluster.b.kill()
        reply = await rtc_client.hang_up(cluster.a, call_id)  # type: ignore[arg-type]
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "call_not_found"
        async with websockets.connect(f"ws://{cluster.a.host}:{cluster.a.port}/v1/realtime?call_id={call_id}", additional_headers=bearer(KEY)) as sideband:
            event = json.loads(await asyncio.wait_for(sideband.recv(), 10))
            assert event["error"]["code"] == "call_not_found"


async def test_one_session_cap_one_budget_and_one_client_secret_across_both(cluster: Cluster) -> None:
    a, b = cluster.instances
    # The session cap (2) counts sessions on both instances.
    first, _ = await open_session(a.url, CAPPED_KEY)
    second, _ = await open_session(b.url, CAPPED_KEY)
    for instance in (a, b):
        refused, event = await open_session(instance.url, CAPPED_KEY)
        assert event["type"] == "error" and event["error"]["code"] == "session_limit_reached"
        await refused.close()
    await first.close()
    while True:  # the slot frees once instance a has released it
        third, event = await open_session(b.url, CAPPED_KEY)
        if event["type"] == "session.created":
            break
        await third.close()
    await asyncio.gather(second.close(), third.close())

    # A client secret minted on one instance opens a session on the other.
    minted = await AsyncOpenAI(api_key=KEY, base_url=f"{a.url}/v1").realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}
    )
    client = AsyncOpenAI(api_key="unused", base_url=f"{b.url}/v1", websocket_base_url=f"ws://{b.host}:{b.port}/v1")
    async with client.realtime.connect(model="gpt-realtime", extra_headers=bearer(minted.value)) as connection:
        await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        await connection.response.create(response={"output_modalities": ["text"]})
        async for server_event in connection:
            assert server_event.type != "error"
            if server_event.type == "response.done":
                break

    # The $1 budget is one, wherever its turns run: sessions alternate between the instances until it is spent.
    landed = []
    for turn in range(20):
        instance = cluster.instances[turn % 2]
        ws, event = await open_session(instance.url, BUDGET_KEY)
        if event["type"] == "error":
            assert event["error"]["code"] == "insufficient_quota"
            await ws.close()
            break
        done = await text_turn(ws)
        assert done["type"] == "response.done"
        landed.append(instance.host)
        await ws.close()
    else:
        raise AssertionError("the budget was never exhausted")
    assert len(set(landed)) == 2, landed
    for instance in cluster.instances:
        ws, event = await open_session(instance.url, BUDGET_KEY)
        assert event["type"] == "error" and event["error"]["code"] == "insufficient_quota"
        await ws.close()
    costs = [turn["cost_total"] for turn in await cluster.turns() if turn["principal"] == "budgeted"]
    assert len(costs) == len(landed)
    # The turn that reached $1 ended it; the turns before it had not, together, on both instances.
    assert sum(costs[:-1]) < 1.0 <= sum(costs)
    assert (await cluster.turns())[0]["principal"] == "team-a"  # the client secret's turn, billed to its minting key


async def test_a_rolling_restart_during_50_sessions_records_every_turn_exactly_once(cluster: Cluster) -> None:
    a, b = cluster.instances
    seen: list[str] = []  # response ids of the turns clients saw complete
    endings: list[tuple[int | None, str | None]] = []
    restarted = asyncio.Event()

    async def client() -> None:
        after_restart = 0
        while not after_restart:
            ws, event = await open_session(cluster.nginx.url)
            assert event["type"] == "session.created", event
            last_error = None
            try:
                while not after_restart:
                    await ws.send(json.dumps({"type": "response.create"}))  # an audio turn, streamed in real time
                    while (event := json.loads(await asyncio.wait_for(ws.recv(), 15)))["type"] != "response.done":
                        if event["type"] == "error":
                            last_error = event["error"]["code"]
                    seen.append(event["response"]["id"])
                    after_restart += restarted.is_set()
            except websockets.ConnectionClosed as closed:
                with contextlib.suppress(websockets.ConnectionClosed):  # what arrived before the close, unread
                    while True:
                        event = json.loads(await ws.recv())
                        last_error = event["error"]["code"] if event["type"] == "error" else last_error
                endings.append((closed.rcvd.code if closed.rcvd else None, last_error))
            finally:
                await ws.close()

    clients = [asyncio.ensure_future(client()) for _ in range(50)]
    try:
        while len(seen) < 100 or sessions_on(a) == 0:  # every client is relaying, on both instances
            await asyncio.sleep(0.1)
        before = len(seen)
        assert await asyncio.to_thread(a.stop) == 0
        a.start()
        await asyncio.to_thread(a.wait_ready)
        restarted.set()
        await asyncio.wait_for(asyncio.gather(*clients), 60)
    finally:
        for task in clients:
            task.cancel()
    assert len(seen) > before
    # The sessions on the restarted instance were told why and closed with 1001; they went on elsewhere.
    assert endings and set(endings) == {(1001, "server_shutting_down")}, endings
    turns = [turn for turn in await cluster.turns() if turn["principal"] == "team-a"]
    completed = [turn["response_id"] for turn in turns if turn["status"] == "completed"]
    assert sorted(completed) == sorted(seen) and len(set(seen)) == len(seen)
    assert len({turn["id"] for turn in turns}) == len(turns)
    assert not [turn for turn in turns if turn["status"] != "completed" and turn["response_id"] in set(seen)]


@dataclass
class Address:
    url: str


async def test_two_workers_share_calls_metrics_and_readiness(tmp_path: Path, simulator: ServerThread, redis_server, postgres_dsn: str) -> None:  # noqa: F811
    host, port = "127.0.0.1", free_port()
    config = gateway_config(tmp_path, host, port, None, f"{simulator.url}/v1", redis_server.url, postgres_dsn, drain_ready_delay_s=2)
    instance = Instance(config, host, port, "--workers", "2").start()
    try:
        await asyncio.to_thread(instance.wait_ready, 2)
        pattern = r"worker (\d) \(pid (\d+)\) takes forwarded requests on (http://\S+)"
        found = {int(w): (int(pid), url) for w, pid, url in re.findall(pattern, instance.log.read_text())}
        (_, w0), (pid1, w1) = found[0], found[1]

        # A call answered by one worker is watched and hung up through the other.
        for owner, other in ((w0, w1), (w1, w0)):
            async with rtc_client.call(Address(owner), path=CALLS_PATH) as (caller, call_id):  # type: ignore[arg-type]
                sideband_url = other.replace("http", "ws", 1) + f"/v1/realtime?call_id={call_id}"
                async with websockets.connect(sideband_url, additional_headers=bearer(KEY)) as sideband:
                    await sideband.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "brief"}}))
                    while (event := json.loads(await asyncio.wait_for(sideband.recv(), 10)))["type"] != "session.updated":
                        assert event["type"] != "error", event
                reply = await rtc_client.hang_up(Address(other), call_id)  # type: ignore[arg-type]
                assert reply.status_code == 200, reply.text
                await asyncio.wait_for(caller.channel_closed.wait(), 10)

        # One turn on worker 0, two on worker 1: every scrape of the instance counts three.
        for url, count in ((w0, 1), (w1, 2)):
            for _ in range(count):
                ws, _ = await open_session(url)
                assert (await text_turn(ws))["type"] == "response.done"
                await ws.close()

        def completed(text: str) -> float:
            families = {family.name: family for family in text_string_to_metric_families(text)}
            return sum(s.value for s in families["bifrost_rt_turns"].samples if s.name == "bifrost_rt_turns_total" and s.labels["status"] == "completed")

        async with httpx.AsyncClient(timeout=5) as http:
            while completed((await http.get(f"{w1}/metrics?scope=worker")).text) < 2:  # records reach the metrics off the relay path
                await asyncio.sleep(0.05)
            assert completed((await http.get(f"{w0}/metrics?scope=worker")).text) == 1
            for _ in range(4):
                assert completed((await http.get(f"{instance.url}/metrics")).text) == 3
            assert (await http.get(f"{instance.url}/readyz")).json()["workers"] == 2

            # A worker that dies is replaced, on the same shared socket.
            os.kill(pid1, signal.SIGKILL)
            while len(re.findall(pattern, instance.log.read_text())) < 3:
                await asyncio.sleep(0.1)
            await asyncio.to_thread(instance.wait_ready, 2)

            # Told to drain, the instance is not-ready first while it still serves, then exits cleanly.
            assert instance.process is not None
            instance.process.send_signal(signal.SIGTERM)
            while (await http.get(f"{instance.url}/readyz")).status_code == 200:
                await asyncio.sleep(0.05)
            ws, event = await open_session(instance.url)
            assert event["type"] == "session.created"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert event["error"]["code"] == "server_shutting_down" and closed.value.rcvd.code == 1001
        assert await asyncio.to_thread(instance.process.wait, 30) == 0
    finally:
        instance.kill()


def test_several_workers_or_instances_need_the_shared_store(tmp_path: Path) -> None:
    base = {"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}}
    for server in ({"workers": 2}, {"instance_url": "http://10.0.0.5:9080", "instance_secret": INSTANCE_SECRET}):
        with pytest.raises(ConfigError, match=r"store\.redis_url: .*WebRTC calls"):
            parse_config({**base, "server": server})
    with pytest.raises(ConfigError, match=r"server: .*instance_secret is required"):
        parse_config({**base, "server": {"instance_url": "http://10.0.0.5:9080"}, "store": {"redis_url": "redis://x"}})
    with pytest.raises(ConfigError, match=r"server\.instance_url: .*http://host:port"):
        parse_config({**base, "server": {"instance_url": "10.0.0.5"}})
    # The command line is checked too: --workers 2 over a file that names no store is refused before serving.
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(base))
    result = subprocess.run([sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(config), "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "store.redis_url" in result.stderr


DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


def test_the_dockerfile_builds_the_wheel_and_runs_serve() -> None:
    """Checked stage by stage with a Dockerfile parser, so it holds where no container runtime is available."""
    from dockerfile_parse import DockerfileParser

    dockerfile = DOCKERFILE
    parsed = DockerfileParser(path=str(dockerfile))
    stages = [(entry["instruction"], entry["value"]) for entry in parsed.structure]
    froms = [value for instruction, value in stages if instruction == "FROM"]
    assert [value.rsplit(" ", 1)[-1] for value in froms] == ["build", "runtime"]
    build = stages[: next(i for i, (instruction, value) in enumerate(stages) if value.endswith("AS runtime"))]
    copied = " ".join(value for instruction, value in build if instruction == "COPY")
    for needed in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "src", "python"):
        assert needed in copied
    assert any(instruction == "RUN" and "maturin build --release" in value for instruction, value in build)
    runtime = stages[len(build):]
    assert ("COPY", "--from=build /dist /dist") in runtime
    assert any(instruction == "RUN" and "pip install" in value and ".whl" in value for instruction, value in runtime)
    assert any(instruction == "USER" and value != "root" for instruction, value in runtime)
    assert json.loads(dict(stages)["ENTRYPOINT"]) == ["bifrost-rt", "serve"]
    cmd = json.loads(dict(stages)["CMD"])
    assert cmd[:2] == ["--config", "/etc/bifrost-rt/gateway.yaml"]
    # Everything the build stage copies exists in the repository, and .dockerignore keeps local builds out.
    root = dockerfile.parent
    for name in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "src", "python"):
        assert (root / name).exists(), name
    assert {".venv", "target", "**/*.so"} <= set((root / ".dockerignore").read_text().split())


@pytest.mark.slow
def test_the_image_builds_and_runs_where_a_container_runtime_is_available() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no container runtime answers `docker info` here (a client without a daemon)")
    tag = "bifrost-rt-test:latest"
    subprocess.run([docker, "build", "-t", tag, str(DOCKERFILE.parent)], check=True, timeout=1800)
    version = subprocess.run([docker, "run", "--rm", "--entrypoint", "bifrost-rt", tag, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("bifrost-rt ")
