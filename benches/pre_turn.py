"""Governance's pre_turn decision time: a real redis-server on loopback, and MemoryKV for reference.

    .venv/bin/python benches/pre_turn.py [--turns 20000]

One key with a key budget, a team budget and both per-minute rate limits, so every decision checks four
counters in one round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bifrost_rt.config import Budget, KeyPolicy, RateLimits, TeamPolicy
from bifrost_rt.policy.governance import Governance
from bifrost_rt.state.kv import KVStore, MemoryKV
from bifrost_rt.state.redis_kv import RedisKV

from redis_service import RedisServer  # noqa: E402

KEY = "vk_bench"
KEYS = {
    KEY: KeyPolicy(
        budget=Budget(usd=1e6, period="month"),
        team="bench",
        rate_limits=RateLimits(turns_per_minute=10**9, tokens_per_minute=10**9),
    )
}
TEAMS = {"bench": TeamPolicy(budget=Budget(usd=1e6, period="month"))}


async def measure(kv: KVStore, label: str, turns: int) -> None:
    governance = Governance(kv, KEYS, TEAMS)
    for _ in range(500):  # warm the connection pool and the scripts
        await governance.pre_turn(KEY)
    samples = []
    for _ in range(turns):
        started = time.perf_counter_ns()
        refusal = await governance.pre_turn(KEY)
        samples.append(time.perf_counter_ns() - started)
        assert refusal is None
    samples.sort()

    def quantile(q: float) -> float:
        return samples[int(q * (len(samples) - 1))] / 1000

    print(f"{label:<7} n={turns}  p50 {quantile(0.50):8.1f} µs  p90 {quantile(0.90):8.1f} µs  p99 {quantile(0.99):8.1f} µs")
    await kv.close()


async def main(turns: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory)).start()
        try:
            await measure(RedisKV(server.url), "redis", turns)
        finally:
            server.stop()
    await measure(MemoryKV(), "memory", turns)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.turns))
    except ImportError:
        asyncio.run(main(args.turns))
