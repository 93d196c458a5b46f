"""Serving with uvicorn: the settings the relay relies on, a drain before exit, and one process's listeners.

`serve` runs one process, or with several workers the supervisor of `runtime.workers`, which runs `run_worker` in
each. Besides the public listener, a process that other processes must reach (several workers, or `instance_url`)
opens a forwarding listener, on which calls it owns are reached (see `http.calls`) and its siblings scrape it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from bifrost_rt import __version__
from bifrost_rt.config import GatewayConfig, RealtimeConfig, ServerConfig
from bifrost_rt.runtime import ws_protocol
from bifrost_rt.runtime.app import create_app
from bifrost_rt.runtime.gateway import Gateway, Placement
from bifrost_rt.runtime.http_limits import H11_PROTOCOL, HTTPTOOLS_PROTOCOL, HeadLimits, attach_limits

logger = logging.getLogger("bifrost_rt.server")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Root logging for `serve`; a no-op where logging is already configured."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def uvicorn_settings(limits: RealtimeConfig) -> dict[str, Any]:
    """uvicorn options for the gateway; the bench's floor relay uses the same, so both are measured alike.

    The HTTP protocols are uvicorn's with the request-head limits of `http_limits` (its defaults unless `serve`
    attaches the configured ones). uvicorn's own loggers stay at WARNING: at INFO it logs every WebSocket with its
    query string, which costs CPU per session and would put any credential a client sends in the query into the log.
    """
    return {
        "ws": ws_protocol.PROTOCOL,  # uvicorn's websockets-sansio, able to abort a stalled client
        # The relay checks max_frame_bytes itself to answer with an error event; uvicorn's cap is the backstop.
        "ws_max_size": 2 * limits.max_frame_bytes,
        "ws_per_message_deflate": limits.permessage_deflate,
        "ws_ping_interval": limits.ping_interval_s,
        "ws_ping_timeout": limits.ping_timeout_s,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": HTTPTOOLS_PROTOCOL if importlib.util.find_spec("httptools") else H11_PROTOCOL,
        "lifespan": "on",
        "log_level": "warning",
        "timeout_graceful_shutdown": int(limits.shutdown_drain_s) + 5,
    }


class GatewayServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: report not-ready, stop accepting, drain sessions, then let uvicorn shut down.

    uvicorn alone would close every WebSocket with 1012 at once, cutting turns in flight. `public` is the listener
    closed once `/readyz` has been 503 for `drain_ready_delay_s`; the forwarding listener stays open until the end,
    so requests for calls still draining here keep reaching them.
    """

    def __init__(self, config: uvicorn.Config, ready_delay_s: float = 0.0, public: socket.socket | None = None) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._ready_delay_s = ready_delay_s
        self._public = public

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            logger.info("bifrost-rt %s serving on %s:%s (pid %d)", __version__, self.config.host, self.config.port, os.getpid())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        logger.info("draining sessions before shutdown")
        self._loop.call_soon_threadsafe(self._loop.create_task, self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        gateways = list(Gateway.instances)
        for gateway in gateways:
            gateway.ready = False
        try:
            if self._ready_delay_s:
                await asyncio.sleep(self._ready_delay_s)  # still serving, while balancers see /readyz fail
            for server in getattr(self, "servers", []):
                if self._public is None or _same_socket(server, self._public):
                    server.close()
            await asyncio.gather(*(gateway.drain() for gateway in gateways))
        finally:
            self.should_exit = True


def _same_socket(server: asyncio.base_events.Server, sock: socket.socket) -> bool:
    return any(listening.fileno() == sock.fileno() for listening in server.sockets)


def serve(config: GatewayConfig) -> int:
    """Runs until SIGTERM/SIGINT; the exit status."""
    if config.server.workers == 1:
        run_worker(config, 0, None, None)
        return 0
    from bifrost_rt.runtime.workers import Supervisor

    return Supervisor(config).run()


def forwarding_socket(server: ServerConfig, worker: int) -> tuple[socket.socket, str] | None:
    """The listener other processes reach this one on, and its URL; None when none need to."""
    if server.instance_url is not None:
        host, port = server.instance_url.removeprefix("http://").rsplit(":", 1)
        bind_host, bind_port, url_host = server.host, int(port) + worker, host
    elif server.workers > 1:
        bind_host, bind_port, url_host = "127.0.0.1", 0, "127.0.0.1"  # siblings on this host only
    else:
        return None
    sock = socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind_host, bind_port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock, f"http://{url_host}:{sock.getsockname()[1]}"


def run_worker(config: GatewayConfig, worker: int, listener: socket.socket | None, siblings_dir: Path | None) -> None:
    """One gateway process on `listener` (None: it binds server.host:port itself) until it is told to stop."""
    configure_logging(config.server.log_level)
    uv_config = uvicorn.Config(None, host=config.server.host, port=config.server.port, **uvicorn_settings(config.realtime))
    attach_limits(uv_config, HeadLimits.of(config.server))
    public = listener if listener is not None else uv_config.bind_socket()
    sockets = [public]
    forwarding = forwarding_socket(config.server, worker)
    placement = Placement(worker=worker, siblings_dir=siblings_dir)
    if forwarding is not None:
        sockets.append(forwarding[0])
        placement = Placement(forwarding[1], worker, siblings_dir)
        if siblings_dir is not None:
            entry = siblings_dir / f"worker-{worker}"
            entry.with_suffix(".tmp").write_text(forwarding[1])
            entry.with_suffix(".tmp").replace(entry)  # siblings never read half a file
        logger.info("worker %d (pid %d) takes forwarded requests on %s", worker, os.getpid(), forwarding[1])
    uv_config.app = create_app(config, placement=placement)
    GatewayServer(uv_config, config.server.drain_ready_delay_s, public).run(sockets=sockets)


def exit_with_parent() -> None:
    """A worker whose supervisor died (killed, not signalled) drains and exits rather than serve on alone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bifrost-rt-parent-watch", daemon=True).start()
