"""The call directory: which gateway process owns a WebRTC call, kept in the shared key-value store.

An entry names the owner's forwarding address and the key id that placed the call. It is written when the call is
answered, renewed while it lives and deleted at its end; an owner that dies stops renewing, so its entries expire.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from bifrost_rt.state.kv import KVStore

_PREFIX = "bifrost_rt:call:"


@dataclass(frozen=True)
class CallOwner:
    address: str  # http://host:port of the owning process's forwarding listener
    key_id: str


class CallDirectory:
    def __init__(self, kv: KVStore, ttl_s: float) -> None:
        self._kv = kv
        self.ttl_s = ttl_s

    async def register(self, call_id: str, owner: CallOwner) -> None:
        """Writes (or renews) the entry; it lapses `ttl_s` after the last write."""
        value = orjson.dumps({"address": owner.address, "key_id": owner.key_id}).decode()
        await self._kv.set(_PREFIX + call_id, value, self.ttl_s)

    async def lookup(self, call_id: str) -> CallOwner | None:
        value = await self._kv.get(_PREFIX + call_id)
        if value is None:
            return None
        try:
            entry = orjson.loads(value)
            return CallOwner(str(entry["address"]), str(entry["key_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    async def remove(self, call_id: str) -> None:
        await self._kv.delete(_PREFIX + call_id)
