"""The caller-experience phase of `bifrost-rt bench`: what a caller waits for when the provider is far away.

On loopback every hop costs microseconds, so here the simulator emulates a WAN (`--caller-rtt-ms`, 100 ms by
default: two handshake round trips for TCP + TLS 1.3, then the upgrade, and every message one way; see
simulator/wan.py). The caller is local to the gateway, as a gateway in the caller's region would be. Targets:

    direct   caller -> simulator, over the emulated WAN
    floor    caller -> the floor relay -> simulator: what any relay process in the path costs (its hops)
    gateway  caller -> gateway -> simulator, the gateway connecting upstream for each session (pool off)
    pooled   the same with the warm pool on: sessions already past `session.created` wait in the gateway

Each round opens one session per target in turn (so a pool refills behind its claim, as it would between real
callers), timing connect -> `session.created` and `response.create` -> first `response.output_audio.delta`.
Then the gateway's CPU per session set-up (connect -> `session.created` -> close, one after another) is read
with the pool off and on; with the pool on it includes the pool's own connect that refills behind each claim.

First audio through any relay pays for one more process in the path: on an idle machine that process is woken
from idle once per direction, with cold caches, which on a small VM costs tenths of a millisecond each. The floor
relay pays the same, so `pooled - floor` is the gateway's own share and `floor - direct` the hops'.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bifrost_rt.tools.bench import report
from bifrost_rt.tools.bench.load import RESPONSE_CREATE, Target, recv_until
from bifrost_rt.tools.bench.procs import Child, Children, free_port, python_module

TARGETS = ("direct", "floor", "gateway", "pooled")
SETTLE_S = 1.0  # after a CPU window: the pool's refill behind the last claim is counted too
POOL_SIZE = 2

CONFIG = """\
providers:
  openai:
    base_url: http://127.0.0.1:{sim_port}/v1
    api_key: {sim_key}
{pool}virtual_keys:
  - key: {gateway_key}
    name: bench
turn_log:
  store: none
"""
POOL = """\
    warm_pool:
      min_size: {size}
      max_size: {size}
      models: [{model}]
"""


def start_stack(children: Children, workdir: Path, rtt_ms: float, jitter_ms: float, model: str, sim_key: str,
                gateway_key: str, load_cpu: int, relay_cpu: int) -> dict[str, tuple[Target, Child]]:
    """A WAN-emulating simulator, the floor relay and two gateways in front of it, one with the warm pool."""
    sim_port = free_port()
    sim = children.start("simulator-caller", python_module(
        "bifrost_rt.cli", "simulate", "--host", "127.0.0.1", "--port", sim_port, "--pace", 1,
        "--audio-delta-ms", 20, "--response-audio-ms", 200, "--rtt-ms", rtt_ms, "--jitter-ms", jitter_ms,
        "--wan-seed", 1), sim_port, load_cpu)
    stack = {"direct": (Target("direct", _url(sim_port, model), sim_key), sim)}
    port = free_port()
    floor = children.start("floor-caller", python_module(
        "bifrost_rt.tools.bench.floor", "--port", port, "--upstream", f"ws://127.0.0.1:{sim_port}/v1/realtime",
        "--api-key", sim_key), port, relay_cpu)
    stack["floor"] = (Target("floor", _url(port, model), sim_key), floor)
    for name in ("gateway", "pooled"):
        port = free_port()
        config = workdir / f"{name}-caller.yaml"
        pool = POOL.format(size=POOL_SIZE, model=model) if name == "pooled" else ""
        config.write_text(CONFIG.format(sim_port=sim_port, sim_key=sim_key, gateway_key=gateway_key, pool=pool))
        gateway = children.start(f"{name}-caller", python_module(
            "bifrost_rt.cli", "serve", "--config", config, "--host", "127.0.0.1", "--port", port), port, relay_cpu)
        stack[name] = (Target(name, _url(port, model), gateway_key), gateway)
    return stack


def _url(port: int, model: str) -> str:
    return f"ws://127.0.0.1:{port}/v1/realtime?model={model}"


async def _open(target: Target) -> Any:
    return await connect(target.url, additional_headers={"Authorization": f"Bearer {target.api_key}"},
                         compression=None, max_size=None, open_timeout=30, close_timeout=1)


async def timed_session(target: Target) -> tuple[float, float]:
    """(connect -> session.created, response.create -> first audio delta), in ms."""
    began = time.perf_counter()
    ws = await _open(target)
    try:
        await recv_until(ws, target.name, "session.created")
        created = time.perf_counter()
        await ws.send(RESPONSE_CREATE)
        asked = time.perf_counter()
        await recv_until(ws, target.name, "response.output_audio.delta")
        heard = time.perf_counter()
        await recv_until(ws, target.name, "response.done")
    finally:
        await ws.close()
    return (created - began) * 1000, (heard - asked) * 1000


async def setup_cpu_ms(target: Target, relay: Child, sessions: int, pause_s: float) -> float:
    """The relay's CPU per session for connect -> session.created -> close, sessions one after another."""
    start = relay.cpu_us()
    for _ in range(sessions):
        ws = await _open(target)
        try:
            await recv_until(ws, target.name, "session.created")
        finally:
            await ws.close()
        await asyncio.sleep(pause_s)  # the pool refills behind the claim, as between real callers
    await asyncio.sleep(SETTLE_S)
    return (relay.cpu_us() - start) / 1000 / sessions


