"""Serving with uvicorn: the settings the relay relies on, a drain before exit, and worker processes."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from bifrost_rt import __version__
from bifrost_rt.config import GatewayConfig, RealtimeConfig, load_config
from bifrost_rt.runtime import ws_protocol
from bifrost_rt.runtime.app import create_app
from bifrost_rt.runtime.gateway import Gateway
from bifrost_rt.runtime.http_limits import H11_PROTOCOL, HTTPTOOLS_PROTOCOL, HeadLimits, attach_limits

logger = logging.getLogger("bifrost_rt.server")

CONFIG_ENV = "BIFROST_RT_CONFIG"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Root logging for `serve`; a no-op where logging is already configured."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def app_from_environment() -> Starlette:
    """The app factory each server process calls; the configuration path comes from BIFROST_RT_CONFIG.

    Worker processes are spawned, so they configure their own logging here (turn log lines included).
    """
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{CONFIG_ENV} is not set")
    config = load_config(path)
    configure_logging(config.server.log_level)
    return create_app(config)


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
    """On the first SIGTERM/SIGINT: stop accepting, drain sessions, then let uvicorn shut down.

    uvicorn alone would close every WebSocket with 1012 at once, cutting turns in flight.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

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
        for server in getattr(self, "servers", []):
            server.close()
        try:
            await asyncio.gather(*(gateway.drain() for gateway in list(Gateway.instances)))
        finally:
            self.should_exit = True


def serve(config_path: str, config: GatewayConfig) -> None:
    os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    uv_config = uvicorn.Config(
        "bifrost_rt.runtime.server:app_from_environment",
        factory=True,
        host=config.server.host,
        port=config.server.port,
        workers=config.server.workers,
        **uvicorn_settings(config.realtime),
    )
    attach_limits(uv_config, HeadLimits.of(config.server))
    if config.server.workers == 1:
        GatewayServer(uv_config).run()
        return
    _run_workers(uv_config, config.server.workers)


def _run_workers(uv_config: uvicorn.Config, workers: int) -> None:
    """Several processes sharing one listening socket; SIGTERM is passed to each so each drains."""
    from uvicorn._subprocess import get_subprocess

    sock = uv_config.bind_socket()
    processes = [get_subprocess(uv_config, target=GatewayServer(uv_config).run, sockets=[sock]) for _ in range(workers)]
    for process in processes:
        process.start()

    def forward(sig: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    sock.close()
