"""The durable turn log and the session-log API, on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from bifrost_rt.http.logs_api import LogsApi
from bifrost_rt.records import TurnRecord
from bifrost_rt.state.turn_log import (
    SpoolingStore,
    SQLiteTurnStore,
    StoreUnavailable,
    TurnLogStore,
    TurnQuery,
    condition,
    postgres,
    schema,
)
from bifrost_rt.state.turn_log.postgres import PostgresTurnStore
from bifrost_rt.state.turn_writer import TurnWriter

from servers import ServerThread
from services import PostgresServer, free_port, postgres_dsn, postgres_server  # noqa: F401 (fixtures)

BASE = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ADMIN_KEY = "sk-admin-test"
DRAIN_TIMEOUT_S = 30


def record(
    n: int,
    *,
    group: str = "group-a",
    session_id: str = "sess_gateway_a",
    principal: str = "team-a",
    key_id: str = "vk_aaaa",
    model: str = "gpt-realtime",
    status: str = "completed",
    started_at: float | None = None,
    tokens: int = 100,
    transcription_tokens: tuple[int, ...] = (),
    cost: float = 0.25,
) -> TurnRecord:
    start = BASE + n if started_at is None else started_at
    return TurnRecord(
        id=f"turn_{n:05d}",
        session_id=session_id,
        provider_session_id="sess_provider_a",
        session_group=group,
        principal=principal,
        key_id=key_id,
        provider="openai",
        model=model,
        transport="websocket",
        response_id=f"resp_{n}",
        status=status,
        status_reason=None if status == "completed" else "client_closed",
        error=None if status == "completed" else {"type": "server_error", "code": "upstream_connection_lost"},
        inputs=[{"kind": "text", "item_id": f"item_{n}", "call_id": None, "text": f"question {n}"}],
        input_summary=f"question {n}",
        output={"text": f"answer {n}", "transcript": "", "audio_bytes": 0, "tool_calls": []},
        output_summary=f"answer {n}",
        usage={"input_tokens": tokens // 2, "output_tokens": tokens - tokens // 2, "total_tokens": tokens},
        transcription_usage=[{"kind": "tokens", "total_tokens": t, "item_id": f"item_{n}"} for t in transcription_tokens],
        cost={"total": cost, "transcription": 0.0},
        latency_ms={"first_delta": 120.5, "total": 900.25, "queue": 3.0},
        started_at=start,
        ended_at=start + 0.5,
        metadata={"voice": "alloy", "priced": True},
    )


def jsonl(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


@dataclass
class StoreKind:
    name: str
    target: str  # the SQLite file or the PostgreSQL DSN

    def make(self) -> TurnLogStore:
        return SQLiteTurnStore(self.target) if self.name == "sqlite" else PostgresTurnStore(self.target)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the database directly, bypassing the store."""
        if self.name == "sqlite":
            with contextlib.closing(sqlite3.connect(self.target)) as connection:
                return connection.execute(sql).fetchall()
        connection = await asyncpg.connect(self.target)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKind:
    if request.param == "sqlite":
        return StoreKind("sqlite", str(tmp_path / "turns.db"))
    return StoreKind("postgres", request.getfixturevalue("postgres_dsn"))


@pytest.fixture
async def store(store_kind: StoreKind) -> AsyncIterator[TurnLogStore]:
    store = store_kind.make()
    await store.start()
    yield store
    await store.close()


# The stores ------------------------------------------------------------------------------------------------


async def test_a_turn_reads_back_as_written_with_derived_totals(store: TurnLogStore) -> None:
    written = record(1, tokens=120, transcription_tokens=(7, 5), cost=0.375)
    await store.write([written])
    rows, total = await store.session_logs("group-a")
    assert total == 1
    assert rows == [
        {
            **written.to_dict(),
            "cost_total": 0.375,
            "total_tokens": 132,
            "raw": None,
            "started_at_iso": "2023-11-14T22:13:21.000000Z",
            "ended_at_iso": "2023-11-14T22:13:21.500000Z",
        }
    ]
    assert rows[0]["object"] == "realtime.turn"


async def test_writing_a_turn_again_changes_nothing(store: TurnLogStore) -> None:
    first = [record(n) for n in range(3)]
    await store.write(first)
    changed = record(1, cost=9.0)  # same id: the turn already stored wins
    await store.write([*first, changed, record(3)])
    rows, total = await store.session_logs("group-a")
    assert total == 4
    assert ids(rows) == ["turn_00000", "turn_00001", "turn_00002", "turn_00003"]
    assert rows[1]["cost"]["total"] == 0.25


