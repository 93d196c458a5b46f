"""The gateway's shared services, built once per process from the configuration and handed to transports."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable

import httpx

from bifrost_rt import errors
from bifrost_rt.config import ConfigError, GatewayConfig, KeyPolicy
from bifrost_rt.core.audio import AudioCapture
from bifrost_rt.core.registry import SessionRegistry
from bifrost_rt.core.session import RealtimeSession
from bifrost_rt.policy.auth import Authenticator, Principal, key_id
from bifrost_rt.policy.client_secrets import ClientSecrets
from bifrost_rt.policy.governance import Governance, GovernancePlugin
from bifrost_rt.policy.hooks import HookPipeline, Plugin, load_plugin
from bifrost_rt.policy.pricing import PriceTable
from bifrost_rt.providers import ModelResolver, Route
from bifrost_rt.records import TurnRecord
from bifrost_rt.runtime.metrics import GatewayMetrics
from bifrost_rt.state.audio_store import AudioStore
from bifrost_rt.state.audio_writer import AudioWriter
from bifrost_rt.state.kv import KVStore, MemoryKV
from bifrost_rt.state.turn_log import SpoolingStore, SQLiteTurnStore
from bifrost_rt.state.turn_writer import LogLineSink, TurnSink, TurnWriter
from bifrost_rt.tasks import stop_task

logger = logging.getLogger("bifrost_rt.gateway")


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

        store = config.store
        self.kv: KVStore = MemoryKV()
        if store.redis_url is not None:
            from bifrost_rt.state.redis_kv import RedisKV  # loads the Redis client only when it is configured

            self.kv = RedisKV(store.redis_url.get_secret_value(), timeout_s=store.timeout_s)
        self.governance = Governance(
            self.kv,
            {
                key_id(vk.key.get_secret_value()): KeyPolicy(budget=vk.budget, rate_limits=vk.rate_limits, max_sessions=vk.max_sessions, team=vk.team)
                for vk in config.virtual_keys
                if vk.budget or vk.rate_limits or vk.max_sessions or vk.team
            },
            config.teams,
            fail_open=config.governance.fail_open,
            lease_s=config.governance.lease_s,
        )
        secret = config.client_secrets.secret
        self.client_secrets = (
            ClientSecrets(secret.get_secret_value(), self.kv, config.client_secrets.max_ttl_s) if secret is not None else None
        )
        self.http = httpx.AsyncClient()  # provider REST calls (client secrets)

        self.turn_log = self._turn_log_store()
        sinks = list(turn_sinks) if turn_sinks is not None else [LogLineSink()]
        if self.turn_log is not None:
            sinks.append(self.turn_log)
        self.turns = TurnWriter([*sinks, self.metrics.sink()], config.turn_log.queue_size)
        self.audio = self._audio_writer()

        hooks = config.hooks
        builtin: list[Plugin] = [GovernancePlugin(self.governance)] if self.governance.limits_turns else []
        self.tracing = None
        if config.telemetry.endpoint is not None:
            try:
                from bifrost_rt.runtime.telemetry import Tracing  # the OpenTelemetry SDK loads only when configured
            except ModuleNotFoundError as missing:
                raise ConfigError(f"telemetry.endpoint needs the OpenTelemetry SDK ({missing.name}): pip install 'bifrost-rt[telemetry]'") from None
            self.tracing = Tracing(config.telemetry)
        observers: list[Plugin] = [self.tracing] if self.tracing is not None else []
        self.hooks = HookPipeline(
            [*builtin, *plugins, *(load_plugin(p.use, p.options) for p in config.plugins), *observers],
            pre_turn_timeout_s=hooks.pre_turn_timeout_ms / 1000,
            fail_closed=hooks.on_failure == "closed",
            queue_size=hooks.queue_size,
            observe_latency=self.metrics.observe_hook,
            count_failure=self.metrics.count_hook_failure,
        )
        self._charges: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self.metrics.watch(self.registry, self._gauges())
        Gateway.instances.add(self)

    def _turn_log_store(self) -> SpoolingStore | None:
        log = self.config.turn_log
        if log.store == "none":
            return None
        if log.store == "sqlite":
            inner = SQLiteTurnStore(log.sqlite_path)
        else:
            assert log.postgres_dsn is not None
            from bifrost_rt.state.turn_log.postgres import PostgresTurnStore  # asyncpg only when configured

            inner = PostgresTurnStore(
                log.postgres_dsn.get_secret_value(), pool_size=log.postgres_pool_size, connect_timeout_s=log.connect_timeout_s
            )
        return SpoolingStore(
            inner, log.spill_path, max_bytes=log.spill_max_bytes, retry_initial_s=log.retry_initial_s, retry_max_s=log.retry_max_s
        )

    def _audio_writer(self) -> AudioWriter | None:
        """Only when some key records audio."""
        if not any(vk.record_audio for vk in self.config.virtual_keys):
            return None
        audio = self.config.audio
        store = AudioStore(audio.directory, max_bytes=audio.max_bytes, retention_s=audio.retention_s)
        return AudioWriter(store, queue_size=audio.queue_size, max_queued_bytes=audio.max_queued_bytes, sweep_interval_s=audio.sweep_interval_s)

    def _gauges(self) -> dict[str, object]:
        gauges = {
            "turn_queue_depth": lambda: self.turns.depth,
            "turn_queue_overflow": lambda: self.turns.overflowed,
            "hook_queue_depth": lambda: self.hooks.depth,
            "governance_store_failures": lambda: self.governance.kv_failures,
        }
        if self.audio is not None:
            audio = self.audio
            gauges.update(
                {
                    "audio_turns_dropped": lambda: audio.dropped_turns,
                    "audio_queue_depth": lambda: audio.depth,
                    "audio_clips_written": lambda: audio.written,
                    "audio_write_failures": lambda: audio.failures,
                    "audio_store_bytes": lambda: audio.store.total_bytes,
                    "audio_clips_evicted": lambda: audio.store.evicted,
                    "audio_clips_expired": lambda: audio.store.expired,
                }
            )
        if self.turn_log is not None:
            log = self.turn_log
            gauges.update(
                {
                    "turn_log_spilled": lambda: log.spilled,
                    "turn_log_replayed": lambda: log.replayed,
                    "turn_log_write_failures": lambda: log.write_failures,
                    "turn_log_spill_backlog_bytes": lambda: log.backlog_bytes,
                }
            )
        return gauges

    def new_session(
        self, *, principal: Principal, route: Route, transport: str, session_group: str | None, session_id: str | None = None,
        traceparent: str | None = None,
    ) -> RealtimeSession:
        log_content = principal.virtual_key.log_content
        if log_content is None:
            log_content = self.config.turn_log.log_content
        audio = None
        if self.audio is not None and principal.virtual_key.record_audio and log_content:  # no content, no audio
            audio = AudioCapture(self.audio, opus=transport == "webrtc", max_turn_bytes=self.config.audio.max_turn_bytes)
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
            on_turn=self.charge,
            log_content=log_content,
            raw_frames=self.config.turn_log.raw_frames,
            audio=audio,
            traceparent=traceparent,
        )

    def charge(self, record: TurnRecord) -> None:
        """Bill a finished turn to its key (off the relay path); a turn that exhausts a budget ends its session."""
        if record.status == "refused" or not self.governance.limits(record.key_id):
            return
        task = asyncio.get_running_loop().create_task(self._charge(record))
        self._charges.add(task)
        task.add_done_callback(self._charges.discard)

    async def _charge(self, record: TurnRecord) -> None:
        tokens = (record.usage or {}).get("total_tokens", 0) + sum(t.get("total_tokens", 0) for t in record.transcription_usage)
        result = await self.governance.charge(record.key_id, record.cost.get("total", 0.0), tokens)
        if result.exhausted:
            self.registry.end_session(record.session_id, errors.budget_exhausted())

    async def _renew_leases(self) -> None:
        interval = self.config.governance.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            sessions = [live.session for live in self.registry.live()]
            await asyncio.gather(*(self.governance.renew(s.principal.key_id, s.id) for s in sessions), return_exceptions=True)

    async def start(self) -> None:
        if self.turn_log is not None:
            await self.turn_log.start()
        self.turns.start()
        if self.audio is not None:
            self.audio.start()
        self.hooks.start()
        self._renewer = asyncio.get_running_loop().create_task(self._renew_leases(), name="bifrost-rt-lease-renewal")

    async def drain(self) -> None:
        await self.registry.drain(self.config.realtime.shutdown_drain_s)

    async def stop(self) -> None:
        """Drain sessions (if the server has not already), then deliver every queued turn record and charge."""
        if len(self.registry):
            await self.drain()
        await self.registry.close()
        await stop_task(self._renewer)
        await self.turns.close()
        if self.audio is not None:
            await self.audio.close()
        await self.hooks.close()
        if self.tracing is not None:
            await self.tracing.close()
        if self._charges:
            await asyncio.wait(self._charges, timeout=10)
        if self.turn_log is not None:
            await self.turn_log.close()
        await self.http.aclose()
        await self.kv.close()
