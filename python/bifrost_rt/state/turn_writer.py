"""The bounded queue that carries turn records to sinks, off the relay path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from bifrost_rt.records import TurnRecord
from bifrost_rt.tasks import stop_task

logger = logging.getLogger("bifrost_rt.turns")


class TurnSink(Protocol):
    async def write(self, records: list[TurnRecord]) -> None: ...


class LogLineSink:
    """One structured JSON log line per turn on the `bifrost_rt.turns` logger."""

    async def write(self, records: list[TurnRecord]) -> None:
        for record in records:
            write_log_line(record)


def write_log_line(record: TurnRecord) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(record.to_json().decode())


class TurnWriter:
    """Bounded queue between sessions and sinks; a batching task drains it.

    `submit` never blocks the relay. When the queue is full the record is written synchronously as a
    log line instead, so no turn is ever lost, and the overflow is counted.
    """

    def __init__(self, sinks: Iterable[TurnSink], queue_size: int = 10000, batch_size: int = 256) -> None:
        self._sinks = list(sinks)
        self._queue: asyncio.Queue[TurnRecord] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        self.overflowed = 0
        self.written = 0
        self.sink_failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bifrost-rt-turn-writer")

    def submit(self, record: TurnRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.overflowed += 1
            write_log_line(record)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._deliver(batch)
            for _ in batch:
                self._queue.task_done()

    async def _deliver(self, batch: list[TurnRecord]) -> None:
        for sink in self._sinks:
            try:
                await sink.write(batch)
            except Exception:
                # A failing sink must not lose the turns: fall back to log lines.
                self.sink_failures += 1
                logger.exception("turn sink %s failed; writing %d record(s) as log lines", type(sink).__name__, len(batch))
                for record in batch:
                    write_log_line(record)
        self.written += len(batch)

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver everything queued, then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            logger.error("turn writer: %d record(s) still queued at shutdown; writing them as log lines", self.depth)
            while not self._queue.empty():
                write_log_line(self._queue.get_nowait())
        await stop_task(self._task)
        self._task = None
