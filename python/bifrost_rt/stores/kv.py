"""Key-value state shared by policy code: token revocations today; counters and budgets build on the same interface.

The in-memory store serves one process. Several gateway processes share state through a networked store
implementing the same interface.
"""

from __future__ import annotations

import time
from typing import Protocol


class KVStore(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        """Store `value`; with `ttl_s`, the key disappears after that many seconds."""

    async def close(self) -> None: ...


class MemoryKV:
    """A dict with expiries; expired keys are dropped when read and swept as the store grows."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, float | None]] = {}
        self._sweep_at = 1024

    async def get(self, key: str) -> str | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= time.monotonic():
            del self._values[key]
            return None
        return value

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._values[key] = (value, time.monotonic() + ttl_s if ttl_s is not None else None)
        if len(self._values) >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires_at) in self._values.items() if expires_at is not None and expires_at <= now]:
            del self._values[key]
        self._sweep_at = max(1024, 2 * len(self._values))

    async def close(self) -> None:
        self._values.clear()
