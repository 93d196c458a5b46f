"""`bifrost-rt bench --webrtc`: what a WebRTC call costs the gateway, against calling the simulator directly.

This process is the load: aiortc callers and the simulator, both on one event loop (so one clock times a packet
at both ends), pinned to CPU 0. The gateway is a `bifrost-rt serve` child pinned to CPU 1, so its CPU time is its
own. Targets: `direct` (caller -> simulator) and `gateway` (caller -> gateway -> simulator). Phases:

    setup    calls opened and closed one after another: POST -> 201 and POST -> session.created on the data
             channel, and the gateway's CPU per call (open + close)
    latency  a few calls with audio both ways; each tagged Opus payload is timed from the sender's RTP send to
             the receiver's RTP arrival (see bench/rtc.py), up (caller -> simulator) and down
    load     `--calls` calls for `--duration` s through the gateway: its CPU per call, packet loss; once with
             full media (as in the latency phase) and once with lean media (as in the ramp)
    ramp     `--ramp` call counts in turn, until packets are lost, the gateway's core is full, or this process's
             core is (then the gateway was not the limit and the count is a lower bound)
    caller   calls one after another to a second simulator `--caller-rtt-ms` away (an emulated WAN on its
             signalling only): POST -> 201 and POST -> first audio packet

Full media is aiortc at both ends, the simulator encoding and decoding Opus; it costs this process about three
times what the gateway spends per call, so the ramp uses lean media (bench/rtc.py), which the gateway handles the
same way: one SRTP stream of 20 ms packets each way per call. The load phase runs both, so the run shows how far
lean media moves the gateway's CPU.

setup, latency and load repeat `--repeat` times, alternating the order of targets and media; the ramp runs once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import orjson

from bifrost_rt.tools.bench import report, rtc
from bifrost_rt.tools.bench.procs import BenchError, Child, Children, can_pin, free_port, python_module
from bifrost_rt.tools.bench.runner import GATEWAY_KEY, LOAD_CPU, MODEL, RELAY_CPU, SIM_KEY, START_TIMEOUT_S, _machine, _progress, _run
from bifrost_rt.tools.simulator import SimulatorOptions

TARGETS = ("direct", "gateway")
MEDIA = ("full", "lean")  # see bench/rtc.py
SETTLE_S = 1.0  # after calls connect: their first packets and RTCP settle before a window opens
DRAIN_S = 0.5  # after a window: packets sent in it may still arrive; later ones count as lost
CLOSE_TIMEOUT_S = 15.0
MAX_CALLS = 100_000

GATEWAY_CONFIG = """\
providers:
  openai:
    base_url: http://127.0.0.1:{sim_port}/v1
    api_key: {sim_key}
virtual_keys:
  - key: {gateway_key}
    name: bench
turn_log:
  store: none
webrtc:
  host_candidates: loopback
  max_calls: {max_calls}
