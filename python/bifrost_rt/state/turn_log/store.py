"""What every turn store offers: the TurnSink writes and the session-log queries."""

from __future__ import annotations

import abc

from bifrost_rt.records import TurnRecord
from bifrost_rt.state.turn_log.schema import Row

ORDERS = ("asc", "desc")


class StoreUnavailable(Exception):
    """The store cannot be reached (not started, connection lost, database locked); a retry may succeed."""


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
