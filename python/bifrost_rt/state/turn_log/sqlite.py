"""The embedded store: one SQLite file, shared by every gateway process on the machine."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bifrost_rt.state.turn_log.schema import INSERT, SCHEMA_VERSION_DDL, migrations
from bifrost_rt.state.turn_log.sql import SqlTurnStore
from bifrost_rt.state.turn_log.store import StoreUnavailable

T = TypeVar("T")


def statements(script: str) -> list[str]:
    """The statements of a script, cut where SQLite's own tokenizer (sqlite3.complete_statement) sees one end,
    so a `;` in a string, a quoted name, a comment or a trigger body stays inside its statement."""
    found = []
    start = 0
    for end in (index + 1 for index, char in enumerate(script) if char == ";"):
        if sqlite3.complete_statement(script[start:end]):
            found.append(script[start:end].strip())
            start = end
    if script[start:].strip():  # a last statement without `;`, or only comments (which run as nothing)
        found.append(script[start:].strip())
    return found


class SQLiteTurnStore(SqlTurnStore):
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
        connection.execute(SCHEMA_VERSION_DDL)
        (current,) = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        for version, script in migrations("sqlite"):
            if version > current:
                # Statement by statement: executescript() would first COMMIT the BEGIN IMMEDIATE around us, so a
                # failing migration could leave part of its DDL applied and unrecorded in schema_version.
                for statement in statements(script):
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
        await self._on(self._write_thread, self._transaction, writer, lambda: writer.executemany(INSERT, rows))

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        reader = self._reader
        if reader is None:
            raise StoreUnavailable("the SQLite turn store is not started")
        return await self._on(self._read_thread, lambda: reader.execute(sql, params).fetchall())