"""


@dataclass(frozen=True)
class RtcParams:
    setup_calls: int = 10
    latency_calls: int = 2
    latency_duration: float = 8.0
    calls: int = 10
    duration: float = 10.0
    ramp: str = "10,20,40,60,80,100,120,140,160,200"
    ramp_duration: float = 5.0
    ramp_media: str = "lean"
    repeat: int = 3
    payload_bytes: int = 100
    batch: int = 5
    max_loss: float = 0.005
    max_cpu: float = 0.9
    caller_calls: int = 10
    caller_rtt_ms: float = 100.0
    phase_timeout: float = 120.0

    @property
    def ramp_steps(self) -> list[int]:
        return [int(n) for n in self.ramp.split(",") if n.strip()]


QUICK = RtcParams(setup_calls=2, latency_calls=1, latency_duration=2.0, calls=2, duration=2.0, ramp="2",
                  ramp_duration=2.0, caller_calls=2, repeat=1, phase_timeout=60.0)

_HELP = {
    "setup_calls": "calls opened and closed one at a time per target and repeat in the setup phase",
    "latency_calls": "concurrent calls per target in the latency phase",
    "latency_duration": "seconds of audio timed per target and repeat in the latency phase",
    "calls": "concurrent calls through the gateway in the load phase",
    "duration": "seconds the load phase measures",
    "ramp": "comma-separated call counts of the capacity ramp; empty: no ramp",
    "ramp_duration": "seconds measured at each step of the ramp",
    "ramp_media": "media of the callers and the simulator in the ramp: lean (timers sending tagged packets "
                  "through SRTP, so this process stays below the gateway's CPU) or full (aiortc's senders, the "
                  "simulator's encoder and decoder)",
    "payload_bytes": "size of every tagged Opus payload (pre-encoded silence padded; voice at 32-40 kb/s is 80-100)",
    "batch": "calls opened at once while a phase sets up its calls",
    "max_loss": "the ramp stops at the first step losing more than this share of packets in either direction",
    "max_cpu": "the ramp stops at the first step where the gateway or this process used more of its core",
    "caller_calls": "calls per target and repeat in the caller-experience phase",
    "caller_rtt_ms": "emulated round trip to the simulator in the caller-experience phase (signalling only)",
}
_SHARED = {"repeat", "phase_timeout", "caller_rtt_ms"}  # flags the WebSocket bench defines too


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("WebRTC (--webrtc)", "--repeat, --phase-timeout, --caller-rtt-ms, --quick, "
                                      "--pin, --output and --targets (direct,gateway) apply too")
    group.add_argument("--webrtc", action="store_true",
                       help="benchmark WebRTC calls (audio latency, CPU per call, capacity, setup) instead")
    full = RtcParams()
    for f in fields(RtcParams):
        if f.name in _SHARED:
            continue
        kind = {"int": int, "float": float}.get(f.type, str)
        group.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                           help=f"{_HELP[f.name]} (default {getattr(full, f.name)}, "
                                f"--quick {getattr(QUICK, f.name)})")


def run_from_args(ns: argparse.Namespace) -> int:
    base = QUICK if ns.quick else RtcParams()
    params = RtcParams(**{f.name: v if (v := getattr(ns, f.name, None)) is not None else getattr(base, f.name)
                          for f in fields(RtcParams)})
    targets = [t.strip() for t in (ns.targets or ",".join(TARGETS)).split(",") if t.strip()]
    problem = _check(params, targets)
    if problem:
        print(f"bench --webrtc: {problem}", file=sys.stderr)
        return 2
    pin = can_pin() if ns.pin is None else ns.pin
    if pin and not can_pin():
        print("bench: --pin needs taskset and at least 2 CPUs", file=sys.stderr)
        return 2
    output = ns.output or "bench-results-webrtc.json"

    affinity = os.sched_getaffinity(0)
    try:
        if pin:
            os.sched_setaffinity(0, {LOAD_CPU})
        with tempfile.TemporaryDirectory(prefix="bifrost-bench-rtc-") as workdir:
            results = _run(_bench(params, targets, pin, Path(workdir)))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench interrupted", file=sys.stderr)
        return 130
    finally:
        os.sched_setaffinity(0, affinity)

    summary = summarize(targets, results, params.max_cpu)
    machine = _machine(pin)
    for dist in ("aiortc", "aioice", "av", "pylibsrtp"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            machine["packages"][dist] = importlib.metadata.version(dist)
    document = {
        "command": shlex.join(sys.argv),
        "argv": sys.argv,
        "mode": "webrtc",
        "machine": machine,
        "params": asdict(params),
        "targets": targets,
        **summary,
        **results,
    }
    Path(output).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(format_tables(summary, results, params, targets, pin))
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(f"JSON report: {output}")
    return 0


def _check(p: RtcParams, targets: list[str]) -> str | None:
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        return f"unknown targets {unknown}; choose from {','.join(TARGETS)}"
    if p.ramp_media not in MEDIA:
        return f"--ramp-media is lean or full, not {p.ramp_media!r}"
    small = [f.name for f in fields(RtcParams) if f.name not in ("ramp", "ramp_media") and getattr(p, f.name) <= 0]
    if small:
        return "these must be positive: " + ", ".join("--" + n.replace("_", "-") for n in small)
    try:
        steps = p.ramp_steps
    except ValueError:
        return f"--ramp takes call counts separated by commas, not {p.ramp!r}"
    if any(n <= 0 for n in steps):
        return "--ramp call counts must be positive"
    return None


# --- the run ---


@dataclass
class Stack:
    probe: rtc.Probe
    http: httpx.AsyncClient
    endpoints: dict[str, rtc.Endpoint]
    gateway: Child | None
    sim_port: int
    batch: int


async def _bench(p: RtcParams, targets: list[str], pin: bool, workdir: Path) -> dict[str, Any]:
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _measure_all(p, targets, pin, workdir)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _measure_all(p: RtcParams, targets: list[str], pin: bool, workdir: Path) -> dict[str, Any]:
    probe = rtc.Probe(p.payload_bytes)
    options = SimulatorOptions(webrtc_max_calls=MAX_CALLS, webrtc_host_candidates="loopback")
    with (rtc.tapped_simulator_calls(probe), contextlib.closing(Children(workdir, pin)) as children):
        async with rtc.simulator(options) as sim_port, httpx.AsyncClient(timeout=30) as http:
            endpoints = {"direct": rtc.Endpoint("direct", _calls_url(sim_port), SIM_KEY)}
            gateway = None
            if "gateway" in targets:
                port = free_port()
                config = workdir / "gateway-webrtc.yaml"
                config.write_text(GATEWAY_CONFIG.format(sim_port=sim_port, sim_key=SIM_KEY, gateway_key=GATEWAY_KEY,
                                                        max_calls=MAX_CALLS))
                gateway = children.start("gateway-webrtc", python_module(
                    "bifrost_rt.cli", "serve", "--config", config, "--host", "127.0.0.1", "--port", port),
                    port, RELAY_CPU)
                await gateway.wait_listening(START_TIMEOUT_S)
                endpoints["gateway"] = rtc.Endpoint("gateway", _calls_url(port), GATEWAY_KEY)
            stack = Stack(probe, http, {t: endpoints[t] for t in targets}, gateway, sim_port, p.batch)

            for name in targets:  # unmeasured: imports, first certificates, allocator growth
                for media in MEDIA:
                    await _bounded(p, stack, name, "warm-up", _window(stack, name, 2, 1.0, media))

            setup: list[dict[str, Any]] = []
            latency: list[dict[str, Any]] = []
            load: list[dict[str, Any]] = []
            for n in range(p.repeat):
                for name in targets if n % 2 == 0 else targets[::-1]:
                    record = await _bounded(p, stack, name, "setup", _setup(stack, name, p.setup_calls))
                    setup.append({"target": name, "repeat": n, **record})
                    _progress(_setup_line(name, n, record))
                for name in targets if n % 2 == 0 else targets[::-1]:
                    record = await _bounded(p, stack, name, "latency",
                                            _window(stack, name, p.latency_calls, p.latency_duration, "full"))
                    latency.append({"target": name, "repeat": n, **record})
                    _progress(_window_line(f"{name} #{n + 1} latency", record))
                if "gateway" in targets:
                    for media in MEDIA if n % 2 == 0 else MEDIA[::-1]:
                        record = await _bounded(p, stack, "gateway", f"{media} load",
                                                _window(stack, "gateway", p.calls, p.duration, media))
                        load.append({"target": "gateway", "repeat": n, **record})
                        _progress(_window_line(f"gateway #{n + 1} load ({media} media)", record))

            ramp: list[dict[str, Any]] = []
            ramp_end = None
            if "gateway" in targets:
                for calls in p.ramp_steps:
                    try:
                        record = await _bounded(p, stack, "gateway", f"ramp {calls}",
                                                _window(stack, "gateway", calls, p.ramp_duration, p.ramp_media))
                    except BenchError as exc:  # calls refused or not connecting: as far as the ramp goes
                        ramp_end = "setup_failed"
                        ramp.append({"calls": calls, "media": p.ramp_media, "limit": ramp_end, "error": str(exc)})
                        _progress(f"gateway ramp {calls} calls failed: {exc}")
                        with contextlib.suppress(BenchError, OSError, httpx.HTTPError):
                            await _drained(stack, "gateway")
                        break
                    record["limit"] = _limit(p, record)
                    ramp.append(record)
                    _progress(_window_line(f"gateway ramp {calls} calls", record))
                    if record["limit"]:
                        ramp_end = record["limit"]
                        break

        caller = await _caller(p, targets, probe, children, workdir)
        warnings = [f"{c.name} logged errors during the run; last lines:\n{c.log_tail(10)}"
                    for c in children.children if c.logged_errors()]
    return {"setup": setup, "latency": latency, "load": load, "ramp": ramp, "ramp_stopped_by": ramp_end,
            "caller": caller, "warnings": warnings}


async def _caller(p: RtcParams, targets: list[str], probe: rtc.Probe, children: Children,
                  workdir: Path) -> dict[str, Any]:
    """POST -> 201 and POST -> first audio packet with the simulator `caller_rtt_ms` away (the WebSocket bench's
    caller-experience phase, for calls). Only signalling crosses the emulated WAN: the simulator's HTTP answers
    pay it, media and the data channel do not, so ICE and DTLS here cost what they cost on loopback."""
    options = SimulatorOptions(webrtc_max_calls=MAX_CALLS, webrtc_host_candidates="loopback", rtt_ms=p.caller_rtt_ms,
                               wan_seed=1)
    async with rtc.simulator(options) as sim_port, httpx.AsyncClient(timeout=30) as http:
        endpoints = {"direct": rtc.Endpoint("direct", _calls_url(sim_port), SIM_KEY)}
        gateway = None
        if "gateway" in targets:
            port = free_port()
            config = workdir / "gateway-webrtc-caller.yaml"
            config.write_text(GATEWAY_CONFIG.format(sim_port=sim_port, sim_key=SIM_KEY, gateway_key=GATEWAY_KEY,
                                                    max_calls=MAX_CALLS))
            gateway = children.start("gateway-webrtc-caller", python_module(
                "bifrost_rt.cli", "serve", "--config", config, "--host", "127.0.0.1", "--port", port), port, RELAY_CPU)
            await gateway.wait_listening(START_TIMEOUT_S)
            endpoints["gateway"] = rtc.Endpoint("gateway", _calls_url(port), GATEWAY_KEY)
        stack = Stack(probe, http, {t: endpoints[t] for t in targets}, gateway, sim_port, p.batch)
        probe.lean = False
        for name in targets:  # unmeasured: the first connections (each pays the emulated handshake)
            await _bounded(p, stack, name, "caller warm-up", _first_audio(stack, name, 1))
        samples: dict[str, dict[str, list[float]]] = {name: {"answered": [], "first_audio": []} for name in targets}
        for n in range(p.repeat):
            for name in targets if n % 2 == 0 else targets[::-1]:
                record = await _bounded(p, stack, name, "caller", _first_audio(stack, name, p.caller_calls))
                for key in ("answered", "first_audio"):
                    samples[name][key] += record[key]
        result = {name: {"answered_ms": _spread(s["answered"]), "first_audio_ms": _spread(s["first_audio"])}
                  for name, s in samples.items()}
        for name, r in result.items():
            _progress(f"{name} caller at {p.caller_rtt_ms:g} ms RTT: POST->201 p50 {r['answered_ms']['p50']:.1f} ms, "
                      f"POST->first audio p50 {r['first_audio_ms']['p50']:.1f} ms")
        return result


async def _first_audio(stack: Stack, name: str, calls: int) -> dict[str, list[float]]:
    answered, first_audio = [], []
    for _ in range(calls):
        caller, setup = await rtc.open_call(stack.http, stack.endpoints[name], stack.probe, CLOSE_TIMEOUT_S)
        try:
            first_audio.append(await caller.first_audio_ms(CLOSE_TIMEOUT_S))
            answered.append(setup.answered_ms)
        finally:
            await caller.close()
    await _drained(stack, name)
    return {"answered": answered, "first_audio": first_audio}


def _calls_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/realtime/calls?model={MODEL}"


async def _bounded(p: RtcParams, stack: Stack, name: str, phase: str, coro: Any) -> Any:
    try:
        return await asyncio.wait_for(coro, p.phase_timeout)
    except asyncio.TimeoutError:
        problem = f"did not finish within {p.phase_timeout:.0f} s"
    except (OSError, httpx.HTTPError) as exc:
        problem = f"failed: {exc!r}"
    except BenchError as exc:
        problem = f"failed: {exc}"
    log = f"; {stack.gateway.name} log:\n{stack.gateway.log_tail()}" if stack.gateway is not None else ""
    raise BenchError(f"{name} {phase} phase {problem}{log}")


def _gateway_cpu(stack: Stack, name: str) -> int | None:
    return stack.gateway.cpu_us() if name == "gateway" and stack.gateway is not None else None


async def _setup(stack: Stack, name: str, calls: int) -> dict[str, Any]:
    """Opens and closes `calls` calls, one after another; the gateway's CPU covers every open and close."""
    endpoint = stack.endpoints[name]
    stack.probe.lean = False
    answered, created = [], []
    cpu_start = _gateway_cpu(stack, name)
    began = time.perf_counter()
    for _ in range(calls):
        caller, setup = await rtc.open_call(stack.http, endpoint, stack.probe, CLOSE_TIMEOUT_S)
        answered.append(setup.answered_ms)
        created.append(setup.created_ms)
        await caller.close()
    await _drained(stack, name)
    wall = time.perf_counter() - began
    cpu_stop = _gateway_cpu(stack, name)
    record: dict[str, Any] = {
        "calls": calls, "media": "full", "wall_s": round(wall, 3),
        "answered_ms": _spread(answered), "created_ms": _spread(created),
        "answered_samples_ms": answered, "created_samples_ms": created,
    }
    if cpu_start is not None and cpu_stop is not None:
        record["gateway_cpu_us"] = cpu_stop - cpu_start
        record["gateway_cpu_ms_per_call"] = (cpu_stop - cpu_start) / 1000 / calls
    return record


