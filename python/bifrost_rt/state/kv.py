"""Key-value state shared by policy code and the call directory: token revocations, fixed-window counters,
session leases and call owners.

`MemoryKV` serves one process; `redis_kv.RedisKV` shares the same state between gateway processes (and loads the
Redis client only when configured). Counter values are
integers (money is counted in micro-dollars by its callers), which Redis adds exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol


class KVUnavailable(Exception):
    """The store could not be reached or refused the operation; callers fail open or closed by policy."""


class KVStore(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        """Store `value`; with `ttl_s`, the key disappears after that many seconds."""

    async def delete(self, key: str) -> None: ...

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

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

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
