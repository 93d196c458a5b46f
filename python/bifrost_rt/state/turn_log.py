"""The durable turn log: one row per turn in SQLite (embedded) or PostgreSQL, read by the session-log API.

Both stores share one schema, built by the numbered migrations in `migrations/NNNN_name.sql` and recorded in
`schema_version`. Inserts skip ids already stored, so writing a batch again never duplicates a turn.
`SpoolingStore` puts any store behind an fsync'd JSONL spill file: an unreachable database delays turns, it
never loses them.

A "session" here is a record's `session_group`: the client's baggage `session-id` when it sent one, else the
gateway session id. The store keeps both ids exactly as recorded.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson

from bifrost_rt.records import TurnRecord

logger = logging.getLogger("bifrost_rt.turn_log")
# Records no store can take end up where TurnWriter puts them: one JSON line each on the turns logger.
turns_logger = logging.getLogger("bifrost_rt.turns")

Row = dict[str, Any]
T = TypeVar("T")

TABLE = "realtime_turns"
COLUMNS = (
    "id", "object", "session_id", "session_group", "provider_session_id", "principal", "key_id", "provider",
    "model", "transport", "response_id", "status", "status_reason", "error", "inputs", "input_summary", "output",
    "output_summary", "usage", "transcription_usage", "cost_total", "cost", "total_tokens", "latency_ms",
    "started_at", "ended_at", "metadata", "raw",
)  # fmt: skip
JSON_COLUMNS = frozenset(
    {"error", "inputs", "output", "usage", "transcription_usage", "cost", "latency_ms", "metadata", "raw"}
)
ORDERS = ("asc", "desc")

_SCHEMA_VERSION_DDL = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"


class StoreUnavailable(Exception):
    """The store cannot be reached (not started, connection lost, database locked); a retry may succeed."""


def migrations(json_type: str) -> list[tuple[int, list[str]]]:
    """(version, statements) for every `migrations/NNNN_name.sql`, in version order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            script = entry.read_text("utf-8").replace("{json}", json_type)
            found.append((int(entry.name.split("_", 1)[0]), _statements(script)))
    return sorted(found)


def _statements(script: str) -> list[str]:
    statements = []
    for chunk in script.split(";"):
        code = "\n".join(line for line in chunk.splitlines() if not line.lstrip().startswith("--")).strip()
        if code:
            statements.append(code)
    return statements


def iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def total_tokens(item: Row) -> int:
    """Response tokens plus the tokens of every transcription billed with the turn."""
    usage = item.get("usage") or {}
    transcriptions = item.get("transcription_usage") or ()
    return int(usage.get("total_tokens") or 0) + sum(int(t.get("total_tokens") or 0) for t in transcriptions)


def _without_nul(value: Any) -> Any:
    # PostgreSQL text and jsonb cannot hold U+0000; both stores replace it so they keep the same data.
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _json(value: Any) -> str | None:
    if value is None:
        return None
    text = orjson.dumps(value).decode()
    return text if "\\u0000" not in text else orjson.dumps(_without_nul(value)).decode()


def _params(item: Row) -> tuple[Any, ...]:
    """Insert parameters, in COLUMNS order, from a record dict (TurnRecord.to_dict() or a spilled JSON line)."""
    values: list[Any] = []
    for column in COLUMNS:
        if column == "cost_total":
            value: Any = float((item.get("cost") or {}).get("total") or 0.0)
        elif column == "total_tokens":
            value = total_tokens(item)
        elif column in JSON_COLUMNS:
            value = _json(item.get(column))
        else:
            value = item.get(column)
            if isinstance(value, str) and "\x00" in value:
                value = _without_nul(value)
        values.append(value)
    return tuple(values)


def _row(values: Sequence[Any]) -> Row:
    row = {
        column: orjson.loads(value) if column in JSON_COLUMNS and value is not None else value
        for column, value in zip(COLUMNS, values, strict=True)
    }
    row["started_at_iso"] = iso(row["started_at"])
    row["ended_at_iso"] = iso(row["ended_at"])
    return row