async def _window(stack: Stack, name: str, calls: int, duration: float, media: str) -> dict[str, Any]:
    """`calls` calls with audio both ways; every packet sent in a `duration` window is timed and matched."""
    endpoint, probe = stack.endpoints[name], stack.probe
    probe.lean = media == "lean"
    callers = await rtc.open_calls(stack.http, endpoint, probe, calls, CLOSE_TIMEOUT_S, stack.batch)
    try:
        await asyncio.sleep(SETTLE_S)
        probe.open()
        cpu_start, own_start, began = _gateway_cpu(stack, name), time.process_time_ns() // 1000, time.perf_counter()
        await asyncio.sleep(duration)
        probe.stop_sending()
        wall = time.perf_counter() - began
        cpu_stop, own_stop = _gateway_cpu(stack, name), time.process_time_ns() // 1000
        await asyncio.sleep(DRAIN_S)
        probe.close()
        alive = sum(1 for c in callers if c.pc.connectionState == "connected")
    finally:
        await rtc.close_calls(callers)
    await _drained(stack, name)
    record: dict[str, Any] = {"calls": calls, "media": media, "calls_connected_at_end": alive,
                              "wall_s": round(wall, 3),
                              "load_core_share": (own_stop - own_start) / 1e6 / wall}
    for direction, ledger in (("up", probe.up), ("down", probe.down)):
        delays = ledger.delays_ms()
        sent = len(ledger.sent)
        record[direction] = {
            "sent": sent, "matched": len(delays), "duplicates": ledger.duplicates,
            "match_rate": len(delays) / sent if sent else 0.0,
            "loss": 1 - len(delays) / sent if sent else 1.0,
            "latency_ms": _spread(delays),
        }
    if cpu_start is not None and cpu_stop is not None:
        cpu = cpu_stop - cpu_start
        record["gateway_cpu_us"] = cpu
        record["gateway_core_share"] = cpu / 1e6 / wall
        record["gateway_core_share_per_call"] = cpu / 1e6 / wall / calls
    return record


