"""`bifrost-rt bench`: CPU per relayed event and added latency of the gateway, against a floor relay.

One run starts two simulators (one for the CPU phases, unpaced unless --pace says otherwise, and one paced in
real time and stamping its events for the latency phase), and in front of each a floor relay and a gateway.
The relays are pinned to one core, the simulators and this process (the load generator) to the other, so
what is measured is the relay's CPU time, not wall time on a shared core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import os
import platform
import shlex
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import orjson
from websockets.exceptions import WebSocketException

from bifrost_rt.config import RealtimeConfig
from bifrost_rt.runtime.server import uvicorn_settings
from bifrost_rt.tools.bench import load, report
from bifrost_rt.tools.bench.load import Counts, Meter, Target
from bifrost_rt.tools.bench.procs import BenchError, Child, Children, can_pin, free_port, python_module

RELAY_CPU, LOAD_CPU = 1, 0
TARGETS = ("direct", "floor", "gateway", "governed", "beta", "recording")
DEFAULT_TARGETS = ("direct", "floor", "gateway", "beta")
MODEL = "gpt-realtime"
SIM_KEY, GATEWAY_KEY = "sk-sim", "sk-bf-bench"
SETTLE_S = 0.2  # lets the relay finish closing sockets before its CPU time is read
START_TIMEOUT_S = 60.0
TICK_US = 1_000_000 // os.sysconf("SC_CLK_TCK")
COARSE_CPU_TICKS = 50  # below this a one-tick reading error exceeds 2%
T = TypeVar("T")

GATEWAY_CONFIG = """\
providers:
  openai:
    base_url: http://127.0.0.1:{sim_port}/v1
    api_key: {sim_key}