async def test_session_pages_honour_every_limit_up_to_500(store: TurnLogStore) -> None:
    # turns 0 and 1 start at the same moment: the id breaks the tie, in the requested direction
    await store.write([record(n, started_at=BASE if n < 2 else None) for n in range(520)])
    every = [f"turn_{n:05d}" for n in range(520)]

    rows, total = await store.session_logs("group-a", limit=500)
    assert (len(rows), total) == (500, 520)
    assert ids(rows) == every[:500]

    rows, total = await store.session_logs("group-a", limit=500, offset=500)
    assert (ids(rows), total) == (every[500:], 520)

    rows, _ = await store.session_logs("group-a", limit=500, order="desc")
    assert ids(rows) == every[::-1][:500]
    rows, _ = await store.session_logs("group-a", limit=3, offset=517, order="desc")
    assert ids(rows) == ["turn_00002", "turn_00001", "turn_00000"]

    assert await store.session_logs("group-a", offset=520) == ([], 520)


async def test_store_refuses_pages_it_cannot_define(store: TurnLogStore) -> None:
    with pytest.raises(ValueError):
        await store.session_logs("group-a", order="sideways")
    with pytest.raises(ValueError):
        await store.query(limit=0)
    with pytest.raises(ValueError):
        await store.query(offset=-1)


async def test_session_summary_adds_up_its_turns(store: TurnLogStore) -> None:
    await store.write(
        [
            record(1, tokens=100, cost=0.25),
            record(2, tokens=60, transcription_tokens=(15,), cost=0.5, started_at=BASE + 10),
            record(3, tokens=40, cost=0.125, started_at=BASE + 4),  # written late, started in between
            record(4, group="group-b", tokens=1000, cost=10.0),
        ]
    )
    assert await store.session_summary("group-a") == {
        "session_id": "group-a",
        "turn_count": 3,
        "total_tokens": 100 + 60 + 15 + 40,
        "total_cost": 0.875,
        "started_at": BASE + 1,
        "started_at_iso": "2023-11-14T22:13:21.000000Z",
        "latest_at": BASE + 10.5,  # the end of the last turn
        "latest_at_iso": "2023-11-14T22:13:30.500000Z",
        "duration_ms": 9500.0,
    }


async def test_an_unknown_session_has_an_empty_page_and_no_summary(store: TurnLogStore) -> None:
    await store.write([record(1)])
    assert await store.session_logs("no-such-group") == ([], 0)
    assert await store.session_summary("no-such-group") is None


async def test_a_session_is_the_client_group_not_a_gateway_or_provider_id(store: TurnLogStore) -> None:
    # Two gateway sessions the client grouped with one baggage `session-id`.
    await store.write(
        [
            record(1, group="baggage-42", session_id="sess_gateway_1"),
            record(2, group="baggage-42", session_id="sess_gateway_2"),
            record(3, group="sess_gateway_3", session_id="sess_gateway_3"),
        ]
    )
    rows, total = await store.session_logs("baggage-42")
    assert total == 2
    assert [(r["session_id"], r["session_group"], r["provider_session_id"]) for r in rows] == [
        ("sess_gateway_1", "baggage-42", "sess_provider_a"),
        ("sess_gateway_2", "baggage-42", "sess_provider_a"),
    ]
    assert await store.session_logs("sess_gateway_1") == ([], 0)
    assert await store.session_logs("sess_provider_a") == ([], 0)
    assert (await store.session_logs("sess_gateway_3"))[1] == 1


