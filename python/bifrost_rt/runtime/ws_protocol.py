"""uvicorn's sans-I/O WebSocket protocol, plus a way for the gateway to drop a client that stopped reading.

ASGI has no call that aborts a connection: once the app returns, uvicorn closes the transport gracefully, which
waits for the client to take the buffered bytes — forever, for a client that stopped reading. The protocol puts
the transport's `abort` in the scope (`bifrost_rt.abort`), which the WebSocket transport calls when its bounded
close fails.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from bifrost_rt.wire.websocket import ABORT_EXTENSION


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][ABORT_EXTENSION] = self.transport.abort


# uvicorn takes the protocol as an import string.
PROTOCOL = f"{__name__}:AbortableWebSocketProtocol"