async def _drained(stack: Stack, name: str) -> None:
    """Waits until the target has ended every call the bench closed, so one phase's teardown is not the next's."""
    if name == "gateway" and stack.gateway is not None:
        url, key = f"http://127.0.0.1:{stack.gateway.port}/readyz", "sessions"
    else:
        url, key = f"http://127.0.0.1:{stack.sim_port}/healthz", "calls"
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    while True:
        reply = await stack.http.get(url)
        if reply.status_code == 200 and reply.json().get(key) == 0:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{name} still had calls open {CLOSE_TIMEOUT_S:.0f} s after the bench closed them: "
                             f"{reply.text[:200]}")
        await asyncio.sleep(0.05)


def _limit(p: RtcParams, record: dict[str, Any]) -> str | None:
    if max(record["up"]["loss"], record["down"]["loss"]) > p.max_loss:
        return "loss"
    if record.get("gateway_core_share", 0.0) > p.max_cpu:
        return "gateway_cpu"
    if record["load_core_share"] > p.max_cpu:
        return "load_generator_cpu"
    return None


def _spread(samples: list[float]) -> dict[str, float] | None:
    if not samples:
        return None
    return {"p50": report.percentile(samples, 50), "p99": report.percentile(samples, 99), "max": max(samples),
            "n": len(samples)}