async def test_query_filters_combine_and_default_to_newest_first(store: TurnLogStore) -> None:
    await store.write(
        [
            record(1, principal="team-a", key_id="vk_aaaa", model="gpt-realtime"),
            record(2, principal="team-b", key_id="vk_bbbb", model="gpt-realtime-mini"),
            record(3, principal="team-a", key_id="vk_aaaa", model="gpt-realtime-mini", status="failed"),
            record(4, principal="team-b", key_id="vk_bbbb", model="gpt-realtime", status="interrupted"),
            record(5, principal="team-a", key_id="vk_aaaa", model="gpt-realtime"),
        ]
    )

    async def query_ids(**filters: Any) -> tuple[list[str], int]:
        rows, total = await store.query(**filters)
        return ids(rows), total

    assert await query_ids() == (["turn_00005", "turn_00004", "turn_00003", "turn_00002", "turn_00001"], 5)
    assert await query_ids(order="asc", limit=2) == (["turn_00001", "turn_00002"], 5)
    assert await query_ids(principal="team-a") == (["turn_00005", "turn_00003", "turn_00001"], 3)
    assert await query_ids(key_id="vk_bbbb") == (["turn_00004", "turn_00002"], 2)
    assert await query_ids(model="gpt-realtime-mini") == (["turn_00003", "turn_00002"], 2)
    assert await query_ids(status="failed") == (["turn_00003"], 1)
    assert await query_ids(principal="team-a", model="gpt-realtime") == (["turn_00005", "turn_00001"], 2)
    # since is inclusive, until exclusive
    assert await query_ids(since=BASE + 2, until=BASE + 4) == (["turn_00003", "turn_00002"], 2)
    assert await query_ids(principal="team-c") == ([], 0)


async def test_a_filter_is_one_turn_query_field_every_store_passes_through(store_kind: StoreKind, tmp_path: Path) -> None:
    @dataclass(frozen=True, kw_only=True)
    class ByProvider(TurnQuery):
        provider: str | None = condition("provider = ?")

    inner = store_kind.make()
    spooled = SpoolingStore(inner, tmp_path / "turns.jsonl")
    await spooled.start()
    try:
        azure = [record(2), record(3)]
        for turn in azure:
            turn.provider = "azure"
        await spooled.write([record(1), *azure])
        for store in (inner, spooled):
            rows, total = await store.find(ByProvider(provider="azure"))
            assert (ids(rows), total) == (["turn_00003", "turn_00002"], 2)
            rows, total = await store.find(ByProvider(provider="azure", until=BASE + 3), order="asc")
            assert (ids(rows), total) == (["turn_00002"], 1)
            assert (await store.query(since=BASE + 2, limit=1))[1] == 2
            with pytest.raises(TypeError):
                await store.query(virtual_key="team-a")  # the API's name for principal is not a filter
    finally:
        await spooled.close()


async def test_sessions_are_pages_of_groups_with_totals_over_all_their_turns(store: TurnLogStore) -> None:
    turns = [
        record(1, group="support-call", session_id="sess_a"),
        record(2, group="support-call", session_id="sess_b", status="failed", cost=0.5, tokens=40),
        record(3, group="other", session_id="sess_c", principal="team-b"),
        record(4, group="third", session_id="sess_d"),
        record(5, group="support-call", session_id="sess_b", model="gpt-realtime-mini", started_at=BASE + 10),
    ]
    turns[2].transport = "webrtc"
    turns[3].provider = "azure"
    turns[3].input_summary = "100% sure_thing"
    await store.write(turns)

    rows, total = await store.sessions(TurnQuery())
    assert total == 3
    assert [row["session_id"] for row in rows] == ["support-call", "third", "other"]  # by latest turn
    support = rows[0]
    assert support["turn_count"] == 3 and support["total_tokens"] == 240 and support["total_cost"] == 1.0
    assert support["gateway_sessions"] == 2 and support["failed_turns"] == 1 and support["refused_turns"] == 0
    assert support["model"] == "gpt-realtime, gpt-realtime-mini"
    assert support["started_at"] == BASE + 1 and support["latest_at"] == BASE + 10.5

    page, total = await store.sessions(TurnQuery(), limit=2, offset=2)
    assert ([row["session_id"] for row in page], total) == (["other"], 3)
    assert await store.sessions(TurnQuery(), offset=3) == ([], 3)

    async def groups(**filters: Any) -> list[str]:
        return [row["session_id"] for row in (await store.sessions(TurnQuery(**filters)))[0]]

    # A group is listed when one of its turns matches; its totals stay those of all its turns.
    (failed,), _ = await store.sessions(TurnQuery(status="failed"))
    assert failed["session_id"] == "support-call" and failed["turn_count"] == 3
    assert await groups(transport="webrtc") == ["other"]
    assert await groups(provider="azure") == ["third"]
    assert await groups(principal="team-b") == ["other"]
    assert await groups(model="gpt-realtime-mini") == ["support-call"]
    assert await groups(since=BASE + 3, until=BASE + 5) == ["third", "other"]
    assert await groups(text="ANSWER 3") == ["other"]  # case-insensitive, in what was said or answered
    assert await groups(text="0% sure_") == ["third"]  # LIKE's wildcards are taken literally
    assert await groups(text="1_0") == []
    assert await groups(text="%") == ["third"]
    with pytest.raises(ValueError):
        await store.sessions(TurnQuery(), limit=0)

    # The longest summaries a record holds, in four-byte characters that do not compress, still go into the
    # indexes (a PostgreSQL B-tree entry holds 2.7 kB at most) and are found.
    wide = record(6, group="wide")
    wide.input_summary = "".join(chr(0x20000 + (n * 7919) % 0xA000) for n in range(1023)) + "…"
    wide.output_summary = "".join(chr(0x20000 + (n * 104729) % 0xA000) for n in range(1023)) + "…"
    await store.write([wide])
    assert await groups(text=wide.input_summary[500:503]) == ["wide"]


