"""The Starlette application: routes, lifespan, and the process's `Gateway`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute

from bifrost_rt.config import GatewayConfig, load_config
from bifrost_rt.http.calls import CallRelay
from bifrost_rt.http.client_secrets import ClientSecretEndpoint, RevokeEndpoint
from bifrost_rt.http.error_responses import error_response
from bifrost_rt.http.logs_api import LogsApi
from bifrost_rt.http.origin import origin_checked
from bifrost_rt.http.realtime import RealtimeWebSocketEndpoint
from bifrost_rt.http.turn_audio import TurnAudioApi
from bifrost_rt.policy.hooks import Plugin
from bifrost_rt.runtime.gateway import Gateway, Placement
from bifrost_rt.runtime.metrics import merge_expositions
from bifrost_rt.state.turn_writer import TurnSink

# What browsers may send on preflighted requests (SDKs add the agents and beta headers).
CORS_ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "OpenAI-Beta",
    "X-OpenAI-Agents-SDK",
    "OpenAI-Organization",
    "OpenAI-Project",
    "X-Stainless-Timeout",
    "baggage",
]


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


# A scrape or readiness probe asks each sibling worker for its own view (`?scope=worker`) and adds them up.
_SIBLING_TIMEOUT_S = 2.0


async def _from_siblings(gateway: Gateway, path: str, headers: dict[str, str]) -> list[httpx.Response]:
    """The siblings' answers to `path`; a worker that does not answer in time (restarting) is left out."""
    siblings = gateway.placement.siblings()
    replies = await asyncio.gather(
        *(gateway.http.get(f"{url}{path}", headers=headers, timeout=_SIBLING_TIMEOUT_S) for url in siblings), return_exceptions=True
    )
    return [reply for reply in replies if isinstance(reply, httpx.Response)]


def _log_routes(gateway: Gateway) -> list[Route]:
    if gateway.turn_log is None:
        return []
    api = LogsApi(gateway.turn_log, gateway.authenticator.is_admin)
    return [
        Route("/api/logs", api.logs, methods=["GET"]),
        Route("/api/logs/sessions/{session_id}", api.session_logs, methods=["GET"]),
        Route("/api/logs/sessions/{session_id}/summary", api.session_summary, methods=["GET"]),
    ]


def _ui_routes(gateway: Gateway) -> list[Mount]:
    if not gateway.config.ui.enabled:
        return []
    from bifrost_rt.http.ui import PREFIX, SessionUi  # Jinja2 loads only where the UI is enabled

    audio = gateway.audio.store if gateway.audio is not None else None
    return [Mount(PREFIX, app=SessionUi(gateway, gateway.turn_log, gateway.kv, audio).app())]


def _audio_routes(gateway: Gateway) -> list[Route]:
    if gateway.audio is None:
        return []
    api = TurnAudioApi(gateway.audio.store, gateway.authenticator.is_admin)
    return [Route("/api/logs/turns/{turn_id}/audio/{direction}", api.audio, methods=["GET"])]


def create_app(
    config: GatewayConfig | str | os.PathLike[str],
    *,
    turn_sinks: Iterable[TurnSink] | None = None,
    plugins: Iterable[Plugin] = (),
    placement: Placement | None = None,
) -> Starlette:
    """`plugins` are added before those named in the configuration; `placement` comes from `serve`."""
    if not isinstance(config, GatewayConfig):
        config = load_config(Path(config))
    gateway = Gateway(config, turn_sinks, plugins, placement)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    # Turn records reach the metrics only once the app runs, so the label can be chosen here.
    gateway.metrics.key_label = config.metrics.key_label
    metrics_token = config.metrics.bearer_token

    async def metrics(request: Request) -> Response:
        if metrics_token is not None and not _bearer_matches(request, metrics_token.get_secret_value()):
            refusal = error_response(401, "invalid_request_error", "invalid_api_key", "A valid bearer token is required for /metrics.")
            refusal.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return refusal
        own = generate_latest(gateway.metrics.registry)
        if request.query_params.get("scope") == "worker" or gateway.placement.siblings_dir is None:
            return Response(own, media_type=CONTENT_TYPE_LATEST)
        auth = {"authorization": request.headers["authorization"]} if "authorization" in request.headers else {}
        replies = await _from_siblings(gateway, "/metrics?scope=worker", auth)
        texts = [own.decode(), *(reply.text for reply in replies if reply.status_code == 200)]
        return Response(merge_expositions(texts), media_type=CONTENT_TYPE_LATEST)

    async def readyz(request: Request) -> JSONResponse:
        """This worker's state (every worker drains together); sessions and workers counted over the instance."""
        ready = gateway.ready and not gateway.registry.draining
        view = {"status": "ready" if ready else "draining", "sessions": len(gateway.registry), "workers": 1}
        if request.query_params.get("scope") != "worker" and gateway.placement.siblings_dir is not None:
            for reply in await _from_siblings(gateway, "/readyz?scope=worker", {}):
                try:
                    view["sessions"] += int(orjson.loads(reply.content)["sessions"])
                    view["workers"] += 1
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    pass
        return JSONResponse(view, status_code=200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()
            await calls.close()

    calls = CallRelay(gateway)
    cors = config.cors

    def checked(endpoint, on_refused=None):  # routes that act refuse a disallowed Origin before anything happens
        return origin_checked(cors, endpoint, on_refused)

    routes: list[Route | WebSocketRoute | Mount] = []
    # Each realtime route also lives under /openai/v1 and /openai, the paths Azure-shaped clients use; every prefix
    # routes the model (or Azure `deployment`) the same way, through `models:` and `default_provider`.
    for prefix in ("/v1", "/openai/v1", "/openai"):
        place_call = checked(calls.endpoint(prefix), gateway.registry.refuse)
        place_legacy_call = checked(calls.endpoint(prefix, legacy=True), gateway.registry.refuse)
        routes += [
            WebSocketRoute(f"{prefix}/realtime", RealtimeWebSocketEndpoint(gateway, calls, api_versioned=prefix == "/openai")),
            Route(f"{prefix}/realtime/calls", place_call, methods=["POST"]),
            Route(f"{prefix}/realtime", place_legacy_call, methods=["POST"]),  # legacy (beta) WebRTC
            Route(f"{prefix}/realtime/calls/{{call_id}}/hangup", checked(calls.hangup), methods=["POST"]),
            Route(f"{prefix}/realtime/client_secrets", checked(ClientSecretEndpoint(gateway, legacy=False).handle), methods=["POST"]),
            Route(f"{prefix}/realtime/sessions", checked(ClientSecretEndpoint(gateway, legacy=True).handle), methods=["POST"]),
        ]
    routes += [
        Route("/api/client_secrets/revoke", checked(RevokeEndpoint(gateway).handle), methods=["POST"]),
        *_log_routes(gateway),
        *_ui_routes(gateway),
        *_audio_routes(gateway),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=cors.allowed_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=CORS_ALLOWED_HEADERS,
            expose_headers=["Location"],
            max_age=cors.max_age_s,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.gateway = gateway
    app.state.calls = calls
    return app
