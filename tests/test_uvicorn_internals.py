"""The uvicorn, h11, httptools and websockets internals the request-head limits rely on (`runtime/http_limits.py`).

An upgrade that renames or reroutes any of it fails here, by name, before the limits silently stop applying.
"""

from __future__ import annotations

import inspect
import weakref

import h11
import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import Server, ServerState
from websockets import http11

from bifrost_rt.config import RealtimeConfig
from bifrost_rt.runtime import http_limits
from bifrost_rt.runtime.server import uvicorn_settings


async def _app(scope, receive, send) -> None:  # pragma: no cover - never called
    pass


def test_uvicorn_loads_the_protocol_classes_by_import_path() -> None:
    assert "import_from_string(HTTP_PROTOCOLS.get(self.http, self.http))" in inspect.getsource(Config.load)
    config = uvicorn.Config(_app, http=http_limits.H11_PROTOCOL)
    config.load()
    assert config.http_protocol_class is http_limits.LimitedH11Protocol
    assert uvicorn_settings(RealtimeConfig())["http"] in (http_limits.H11_PROTOCOL, http_limits.HTTPTOOLS_PROTOCOL)
    # Each connection's protocol is built with these keywords, so the limits must come from the config.
    assert "config=config" in inspect.getsource(Server.startup) and "server_state=self.server_state" in inspect.getsource(Server.startup)


def _protocol_classes() -> list[type]:
    classes: list[type] = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        pass
    else:
        classes.append(HttpToolsProtocol)
    return classes


@pytest.mark.parametrize("cls", _protocol_classes(), ids=lambda cls: cls.__name__)
def test_the_shared_protocol_state_used(cls: type) -> None:
    state = ServerState()
    assert isinstance(state.default_headers, list)  # written before the 431, as uvicorn's own responses do
    assert weakref.ref(state)() is state  # pending connections are kept per server, weakly
    init = inspect.getsource(cls.__init__)
    assert "self.config = config" in init and "self.server_state = server_state" in init and "self.loop = " in init
    assert list(inspect.signature(cls.connection_made).parameters) == ["self", "transport"]
    assert list(inspect.signature(cls.connection_lost).parameters) == ["self", "exc"]
    assert "self.transport = transport" in inspect.getsource(cls.connection_made)


def test_the_h11_protocol_entry_points() -> None:
    assert "self.conn = h11.Connection(" in inspect.getsource(H11Protocol.__init__)
    assert isinstance(h11.Connection.their_state, property) and isinstance(h11.Connection.trailing_data, property)
    assert h11.Connection(h11.SERVER).their_state is h11.IDLE
    assert list(inspect.signature(H11Protocol.data_received).parameters) == ["self", "data"]
    assert list(inspect.signature(H11Protocol.handle_websocket_upgrade).parameters) == ["self", "event"]
    events = inspect.getsource(H11Protocol.handle_events)
    # The upgrade is handed over from the parsed request, whose lowercased headers are on the protocol.
    assert "self.headers = [(key.lower(), value) for key, value in event.headers]" in events
    assert "self.handle_websocket_upgrade(event)" in events
    assert "for name, value in self.headers:" in inspect.getsource(H11Protocol.handle_websocket_upgrade)


def test_the_httptools_protocol_entry_points() -> None:
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(http_limits.LimitedHttpToolsProtocol, HttpToolsProtocol)
    init = inspect.getsource(HttpToolsProtocol.__init__)
    assert "self.app = config.loaded_app" in init and "self.parser = httptools.HttpRequestParser(self)" in init
    assert "self.server_state = server_state" in init and "self.loop = " in init
    # The app for a request is read from `self.app` when its head completes; an upgrade returns before that.
    complete = inspect.getsource(HttpToolsProtocol.on_headers_complete)
    assert "app = self.app" in complete and "if self.parser.should_upgrade() and self._should_upgrade():\n            return" in complete
    begin = inspect.getsource(HttpToolsProtocol.on_message_begin)
    assert "self.url = b\"\"" in begin and "\"headers\": self.headers" in begin
    assert "self.headers.append((name, value))" in inspect.getsource(HttpToolsProtocol.on_header)
    assert list(inspect.signature(HttpToolsProtocol.handle_websocket_upgrade).parameters) == ["self"]
    assert "self.handle_websocket_upgrade()" in inspect.getsource(HttpToolsProtocol.data_received)
    upgrade = inspect.getsource(HttpToolsProtocol.handle_websocket_upgrade)
    assert "self.url" in upgrade and "self.scope[\"headers\"]" in upgrade


def test_the_websockets_limits_measured_against() -> None:
    # uvicorn's sans-I/O WebSocket protocol parses the rebuilt head with these limits.
    assert http_limits.MAX_LINE_BYTES == http11.MAX_LINE_LENGTH
    assert http_limits.MAX_HEADER_LINES == http11.MAX_NUM_HEADERS
    assert "read_line(MAX_LINE_LENGTH)" in inspect.getsource(http11.parse_line)
    assert "range(MAX_NUM_HEADERS + 1)" in inspect.getsource(http11.parse_headers)