async def test_nul_characters_are_kept_as_replacement_characters(store: TurnLogStore) -> None:
    written = record(1)
    written.input_summary = "a\x00b"
    written.inputs[0]["text"] = "a\x00b"
    await store.write([written])
    (row,), _ = await store.session_logs("group-a")
    assert row["input_summary"] == "a\ufffdb"
    assert row["inputs"][0]["text"] == "a\ufffdb"


async def test_migrations_apply_once_and_data_survives_a_restart(store_kind: StoreKind, store: TurnLogStore) -> None:
    await store.write([record(1)])
    await store.close()
    again = store_kind.make()
    await again.start()
    try:
        assert (await again.session_logs("group-a"))[1] == 1
    finally:
        await again.close()
    assert [version for version, _ in await store_kind.fetch("SELECT version, applied_at FROM schema_version")] == [1, 2, 3]
    if store_kind.name == "sqlite":
        assert await store_kind.fetch("PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("a = ? AND b = ?", "a = $1 AND b = $2"),
        ("a = 'what?' AND b = 'it''s?' AND c = ?", "a = 'what?' AND b = 'it''s?' AND c = $1"),
        ("a = E'it\\'s?' AND b = 'back\\' AND c = ?", "a = E'it\\'s?' AND b = 'back\\' AND c = $1"),
        ('"odd?name" = ? -- why?\n/* a /* nested? */ comment? */ AND b = ?', '"odd?name" = $1 -- why?\n/* a /* nested? */ comment? */ AND b = $2'),
        ("$$?$$ = ? AND $q$ ?$$? $q$ = ?", "$$?$$ = $1 AND $q$ ?$$? $q$ = $2"),
        ("m ?? 'k' AND m ?| ARRAY['k'] AND m ?& ARRAY['k'] AND n = ?", "m ? 'k' AND m ?| ARRAY['k'] AND m ?& ARRAY['k'] AND n = $1"),
    ],
)
def test_postgres_placeholders_are_numbered_outside_literals(sql: str, expected: str) -> None:
    assert postgres.numbered(sql) == expected


async def test_postgres_queries_can_use_jsonb_operators_and_literals_with_question_marks(postgres_dsn: str) -> None:  # noqa: F811
    store = PostgresTurnStore(postgres_dsn)
    await store.start()
    try:
        unpriced = record(2)
        unpriced.metadata = {"voice": "alloy"}
        await store.write([record(1), unpriced, record(3, model="what?")])
        sql = (
            "SELECT id, 'why?' FROM realtime_turns WHERE metadata ?? 'voice' AND metadata ?| ARRAY['priced', 'none'] "
            "AND metadata ?& ARRAY['voice', 'priced'] AND model <> 'what?' AND model = ? -- which model?\n"
            "AND id <> E'it\\'s?' AND id <> $q$?$q$ AND started_at >= ? ORDER BY id"
        )
        rows = await store._fetch(sql, ["gpt-realtime", BASE])
        assert [tuple(row) for row in rows] == [("turn_00001", "why?")]
        assert await store._fetch("SELECT id FROM realtime_turns WHERE metadata ?? ?", ["nothing"]) == []
    finally:
        await store.close()


