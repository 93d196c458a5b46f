"""Budgets, rate limits and concurrent-session caps per virtual key and per team, kept in the KV store.

Three decision points: `admit` before a session's upstream connection opens (budget left, session slot),
`pre_turn` before a client-requested response (budget left, turns and tokens in the current minute), and
`charge` after each turn (its cost and tokens). Sessions hold expiring leases that the caller renews, so the
slots of a crashed process free themselves.

Money is counted in integer micro-dollars. Integer increments are exact in Redis and in memory, so a $1 budget
charged $0.10 ten times is exhausted exactly at the tenth charge; float sums would stop at $0.9999999999999999
and need an epsilon that every comparison must agree on. Rounding each charge to the nearest micro-dollar moves
a realtime turn's cost (typically $0.001 or more) by at most 0.05 %.

Budgets run over calendar periods in UTC (day; ISO week from Monday; month) and reset at the period's start;
rate limits use fixed one-minute windows keyed by the epoch minute. When the store cannot be reached,
`fail_open` decides: admit and pre_turn allow, or refuse with `governance_unavailable`. Charges the store missed
are retried with the process's next charge until their period ends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from bifrost_rt.config import Budget, KeyPolicy, RateLimits, TeamPolicy
from bifrost_rt.policy.hooks import Decision, Plugin, TurnRequest
from bifrost_rt.state.kv import KVStore, KVUnavailable

logger = logging.getLogger("bifrost_rt.governance")

MICROS_PER_USD = 1_000_000
_MINUTE_TTL_S = 120.0  # a minute window outlives its minute, so a charge landing just after it still counts
_PERIOD_MARGIN_S = 3600.0  # spend counters outlive their period by this much: clock skew between processes
_WARN_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a session or turn is refused, in OpenAI's error vocabulary. The message names no key or secret."""

    type: str
    code: str
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """After a charge: whether the key's or its team's budget is now used up. `spent` and `budget` (USD)
    describe whichever of the two is closer to its limit; both are None when no budget applies or the store
    could not be reached."""

    exhausted: bool
    spent: float | None
    budget: float | None


@dataclass(frozen=True, slots=True)
class _BudgetSpec:
    counter_prefix: str
    budget: Budget
    scope: Literal["key", "team"]


