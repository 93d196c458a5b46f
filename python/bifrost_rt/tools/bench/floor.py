"""The floor relay: the cheapest honest WebSocket relay, the baseline the gateway is measured against.

It accepts a client on `/v1/realtime`, opens the same path upstream and copies frames both ways without
looking at them. It is served with the gateway's own `uvicorn_settings()`.

Run: `python -m bifrost_rt.tools.bench.floor --port 8001 --upstream ws://127.0.0.1:8000/v1/realtime --api-key sk-sim`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from bifrost_rt.config import RealtimeConfig
from bifrost_rt.runtime.server import uvicorn_settings


def create_floor_app(upstream_url: str, api_key: str) -> Starlette:
    headers = {"Authorization": f"Bearer {api_key}"}

    async def relay(client: WebSocket) -> None:
        await client.accept()
        query = client.url.query
        url = f"{upstream_url}?{query}" if query else upstream_url
        try:
            # A short close timeout: an upstream still streaming when the client leaves cannot hold the session.
            upstream = await connect(url, additional_headers=headers, compression=None, max_size=None,
                                     close_timeout=2)
        except (OSError, asyncio.TimeoutError, WebSocketException):
            await client.close(code=1011)
            return
        tasks = {asyncio.create_task(_client_to_upstream(client, upstream)),
                 asyncio.create_task(_upstream_to_client(upstream, client))}
        # Whichever side ends first ends the session for both.
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        # A closed socket surfaces as an exception in either direction; both are normal session ends.
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        if client.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect):  # the client may leave before our close frame
                await client.close()

    return Starlette(routes=[WebSocketRoute("/v1/realtime", relay)])


async def _client_to_upstream(client: WebSocket, upstream: ClientConnection) -> None:
    while True:
        message = await client.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        await upstream.send(text if text is not None else message["bytes"])


async def _upstream_to_client(upstream: ClientConnection, client: WebSocket) -> None:
    async for frame in upstream:
        if isinstance(frame, str):
            await client.send_text(frame)
        else:
            await client.send_bytes(frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bifrost_rt.tools.bench.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream realtime URL, e.g. ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument("--api-key", default="sk-sim", help="bearer key sent upstream")
    args = parser.parse_args(argv)
    app = create_floor_app(args.upstream, args.api_key)
    uvicorn.run(app, host=args.host, port=args.port, **uvicorn_settings(RealtimeConfig()))


if __name__ == "__main__":
    main()
