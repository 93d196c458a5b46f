"""WebRTC signalling: `POST /v1/realtime/calls` (and the legacy `POST /v1/realtime`), hangup, and sideband sockets.

A call request is admitted like a WebSocket (key or gateway client secret, model, caps, governance) before the
gateway places its own call to the provider. The client's answer is returned once the provider has answered the
gateway's offer, so every refusal, the provider's included, is an HTTP error the caller can read; both peers then
connect in parallel. Calls are pinned to the process that answered them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bifrost_rt import __version__, dialects, errors
from bifrost_rt.core import ending as endings
from bifrost_rt.core.relay import Relay
from bifrost_rt.errors import RealtimeError, new_id
from bifrost_rt.http.admission import Admission, admit
from bifrost_rt.http.error_responses import error_response, provider_error_response
from bifrost_rt.http.handshake import baggage_session_id, scope_headers, traceparent
from bifrost_rt.http.services import Services
from bifrost_rt.policy.auth import presented_credential
from bifrost_rt.rtc.offers import OfferError, read_offer

if TYPE_CHECKING:  # aiortc loads with the first call, not with the WebSocket path
    from bifrost_rt.wire.webrtc import Call

logger = logging.getLogger("bifrost_rt.calls")

# Headers of the client's request passed on to the provider's call endpoint.
_FORWARDED_HEADERS = ("openai-organization", "openai-project", "openai-safety-identifier", "x-openai-agents-sdk")
_HTTP_STATUS = {
    "invalid_api_key": 401,
    "model_not_allowed": 403,
    "session_limit_reached": 429,
    "call_limit_reached": 429,
    "call_not_found": 404,
}


def _refusal_response(error: RealtimeError) -> JSONResponse:
    status = _HTTP_STATUS.get(error.code or "")
    if status is None:
        status = 503 if error.type == "server_error" else 429 if error.type in ("rate_limit_exceeded", "insufficient_quota") else 400
    return error_response(status, error.type, error.code, error.message, error.param)


class _ProviderRefused(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


class CallRelay:
    """The process's calls, their caps, and the HTTP and sideband entry points."""

    def __init__(self, gateway: Services) -> None:
        self.gateway = gateway
        self.config = gateway.config.webrtc
        self._calls: dict[str, Call] = {}
        self._per_key: Counter[str] = Counter()
        self._placing = 0  # admitted requests still negotiating: they hold their place under the caps

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    # --- POST /v1/realtime/calls ---

    def endpoint(self, prefix: str, *, legacy: bool = False) -> Any:
        """`legacy`: the retired `POST /v1/realtime` form, whose clients speak beta events on the data channel."""

        async def create(request: Request) -> Response:
            return await self.create(request, prefix, legacy)

        return create

    async def create(self, request: Request, prefix: str, legacy: bool = False) -> Response:
        gateway = self.gateway
        if gateway.registry.draining:
            return _refusal_response(errors.shutting_down())
        headers = scope_headers(request.scope)
        try:
            offer, session_config = await read_offer(request, self.config.max_offer_bytes)
        except OfferError as error:
            status = 413 if error.code == "request_too_large" else 400
            return error_response(status, "invalid_request_error", error.code, error.message, error.param)
        query = request.query_params  # an Azure-shaped client may name a `deployment` and put its key in `api-key`
        model = query.get("model") or query.get("deployment") or _session_model(session_config)
        admission = await admit(gateway, presented_credential(headers, (), query), model, model_required=True)
        if isinstance(admission, RealtimeError):
            gateway.registry.refuse(admission.code or admission.type)
            return _refusal_response(admission)
        refusal = self._cap_refusal(admission)
        if refusal is not None:
            gateway.registry.refuse(refusal.code or refusal.type)
            return _refusal_response(refusal)
        key_id = admission.principal.key_id
        session_id = new_id("sess_bf")
        self._placing += 1
        self._per_key[key_id] += 1
        admitted = False
        try:
            refused = await gateway.governance.admit(key_id, session_id)
            if refused is not None:
                gateway.registry.refuse(refused.code)
                return _refusal_response(errors.governance_refusal(refused.type, refused.code, refused.message))
            admitted = True
            call = self._new_call(admission, session_id, headers, legacy)
            try:
                answer = await self._negotiate(call, offer, session_config, admission, headers)
            except BaseException as failure:
                call.end_soon(endings.setup_failed())
                await call.closed.wait()
                if isinstance(failure, _ProviderRefused):
                    return failure.response
                if isinstance(failure, ValueError):
                    return error_response(400, "invalid_request_error", "invalid_offer", f"Invalid SDP offer: {failure}", "sdp")
                if isinstance(failure, (TimeoutError, asyncio.TimeoutError)):
                    return error_response(504, "server_error", "ice_gathering_timeout", "Gathering ICE candidates took too long.")
                raise
            self._calls[call.id] = call
            self._per_key[key_id] += 1  # the call's own hold, released when it ends
            call.start()
            logger.info("call %s answered for %s (model %s)", call.id, admission.principal.name, admission.route.requested_model)
            return Response(answer, status_code=201, media_type="application/sdp", headers={"Location": f"{prefix}/realtime/calls/{call.id}"})
        finally:
            self._placing -= 1
            self._release_key(key_id)
            if admitted and session_id not in {c.session.id for c in self._calls.values()}:
                await gateway.governance.release(key_id, session_id)

    def _cap_refusal(self, admission: Admission) -> RealtimeError | None:
        config = self.config
        per_key = config.max_calls_per_key
        if len(self._calls) + self._placing >= config.max_calls or not self.gateway.registry.has_room():
            return RealtimeError("rate_limit_exceeded", "call_limit_reached", "The gateway is at its concurrent call limit. Retry later.")
        if per_key is not None and self._per_key[admission.principal.key_id] >= per_key:
            return RealtimeError("rate_limit_exceeded", "call_limit_reached", f"This key already has {per_key} open call(s).")
        return None

    def _new_call(self, admission: Admission, session_id: str, headers: dict[str, str], legacy: bool) -> Call:
        gateway = self.gateway
        session = gateway.new_session(
            principal=admission.principal,
            route=admission.route,
            transport="webrtc",
            session_group=baggage_session_id(headers),
            traceparent=traceparent(headers),
            session_id=session_id,
        )
        relay = Relay(
            session,
            gateway.hooks,
            max_message_bytes=gateway.config.realtime.max_frame_bytes,
            client_dialect=dialects.for_client(headers, (), legacy=legacy),
            upstream_dialect=dialects.for_provider(admission.route.for_calls()),
        )
        from bifrost_rt.wire.webrtc import Call

        return Call(new_id("rtc"), relay, self.config, gateway.registry, self._ended)

    async def _negotiate(
        self, call: Call, offer: str, session_config: dict[str, Any] | None, admission: Admission, headers: dict[str, str]
    ) -> str:
        with_audio = await call.accept_offer(offer)
        upstream_offer = await call.offer_upstream(with_audio)
        answer, provider_call_id = await self._call_provider(upstream_offer, session_config, admission, headers)
        call.provider_call_id = provider_call_id
        await call.accept_upstream_answer(answer)
        return await call.answer_client()

    async def _call_provider(
        self, offer: str, session_config: dict[str, Any] | None, admission: Admission, headers: dict[str, str]
    ) -> tuple[str, str | None]:
        """Places the gateway's call with the provider: its answer SDP and its call id."""
        route = admission.route
        forwarded = {name: headers[name] for name in _FORWARDED_HEADERS if name in headers}
        upstream_headers = await route.upstream_headers(forwarded, [], admission.upstream_credential)
        upstream_headers["user-agent"] = f"bifrost-rt/{__version__}"
        if admission.upstream_credential is not None and session_config is None:
            # A provider client secret carries its session: the offer goes alone, as the browser would send it.
            request: dict[str, Any] = {"content": offer.encode(), "headers": {**upstream_headers, "content-type": "application/sdp"}}
        else:
            session = {**(session_config or {}), "type": (session_config or {}).get("type") or "realtime"}
            if route.upstream_model:
                session["model"] = route.upstream_model
            request = {
                "files": {"sdp": (None, offer.encode(), "application/sdp"), "session": (None, orjson.dumps(session), "application/json")},
                "headers": upstream_headers,
            }
        try:
            response = await self.gateway.http.post(
                route.http_url("/realtime/calls"), timeout=self.config.upstream_timeout_s, **request
            )
        except httpx.HTTPError as error:
            logger.warning("provider %s unreachable for a call: %s", route.provider_name, type(error).__name__)
            raise _ProviderRefused(error_response(502, "server_error", "upstream_unavailable", "The realtime provider could not be reached. Retry later.")) from None
        if response.status_code not in (200, 201):
            raise _ProviderRefused(provider_error_response(route.provider_name, "a call", response))
        location = response.headers.get("location", "")
        return response.text, location.rstrip("/").rsplit("/", 1)[-1] or None

    async def _ended(self, call: Call) -> None:
        if self._calls.pop(call.id, None) is None:
            return
        key_id = call.session.principal.key_id
        self._release_key(key_id)
        await self.gateway.governance.release(key_id, call.session.id)
        if call.provider_call_id is not None:
            await self._hang_up_provider(call)

    async def _hang_up_provider(self, call: Call) -> None:
        """Tells the provider at once; closing the peer alone would leave it waiting for ICE consent to fail."""
        route = call.session.route
        try:
            await self.gateway.http.post(
                route.http_url(f"/realtime/calls/{call.provider_call_id}/hangup"),
                headers=await route.upstream_headers({}, []),
                timeout=2.0,
            )
        except httpx.HTTPError:
            pass

    def _release_key(self, key_id: str) -> None:
        self._per_key[key_id] -= 1
        if self._per_key[key_id] <= 0:
            del self._per_key[key_id]

    # --- POST /v1/realtime/calls/{call_id}/hangup ---

    async def hangup(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        call = await self._authorised_call(presented_credential(scope_headers(request.scope), (), request.query_params), call_id)
        if isinstance(call, RealtimeError):
            return _refusal_response(call)
        await call.hang_up()
        return Response(status_code=200)

    async def _authorised_call(self, credential: str | None, call_id: str) -> Call | RealtimeError:
        """The call, for its own principal only; anyone else learns no more than that it does not exist."""
        admission = await admit(self.gateway, credential, None, model_required=False)
        if isinstance(admission, RealtimeError) and admission.code == "invalid_api_key":
            return admission
        call = self._calls.get(call_id)
        if call is None or isinstance(admission, RealtimeError) or admission.principal.key_id != call.session.principal.key_id:
            return RealtimeError("invalid_request_error", "call_not_found", f"Call with id '{call_id}' not found.", "call_id", close_code=errors.CLOSE_PROTOCOL)
        return call

    # --- GET /v1/realtime?call_id= (WebSocket) ---

    async def serve_sideband(self, call_id: str, credential: str | None, subprotocol: str | None, receive: Any, send: Any) -> None:
        """Attaches a WebSocket to a call: it receives the provider's events and its events go to the provider."""
        call = await self._authorised_call(credential, call_id)
        if isinstance(call, RealtimeError):
            self.gateway.registry.refuse(call.code or call.type)
            await send({"type": "websocket.accept", "subprotocol": subprotocol})
            await send({"type": "websocket.send", "text": call.event()})
            await send({"type": "websocket.close", "code": call.close_code or errors.CLOSE_PROTOCOL, "reason": call.close_reason})
            return
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        from bifrost_rt.wire.webrtc import Sideband

        sideband = Sideband(send, self.config.max_pending_messages, self.config.max_pending_bytes)
        call.sidebands.add(sideband)
        pump = asyncio.get_running_loop().create_task(sideband.pump())
        try:
            while not pump.done():
                receiving = asyncio.ensure_future(receive())
                await asyncio.wait({receiving, pump}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    break
                message = receiving.result()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is not None:
                    call.from_sideband(text, sideband)
                else:
                    sideband.offer(errors.binary_frame().event())
            code = errors.CLOSE_POLICY if sideband.overflowed else errors.CLOSE_NORMAL
            await send({"type": "websocket.close", "code": code, "reason": "sideband_too_slow" if sideband.overflowed else "call_ended"})
        except OSError:
            pass
        finally:
            call.sidebands.discard(sideband)
            pump.cancel()

    async def close_all(self) -> None:
        calls = list(self._calls.values())
        for call in calls:
            call.end(errors.shutting_down())
        await asyncio.gather(*(call.closed.wait() for call in calls))


def _session_model(session: dict[str, Any] | None) -> str | None:
    """The model a call's `session` names; a transcription session names its transcription model."""
    if not session:
        return None
    model = session.get("model")
    if isinstance(model, str) and model:
        return model
    if session.get("type") == "transcription":
        audio = session.get("audio")
        transcription = ((audio or {}).get("input") or {}).get("transcription") if isinstance(audio, dict) else None
        if isinstance(transcription, dict) and isinstance(transcription.get("model"), str):
            return transcription["model"]
    return None
