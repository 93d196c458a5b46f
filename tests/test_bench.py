"""Smoke run of `bifrost-rt bench --quick`: real simulator and relay processes, checking the report's shape.

Timings are not asserted: they belong to the bench's output, not to a pass/fail test on a shared machine.
"""

from __future__ import annotations

import argparse
import json

import pytest

from bifrost_rt.tools.bench import add_arguments, run_from_args

TARGETS = ["direct", "floor", "gateway"]
PHASES = ["setup", "down", "up"]


@pytest.mark.slow
def test_quick_bench_writes_a_complete_report(tmp_path, capsys):
    output = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--quick", "--targets", ",".join(TARGETS), "--output", str(output)])

    assert run_from_args(ns) == 0

    report = json.loads(output.read_text())
    params = report["params"]
    assert report["targets"] == TARGETS
    assert params["repeat"] == 1
    assert report["machine"]["cpu_count"] >= 1
    assert {"platform", "python", "pinned", "clock_ticks_per_s"} <= report["machine"].keys()
    assert report["relay_uvicorn_settings"]["ws_per_message_deflate"] is False
    assert report["command"] and report["argv"]

    runs = {(r["target"], r["phase"]): r for r in report["runs"]}
    assert set(runs) == {(t, p) for t in TARGETS for p in PHASES}
    for target in TARGETS:
        setup, down, up = (runs[(target, p)] for p in PHASES)
        assert setup["sessions"] == params["sessions"] * params["setup_rounds"]
        assert down["received"] > down["sent"] > 0  # many server events per response.create
        assert up["sent"] == params["sessions"] * params["turns"] * (params["appends"] + 1)
        assert up["received"] > 0  # at least the input_audio_buffer.committed of every session
        for run in (setup, down, up):
            assert run["cpu_us"] >= 0 and run["wall_s"] > 0

        latency = report["latency"][target]
        assert latency["samples"] > 0
        assert 0 < latency["p50_ms"] <= latency["p99_ms"]

        medians = report["medians"][target]
        assert {"setup_cpu_ms_per_session", "down_cpu_us_per_event", "up_cpu_us_per_event",
                "down_events_per_s", "up_events_per_s", "latency_p50_ms", "latency_p99_ms"} <= medians.keys()

    assert set(report["added_latency_ms"]) == {"floor", "gateway"}
    # Quick phases are too short for stable CPU readings, so only the section's presence is checked.
    assert isinstance(report["ratios_gateway_over_floor"], dict)

    # Caller experience over the emulated WAN: every target set sessions up and heard audio; the pooled one's
    # setup skipped the provider's round trips (100 ms each), which no other target can.
    caller = report["caller"]
    assert set(caller) == {"direct", "floor", "gateway", "pooled"}
    for row in caller.values():
        assert row["sessions"] == params["caller_rounds"]
        assert 0 < row["setup_p50_ms"] <= row["setup_p99_ms"]
        assert 0 < row["first_audio_p50_ms"] <= row["first_audio_p99_ms"]
    assert caller["direct"]["setup_p50_ms"] >= 3 * params["caller_rtt_ms"]
    assert caller["pooled"]["setup_p50_ms"] < params["caller_rtt_ms"]
    assert caller["gateway"]["setup_cpu_ms_per_session"] >= 0 and caller["pooled"]["setup_cpu_ms_per_session"] >= 0

    table = capsys.readouterr().out
    for target in TARGETS:
        assert target in table
    assert "caller experience" in table


