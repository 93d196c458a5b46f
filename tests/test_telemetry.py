"""OpenTelemetry: sessions from openai-python clients through the gateway reach a real OTLP/HTTP receiver as spans."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from openai import AsyncOpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from conftest import PROVIDER_KEY, VIRTUAL_KEY
from rtc_client import TIMEOUT_S, Caller

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
EXPORT_TOKEN = "otlp-token-never-in-a-span"


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: decodes each POST /v1/traces as an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.raw: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                with receiver._changed:
                    receiver.requests.append(request)
                    receiver.raw.append(body)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    receiver._changed.notify_all()
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def spans(self) -> list:
        return [span for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]

    def wait_for_spans(self, count: int, timeout: float = 15.0) -> list:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.spans()) >= count, timeout):
                raise AssertionError(f"expected {count} spans, got {len(self.spans())}")
            return self.spans()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def attributes(span) -> dict:
    values = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value"))
    return values


def client(server, key: str = VIRTUAL_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{server.url}/v1", websocket_base_url=f"{server.ws_url}/v1")


async def text_turns(server, count: int, headers: dict[str, str] | None = None) -> list:
    """`count` text turns on one session; the done events of those that were answered, and the errors."""
    answered = []
    async with client(server).realtime.connect(model="gpt-realtime", extra_headers=headers or {}) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        for n in range(count):
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"hello {n}"}]})
            await conn.response.create()
            async for event in conn:
                if event.type == "response.done":
                    answered.append(event)
                    break
                if event.type == "error":
                    answered.append(event)
                    break
    return answered


async def test_sessions_and_turns_become_spans_continuing_the_clients_trace(simulator, start_gateway, receiver, monkeypatch):
    monkeypatch.setenv("OTLP_TOKEN", EXPORT_TOKEN)
    server, sink = start_gateway(
        f"{simulator.url}/v1",
        telemetry={"endpoint": receiver.url, "headers": {"authorization": "${OTLP_TOKEN}"}, "service_name": "voice-gw"},
        # The second turn of each minute is refused by governance: a refused turn carries a refusal event.
        virtual_keys=[{"key": VIRTUAL_KEY, "name": "team-a", "rate_limits": {"turns_per_minute": 1}}],
    )
    events = await text_turns(server, 2, {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"})
    assert [e.type for e in events] == ["response.done", "error"]
    records = sink.wait_for(2)
    server.stop()  # the gateway exports what is left on shutdown

    spans = receiver.wait_for_spans(3)
    (session,) = [s for s in spans if s.name == "realtime.session"]
    turns = sorted((s for s in spans if s.name == "realtime.turn"), key=lambda s: s.start_time_unix_nano)
    assert len(turns) == 2
    # The client's trace goes on: the session span is a child of the client's span, each turn a child of the session.
    assert session.trace_id.hex() == TRACE_ID and session.parent_span_id.hex() == PARENT_SPAN_ID
    assert all(t.trace_id == session.trace_id and t.parent_span_id == session.span_id for t in turns)

    session_attributes = attributes(session)
    record = next(r for r in records if r.status == "completed")
    assert session_attributes["gen_ai.system"] == "openai" and session_attributes["gen_ai.request.model"] == "gpt-realtime"
    assert session_attributes["bifrost.virtual_key.name"] == "team-a"
    assert session_attributes["bifrost.virtual_key.id"] == record.key_id
    assert session_attributes["bifrost.transport"] == "websocket"
    assert session_attributes["bifrost.session.id"] == record.session_id
    assert session_attributes["bifrost.session.turns"] == 2
    assert session_attributes["bifrost.session.status"]

    completed = attributes(turns[0])
    done = events[0].response
    assert completed["bifrost.turn.status"] == "completed" and completed["gen_ai.response.id"] == done.id
    assert completed["gen_ai.usage.input_tokens"] == done.usage.input_tokens
    assert completed["gen_ai.usage.output_tokens"] == done.usage.output_tokens
    assert completed["bifrost.usage.output_text_tokens"] == done.usage.output_token_details.text_tokens
    assert completed["bifrost.usage.cached_tokens"] == done.usage.input_token_details.cached_tokens
    assert completed["bifrost.cost.usd"] == pytest.approx(record.cost["total"]) and completed["bifrost.cost.usd"] > 0
    for latency in ("first_delta", "total", "queue"):
        assert completed[f"bifrost.latency_ms.{latency}"] == pytest.approx(record.latency_ms[latency])
    assert turns[0].start_time_unix_nano == int(record.started_at * 1e9)
    assert not turns[0].events

    refused = turns[1]
    assert attributes(refused)["bifrost.turn.status"] == "refused"
    (refusal,) = refused.events
    assert refusal.name == "refusal"
    refused_record = next(r for r in records if r.status == "refused")
    assert attributes(refusal) == {k: v for k, v in refused_record.error.items() if v}
    assert attributes(refusal)["code"] == events[1].error.code == "turns_per_minute"

    (resource,) = {tuple(sorted(attributes(rs.resource).items())) for r in receiver.requests for rs in r.resource_spans}
    assert dict(resource)["service.name"] == "voice-gw"
    assert all(h["authorization"] == EXPORT_TOKEN for h in receiver.headers)
    exported = b"".join(receiver.raw)
    for secret in (VIRTUAL_KEY, PROVIDER_KEY, EXPORT_TOKEN):
        assert secret.encode() not in exported


async def test_a_malformed_traceparent_starts_a_trace_of_its_own(simulator, start_gateway, receiver):
    server, _ = start_gateway(f"{simulator.url}/v1", telemetry={"endpoint": receiver.url})
    await text_turns(server, 1, {"traceparent": f"00-{'0' * 32}-{PARENT_SPAN_ID}-01"})
    server.stop()
    (session,) = [s for s in receiver.wait_for_spans(2) if s.name == "realtime.session"]
    assert session.trace_id.hex() != "0" * 32 and not session.parent_span_id


def test_without_telemetry_the_sdk_is_never_imported():
    probe = (
        "import sys\n"
        "from bifrost_rt.config import parse_config\n"
        "from bifrost_rt.runtime.app import create_app\n"
        "create_app(parse_config({'turn_log': {'store': 'none'}, 'providers': {'openai': {'base_url': 'http://127.0.0.1:9/v1'}}}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk') or m.startswith('opentelemetry.exporter')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


async def test_a_webrtc_call_continues_the_traceparent_of_its_request(simulator, start_gateway, receiver):
    server, sink = start_gateway(f"{simulator.url}/v1", telemetry={"endpoint": receiver.url}, webrtc={"host_candidates": "loopback"})
    caller = Caller()
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
            reply = await http.post(
                f"{server.url}/v1/realtime/calls?model=gpt-realtime",
                content=await caller.offer(),
                headers={"Authorization": f"Bearer {VIRTUAL_KEY}", "Content-Type": "application/sdp",
                         "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
            )
        assert reply.status_code == 201, reply.text
        await caller.accept(reply.text)
        await caller.expect("session.created")
        caller.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
        await caller.expect("session.updated")
        await caller.say("hello")
        caller.send("response.create")
        await caller.until("response.done")
    finally:
        await caller.close()
    sink.wait_for(1)
    server.stop()
    spans = receiver.wait_for_spans(2)
    (session,) = [s for s in spans if s.name == "realtime.session"]
    (turn,) = [s for s in spans if s.name == "realtime.turn"]
    assert session.trace_id.hex() == TRACE_ID and session.parent_span_id.hex() == PARENT_SPAN_ID
    assert turn.parent_span_id == session.span_id
    assert attributes(session)["bifrost.transport"] == attributes(turn)["bifrost.transport"] == "webrtc"
