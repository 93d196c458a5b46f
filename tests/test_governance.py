"""Governance over the in-memory store and a real Redis: budgets, per-minute rate limits, session caps with
expiring leases, limits shared by two OS processes, and the store going away."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as redis

from bifrost_rt.policy.governance import Budget, ChargeResult, Governance, KeyPolicy, RateLimits, TeamPolicy, period_bounds
from bifrost_rt.state.kv import KVStore, KVUnavailable, MemoryKV
from bifrost_rt.state.redis_kv import RedisKV

if TYPE_CHECKING:
    from redis_service import RedisServer

pytest_plugins = ["redis_service"]  # the redis_server fixture

KEY = "vk_0123456789abcdef"
OTHER = "vk_fedcba9876543210"
# A Wednesday, five seconds into a minute.
NOW = datetime(2025, 6, 11, 12, 0, 5, tzinfo=timezone.utc).timestamp()


def utc(*fields: int) -> float:
    return datetime(*fields, tzinfo=timezone.utc).timestamp()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    name: str
    kv: KVStore
    kv_clock: FakeClock | None  # MemoryKV's clock; Redis expires on its own server clock
    url: str | None = None


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock(1000.0)
        chosen = Backend("memory", MemoryKV(clock), clock)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        chosen = Backend("redis", RedisKV(server.url), None, server.url)
    yield chosen
    await chosen.kv.close()


async def eventually(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Await until `condition()` is true, polling, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def governance(backend: Backend, keys: dict[str, KeyPolicy], teams: dict[str, TeamPolicy] | None = None, **options):
    return Governance(backend.kv, keys, teams or {}, clock=options.pop("clock", FakeClock(NOW)), **options)


# ---- the store ----------------------------------------------------------------------------------------------


async def test_counter_keeps_the_expiry_it_was_created_with(backend: Backend) -> None:
    assert await backend.kv.incr("c", 5, ttl_s=10) == 5
    if backend.kv_clock is not None:
        backend.kv_clock.advance(6)
        assert await backend.kv.incr("c", 2, ttl_s=10) == 7
        backend.kv_clock.advance(5)  # 11 s after creation: gone, although incremented 5 s ago
        assert await backend.kv.get("c") is None
        assert await backend.kv.incr("c", 1, ttl_s=10) == 1
    else:
        assert backend.url is not None
        client = redis.Redis.from_url(backend.url)
        first = await client.pttl("c")
        assert 0 < first <= 10_000
        assert await backend.kv.incr("c", 2, ttl_s=60) == 7
        assert 0 < await client.pttl("c") <= first
        await client.aclose()


async def test_guarded_increment_changes_nothing_when_a_guard_is_reached(backend: Backend) -> None:
    kv = backend.kv
    await kv.incr("spend", 100, ttl_s=60)
    assert await kv.incr_guarded("turns", 1, 60, [("spend", 101), ("turns", 2)]) is None
    assert await kv.incr_guarded("turns", 1, 60, [("spend", 101), ("turns", 2)]) is None
    assert await kv.incr_guarded("turns", 1, 60, [("spend", 101), ("turns", 2)]) == "turns"
    assert await kv.incr_guarded("turns", 1, 60, [("spend", 100), ("turns", 5)]) == "spend"
    assert await kv.get("turns") == "2"
    assert await kv.incr_guarded("fresh", 1, 60, [("missing", 1)]) is None  # a missing counter is 0


async def test_leases(backend: Backend) -> None:
    kv = backend.kv
    assert await kv.acquire("set", "a", 2, 60)
    assert await kv.acquire("set", "b", 2, 60)
    assert not await kv.acquire("set", "c", 2, 60)
    assert await kv.acquire("set", "a", 2, 60)  # a holder acquiring again renews
    assert await kv.count("set") == 2
    await kv.release("set", "a")
    await kv.release("set", "a")
    assert await kv.count("set") == 1
    assert await kv.acquire("set", "c", 2, 60)
    await kv.renew("set", "d", 60)  # a lapsed lease is taken again: that session still runs
    assert await kv.count("set") == 3
    assert await kv.get("set:other") is None


async def test_memory_leases_expire_on_the_clock() -> None:
    clock = FakeClock(0.0)
    kv = MemoryKV(clock)
    assert await kv.acquire("set", "a", 1, 10)
    clock.advance(9)
    await kv.renew("set", "a", 10)
    clock.advance(9)
    assert not await kv.acquire("set", "b", 1, 10)
    clock.advance(2)
    assert await kv.count("set") == 0
    assert await kv.acquire("set", "b", 1, 10)


async def test_memory_kv_keeps_plain_values_with_expiry() -> None:
    clock = FakeClock(0.0)
    kv = MemoryKV(clock)
    await kv.set("revoked", "1", ttl_s=5)
    await kv.set("forever", "x")
    clock.advance(5)
    assert await kv.get("revoked") is None
    assert await kv.get("forever") == "x"


# ---- budgets ------------------------------------------------------------------------------------------------


async def test_key_budget_is_exhausted_exactly_by_the_charge_that_reaches_it(backend: Backend) -> None:
    gov = governance(backend, {KEY: KeyPolicy(budget=Budget(usd=1, period="day"))})
    results = [await gov.charge(KEY, 0.30, tokens=100) for _ in range(4)]
    assert [(r.exhausted, r.spent, r.budget) for r in results] == [
        (False, 0.3, 1.0),
        (False, 0.6, 1.0),
        (False, 0.9, 1.0),
        (True, 1.2, 1.0),
    ]
    refusal = await gov.pre_turn(KEY)
    assert refusal is not None
    assert (refusal.type, refusal.code) == ("insufficient_quota", "insufficient_quota")
    assert refusal.retry_after_s == utc(2025, 6, 12) - NOW
    assert KEY not in refusal.message and "2025-06-12T00:00:00Z" in refusal.message
    refusal = await gov.admit(KEY, "sess_1")
    assert refusal is not None and refusal.code == "insufficient_quota"


async def test_tenths_add_up_exactly(backend: Backend) -> None:
    gov = governance(backend, {KEY: KeyPolicy(budget=Budget(usd=1, period="day"))})
    results = [await gov.charge(KEY, 0.10, tokens=0) for _ in range(10)]
    assert [r.exhausted for r in results] == [False] * 9 + [True]
    assert results[-1].spent == 1.0


async def test_team_budget_is_shared_by_its_keys(backend: Backend) -> None:
    keys = {
        KEY: KeyPolicy(budget=Budget(usd=5, period="month"), team="support"),
        OTHER: KeyPolicy(team="support"),
        "vk_outside": KeyPolicy(budget=Budget(usd=5, period="month")),
    }
    gov = governance(backend, keys, {"support": TeamPolicy(budget=Budget(usd=1, period="day"))})
    first = await gov.charge(KEY, 0.6, tokens=0)
    assert (first.exhausted, first.spent, first.budget) == (False, 0.6, 1.0)  # the team is closer to its limit
    second = await gov.charge(OTHER, 0.4, tokens=0)
    assert (second.exhausted, second.spent, second.budget) == (True, 1.0, 1.0)
    for key_id in (KEY, OTHER):
        refusal = await gov.pre_turn(key_id)
        assert refusal is not None and refusal.code == "insufficient_quota"
        assert refusal.message.startswith("The team's budget of $1.00 per day")
        refusal = await gov.admit(key_id, f"sess_{key_id}")
        assert refusal is not None and refusal.code == "insufficient_quota"
    assert await gov.pre_turn("vk_outside") is None
    report = await gov.spent(KEY)
    assert [(b["scope"], b["period_id"], b["spent_usd"]) for b in report["budgets"]] == [
        ("key", "2025-06", 0.6),
        ("team", "2025-06-11", 1.0),
    ]


async def test_budget_resets_when_its_calendar_period_starts(backend: Backend) -> None:
    clock = FakeClock(utc(2025, 3, 31, 23, 59, 30))  # a Monday, the last day of March
    keys = {
        "vk_day": KeyPolicy(budget=Budget(usd=1, period="day")),
        "vk_week": KeyPolicy(budget=Budget(usd=1, period="week")),
        "vk_month": KeyPolicy(budget=Budget(usd=1, period="month")),
    }
    gov = governance(backend, keys, clock=clock)
    for key_id in keys:
        assert (await gov.charge(key_id, 1.0, tokens=0)).exhausted
        assert await gov.pre_turn(key_id) is not None
    clock.advance(60)  # Tuesday 1 April, 00:00:30
    assert await gov.pre_turn("vk_day") is None
    assert await gov.pre_turn("vk_month") is None
    assert await gov.pre_turn("vk_week") is not None  # the ISO week runs until Monday 7 April
    clock.now = utc(2025, 4, 7, 0, 0, 1)
    assert await gov.pre_turn("vk_week") is None
    assert (await gov.spent("vk_month"))["budgets"][0]["spent_usd"] == 0.0


def test_period_bounds() -> None:
    assert period_bounds("day", utc(2025, 6, 11, 23, 59, 59)) == ("2025-06-11", utc(2025, 6, 12))
    assert period_bounds("week", utc(2025, 6, 15, 12)) == ("2025-W24", utc(2025, 6, 16))  # Sunday
    assert period_bounds("week", utc(2024, 12, 31)) == ("2025-W01", utc(2025, 1, 6))  # ISO year differs
    assert period_bounds("month", utc(2025, 12, 31, 23)) == ("2025-12", utc(2026, 1, 1))
    assert period_bounds("month", utc(2024, 2, 29)) == ("2024-02", utc(2024, 3, 1))


def test_a_key_in_an_unknown_team_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown team 'ghost'"):
        Governance(MemoryKV(), {KEY: KeyPolicy(team="ghost")}, {})


async def test_keys_without_policy_are_not_limited_and_touch_no_store(backend: Backend) -> None:
    gov = governance(backend, {})
    assert await gov.admit(KEY, "sess_1") is None
    assert await gov.pre_turn(KEY) is None
    assert await gov.charge(KEY, 3.0, tokens=10) == ChargeResult(False, None, None)
    assert await backend.kv.get(f"gov:minute:{KEY}:turns:{int(NOW // 60)}") is None


# ---- rate limits --------------------------------------------------------------------------------------------


async def test_turns_per_minute_in_fixed_windows(backend: Backend) -> None:
    clock = FakeClock(NOW)
    gov = governance(backend, {KEY: KeyPolicy(rate_limits=RateLimits(turns_per_minute=3))}, clock=clock)
    assert [await gov.pre_turn(KEY) for _ in range(3)] == [None, None, None]
    for _ in range(2):
        refusal = await gov.pre_turn(KEY)
        assert refusal is not None
        assert (refusal.type, refusal.code, refusal.retry_after_s) == ("rate_limit_exceeded", "turns_per_minute", 55.0)
    assert (await gov.spent(KEY))["minute"]["turns"] == 3  # refused turns are not counted
    clock.advance(55)  # the next minute
    assert await gov.pre_turn(KEY) is None
    assert (await gov.spent(KEY))["minute"]["turns"] == 1


async def test_tokens_per_minute_refuses_once_reached(backend: Backend) -> None:
    clock = FakeClock(NOW)
    limits = RateLimits(turns_per_minute=100, tokens_per_minute=1000)
    gov = governance(backend, {KEY: KeyPolicy(rate_limits=limits)}, clock=clock)
    assert await gov.pre_turn(KEY) is None
    await gov.charge(KEY, 0.01, tokens=600)
    assert await gov.pre_turn(KEY) is None
    await gov.charge(KEY, 0.01, tokens=400)
    refusal = await gov.pre_turn(KEY)
    assert refusal is not None and (refusal.type, refusal.code) == ("rate_limit_exceeded", "tokens_per_minute")
    assert (await gov.spent(KEY))["minute"] == {"turns": 2, "tokens": 1000, "turns_per_minute": 100, "tokens_per_minute": 1000}
    clock.advance(60)
    assert await gov.pre_turn(KEY) is None


async def test_budget_is_checked_before_rate_limits(backend: Backend) -> None:
    policy = KeyPolicy(budget=Budget(usd=0.5, period="day"), rate_limits=RateLimits(turns_per_minute=1))
    gov = governance(backend, {KEY: policy})
    assert await gov.pre_turn(KEY) is None
    await gov.charge(KEY, 0.5, tokens=0)
    refusal = await gov.pre_turn(KEY)
    assert refusal is not None and refusal.code == "insufficient_quota"


# ---- session caps -------------------------------------------------------------------------------------------


async def test_session_cap_and_release(backend: Backend) -> None:
    gov = governance(backend, {KEY: KeyPolicy(max_sessions=2)})
    assert await gov.admit(KEY, "s1") is None
    assert await gov.admit(KEY, "s2") is None
    refusal = await gov.admit(KEY, "s3")
    assert refusal is not None
    assert (refusal.type, refusal.code) == ("rate_limit_exceeded", "session_limit_reached")
    assert refusal.message == "This key's limit of 2 concurrent session(s) is reached."
    await gov.release(KEY, "s1")
    await gov.release(KEY, "s1")  # twice is harmless
    assert await gov.admit(KEY, "s3") is None
    assert (await gov.spent(KEY))["sessions"] == [{"scope": "key", "open": 2, "max": 2}]


async def test_team_session_cap_spans_keys_and_a_refused_session_keeps_no_key_slot(backend: Backend) -> None:
    keys = {KEY: KeyPolicy(max_sessions=5, team="support"), OTHER: KeyPolicy(team="support")}
    gov = governance(backend, keys, {"support": TeamPolicy(max_sessions=2)})
    assert await gov.admit(KEY, "s1") is None
    assert await gov.admit(OTHER, "s2") is None
    refusal = await gov.admit(KEY, "s3")
    assert refusal is not None and refusal.code == "session_limit_reached"
    assert refusal.message.startswith("The team's limit of 2")
    assert (await gov.spent(KEY))["sessions"] == [
        {"scope": "key", "open": 1, "max": 5},
        {"scope": "team", "open": 2, "max": 2},
    ]
    await gov.release(OTHER, "s2")
    assert await gov.admit(KEY, "s3") is None


async def test_memory_session_slot_of_a_vanished_session_lapses_with_its_lease() -> None:
    kv_clock = FakeClock(0.0)
    gov = Governance(MemoryKV(kv_clock), {KEY: KeyPolicy(max_sessions=2)}, {}, lease_s=60, clock=FakeClock(NOW))
    assert await gov.admit(KEY, "s1") is None
    assert await gov.admit(KEY, "s2") is None  # never renewed nor released: its process died
    kv_clock.advance(40)
    await gov.renew(KEY, "s1")
    kv_clock.advance(30)
    assert await gov.admit(KEY, "s3") is None
    assert await gov.admit(KEY, "s4") is not None


async def test_redis_session_slot_of_a_vanished_session_lapses_with_its_lease(redis_server: RedisServer) -> None:
    kv = RedisKV(redis_server.url)
    gov = Governance(kv, {KEY: KeyPolicy(max_sessions=2)}, {}, lease_s=1.0, clock=FakeClock(NOW))
    assert await gov.admit(KEY, "s1") is None
    assert await gov.admit(KEY, "s2") is None  # never renewed nor released: its process died

    async def keep_renewing() -> None:
        while True:
            await gov.renew(KEY, "s1")
            await asyncio.sleep(0.1)  # the renewal cadence (lease / 10), not a synchronisation

    renewer = asyncio.create_task(keep_renewing())
    try:
        assert await gov.admit(KEY, "s3") is not None
        await eventually(lambda: _admitted(gov, "s3"))
        assert await gov.admit(KEY, "s4") is not None  # s1 kept its slot
    finally:
        renewer.cancel()
        await kv.close()


async def _admitted(gov: Governance, session_id: str) -> bool:
    return await gov.admit(KEY, session_id) is None


# ---- two processes, one Redis -------------------------------------------------------------------------------

_WORKER = """
import asyncio, json, sys
from bifrost_rt.policy.governance import Budget, ChargeResult, Governance, KeyPolicy
from bifrost_rt.state.redis_kv import RedisKV

