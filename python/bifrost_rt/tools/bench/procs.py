"""Child processes of a bench run: start pinned, wait until listening, read their CPU time, stop them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bifrost_rt

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 5.0


class BenchError(RuntimeError):
    """A bench run cannot go on; the message says why."""


def can_pin() -> bool:
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment for `python -m bifrost_rt...` children, able to import this very package."""
    env = dict(os.environ)
    root = str(Path(bifrost_rt.__file__).resolve().parents[1])  # the directory holding the bifrost_rt package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def cpu_us(pid: int) -> int:
    """User+system CPU of a process and its live descendants (plus those already reaped), in µs."""
    ticks = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read
        # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17.
        ticks += sum(int(v) for v in fields[11:15])
    return ticks * 1_000_000 // _TICKS_PER_S


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


class Child:
    """One server process, optionally pinned with taskset; output goes to a log file in the run directory."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, cpus: set[int] | None) -> None:
        self.name, self.port = name, port
        self.log_path = workdir / f"{name}.log"
        prefix = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
        with open(self.log_path, "wb") as log:
            # A new session keeps a terminal Ctrl-C away from the children: the bench stops them itself.
            self.popen = subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=workdir, env=child_env(), start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid  # taskset execs the command, so this is the server itself

    def cpu_us(self) -> int:
        return cpu_us(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def logged_errors(self) -> bool:
        """Whether the child logged a traceback or an error: both cost CPU the measurement would count."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return "Traceback" in text or "ERROR" in text

    async def wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited with code {self.popen.returncode}:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name} did not listen on port {self.port} within {timeout_s:.0f} s:\n"
                                     f"{self.log_tail()}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


class Children:
    """The processes of a run; `close()` stops them all (use with `contextlib.closing`)."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir, self.pin = workdir, pin
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], port: int, cpu: int) -> Child:
        child = Child(name, argv, port, self.workdir, {cpu} if self.pin else None)
        self.children.append(child)
        return child

    def close(self) -> None:
        running = [c for c in self.children if c.popen.poll() is None]
        for child in running:
            child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in running:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)  # the child's own session: it and its workers only
                child.popen.wait()
        self.children.clear()


def python_module(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]
