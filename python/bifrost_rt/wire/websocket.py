"""The WebSocket transport: moves frames between the client's ASGI socket and the provider's socket.

Two loops (client → provider, provider → client) feed the relay core and perform its actions; the first loop to
end, or the supervisor, decides the ending, and the relay core says what it means. Closing never waits on a peer
without a bound: a client that does not take its last frames within `close_timeout_s` is aborted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from bifrost_rt.core.relay import FORWARD, Action, Check, End, Reconnect, Relay, Reply, ToClient, ToUpstream
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


@dataclass(frozen=True, slots=True)
class Renewal:
    """How the provider's next connection is opened (the relay's `Reconnect`) and how long the switch may take."""

    connect: Callable[[], Awaitable[ClientConnection]]
    buffer_bytes: int  # client input held meanwhile; more ends the session (`reconnect_buffer_full`)
    first_message_timeout_s: float
    opening_after_s: float  # the provider waits for its configuration: sent by then if the client said nothing


class WebSocketRelay:
    """One relayed WebSocket session; a `LiveSession` for the registry."""

    def __init__(
        self, relay: Relay, upstream: ClientConnection, receive: Receive, send: Send, scope: dict[str, Any],
        registry: SessionRegistry, close_timeout_s: float, renewal: Renewal | None = None, first_frame: str | None = None,
    ) -> None:
        """`first_frame`: a provider frame already read (a pooled session's `session.created`), relayed first."""
        self.relay = relay
        self._first_frame = first_frame
        self.session = relay.session
        self.upstream = upstream
        self.receive = receive
        self.send = send
        self._abort: Callable[[], None] | None = scope.get("extensions", {}).get(ABORT_EXTENSION)
        self._registry = registry
        self._close_timeout_s = close_timeout_s
        self.in_client_send = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewal = renewal
        self._held: list[str | bytes] | None = None  # client messages while the next provider connection opens
        self._held_bytes = 0
        self._unnoted: str | bytes | None = None  # a provider frame being sent as it came, noted once it is sent

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
        if self._renewal is not None:
            self._spawn(self._open_provider(self._renewal.opening_after_s))
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
        unnoted, self._unnoted = self._unnoted, None
        if unnoted is not None and not self.relay.ended:  # the client is being sent it: it counts, before the end
            self.relay.forwarded(unnoted)
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
                if actions is FORWARD and self._held is None:
                    await self.upstream.send(data)
                elif actions is FORWARD:
                    ending = self._hold(data)
                    if ending is not None:
                        return ending
                else:
                    ending = await self._perform(actions)
                    if ending is not None:
                        return ending
            except ConnectionClosed as exc:
                return self._provider_closed(exc)

    async def _upstream_to_client(self) -> Ending:
        send = self.send
        relay = self.relay
        from_server, forwarded = relay.from_server, relay.forwarded
        if self._first_frame is not None:
            actions = from_server(self._first_frame)
            try:
                ending = await self._perform((ToClient(self._first_frame),) if actions is FORWARD else actions)
            except OSError:
                return endings.client_gone()
            if ending is not None:
                return ending
        while True:
            connection = self.upstream  # read anew each time: a Reconnect replaces the connection
            try:
                frame = await connection.recv()
            except ConnectionClosed as exc:
                if connection is not self.upstream:  # the replaced connection closing, as it should
                    continue
                return self._provider_closed(exc)
            self.in_client_send = True
            try:
                if relay.passes_server_frames:  # sent first, noted after: the client never waits on the bookkeeping
                    self._unnoted = frame
                    await send(_outgoing(frame))
                    self._unnoted = None
                    actions = forwarded(frame)
                    if actions:
                        ending = await self._perform(actions)
                        if ending is not None:
                            return ending
                    continue
                actions = from_server(frame)
                if actions is FORWARD:
                    await send(_outgoing(frame))
                else:
                    ending = await self._perform(actions)
                    if ending is not None:
                        return ending
            except OSError:
                return endings.client_gone()
            except ConnectionClosed as exc:
                return self._provider_closed(exc)
            finally:
                self.in_client_send = False

    async def _perform(self, actions: tuple[Action, ...]) -> Ending | None:
        for action in actions:
            kind = action.__class__
            if kind is ToUpstream:
                if self._held is None:
                    await self.upstream.send(action.message)  # type: ignore[union-attr]
                else:
                    ending = self._hold(action.message)  # type: ignore[union-attr]
                    if ending is not None:
                        return ending
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
            elif kind is Reconnect:
                ending = await self._reconnect(action)  # type: ignore[arg-type]
                if ending is not None:
                    return ending
        return None

    def _hold(self, message: str | bytes) -> Ending | None:
        assert self._held is not None and self._renewal is not None
        self._held_bytes += len(message)
        if self._held_bytes > self._renewal.buffer_bytes:
            return endings.stopped(errors.reconnect_buffer_full(self._renewal.buffer_bytes), errors.CLOSE_GOING_AWAY)
        self._held.append(message)
        return None

    async def _reconnect(self, action: Reconnect) -> Ending | None:
        """The provider's next connection replaces this one between turns; client input waits for it (bounded)."""
        renewal = self._renewal
        if renewal is None:
            return self.relay.reconnect_failed("this transport cannot renew the provider connection")
        self._held, self._held_bytes = [], 0
        try:
            fresh = await renewal.connect()
        except UpstreamRefused as refused:
            return self.relay.reconnect_failed(refused.error.message.rstrip("."))
        try:
            for message in action.opening:
                await fresh.send(message)
            first = await asyncio.wait_for(fresh.recv(), renewal.first_message_timeout_s)
        except (ConnectionClosed, OSError, asyncio.TimeoutError):
            fresh.transport.abort()
            return self.relay.reconnect_failed("the new connection was not set up")
        previous, self.upstream = self.upstream, fresh
        self._spawn(self._close_previous(previous))
        ending = await self._perform(self.relay.reconnected(first))
        if ending is not None:
            return ending
        held = self._held
        while held:  # what arrives meanwhile is appended here and sent too, in order
            await fresh.send(held.pop(0))
        self._held = None
        return None

    async def _open_provider(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        try:
            ending = await self._perform(self.relay.opening())
        except (OSError, ConnectionClosed):
            return
        if ending is not None:
            self._finish(ending)

    async def _close_previous(self, previous: ClientConnection) -> None:
        try:
            await asyncio.wait_for(previous.close(), self._close_timeout_s)
        except Exception:
            previous.transport.abort()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _provider_closed(self, exc: ConnectionClosed) -> Ending:
        return self.relay.provider_closed(*_close_of(exc))

    async def _check_started(self, check: Check) -> None:
        try:
            ending = await self._perform(self.relay.checked(check, await self.relay.decide(check)))
        except (OSError, ConnectionClosed):
            return
        if ending is not None:
            self._finish(ending)

    async def _send_client(self, message: str | bytes) -> None:
        await self.send(_outgoing(message))

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


def _outgoing(message: str | bytes) -> dict[str, Any]:
    """The ASGI message that sends `message` to the client, as text or binary as it is."""
    return {"type": "websocket.send", "text": message} if message.__class__ is str else {"type": "websocket.send", "bytes": message}


def _close_of(exc: ConnectionClosed) -> tuple[int | None, str]:
    close = exc.rcvd
    return (None, "") if close is None else (close.code, close.reason)
