"""An emulated wide-area network between the simulator and whoever connects to it.

On loopback every hop costs microseconds, so connection setup and first audio look free. With `rtt_ms` set, the
simulator behaves as if it stood one round trip away:

- a new connection pays `handshake_rtts` round trips before its request is even seen (default 2: the TCP
  handshake and a TLS 1.3 handshake), then the request's own one-way trip; a kept-alive HTTP connection pays
  only the request's trip. So a WebSocket's `session.created` arrives `handshake_rtts + 1` round trips after the
  connect, as from a real provider, and an HTTP answer (client secrets, calls) one round trip after a kept-alive
  request.
- every WebSocket message the simulator sends or receives is held for one one-way delay (half the RTT, plus or
  minus up to `jitter_ms`) in a per-connection delay line, which releases messages in the order they were put,
  never earlier than the one ahead: jitter delays, it never reorders (TCP does not either).

WebRTC media and the data channel are not delayed; a call's signalling POST is, like any HTTP request.
Delays are drawn from one seeded generator, so a run with a seed is repeatable.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections import deque
from typing import Any, Generic, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")


class Wan:
    def __init__(self, rtt_ms: float, jitter_ms: float, handshake_rtts: int, seed: int | None) -> None:
        self.rtt_ms = rtt_ms
        self.jitter_ms = jitter_ms
        self.handshake_rtts = handshake_rtts
        self._random = random.Random(seed)

    @property
    def active(self) -> bool:
        return self.rtt_ms > 0 or self.jitter_ms > 0

    def one_way_s(self) -> float:
        jitter = self._random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.rtt_ms / 2 + jitter) / 1000

    def setup_s(self, new_connection: bool) -> float:
        """How long a request takes to arrive: the handshake round trips of a new connection, then one way."""
        trips = 2 * self.handshake_rtts if new_connection else 0
        return sum(self.one_way_s() for _ in range(trips + 1))


class DelayLine(Generic[T]):
    """Items in the order they were put, each released one one-way delay after it was put."""

    def __init__(self, wan: Wan) -> None:
        self._wan = wan
        self._items: deque[tuple[float, T]] = deque()
        self._ready = asyncio.Event()
        self._last_due = 0.0

    def put(self, item: T) -> None:
        # Never due before the item ahead: jitter stretches the gap, it does not reorder.
        due = max(asyncio.get_running_loop().time() + self._wan.one_way_s(), self._last_due)
        self._last_due = due
        self._items.append((due, item))
        self._ready.set()

    async def get(self) -> T:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        due, item = self._items.popleft()
        wait = due - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        return item


class EmulatedWan:
    """ASGI middleware: a request reaches the app only after its connection's setup and its own trip, and an
    HTTP answer leaves one way later. WebSocket messages are delayed by the session's own delay lines."""

    def __init__(self, app: ASGIApp, wan: Wan) -> None:
        self.app = app
        self.wan = wan
        # Connections already set up, by their transport (uvicorn's protocols pass a `send` whose owner holds it).
        self._known: weakref.WeakSet[Any] = weakref.WeakSet()

    def _is_new(self, send: Send) -> bool:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is None:
            return True
        if transport in self._known:
            return False
        self._known.add(transport)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        await asyncio.sleep(self.wan.setup_s(scope["type"] == "websocket" or self._is_new(send)))
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        answered = False

        async def delayed_send(message: Message) -> None:
            nonlocal answered
            if not answered and message["type"] == "http.response.start":
                answered = True
                await asyncio.sleep(self.wan.one_way_s())
            await send(message)

        await self.app(scope, receive, delayed_send)
