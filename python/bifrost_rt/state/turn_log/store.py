"""What every turn store offers: the TurnSink writes and the session-log queries."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from bifrost_rt.records import TurnRecord
from bifrost_rt.state.turn_log.schema import Row

ORDERS = ("asc", "desc")


class StoreUnavailable(Exception):
    """The store cannot be reached (not started, connection lost, database locked); a retry may succeed."""


def _contains(text: Any) -> str:
    """A LIKE pattern matching `text` anywhere, case-insensitively (the column side is lowered too)."""
    escaped = str(text).lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def condition(sql: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A TurnQuery filter: absent by default, its SQL condition with `?` for the value."""
    return field(default=None, metadata={"sql": sql, "convert": convert})


@dataclass(frozen=True, kw_only=True)
class TurnQuery:
    """The filters of `query()`, each with its SQL condition: a new filter is a field here and nothing else."""

    principal: str | None = condition("principal = ?")
    key_id: str | None = condition("key_id = ?")
    model: str | None = condition("model = ?")
    provider: str | None = condition("provider = ?")
    transport: str | None = condition("transport = ?")
    status: str | None = condition("status = ?")
    since: float | None = condition("started_at >= ?", float)  # inclusive
    until: float | None = condition("started_at < ?", float)  # exclusive
    # In what the user said or the model answered (the records' summaries); empty when content is not logged.
    text: str | None = condition("LOWER(input_summary || ' ' || output_summary) LIKE ? ESCAPE '\\'", _contains)

    def conditions(self) -> list[tuple[str, Any]]:
        """(SQL condition, value) for every filter given."""
        found = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                convert = spec.metadata["convert"]
                found.append((spec.metadata["sql"], value if convert is None else convert(value)))
        return found


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
    async def sessions(self, filters: TurnQuery, *, limit: int = 50, offset: int = 0) -> tuple[list[Row], int]:
        """One page of the session groups with a turn matching every filter, latest turn first, each with its
        totals over all its turns (see `SqlTurnStore.sessions`), and how many groups match."""

    async def query(
        self, *, limit: int = 100, offset: int = 0, order: str = "desc", **filters: Any
    ) -> tuple[list[Row], int]:
        """`find` with the filters given by name (TurnQuery's fields; an unknown name is a TypeError)."""
        return await self.find(TurnQuery(**filters), limit=limit, offset=offset, order=order)

    @abc.abstractmethod
    async def find(
        self, filters: TurnQuery, *, limit: int = 100, offset: int = 0, order: str = "desc"
    ) -> tuple[list[Row], int]:
        """One page of the turns matching every filter, newest first by default, and their count."""
