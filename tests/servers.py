"""Test helper: serve an ASGI app with uvicorn on a local port from a background thread.

    with ServerThread(app) as server:        # port 0 picks a free port; start() returns once it is listening
        connect(f"{server.ws_url}/v1/realtime")

The app runs on its own event loop in the thread, so tests may drive it from any loop (including pytest-asyncio's).
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn

from bifrost_rt.runtime import ws_protocol

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """A uvicorn server that reports when it is listening."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._ready.set()


class ServerThread:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        """`config` overrides uvicorn.Config settings (e.g. `timeout_graceful_shutdown=1`)."""
        self.host = host
        self.app = app
        self._ready = threading.Event()
        settings: dict[str, Any] = {
            "ws": ws_protocol.PROTOCOL,
            "lifespan": "on",
            "log_level": "warning",
            "timeout_graceful_shutdown": 2,
            **config,
        }
        self._server = _Server(uvicorn.Config(app, host=host, port=port, **settings), self._ready)
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._authority}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._authority}"

    @property
    def _authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S) or not self._server.started:
            self.stop()
            raise RuntimeError(f"server on port {self.port} did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(SHUTDOWN_TIMEOUT_S)
        self._socket.close()

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._ready.set()  # unblocks start() when startup failed

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