virtual_keys:
  - key: {gateway_key}
    name: bench
{policy}turn_log:
{turn_log}
{extra}"""
# `gateway`: turn accounting with one log line per turn. `governed`: the same plus a budget, rate limits and a
# session cap on the key (in memory, or on Redis with --redis-url) and the durable SQLite turn log. `beta`: the
# gateway as shipped, its clients on the beta protocol, so every event is translated to GA and back.
PLAIN_TURN_LOG = "  store: none"
GOVERNED_POLICY = """\
    budget: {{usd: 1000000, period: month}}
    rate_limits: {{turns_per_minute: 1000000, tokens_per_minute: 1000000000}}
    max_sessions: 100000
{store}"""
GOVERNED_TURN_LOG = "  store: sqlite\n  sqlite_path: {path}/turns.db\n  spill_path: {path}/turns.spill.jsonl"
# `recording`: the gateway with the key's turn audio recorded to a directory (record_audio).
RECORDING_POLICY = "    record_audio: true\n"
RECORDING_AUDIO = "audio:\n  directory: {path}\n"


@dataclass(frozen=True)
class Params:
    sessions: int = 10
    responses: int = 40
    pace: float = 0.0
    audio_delta_ms: int = 40
    response_audio_ms: int = 3000
    append_ms: int = 100
    appends: int = 200
    turns: int = 15
    setup_rounds: int = 60
    repeat: int = 3
    latency_sessions: int = 4
    latency_responses: int = 2
    phase_timeout: float = 120.0


QUICK = Params(sessions=2, responses=2, response_audio_ms=1000, appends=20, turns=1, setup_rounds=2, repeat=1,
               latency_sessions=1, latency_responses=1, phase_timeout=30.0)

_HELP = {
    "sessions": "concurrent sessions in the CPU phases",
    "responses": "responses per session in the downstream phase (sequential, each awaits response.done)",
    "pace": "audio delivery of the CPU-phase simulator as a multiple of realtime; 0 = as fast as possible",
    "audio_delta_ms": "audio per response.output_audio.delta",
    "response_audio_ms": "audio per response",
    "append_ms": "audio per input_audio_buffer.append (100 ms = 6 400 base64 chars)",
    "appends": "appends per user turn in the upstream phase (each turn ends with a commit)",
    "turns": "user turns per session in the upstream phase",
    "setup_rounds": "rounds of opening and closing all sessions in the setup phase",
    "repeat": "repeats of the CPU phases per target, interleaved across targets",
    "latency_sessions": "sessions in the latency phase",
    "latency_responses": "responses per session in the latency phase (paced in real time)",
    "phase_timeout": "seconds after which a phase is abandoned and the run fails",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    full = Params()
    parser.add_argument("--redis-url", help="Redis for the governed target's counters (default: in memory)")
    parser.add_argument("--targets", default=None,
                        help="comma-separated subset of direct,floor,gateway,governed,beta,recording "
                             "(default: direct,floor,gateway,beta; "
                             "with --webrtc: direct,gateway)")
    for f in fields(Params):
        kind = float if f.type == "float" else int
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                            help=f"{_HELP[f.name]} (default {getattr(full, f.name)}, --quick {getattr(QUICK, f.name)})")
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds, to check the bench works")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                        help=f"pin relays to CPU {RELAY_CPU}, simulators and load to CPU {LOAD_CPU} "
                             "(default: on when taskset exists and there are 2+ CPUs)")
    parser.add_argument("--output", default=None,
                        help="JSON report path (default: bench-results.json; with --webrtc: bench-results-webrtc.json)")
    from bifrost_rt.tools.bench import rtc_runner

    rtc_runner.add_arguments(parser)


def run_from_args(ns: argparse.Namespace) -> int:
    if getattr(ns, "webrtc", False):
        from bifrost_rt.tools.bench import rtc_runner

        return rtc_runner.run_from_args(ns)
    base = QUICK if ns.quick else Params()
    params = Params(**{f.name: v if (v := getattr(ns, f.name)) is not None else getattr(base, f.name)
                       for f in fields(Params)})
    targets = [t.strip() for t in (ns.targets or ",".join(DEFAULT_TARGETS)).split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        print(f"bench: unknown targets {unknown}; choose from {','.join(TARGETS)}", file=sys.stderr)
        return 2
    problem = _check(params)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    pin = can_pin() if ns.pin is None else ns.pin
    if pin and not can_pin():
        print("bench: --pin needs taskset and at least 2 CPUs", file=sys.stderr)
        return 2

    affinity = os.sched_getaffinity(0)
    try:
        if pin:
            os.sched_setaffinity(0, {LOAD_CPU})
        with tempfile.TemporaryDirectory(prefix="bifrost-bench-") as workdir:
            results = _run(_bench(params, targets, pin, Path(workdir), ns.redis_url))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench interrupted", file=sys.stderr)
        return 130
    finally:
        os.sched_setaffinity(0, affinity)

    summary = report.summarize(targets, results["runs"], results["latency"])
    document = {
        "command": shlex.join(sys.argv),
        "argv": sys.argv,
        "machine": _machine(pin),
        "params": asdict(params),
        "targets": targets,
        "relay_uvicorn_settings": uvicorn_settings(RealtimeConfig()),
        **summary,
        **results,
    }
    output = ns.output or "bench-results.json"
    Path(output).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(report.format_table(summary, _header(params, pin)))
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(f"JSON report: {output}")
    return 0


def _check(p: Params) -> str | None:
    small = [f.name for f in fields(Params) if getattr(p, f.name) <= 0 and f.name != "pace"]
    if small:
        return "these must be positive: " + ", ".join("--" + n.replace("_", "-") for n in small)
    if p.appends * p.append_ms < 100:
        return "a turn needs at least 100 ms of audio (--appends x --append-ms) to be committed"
    return None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _bench(p: Params, names: list[str], pin: bool, workdir: Path, redis_url: str | None) -> dict[str, Any]:
    # SIGTERM ends the run like Ctrl-C does: through the cleanup, so no server outlives the bench.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _measure_all(p, names, pin, workdir, redis_url)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _measure_all(p: Params, names: list[str], pin: bool, workdir: Path, redis_url: str | None) -> dict[str, Any]:
    with contextlib.closing(Children(workdir, pin)) as children:
        fast = _start_stack(children, workdir, names, "cpu", p, pace=p.pace, stamp=False, redis_url=redis_url)
        paced = _start_stack(children, workdir, names, "latency", p, pace=1.0, stamp=True, redis_url=redis_url)
        await asyncio.gather(*(c.wait_listening(START_TIMEOUT_S) for c in children.children))

        for name in names:  # unmeasured: first connections, lazy imports, allocator growth
            target, relay = fast[name]
            await _phase(p, relay, name, -1, "setup", functools.partial(load.setup, target, p.sessions, 1))
            await _phase(p, relay, name, -1, "down", functools.partial(load.down, target, p.sessions, 1))

        runs = []
        for n in range(p.repeat):
            # Alternating the order (A B, B A, ...) cancels slow drift of the machine between targets.
            for name in names if n % 2 == 0 else names[::-1]:
                target, relay = fast[name]
                phases = {
                    "setup": functools.partial(load.setup, target, p.sessions, p.setup_rounds),
                    "down": functools.partial(load.down, target, p.sessions, p.responses),
                    "up": functools.partial(load.up, target, p.sessions, p.turns, p.appends, p.append_ms),
                }
                for phase, body in phases.items():
                    runs.append(await _phase(p, relay, name, n, phase, body))

        latency = {}
        for name in names:
            target, relay = paced[name]
            samples = await _bounded(p, name, "latency",
                                     load.latency(target, p.latency_sessions, p.latency_responses), relay)
            latency[name] = report.latency_record(name, samples)
            _progress(f"{name} latency: p50 {latency[name]['p50_ms']:.2f} ms, p99 {latency[name]['p99_ms']:.2f} ms "
                      f"over {len(samples)} deltas")
        warnings = [f"{c.name} logged errors during the run; last lines:\n{c.log_tail(10)}"
                    for c in children.children if c.logged_errors()]
        relay_runs = [r for r in runs if r["target"] != "direct"]
        coarse = sum(1 for r in relay_runs if r["cpu_us"] < COARSE_CPU_TICKS * TICK_US)
        if coarse:
            warnings.append(f"{coarse} of {len(relay_runs)} relay phases used under {COARSE_CPU_TICKS} clock ticks "
                            f"({COARSE_CPU_TICKS * TICK_US // 1000} ms) of CPU, so their figures are coarse; "
                            "more sessions, responses, turns or setup rounds make them precise")
        return {"runs": runs, "latency": latency, "warnings": warnings}


def _start_stack(children: Children, workdir: Path, names: list[str], label: str, p: Params, pace: float,
                 stamp: bool, redis_url: str | None = None) -> dict[str, tuple[Target, Child]]:
    """A simulator and the relays in front of it; returns target name -> (how to reach it, whose CPU to read)."""
    sim_port = free_port()
    sim = children.start(f"simulator-{label}", python_module(
        "bifrost_rt.cli", "simulate", "--host", "127.0.0.1", "--port", sim_port, "--pace", pace,
        "--audio-delta-ms", p.audio_delta_ms, "--response-audio-ms", p.response_audio_ms,
        *(["--stamp-events"] if stamp else [])), sim_port, LOAD_CPU)
    upstream = f"ws://127.0.0.1:{sim_port}/v1/realtime"
    stack = {"direct": (Target("direct", _url(sim_port), SIM_KEY), sim)}
    if "floor" in names:
        port = free_port()
        floor = children.start(f"floor-{label}", python_module(
            "bifrost_rt.tools.bench.floor", "--port", port, "--upstream", upstream, "--api-key", SIM_KEY), port, RELAY_CPU)
        stack["floor"] = (Target("floor", _url(port), SIM_KEY), floor)
    for relay in ("gateway", "governed", "beta", "recording"):
        if relay not in names:
            continue
        port = free_port()
        config = workdir / f"{relay}-{label}.yaml"
        extra = ""
        if relay in ("gateway", "beta"):
            policy, turn_log = "", PLAIN_TURN_LOG
        elif relay == "recording":
            policy, turn_log, extra = RECORDING_POLICY, PLAIN_TURN_LOG, RECORDING_AUDIO.format(path=workdir / relay / label / "audio")
        else:
            store = f"store:\n  redis_url: {redis_url}\n" if redis_url else ""
            policy, turn_log = GOVERNED_POLICY.format(store=store), GOVERNED_TURN_LOG.format(path=workdir / relay / label)
        config.write_text(GATEWAY_CONFIG.format(sim_port=sim_port, sim_key=SIM_KEY, gateway_key=GATEWAY_KEY, policy=policy, turn_log=turn_log,
                                             extra=extra))
        gateway = children.start(f"{relay}-{label}", python_module(
            "bifrost_rt.cli", "serve", "--config", config, "--host", "127.0.0.1", "--port", port), port, RELAY_CPU)
        stack[relay] = (Target(relay, _url(port), GATEWAY_KEY, beta=relay == "beta"), gateway)
    return stack


def _url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/realtime?model={MODEL}"


async def _phase(p: Params, relay: Child, name: str, repeat: int, phase: str,
                 body: Callable[[Meter, Meter], Awaitable[Counts]]) -> dict[str, Any]:
    """Runs one load phase, reading the relay's CPU time at the edges of its measured window."""
    cpu: dict[str, int] = {}

    async def start() -> None:
        cpu["start"] = relay.cpu_us()

    async def stop() -> None:
        await asyncio.sleep(SETTLE_S)
        cpu["stop"] = relay.cpu_us()

    counts = await _bounded(p, name, phase, body(start, stop), relay)
    record = report.phase_record(name, repeat, phase, cpu["stop"] - cpu["start"], counts.sessions, counts.sent,
                                 counts.received, counts.wall_s)
    if repeat >= 0:
        detail = (f"{record['cpu_ms_per_session']:.2f} ms/session" if phase == "setup" else
                  f"{record['cpu_us_per_event']:.1f} µs/event, {record['events_per_s']:,.0f} events/s")
        _progress(f"{name} #{repeat + 1} {phase}: {detail} ({record['cpu_us'] / 1000:.0f} ms CPU, "
                  f"{record['relay_core_share']:.0%} of a core)")
    return record


