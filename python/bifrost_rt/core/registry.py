"""Live sessions of this process: the session cap, the per-session timers, and the shutdown drain.

One supervisor task ticks once a second over all sessions, so the relay loops never arm a timer per frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from bifrost_rt import errors
from bifrost_rt.config import RealtimeConfig
from bifrost_rt.core.session import RealtimeSession
from bifrost_rt.errors import RealtimeError
from bifrost_rt.tasks import stop_task

logger = logging.getLogger("bifrost_rt.registry")


class LiveSession(Protocol):
    session: RealtimeSession

    def activity(self) -> int:
        """A counter that moves whenever a frame crosses the session in either direction."""

    def relayed(self) -> dict[str, int]:
        """frames_up, frames_down, bytes_up, bytes_down relayed so far."""

    def blocked_on_client(self) -> bool:
        """True while a write to the client is waiting for the client to read."""

    def end(self, error: RealtimeError, *, upstream_code: int = errors.CLOSE_NORMAL) -> None:
        """Tell the client why (error event + close), close upstream, finalise turns."""

    def watch(self, now: float) -> None:
        """The transport's own liveness checks, once per supervisor tick."""


class _Watch:
    __slots__ = ("activity", "idle_since", "blocked_since")

    def __init__(self, activity: int, now: float) -> None:
        self.activity = activity
        self.idle_since = now
        self.blocked_since: float | None = None


class SessionRegistry:
    def __init__(self, limits: RealtimeConfig) -> None:
        self._limits = limits
        self._live: dict[LiveSession, _Watch] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self.draining = False
        self.opened_by_transport: Counter[str] = Counter()
        self.refused_by_reason: Counter[str] = Counter()
        self._closed_relayed: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._live)

    def has_room(self) -> bool:
        return not self.draining and len(self._live) < self._limits.max_sessions

    def add(self, live: LiveSession) -> None:
        self._live[live] = _Watch(live.activity(), time.monotonic())
        self.opened_by_transport[live.session.transport] += 1
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="bifrost-rt-supervisor")

    def remove(self, live: LiveSession) -> None:
        if self._live.pop(live, None) is not None:
            self._closed_relayed.update(live.relayed())

    def end_session(self, session_id: str, error: RealtimeError) -> bool:
        """End one session by id (e.g. its key's budget ran out); False if it is not open here."""
        for live in list(self._live):
            if live.session.id == session_id:
                live.end(error)
                return True
        return False

    def refuse(self, reason: str) -> None:
        self.refused_by_reason[reason] += 1

    def live(self) -> Iterator[LiveSession]:
        return iter(list(self._live))

    def relayed_totals(self) -> Counter[str]:
        totals = Counter(self._closed_relayed)
        for live in list(self._live):
            totals.update(live.relayed())
        return totals

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.check(time.monotonic())
            except Exception:
                logger.exception("session supervisor tick failed")

    def check(self, now: float) -> None:
        limits = self._limits
        for live, watch in list(self._live.items()):
            activity = live.activity()
            if activity != watch.activity:
                watch.activity, watch.idle_since = activity, now
            if live.blocked_on_client():
                watch.blocked_since = watch.blocked_since or now
            else:
                watch.blocked_since = None
            age = now - live.session.started_at
            if limits.max_session_s and age >= limits.max_session_s:
                live.end(errors.session_expired(limits.max_session_s))
            elif limits.idle_timeout_s and now - watch.idle_since >= limits.idle_timeout_s:
                live.end(errors.session_idle(limits.idle_timeout_s))
            elif watch.blocked_since is not None and now - watch.blocked_since >= limits.write_timeout_s:
                logger.warning("session %s: client accepted no data for %.0f s; dropping it", live.session.id, now - watch.blocked_since)
                live.end(errors.RealtimeError("server_error", "client_write_timeout", "The client stopped reading.", close_code=errors.CLOSE_POLICY))
            else:
                live.watch(now)

    async def drain(self, timeout: float) -> None:
        """Refuse new sessions, let open turns finish for up to `timeout`, then end every session with 1001."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self._live and time.monotonic() < deadline:
            for live in list(self._live):
                if live.session.open_turns == 0:
                    live.end(errors.shutting_down(), upstream_code=errors.CLOSE_GOING_AWAY)
            await asyncio.sleep(0.05)
        for live in list(self._live):
            live.end(errors.shutting_down(), upstream_code=errors.CLOSE_GOING_AWAY)
        # Give the relays a moment to send their close frames and record their turns.
        for _ in range(100):
            if not self._live:
                break
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await stop_task(self._supervisor)
        self._supervisor = None
