"""The simulator's ASGI app: WebSocket `/v1/realtime` (and `/realtime`), `POST /v1/realtime/client_secrets`,
WebRTC calls `POST /v1/realtime/calls` and `POST /v1/realtime/calls/{call_id}/hangup` (also without `/v1`),
`GET /healthz`.

Handshake failures follow the API: the upgrade succeeds, then an `error` event and an application close code
(3000 for credentials, 4000 for the retired beta shape) with reason `<error.type>.<error.code>`.

With `flavor="azure"` the same sessions are served at an Azure OpenAI resource's paths instead (see `azure.py`),
in beta shapes on the preview path (see `beta.py`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from aiortc.exceptions import InvalidAccessError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.config import WS_PROTOCOLS

from bifrost_rt.rtc.offers import OfferError, read_offer
from bifrost_rt.tools.simulator import azure, beta
from bifrost_rt.tools.simulator.azure import AzureRefusal
from bifrost_rt.tools.simulator.config import apply_session_update, fresh_copy, new_realtime_session, new_transcription_session
from bifrost_rt.tools.simulator.events import ClientError
from bifrost_rt.tools.simulator.ids import new_client_secret, new_id
from bifrost_rt.tools.simulator.options import SimulatorOptions
from bifrost_rt.tools.simulator.session import RealtimeSession
from bifrost_rt.tools.simulator.webrtc import Calls

logger = logging.getLogger("bifrost_rt.simulator")

_TRANSPORT_KEY = "bifrost_rt.simulator.transport"
_KEY_PROTOCOL = "openai-insecure-api-key."
_BETA_MESSAGE = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
_MISSING_KEY_MESSAGE = "Missing bearer or basic authentication in header"
_WRONG_KEY_MESSAGE = "Incorrect API key provided."
_SECRET_TTL_S = (10, 7200, 600)  # min, max, default
MAX_OFFER_BYTES = 64 * 1024


class ClientSecrets:
    """Ephemeral keys issued by `POST /v1/realtime/client_secrets`, each with the session config it carries."""

    def __init__(self) -> None:
        self._secrets: dict[str, tuple[int, dict[str, Any]]] = {}

    def issue(self, session: dict[str, Any], ttl_s: int) -> tuple[str, int]:
        now = time.time()
        self._secrets = {k: v for k, v in self._secrets.items() if v[0] > now}
        value, expires_at = new_client_secret(), int(now) + ttl_s
        self._secrets[value] = (expires_at, session)
        return value, expires_at

    def session_for(self, value: str) -> dict[str, Any] | None:
        """The secret's session config, or None when the secret is unknown or expired."""
        entry = self._secrets.get(value)
        if entry is None or entry[0] <= time.time():
            return None
        return entry[1]