# A second migration that `;` outside a statement's end must not cut: in comments, strings, a body.
TRICKY_MIGRATION = """\
-- A note; the script goes on.
CREATE TABLE migration_notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, extra {json}); /* and on; */
INSERT INTO migration_notes (id, body) VALUES (1, 'semi;colon'), (2, 'it''s; "quoted"');
"""
TRICKY_BODY = {
    "sqlite": """\
CREATE TRIGGER migration_notes_stamp AFTER INSERT ON migration_notes WHEN NEW.id > 2 BEGIN
    UPDATE migration_notes SET body = body || ';' WHERE id = NEW.id;
END;
INSERT INTO migration_notes (id, body) VALUES (3, 'x')
""",
    "postgres": """\
CREATE FUNCTION migration_notes_stamp() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    NEW.body := NEW.body || ';';
    RETURN NEW;
END;
$body$;
CREATE TRIGGER migration_notes_stamp BEFORE INSERT ON migration_notes FOR EACH ROW WHEN (NEW.id > 2)
    EXECUTE FUNCTION migration_notes_stamp();
INSERT INTO migration_notes (id, body) VALUES (3, 'x')
""",
}


@pytest.fixture
def migrations_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A copy of the package's migrations that a test may add to."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for entry in schema.MIGRATIONS.iterdir():
        (directory / entry.name).write_text(entry.read_text("utf-8"), "utf-8")
    monkeypatch.setattr(schema, "MIGRATIONS", directory)
    return directory


async def test_a_semicolon_inside_a_statement_does_not_split_a_migration(store_kind: StoreKind, migrations_dir: Path) -> None:
    (migrations_dir / "0004_tricky.sql").write_text(TRICKY_MIGRATION + TRICKY_BODY[store_kind.name], "utf-8")
    store = store_kind.make()
    await store.start()
    await store.close()
    assert await store_kind.fetch("SELECT id, body FROM migration_notes ORDER BY id") == [
        (1, "semi;colon"),
        (2, 'it\'s; "quoted"'),
        (3, "x;"),
    ]
    assert [version for (version,) in await store_kind.fetch("SELECT version FROM schema_version ORDER BY version")] == [1, 2, 3, 4]


async def test_a_failing_migration_leaves_nothing_behind(store_kind: StoreKind, migrations_dir: Path) -> None:
    (migrations_dir / "0004_broken.sql").write_text(
        "CREATE TABLE migration_notes (id INTEGER PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n", "utf-8"
    )
    store = store_kind.make()
    with pytest.raises((sqlite3.Error, asyncpg.PostgresError)):
        await store.start()
    await store.close()
    tables = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "postgres": "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
    }[store_kind.name]
    assert await store_kind.fetch(tables) == []  # 0001-0003 and schema_version rolled back with 0004
    (migrations_dir / "0004_broken.sql").unlink()
    again = store_kind.make()
    await again.start()  # nothing half-applied is in the way
    await again.close()
    assert await store_kind.fetch("SELECT version FROM schema_version ORDER BY version") == [(1,), (2,), (3,)]


