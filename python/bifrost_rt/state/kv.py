"""Key-value state shared by policy code: token revocations, fixed-window counters and session leases.

`MemoryKV` serves one process. `RedisKV` shares the same state between gateway processes; every operation
that reads and then writes runs as one Lua script, so concurrent processes never race. Counter values are
integers (money is counted in micro-dollars by its callers), which Redis adds exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError


class KVUnavailable(Exception):
    """The store could not be reached or refused the operation; callers fail open or closed by policy."""


class KVStore(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        """Store `value`; with `ttl_s`, the key disappears after that many seconds."""

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        """Add `amount` to an integer counter and return the new value. A missing counter starts at 0 and
        expires `ttl_s` after its creation; later increments do not extend it (fixed windows)."""

    async def incr_guarded(self, key: str, amount: int, ttl_s: float, guards: Sequence[tuple[str, int]]) -> str | None:
        """Atomically: if some guard `(counter, limit)` has reached its limit (a missing counter is 0), return
        that counter's key and change nothing; otherwise `incr(key, amount, ttl_s)` and return None."""

    async def acquire(self, key: str, member: str, limit: int, lease_s: float) -> bool:
        """Atomically: drop expired leases of the set `key`; refuse (False) if `member` holds none and `limit`
        leases are held; else lease `member` until now + `lease_s` (re-acquiring renews) and return True."""

    async def renew(self, key: str, member: str, lease_s: float) -> None:
        """Extend `member`'s lease to now + `lease_s`, taking it again if it lapsed (the session still runs)."""

    async def release(self, key: str, member: str) -> None: ...

    async def count(self, key: str) -> int:
        """Leases of `key` that have not expired."""

    async def close(self) -> None: ...


class MemoryKV:
    """Dicts with expiries. Expired values are dropped when read and swept as the store grows; expired leases
    are dropped whenever their set is touched."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[str, float | None]] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._sweep_at = 1024

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._put(key, value, self._clock() + ttl_s if ttl_s is not None else None)

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        current = self._live(key)
        expires_at = self._values[key][1] if current is not None else self._clock() + ttl_s
        value = int(current or 0) + amount
        self._put(key, str(value), expires_at)
        return value

    async def incr_guarded(self, key: str, amount: int, ttl_s: float, guards: Sequence[tuple[str, int]]) -> str | None:
        for counter, limit in guards:
            if int(self._live(counter) or 0) >= limit:
                return counter
        await self.incr(key, amount, ttl_s)
        return None

    async def acquire(self, key: str, member: str, limit: int, lease_s: float) -> bool:
        leases = self._live_leases(key)
        if member not in leases and len(leases) >= limit:
            return False
        leases[member] = self._clock() + lease_s
        return True

    async def renew(self, key: str, member: str, lease_s: float) -> None:
        self._live_leases(key)[member] = self._clock() + lease_s

    async def release(self, key: str, member: str) -> None:
        leases = self._leases.get(key)
        if leases is not None:
            leases.pop(member, None)
            if not leases:
                del self._leases[key]

    async def count(self, key: str) -> int:
        now = self._clock()
        return sum(expires_at > now for expires_at in self._leases.get(key, {}).values())

    async def close(self) -> None:
        self._values.clear()
        self._leases.clear()

    def _live(self, key: str) -> str | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= self._clock():
            del self._values[key]
            return None
        return value

    def _live_leases(self, key: str) -> dict[str, float]:
        """The set's unexpired leases, stored back, so callers may add to it."""
        now = self._clock()
        leases = {member: expires_at for member, expires_at in self._leases.get(key, {}).items() if expires_at > now}
        self._leases[key] = leases
        return leases

    def _put(self, key: str, value: str, expires_at: float | None) -> None:
        self._values[key] = (value, expires_at)
        if len(self._values) >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expires_at) in self._values.items() if expires_at is not None and expires_at <= now]:
            del self._values[key]
        self._sweep_at = max(1024, 2 * len(self._values))


# Lease sets are sorted sets scored by expiry in milliseconds of the Redis server's clock, so processes with
# skewed clocks agree on what has expired. A set's own TTL follows its newest lease, so it vanishes when idle.
_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

_LEASE = """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
"""

# KEYS[1] set; ARGV member, lease ms, limit
_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
"""
    + _LEASE
    + "return 1"
)

# KEYS[1] set; ARGV member, lease ms
_RENEW = _NOW_MS + _LEASE

# KEYS[1] set
_COUNT = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"

# KEYS[1] counter; ARGV amount, ttl ms. SET NX gives a new counter its expiry; INCRBY keeps an existing one's.
_INCR = """
redis.call('SET', KEYS[1], 0, 'PX', ARGV[2], 'NX')
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""

# KEYS[1] counter, KEYS[2..] guarded counters; ARGV amount, ttl ms, then one limit per guard.
# Returns the 0-based index of the first guard at its limit, or -1 once the counter was incremented.
_INCR_GUARDED = """
for i = 2, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[i + 1]) then return i - 2 end
end
redis.call('SET', KEYS[1], 0, 'PX', ARGV[2], 'NX')
redis.call('INCRBY', KEYS[1], ARGV[1])
return -1
"""


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except RedisError as error:
        raise KVUnavailable(str(error)) from error


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisKV:
    """The KV interface on one Redis server (or a primary behind Sentinel/a proxy; not Redis Cluster, since
    the scripts touch several keys). Every Redis error is raised as `KVUnavailable`."""

    def __init__(self, url: str, *, timeout_s: float = 0.5) -> None:
        # One immediate retry on a connection error replaces a pooled connection the server dropped (restart,
        # idle timeout); timeouts are not retried, so an unresponsive server costs at most `timeout_s`.
        self._redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._count = self._redis.register_script(_COUNT)
        self._incr = self._redis.register_script(_INCR)
        self._incr_guarded = self._redis.register_script(_INCR_GUARDED)

    async def get(self, key: str) -> str | None:
        with _unavailable():
            return await self._redis.get(key)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        with _unavailable():
            await self._redis.set(key, value, px=_ms(ttl_s) if ttl_s is not None else None)

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        with _unavailable():
            return int(await self._incr(keys=[key], args=[amount, _ms(ttl_s)]))

    async def incr_guarded(self, key: str, amount: int, ttl_s: float, guards: Sequence[tuple[str, int]]) -> str | None:
        keys = [key, *(counter for counter, _ in guards)]
        with _unavailable():
            blocked = int(await self._incr_guarded(keys=keys, args=[amount, _ms(ttl_s), *(limit for _, limit in guards)]))
        return guards[blocked][0] if blocked >= 0 else None

    async def acquire(self, key: str, member: str, limit: int, lease_s: float) -> bool:
        with _unavailable():
            return bool(await self._acquire(keys=[key], args=[member, _ms(lease_s), limit]))

    async def renew(self, key: str, member: str, lease_s: float) -> None:
        with _unavailable():
            await self._renew(keys=[key], args=[member, _ms(lease_s)])

    async def release(self, key: str, member: str) -> None:
        with _unavailable():
            await self._redis.zrem(key, member)

    async def count(self, key: str) -> int:
        with _unavailable():
            return int(await self._count(keys=[key]))

    async def close(self) -> None:
        await self._redis.aclose()
