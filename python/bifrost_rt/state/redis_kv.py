"""`RedisKV`: the key-value state shared between gateway processes through Redis.

Every operation that reads and then writes runs as one Lua script, so concurrent processes never race. Counter
values are integers (money is counted in micro-dollars by its callers), which Redis adds exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bifrost_rt.state.kv import KVUnavailable

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

    async def delete(self, key: str) -> None:
        with _unavailable():
            await self._redis.delete(key)

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