def _direction(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    return order.upper()


class TurnLogStore(abc.ABC):
    """A TurnSink that keeps turns and answers the session-log queries."""

    async def write(self, records: list[TurnRecord]) -> None:
        await self.write_dicts([record.to_dict() for record in records])

    @abc.abstractmethod
    async def write_dicts(self, items: list[Row]) -> None:
        """Store records given as dicts; ids already stored are skipped. Atomic: all of the batch or none."""

    @abc.abstractmethod
    def is_transient(self, error: BaseException) -> bool:
        """True when `error` means the store is unreachable or busy, so the same write may succeed later."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and apply pending migrations; safe to call again after a failure."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def session_logs(
        self, session_id: str, *, limit: int = 50, offset: int = 0, order: str = "asc"
    ) -> tuple[list[Row], int]:
        """One page of a session group's turns by (started_at, id), and the group's total turn count."""

    @abc.abstractmethod
    async def session_summary(self, session_id: str) -> Row | None:
        """Totals over a session group; None when it has no turns."""

    @abc.abstractmethod
    async def query(
        self,
        *,
        principal: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "desc",
    ) -> tuple[list[Row], int]:
        """One page of the turns matching every given filter (`since` inclusive, `until` exclusive), and their count."""


class _SqlTurnStore(TurnLogStore):
    """The queries both SQL stores share; subclasses run them (with `?` placeholders) on their driver."""

    @abc.abstractmethod
    async def _insert(self, rows: list[tuple[Any, ...]]) -> None: ...

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]: ...

    async def write_dicts(self, items: list[Row]) -> None:
        if items:
            await self._insert([_params(item) for item in items])

    async def _select(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        try:
            return await self._fetch(sql, params)
        except Exception as error:
            if self.is_transient(error) and not isinstance(error, StoreUnavailable):
                raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
            raise

    async def _page(
        self, where: str, params: list[Any], limit: int, offset: int, order: str
    ) -> tuple[list[Row], int]:
        if limit < 1 or offset < 0:
            raise ValueError("limit must be at least 1 and offset at least 0")
        direction = _direction(order)
        (count,) = await self._select(f"SELECT COUNT(*) FROM {TABLE} WHERE {where}", params)
        total = int(count[0])
        if offset >= total:
            return [], total
        rows = await self._select(
            f"{_SELECT} WHERE {where} ORDER BY started_at {direction}, id {direction} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_row(row) for row in rows], total

    async def session_logs(
        self, session_id: str, *, limit: int = 50, offset: int = 0, order: str = "asc"
    ) -> tuple[list[Row], int]:
        return await self._page("session_group = ?", [session_id], limit, offset, order)

    async def session_summary(self, session_id: str) -> Row | None:
        ((count, tokens, cost, started_at, latest_at),) = await self._select(
            "SELECT COUNT(*), CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT), COALESCE(SUM(cost_total), 0), "
            f"MIN(started_at), MAX(ended_at) FROM {TABLE} WHERE session_group = ?",
            [session_id],
        )
        if not count:
            return None
        return {
            "session_id": session_id,
            "turn_count": int(count),
            "total_tokens": int(tokens),
            "total_cost": float(cost),
            "started_at": started_at,
            "started_at_iso": iso(started_at),
            "latest_at": latest_at,  # the end of the session's last turn
            "latest_at_iso": iso(latest_at),
            "duration_ms": round(max(0.0, latest_at - started_at) * 1000, 3),
        }

    async def query(
        self,
        *,
        principal: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "desc",
    ) -> tuple[list[Row], int]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("principal", principal), ("key_id", key_id), ("model", model), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("started_at >= ?")
            params.append(float(since))
        if until is not None:
            clauses.append("started_at < ?")
            params.append(float(until))
        return await self._page(" AND ".join(clauses) or "1 = 1", params, limit, offset, order)


class SQLiteTurnStore(_SqlTurnStore):
    """The embedded store: one database file in WAL mode, so reads never wait for the writer.

    sqlite3 blocks, so each connection lives on its own thread: one writer, one reader. Several gateway
    processes may share the file; SQLite serialises their writers (waiting up to `busy_timeout_s`).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="bifrost-rt-turn-log-writer")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="bifrost-rt-turn-log-reader")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    async def start(self) -> None:
        if self._writer is None:
            self._writer = await self._on(self._write_thread, self._open_and_migrate)
        if self._reader is None:
            self._reader = await self._on(self._read_thread, self._open)

    async def close(self) -> None:
        for thread, connection in ((self._write_thread, self._writer), (self._read_thread, self._reader)):
            if connection is not None:
                await self._on(thread, connection.close)
            thread.shutdown(wait=True)
        self._writer = self._reader = None

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, (StoreUnavailable, OSError, sqlite3.OperationalError))

    @staticmethod
    async def _on(thread: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, function, *args)

    def _open(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front).
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")  # a committed turn survives a power cut
        return connection

    def _open_and_migrate(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._open()
        try:
            self._transaction(connection, lambda: self._migrate(connection))
        except BaseException:
            connection.close()
            raise
        return connection

    @staticmethod
    def _migrate(connection: sqlite3.Connection) -> None:
        connection.execute(_SCHEMA_VERSION_DDL)
        (current,) = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        for version, statements in migrations("TEXT"):
            if version > current:
                for statement in statements:
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time())
                )

    @staticmethod
    def _transaction(connection: sqlite3.Connection, body: Callable[[], None]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            body()
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    async def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        writer = self._writer
        if writer is None:
            raise StoreUnavailable("the SQLite turn store is not started")
        await self._on(self._write_thread, self._transaction, writer, lambda: writer.executemany(_INSERT, rows))

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        reader = self._reader
        if reader is None:
            raise StoreUnavailable("the SQLite turn store is not started")
        return await self._on(self._read_thread, lambda: reader.execute(sql, params).fetchall())


# SQLSTATE classes a retry can outlive: connection exception, transaction rollback, insufficient resources,
# operator intervention (shutdown, startup), system error.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Any constant shared by every gateway process; it serialises their migrations.
_MIGRATION_LOCK = 0x62_69_66_72_6F_73_74  # "bifrost"


def _numbered(sql: str) -> str:
    """`?` placeholders → PostgreSQL's `$1, $2, …` (the shared SQL holds no other `?`)."""
    parts = sql.split("?")
    return "".join(f"{part}${index}" for index, part in enumerate(parts[:-1], 1)) + parts[-1]


class PostgresTurnStore(_SqlTurnStore):
    """PostgreSQL through an asyncpg pool; JSON columns are JSONB."""

    def __init__(
        self, dsn: str, *, pool_size: int = 4, connect_timeout_s: float = 5.0, command_timeout_s: float = 30.0
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._insert_sql = _numbered(_INSERT)

    async def start(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,  # no background reconnect loop during an outage; migrating below connects now
            max_size=self._pool_size,
            timeout=self._connect_timeout_s,
            command_timeout=self._command_timeout_s,
        )
        try:
            async with pool.acquire() as connection:
                await self._migrate(connection)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    @staticmethod
    async def _migrate(connection: asyncpg.Connection) -> None:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await connection.execute(_SCHEMA_VERSION_DDL)
            current = await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for version, statements in migrations("JSONB"):
                if version > current:
                    for statement in statements:
                        await connection.execute(statement)
                    await connection.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)", version, time.time()
                    )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._command_timeout_s)
            except asyncio.TimeoutError:
                pool.terminate()

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, (StoreUnavailable, OSError, asyncio.TimeoutError)):
            return True
        if isinstance(error, asyncpg.PostgresError):
            return (error.sqlstate or "")[:2] in _TRANSIENT_SQLSTATE_CLASSES
        # asyncpg reports closed connections and pools as InterfaceError; a value it cannot encode is also a
        # ValueError, and retrying that would never succeed.
        return isinstance(error, asyncpg.InterfaceError) and not isinstance(error, ValueError)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL turn store is not started")
        return self._pool

    async def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        async with self._require_pool().acquire() as connection:
            await connection.executemany(self._insert_sql, rows)  # atomic in asyncpg

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        async with self._require_pool().acquire() as connection:
            return await connection.fetch(_numbered(sql), *params)


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

    async def query(
        self,
        *,
        principal: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "desc",
    ) -> tuple[list[Row], int]:
        return await self.store.query(
            principal=principal, key_id=key_id, model=model, status=status,
            since=since, until=until, limit=limit, offset=offset, order=order,
        )  # fmt: skip
