"""Plugin hooks around sessions and turns.

A plugin subclasses `Plugin` and implements any of its methods:

- `on_session_start(session)` / `on_session_end(session, reason)`: observe sessions (off the relay path);
- `pre_turn(request)`: sees a turn before it starts (provider, model, principal, the inputs so far, session
  tools, the `response.create` parameters) and may return `Decision.deny(...)` (the `response.create` is not
  forwarded; the client gets an error carrying its event_id; the session goes on) or `Decision.disconnect(...)`;
- `post_turn(record)`: sees every finished turn record (off the relay path).

`pre_turn` runs under a time budget; a plugin that raises or overruns it is logged, counted and treated as
allowing (fail-open) or denying (fail-closed) per configuration. The other hooks run from a bounded queue; when it
is full the hook call is dropped and counted — the turn record itself never is (it travels separately).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from bifrost_rt import errors
from bifrost_rt.errors import RealtimeError
from bifrost_rt.records import TurnRecord
from bifrost_rt.tasks import stop_task

logger = logging.getLogger("bifrost_rt.hooks")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    session_group: str
    principal: str
    key_id: str
    provider: str
    model: str | None
    transport: str
    started_at: float = 0.0  # unix seconds
    traceparent: str | None = None  # the client's W3C trace context, when it sent one


@dataclass(frozen=True, slots=True)
class TurnRequest:
    session: SessionInfo
    client_event_id: str | None
    inputs: list[dict[str, Any]]  # {"kind": "text"|"audio"|"tool_output", "item_id", "call_id", "text"} so far
    tools: list[dict[str, Any]]  # the session's tool definitions
    response: dict[str, Any]  # the `response` parameters of response.create ({} when none)
    server_started: bool = False  # started by the provider (VAD): it cannot be withheld, only cancelled


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["allow", "deny", "disconnect"]
    type: str = "invalid_request_error"
    code: str | None = None
    message: str = ""
    plugin: str | None = None

    def as_error(self) -> RealtimeError:
        """The error the client sees for a denial; a disconnect closes with 1008 (policy)."""
        close_code = errors.CLOSE_POLICY if self.action == "disconnect" else None
        return RealtimeError(self.type, self.code, self.message, close_code=close_code)

    @classmethod
    def allow(cls) -> Decision:
        return _ALLOW

    @classmethod
    def deny(cls, message: str, *, code: str = "turn_denied", type: str = "invalid_request_error") -> Decision:
        return cls("deny", type, code, message)

    @classmethod
    def disconnect(cls, message: str, *, code: str = "session_denied", type: str = "invalid_request_error") -> Decision:
        return cls("disconnect", type, code, message)

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


_ALLOW = Decision("allow")


class Plugin:
    """Base class: every hook is optional."""

    name = "plugin"

    async def on_session_start(self, session: SessionInfo) -> None:
        return None

    async def pre_turn(self, request: TurnRequest) -> Decision | None:
        return None

    async def post_turn(self, record: TurnRecord) -> None:
        return None

    async def on_session_end(self, session: SessionInfo, reason: str) -> None:
        return None


def load_plugin(import_path: str, options: dict[str, Any]) -> Plugin:
    """`package.module:ClassName` instantiated with `options` as keyword arguments."""
    module_name, _, attribute = import_path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"plugin {import_path!r}: use 'package.module:ClassName'")
    factory = getattr(importlib.import_module(module_name), attribute)
    plugin = factory(**options)
    if not isinstance(plugin, Plugin):
        raise TypeError(f"plugin {import_path!r} does not subclass bifrost_rt.plugins.Plugin")
    return plugin


class HookPipeline:
    def __init__(
        self,
        plugins: Iterable[Plugin],
        *,
        pre_turn_timeout_s: float = 0.2,
        fail_closed: bool = False,
        queue_size: int = 10000,
        observe_latency: Callable[[str, str, float], None] | None = None,
        count_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.plugins = list(plugins)
        self._pre_turn_plugins = [p for p in self.plugins if type(p).pre_turn is not Plugin.pre_turn]
        self._timeout = pre_turn_timeout_s
        self._fail_closed = fail_closed
        self._queue: asyncio.Queue[tuple[Callable[..., Awaitable[None]], tuple[Any, ...], str]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._observe_latency = observe_latency or (lambda plugin, hook, seconds: None)
        self._count_failure = count_failure or (lambda plugin, kind: None)
        self.dropped = 0

    @property
    def checks_turns(self) -> bool:
        return bool(self._pre_turn_plugins)

    def start(self) -> None:
        if self._task is None and self.plugins:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bifrost-rt-hooks")

    async def pre_turn(self, request: TurnRequest) -> Decision:
        """Plugins in order; the first non-allow decision wins. The whole chain shares one time budget."""
        deadline = time.monotonic() + self._timeout
        for plugin in self._pre_turn_plugins:
            started = time.monotonic()
            try:
                decision = await asyncio.wait_for(plugin.pre_turn(request), max(0.0, deadline - started))
            except asyncio.TimeoutError:
                logger.warning("plugin %s: pre_turn exceeded its time budget", plugin.name)
                self._count_failure(plugin.name, "timeout")
                decision = self._failure_decision(plugin)
            except Exception:
                logger.exception("plugin %s: pre_turn raised", plugin.name)
                self._count_failure(plugin.name, "exception")
                decision = self._failure_decision(plugin)
            self._observe_latency(plugin.name, "pre_turn", time.monotonic() - started)
            if decision is not None and not decision.allowed:
                return decision if decision.plugin else Decision(decision.action, decision.type, decision.code, decision.message, plugin.name)
        return _ALLOW

    def _failure_decision(self, plugin: Plugin) -> Decision | None:
        if not self._fail_closed:
            return None
        return Decision("deny", "server_error", "hook_failed", "A policy check could not be completed; the turn was not started.", plugin.name)

    # ---- off-path hooks ----------------------------------------------------------------------

    def session_started(self, session: SessionInfo) -> None:
        for plugin in self.plugins:
            self._enqueue(plugin.on_session_start, (session,), plugin.name)

    def turn_finished(self, record: TurnRecord) -> None:
        for plugin in self.plugins:
            self._enqueue(plugin.post_turn, (record,), plugin.name)

    def session_ended(self, session: SessionInfo, reason: str) -> None:
        for plugin in self.plugins:
            self._enqueue(plugin.on_session_end, (session, reason), plugin.name)

    def _enqueue(self, hook: Callable[..., Awaitable[None]], args: tuple[Any, ...], plugin: str) -> None:
        if self._task is None:
            return
        try:
            self._queue.put_nowait((hook, args, plugin))
        except asyncio.QueueFull:
            self.dropped += 1
            self._count_failure(plugin, "dropped")
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("hook queue full: %d hook call(s) dropped so far", self.dropped)

    async def _run(self) -> None:
        while True:
            hook, args, plugin = await self._queue.get()
            started = time.monotonic()
            try:
                await hook(*args)
            except Exception:
                logger.exception("plugin %s: %s raised", plugin, hook.__name__)
                self._count_failure(plugin, "exception")
            finally:
                self._observe_latency(plugin, hook.__name__, time.monotonic() - started)
                self._queue.task_done()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def close(self, timeout: float = 10.0) -> None:
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            logger.error("hooks: %d queued hook call(s) abandoned at shutdown", self.depth)
        await stop_task(self._task)
        self._task = None
