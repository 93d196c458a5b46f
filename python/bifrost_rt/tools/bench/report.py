"""Turns raw phase runs into per-target medians, gateway/floor ratios and a readable table."""

from __future__ import annotations

import math
import statistics
from typing import Any

# metric name -> (phase, field of a run record); CPU metrics are per session (setup) or per relayed event.
CPU_METRICS = {
    "setup_cpu_ms_per_session": ("setup", "cpu_ms_per_session"),
    "down_cpu_us_per_event": ("down", "cpu_us_per_event"),
    "up_cpu_us_per_event": ("up", "cpu_us_per_event"),
}
RATE_METRICS = {
    "down_events_per_s": ("down", "events_per_s"),
    "up_events_per_s": ("up", "events_per_s"),
}
COLUMNS = [
    ("setup_cpu_ms_per_session", "setup ms/sess", "{:.2f}"),
    ("down_cpu_us_per_event", "down µs/ev", "{:.1f}"),
    ("down_events_per_s", "down ev/s", "{:,.0f}"),
    ("up_cpu_us_per_event", "up µs/ev", "{:.1f}"),
    ("up_events_per_s", "up ev/s", "{:,.0f}"),
    ("latency_p50_ms", "p50 ms", "{:.2f}"),
    ("latency_p99_ms", "p99 ms", "{:.2f}"),
]


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def phase_record(target: str, repeat: int, phase: str, cpu_us: int, sessions: int, sent: int, received: int,
                 wall_s: float) -> dict[str, Any]:
    record: dict[str, Any] = {"target": target, "repeat": repeat, "phase": phase, "cpu_us": cpu_us,
                              "sessions": sessions, "sent": sent, "received": received, "wall_s": round(wall_s, 4)}
    if phase == "setup":
        record["cpu_ms_per_session"] = cpu_us / 1000 / sessions
    else:
        # Downstream cost is per server event received, upstream cost per client event sent.
        events = received if phase == "down" else sent
        record["events"] = events
        record["cpu_us_per_event"] = cpu_us / events
        record["events_per_s"] = events / wall_s
    # Share of one core the relay used: a relay near 1.0 reads frames in batches, which lowers CPU per event.
    record["relay_core_share"] = cpu_us / 1e6 / wall_s
    return record


def latency_record(target: str, samples: list[float]) -> dict[str, Any]:
    return {"target": target, "samples": len(samples), "p50_ms": percentile(samples, 50),
            "p99_ms": percentile(samples, 99), "max_ms": max(samples)}


def summarize(targets: list[str], runs: list[dict[str, Any]], latencies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    medians: dict[str, dict[str, float]] = {}
    for target in targets:
        row: dict[str, float] = {}
        for metric, (phase, field) in {**CPU_METRICS, **RATE_METRICS}.items():
            values = [r[field] for r in runs if r["target"] == target and r["phase"] == phase]
            if values:
                row[metric] = statistics.median(values)
        if target in latencies:
            row["latency_p50_ms"] = latencies[target]["p50_ms"]
            row["latency_p99_ms"] = latencies[target]["p99_ms"]
        medians[target] = row
    summary: dict[str, Any] = {"medians": medians}
    for relay in RELAYS:
        if relay in medians and "floor" in medians:
            summary[f"ratios_{relay}_over_floor"] = _ratios(runs, medians, relay)
    if "direct" in latencies:
        summary["added_latency_ms"] = {
            t: {"p50": latencies[t]["p50_ms"] - latencies["direct"]["p50_ms"],
                "p99": latencies[t]["p99_ms"] - latencies["direct"]["p99_ms"]}
            for t in latencies if t != "direct"
        }
    return summary


# The gateway as shipped (turn accounting, log lines), with governance and the SQLite turn log on, serving
# beta-protocol clients (every event translated between beta and GA), and recording turn audio.
RELAYS = ("gateway", "governed", "beta", "recording")


def _ratios(runs: list[dict[str, Any]], medians: dict[str, dict[str, float]], relay: str) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for metric, (phase, field) in CPU_METRICS.items():
        gateway, floor = medians[relay].get(metric), medians["floor"].get(metric)
        if gateway is None or not floor:
            continue
        # The same repeat of both targets ran back to back, so its ratio shows how steady the median is.
        floor_runs = {r["repeat"]: r[field] for r in runs if r["target"] == "floor" and r["phase"] == phase}
        gateway_runs = {r["repeat"]: r[field] for r in runs if r["target"] == relay and r["phase"] == phase}
        paired = [gateway_runs[n] / floor_runs[n] for n in sorted(floor_runs) if n in gateway_runs and floor_runs[n]]
        ratios[metric] = {"ratio_of_medians": gateway / floor, "per_repeat": paired}
    return ratios


def format_table(summary: dict[str, Any], header: str) -> str:
    names = list(summary["medians"])
    label_width = max(len("recording/floor"), *(len(n) + 1 for n in names))
    widths = [max(len(title), 9) for _, title, _ in COLUMNS]

    def row(label: str, cells: list[str]) -> str:
        return "  ".join([label.ljust(label_width)] + [c.rjust(w) for c, w in zip(cells, widths, strict=True)])

    lines = [header, row("target", [title for _, title, _ in COLUMNS])]
    for name in names:
        medians = summary["medians"][name]
        cells = [fmt.format(medians[m]) if m in medians else "-" for m, _, fmt in COLUMNS]
        lines.append(row(name + ("*" if name == "direct" else ""), cells))
    for relay in RELAYS:
        ratios = summary.get(f"ratios_{relay}_over_floor")
        if ratios:
            lines.append(row(f"{relay}/floor", [f"{ratios[m]['ratio_of_medians']:.2f}x" if m in ratios else ""
                                                for m, _, _ in COLUMNS]))
    added = summary.get("added_latency_ms")
    if added:
        parts = [f"{t} {d['p50']:+.2f} / {d['p99']:+.2f} ms" for t, d in added.items()]
        lines.append("added one-way latency vs direct (p50 / p99): " + ", ".join(parts))
    if "direct" in names:
        lines.append("* direct: the simulator's own CPU, sharing a core with the load generator; for reference only.")
    return "\n".join(lines)