@dataclass(frozen=True, slots=True)
class _Spend:
    """One budget in the period containing "now"."""

    counter: str
    limit: int  # micro-dollars
    spec: _BudgetSpec
    resets_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class _SessionCap:
    lease_set: str
    limit: int
    scope: Literal["key", "team"]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A key's limits resolved once: counter names, its team's budget and cap."""

    budgets: tuple[_BudgetSpec, ...]
    caps: tuple[_SessionCap, ...]
    minute_prefix: str
    turns_per_minute: int | None
    tokens_per_minute: int | None


def period_bounds(period: str, now: float) -> tuple[str, float]:
    """The calendar period (UTC) containing `now`: its id (2025-06-01, 2025-W23, 2025-06) and its end."""
    day = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day.strftime("%Y-%m-%d"), (day + timedelta(days=1)).timestamp()
    if period == "week":
        monday = day - timedelta(days=day.weekday())
        year, week, _ = monday.isocalendar()
        return f"{year}-W{week:02d}", (monday + timedelta(weeks=1)).timestamp()
    first = day.replace(day=1)
    following = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    return first.strftime("%Y-%m"), following.timestamp()


@functools.lru_cache(maxsize=16)
def _period_of_minute(period: str, minute: int) -> tuple[str, float]:
    # Periods start on a minute boundary, so the epoch minute identifies the period; pre_turn mostly hits this.
    return period_bounds(period, minute * 60)


class Governance:
    def __init__(
        self,
        kv: KVStore,
        keys: Mapping[str, KeyPolicy],
        teams: Mapping[str, TeamPolicy],
        *,
        fail_open: bool = False,
        lease_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`keys` maps key ids to policies; keys not listed are not limited. `lease_s`: a session's slot is
        freed this long after its last renewal. `clock`: unix seconds, for periods and minute windows."""
        self._kv = kv
        self._fail_open = fail_open
        self._lease_s = lease_s
        self._clock = clock
        self._plans = {key_id: self._plan(key_id, policy, teams) for key_id, policy in keys.items()}
        self._held: set[str] = set()  # sessions admitted here and not yet released
        self._pending: dict[str, tuple[int, float]] = {}  # counter → (amount, expires_at) the store missed
        self.kv_failures = 0  # store operations that failed, since start
        self._unreported = 0
        self._warned_at = -math.inf

    @staticmethod
    def _plan(key_id: str, policy: KeyPolicy, teams: Mapping[str, TeamPolicy]) -> _Plan:
        budgets: list[_BudgetSpec] = []
        caps: list[_SessionCap] = []
        if policy.budget is not None:
            budgets.append(_BudgetSpec(f"gov:spend:key:{key_id}:", policy.budget, "key"))
        if policy.max_sessions is not None:
            caps.append(_SessionCap(f"gov:sessions:key:{key_id}", policy.max_sessions, "key"))
        if policy.team is not None:
            team = teams.get(policy.team)
            if team is None:
                raise ValueError(f"key {key_id}: unknown team {policy.team!r}")
            if team.budget is not None:
                budgets.append(_BudgetSpec(f"gov:spend:team:{policy.team}:", team.budget, "team"))
            if team.max_sessions is not None:
                caps.append(_SessionCap(f"gov:sessions:team:{policy.team}", team.max_sessions, "team"))
        limits = policy.rate_limits or RateLimits()
        return _Plan(tuple(budgets), tuple(caps), f"gov:minute:{key_id}:", limits.turns_per_minute, limits.tokens_per_minute)

    async def admit(self, key_id: str, session_id: str) -> Refusal | None:
        """Before the upstream connection: refuse if a budget is used up or a session cap is reached; otherwise
        the session holds its slots until `release` (or until `lease_s` passes without `renew`)."""
        plan = self._plans.get(key_id)
        if plan is None or not (plan.budgets or plan.caps):
            return None
        now = self._clock()
        acquired: list[str] = []
        try:
            refusal = await self._exhausted_budget(plan, now)
            if refusal is not None:
                return refusal
            for cap in plan.caps:
                if not await self._kv.acquire(cap.lease_set, session_id, cap.limit, self._lease_s):
                    await self._release_quietly(acquired, session_id)
                    return Refusal(
                        "rate_limit_exceeded",
                        "session_limit_reached",
                        f"{_whose(cap.scope)} limit of {cap.limit} concurrent session(s) is reached.",
                    )
                acquired.append(cap.lease_set)
        except KVUnavailable as error:
            refusal = self._store_failed(error)
            if refusal is not None:
                await self._release_quietly(acquired, session_id)
                return refusal
        if plan.caps:
            # Also after a failure when failing open: `renew` takes the slots once the store answers again.
            self._held.add(session_id)
        return None

    async def check_budget(self, key_id: str) -> Refusal | None:
        """Refuse if a budget of the key or its team is used up (e.g. before minting a client secret)."""
        plan = self._plans.get(key_id)
        if plan is None or not plan.budgets:
            return None
        try:
            return await self._exhausted_budget(plan, self._clock())
        except KVUnavailable as error:
            return self._store_failed(error)

    async def _exhausted_budget(self, plan: _Plan, now: float) -> Refusal | None:
        spends = self._spends(plan, now)
        values = await asyncio.gather(*(self._kv.get(spend.counter) for spend in spends))
        for spend, value in zip(spends, values, strict=True):
            if int(value or 0) >= spend.limit:
                return _quota_refusal(spend, now)
        return None

    @property
    def limits_turns(self) -> bool:
        """Whether any key has a budget or a rate limit, so turns need checking at all."""
        return any(plan.budgets or plan.turns_per_minute or plan.tokens_per_minute for plan in self._plans.values())

    def limits(self, key_id: str) -> bool:
        return key_id in self._plans

    async def renew(self, key_id: str, session_id: str) -> None:
        """Extend the session's slots by `lease_s`; call it every `lease_s / 3` or so while the session runs."""
        plan = self._plans.get(key_id)
        if plan is None or session_id not in self._held:
            return
        await self._each(self._kv.renew(cap.lease_set, session_id, self._lease_s) for cap in plan.caps)

    async def release(self, key_id: str, session_id: str) -> None:
        """Free the session's slots. Safe to call more than once; stop the renew loop first."""
        plan = self._plans.get(key_id)
        if plan is None or session_id not in self._held:
            return
        self._held.discard(session_id)
        await self._each(self._kv.release(cap.lease_set, session_id) for cap in plan.caps)

    async def pre_turn(self, key_id: str) -> Refusal | None:
        """Before a client-requested response: one store round trip that checks every budget and the minute's
        turns and tokens, and counts the turn only when it is allowed."""
        plan = self._plans.get(key_id)
        if plan is None or not plan.budgets and plan.turns_per_minute is None and plan.tokens_per_minute is None:
            return None
        now = self._clock()
        minute = int(now // 60)
        turns, tokens = f"{plan.minute_prefix}turns:{minute}", f"{plan.minute_prefix}tokens:{minute}"
        spends = self._spends(plan, now)
        guards = [(spend.counter, spend.limit) for spend in spends]
        if plan.turns_per_minute is not None:
            guards.append((turns, plan.turns_per_minute))
        if plan.tokens_per_minute is not None:
            guards.append((tokens, plan.tokens_per_minute))
        try:
            blocked = await self._kv.incr_guarded(turns, 1, _MINUTE_TTL_S, guards)
        except KVUnavailable as error:
            return self._store_failed(error)
        if blocked is None:
            return None
        next_minute_s = (minute + 1) * 60 - now
        if blocked == turns:
            message = f"Rate limit reached: {plan.turns_per_minute} responses per minute for this key."
            return Refusal("rate_limit_exceeded", "turns_per_minute", message, next_minute_s)
        if blocked == tokens:
            message = f"Rate limit reached: {plan.tokens_per_minute} tokens per minute for this key."
            return Refusal("rate_limit_exceeded", "tokens_per_minute", message, next_minute_s)
        return _quota_refusal(next(spend for spend in spends if spend.counter == blocked), now)

    async def charge(self, key_id: str, cost_usd: float, tokens: int) -> ChargeResult:
        """After a turn: add its cost to the key's and team's budgets and its tokens to the minute window."""
        if cost_usd < 0 or tokens < 0:
            raise ValueError("cost and tokens must not be negative")
        plan = self._plans.get(key_id)
        if plan is None:
            return ChargeResult(False, None, None)
        now = self._clock()
        micros = round(cost_usd * MICROS_PER_USD)
        spends = self._spends(plan, now)
        increments = {spend.counter: (micros, spend.resets_at + _PERIOD_MARGIN_S) for spend in spends}
        if plan.tokens_per_minute is not None and tokens:
            increments[f"{plan.minute_prefix}tokens:{int(now // 60)}"] = (tokens, now + _MINUTE_TTL_S)
        values = await self._add(increments, now)
        exhausted = False
        closest: tuple[float, int, int] | None = None  # (fraction used, spent, limit)
        for spend in spends:
            value = values.get(spend.counter)
            if value is None:
                continue
            exhausted = exhausted or value >= spend.limit
            if closest is None or value / spend.limit > closest[0]:
                closest = (value / spend.limit, value, spend.limit)
        if closest is None:
            return ChargeResult(exhausted, None, None)
        return ChargeResult(exhausted, closest[1] / MICROS_PER_USD, closest[2] / MICROS_PER_USD)

    async def spent(self, key_id: str) -> dict[str, Any]:
        """Usage against each limit of the key and its team, for reporting. Raises KVUnavailable."""
        plan = self._plans.get(key_id)
        report: dict[str, Any] = {"key_id": key_id, "budgets": [], "sessions": [], "minute": None}
        if plan is None:
            return report
        now = self._clock()
        spends = self._spends(plan, now)
        minute = int(now // 60)
        values, open_sessions, turns, tokens = await asyncio.gather(
            asyncio.gather(*(self._kv.get(spend.counter) for spend in spends)),
            asyncio.gather(*(self._kv.count(cap.lease_set) for cap in plan.caps)),
            self._kv.get(f"{plan.minute_prefix}turns:{minute}"),
            self._kv.get(f"{plan.minute_prefix}tokens:{minute}"),
        )
        for spend, value in zip(spends, values, strict=True):
            report["budgets"].append(
                {
                    "scope": spend.spec.scope,
                    "period": spend.spec.budget.period,
                    "period_id": spend.counter.rsplit(":", 1)[1],
                    "spent_usd": int(value or 0) / MICROS_PER_USD,
                    "budget_usd": spend.spec.budget.usd,
                    "resets_at": spend.resets_at,
                }
            )
        for cap, count in zip(plan.caps, open_sessions, strict=True):
            report["sessions"].append({"scope": cap.scope, "open": count, "max": cap.limit})
        if plan.turns_per_minute is not None or plan.tokens_per_minute is not None:
            report["minute"] = {
                "turns": int(turns or 0),
                "tokens": int(tokens or 0),
                "turns_per_minute": plan.turns_per_minute,
                "tokens_per_minute": plan.tokens_per_minute,
            }
        return report

    def _spends(self, plan: _Plan, now: float) -> list[_Spend]:
        spends = []
        for spec in plan.budgets:
            period_id, resets_at = _period_of_minute(spec.budget.period, int(now // 60))
            limit = max(1, round(spec.budget.usd * MICROS_PER_USD))
            spends.append(_Spend(spec.counter_prefix + period_id, limit, spec, resets_at))
        return spends

    async def _add(self, increments: dict[str, tuple[int, float]], now: float) -> dict[str, int]:
        """Apply `counter → (amount, expires_at)` increments, with any the store missed before, concurrently.
        Those that fail again are kept for the next charge until their counter would have expired."""
        for counter, (amount, expires_at) in list(self._pending.items()):
            del self._pending[counter]
            if expires_at > now:
                current, _ = increments.get(counter, (0, expires_at))
                increments[counter] = (current + amount, expires_at)
        counters = list(increments)
        results = await asyncio.gather(
            *(self._kv.incr(c, increments[c][0], increments[c][1] - now) for c in counters), return_exceptions=True
        )
        values: dict[str, int] = {}
        for counter, result in zip(counters, results, strict=True):
            if isinstance(result, KVUnavailable):
                self._pending[counter] = increments[counter]
                self._note_failure(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                values[counter] = result
        return values

    async def _each(self, operations: Iterable[Awaitable[None]]) -> None:
        """Run store operations concurrently; a failure is noted and otherwise ignored (leases lapse alone)."""
        for result in await asyncio.gather(*operations, return_exceptions=True):
            if isinstance(result, KVUnavailable):
                self._note_failure(result)
            elif isinstance(result, BaseException):
                raise result

    async def _release_quietly(self, lease_sets: list[str], session_id: str) -> None:
        await self._each(self._kv.release(lease_set, session_id) for lease_set in lease_sets)

    def _store_failed(self, error: KVUnavailable) -> Refusal | None:
        self._note_failure(error)
        if self._fail_open:
            return None
        return Refusal("server_error", "governance_unavailable", "Usage limits cannot be checked right now; try again shortly.")

    def _note_failure(self, error: KVUnavailable) -> None:
        self.kv_failures += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            logger.warning(
                "governance store unavailable (%d failure(s) since the last warning), failing %s: %s",
                self._unreported,
                "open" if self._fail_open else "closed",
                error,
            )
            self._warned_at = now
            self._unreported = 0


def _usd(value: float) -> str:
    cents = value * 100
    return f"${value:,.2f}" if abs(cents - round(cents)) < 1e-9 else f"${value:g}"


def _whose(scope: str) -> str:
    return "This key's" if scope == "key" else "The team's"


def _quota_refusal(spend: _Spend, now: float) -> Refusal:
    resets = datetime.fromtimestamp(spend.resets_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    budget = spend.spec.budget
    message = f"{_whose(spend.spec.scope)} budget of {_usd(budget.usd)} per {budget.period} is used up; it resets at {resets}."
    return Refusal("insufficient_quota", "insufficient_quota", message, spend.resets_at - now)


class GovernancePlugin(Plugin):
    """Governance's turn check, run first in the hook pipeline."""

    name = "governance"

    def __init__(self, governance: Governance) -> None:
        self._governance = governance

    async def pre_turn(self, request: TurnRequest) -> Decision | None:
        refusal = await self._governance.pre_turn(request.session.key_id)
        if refusal is None:
            return None
        return Decision.deny(refusal.message, code=refusal.code, type=refusal.type)