async def test_a_log_from_before_turn_audio_gains_the_audio_column_and_keeps_its_turns(
    store_kind: StoreKind, migrations_dir: Path
) -> None:
    # The log as it was before: only 0001 (every later migration comes back below).
    later = {entry: entry.read_text("utf-8") for entry in migrations_dir.iterdir() if not entry.name.startswith("0001_")}
    for entry in later:
        entry.unlink()
    old = store_kind.make()
    await old.start()
    await old.close()
    # A turn as the previous schema held it: every column but audio.
    columns = [c for c in schema.COLUMNS if c != "audio"]
    values = schema.to_params(record(1).to_dict())[: len(columns)]
    if store_kind.name == "sqlite":
        with contextlib.closing(sqlite3.connect(store_kind.target)) as connection, connection:
            connection.execute(f"INSERT INTO {schema.TABLE} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values)
    else:
        connection = await asyncpg.connect(store_kind.target)
        try:
            placeholders = ", ".join(f"${n + 1}" for n in range(len(columns)))
            await connection.execute(f"INSERT INTO {schema.TABLE} ({', '.join(columns)}) VALUES ({placeholders})", *values)
        finally:
            await connection.close()
    for entry, script in later.items():
        entry.write_text(script, "utf-8")
    store = store_kind.make()
    await store.start()
    try:
        recorded = record(2)
        recorded.audio = {"input": {"format": "pcm16", "bytes": 48000, "duration_ms": 1000.0}}
        await store.write([recorded])
        rows, total = await store.session_logs("group-a")
        assert total == 2
        assert [(row["id"], row["audio"]) for row in rows] == [("turn_00001", None), ("turn_00002", recorded.audio)]
    finally:
        await store.close()


# Spilling and replay ---------------------------------------------------------------------------------------


async def test_turns_written_during_a_postgres_outage_are_replayed_exactly_once(
    postgres_server: PostgresServer, postgres_dsn: str, tmp_path: Path  # noqa: F811 (fixtures)
) -> None:
    spill = tmp_path / "spill" / "turns.jsonl"
    inner = PostgresTurnStore(postgres_dsn, connect_timeout_s=2)
    store = SpoolingStore(inner, spill, retry_initial_s=0.05, retry_max_s=0.2)
    await store.start()
    writer = TurnWriter([store], batch_size=8)
    writer.start()

    before = [record(n) for n in range(10)]
    await store.write(before)
    during = [record(n) for n in range(10, 40)]
    await inner.write(during[:15])  # a batch the store took in part just before the outage
    queued = [record(n) for n in range(40, 60)]
    try:
        await asyncio.to_thread(postgres_server.stop)
        await store.write(during)  # spilled, not raised
        for turn in queued:
            writer.submit(turn)
        await writer.close()  # every queued turn delivered to the sink (into the spill file)
        assert (writer.sink_failures, writer.overflowed) == (0, 0)
        assert store.spilled == 50
        assert len(spill.read_bytes().splitlines()) == 50
        with pytest.raises(StoreUnavailable):
            await store.session_logs("group-a")
    finally:
        await asyncio.to_thread(postgres_server.start)

    await asyncio.wait_for(store.wait_drained(), DRAIN_TIMEOUT_S)
    try:
        rows, total = await store.session_logs("group-a", limit=500)
        assert total == 60
        assert ids(rows) == [f"turn_{n:05d}" for n in range(60)]
        assert spill.stat().st_size == 0
        assert store.replayed == 50
        assert store.write_failures >= 1
        assert (store.rejected, store.spill_errors, store.spilled_over_limit) == (0, 0, 0)
        # turns go straight to the store again
        await store.write([record(60)])
        assert (await store.session_logs("group-a", limit=500))[1] == 61
        assert spill.stat().st_size == 0
    finally:
        await store.close()


async def test_start_replays_what_a_previous_process_spilled(store_kind: StoreKind, tmp_path: Path) -> None:
    records = [record(n) for n in range(5)]
    previous = store_kind.make()
    await previous.start()
    await previous.write(records[:2])  # stored before that process also spilled them
    await previous.close()
    spill = tmp_path / "turns.jsonl"
    spill.write_bytes(jsonl([r.to_dict() for r in records]) + b'{"id": "turn_torn", "obj')  # torn by a crash

    store = SpoolingStore(store_kind.make(), spill)
    await store.start()
    try:
        await asyncio.wait_for(store.wait_drained(), DRAIN_TIMEOUT_S)
        rows, total = await store.session_logs("group-a")
        assert (ids(rows), total) == ([r.id for r in records], 5)
        assert spill.stat().st_size == 0
        assert (store.replayed, store.spill_unreadable) == (5, 1)
    finally:
        await store.close()


async def test_a_turn_the_store_refuses_is_logged_and_the_others_are_stored(
    store_kind: StoreKind, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bifrost_rt.turns")
    spill = tmp_path / "turns.jsonl"
    refused = {"id": "turn_refused", "object": "realtime.turn"}  # no session, status, … : NOT NULL columns
    spill.write_bytes(jsonl([record(1).to_dict(), refused, record(2).to_dict()]))

    store = SpoolingStore(store_kind.make(), spill)
    await store.start()
    try:
        await asyncio.wait_for(store.wait_drained(), DRAIN_TIMEOUT_S)
        rows, _ = await store.session_logs("group-a")
        assert ids(rows) == ["turn_00001", "turn_00002"]
        assert store.rejected == 1
        lines = [r.getMessage() for r in caplog.records if r.name == "bifrost_rt.turns"]
        assert [orjson.loads(line) for line in lines] == [refused]
    finally:
        await store.close()


async def test_a_spill_file_past_its_bound_still_takes_every_turn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bifrost_rt.turn_log")
    unreachable = PostgresTurnStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", connect_timeout_s=1)
    spill = tmp_path / "turns.jsonl"
    store = SpoolingStore(unreachable, spill, max_bytes=4096, retry_initial_s=60)
    await store.start()  # an unreachable store does not fail start(): turns are spooled
    try:
        turns = [record(n) for n in range(20)]
        for turn in turns:
            await store.write([turn])
        lines = spill.read_bytes().splitlines()
        assert [orjson.loads(line)["id"] for line in lines] == [t.id for t in turns]
        sizes = [sum(len(line) + 1 for line in lines[: i + 1]) for i in range(len(lines))]
        assert store.spilled == 20
        assert store.spilled_over_limit == sum(size > 4096 for size in sizes) > 0
        assert sum("exceeds 4096 bytes" in r.getMessage() for r in caplog.records) == 1
        with pytest.raises(StoreUnavailable):
            await store.query()
    finally:
        await store.close()
    assert len(spill.read_bytes().splitlines()) == 20  # kept for the next start


# The API ---------------------------------------------------------------------------------------------------


def dataset() -> list[TurnRecord]:
    big = [record(n, group="big") for n in range(520)]
    small = [
        record(1000, group="small", principal="team-a", model="gpt-realtime", tokens=100, cost=0.25),
        record(1001, group="small", principal="team-b", key_id="vk_bbbb", model="gpt-realtime-mini", tokens=50, transcription_tokens=(8,), cost=0.5),
        record(1002, group="small", principal="team-b", key_id="vk_bbbb", model="gpt-realtime", status="failed", tokens=0, cost=0.0),
    ]
    return big + small


def logs_app(store: TurnLogStore) -> Starlette:
    api = LogsApi(store, lambda credential: credential == ADMIN_KEY)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()
        yield
        await store.close()

    return Starlette(
        routes=[
            Route("/api/logs", api.logs),
            Route("/api/logs/sessions/{session_id}", api.session_logs),
            Route("/api/logs/sessions/{session_id}/summary", api.session_summary),
        ],
        lifespan=lifespan,
    )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A logs API over the dataset, served by uvicorn; read-only, so shared by the module's API tests."""
    if request.param == "sqlite":
        kind = StoreKind("sqlite", str(tmp_path_factory.mktemp("api") / "turns.db"))
    else:
        kind = StoreKind("postgres", request.getfixturevalue("postgres_server").fresh_database())

    async def populate() -> None:
        store = kind.make()
        await store.start()
        await store.write(dataset())
        await store.close()

    asyncio.run(populate())
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with ServerThread(logs_app(kind.make())) as server, httpx.Client(base_url=server.url, headers=admin) as client:
        yield client


def test_session_logs_pages_of_500(api: httpx.Client) -> None:
    response = api.get("/api/logs/sessions/big", params={"limit": 500})
    assert response.status_code == 200
    body = response.json()
    assert {k: v for k, v in body.items() if k != "logs"} == {
        "object": "list",
        "session_id": "big",
        "total_count": 520,
        "returned_count": 500,
        "limit": 500,
        "offset": 0,
        "order": "asc",
        "has_more": True,
    }
    assert ids(body["logs"]) == [f"turn_{n:05d}" for n in range(500)]
    first = body["logs"][0]
    assert (first["object"], first["session_group"], first["started_at_iso"]) == ("realtime.turn", "big", "2023-11-14T22:13:20.000000Z")
    assert first["inputs"] == [{"kind": "text", "item_id": "item_0", "call_id": None, "text": "question 0"}]

    rest = api.get("/api/logs/sessions/big", params={"limit": 500, "offset": 500}).json()
    assert (rest["returned_count"], rest["has_more"]) == (20, False)
    assert ids(rest["logs"]) == [f"turn_{n:05d}" for n in range(500, 520)]

    default = api.get("/api/logs/sessions/big").json()
    assert (default["limit"], default["returned_count"], default["order"]) == (50, 50, "asc")

    newest = api.get("/api/logs/sessions/big", params={"limit": 2, "order": "desc"}).json()
    assert ids(newest["logs"]) == ["turn_00519", "turn_00518"]


def test_an_unknown_session_is_an_empty_page(api: httpx.Client) -> None:
    response = api.get("/api/logs/sessions/nobody")
    assert response.status_code == 200
    body = response.json()
    assert (body["logs"], body["total_count"], body["returned_count"], body["has_more"]) == ([], 0, 0, False)


def test_session_summary(api: httpx.Client) -> None:
    response = api.get("/api/logs/sessions/small/summary")
    assert response.status_code == 200
    assert response.json() == {
        "session_id": "small",
        "turn_count": 3,
        "total_tokens": 158,
        "total_cost": 0.75,
        "started_at": BASE + 1000,
        "started_at_iso": "2023-11-14T22:30:00.000000Z",
        "latest_at": BASE + 1002.5,
        "latest_at_iso": "2023-11-14T22:30:02.500000Z",
        "duration_ms": 2500.0,
    }
    missing = api.get("/api/logs/sessions/nobody/summary")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "type": "invalid_request_error",
            "code": "not_found",
            "message": "No turns are logged for session 'nobody'.",
            "param": "session_id",
        }
    }