# --- summary and tables ---


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _calls_at(ramp: list[dict[str, Any]], share: float) -> float | None:
    """Calls at which the gateway's core share crosses `share`, linear between the last two steps: one step's
    reading moves by several points from run to run, so this is steadier than the step the ramp stopped at."""
    steps = [(r["calls"], r["gateway_core_share"]) for r in ramp if "gateway_core_share" in r]
    if len(steps) < 2:
        return None
    (n0, s0), (n1, s1) = steps[-2], steps[-1]
    return n0 + (n1 - n0) * (share - s0) / (s1 - s0) if s1 > s0 and s0 <= share <= s1 else None


def summarize(targets: list[str], results: dict[str, Any], max_cpu: float = RtcParams.max_cpu) -> dict[str, Any]:
    """Medians over repeats; the gateway's added latency is paired per repeat (same repeat, back to back)."""
    medians: dict[str, dict[str, Any]] = {}
    for name in targets:
        row: dict[str, Any] = {}
        setups = [r for r in results["setup"] if r["target"] == name]
        for key in ("answered_ms", "created_ms"):
            for pct in ("p50", "p99"):
                row[f"setup_{key[:-3]}_{pct}_ms"] = _median([r[key][pct] for r in setups if r[key]])
        row["setup_gateway_cpu_ms_per_call"] = _median([r["gateway_cpu_ms_per_call"] for r in setups
                                                        if "gateway_cpu_ms_per_call" in r])
        windows = [r for r in results["latency"] if r["target"] == name]
        for direction in ("up", "down"):
            for pct in ("p50", "p99"):
                row[f"{direction}_{pct}_ms"] = _median([r[direction]["latency_ms"][pct] for r in windows
                                                        if r[direction]["latency_ms"]])
            row[f"{direction}_match_rate"] = _median([r[direction]["match_rate"] for r in windows])
        medians[name] = row
    summary: dict[str, Any] = {"medians": medians}

    if "direct" in targets and "gateway" in targets:
        added: dict[str, Any] = {}
        by_repeat = {(r["target"], r["repeat"]): r for r in results["latency"]}
        repeats = sorted({r["repeat"] for r in results["latency"]})
        for direction in ("up", "down"):
            for pct in ("p50", "p99"):
                paired = [by_repeat[("gateway", n)][direction]["latency_ms"][pct]
                          - by_repeat[("direct", n)][direction]["latency_ms"][pct]
                          for n in repeats if by_repeat[("gateway", n)][direction]["latency_ms"]
                          and by_repeat[("direct", n)][direction]["latency_ms"]]
                added[f"{direction}_{pct}_ms"] = _median(paired)
                added[f"{direction}_{pct}_ms_per_repeat"] = paired
        summary["added_latency_per_hop"] = added

    cpu: dict[str, Any] = {}
    for media in MEDIA:
        load = [r for r in results["load"] if r["media"] == media]
        if not load:
            continue
        shares = [r["gateway_core_share_per_call"] for r in load]
        cpu[media] = {
            "calls": load[0]["calls"],
            "core_percent_per_call": 100 * statistics.median(shares),
            "per_repeat": [100 * s for s in shares],
            "gateway_core_percent": 100 * statistics.median([r["gateway_core_share"] for r in load]),
            "load_core_percent": 100 * statistics.median([r["load_core_share"] for r in load]),
            "loss_up": statistics.median([r["up"]["loss"] for r in load]),
            "loss_down": statistics.median([r["down"]["loss"] for r in load]),
            "up_p50_ms": _median([r["up"]["latency_ms"]["p50"] for r in load if r["up"]["latency_ms"]]),
            "down_p50_ms": _median([r["down"]["latency_ms"]["p50"] for r in load if r["down"]["latency_ms"]]),
        }
    if cpu:
        summary["gateway_cpu_per_call"] = cpu
    ramp = results["ramp"]
    if ramp:
        passed = [r["calls"] for r in ramp if not r["limit"]]
        stopped = results["ramp_stopped_by"] or "end_of_ramp"
        summary["capacity"] = {
            "sustained_calls": max(passed) if passed else 0,
            "stopped_by": stopped,
            # Loss or a full gateway core: the count is the gateway's; otherwise it is a lower bound.
            "gateway_limited": stopped in ("loss", "gateway_cpu"),
            "calls_at_max_cpu": _calls_at(ramp, max_cpu) if stopped == "gateway_cpu" else None,
        }
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(share: float | None, spec: str) -> str:
    return "-" if share is None else format(100 * share, spec) + "%"


