"""The durable turn log: one row per turn in SQLite (embedded) or PostgreSQL, read by the session-log API.

Both stores share one schema (`schema`), built by the numbered migrations in `migrations/` and recorded in
`schema_version`, and one set of queries (`sql`). Inserts skip ids already stored, so writing a batch again
never duplicates a turn. `SpoolingStore` (`spool`) puts any store behind an fsync'd JSONL spill file: an
unreachable database delays turns, it never loses them. `postgres.PostgresTurnStore` is imported from its module,
so asyncpg loads only where PostgreSQL is configured.

A "session" here is a record's `session_group`: the client's baggage `session-id` when it sent one, else the
gateway session id. The store keeps both ids exactly as recorded.
"""

from bifrost_rt.state.turn_log.schema import COLUMNS, JSON_COLUMNS, TABLE, Row, iso, migrations, total_tokens
from bifrost_rt.state.turn_log.spool import SpoolingStore
from bifrost_rt.state.turn_log.sql import SqlTurnStore
from bifrost_rt.state.turn_log.sqlite import SQLiteTurnStore
from bifrost_rt.state.turn_log.store import ORDERS, StoreUnavailable, TurnLogStore, TurnQuery, condition

__all__ = [
    "COLUMNS",
    "JSON_COLUMNS",
    "ORDERS",
    "TABLE",
    "Row",
    "SQLiteTurnStore",
    "SpoolingStore",
    "SqlTurnStore",
    "StoreUnavailable",
    "TurnLogStore",
    "TurnQuery",
    "condition",
    "iso",
    "migrations",
    "total_tokens",
]