def test_logs_filters(api: httpx.Client) -> None:
    def page(**params: Any) -> tuple[list[str], int]:
        response = api.get("/api/logs", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["returned_count"] == len(body["logs"])
        return ids(body["logs"]), body["total_count"]

    assert page(limit=2) == (["turn_01002", "turn_01001"], 523)  # newest first
    assert page(virtual_key="team-b") == (["turn_01002", "turn_01001"], 2)
    assert page(virtual_key="team-b", model="gpt-realtime") == (["turn_01002"], 1)
    assert page(status="failed") == (["turn_01002"], 1)
    assert page(key_id="vk_aaaa", since=BASE + 1000) == (["turn_01000"], 1)
    assert page(since="2023-11-14T22:30:01Z", order="asc") == (["turn_01001", "turn_01002"], 2)
    assert page(since="2023-11-14T23:30:01+01:00", until=str(BASE + 1002)) == (["turn_01001"], 1)
    assert page(until="2023-11-14T22:13:22", order="asc") == (["turn_00000", "turn_00001"], 2)  # naive is UTC
    assert page(model="no-such-model") == ([], 0)


def bad_value(param: str, message: str, code: str = "invalid_value") -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "code": code, "message": message, "param": param}}


LIMIT = "limit must be an integer between 1 and 500"
OFFSET = "offset must be an integer between 0 and 1000000000"
ORDER = "order must be 'asc' or 'desc'"
SINCE = "since must be unix seconds or an ISO 8601 timestamp"


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/api/logs/sessions/big", {"limit": "0"}, bad_value("limit", LIMIT)),
        ("/api/logs/sessions/big", {"limit": "501"}, bad_value("limit", LIMIT)),
        ("/api/logs/sessions/big", {"limit": "ten"}, bad_value("limit", LIMIT)),
        ("/api/logs/sessions/big", {"limit": "2.5"}, bad_value("limit", LIMIT)),
        ("/api/logs/sessions/big", {"limit": ""}, bad_value("limit", LIMIT)),
        ("/api/logs/sessions/big", {"offset": "-1"}, bad_value("offset", OFFSET)),
        ("/api/logs/sessions/big", {"offset": "1000000001"}, bad_value("offset", OFFSET)),
        ("/api/logs/sessions/big", {"order": "ASC"}, bad_value("order", ORDER)),
        ("/api/logs/sessions/%20", {}, bad_value("session_id", "session_id is required", "missing_required_parameter")),
        ("/api/logs", {"limit": "1000"}, bad_value("limit", LIMIT)),
        ("/api/logs", {"order": "newest"}, bad_value("order", ORDER)),
        ("/api/logs", {"since": "yesterday"}, bad_value("since", SINCE)),
        ("/api/logs", {"until": "2023-13-01"}, bad_value("until", "until must be unix seconds or an ISO 8601 timestamp")),
        ("/api/logs", {"since": "2023-11-15", "until": "2023-11-14"}, bad_value("since", "since must not be later than until")),
    ],
)
def test_bad_parameters_are_precise_400s(api: httpx.Client, path: str, params: dict[str, str], expected: dict[str, Any]) -> None:
    response = api.get(path, params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-not-admin"}, {"Authorization": f"Basic {ADMIN_KEY}"}])
@pytest.mark.parametrize("path", ["/api/logs", "/api/logs/sessions/big", "/api/logs/sessions/big/summary"])
def test_only_admin_keys_read_logs(api: httpx.Client, path: str, headers: dict[str, str]) -> None:
    response = httpx.get(str(api.base_url).rstrip("/") + path, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": "An admin key is required.", "param": None}
    }


def test_an_unreachable_store_is_a_503() -> None:
    unreachable = PostgresTurnStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", connect_timeout_s=1)
    api = LogsApi(unreachable, lambda credential: credential == ADMIN_KEY)
    app = Starlette(routes=[Route("/api/logs", api.logs)])  # never started: the store is down
    with ServerThread(app) as server:
        response = httpx.get(f"{server.url}/api/logs", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 503
    assert response.json()["error"] == {
        "type": "server_error",
        "code": "log_store_unavailable",
        "message": "The turn log store is unavailable. Retry later.",
        "param": None,
    }
