"""`serve --workers N`: a supervisor that spawns N gateway processes on one shared listening socket.

Each worker runs `server.run_worker` (its own `GatewayServer`, with its drain). The supervisor forwards the first
SIGTERM/SIGINT to every worker as SIGTERM, so each drains once, and waits for them; a worker that dies otherwise is
replaced. Workers run in their own process group, so a terminal's Ctrl-C reaches only the supervisor (a second
signal of its own would cut the worker's drain short), and exit on their own if the supervisor is killed.

The siblings directory (one per run) holds each worker's forwarding address, which the others use to reach calls
it owns and to add up `/metrics` and `/readyz` across the instance.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import SecretStr

from bifrost_rt.config import GatewayConfig

logger = logging.getLogger("bifrost_rt.server")

_RESTART_PAUSE_S = 1.0  # a worker that dies within this of its start is replaced only after it, never in a tight loop


def _worker_main(config: GatewayConfig, worker: int, listener: socket.socket, siblings_dir: Path) -> None:
    from bifrost_rt.runtime.server import exit_with_parent, run_worker

    os.setpgrp()
    exit_with_parent()
    run_worker(config, worker, listener, siblings_dir)


class Supervisor:
    def __init__(self, config: GatewayConfig) -> None:
        server = config.server
        if server.instance_secret is None:  # workers of one host only: a secret for this run
            server = server.model_copy(update={"instance_secret": SecretStr(secrets.token_urlsafe(32))})
            config = config.model_copy(update={"server": server})
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, tuple[BaseProcess, float]] = {}
        self._stopping = False

    def run(self) -> int:
        server = self.config.server
        listener = uvicorn.Config(None, host=server.host, port=server.port).bind_socket()
        siblings_dir = Path(tempfile.mkdtemp(prefix="bifrost-rt-workers-"))
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        failed = False
        try:
            for worker in range(server.workers):
                self._start(worker, listener, siblings_dir)
            while self._workers:
                wait([process.sentinel for process, _ in self._workers.values()], timeout=1.0)
                for worker, (process, started) in list(self._workers.items()):
                    if process.is_alive():
                        continue
                    process.join()
                    del self._workers[worker]
                    if self._stopping:
                        # -SIGTERM: the signal came before the worker could handle it, so it had not served yet.
                        failed = failed or process.exitcode not in (0, -signal.SIGTERM)
                        continue
                    logger.warning("worker %d (pid %s) exited with %s; starting another", worker, process.pid, process.exitcode)
                    if time.monotonic() - started < _RESTART_PAUSE_S:
                        time.sleep(_RESTART_PAUSE_S)
                    if not self._stopping:
                        self._start(worker, listener, siblings_dir)
        finally:
            listener.close()
            shutil.rmtree(siblings_dir, ignore_errors=True)
        return 1 if failed else 0

    def _start(self, worker: int, listener: socket.socket, siblings_dir: Path) -> None:
        process = self._context.Process(
            target=_worker_main, args=(self.config, worker, listener, siblings_dir), name=f"bifrost-rt-worker-{worker}"
        )
        process.start()
        self._workers[worker] = (process, time.monotonic())

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        """Each worker drains on its first SIGTERM; a second signal here tells them to hurry (uvicorn's own exit)."""
        self._stopping = True
        for process, _ in list(self._workers.values()):
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
