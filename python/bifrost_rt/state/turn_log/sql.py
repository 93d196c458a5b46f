"""The session-log queries, written once for both SQL stores in `?`-placeholder SQL."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from bifrost_rt.state.turn_log.schema import SELECT, TABLE, Row, from_row, iso, to_params
from bifrost_rt.state.turn_log.store import ORDERS, StoreUnavailable, TurnLogStore, TurnQuery


def _direction(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    return order.upper()


class SqlTurnStore(TurnLogStore):
    """The queries both SQL stores share; subclasses run them (with `?` placeholders) on their driver."""

    @abc.abstractmethod
    async def _insert(self, rows: list[tuple[Any, ...]]) -> None: ...

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]: ...

    async def write_dicts(self, items: list[Row]) -> None:
        if items:
            await self._insert([to_params(item) for item in items])

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
            f"{SELECT} WHERE {where} ORDER BY started_at {direction}, id {direction} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [from_row(row) for row in rows], total

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

    async def find(
        self, filters: TurnQuery, *, limit: int = 100, offset: int = 0, order: str = "desc"
    ) -> tuple[list[Row], int]:
        conditions = filters.conditions()
        where = " AND ".join(sql for sql, _ in conditions) or "1 = 1"
        return await self._page(where, [value for _, value in conditions], limit, offset, order)

    async def sessions(self, filters: TurnQuery, *, limit: int = 50, offset: int = 0) -> tuple[list[Row], int]:
        """Two steps, so the totals are summed over one page of groups only: the page of groups by their latest
        matching turn (with the number of groups, counted by a window over the same scan), then each group's
        totals over all its turns (through the session_group index)."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be at least 1 and offset at least 0")
        conditions = filters.conditions()
        where = " AND ".join(sql for sql, _ in conditions) or "1 = 1"
        params = [value for _, value in conditions]
        page = await self._select(
            f"SELECT session_group, MAX(started_at) AS latest, COUNT(*) OVER () FROM {TABLE} WHERE {where} "
            "GROUP BY session_group ORDER BY latest DESC, session_group DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        if not page:  # past the last page, or nothing matches: count on its own
            ((count,),) = await self._select(f"SELECT COUNT(DISTINCT session_group) FROM {TABLE} WHERE {where}", params)
            return [], int(count)
        total = int(page[0][2])
        groups = [group for group, _, _ in page]
        marks = ", ".join("?" * len(groups))
        rows = await self._select(
            "SELECT session_group, COUNT(*), CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT), COALESCE(SUM(cost_total), 0), "
            "MIN(started_at), MAX(ended_at), COUNT(DISTINCT session_id), MIN(principal), MAX(principal), MIN(model), MAX(model), "
            "MIN(provider), MIN(transport), MAX(transport), "
            "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), SUM(CASE WHEN status = 'refused' THEN 1 ELSE 0 END) "
            f"FROM {TABLE} WHERE session_group IN ({marks}) GROUP BY session_group",
            groups,
        )
        by_group = {row[0]: row for row in rows}
        found = []
        for group in groups:
            (_, turns, tokens, cost, started_at, ended_at, gateway_sessions, key, other_key, model, other_model, provider,
             transport, other_transport, failed, refused) = by_group[group]  # fmt: skip
            found.append(
                {
                    "session_id": group,
                    "turn_count": int(turns),
                    "total_tokens": int(tokens),
                    "total_cost": float(cost),
                    "started_at": started_at,
                    "started_at_iso": iso(started_at),
                    "latest_at": ended_at,
                    "latest_at_iso": iso(ended_at),
                    "gateway_sessions": int(gateway_sessions),
                    # A group may span keys, models or transports (one baggage session-id over several sessions).
                    "virtual_key": key if key == other_key else f"{key}, {other_key}",
                    "model": model if model == other_model else f"{model}, {other_model}",
                    "provider": provider,
                    "transport": transport if transport == other_transport else f"{transport}, {other_transport}",
                    "failed_turns": int(failed),
                    "refused_turns": int(refused),
                }
            )
        return found, total
