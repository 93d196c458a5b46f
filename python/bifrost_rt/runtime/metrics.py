"""Prometheus metrics (`GET /metrics`).

Nothing here runs per frame: relays keep plain integer counters that a collector reads at scrape time, turn
metrics come from a turn sink, hook metrics from the hook pipeline's callbacks. With several workers, the worker
that is scraped adds its siblings' expositions to its own (`merge_expositions`), so one scrape sees the instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bifrost_rt.core.registry import SessionRegistry
from bifrost_rt.records import TurnRecord
from bifrost_rt.runtime import http_limits
from bifrost_rt.wire.pool import WarmPool

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_HOOK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class GatewayMetrics:
    def __init__(self, key_label: Literal["name", "id"] = "name") -> None:
        # "id" labels series with the key id (a hash prefix, as turn records carry it) so no key name is exposed.
        self.key_label = key_label
        self.registry = CollectorRegistry()
        self.turns = Counter("bifrost_rt_turns", "Turns recorded, by status", ["status"], registry=self.registry)
        self.turn_latency = Histogram(
            "bifrost_rt_turn_latency_seconds",
            "Turn latency from the request: to the first output delta, and to response.done",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter("bifrost_rt_tokens", "Tokens used, by key, model and kind", ["key", "model", "kind"], registry=self.registry)
        self.cost = Counter("bifrost_rt_cost_usd", "Cost in USD, by key and model", ["key", "model"], registry=self.registry)
        self.hook_latency = Histogram(
            "bifrost_rt_hook_latency_seconds", "Plugin hook run time", ["plugin", "hook"], buckets=_HOOK_BUCKETS, registry=self.registry
        )
        self.hook_failures = Counter(
            "bifrost_rt_hook_failures", "Plugin hook failures: exception, timeout, or dropped (queue full)", ["plugin", "kind"], registry=self.registry
        )
        self.registry.register(_HeadLimitsCollector())

    def observe_hook(self, plugin: str, hook: str, seconds: float) -> None:
        self.hook_latency.labels(plugin, hook).observe(seconds)

    def count_hook_failure(self, plugin: str, kind: str) -> None:
        self.hook_failures.labels(plugin, kind).inc()

    def watch(self, registry: SessionRegistry, gauges: dict[str, Callable[[], float]]) -> None:
        """Scrape-time views of the live sessions and of queue depths and counters kept elsewhere."""
        self.registry.register(_LiveCollector(registry, gauges))

    def watch_pool(self, pool: WarmPool) -> None:
        self.registry.register(_PoolCollector(pool))

    def sink(self) -> MetricsSink:
        return MetricsSink(self)


class MetricsSink:
    """A turn sink that counts turns, tokens, cost and latencies."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    async def write(self, records: list[TurnRecord]) -> None:
        metrics = self._metrics
        by_id = metrics.key_label == "id"
        for record in records:
            metrics.turns.labels(record.status).inc()
            key = record.key_id if by_id else record.principal
            model = record.model or ""
            usage = record.usage or {}
            for kind in ("input_tokens", "output_tokens", "cached_tokens"):
                if usage.get(kind):
                    metrics.tokens.labels(key, model, kind.removesuffix("_tokens")).inc(usage[kind])
            for transcription in record.transcription_usage:
                if transcription.get("total_tokens"):
                    metrics.tokens.labels(key, transcription.get("model") or "", "transcription").inc(transcription["total_tokens"])
            if record.cost.get("total"):
                metrics.cost.labels(key, model).inc(record.cost["total"])
            for stage in ("first_delta", "total"):
                milliseconds = record.latency_ms.get(stage)
                if milliseconds is not None and record.response_id is not None:
                    metrics.turn_latency.labels(stage).observe(milliseconds / 1000)