async def _bounded(p: Params, name: str, phase: str, coro: Awaitable[T], relay: Child) -> T:
    """Runs a phase under the time limit; a failure names the phase and shows what the relay logged."""
    try:
        return await asyncio.wait_for(coro, p.phase_timeout)
    except asyncio.TimeoutError:
        problem = f"did not finish within {p.phase_timeout:.0f} s"
    except (OSError, WebSocketException) as exc:
        problem = f"failed: {exc!r}"
    raise BenchError(f"{name} {phase} phase {problem}; {relay.name} log:\n{relay.log_tail()}")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _header(p: Params, pin: bool) -> str:
    pace = f"paced {p.pace:g}x realtime" if p.pace else "unpaced"
    where = f"relays pinned to CPU {RELAY_CPU}, simulators and load to CPU {LOAD_CPU}" if pin else "not pinned"
    return (f"bifrost-rt bench: {p.sessions} sessions x (setup {p.setup_rounds} rounds; down {p.responses} responses "
            f"of {p.response_audio_ms} ms audio in {p.audio_delta_ms} ms deltas, {pace}; "
            f"up {p.turns} turns of {p.appends} appends of {p.append_ms} ms)\n"
            f"median of {p.repeat} repeats; {where}; CPU is the relay's, per session or per relayed event")


def _machine(pin: bool) -> dict[str, Any]:
    versions = {}
    for dist in ("uvicorn", "starlette", "websockets", "orjson", "uvloop", "httptools"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "pinned": pin,
        "relay_cpu": RELAY_CPU if pin else None,
        "load_cpu": LOAD_CPU if pin else None,
        "cpu_time_source": "utime+stime+cutime+cstime of the relay's process tree, /proc/<pid>/stat",
        "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"),
        "packages": versions,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