async def measure(stack: dict[str, tuple[Target, Child]], rounds: int, repeat: int, pause_s: float,
                  progress: Any) -> dict[str, Any]:
    for target, _ in stack.values():  # unmeasured: first connections, lazy imports; the pool fills meanwhile
        await timed_session(target)
    await asyncio.sleep(SETTLE_S)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in TARGETS}
    for n in range(rounds):
        for name in TARGETS if n % 2 == 0 else TARGETS[::-1]:
            samples[name].append(await timed_session(stack[name][0]))
            await asyncio.sleep(pause_s)
    cpu: dict[str, list[float]] = {"gateway": [], "pooled": []}
    for n in range(repeat):
        for name in ("gateway", "pooled") if n % 2 == 0 else ("pooled", "gateway"):
            target, relay = stack[name]
            cpu[name].append(await setup_cpu_ms(target, relay, rounds, pause_s))
    result: dict[str, Any] = {}
    for name in TARGETS:
        setup = [s for s, _ in samples[name]]
        audio = [a for _, a in samples[name]]
        row = {
            "sessions": len(setup),
            "setup_p50_ms": report.percentile(setup, 50), "setup_p99_ms": report.percentile(setup, 99),
            "first_audio_p50_ms": report.percentile(audio, 50), "first_audio_p99_ms": report.percentile(audio, 99),
        }
        if name in cpu:
            row["setup_cpu_ms_per_session"] = statistics.median(cpu[name])
            row["setup_cpu_ms_per_repeat"] = cpu[name]
        result[name] = row
        progress(f"caller {name}: connect -> session.created p50 {row['setup_p50_ms']:.1f} ms, "
                 f"first audio p50 {row['first_audio_p50_ms']:.1f} ms")
    return result


def format_table(caller: dict[str, Any], rtt_ms: float, jitter_ms: float) -> str:
    lines = [f"caller experience at {rtt_ms:g} ms emulated RTT (±{jitter_ms:g} ms jitter), caller local to the gateway:",
             f"{'target':<9}{'connect→created p50':>21}{'p99':>9}{'first audio p50':>17}{'p99':>9}{'setup CPU ms/sess':>19}"]
    for name, row in caller.items():
        cpu = row.get("setup_cpu_ms_per_session")
        lines.append(f"{name:<9}{row['setup_p50_ms']:>18.1f} ms{row['setup_p99_ms']:>6.1f} ms"
                     f"{row['first_audio_p50_ms']:>14.1f} ms{row['first_audio_p99_ms']:>6.1f} ms"
                     f"{'-' if cpu is None else f'{cpu:.2f}':>19}")
    direct, floor, pooled = caller["direct"], caller["floor"], caller["pooled"]
    audio_gap = pooled["first_audio_p50_ms"] - direct["first_audio_p50_ms"]
    lines.append(f"pooled vs direct: connect -> session.created p50 {pooled['setup_p50_ms'] - direct['setup_p50_ms']:+.1f} ms, "
                 f"first audio p50 {audio_gap:+.2f} ms")
    lines.append(f"first audio p50, what a relay's hops cost (floor vs direct) {floor['first_audio_p50_ms'] - direct['first_audio_p50_ms']:+.2f} ms, "
                 f"the gateway's own share (pooled vs floor) {pooled['first_audio_p50_ms'] - floor['first_audio_p50_ms']:+.2f} ms")
    return "\n".join(lines)
