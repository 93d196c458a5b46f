"""Limits on HTTP request heads, enforced in uvicorn's HTTP protocol before a request reaches the app.

uvicorn reads a request head with h11 or httptools, neither of which caps a header line, then hands a WebSocket
upgrade to websockets, which refuses a line over 8 KiB by dropping the request without writing a byte: the client
waits until it gives up. Nor does uvicorn time out a head that never completes. These protocol classes add, per
connection:

- a head with a line over websockets' line limit (8 KiB, CRLF included), more than its 128 header lines, or more
  than `server.max_request_head_bytes` in all is answered 431 (an OpenAI-shaped error) and the connection closes;
- a head not complete `server.request_head_timeout_s` after the connection opened (or, on a kept-alive
  connection, after the next request's first byte) is closed;
- at most `server.max_pending_handshakes` connections per process may still be sending their first head: a new
  connection beyond it is closed at once.

Select them with `http=H11_PROTOCOL` (or `HTTPTOOLS_PROTOCOL`) and put a `HeadLimits` on the uvicorn config with
`attach_limits`; without one the defaults apply. The uvicorn internals used here are pinned by
tests/test_uvicorn_internals.py.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

import h11
import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState
from websockets import http11 as _websockets_http11

from bifrost_rt.config import ServerConfig

H11_PROTOCOL = "bifrost_rt.runtime.http_limits:LimitedH11Protocol"
HTTPTOOLS_PROTOCOL = "bifrost_rt.runtime.http_limits:LimitedHttpToolsProtocol"

# What websockets accepts when uvicorn hands it an upgrade; beyond it the request would go unanswered.
MAX_LINE_BYTES: int = _websockets_http11.MAX_LINE_LENGTH
MAX_HEADER_LINES: int = _websockets_http11.MAX_NUM_HEADERS

_CONFIG_ATTRIBUTE = "bifrost_head_limits"
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE_EXTRA = len(b"  HTTP/1.1\r\n")  # around the method and target, as uvicorn rebuilds the line


@dataclass(frozen=True)
class HeadLimits:
    timeout_s: float = 5.0
    max_head_bytes: int = 16 * 1024
    max_pending: int = 256

    @classmethod
    def of(cls, server: ServerConfig) -> HeadLimits:
        return cls(server.request_head_timeout_s, server.max_request_head_bytes, server.max_pending_handshakes)


def attach_limits(config: uvicorn.Config, limits: HeadLimits) -> None:
    """The limits travel on the uvicorn config, which worker processes receive pickled."""
    setattr(config, _CONFIG_ATTRIBUTE, limits)


# Connections refused here, by reason (this process); read by the gateway's metrics.
refused: Counter[str] = Counter()
# Connections still sending their first head, per server.
_pending: weakref.WeakKeyDictionary[ServerState, set[Any]] = weakref.WeakKeyDictionary()


def pending_heads() -> int:
    return sum(len(connections) for connections in list(_pending.values()))


class _HeadGuard:
    """The part both parsers share: the timer, the pending cap and the 431 answer."""

    config: uvicorn.Config
    server_state: ServerState
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._limits: HeadLimits = getattr(self.config, _CONFIG_ATTRIBUTE, None) or HeadLimits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._pending = _pending.setdefault(self.server_state, set())
        if len(self._pending) >= self._limits.max_pending:
            refused["pending_limit"] += 1
            transport.close()
            return
        self._pending.add(self)
        self._head_started()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_finished()
        super().connection_lost(exc)  # type: ignore[misc]

    def _head_started(self) -> None:
        if self._head_timer is None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(self._limits.timeout_s, self._head_timed_out)

    def _head_finished(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._pending.discard(self)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._pending.discard(self)
        refused["head_timeout"] += 1
        self.transport.close()

    def _parsed_head_too_large(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        """Measures the head as uvicorn passes it to websockets: `name: value` lines."""
        request_line = len(method) + len(target) + _REQUEST_LINE_EXTRA
        lines = [len(name) + len(value) + 4 for name, value in headers]
        total = request_line + sum(lines) + 2
        return (
            total > self._limits.max_head_bytes
            or len(headers) > MAX_HEADER_LINES
            or max([request_line, *lines]) > MAX_LINE_BYTES
        )

    def _too_large_body(self) -> bytes:
        message = (
            f"The request head is too large: at most {MAX_LINE_BYTES} bytes a line, {MAX_HEADER_LINES} header lines "
            f"and {self._limits.max_head_bytes} bytes in all."
        )
        return orjson.dumps(
            {"error": {"type": "invalid_request_error", "code": "request_header_fields_too_large", "message": message, "param": None}}
        )

    def _refuse_head(self) -> None:
        """Answers 431 on the raw transport (no request cycle exists yet) and closes."""
        self._head_finished()
        refused["head_too_large"] += 1
        body = self._too_large_body()
        parts = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body]
        self.transport.write(b"".join(parts))
        self.transport.close()

    async def _answer_too_large(self, scope: Any, receive: Any, send: Any) -> None:
        """The app for a parsed request whose head was too large (the request cycle sends it, then closes)."""
        refused["head_too_large"] += 1
        body = self._too_large_body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class LimitedH11Protocol(_HeadGuard, H11Protocol):
    """h11 buffers what it has not parsed, so a head is measured whole, before h11 (and the app) sees it."""

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # the next bytes are a request head
            self._head_started()
            buffered = self.conn.trailing_data[0]
            if self._raw_head_too_large(buffered + data if buffered else data):
                self._refuse_head()
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_finished()

    def _raw_head_too_large(self, data: bytes) -> bool:
        end = _HEAD_END.search(data)
        head = data if end is None else data[: end.end()]
        if len(head) > self._limits.max_head_bytes:
            return True
        lines = head.split(b"\n")
        # A split line keeps its CR: a line of MAX_LINE_BYTES with its CRLF is a part of MAX_LINE_BYTES - 1.
        return len(lines) > MAX_HEADER_LINES + 3 or max(map(len, lines)) >= MAX_LINE_BYTES

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # uvicorn rebuilds the head for websockets, which would drop it silently if a rebuilt line is too long.
        if self._parsed_head_too_large(event.method, event.target, self.headers):
            self._refuse_head()
            return
        self._head_finished()
        super().handle_websocket_upgrade(event)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional; uvicorn_settings() picks it only where it is installed
    pass
else:

    class LimitedHttpToolsProtocol(_HeadGuard, HttpToolsProtocol):  # type: ignore[no-redef]
        """httptools keeps no readable buffer: a complete head is measured from its parsed parts, an incomplete one
        by the bytes received since it began."""

        def data_received(self, data: bytes) -> None:
            under_way = self._head_timer is not None
            super().data_received(data)
            if self._head_timer is not None and under_way and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > self._limits.max_head_bytes:
                    self._refuse_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_started()

        def on_headers_complete(self) -> None:
            self._head_finished()
            if not self._parsed_head_too_large(self.parser.get_method(), self.url, self.headers):
                super().on_headers_complete()
                return
            # uvicorn reads `self.app` here to start the request; an upgrade returns early and is refused below.
            app, self.app = self.app, self._answer_too_large
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def handle_websocket_upgrade(self) -> None:
            if self._parsed_head_too_large(self.scope["method"].encode(), self.url, self.headers):
                self._refuse_head()
                return
            super().handle_websocket_upgrade()
