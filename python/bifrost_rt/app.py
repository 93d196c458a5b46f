"""The Starlette application: routes, lifespan, and the process's `Gateway`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from .config import GatewayConfig, load_config
from .gateway import Gateway
from .transports.ws import RealtimeWebSocketEndpoint
from .turns import TurnSink


def create_app(config: GatewayConfig | str | os.PathLike[str], *, turn_sinks: Iterable[TurnSink] | None = None) -> Starlette:
    if not isinstance(config, GatewayConfig):
        config = load_config(Path(config))
    gateway = Gateway(config, turn_sinks)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if gateway.registry.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready", "sessions": len(gateway.registry)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    routes = [
        WebSocketRoute("/v1/realtime", RealtimeWebSocketEndpoint(gateway)),
        WebSocketRoute("/openai/v1/realtime", RealtimeWebSocketEndpoint(gateway, path_provider="openai")),
        WebSocketRoute("/openai/realtime", RealtimeWebSocketEndpoint(gateway, path_provider="openai")),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app