class _ExposeTransport:
    """Puts the server's transport in the scope so the `drop` fault can cut TCP without a close frame.

    ASGI has no abort primitive; uvicorn's WebSocket protocols pass a bound `send` whose owner holds the transport.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                scope[_TRANSPORT_KEY] = transport
        await self.app(scope, receive, send)


class _ResourceHeaders:
    """Azure flavor: every answer, HTTP or WebSocket handshake, names the resource as Azure does."""

    def __init__(self, app: ASGIApp, region: str) -> None:
        self.app = app
        self.region = region

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start", "websocket.accept"):
                extra = [(k.encode(), v.encode()) for k, v in azure.resource_headers(self.region).items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Peer:
    """A WebSocket as the session sees it; sends after the client has gone are dropped."""

    def __init__(self, websocket: WebSocket) -> None:
        self.closed = False
        self._websocket = websocket
        self._transport = websocket.scope.get(_TRANSPORT_KEY)

    async def send(self, text: str) -> None:
        if self.closed:
            return
        try:
            await self._websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._websocket.close(code, reason)
        except (RuntimeError, OSError):
            logger.debug("close after the client went away", exc_info=True)

    async def abort(self) -> None:
        if self.closed:
            return
        if self._transport is None:
            logger.warning("this server does not expose its transport; closing with 1011 instead of dropping TCP")
            await self.close(1011, "server_error")
            return
        self.closed = True
        self._transport.abort()


class _BetaPeer:
    """A peer that speaks the beta protocol: each GA event is sent in its beta shape, or not at all."""

    def __init__(self, peer: _Peer) -> None:
        self._peer = peer

    @property
    def closed(self) -> bool:
        return self._peer.closed

    async def send(self, text: str) -> None:
        event = beta.to_beta(orjson.loads(text))
        if event is not None:
            await self._peer.send(orjson.dumps(event).decode())

    async def close(self, code: int, reason: str) -> None:
        await self._peer.close(code, reason)

    async def abort(self) -> None:
        await self._peer.abort()


def _beta_to_ga(data: str | bytes) -> str | bytes:
    """A beta client event rewritten to GA; what does not parse reaches the session as it came, to be refused."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    return orjson.dumps(beta.to_ga(event)).decode() if isinstance(event, dict) else data


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _json(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _http_error(
    status_code: int, message: str, code: str | None, param: str | None = None, type: str = "invalid_request_error"
) -> Response:
    error = {"message": message, "type": type, "param": param, "code": code}
    return _json({"error": error}, status_code)


async def _refuse(websocket: WebSocket, message: str, code: str | None, close_code: int, reason: str) -> None:
    """The API's fatal handshake answer: an `error` event, then an application close code."""
    error = {"type": "invalid_request_error", "code": code, "message": message, "param": None, "event_id": None}
    try:
        await websocket.send_text(orjson.dumps({"type": "error", "event_id": new_id("event"), "error": error}).decode())
        await websocket.close(close_code, reason)
    except (WebSocketDisconnect, RuntimeError, OSError):
        logger.debug("client left during a refused handshake", exc_info=True)


def create_simulator_app(options: SimulatorOptions | None = None) -> Starlette:
    options = options or SimulatorOptions()
    secrets = ClientSecrets()
    calls = Calls(options)
    live_sessions = 0

    def key_status(key: str) -> tuple[bool, dict[str, Any] | None]:
        """(accepted, the client secret's session when the key is one)."""
        if key.startswith("ek_"):
            session = secrets.session_for(key)
            return session is not None, session
        return options.api_keys is None or key in options.api_keys, None

    async def realtime(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        key = _bearer(websocket.headers) or next(
            (p[len(_KEY_PROTOCOL):] for p in offered if p.startswith(_KEY_PROTOCOL) and len(p) > len(_KEY_PROTOCOL)),
            None,
        )
        if key is None:
            await _refuse(websocket, _MISSING_KEY_MESSAGE, None, 3000, "invalid_request_error.invalid_api_key")
            return
        accepted, secret_session = key_status(key)
        if not accepted:
            await _refuse(websocket, _WRONG_KEY_MESSAGE, "invalid_api_key", 3000,
                          "invalid_request_error.invalid_api_key")
            return
        if "realtime=v1" in websocket.headers.get("openai-beta", "") or "openai-beta.realtime-v1" in offered:
            await _refuse(websocket, _BETA_MESSAGE, "beta_api_shape_disabled", 4000,
                          "invalid_request_error.beta_api_shape_disabled")
            return

        query = websocket.query_params
        if secret_session is not None:
            config = fresh_copy(secret_session)
        elif query.get("intent") == "transcription":
            config = new_transcription_session()
        else:
            config = new_realtime_session(query.get("model") or options.model)
        await serve_session(websocket, _Peer(websocket), config)

    async def serve_session(websocket: WebSocket, peer: _Peer | _BetaPeer, config: dict[str, Any]) -> None:
        nonlocal live_sessions
        session = RealtimeSession(peer, options, config)
        translate = isinstance(peer, _BetaPeer)
        live_sessions += 1
        try:
            await session.start()
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes")
                if data is not None:
                    await session.handle(_beta_to_ga(data) if translate else data)
        finally:
            live_sessions -= 1
            await session.stop()

    def azure_key(headers: Headers, query: Any) -> dict[str, Any] | None:
        """The client secret's session when the key is one; raises AzureRefusal for a missing or wrong key."""
        key, _ = azure.presented_key(headers, query)
        if key is None:
            raise azure.missing_key()
        accepted, secret_session = key_status(key)
        if not accepted:
            raise azure.missing_key()
        return secret_session

    async def azure_realtime(websocket: WebSocket, preview_path: bool) -> None:
        """An Azure resource's realtime socket: every refusal is an HTTP answer with Azure's JSON, before the upgrade."""
        query = websocket.query_params
        try:
            speaks_beta = azure.preview_version(query) if preview_path else False
            secret_session = azure_key(websocket.headers, query)
            deployment = query.get("deployment") if preview_path else query.get("model")
            model = None if secret_session is not None else azure.deployment_model(
                deployment, query.get("intent"), options.azure_deployments
            )
        except AzureRefusal as refusal:
            await websocket.send_denial_response(azure.error_response(refusal))
            return
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        if secret_session is not None:
            config = fresh_copy(secret_session)
        elif model is None:
            config = new_transcription_session()
        else:
            config = new_realtime_session(model)
        await serve_session(websocket, _BetaPeer(_Peer(websocket)) if speaks_beta else _Peer(websocket), config)

    async def azure_ga(websocket: WebSocket) -> None:
        await azure_realtime(websocket, preview_path=False)

    async def azure_preview(websocket: WebSocket) -> None:
        await azure_realtime(websocket, preview_path=True)

    def request_key(request: Request) -> str | None:
        if options.flavor == "azure":
            return azure.presented_key(request.headers, request.query_params)[0]
        return _bearer(request.headers)

    def key_refusal(missing: bool) -> Response:
        if options.flavor == "azure":
            return azure.error_response(azure.missing_key())
        return _http_error(401, _MISSING_KEY_MESSAGE, None) if missing else _http_error(401, _WRONG_KEY_MESSAGE, "invalid_api_key")

    async def client_secrets(request: Request) -> Response:
        key = request_key(request)
        if key is None:
            return key_refusal(missing=True)
        if key.startswith("ek_") or not key_status(key)[0]:
            return key_refusal(missing=False)
        body = await request.body()
        try:
            payload = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return _http_error(400, "We could not parse the JSON body of your request.", None)
        if not isinstance(payload, dict):
            return _http_error(400, "The request body must be a JSON object.", "invalid_type")
        for field in payload:
            if field not in ("expires_after", "session"):
                return _http_error(400, f"Unknown parameter: '{field}'.", "unknown_parameter", field)

        # Null reads as unset, here as in realtime events.
        expires_after = payload.get("expires_after") or {}
        if not isinstance(expires_after, dict):
            return _http_error(400, "Invalid type for 'expires_after': expected an object.", "invalid_type",
                               "expires_after")
        low, high, default = _SECRET_TTL_S
        ttl = default if expires_after.get("seconds") is None else expires_after["seconds"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not low <= ttl <= high:
            return _http_error(400, f"Invalid 'expires_after.seconds': expected an integer between {low} and {high}.",
                               "invalid_value", "expires_after.seconds")
        if expires_after.get("anchor") not in (None, "created_at"):
            return _http_error(400, "Invalid 'expires_after.anchor': only 'created_at' is supported.",
                               "invalid_value", "expires_after.anchor")

        requested = payload.get("session") or {"type": "realtime"}
        kind = requested.get("type") if isinstance(requested, dict) else None
        if options.flavor == "azure" and kind != "transcription":
            try:
                model = requested.get("model") if isinstance(requested, dict) else None
                requested = {**requested, "model": azure.deployment_model(model, None, options.azure_deployments)}
            except AzureRefusal as refusal:
                return azure.error_response(refusal)
        base = new_transcription_session() if kind == "transcription" else new_realtime_session(options.model)
        try:
            session = apply_session_update(base, requested)
        except ClientError as exc:
            return _http_error(400, exc.message, exc.code, exc.param)
        value, expires_at = secrets.issue(session, ttl)
        return _json({"value": value, "expires_at": expires_at, "session": session})

    def call_auth(request: Request) -> tuple[Response | None, dict[str, Any] | None]:
        """(the refusal when the key is missing or wrong, the client secret's session when the key is one)."""
        key = request_key(request)
        if key is None:
            return key_refusal(missing=True), None
        accepted, secret_session = key_status(key)
        if not accepted:
            return key_refusal(missing=False), None
        return None, secret_session

    async def create_call(request: Request) -> Response:
        refused, secret_session = call_auth(request)
        if refused is not None:
            return refused
        try:
            offer, requested = await read_offer(request, MAX_OFFER_BYTES)
            if secret_session is not None:
                base = fresh_copy(secret_session)
            elif isinstance(requested, dict) and requested.get("type") == "transcription":
                base = new_transcription_session()
            elif options.flavor == "azure":
                deployment = request.query_params.get("model") or (requested or {}).get("model")
                base = new_realtime_session(azure.deployment_model(deployment, None, options.azure_deployments))
                requested = {**requested, "model": base["model"]} if isinstance(requested, dict) else None
            else:
                base = new_realtime_session(request.query_params.get("model") or options.model)
            config = base if requested is None else apply_session_update(base, requested)
        except (ClientError, OfferError) as exc:
            return _http_error(400, exc.message, exc.code, exc.param)
        except AzureRefusal as refusal:
            return azure.error_response(refusal)
        # No await between this check and `calls.open` taking its place: concurrent requests cannot overshoot.
        if calls.full:
            return _http_error(429, f"Too many concurrent calls: this server takes at most {options.webrtc_max_calls}.",
                               "rate_limit_exceeded", type="requests")
        try:
            call_id, answer = await calls.open(offer, config)
        except (ValueError, InvalidAccessError) as exc:
            return _http_error(400, f"Invalid SDP offer: {exc}", "invalid_offer", "sdp")
        calls_path = "/openai/v1/realtime/calls" if options.flavor == "azure" else "/v1/realtime/calls"
        return Response(answer, status_code=201, media_type="application/sdp", headers={"Location": f"{calls_path}/{call_id}"})

    async def hangup(request: Request) -> Response:
        refused, _ = call_auth(request)
        if refused is not None:
            return refused
        call_id = request.path_params["call_id"]
        call = calls.get(call_id)
        if call is None:
            return _http_error(404, f"Call with id '{call_id}' not found.", "call_not_found", "call_id")
        await call.hang_up()
        return Response(status_code=200)

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok", "sessions": live_sessions, "calls": len(calls)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await calls.close_all()

    if options.flavor == "azure":
        routes = [
            WebSocketRoute("/openai/v1/realtime", azure_ga),
            WebSocketRoute("/openai/realtime", azure_preview),
            Route("/openai/v1/realtime/client_secrets", client_secrets, methods=["POST"]),
            Route("/openai/v1/realtime/calls", create_call, methods=["POST"]),
            Route("/openai/v1/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
        ]
        middleware = [Middleware(_ExposeTransport), Middleware(_ResourceHeaders, region=options.azure_region)]
    else:
        routes = [
            WebSocketRoute("/v1/realtime", realtime),
            WebSocketRoute("/realtime", realtime),
            Route("/v1/realtime/client_secrets", client_secrets, methods=["POST"]),
            Route("/v1/realtime/calls", create_call, methods=["POST"]),
            Route("/realtime/calls", create_call, methods=["POST"]),
            Route("/v1/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
            Route("/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
        ]
        middleware = [Middleware(_ExposeTransport)]
    return Starlette(routes=[*routes, Route("/healthz", healthz)], middleware=middleware, lifespan=lifespan)


def websocket_implementation() -> str:
    """uvicorn's sans-I/O websockets protocol where this uvicorn has it (0.35+), else the classic one."""
    return "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"


def run_simulator(host: str = "127.0.0.1", port: int = 8765, options: SimulatorOptions | None = None) -> None:
    """Serves the simulator until interrupted."""
    uvicorn.run(create_simulator_app(options), host=host, port=port, log_level="warning",
                ws=websocket_implementation())