async def main(url, name):
    kv = RedisKV(url)
    policy = KeyPolicy(budget=Budget(usd=1, period="day"), max_sessions=3)
    gov = Governance(kv, {"vk_shared": policy}, {}, lease_s=2.0)
    await kv.count("warm-up")  # connected before the parent says go
    print("ready", flush=True)
    sys.stdin.readline()
    refusals = await asyncio.gather(*(gov.admit("vk_shared", f"{name}-{i}") for i in range(3)))
    print(json.dumps([r is None for r in refusals]), flush=True)
    sys.stdin.readline()
    charges = await asyncio.gather(*(gov.charge("vk_shared", 0.30, 100) for _ in range(2)))
    print(json.dumps([[c.exhausted, c.spent] for c in charges]), flush=True)
    await kv.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def _step(workers: list[asyncio.subprocess.Process], command: str | None) -> list[str]:
    """Send `command` to every worker at once, then read one line from each."""
    if command is not None:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(command.encode() + b"\n")
    lines = []
    for worker in workers:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), 30)
        assert line, f"worker exited with {await worker.wait()}"
        lines.append(line.decode().strip())
    return lines


@pytest.mark.slow
async def test_two_processes_share_one_session_cap_and_one_budget(redis_server: RedisServer) -> None:
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, redis_server.url, name, stdin=PIPE, stdout=PIPE
        )
        for name in ("a", "b")
    ]
    try:
        assert await _step(workers, None) == ["ready", "ready"]
        admitted = [json.loads(line) for line in await _step(workers, "admit")]
        assert sum(sum(flags) for flags in admitted) == 3  # of 6 attempts
        charges = [charge for line in await _step(workers, "charge") for charge in json.loads(line)]
        assert sorted(charges, key=lambda c: c[1]) == [[False, 0.3], [False, 0.6], [False, 0.9], [True, 1.2]]
        assert [await asyncio.wait_for(worker.wait(), 30) for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()

    kv = RedisKV(redis_server.url)
    try:
        gov = Governance(kv, {"vk_shared": KeyPolicy(budget=Budget(usd=1, period="day"), max_sessions=3)}, {})
        refusal = await gov.pre_turn("vk_shared")
        assert refusal is not None and refusal.code == "insufficient_quota"
        # The workers exited without releasing: their three slots lapse with their leases.
        assert await kv.count("gov:sessions:key:vk_shared") == 3
        await eventually(lambda: _count_is(kv, "gov:sessions:key:vk_shared", 0))
    finally:
        await kv.close()


async def _count_is(kv: KVStore, key: str, expected: int) -> bool:
    return await kv.count(key) == expected


# ---- the store goes away ------------------------------------------------------------------------------------


async def test_store_down_fails_open_or_closed_and_recovers(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    kv = RedisKV(redis_server.url, timeout_s=0.5)
    policy = KeyPolicy(budget=Budget(usd=10, period="day"), rate_limits=RateLimits(turns_per_minute=10), max_sessions=5)
    open_gov = Governance(kv, {KEY: policy}, {}, fail_open=True, clock=FakeClock(NOW))
    closed_gov = Governance(kv, {KEY: policy}, {}, fail_open=False, clock=FakeClock(NOW))
    assert await closed_gov.admit(KEY, "s1") is None
    assert (await open_gov.charge(KEY, 0.25, tokens=0)).spent == 0.25

    redis_server.stop()
    caplog.set_level(logging.WARNING, logger="bifrost_rt.governance")
    assert await open_gov.admit(KEY, "s2") is None
    assert await open_gov.pre_turn(KEY) is None
    for refusal in (await closed_gov.admit(KEY, "s3"), await closed_gov.pre_turn(KEY)):
        assert refusal is not None
        assert (refusal.type, refusal.code) == ("server_error", "governance_unavailable")
    assert (await open_gov.charge(KEY, 0.25, tokens=0)).spent is None  # kept, sent with the next charge
    await open_gov.renew(KEY, "s2")
    await closed_gov.renew(KEY, "s1")
    with pytest.raises(KVUnavailable):
        await open_gov.spent(KEY)
    assert open_gov.kv_failures == 4 and closed_gov.kv_failures == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "bifrost_rt.governance"]
    assert len(warnings) == 2  # one per instance, however many failures
    assert "failing open" in warnings[0] and "failing closed" in warnings[1]

    redis_server.start()  # back, and empty
    assert (await open_gov.charge(KEY, 0.25, tokens=0)).spent == 0.5  # the missed charge landed too
    await open_gov.renew(KEY, "s2")  # admitted while the store was down: its slot is taken now
    await closed_gov.renew(KEY, "s1")
    assert await kv.count(f"gov:sessions:key:{KEY}") == 2
    await kv.close()
