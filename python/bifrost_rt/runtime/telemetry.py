"""OpenTelemetry traces: a span per session and a child span per turn, exported over OTLP/HTTP.

Built from what the hook pipeline already carries off the relay path (session start, each finished turn record,
session end), so tracing adds nothing to the relay itself; the gateway imports this module, and with it the SDK,
only when `telemetry.endpoint` is configured. A client's W3C `traceparent` (handshake or call request header) makes
the session span a child of the client's span. Attributes name the virtual key by name and id, never by its secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bifrost_rt import __version__
from bifrost_rt.config import TelemetryConfig
from bifrost_rt.policy.hooks import Plugin, SessionInfo
from bifrost_rt.records import TurnRecord

logger = logging.getLogger("bifrost_rt.telemetry")

_PROPAGATOR = TraceContextTextMapPropagator()
_FAILED = frozenset({"failed", "incomplete"})
# Open session spans kept at most; beyond it the oldest is ended (its end was never heard: a dropped hook call).
_MAX_OPEN_SESSIONS = 100_000


def _ns(unix_seconds: float) -> int:
    return int(unix_seconds * 1e9)


def _session_attributes(session: SessionInfo) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.system": session.provider,
        "gen_ai.operation.name": "realtime",
        "bifrost.session.id": session.session_id,
        "bifrost.session.group": session.session_group,
        "bifrost.virtual_key.name": session.principal,
        "bifrost.virtual_key.id": session.key_id,
        "bifrost.transport": session.transport,
    }
    if session.model:
        attributes["gen_ai.request.model"] = session.model
    return attributes


def turn_attributes(record: TurnRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.system": record.provider,
        "gen_ai.operation.name": "realtime.turn",
        "bifrost.turn.id": record.id,
        "bifrost.session.id": record.session_id,
        "bifrost.virtual_key.name": record.principal,
        "bifrost.virtual_key.id": record.key_id,
        "bifrost.transport": record.transport,
        "bifrost.turn.status": record.status,
        "bifrost.cost.usd": float(record.cost.get("total", 0.0)),
    }
    if record.model:
        attributes["gen_ai.request.model"] = record.model
    if record.response_id:
        attributes["gen_ai.response.id"] = record.response_id
    if record.status_reason:
        attributes["bifrost.turn.status_reason"] = record.status_reason
    usage = record.usage or {}
    if usage:
        attributes["gen_ai.usage.input_tokens"] = int(usage.get("input_tokens", 0))
        attributes["gen_ai.usage.output_tokens"] = int(usage.get("output_tokens", 0))
    for kind, count in usage.items():
        attributes[f"bifrost.usage.{kind}"] = int(count)
    transcription = sum(int(t.get("total_tokens") or 0) for t in record.transcription_usage)
    if transcription:
        attributes["bifrost.usage.transcription_tokens"] = transcription
    for name, value in record.latency_ms.items():
        if value is not None:
            attributes[f"bifrost.latency_ms.{name}"] = float(value)
    return attributes


class _OpenSession:
    __slots__ = ("span", "turns", "tokens", "cost")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.turns = 0
        self.tokens = 0
        self.cost = 0.0


class Tracing(Plugin):
    """A plugin on the off-path hooks: it never checks turns, so it never holds a `response.create`."""

    name = "telemetry"

    def __init__(self, config: TelemetryConfig) -> None:
        assert config.endpoint is not None
        exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            headers={name: value.get_secret_value() for name, value in config.headers.items()},
            timeout=config.timeout_s,
        )
        self._provider = TracerProvider(resource=Resource.create({"service.name": config.service_name, "service.version": __version__}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        # The gateway's own provider, not the process-global one, so an embedding application keeps its own.
        self._tracer = self._provider.get_tracer("bifrost_rt", __version__)
        self._sessions: dict[str, _OpenSession] = {}

    async def on_session_start(self, session: SessionInfo) -> None:
        parent = _PROPAGATOR.extract({"traceparent": session.traceparent}) if session.traceparent else None
        span = self._tracer.start_span(
            "realtime.session",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_session_attributes(session),
            start_time=_ns(session.started_at or time.time()),
        )
        if len(self._sessions) >= _MAX_OPEN_SESSIONS:
            self._sessions.pop(next(iter(self._sessions))).span.end()
        self._sessions[session.session_id] = _OpenSession(span)

    async def post_turn(self, record: TurnRecord) -> None:
        session = self._sessions.get(record.session_id)
        context = trace.set_span_in_context(session.span) if session is not None else None
        span = self._tracer.start_span(
            "realtime.turn", context=context, kind=SpanKind.INTERNAL, attributes=turn_attributes(record), start_time=_ns(record.started_at)
        )
        error = record.error or {}
        if record.status == "refused":
            span.add_event("refusal", {k: str(v) for k, v in (("code", error.get("code")), ("type", error.get("type")),
                                                                ("message", error.get("message")), ("plugin", error.get("plugin"))) if v})  # fmt: skip
        elif error:
            span.add_event("error", {k: str(v) for k, v in (("code", error.get("code")), ("type", error.get("type")),
                                                              ("message", error.get("message"))) if v})  # fmt: skip
        if record.status in _FAILED or (record.status == "interrupted" and error):
            span.set_status(Status(StatusCode.ERROR, str(error.get("code") or record.status_reason or record.status)))
        span.end(end_time=_ns(record.ended_at))
        if session is not None:
            session.turns += 1
            session.tokens += int((record.usage or {}).get("total_tokens", 0))
            session.cost += float(record.cost.get("total", 0.0))

    async def on_session_end(self, session: SessionInfo, reason: str) -> None:
        open_session = self._sessions.pop(session.session_id, None)
        if open_session is None:
            return
        span = open_session.span
        if session.model:
            span.set_attribute("gen_ai.request.model", session.model)
        span.set_attributes(
            {
                "bifrost.session.status": reason,
                "bifrost.session.turns": open_session.turns,
                "bifrost.usage.total_tokens": open_session.tokens,
                "bifrost.cost.usd": open_session.cost,
            }
        )
        span.end()

    async def close(self) -> None:
        """Ends what is still open and exports every span (the exporter's own timeout bounds it)."""
        for open_session in self._sessions.values():
            open_session.span.end()
        self._sessions.clear()
        await asyncio.to_thread(self._provider.shutdown)
