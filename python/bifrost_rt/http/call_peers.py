"""Requests for a call another gateway process owns: hangup relayed over HTTP, sideband sockets proxied.

The process that receives the client's request authenticates the client and checks the directory's key id first;
it then sends the owner the call id and the principal's key id, signed with the instances' shared secret, never
the client's credential. A key id is what the owner compares against its call (the same for a virtual key and the
client secrets it minted), it is no credential if read off the wire, and the signature binds it to one call for a
short time, so a forwarded header cannot be replayed against another call or later.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

import httpx
import websockets
from starlette.responses import Response
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bifrost_rt import errors
from bifrost_rt.errors import RealtimeError
from bifrost_rt.http.error_responses import error_response

logger = logging.getLogger("bifrost_rt.calls")

FORWARDED_HEADER = "x-bifrost-rt-forwarded"
FORWARD_TIMEOUT_S = 5.0
_VALID_S = 30  # a signed header is refused this long after it was made (clocks of instances may differ a little)


def call_not_found(call_id: str) -> RealtimeError:
    return RealtimeError(
        "invalid_request_error", "call_not_found", f"Call with id '{call_id}' not found.", "call_id", close_code=errors.CLOSE_PROTOCOL
    )


def owner_unreachable() -> RealtimeError:
    return RealtimeError(
        "server_error",
        "call_owner_unreachable",
        "The gateway instance holding this call could not be reached. Retry later.",
        close_code=errors.CLOSE_INTERNAL,
    )


class InstancePeers:
    """Signs, checks and sends requests between instances."""

    def __init__(self, secret: str, http: httpx.AsyncClient) -> None:
        self._secret = secret.encode()
        self._http = http

    def _signature(self, call_id: str, key_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{call_id}\n{key_id}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, call_id: str, key_id: str) -> str:
        expires = int(time.time()) + _VALID_S
        return f"{expires}:{key_id}:{self._signature(call_id, key_id, expires)}"

    def verify(self, value: str, call_id: str) -> str | None:
        """The key id a forwarded request speaks for, or None when the header is not one this secret signed."""
        expires_text, _, rest = value.partition(":")
        key_id, _, signature = rest.rpartition(":")
        if not expires_text.isdigit() or not key_id:
            return None
        expires = int(expires_text)
        if expires < time.time() or expires > time.time() + 2 * _VALID_S:
            return None
        if not hmac.compare_digest(signature, self._signature(call_id, key_id, expires)):
            return None
        return key_id

    async def forward_hangup(self, address: str, path: str, call_id: str, key_id: str) -> Response:
        try:
            reply = await self._http.post(
                f"{address}{path}", headers={FORWARDED_HEADER: self.sign(call_id, key_id)}, timeout=FORWARD_TIMEOUT_S
            )
        except httpx.HTTPError as error:
            # Refused: the owner's process is gone, and its calls with it. Anything else may be passing.
            refusal = call_not_found(call_id) if isinstance(error, httpx.ConnectError) else owner_unreachable()
            logger.warning("call %s: its owner %s is unreachable: %s", call_id, address, type(error).__name__)
            return error_response(404 if refusal.code == "call_not_found" else 502, refusal.type, refusal.code, refusal.message, refusal.param)
        return Response(reply.content, status_code=reply.status_code, media_type=reply.headers.get("content-type"))

    async def proxy_sideband(
        self, address: str, path: str, call_id: str, key_id: str, subprotocol: str | None, receive: Any, send: Any
    ) -> None:
        """Relays a sideband WebSocket to the owner's, frame for frame, and its close code back."""
        url = "ws://" + address.removeprefix("http://") + f"{path}?call_id={call_id}"
        try:
            owner = await websockets.connect(
                url,
                additional_headers={FORWARDED_HEADER: self.sign(call_id, key_id)},
                subprotocols=[subprotocol] if subprotocol else None,  # type: ignore[list-item]
                open_timeout=FORWARD_TIMEOUT_S,
                max_size=None,  # the owner applies the frame caps
                compression=None,
            )
        except (OSError, InvalidHandshake, InvalidStatus, TimeoutError) as error:
            logger.warning("call %s: its owner %s is unreachable: %s", call_id, address, type(error).__name__)
            refusal = call_not_found(call_id) if isinstance(error, ConnectionRefusedError) else owner_unreachable()
            await send({"type": "websocket.accept", "subprotocol": subprotocol})
            await send({"type": "websocket.send", "text": refusal.event()})
            await send({"type": "websocket.close", "code": refusal.close_code, "reason": refusal.close_reason})
            return
        await send({"type": "websocket.accept", "subprotocol": subprotocol})

        async def client_to_owner() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                if data is None:
                    data = message.get("bytes")
                if data is not None:
                    await owner.send(data)

        async def owner_to_client() -> None:
            try:
                async for data in owner:
                    await send({"type": "websocket.send", "text": data} if isinstance(data, str) else {"type": "websocket.send", "bytes": data})
            except ConnectionClosed:
                pass
            code = owner.close_code if owner.close_code is not None else errors.CLOSE_INTERNAL
            if code in errors.UNSENDABLE_CLOSE_CODES:
                code = errors.CLOSE_INTERNAL
            await send({"type": "websocket.close", "code": code, "reason": owner.close_reason or ""})

        tasks = [asyncio.ensure_future(client_to_owner()), asyncio.ensure_future(owner_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await owner.close()