class _LiveCollector(Collector):
    def __init__(self, registry: SessionRegistry, gauges: dict[str, Callable[[], float]]) -> None:
        self._registry = registry
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        registry = self._registry
        active = GaugeMetricFamily("bifrost_rt_sessions_active", "Open sessions, by transport", labels=["transport"])
        by_transport: dict[str, int] = {}
        for live in registry.live():
            by_transport[live.session.transport] = by_transport.get(live.session.transport, 0) + 1
        for transport, count in by_transport.items():
            active.add_metric([transport], count)
        yield active

        opened = CounterMetricFamily("bifrost_rt_sessions_opened", "Sessions opened, by transport", labels=["transport"])
        for transport, count in registry.opened_by_transport.items():
            opened.add_metric([transport], count)
        yield opened
        refused = CounterMetricFamily("bifrost_rt_sessions_refused", "Sessions refused before relaying, by reason", labels=["reason"])
        for reason, count in registry.refused_by_reason.items():
            refused.add_metric([reason], count)
        yield refused

        frames = CounterMetricFamily("bifrost_rt_frames_relayed", "Frames relayed, by direction", labels=["direction"])
        relayed_bytes = CounterMetricFamily(
            "bifrost_rt_bytes_relayed", "Frame payload relayed (characters; equal to bytes for ASCII JSON), by direction", labels=["direction"]
        )
        totals = registry.relayed_totals()
        for direction in ("up", "down"):
            frames.add_metric([direction], totals[f"frames_{direction}"])
            relayed_bytes.add_metric([direction], totals[f"bytes_{direction}"])
        yield frames
        yield relayed_bytes
        for name, help_text in (
            ("rtp_packets", "RTP audio packets forwarded by WebRTC calls, by direction (up: caller to provider)"),
            ("rtp_lost", "RTP packets lost before reaching the gateway, by direction"),
            ("rtp_dropped", "RTP packets the gateway dropped (forwarding ring full, or malformed), by direction"),
        ):
            family = CounterMetricFamily(f"bifrost_rt_{name}", help_text, labels=["direction"])
            for direction in ("up", "down"):
                family.add_metric([direction], totals[f"{name}_{direction}"])
            yield family

        for name, read in self._gauges.items():
            gauge = GaugeMetricFamily(f"bifrost_rt_{name}", name.replace("_", " "))
            gauge.add_metric([], read())
            yield gauge


class _PoolCollector(Collector):
    """The warm pool, by provider: ready sessions, and what became of claims and pooled sessions."""

    def __init__(self, pool: WarmPool) -> None:
        self._pool = pool

    def collect(self) -> Iterable[Metric]:
        size = GaugeMetricFamily("bifrost_rt_warm_pool_sessions", "Upstream sessions ready in the warm pool", labels=["provider"])
        for provider, count in self._pool.sizes().items():
            size.add_metric([provider], count)
        yield size
        for name, help_text in (
            ("hits", "Sessions given a warm upstream session"),
            ("misses", "Sessions of a pooled provider or model that connected upstream themselves"),
            ("recycled", "Pooled sessions closed unclaimed: too old, beyond the demand, or closed or changed while idle"),
            ("failures", "Pool connects that failed or did not reach session.created"),
        ):
            family = CounterMetricFamily(f"bifrost_rt_warm_pool_{name}", help_text, labels=["provider"])
            for provider, stats in self._pool.stats.items():
                family.add_metric([provider], getattr(stats, name))
            yield family


class _HeadLimitsCollector(Collector):
    """What the HTTP protocol refused before a request reached the app (this process)."""

    def collect(self) -> Iterable[Metric]:
        refused = CounterMetricFamily(
            "bifrost_rt_http_connections_refused",
            "Connections closed before their request reached the app: head_too_large (431), head_timeout, pending_limit",
            labels=["reason"],
        )
        for reason, count in list(http_limits.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        pending = GaugeMetricFamily("bifrost_rt_http_pending_heads", "Connections still sending their first request head")
        pending.add_metric([], http_limits.pending_heads())
        yield pending


def merge_expositions(texts: Iterable[str]) -> bytes:
    """One exposition from several workers' own: every series is the sum of its values across workers (every
    series here is a count or a level that adds up), except `_created` timestamps, which keep the earliest."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in series:
                    series[key] = sample.value
                elif sample.name.endswith("_created"):
                    series[key] = min(series[key], sample.value)
                else:
                    series[key] += sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry()
    registry.register(_Fixed(list(merged.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