@pytest.mark.slow
def test_quick_webrtc_bench_writes_a_complete_report(tmp_path, capsys):
    """`bench --webrtc --quick`: one call per latency window, two per load window, a two-call ramp, one repeat."""
    output = tmp_path / "bench-results-webrtc.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--webrtc", "--quick", "--output", str(output)])

    assert run_from_args(ns) == 0

    report = json.loads(output.read_text())
    assert report["mode"] == "webrtc"
    assert report["targets"] == ["direct", "gateway"]
    assert report["params"]["repeat"] == 1
    assert report["machine"]["packages"]["aiortc"]

    # Latency: every packet sent in the window was matched 1:1 by its tagged payload, with a positive delay.
    latency = {r["target"]: r for r in report["latency"]}
    assert set(latency) == {"direct", "gateway"}
    for window in latency.values():
        assert window["media"] == "full"
        for direction in ("up", "down"):
            packets = window[direction]
            assert packets["sent"] > 0 and packets["matched"] > 0
            assert packets["matched"] <= packets["sent"]
            assert packets["duplicates"] == 0
            assert 0 < packets["match_rate"] <= 1
            assert 0 < packets["latency_ms"]["p50"] <= packets["latency_ms"]["p99"] <= packets["latency_ms"]["max"]
    added = report["added_latency_per_hop"]
    assert {"up_p50_ms", "up_p99_ms", "down_p50_ms", "down_p99_ms"} <= added.keys()
    assert all(isinstance(added[k], float) for k in ("up_p50_ms", "down_p50_ms"))

    # Setup: both targets answered and created sessions; only the gateway's CPU is read.
    setups = {r["target"]: r for r in report["setup"]}
    for setup in setups.values():
        assert setup["calls"] == report["params"]["setup_calls"]
        assert 0 < setup["answered_ms"]["p50"] < setup["created_ms"]["p50"]
    assert setups["gateway"]["gateway_cpu_ms_per_call"] > 0
    assert "gateway_cpu_ms_per_call" not in setups["direct"]

    # CPU per call: measured with both media paths, audio flowing both ways.
    loads = {r["media"]: r for r in report["load"]}
    assert set(loads) == {"full", "lean"}
    for load in loads.values():
        assert load["calls"] == report["params"]["calls"]
        assert load["gateway_cpu_us"] > 0 and load["gateway_core_share_per_call"] > 0
        assert load["load_core_share"] > 0
        assert load["up"]["matched"] > 0 and load["down"]["matched"] > 0
    per_call = report["gateway_cpu_per_call"]
    assert per_call["full"]["core_percent_per_call"] > 0 and per_call["lean"]["core_percent_per_call"] > 0

    # Ramp: one step; it either passed or says why it stopped.
    (step,) = report["ramp"]
    assert step["calls"] == 2 and step["media"] == "lean"
    assert step["up"]["matched"] > 0 and step["down"]["matched"] > 0
    assert report["capacity"]["stopped_by"] in ("end_of_ramp", "loss", "gateway_cpu", "load_generator_cpu")
    assert report["capacity"]["sustained_calls"] in (0, 2)

    # Caller experience: both targets answered and sent audio, the simulator's signalling a round trip away.
    caller = report["caller"]
    assert set(caller) == {"direct", "gateway"}
    for row in caller.values():
        assert row["answered_ms"]["n"] == row["first_audio_ms"]["n"] == report["params"]["caller_calls"]
        assert report["params"]["caller_rtt_ms"] <= row["answered_ms"]["p50"] < row["first_audio_ms"]["p50"]

    table = capsys.readouterr().out
    for heading in ("one-way audio latency", "call setup", "gateway CPU per call", "capacity ramp", "added/hop",
                    "caller experience"):
        assert heading in table


@pytest.mark.slow
def test_quick_bench_of_the_gemini_target(tmp_path, capsys):
    output = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_from_args(parser.parse_args(["--quick", "--targets", "floor,gemini", "--output", str(output)])) == 0
    report = json.loads(output.read_text())
    runs = {(r["target"], r["phase"]): r for r in report["runs"]}
    setup, down, up = (runs[("gemini", p)] for p in PHASES)
    params = report["params"]
    assert setup["sessions"] == params["sessions"] * params["setup_rounds"]
    assert down["received"] > down["sent"] > 0  # every Gemini answer arrives as GA events
    assert up["sent"] == params["sessions"] * params["turns"] * (params["appends"] + 1)
    assert "gemini" not in report["latency"]  # Gemini's messages carry no send stamps
    assert isinstance(report["ratios_gemini_over_floor"], dict)
    assert "gemini/floor" in capsys.readouterr().out
