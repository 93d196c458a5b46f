"""`GET /v1/realtime` (and its aliases): admits a WebSocket client, then hands it to the WebSocket transport.

Every refusal happens before an upstream connection is opened. The upstream connection is opened before the
client's handshake completes, so no client frame ever needs buffering.
"""

from __future__ import annotations

from typing import Any

from bifrost_rt import dialects, errors
from bifrost_rt.core.relay import Relay
from bifrost_rt.errors import RealtimeError, new_id
from bifrost_rt.http.admission import admit
from bifrost_rt.http.calls import CallRelay
from bifrost_rt.http.handshake import baggage_session_id, scope_headers, scope_query, traceparent
from bifrost_rt.http.services import Services
from bifrost_rt.policy.auth import Principal, presented_credential
from bifrost_rt.providers import Route
from bifrost_rt.wire.websocket import UpstreamRefused, WebSocketRelay, connect_upstream

Scope = dict[str, Any]


class RealtimeWebSocketEndpoint:
    """ASGI app for `GET /v1/realtime` (and its aliases under `/openai/v1` and `/openai`).

    `api_versioned` marks Azure's preview path (`/openai/realtime?api-version=…&deployment=…`), where a `-preview`
    api-version means the client speaks the beta protocol.
    """

    def __init__(
        self, gateway: Services, calls: CallRelay | None = None, *, api_versioned: bool = False
    ) -> None:
        self.gateway = gateway
        self.calls = calls
        self.api_versioned = api_versioned

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
            await self.calls.serve_sideband(call_id, presented_credential(headers, subprotocols, query), selected, receive, send)
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
                upstream = await connect_upstream(
                    route.upstream_url(query), await route.upstream_headers(headers, subprotocols, upstream_credential), gateway.config.realtime, route.provider_name
                )
            except UpstreamRefused as refused:
                gateway.registry.refuse(refused.error.code or "upstream_unavailable")
                await _refuse(send, selected, refused.error)
                return
            session = gateway.new_session(
                principal=principal, route=route, transport="websocket", session_group=baggage_session_id(headers), session_id=session_id,
                traceparent=traceparent(headers),
            )
            try:
                await send({"type": "websocket.accept", "subprotocol": selected})
            except OSError:
                await upstream.close()
                return
            limits = gateway.config.realtime
            relay = Relay(
                session,
                gateway.hooks,
                max_message_bytes=limits.max_frame_bytes,
                client_dialect=dialects.for_client(headers, subprotocols, legacy=self._preview(query)),
                upstream_dialect=dialects.for_provider(route),
            )
            await WebSocketRelay(relay, upstream, receive, send, scope, gateway.registry, limits.close_timeout_s).run()
        finally:
            await gateway.governance.release(principal.key_id, session_id)

    async def _admit(
        self, headers: dict[str, str], subprotocols: list[str], query: dict[str, str]
    ) -> tuple[Principal, Route, str | None] | RealtimeError:
        """The principal, the route and the upstream credential (None: the provider key), or why not."""
        admission = await admit(
            self.gateway,
            presented_credential(headers, subprotocols, query),
            query.get("model") or query.get("deployment") or None,  # an Azure-shaped client names its deployment
            model_required=not query.get("intent"),
        )
        if isinstance(admission, RealtimeError):
            return admission
        if not self.gateway.registry.has_room():
            return errors.too_many_sessions()
        return admission.principal, admission.route, admission.upstream_credential

    def _preview(self, query: dict[str, str]) -> bool:
        """An Azure preview api-version: the client speaks beta events."""
        return self.api_versioned and query.get("api-version", "").endswith("-preview")


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
