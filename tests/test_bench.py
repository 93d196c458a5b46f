"""Smoke run of `bifrost-rt bench --quick`: real simulator and relay processes, checking the report's shape.

Timings are not asserted: they belong to the bench's output, not to a pass/fail test on a shared machine.
"""

from __future__ import annotations

import argparse
import json

import pytest
from bifrost_rt.bench import add_arguments, run_from_args

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

    table = capsys.readouterr().out
    for target in TARGETS:
        assert target in table
