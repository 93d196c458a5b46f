"""`bifrost-rt serve` as users run it: config validation, graceful shutdown, and the built wheel in a clean venv."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bifrost_rt.config import ConfigError, load_config, parse_config
from bifrost_rt.providers import ModelResolver
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY
from servers import ServerThread
from services import free_port

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["redis_service"]  # the redis_server fixture: several workers share their state through Redis


def wait_until_listening(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not start listening")


def test_config_errors_name_the_field(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"providers\.openai\.base_url"):
        parse_config({"providers": {"openai": {"base_url": "ftp://x"}}})
    with pytest.raises(ConfigError, match=r"providers: .*at least one provider"):
        parse_config({"providers": {}})
    with pytest.raises(ConfigError, match=r"virtual_keys\.0\.key.*BF_TEST_MISSING"):
        parse_config({"providers": {"openai": {"base_url": "http://x"}}, "virtual_keys": [{"key": "${BF_TEST_MISSING}", "name": "a"}]})
    with pytest.raises(ConfigError, match=r"realtime\.max_frame_bytes"):
        parse_config({"providers": {"openai": {"base_url": "http://x"}}, "realtime": {"max_frame_bytes": 10}})
    with pytest.raises(ConfigError, match=r"models\.fast: unknown provider"):
        parse_config({"providers": {"openai": {"base_url": "http://x"}}, "models": {"fast": "nope"}})

    monkeypatch.setenv("BF_TEST_PROVIDER_KEY", "sk-from-env")
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        '[providers.openai]\nbase_url = "https://api.openai.com/v1"\napi_key = "env:BF_TEST_PROVIDER_KEY"\n'
        '[[virtual_keys]]\nkey = "sk-bf-x"\nname = "x"\n'
    )
    config = load_config(toml)
    assert config.providers["openai"].api_key.get_secret_value() == "sk-from-env"
    assert ModelResolver(config).resolve("gpt-realtime").upstream_url({}) == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert "sk-from-env" not in repr(config)


def write_config(path: Path, upstream_port: int, redis_url: str | None = None, **realtime) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "server": {"log_level": "info"},
                "store": {"redis_url": redis_url},
                "providers": {"openai": {"base_url": f"http://127.0.0.1:{upstream_port}/v1", "api_key": "sk-provider"}},
                "virtual_keys": [{"key": VIRTUAL_KEY, "name": "team-a"}],
                "realtime": realtime,
                "turn_log": {"sqlite_path": str(path.parent / "turns.db"), "spill_path": str(path.parent / "turns.spill.jsonl")},
                "ui": {"enabled": True, "secret": "serve-test-ui-cookie-secret"},  # its templates must ship too
            }
        )
    )
    return path


async def test_sigterm_drains_open_turns_then_closes_1001(tmp_path):
    # Paced at realtime so the response is still streaming when the signal arrives.
    with ServerThread(create_simulator_app(SimulatorOptions(pace=1.0, response_audio_ms=1500))) as simulator:
        port = free_port()
        config = write_config(tmp_path / "gateway.yaml", simulator.port, shutdown_drain_s=10)
        process = subprocess.Popen(
            [sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(config), "--port", str(port)],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await asyncio.to_thread(wait_until_listening, port, process)
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
            auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
            async with websockets.connect(url, **auth) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me"}]}}))
                await ws.send(json.dumps({"type": "response.create"}))
                events = []
                while not events or events[-1]["type"] != "response.created":
                    events.append(json.loads(await ws.recv()))
                process.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed):
                    while True:
                        events.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
                types = [e["type"] for e in events]
                assert "response.done" in types, "the open turn was allowed to finish"
                assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "server_shutting_down"
                assert types.index("response.done") < len(types) - 1
                assert ws.close_code == 1001
            assert await asyncio.to_thread(process.wait, 15) == 0
            log = process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
    turns = [json.loads(line.split(" bifrost_rt.turns ", 1)[1]) for line in log.splitlines() if " bifrost_rt.turns " in line]
    assert [t["status"] for t in turns] == ["completed"]
    assert turns[0]["usage"]["output_tokens"] > 0
    assert "sk-provider" not in log and VIRTUAL_KEY not in log


def test_draining_gateway_refuses_new_sessions(tmp_path):
    """During the drain, new sessions are refused while the existing session keeps going."""
    with ServerThread(create_simulator_app(SimulatorOptions(pace=1.0, response_audio_ms=3000))) as simulator:
        port = free_port()
        config = write_config(tmp_path / "gateway.yaml", simulator.port, shutdown_drain_s=5)
        process = subprocess.Popen(
            [sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(config), "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_listening(port, process)
            # Opened before the signal: a keep-alive connection still answers once the listener is closed.
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

            def ready_status() -> int:
                probe.request("GET", "/readyz")
                response = probe.getresponse()
                response.read()
                return response.status

            assert ready_status() == 200

            async def scenario() -> None:
                url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
                auth = {"additional_headers": {"Authorization": f"Bearer {VIRTUAL_KEY}"}}
                async with websockets.connect(url, **auth) as ws:
                    await ws.recv()
                    await ws.send(json.dumps({"type": "response.create"}))
                    while json.loads(await ws.recv())["type"] != "response.created":
                        pass
                    process.send_signal(signal.SIGTERM)
                    while await asyncio.to_thread(ready_status) != 503:
                        pass
                    await ws.recv()  # the open session is still relaying
                    try:
                        async with websockets.connect(url, **auth, open_timeout=3):
                            raise AssertionError("a new session was accepted while draining")
                    except InvalidStatus as refused:  # already queued on the listener: told why
                        assert refused.response.status_code == 503
                    except OSError:  # the listener is closed
                        pass

            asyncio.run(scenario())
        finally:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("install", ["maturin-wheel", "pip-source"])
def test_package_installs_in_a_clean_venv_and_serves(tmp_path, install):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if install == "maturin-wheel":
        dist = tmp_path / "dist"
        subprocess.run([sys.executable, "-m", "maturin", "build", "--release", "-o", str(dist)], cwd=ROOT, check=True, capture_output=True)
        (wheel,) = dist.glob("bifrost_rt-*.whl")
        assert "abi3" in wheel.name
        subprocess.run([*pip, str(wheel)], check=True)
    else:
        subprocess.run([*pip, str(ROOT)], check=True)
    cli = str(venv / "bin" / "bifrost-rt")
    version = subprocess.run([cli, "--version"], check=True, capture_output=True, text=True).stdout
    assert version.startswith("bifrost-rt ")
    port = free_port()
    config = write_config(tmp_path / "gateway.yaml", 9)
    # Run outside the source tree so the installed package, not ./python, is imported.
    process = subprocess.Popen([cli, "serve", "--config", str(config), "--port", str(port)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_listening(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as response:
            assert json.loads(response.read())["status"] == "ready"
        # The session UI's templates and static files are package data: they are in the installed package.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/login") as response:
            assert b'id="login-form"' in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/static/live.js") as response:
            assert b"setInterval(refresh" in response.read()
        located = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import bifrost_rt._native, bifrost_rt; print(bifrost_rt.__file__)"],
            cwd=tmp_path, check=True, capture_output=True, text=True,
        ).stdout
        assert str(venv) in located
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


async def test_workers_log_their_turns_and_drain_on_sigterm(tmp_path, redis_server):
    with ServerThread(create_simulator_app(SimulatorOptions(pace=0))) as simulator:
        port = free_port()
        config = write_config(tmp_path / "gateway.yaml", simulator.port, redis_server.url)
        process = subprocess.Popen(
            [sys.executable, "-m", "bifrost_rt.cli", "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await asyncio.to_thread(wait_until_listening, port, process)
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
            for _ in range(3):
                async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}) as ws:
                    await ws.recv()
                    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
                    while json.loads(await ws.recv())["type"] != "response.done":
                        pass
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 20)
            log = process.stderr.read()
            assert code == 0, log
        finally:
            if process.poll() is None:
                process.kill()
    turns = [line for line in log.splitlines() if " bifrost_rt.turns " in line]
    assert len(turns) == 3, log


def test_the_example_configuration_loads(monkeypatch):
    for name in ("OPENAI_API_KEY", "TEAM_A_KEY", "TEAM_B_KEY", "BIFROST_RT_ADMIN_KEY", "BIFROST_RT_CLIENT_SECRET_KEY", "TURN_CREDENTIAL",
                 "BIFROST_RT_UI_SECRET"):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    config = load_config(ROOT / "examples" / "gateway.yaml")
    assert config.models["fast"].model == "gpt-realtime-mini"
    assert config.virtual_keys[1].allowed_models == ["fast", "gpt-realtime-mini"]
    assert config.client_secrets.secret.get_secret_value() == "value-of-bifrost_rt_client_secret_key"
    assert config.webrtc.ice_servers[1].credential.get_secret_value() == "value-of-turn_credential"
    assert config.ui.enabled and config.ui.secret.get_secret_value() == "value-of-bifrost_rt_ui_secret"


def test_demo_holds_a_conversation_and_reads_it_back_from_the_turn_log(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bifrost_rt.cli", "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.strip().startswith("turn ") and "completed" in line for line in lines) == 5  # the last on Gemini
    assert "> Gemini Live turn (model gemini-live, same client code)" in lines
    assert any(line.startswith("GET /api/logs/sessions/demo-") and "→ 4 turns" in line for line in lines)
    assert list(tmp_path.iterdir()) == []  # the demo keeps its SQLite file in a temporary directory


def test_the_demo_without_its_client_names_the_extra_that_brings_it(tmp_path):
    hide_openai = "import sys; sys.modules['openai'] = None; from bifrost_rt.cli import main; sys.exit(main(['demo']))"
    result = subprocess.run([sys.executable, "-c", hide_openai], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'bifrost-rt[demo]'" in result.stderr
