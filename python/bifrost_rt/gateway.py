"""The gateway's shared services, built once per process from the configuration and handed to transports."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import httpx

from .auth import Authenticator, Principal
from .client_secrets import ClientSecrets
from .hooks import HookPipeline, Plugin, load_plugin
from .metrics import GatewayMetrics
from .config import GatewayConfig
from .pricing import PriceTable
from .providers import ModelResolver, Route
from .registry import SessionRegistry
from .session import RealtimeSession
from .stores.kv import KVStore, MemoryKV
from .turns import LogLineSink, TurnSink, TurnWriter


class Gateway:
    # Every gateway of this process, so a signal handler can drain them without a handle on the app.
    instances: weakref.WeakSet[Gateway] = weakref.WeakSet()

    def __init__(
        self, config: GatewayConfig, turn_sinks: Iterable[TurnSink] | None = None, plugins: Iterable[Plugin] = ()
    ) -> None:
        self.config = config
        self.authenticator = Authenticator(config)
        self.models = ModelResolver(config)
        self.prices = PriceTable(config.prices)
        self.registry = SessionRegistry(config.realtime)
        self.metrics = GatewayMetrics()
        sinks = list(turn_sinks) if turn_sinks is not None else [LogLineSink()]
        self.turns = TurnWriter([*sinks, self.metrics.sink()], config.turn_log.queue_size)
        self.kv: KVStore = MemoryKV()
        secret = config.client_secrets.secret
        self.client_secrets = ClientSecrets(secret.get_secret_value(), self.kv) if secret is not None else None
        self.http = httpx.AsyncClient()  # provider REST calls (client secrets)
        hooks = config.hooks
        self.hooks = HookPipeline(
            [*plugins, *(load_plugin(p.use, p.options) for p in config.plugins)],
            pre_turn_timeout_s=hooks.pre_turn_timeout_ms / 1000,
            fail_closed=hooks.on_failure == "closed",
            queue_size=hooks.queue_size,
            observe_latency=self.metrics.observe_hook,
            count_failure=self.metrics.count_hook_failure,
        )
        self.metrics.watch(
            self.registry,
            {
                "turn_queue_depth": lambda: self.turns.depth,
                "turn_queue_overflow": lambda: self.turns.overflowed,
                "hook_queue_depth": lambda: self.hooks.depth,
            },
        )
        Gateway.instances.add(self)

    def new_session(
        self, *, principal: Principal, route: Route, transport: str, session_group: str | None, session_id: str | None = None
    ) -> RealtimeSession:
        return RealtimeSession(
            session_id=session_id,
            hooks=self.hooks,
            principal=principal,
            route=route,
            transport=transport,
            session_group=session_group,
            limits=self.config.realtime,
            prices=self.prices,
            writer=self.turns,
            log_content=self.config.turn_log.log_content,
        )

    async def start(self) -> None:
        self.turns.start()
        self.hooks.start()

    async def drain(self) -> None:
        await self.registry.drain(self.config.realtime.shutdown_drain_s)

    async def stop(self) -> None:
        """Drain sessions (if the server has not already), then deliver every queued turn record."""
        if len(self.registry):
            await self.drain()
        await self.registry.close()
        await self.turns.close()
        await self.hooks.close()
        await self.http.aclose()
        await self.kv.close()