def _table(titles: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(t), *(len(r[i]) for r in rows)]) for i, t in enumerate(titles)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return [line(titles), *map(line, rows)]


def format_tables(summary: dict[str, Any], results: dict[str, Any], p: RtcParams, targets: list[str],
                  pin: bool) -> str:
    where = f"gateway pinned to CPU {RELAY_CPU}, callers and simulator to CPU {LOAD_CPU}" if pin else "not pinned"
    lines = [(f"bifrost-rt bench --webrtc: median of {p.repeat} repeats; {where}; 20 ms Opus packets of "
              f"{p.payload_bytes} bytes both ways")]
    medians = summary["medians"]

    lines += ["", (f"one-way audio latency, ms ({p.latency_calls} calls x {p.latency_duration:g} s per target; "
                   "caller RTP send -> simulator RTP arrival (up) and back (down), matched by payload)")]
    rows = [[name, *(_fmt(medians[name][k], ".2f") for k in ("up_p50_ms", "up_p99_ms", "down_p50_ms", "down_p99_ms")),
             *(_percent(medians[name][k], ".1f") for k in ("up_match_rate", "down_match_rate"))]
            for name in targets]
    added = summary.get("added_latency_per_hop")
    if added:
        rows.append(["added/hop", *(_fmt(added[k], "+.2f") for k in ("up_p50_ms", "up_p99_ms", "down_p50_ms",
                                                                       "down_p99_ms")), "", ""])
    lines += _table(["target", "up p50", "up p99", "down p50", "down p99", "up matched", "down matched"], rows)

    lines += ["", f"call setup, ms ({p.setup_calls} calls opened and closed one at a time per target)"]
    rows = [[name, *(_fmt(medians[name][k], ".1f") for k in ("setup_answered_p50_ms", "setup_answered_p99_ms",
                                                             "setup_created_p50_ms", "setup_created_p99_ms")),
             _fmt(medians[name]["setup_gateway_cpu_ms_per_call"], ".1f")] for name in targets]
    lines += _table(["target", "POST->201 p50", "p99", "POST->session.created p50", "p99",
                     "gateway CPU ms/call (open+close)"], rows)

    caller = results.get("caller")
    if caller:
        lines += ["", (f"caller experience, ms ({p.caller_calls} calls per target and repeat; simulator signalling "
                       f"{p.caller_rtt_ms:g} ms RTT away, media on loopback)")]
        rows = [[name, *(_fmt((r[k] or {}).get(q), ".1f") for k in ("answered_ms", "first_audio_ms") for q in ("p50", "p99"))]
                for name, r in caller.items()]
        lines += _table(["target", "POST->201 p50", "p99", "POST->first audio p50", "p99"], rows)

    per_call = summary.get("gateway_cpu_per_call")
    if per_call:
        lines += ["", (f"gateway CPU per call ({p.calls} calls x {p.duration:g} s through the gateway; full: aiortc "
                       "callers and simulator as in the latency phase, lean: the ramp's load; see bench/rtc.py)")]
        rows = [[media, f"{c['core_percent_per_call']:.2f}%", ", ".join(f"{v:.2f}" for v in c["per_repeat"]),
                 f"{c['gateway_core_percent']:.0f}%", f"{c['load_core_percent']:.0f}%", f"{100 * c['loss_up']:.2f}%",
                 f"{100 * c['loss_down']:.2f}%", _fmt(c["up_p50_ms"], ".2f"), _fmt(c["down_p50_ms"], ".2f")]
                for media, c in per_call.items()]
        lines += _table(["media", "per call", "repeats", "gateway core", "load core", "loss up", "loss down",
                         "up p50 ms", "down p50 ms"], rows)
    capacity = summary.get("capacity")
    if capacity:
        lines += ["", (f"capacity ramp ({p.ramp_media} media, {p.ramp_duration:g} s per step; stop at loss > "
                       f"{100 * p.max_loss:g}% or a core > {100 * p.max_cpu:g}%)")]
        lines += _table(["calls", "gateway core", "per call", "load core", "loss up", "loss down",
                         "up p50/p99 ms", "down p50/p99 ms", "stop"], ramp_rows(results["ramp"]))
        verdict = {"loss": "packets were lost", "gateway_cpu": "the gateway's core was full",
                   "load_generator_cpu": "the load generator's core was full: the gateway was not the limit, the "
                                         "figure is a lower bound",
                   "setup_failed": "calls could not be set up (see the JSON report)",
                   "end_of_ramp": "the ramp ended first: the figure is a lower bound"}[capacity["stopped_by"]]
        lines.append(f"sustained without loss: {capacity['sustained_calls']} calls; stopped because {verdict}")
        if capacity["calls_at_max_cpu"] is not None:
            lines.append(f"the gateway's core reaches {100 * p.max_cpu:g}% at about {capacity['calls_at_max_cpu']:.0f} "
                         "calls (linear between the last two steps)")
    return "\n".join(lines)


