"""The one schema both stores share: its columns, its migrations, and how a record becomes a row and back.

Migrations are `migrations/NNNN_name.sql`, applied in version order and recorded in `schema_version`.
`{json}` in a script is the JSON column type: JSONB on PostgreSQL, TEXT on SQLite. A version that must differ
between the databases has one file per store instead, `NNNN_name.sqlite.sql` and `NNNN_name.postgres.sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import orjson

Row = dict[str, Any]

TABLE = "realtime_turns"
COLUMNS = (
    "id", "object", "session_id", "session_group", "provider_session_id", "principal", "key_id", "provider",
    "model", "transport", "response_id", "status", "status_reason", "error", "inputs", "input_summary", "output",
    "output_summary", "usage", "transcription_usage", "cost_total", "cost", "total_tokens", "latency_ms",
    "started_at", "ended_at", "metadata", "raw", "audio",
)  # fmt: skip
JSON_COLUMNS = frozenset(
    {"error", "inputs", "output", "usage", "transcription_usage", "cost", "latency_ms", "metadata", "raw", "audio"}
)

SCHEMA_VERSION_DDL = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)
SELECT = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"

# A package resource, so the scripts are found inside an installed wheel or zip as well as in a checkout.
MIGRATIONS = resources.files(__package__).joinpath("migrations")


DIALECTS = {"sqlite": "TEXT", "postgres": "JSONB"}  # each store's JSON column type


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, script) for every migration of `dialect` ("sqlite" or "postgres"), in version order; each store
    runs a script its own way, so that the database's own parser decides where its statements end."""
    found = []
    for entry in MIGRATIONS.iterdir():
        stem, suffix = entry.name.rsplit(".", 1) if "." in entry.name else (entry.name, "")
        if suffix != "sql":
            continue
        name, _, only = stem.partition(".")
        if only and only != dialect:
            continue
        found.append((int(name.split("_", 1)[0]), entry.read_text("utf-8").replace("{json}", DIALECTS[dialect])))
    return sorted(found)


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


def to_params(item: Row) -> tuple[Any, ...]:
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


def from_row(values: Sequence[Any]) -> Row:
    """A stored row (in COLUMNS order) as a record dict, plus the ISO forms of its timestamps."""
    row = {
        column: orjson.loads(value) if column in JSON_COLUMNS and value is not None else value
        for column, value in zip(COLUMNS, values, strict=True)
    }
    row["started_at_iso"] = iso(row["started_at"])
    row["ended_at_iso"] = iso(row["ended_at"])
    return row
