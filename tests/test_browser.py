"""A real browser on a WebRTC call: headless Chromium runs OpenAI's browser sample flow (tests/browser_call.py)
against the simulator, and against the gateway relaying to it.

Each call runs in its own network namespace with only loopback up, so Chromium can pair no other interface and
nothing leaves the machine. Chromium, `unshare` and `ip` are required (.ci/run installs them); without them, or
without the right to create a namespace, the tests fail rather than skip.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bifrost_rt.tools.simulator.audio import TONE_HZ

from browser_call import RESPONSE_AUDIO_MS

SCRIPT = Path(__file__).with_name("browser_call.py")
CALL_TIMEOUT_S = 60  # the script's own limit; the subprocess gets a margin on top
RESPONSE_PACKETS = RESPONSE_AUDIO_MS // 20  # the answer's audio in 20 ms packets
TONE_LEVEL = 0.1  # the simulator's tone peaks near 0.18 of full scale; silence through Opus is about 0


def run_in_loopback_namespace(script: Path, *args: str, timeout_s: float) -> dict[str, Any]:
    """Run a browser script in its own network namespace with only loopback up; its stdout is one JSON report.
    The script gets `--chromium <binary> --timeout <seconds>` after `args`."""
    tools = {name: shutil.which(name) for name in ("chromium", "unshare", "ip")}
    missing = sorted(name for name, path in tools.items() if path is None)
    if missing:
        pytest.fail(f"not on PATH: {', '.join(missing)}; install the Debian packages chromium, util-linux and "
                    "iproute2 (.ci/run does)", pytrace=False)
    command = [
        "unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        sys.executable, str(script), *args, "--chromium", str(tools["chromium"]), "--timeout", str(timeout_s),
    ]
    try:
        run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout_s + 30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the browser script overran its own time limit:\n{exc.stderr}", pytrace=False)
    if run.returncode != 0:
        if run.stderr.startswith(("unshare:", "RTNETLINK")):
            pytest.fail("cannot make a loopback-only network namespace (needs root or CAP_SYS_ADMIN):\n"
                        f"{run.stderr}", pytrace=False)
        pytest.fail(f"the browser script failed (exit {run.returncode}):\n{run.stderr}\n{run.stdout}", pytrace=False)
    return orjson.loads(run.stdout)


def browser_call(target: str) -> dict[str, Any]:
    return run_in_loopback_namespace(SCRIPT, "--target", target, timeout_s=CALL_TIMEOUT_S)


def check_the_call(browser: dict[str, Any]) -> None:
    """What the page saw: the sample flow completed, audio both ways over loopback, the answer heard as the tone."""
    assert browser["ok"] and browser["errors"] == [], browser
    events = browser["events"]
    assert events[0] == "session.created"
    for kind in ("response.done", "output_audio_buffer.started", "output_audio_buffer.stopped"):
        assert kind in events, f"no {kind} in {events}"
    # Server VAD took the fake microphone's beeps for speech: the browser's audio reached the server and decoded.
    assert "input_audio_buffer.speech_started" in events, events

    response = browser["response"]
    assert response["status"] == "completed"
    assert response["usage"]["output_token_details"]["audio_tokens"] > 0

    stats = browser["stats"]
    assert stats["pair"]["local"].startswith("127.0.0.1:") and stats["pair"]["remote"].startswith("127.0.0.1:")
    assert stats["inbound"]["codec"] == "audio/opus"
    assert stats["inbound"]["packetsReceived"] >= RESPONSE_PACKETS * 2 // 3  # a busy machine may drop a few
    assert stats["outbound"]["packetsSent"] > RESPONSE_PACKETS // 2
    # Energy is the sum of level² × seconds: the tone's 1.5 s give about 0.05, silence nothing.
    assert stats["inbound"]["totalAudioEnergy"] - browser["energyBefore"] > 0.02
    assert browser["maxAudioLevel"] > TONE_LEVEL
    # Frequency bins are 48000 / 8192 ≈ 5.9 Hz wide.
    assert len(browser["toneHz"]) >= 10 and abs(statistics.median(browser["toneHz"]) - TONE_HZ) < 10


def test_a_browser_calls_the_simulator() -> None:
    report = browser_call("simulator")
    check_the_call(report["browser"])
    assert report["turn_records"] == []


def test_a_browser_calls_through_the_gateway() -> None:
    report = browser_call("gateway")
    browser = report["browser"]
    check_the_call(browser)
    records = [r for r in report["turn_records"] if r["response_id"] == browser["response"]["id"]]
    assert len(records) == 1, report["turn_records"]
    record = records[0]
    assert record["transport"] == "webrtc"
    assert record["status"] == "completed"
    assert record["model"] == "gpt-realtime"
    assert record["principal"] == "team-a", "the call is billed to the virtual key that minted its client secret"
    assert record["usage"] is not None and record["usage"]["output_tokens"] > 0
    assert record["usage"]["total_tokens"] == browser["response"]["usage"]["total_tokens"]
