"""The shared store: PostgreSQL through an asyncpg pool."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from bifrost_rt.state.turn_log.schema import INSERT, SCHEMA_VERSION_DDL, migrations
from bifrost_rt.state.turn_log.sql import SqlTurnStore
from bifrost_rt.state.turn_log.store import StoreUnavailable

# SQLSTATE classes a retry can outlive: connection exception, transaction rollback, insufficient resources,
# operator intervention (shutdown, startup), system error.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Any constant shared by every gateway process; it serialises their migrations.
_MIGRATION_LOCK = 0x62_69_66_72_6F_73_74  # "bifrost"


# A dollar-quote opener: `$$` or `$tag$` (a tag never starts with a digit, so `$1` is not one).
_DOLLAR_QUOTE = re.compile(r"\$(?:[^\W\d]\w*)?\$")


def _skip(sql: str, start: int) -> int:
    """The end of the string, quoted name, comment or dollar-quoted text starting at `start`, else `start`.
    An unterminated one runs to the end of the text (the server then reports it)."""
    char, pair = sql[start], sql[start : start + 2]
    if char in "'\"":
        # E'...' strings take backslash escapes; elsewhere a quote is escaped by doubling it.
        escapes = char == "'" and sql[start - 1 : start] in ("E", "e") and not _word(sql, start - 2)
        index = start + 1
        while index < len(sql):
            if escapes and sql[index] == "\\":
                index += 2
            elif sql[index] == char:
                if sql[index + 1 : index + 2] != char:
                    return index + 1
                index += 2
            else:
                index += 1
        return len(sql)
    if pair == "--":
        end = sql.find("\n", start)
        return len(sql) if end < 0 else end
    if pair == "/*":  # block comments nest in PostgreSQL
        depth, index = 0, start
        while index < len(sql):
            if sql.startswith("/*", index):
                depth, index = depth + 1, index + 2
            elif sql.startswith("*/", index):
                depth, index = depth - 1, index + 2
                if not depth:
                    return index
            else:
                index += 1
        return len(sql)
    if char == "$" and not _word(sql, start - 1):
        opener = _DOLLAR_QUOTE.match(sql, start)
        if opener:
            end = sql.find(opener.group(), opener.end())
            return len(sql) if end < 0 else end + len(opener.group())
    return start


def _word(sql: str, index: int) -> bool:
    return index >= 0 and (sql[index].isalnum() or sql[index] in "_$")


@functools.lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """`?` placeholders → PostgreSQL's `$1, $2, …`, outside strings, quoted names and comments.

    The jsonb operators stay writable: `?|` and `?&` are kept as they are, and `??` stands for a literal `?`
    (so `metadata ?? 'voice'` is jsonb's key-exists). A placeholder is therefore never directly followed by
    `?`, `|` or `&`; write `? || x` with a space.
    """
    out: list[str] = []
    count = 0
    index = 0
    while index < len(sql):
        char, after = sql[index], sql[index + 1 : index + 2]
        if char == "?":
            if after in ("|", "&"):
                out.append(char + after)
                index += 2
            elif after == "?":
                out.append("?")
                index += 2
            else:
                count += 1
                out.append(f"${count}")
                index += 1
            continue
        end = _skip(sql, index)
        if end == index:
            end += 1
        out.append(sql[index:end])
        index = end
    return "".join(out)


class PostgresTurnStore(SqlTurnStore):
    """PostgreSQL through an asyncpg pool; JSON columns are JSONB."""

    def __init__(
        self, dsn: str, *, pool_size: int = 4, connect_timeout_s: float = 5.0, command_timeout_s: float = 30.0
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._insert_sql = numbered(INSERT)

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
            await connection.execute(SCHEMA_VERSION_DDL)
            current = await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for version, script in migrations("postgres"):
                if version > current:
                    # Whole: execute() without arguments is the simple-query protocol, so the server's parser
                    # splits the script (quotes, comments, dollar-quoted bodies) and every statement joins the
                    # transaction above, with the schema_version row.
                    await connection.execute(script)
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
            return await connection.fetch(numbered(sql), *params)
