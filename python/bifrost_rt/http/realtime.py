"""The WebSocket relay: a raw ASGI endpoint that forwards frames byte-for-byte in both directions.

Every refusal happens before an upstream connection is opened. The upstream connection is opened before the
client's handshake completes, so no client frame ever needs buffering. Each frame is observed by the
session core and forwarded as the same string object; nothing is re-serialised.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bifrost_rt import __version__, errors
from bifrost_rt.policy.auth import Principal, presented_credential
from bifrost_rt.errors import RealtimeError, new_id
from bifrost_rt.runtime.gateway import Gateway
from bifrost_rt.policy.hooks import Decision, HookPipeline
from bifrost_rt.providers import Route
from bifrost_rt.core.registry import SessionRegistry
from bifrost_rt.core.session import RealtimeSession
from bifrost_rt.http.admission import admit
from bifrost_rt.http.calls import CallRelay
from bifrost_rt.http.handshake import baggage_session_id, scope_headers, scope_query

logger = logging.getLogger("bifrost_rt.ws")
# websockets logs handshake headers and frames at DEBUG; for upstream connections that would print the provider
# key and conversation content, so their logger never goes below INFO.
upstream_logger = logging.getLogger("bifrost_rt.upstream")
upstream_logger.setLevel(logging.INFO)

Scope = dict[str, Any]


@dataclass(slots=True)
class _Ending:
    """How a relay ended: what the client is told, what upstream is told, and how open turns are recorded."""

    turn_status: str
    reason: str
    client_error: RealtimeError | None = None  # error event + close to the client
    client_close: tuple[int, str] | None = None  # close the client with this code/reason, no event
    upstream_close: tuple[int, str] | None = (errors.CLOSE_NORMAL, "")
    turn_error: dict[str, Any] | None = None


def _sendable(code: int) -> bool:
    return code not in errors.UNSENDABLE_CLOSE_CODES and (1000 <= code <= 1014 or 3000 <= code <= 4999)


def _upstream_closed(exc: ConnectionClosed) -> _Ending:
    close = exc.rcvd
    if close is None:  # the TCP connection dropped without a close frame
        return _Ending(
            "failed",
            "upstream_connection_lost",
            client_error=errors.upstream_lost(),
            upstream_close=None,
            turn_error={"type": "server_error", "code": "upstream_connection_lost"},
        )
    code, reason = close.code, close.reason
    if not _sendable(code):
        code = errors.CLOSE_NORMAL if code == 1005 else errors.CLOSE_INTERNAL
    failed = code not in (errors.CLOSE_NORMAL, errors.CLOSE_GOING_AWAY)
    return _Ending(
        "failed" if failed else "interrupted",
        f"upstream_closed:{close.code}",
        client_close=(code, reason),
        upstream_close=None,
        turn_error={"type": "server_error", "code": "upstream_closed", "close_code": close.code, "close_reason": reason}
        if failed
        else None,
    )


class RealtimeWebSocketEndpoint:
    """ASGI app for `GET /v1/realtime` (and its aliases); `path_provider` is implied by `/openai/...` paths."""

    def __init__(self, gateway: Gateway, path_provider: str | None = None, calls: CallRelay | None = None) -> None:
        self.gateway = gateway
        self.path_provider = path_provider
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        if (await receive())["type"] != "websocket.connect":
            return
        gateway = self.gateway
        headers = scope_headers(scope)
        subprotocols: list[str] = list(scope.get("subprotocols") or ())
        # Browsers fail the handshake unless one offered protocol is selected; never echo the key protocol.
        selected = "realtime" if "realtime" in subprotocols else None
        if gateway.registry.draining:
            await _reject_before_upgrade(scope, send, 503, errors.shutting_down())
            return
        if not gateway.config.cors.allows(headers.get("origin")):
            gateway.registry.refuse("origin_not_allowed")
            await _reject_before_upgrade(scope, send, 403, errors.origin_not_allowed())
            return
        query = scope_query(scope)
        call_id = query.get("call_id")
        if call_id and self.calls is not None:  # a sideband socket for a call this gateway holds
            await self.calls.serve_sideband(call_id, presented_credential(headers, subprotocols), selected, receive, send)
            return
        admission = await self._admit(headers, subprotocols, query)
        if isinstance(admission, RealtimeError):
            gateway.registry.refuse(admission.code or admission.type)
            await _refuse(send, selected, admission)
            return
        principal, route, upstream_credential = admission
        session_id = new_id("sess_bf")
        refusal = await gateway.governance.admit(principal.key_id, session_id)
        if refusal is not None:
            gateway.registry.refuse(refusal.code)
            await _refuse(send, selected, errors.governance_refusal(refusal.type, refusal.code, refusal.message))
            return
        try:
            try:
                upstream = await self._connect_upstream(route, headers, subprotocols, query, upstream_credential)
            except _UpstreamRefused as refused:
                gateway.registry.refuse(refused.error.code or "upstream_unavailable")
                await _refuse(send, selected, refused.error)
                return
            session = gateway.new_session(
                principal=principal, route=route, transport="websocket", session_group=baggage_session_id(headers), session_id=session_id
            )
            try:
                await send({"type": "websocket.accept", "subprotocol": selected})
            except OSError:
                await upstream.close()
                return
            await _Relay(session, upstream, receive, send, gateway.config.realtime.max_frame_bytes, gateway.registry, gateway.hooks).run()
        finally:
            await gateway.governance.release(principal.key_id, session_id)

    async def _admit(
        self, headers: dict[str, str], subprotocols: list[str], query: dict[str, str]
    ) -> tuple[Principal, Route, str | None] | RealtimeError:
        """The principal, the route and the upstream credential (None: the provider key), or why not."""
        admission = await admit(
            self.gateway,
            presented_credential(headers, subprotocols),
            query.get("model") or None,
            self.path_provider,
            model_required=not query.get("intent"),
        )
        if isinstance(admission, RealtimeError):
            return admission
        if not self.gateway.registry.has_room():
            return errors.too_many_sessions()
        return admission.principal, admission.route, admission.upstream_credential

    async def _connect_upstream(
        self, route: Route, headers: dict[str, str], subprotocols: list[str], query: dict[str, str], credential: str | None
    ) -> ClientConnection:
        limits = self.gateway.config.realtime
        try:
            return await websockets.connect(
                route.upstream_url(query),
                additional_headers=route.upstream_headers(headers, subprotocols, credential),
                user_agent_header=f"bifrost-rt/{__version__}",
                compression="deflate" if limits.permessage_deflate else None,
                max_size=None,  # the client side enforces the frame cap; upstream frames are trusted in size
                ping_interval=limits.upstream_ping_interval_s,
                ping_timeout=limits.upstream_ping_timeout_s,
                open_timeout=limits.upstream_connect_timeout_s,
                close_timeout=2,
                logger=upstream_logger,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            logger.warning("upstream %s refused the realtime handshake: HTTP %s", route.provider_name, status)
            raise _UpstreamRefused(
                RealtimeError(
                    "server_error",
                    "upstream_unavailable",
                    f"The realtime provider refused the connection (HTTP {status}).",
                    close_code=errors.CLOSE_INTERNAL,
                )
            ) from None
        except (OSError, TimeoutError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
            logger.warning("upstream %s unreachable: %s", route.provider_name, type(exc).__name__)
            raise _UpstreamRefused(errors.upstream_unavailable()) from None


class _UpstreamRefused(Exception):
    def __init__(self, error: RealtimeError) -> None:
        self.error = error


async def _reject_before_upgrade(scope: Scope, send: Any, status: int, error: RealtimeError) -> None:
    """Answer with a plain HTTP error when the server supports it, else refuse the handshake (403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = error.http_body()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _refuse(send: Any, subprotocol: str | None, error: RealtimeError) -> None:
    """Complete the handshake, send one error event, close with the error's code, as OpenAI does."""
    try:
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        await send({"type": "websocket.send", "text": error.event()})
        await send({"type": "websocket.close", "code": error.close_code or errors.CLOSE_PROTOCOL, "reason": error.close_reason})
    except OSError:
        pass


class _Relay:
    """Two loops (client→upstream, upstream→client); the first to end decides how both sides close."""

    def __init__(
        self,
        session: RealtimeSession,
        upstream: ClientConnection,
        receive: Any,
        send: Any,
        max_frame_bytes: int,
        registry: SessionRegistry,
        hooks: HookPipeline,
    ) -> None:
        self.session = session
        self.registry = registry
        self.hooks = hooks
        self.upstream = upstream
        self.receive = receive
        self.send = send
        self.max_frame_bytes = max_frame_bytes
        self.frames_up = 0
        self.frames_down = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.in_client_send = False
        self._ending: _Ending | None = None
        self._tasks: list[asyncio.Task[_Ending]] = []

    # LiveSession protocol (registry supervision)
    def activity(self) -> int:
        return self.frames_up + self.frames_down

    def relayed(self) -> dict[str, int]:
        return {"frames_up": self.frames_up, "frames_down": self.frames_down, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def blocked_on_client(self) -> bool:
        return self.in_client_send

    async def refuse_started_turn(self, response_id: str, decision: Decision) -> None:
        """SessionControls: cancel a provider-started turn that plugins denied, and tell the client why."""
        refusal = decision.as_error()
        if decision.action == "disconnect":
            self.end(refusal)
            return
        try:
            await self.upstream.send(orjson.dumps({"type": "response.cancel", "response_id": response_id}).decode())
        except ConnectionClosed:
            return
        await self._send_client_text(refusal.event())

    def end(self, error: RealtimeError, *, upstream_code: int = errors.CLOSE_NORMAL) -> None:
        if self._ending is None:
            self._ending = _Ending("interrupted", error.code or error.type, client_error=error, upstream_close=(upstream_code, ""))
        for task in self._tasks:
            task.cancel()

    async def run(self) -> None:
        self.registry.add(self)
        self.session.controls = self
        self.hooks.session_started(self.session.info)
        self._tasks = [
            asyncio.create_task(self._client_to_upstream()),
            asyncio.create_task(self._upstream_to_client()),
        ]
        try:
            try:
                done, pending = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                self.end(errors.shutting_down(), upstream_code=errors.CLOSE_GOING_AWAY)
                done, pending = set(self._tasks), set()
            for task in pending:
                task.cancel()
            ending = self._ending or self._result(done)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            # The session is over once its loops end; the closing handshakes below must not hold its slot.
            self.registry.remove(self)
        await self._close(ending)

    def _result(self, done: set[asyncio.Task[_Ending]]) -> _Ending:
        for task in done:
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                return task.result()
            logger.error("session %s: relay failed", self.session.id, exc_info=exc)
        error = RealtimeError("server_error", "internal_error", "The gateway hit an internal error.", close_code=errors.CLOSE_INTERNAL)
        return _Ending("failed", "internal_error", client_error=error, turn_error={"type": "server_error", "code": "internal_error"})

    async def _client_to_upstream(self) -> _Ending:
        receive = self.receive
        send_upstream = self.upstream.send
        observe = self.session.on_client_frame
        limit = self.max_frame_bytes
        # A str of at most limit/4 code points cannot exceed `limit` UTF-8 bytes; only longer ones are encoded.
        quick_limit = limit // 4
        while True:
            message = await receive()
            text = message.get("text")
            if text is not None:
                if len(text) > quick_limit and len(text.encode()) > limit:
                    return _Ending("interrupted", "client_frame_too_big", client_error=errors.frame_too_big(limit))
                self.frames_up += 1
                self.bytes_up += len(text)
                request = observe(text)
                if request is not None:  # a response.create that plugins check before it is forwarded
                    decision = await self.session.check_turn(request)
                    if not decision.allowed:
                        self.session.refuse_turn(request, decision)
                        refusal = decision.as_error()
                        if decision.action == "disconnect":
                            return _Ending("interrupted", decision.code or "denied", client_error=refusal)
                        await self._send_client_text(refusal.event(request.client_event_id))
                        continue
                try:
                    await send_upstream(text)
                except ConnectionClosed as exc:
                    return _upstream_closed(exc)
            elif message["type"] == "websocket.disconnect":
                code = message.get("code") or 1005
                reason = message.get("reason") or ""
                return _Ending(
                    "interrupted",
                    f"client_disconnected:{code}",
                    upstream_close=(code if _sendable(code) else errors.CLOSE_NORMAL, reason),
                )
            elif message.get("bytes") is not None:
                await self._send_client_text(errors.binary_frame().event())

    async def _upstream_to_client(self) -> _Ending:
        recv = self.upstream.recv
        send = self.send
        observe = self.session.on_server_frame
        while True:
            try:
                frame = await recv()
            except ConnectionClosed as exc:
                return _upstream_closed(exc)
            self.frames_down += 1
            self.bytes_down += len(frame)
            self.in_client_send = True
            try:
                if frame.__class__ is str:
                    close_after = observe(frame)
                    await send({"type": "websocket.send", "text": frame})
                    if close_after is not None:  # the provider's quota or rate limit: its error is forwarded, then close
                        return _Ending("interrupted", "provider_limit", client_close=close_after)
                else:  # OpenAI never sends binary; pass anything else through untouched
                    await send({"type": "websocket.send", "bytes": frame})
            except OSError:
                return _Ending("interrupted", "client_gone")
            finally:
                self.in_client_send = False

    async def _send_client_text(self, text: str) -> bool:
        try:
            await self.send({"type": "websocket.send", "text": text})
            return True
        except (OSError, RuntimeError):
            return False

    async def _close(self, ending: _Ending) -> None:
        try:
            if ending.client_error is not None:
                if await self._send_client_text(ending.client_error.event()):
                    await self._close_client(ending.client_error.close_code or errors.CLOSE_INTERNAL, ending.client_error.close_reason)
            elif ending.client_close is not None:
                await self._close_client(*ending.client_close)
            if ending.upstream_close is not None:
                await self.upstream.close(*ending.upstream_close)
        except Exception:
            logger.debug("session %s: closing the sockets failed", self.session.id, exc_info=True)
        finally:
            self.session.close(status=ending.turn_status, reason=ending.reason, error=ending.turn_error)
            self.hooks.session_ended(self.session.info, ending.reason)

    async def _close_client(self, code: int, reason: str) -> None:
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except (OSError, RuntimeError):
            pass
