"""Warm upstream sessions: provider sockets opened ahead of demand, already past `session.created`.

A caller whose upstream request matches a pool key gets one at once instead of paying TCP + TLS + the WebSocket
upgrade to the provider. The key is what makes two upstream sessions interchangeable before their first
`session.update`: the provider, the upstream URL (model and forwarded query) and every upstream header, the
credential among them, all as `Route.upstream_url` / `Route.upstream_headers` produce them, so a pooled session
opened with one credential can never reach a caller whose session would use another. Headers are kept only as a
SHA-256 in the key.

Each key's pool is kept by one task: it replaces sessions that closed, errored or reached `recycle_after_s`,
sizes the pool from the recent demand within `min_size`..`max_size`, and refills with at most
`refill_concurrency` connects in flight, `refill_delay_s` after a claim, backing off after failures. An idle
session is watched (a `recv` that is cancelled at checkout): a frame or a close from the provider while idle
takes it out of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from bifrost_rt.config import GatewayConfig, RealtimeConfig, WarmPoolConfig
from bifrost_rt.errors import new_id
from bifrost_rt.providers import ModelResolver, Route
from bifrost_rt.tasks import stop_task
from bifrost_rt.wire.websocket import UpstreamRefused, connect_upstream

logger = logging.getLogger("bifrost_rt.pool")

PoolKey = tuple[str, str, str]  # provider, upstream URL, SHA-256 of the upstream headers
Connect = Callable[[str, dict[str, str], RealtimeConfig, str], Awaitable[ClientConnection]]
_TICK_S = 1.0  # the longest a pool's task sleeps between looks at ages and demand


def pool_key(provider: str, url: str, headers: Mapping[str, str]) -> PoolKey:
    canonical = orjson.dumps(sorted((name.lower(), value) for name, value in headers.items()))
    return provider, url, hashlib.sha256(canonical).hexdigest()


@dataclass
class PoolStats:
    """Per provider; read by the metrics collector at scrape time."""

    hits: int = 0
    misses: int = 0
    recycled: int = 0  # closed by the pool: too old, over the target, or found closed or changed while idle
    failures: int = 0  # connects that failed or did not reach `session.created`


@dataclass
class Claimed:
    socket: ClientConnection
    session_created: str  # the pooled session's `session.created`, with a fresh event_id


@dataclass(eq=False)
class _Warm:
    socket: ClientConnection
    session_created: str
    opened_at: float
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class KeyPool:
    """The ready sessions of one pool key and the task that keeps them."""

    def __init__(
        self, key: PoolKey, url: str, headers: dict[str, str], config: WarmPoolConfig, limits: RealtimeConfig,
        stats: PoolStats, connect: Connect, *, learned: bool,
        current_headers: Callable[[], Awaitable[dict[str, str]]] | None = None,
        rotated: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.key, self.url, self._headers = key, url, headers
        self.config, self._limits, self._stats, self._connect = config, limits, stats, connect
        self.learned = learned  # opened for what a caller asked for (closed when no longer asked), not configured
        # A configured pool re-reads its headers before each connect: a credential that rotates (an Entra token)
        # makes a new key, so this pool retires and `rotated` opens the one for the new headers.
        self._current_headers, self._rotated = current_headers, rotated
        self.retired = False
        self._idle: deque[_Warm] = deque()
        self._connects: set[asyncio.Task[None]] = set()
        self._demand: deque[float] = deque()
        self.last_demand = time.monotonic()
        self._backoff_s = 0.0
        self._retry_at = 0.0  # after a failed connect: no new one before
        self._refill_at = 0.0  # after a claim: no refill before
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def provider(self) -> str:
        return self.key[0]

    def __len__(self) -> int:
        return len(self._idle)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep(), name=f"bifrost-rt-pool-{self.provider}")

    def note_demand(self) -> None:
        now = time.monotonic()
        self._demand.append(now)
        self.last_demand = now
        self._wake.set()

    def target(self, now: float) -> int:
        window = self.config.demand_window_s
        while self._demand and self._demand[0] < now - window:
            self._demand.popleft()
        return max(self.config.min_size, min(self.config.max_size, len(self._demand)))

    async def take(self) -> _Warm | None:
        """The newest ready session that is still healthy (most life left, most recently proven open), or None."""
        while self._idle:
            warm = self._idle.pop()
            # Refill behind the claim, once the caller's first turn is under way: a connect costs the gateway CPU
            # (TCP, TLS, the upgrade) that would otherwise land just as the caller's first response.create does.
            self._refill_at = max(self._refill_at, time.monotonic() + self.config.refill_delay_s)
            self._wake.set()
            if await self._healthy(warm):
                return warm
            self._stats.recycled += 1
            self._discard(warm)
        return None

    async def _healthy(self, warm: _Warm) -> bool:
        """Whether a session taken from the pool may be handed out: its watcher saw nothing while it was idle
        (no frame, no close), the socket is open with a live transport, and it is not due for recycling.
        A provider that went silent is caught by the socket's keepalive, which closes it after
        `upstream_ping_interval_s` + `upstream_ping_timeout_s` without a pong."""
        watcher = warm.watcher
        if watcher is not None:
            if watcher.done():
                return False
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if not watcher.cancelled():
                return False
        socket = warm.socket
        if socket.state is not State.OPEN or socket.transport is None or socket.transport.is_closing():
            return False
        return time.monotonic() - warm.opened_at < self.config.recycle_after_s

    @property
    def unasked(self) -> bool:
        """A learned key no caller has asked for in `key_idle_ttl_s`: its pool closes."""
        return self.retired or (self.learned and time.monotonic() - self.last_demand > self.config.key_idle_ttl_s)

    async def _keep(self) -> None:
        while True:
            now = time.monotonic()
            if self.unasked:
                while self._idle:
                    self._stats.recycled += 1
                    self._discard(self._idle.popleft())
                return
            self._recycle(now)
            target = self.target(now)
            if now >= self._retry_at and now >= self._refill_at:
                while len(self._idle) + len(self._connects) < target and len(self._connects) < self.config.refill_concurrency:
                    task = asyncio.get_running_loop().create_task(self._open())
                    self._connects.add(task)
                    task.add_done_callback(self._connects.discard)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep_s(now))

    def _sleep_s(self, now: float) -> float:
        due = [now + _TICK_S]
        if self._idle:
            due.append(self._idle[0].opened_at + self.config.recycle_after_s)
        for at in (self._retry_at, self._refill_at):
            if at > now:
                due.append(at)
        return max(0.0, min(due) - now)

    def _recycle(self, now: float) -> None:
        """Sessions past `recycle_after_s`, then the oldest beyond the demand, are closed."""
        while self._idle and now - self._idle[0].opened_at >= self.config.recycle_after_s:
            self._stats.recycled += 1
            self._discard(self._idle.popleft())
        while len(self._idle) > self.target(now):
            self._stats.recycled += 1
            self._discard(self._idle.popleft())

    async def _open(self) -> None:
        limits = self._limits
        if self._current_headers is not None and not self.retired:
            headers = await self._current_headers()
            if pool_key(self.provider, self.url, headers) != self.key:
                self.retired = True
                self._wake.set()
                if self._rotated is not None:
                    self._rotated(headers)
                return
        try:
            socket = await self._connect(self.url, self._headers, limits, self.provider)
        except UpstreamRefused:
            self._failed()
            return
        try:
            first = await asyncio.wait_for(socket.recv(), limits.upstream_connect_timeout_s)
            if not isinstance(first, str) or _event_type(first) != "session.created":
                raise ValueError(f"the provider's first event was not session.created: {first[:200]!r}")
        except (ConnectionClosed, asyncio.TimeoutError, ValueError, OSError) as exc:
            logger.warning("warm pool %s: a pooled session did not start: %s", self.provider, type(exc).__name__)
            self._close_soon(socket)
            self._failed()
            return
        if self._closed:
            self._close_soon(socket)
            return
        self._backoff_s = 0.0
        warm = _Warm(socket, first, time.monotonic())
        warm.watcher = asyncio.get_running_loop().create_task(self._watch(warm))
        self._idle.append(warm)
        self._wake.set()

    def _failed(self) -> None:
        config = self.config
        self._stats.failures += 1
        self._backoff_s = min(config.backoff_max_s, self._backoff_s * 2 or config.backoff_initial_s)
        self._retry_at = time.monotonic() + self._backoff_s
        self._wake.set()

    async def _watch(self, warm: _Warm) -> None:
        """Runs while the session is idle; anything from the provider (an error, a close) means it is not fresh."""
        try:
            frame = await warm.socket.recv()
            logger.info("warm pool %s: a pooled session sent %s while idle; replacing it", self.provider,
                        _event_type(frame) if isinstance(frame, str) else "a binary frame")
        except ConnectionClosed:
            pass
        if warm in self._idle:
            self._idle.remove(warm)
            self._stats.recycled += 1
            self._discard(warm, watched=True)
            self._wake.set()

    def _discard(self, warm: _Warm, *, watched: bool = False) -> None:
        if warm.watcher is not None and not watched:
            warm.watcher.cancel()
        self._close_soon(warm.socket)

    def _close_soon(self, socket: ClientConnection) -> None:
        _background(_close(socket, self._limits.close_timeout_s))

    async def close(self) -> None:
        self._closed = True
        await stop_task(self._task)
        for task in list(self._connects):
            await stop_task(task)
        idle, self._idle = list(self._idle), deque()
        for warm in idle:
            if warm.watcher is not None:
                await stop_task(warm.watcher)
        await asyncio.gather(*(_close(w.socket, self._limits.close_timeout_s) for w in idle))


class WarmPool:
    """Every pool of this process, by key; the runtime's `Gateway` starts and closes it."""

    def __init__(self, config: GatewayConfig, models: ModelResolver, connect: Connect = connect_upstream) -> None:
        self._config = config
        self._models = models
        self._connect = connect
        self._pools: dict[PoolKey, KeyPool] = {}
        self.stats: dict[str, PoolStats] = {}
        self._started = False

    def config_for(self, route: Route) -> WarmPoolConfig | None:
        model = self._config.models.get(route.requested_model or "")
        if model is not None and not isinstance(model, str) and model.warm_pool is not None:
            return model.warm_pool
        return route.provider.warm_pool

    def sizes(self) -> dict[str, int]:
        """Ready sessions, by provider."""
        sizes = {provider: 0 for provider in self.stats}
        for pool in self._pools.values():
            sizes[pool.provider] = sizes.get(pool.provider, 0) + len(pool)
        return sizes

    async def start(self) -> None:
        """Warms what the configuration names: every model with a pool of its own, and each provider's `models`."""
        self._started = True
        for name, model in self._config.models.items():
            if not isinstance(model, str) and model.warm_pool is not None:
                await self._warm_model(name)
        for provider_name, provider in self._config.providers.items():
            for name in provider.warm_pool.models if provider.warm_pool is not None else ():
                known = "/" in name or name in self._config.models  # a configured name, or one of this provider's
                await self._warm_model(name if known else f"{provider_name}/{name}")

    async def _warm_model(self, model: str) -> None:
        route = self._models.resolve(model)
        config = route and self.config_for(route)
        if route is None or config is None:
            logger.warning("warm pool: %s does not resolve to a provider with a pool; not warmed", model)
            return
        url = route.upstream_url({})

        async def current_headers() -> dict[str, str]:
            return await route.upstream_headers({}, [])

        def rotated(headers: dict[str, str]) -> None:
            if self._started:
                self._close_unasked()
                self._open_pool(route.provider_name, url, headers, config, learned=False, current_headers=current_headers,
                                rotated=rotated)

        self._open_pool(route.provider_name, url, await current_headers(), config, learned=False,
                        current_headers=current_headers, rotated=rotated)

    def _open_pool(
        self, provider: str, url: str, headers: dict[str, str], config: WarmPoolConfig, *, learned: bool,
        current_headers: Callable[[], Awaitable[dict[str, str]]] | None = None,
        rotated: Callable[[dict[str, str]], None] | None = None,
    ) -> KeyPool:
        key = pool_key(provider, url, headers)
        pool = self._pools.get(key)
        if pool is None or pool.retired:
            stats = self.stats.setdefault(provider, PoolStats())
            pool = KeyPool(key, url, headers, config, self._config.realtime, stats, self._connect, learned=learned,
                           current_headers=current_headers, rotated=rotated)
            self._pools[key] = pool
            pool.start()
        return pool

    async def claim(self, route: Route, url: str, headers: dict[str, str]) -> Claimed | None:
        """A ready session for exactly this upstream request, or None (the caller connects as usual).

        Only for the provider key: a caller with a provider client secret never comes here.
        """
        config = self.config_for(route)
        if config is None or not self._started:
            return None
        stats = self.stats.setdefault(route.provider_name, PoolStats())
        key = pool_key(route.provider_name, url, headers)
        pool = self._pools.get(key)
        if pool is None or pool.unasked:
            self._close_unasked()
            if self._learned(config) < config.max_keys:
                self._open_pool(route.provider_name, url, headers, config, learned=True).note_demand()
            stats.misses += 1
            return None
        pool.note_demand()
        warm = await pool.take()
        if warm is None:
            stats.misses += 1
            return None
        stats.hits += 1
        return Claimed(warm.socket, _fresh_event_id(warm.session_created))

    def _learned(self, config: WarmPoolConfig) -> int:
        return sum(1 for pool in self._pools.values() if pool.learned and pool.config is config)

    def _close_unasked(self) -> None:
        for key, pool in list(self._pools.items()):
            if pool.unasked:
                del self._pools[key]
                _background(pool.close())

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        self._started = False
        await asyncio.gather(*(pool.close() for pool in pools))


def _event_type(frame: str) -> str:
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return "(not JSON)"
    return str(event.get("type")) if isinstance(event, dict) else "(not an object)"


def _fresh_event_id(frame: str) -> str:
    """The frame with a new event_id, every other byte as the provider sent it (the relay never re-serialises)."""
    old = orjson.loads(frame).get("event_id")
    new = new_id("event")
    if isinstance(old, str):
        quoted = orjson.dumps(old).decode()
        for separator in (":", ": "):
            needle = f'"event_id"{separator}{quoted}'
            if needle in frame:
                return frame.replace(needle, f'"event_id"{separator}"{new}"', 1)
    event = orjson.loads(frame)
    event["event_id"] = new
    return orjson.dumps(event).decode()


def _background(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[None]] = set()  # closes in flight, referenced until done


async def _close(socket: ClientConnection, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(socket.close(), timeout_s)
    except Exception:
        if socket.transport is not None:
            socket.transport.abort()
