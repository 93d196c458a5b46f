"""SpoolingStore: any store behind an fsync'd spill file, so an unreachable database delays turns, never loses them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import orjson

from bifrost_rt.state.turn_log.schema import Row
from bifrost_rt.state.turn_log.store import TurnLogStore, TurnQuery

logger = logging.getLogger("bifrost_rt.turn_log")
# Records no store can take end up where TurnWriter puts them: one JSON line each on the turns logger.
turns_logger = logging.getLogger("bifrost_rt.turns")


def _prepare_spill(path: Path) -> int:
    """Create the spill file if needed and end a line a crash left torn, so the next append starts a fresh line
    (the torn line is then skipped as unreadable). Returns the file's size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as file:
        size = file.seek(0, os.SEEK_END)
        if size:
            file.seek(size - 1)
            if file.read(1) != b"\n":
                file.write(b"\n")
                file.flush()
                os.fsync(file.fileno())
                size += 1
    return size


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        start = file.tell()
        try:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                file.truncate(start)  # leave no partial line for the next append to run into
            raise


def _read_spill(path: Path, offset: int, max_items: int) -> tuple[list[Row], int, int]:
    """Up to `max_items` records from `offset`: (records, offset after them, unreadable lines skipped)."""
    items: list[Row] = []
    unreadable = 0
    with open(path, "rb") as file:
        file.seek(offset)
        while len(items) < max_items:
            line = file.readline()
            if not line.endswith(b"\n"):
                break  # end of file
            offset += len(line)
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                item = None
            if isinstance(item, dict):
                items.append(item)
            else:
                unreadable += 1
    return items, offset, unreadable


