"""The simulator's ASGI app: WebSocket `/v1/realtime` (and `/realtime`), `POST /v1/realtime/client_secrets`,
WebRTC calls `POST /v1/realtime/calls` and `POST /v1/realtime/calls/{call_id}/hangup` (also without `/v1`),
`GET /healthz`, and Gemini Live's `BidiGenerateContent` WebSocket (gemini.py) beside them.

Handshake failures follow the API: the upgrade succeeds, then an `error` event and an application close code
(3000 for credentials, 4000 for the retired beta shape) with reason `<error.type>.<error.code>`.
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
from bifrost_rt.tools.simulator import gemini
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
# Gemini Live (google-genai's `live.py`): the Google AI path for any API version, and Vertex AI's.
GEMINI_PATH = "/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"
GEMINI_VERTEX_PATH = "/ws/google.cloud.aiplatform.{version}.LlmBidiService/BidiGenerateContent"


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
    gemini_handles: dict[str, gemini.Conversation] = {}

    def key_status(key: str) -> tuple[bool, dict[str, Any] | None]:
        """(accepted, the client secret's session when the key is one)."""
        if key.startswith("ek_"):
            session = secrets.session_for(key)
            return session is not None, session
        return options.api_keys is None or key in options.api_keys, None

    async def realtime(websocket: WebSocket) -> None:
        nonlocal live_sessions
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

        session = RealtimeSession(_Peer(websocket), options, config)
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
                    await session.handle(data)
        finally:
            live_sessions -= 1
            await session.stop()

    async def gemini_live(websocket: WebSocket) -> None:
        nonlocal live_sessions
        live_sessions += 1
        try:
            await gemini.serve(websocket, options, gemini_handles)
        finally:
            live_sessions -= 1

    async def client_secrets(request: Request) -> Response:
        key = _bearer(request.headers)
        if key is None:
            return _http_error(401, _MISSING_KEY_MESSAGE, None)
        if key.startswith("ek_") or not key_status(key)[0]:
            return _http_error(401, _WRONG_KEY_MESSAGE, "invalid_api_key")
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
        base = new_transcription_session() if kind == "transcription" else new_realtime_session(options.model)
        try:
            session = apply_session_update(base, requested)
        except ClientError as exc:
            return _http_error(400, exc.message, exc.code, exc.param)
        value, expires_at = secrets.issue(session, ttl)
        return _json({"value": value, "expires_at": expires_at, "session": session})

    def call_auth(request: Request) -> tuple[Response | None, dict[str, Any] | None]:
        """(the refusal when the key is missing or wrong, the client secret's session when the key is one)."""
        key = _bearer(request.headers)
        if key is None:
            return _http_error(401, _MISSING_KEY_MESSAGE, None), None
        accepted, secret_session = key_status(key)
        if not accepted:
            return _http_error(401, _WRONG_KEY_MESSAGE, "invalid_api_key"), None
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
            else:
                base = new_realtime_session(request.query_params.get("model") or options.model)
            config = base if requested is None else apply_session_update(base, requested)
        except (ClientError, OfferError) as exc:
            return _http_error(400, exc.message, exc.code, exc.param)
        # No await between this check and `calls.open` taking its place: concurrent requests cannot overshoot.
        if calls.full:
            return _http_error(429, f"Too many concurrent calls: this server takes at most {options.webrtc_max_calls}.",
                               "rate_limit_exceeded", type="requests")
        try:
            call_id, answer = await calls.open(offer, config)
        except (ValueError, InvalidAccessError) as exc:
            return _http_error(400, f"Invalid SDP offer: {exc}", "invalid_offer", "sdp")
        return Response(answer, status_code=201, media_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call_id}"})

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

    return Starlette(
        routes=[
            WebSocketRoute("/v1/realtime", realtime),
            WebSocketRoute("/realtime", realtime),
            Route("/v1/realtime/client_secrets", client_secrets, methods=["POST"]),
            Route("/v1/realtime/calls", create_call, methods=["POST"]),
            Route("/realtime/calls", create_call, methods=["POST"]),
            Route("/v1/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
            Route("/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
            Route("/healthz", healthz),
            WebSocketRoute(GEMINI_PATH, gemini_live),
            WebSocketRoute(GEMINI_VERTEX_PATH, gemini_live),
        ],
        middleware=[Middleware(_ExposeTransport)],
        lifespan=lifespan,
    )


def websocket_implementation() -> str:
    """uvicorn's sans-I/O websockets protocol where this uvicorn has it (0.35+), else the classic one."""
    return "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"


def run_simulator(host: str = "127.0.0.1", port: int = 8765, options: SimulatorOptions | None = None) -> None:
    """Serves the simulator until interrupted."""
    uvicorn.run(create_simulator_app(options), host=host, port=port, log_level="warning",
                ws=websocket_implementation())
