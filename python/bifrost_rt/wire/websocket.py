"""The WebSocket transport: moves frames between the client's ASGI socket and the provider's socket.

Two loops (client → provider, provider → client) feed the relay core and perform its actions; the first loop to
end, or the supervisor, decides the ending, and the relay core says what it means. Closing never waits on a peer
without a bound: a client that does not take its last frames within `close_timeout_s` is aborted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bifrost_rt import __version__, errors
from bifrost_rt.config import RealtimeConfig
from bifrost_rt.core import ending as endings
from bifrost_rt.core.ending import Ending
from bifrost_rt.core.registry import SessionRegistry
from bifrost_rt.core.relay import FORWARD, Action, Check, End, Relay, Reply, ToClient, ToUpstream
from bifrost_rt.errors import RealtimeError

logger = logging.getLogger("bifrost_rt.ws")
# websockets logs handshake headers and frames at DEBUG; for upstream connections that would print the provider
# key and conversation content, so their logger never goes below INFO.
upstream_logger = logging.getLogger("bifrost_rt.upstream")
upstream_logger.setLevel(logging.INFO)

# The ASGI scope extension through which the server lets the gateway drop a client that stopped reading.
ABORT_EXTENSION = "bifrost_rt.abort"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class UpstreamRefused(Exception):
    def __init__(self, error: RealtimeError) -> None:
        self.error = error


async def connect_upstream(url: str, headers: dict[str, str], limits: RealtimeConfig, provider: str) -> ClientConnection:
    """The provider's socket; any failure is an `UpstreamRefused` whose error names neither URL nor key."""
    try:
        return await websockets.connect(
            url,
            additional_headers=headers,
            user_agent_header=f"bifrost-rt/{__version__}",
            compression="deflate" if limits.permessage_deflate else None,
            max_size=None,  # the client side enforces the frame cap; upstream frames are trusted in size
            ping_interval=limits.upstream_ping_interval_s,
            ping_timeout=limits.upstream_ping_timeout_s,
            open_timeout=limits.upstream_connect_timeout_s,
            close_timeout=limits.close_timeout_s,
            logger=upstream_logger,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        logger.warning("upstream %s refused the realtime handshake: HTTP %s", provider, status)
        # The provider's JSON error (OpenAI's or Azure's) becomes the client's; its headers stay here.
        raise UpstreamRefused(errors.provider_refusal(status, exc.response.body, urlsplit(url).hostname)) from None
    except (OSError, TimeoutError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
        logger.warning("upstream %s unreachable: %s", provider, type(exc).__name__)
        raise UpstreamRefused(errors.upstream_unavailable()) from None


class WebSocketRelay:
    """One relayed WebSocket session; a `LiveSession` for the registry."""

    def __init__(
        self, relay: Relay, upstream: ClientConnection, receive: Receive, send: Send, scope: dict[str, Any],
        registry: SessionRegistry, close_timeout_s: float,
    ) -> None:
        self.relay = relay
        self.session = relay.session
        self.upstream = upstream
        self.receive = receive
        self.send = send
        self._abort: Callable[[], None] | None = scope.get("extensions", {}).get(ABORT_EXTENSION)
        self._registry = registry
        self._close_timeout_s = close_timeout_s
        self.in_client_send = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- LiveSession ---------------------------------------------------------------------------

    def activity(self) -> int:
        return self.relay.activity

    def relayed(self) -> dict[str, int]:
        return self.relay.relayed()

    def blocked_on_client(self) -> bool:
        return self.in_client_send

    def end(self, error: RealtimeError, *, upstream_code: int = errors.CLOSE_NORMAL) -> None:
        self._finish(self.relay.stop(error, upstream_code))

    def watch(self, now: float) -> None:
        """Heartbeats are uvicorn's (ping/pong) and the provider socket's own keepalive: nothing more to check."""

    # ---- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        self._registry.add(self)
        self.relay.start()
        loops = [asyncio.create_task(self._client_to_upstream()), asyncio.create_task(self._upstream_to_client())]
        self._tasks.update(loops)
        try:
            try:
                done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
                self._finish(self._result(done))
            except asyncio.CancelledError:
                self._finish(self.relay.stop(errors.shutting_down(), errors.CLOSE_GOING_AWAY))
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._registry.remove(self)
        assert self.relay.ending is not None
        await self._close(self.relay.ending)

    def _finish(self, ending: Ending) -> None:
        """The first ending wins; every loop and pending check stops, and the open turns are recorded now."""
        self.relay.end(ending)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _result(self, done: set[asyncio.Task[Any]]) -> Ending:
        for task in done:
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                return task.result()
            logger.error("session %s: relay failed", self.session.id, exc_info=exc)
        return endings.internal_error()

    async def _client_to_upstream(self) -> Ending:
        receive = self.receive
        send_upstream = self.upstream.send
        from_client = self.relay.from_client
        while True:
            message = await receive()
            data = message.get("text")
            if data is None:
                if message["type"] == "websocket.disconnect":
                    return endings.client_disconnected(message.get("code") or 1005, message.get("reason") or "")
                data = message.get("bytes")
                if data is None:
                    continue
            actions = from_client(data)
            try:
                if actions is FORWARD:
                    await send_upstream(data)
                else:
                    ending = await self._perform(actions)
                    if ending is not None:
                        return ending
            except ConnectionClosed as exc:
                return _upstream_closed(exc)

    async def _upstream_to_client(self) -> Ending:
        recv = self.upstream.recv
        send = self.send
        from_server = self.relay.from_server
        while True:
            try:
                frame = await recv()
            except ConnectionClosed as exc:
                return _upstream_closed(exc)
            actions = from_server(frame)
            self.in_client_send = True
            try:
                if actions is FORWARD:
                    await send({"type": "websocket.send", "text": frame} if frame.__class__ is str else {"type": "websocket.send", "bytes": frame})
                else:
                    ending = await self._perform(actions)
                    if ending is not None:
                        return ending
            except OSError:
                return endings.client_gone()
            except ConnectionClosed as exc:
                return _upstream_closed(exc)
            finally:
                self.in_client_send = False

    async def _perform(self, actions: tuple[Action, ...]) -> Ending | None:
        for action in actions:
            kind = action.__class__
            if kind is ToUpstream:
                await self.upstream.send(action.message)  # type: ignore[union-attr]
            elif kind is ToClient or kind is Reply:
                await self._send_client(action.message)  # type: ignore[union-attr]
            elif kind is Check:
                assert isinstance(action, Check)
                if action.response_id is None:  # a held response.create: nothing passes it until decided
                    ending = await self._perform(self.relay.checked(action, await self.relay.decide(action)))
                    if ending is not None:
                        return ending
                else:  # a turn already running: decided beside the relay, never holding the provider's events
                    task = asyncio.get_running_loop().create_task(self._check_started(action))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            elif kind is End:
                return action.ending  # type: ignore[union-attr]
        return None

    async def _check_started(self, check: Check) -> None:
        try:
            ending = await self._perform(self.relay.checked(check, await self.relay.decide(check)))
        except (OSError, ConnectionClosed):
            return
        if ending is not None:
            self._finish(ending)

    async def _send_client(self, message: str | bytes) -> None:
        await self.send({"type": "websocket.send", "text": message} if message.__class__ is str else {"type": "websocket.send", "bytes": message})

    # ---- closing -------------------------------------------------------------------------------

    async def _close(self, ending: Ending) -> None:
        """Each side is told within `close_timeout_s`; a peer that does not take it is aborted."""
        await self._close_client(ending)
        await self._close_upstream(ending)

    async def _close_client(self, ending: Ending) -> None:
        try:
            await asyncio.wait_for(self._say_goodbye(ending), self._close_timeout_s)
            return
        except asyncio.TimeoutError:
            logger.info("session %s: the client took no close within %.1f s; dropping its connection", self.session.id, self._close_timeout_s)
        except (OSError, RuntimeError):
            pass  # already gone, or closed by the server
        if self._abort is not None:
            self._abort()

    async def _say_goodbye(self, ending: Ending) -> None:
        if ending.client_error is not None:
            await self._send_client(ending.client_error.event())
        frame = ending.client_close_frame
        if frame is not None:
            await self.send({"type": "websocket.close", "code": frame[0], "reason": frame[1][:120]})

    async def _close_upstream(self, ending: Ending) -> None:
        if ending.upstream_close is None:
            return
        try:
            await asyncio.wait_for(self.upstream.close(*ending.upstream_close), self._close_timeout_s)
        except Exception:
            logger.debug("session %s: closing the provider's socket failed", self.session.id, exc_info=True)
            self.upstream.transport.abort()


def _upstream_closed(exc: ConnectionClosed) -> Ending:
    close = exc.rcvd
    return endings.upstream_closed(None if close is None else close.code, "" if close is None else close.reason)