def _truncate(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(0)
        os.fsync(file.fileno())


class SpoolingStore(TurnLogStore):
    """Any store behind a spill file, so a turn is never lost and `write` never raises.

    A batch the store cannot take (the error is transient) is appended to `spill_path` as JSON lines and
    fsync'd. While the file holds records, new batches are appended behind them instead of waiting on a store
    known to fail, so the file stays in order. A background task (starting at `start()`, which also replays
    what a previous process spilled) retries with exponential backoff, replays the file in order and truncates
    it. Ids make replay idempotent, so a batch written partly before a failure is never duplicated.

    `max_bytes` bounds the file softly: beyond it records are still appended (dropping them would lose turns),
    a warning is logged once per outage and `spilled_over_limit` counts them. A record the store refuses for
    good (not a transient error) is written as a log line on the turns logger and counted in `rejected`, as is
    a record the spill file cannot take (`spill_errors`).
    """

    def __init__(
        self,
        store: TurnLogStore,
        spill_path: str | os.PathLike[str],
        *,
        max_bytes: int = 256 * 1024 * 1024,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        replay_batch: int = 500,
    ) -> None:
        self.store = store
        self.spill_path = Path(spill_path)
        self.max_bytes = max_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.replay_batch = replay_batch
        self.spilled = 0  # records appended to the spill file
        self.replayed = 0  # records moved from the spill file into the store
        self.write_failures = 0  # store writes or connection attempts that failed and will be retried
        self.spilled_over_limit = 0  # records appended while the file exceeded max_bytes
        self.rejected = 0  # records the store refused for good
        self.spill_errors = 0  # records the spill file could not take
        self.spill_unreadable = 0  # spill lines that were not a record (a line torn by a crash)
        self._lock = asyncio.Lock()  # orders appends, direct writes and the final truncation
        self._size = 0  # bytes in the spill file
        self._offset = 0  # bytes of it already replayed
        self._backlog = asyncio.Event()
        self._drained = asyncio.Event()
        self._store_ready = False
        self._outage = False
        self._warned_over_limit = False
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog_bytes(self) -> int:
        return self._size - self._offset

    async def start(self) -> None:
        self._size = await asyncio.to_thread(_prepare_spill, self.spill_path)
        if self._size:
            self._backlog.set()
        else:
            self._drained.set()
        try:
            await self.store.start()
            self._store_ready = True
        except Exception as error:
            self._failed(error)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bifrost-rt-turn-spool")

    async def close(self) -> None:
        """Stop retrying; what is still spilled stays in the file for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store.close()

    async def wait_drained(self) -> None:
        """Return once the spill file is empty (every spilled record is in the store)."""
        await self._drained.wait()

    def is_transient(self, error: BaseException) -> bool:
        return self.store.is_transient(error)

    async def write_dicts(self, items: list[Row]) -> None:
        async with self._lock:
            remaining = items if self._size else await self._deliver(items)
            if remaining:
                await self._spill(remaining)

    async def _deliver(self, items: list[Row]) -> list[Row]:
        """Write to the store; returns the records left unwritten by a transient failure."""
        try:
            await self.store.write_dicts(items)
        except Exception as error:
            if self.store.is_transient(error):
                self._failed(error)
                return items
        else:
            self._recovered()
            return []
        # The store refused the batch: write record by record so one bad record cannot hold back the others.
        for index, item in enumerate(items):
            try:
                await self.store.write_dicts([item])
            except Exception as error:
                if self.store.is_transient(error):
                    self._failed(error)
                    return items[index:]
                self.rejected += 1
                logger.error("turn log store refused turn %s (%s); writing it as a log line", item.get("id"), error)
                turns_logger.info(orjson.dumps(item).decode())
        self._recovered()
        return []

    async def _spill(self, items: list[Row]) -> None:
        data = b"".join(orjson.dumps(item) + b"\n" for item in items)
        try:
            await asyncio.to_thread(_append, self.spill_path, data)
        except OSError as error:
            self.spill_errors += len(items)
            logger.error("cannot append to the spill file %s (%s); writing %d turn(s) as log lines", self.spill_path, error, len(items))
            for item in items:
                turns_logger.info(orjson.dumps(item).decode())
            return
        self._size += len(data)
        self.spilled += len(items)
        self._drained.clear()
        self._backlog.set()
        if self._size > self.max_bytes:
            self.spilled_over_limit += len(items)
            if not self._warned_over_limit:
                self._warned_over_limit = True
                logger.warning(
                    "spill file %s exceeds %d bytes; turns are still appended until the turn log store is back",
                    self.spill_path,
                    self.max_bytes,
                )

    async def _run(self) -> None:
        delay = self.retry_initial_s
        while True:
            if self._store_ready and not self._size:
                await self._backlog.wait()
            if await self._replay():
                delay = self.retry_initial_s
            else:
                await asyncio.sleep(delay)  # backoff between attempts on a failing store
                delay = min(delay * 2, self.retry_max_s)

    async def _replay(self) -> bool:
        """Start the store if needed and move the spill file into it; True once the file is empty."""
        if not self._store_ready:
            try:
                await self.store.start()
            except Exception as error:
                self._failed(error)
                return False
            self._store_ready = True
        while True:
            try:
                items, offset, unreadable = await asyncio.to_thread(
                    _read_spill, self.spill_path, self._offset, self.replay_batch
                )
            except FileNotFoundError:
                logger.error("spill file %s disappeared with %d unreplayed byte(s)", self.spill_path, self.backlog_bytes)
                items, offset, unreadable = [], self._size, 0
            except OSError as error:
                logger.error("cannot read the spill file %s (%s)", self.spill_path, error)
                return False
            if unreadable:
                self.spill_unreadable += unreadable
                logger.error("skipped %d unreadable line(s) in the spill file %s", unreadable, self.spill_path)
            if items and await self._deliver(items):
                return False  # the whole chunk is retried; ids make the part already written a no-op
            self.replayed += len(items)
            self._offset = offset
            if items or unreadable:
                continue
            async with self._lock:
                if self._offset >= self._size:  # nothing was appended meanwhile
                    with contextlib.suppress(FileNotFoundError):
                        await asyncio.to_thread(_truncate, self.spill_path)
                    self._size = self._offset = 0
                    self._warned_over_limit = False
                    self._backlog.clear()
                    self._drained.set()
                    return True

    def _failed(self, error: BaseException) -> None:
        self.write_failures += 1
        if not self._outage:
            self._outage = True
            logger.warning("turn log store unavailable (%s: %s); spooling turns to %s", type(error).__name__, error, self.spill_path)

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            logger.info("turn log store reachable again; replaying %d spilled byte(s)", self.backlog_bytes)

    async def session_logs(
        self, session_id: str, *, limit: int = 50, offset: int = 0, order: str = "asc"
    ) -> tuple[list[Row], int]:
        return await self.store.session_logs(session_id, limit=limit, offset=offset, order=order)

    async def session_summary(self, session_id: str) -> Row | None:
        return await self.store.session_summary(session_id)

    async def find(
        self, filters: TurnQuery, *, limit: int = 100, offset: int = 0, order: str = "desc"
    ) -> tuple[list[Row], int]:
        return await self.store.find(filters, limit=limit, offset=offset, order=order)

    async def sessions(self, filters: TurnQuery, *, limit: int = 50, offset: int = 0) -> tuple[list[Row], int]:
        return await self.store.sessions(filters, limit=limit, offset=offset)