def ramp_rows(ramp: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in ramp:
        if "error" in r:
            rows.append([str(r["calls"]), *["-"] * 7, r["limit"]])
            continue
        share = r.get("gateway_core_share")
        per_call = None if share is None else share / r["calls"]
        rows.append([str(r["calls"]), _percent(share, ".0f"), _percent(per_call, ".2f"),
                     _percent(r["load_core_share"], ".0f"), _percent(r["up"]["loss"], ".2f"),
                     _percent(r["down"]["loss"], ".2f"), _p50_p99(r["up"]["latency_ms"]),
                     _p50_p99(r["down"]["latency_ms"]), r["limit"] or ""])
    return rows


def _p50_p99(spread: dict[str, float] | None) -> str:
    return "-" if spread is None else f"{spread['p50']:.2f} / {spread['p99']:.1f}"


def _setup_line(name: str, n: int, r: dict[str, Any]) -> str:
    cpu = f", gateway {r['gateway_cpu_ms_per_call']:.1f} ms CPU/call" if "gateway_cpu_ms_per_call" in r else ""
    return (f"{name} #{n + 1} setup: POST->201 p50 {r['answered_ms']['p50']:.1f} ms, POST->session.created p50 "
            f"{r['created_ms']['p50']:.1f} ms{cpu}")


def _window_line(label: str, r: dict[str, Any]) -> str:
    parts = []
    for direction in ("up", "down"):
        d = r[direction]
        lat = d["latency_ms"]
        parts.append(f"{direction} {d['matched']}/{d['sent']}" + (f" p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms"
                                                                  if lat else ""))
    cpu = (f", gateway {100 * r['gateway_core_share']:.0f}% ({100 * r['gateway_core_share_per_call']:.2f}%/call)"
           if "gateway_core_share" in r else "")
    return f"{label}: {r['calls']} calls, " + "; ".join(parts) + f"{cpu}, load {100 * r['load_core_share']:.0f}%"
