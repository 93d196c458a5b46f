"""The session-log API (admin keys only):

    GET /api/logs/sessions/{session_id}            one session's turns, oldest first by default
    GET /api/logs/sessions/{session_id}/summary    turn count, tokens, cost and span of a session
    GET /api/logs                                  turns filtered by virtual key, model, status and time

A session is a `session_group`: the client's baggage `session-id` when it sent one, else the gateway session
id. Every limit from 1 to 500 is honoured as asked. A session without turns is an empty page (200, a turn may
simply not be written yet) but has no summary (404). Errors have OpenAI's shape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bifrost_rt.errors import RealtimeError
from bifrost_rt.http.handshake import scope_headers
from bifrost_rt.policy.auth import presented_credential
from bifrost_rt.state.turn_log import ORDERS, Row, StoreUnavailable, TurnLogStore

logger = logging.getLogger("bifrost_rt.logs_api")

MAX_LIMIT = 500
DEFAULT_SESSION_LIMIT = 50
DEFAULT_LOGS_LIMIT = 100
MAX_OFFSET = 1_000_000_000  # deeper pages are refused rather than handed to the database
_DIGITS = re.compile(r"[0-9]{1,12}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _error(status: int, type_: str, code: str, message: str, param: str | None = None) -> Response:
    return Response(RealtimeError(type_, code, message, param).http_body(), status, media_type="application/json")


def admin_refusal(request: Request, is_admin: Callable[[str], bool]) -> Response | None:
    """The 401 for a request without an admin key; None when it presents one. Every admin route answers the same."""
    credential = presented_credential(scope_headers(request.scope), ())
    if credential is None or not is_admin(credential):
        return _error(401, "invalid_request_error", "invalid_api_key", "An admin key is required.")
    return None


def _integer(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise _BadRequest(f"{name} must be an integer between {low} and {high}", name)
    return int(text)


def _order(query: Mapping[str, str], default: str) -> str:
    order = query.get("order", default)
    if order not in ORDERS:
        raise _BadRequest("order must be 'asc' or 'desc'", "order")
    return order


def parse_time(text: str) -> float:
    """Unix seconds (digits, optionally with a fraction), or ISO 8601: a date, or a date and time, in UTC unless it
    carries an offset. Raises ValueError."""
    text = text.strip()
    if _UNIX_SECONDS.fullmatch(text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None


def _timestamp(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse_time(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be unix seconds or an ISO 8601 timestamp", name) from None


def _page(rows: list[Row], total: int, limit: int, offset: int, order: str) -> dict[str, Any]:
    return {
        "object": "list",
        "logs": rows,
        "total_count": total,
        "returned_count": len(rows),
        "limit": limit,
        "offset": offset,
        "order": order,
        "has_more": offset + len(rows) < total,
    }


def _session_id(request: Request) -> str:
    session_id = request.path_params.get("session_id", "")
    if not session_id.strip():
        raise _BadRequest("session_id is required", "session_id", "missing_required_parameter")
    return session_id


class LogsApi:
    """Starlette handlers over a TurnLogStore; `is_admin` decides which bearer credentials may read logs."""

    def __init__(self, store: TurnLogStore, is_admin: Callable[[str], bool]) -> None:
        self.store = store
        self._is_admin = is_admin

    async def session_logs(self, request: Request) -> Response:
        return await self._answer(request, self._session_logs)

    async def session_summary(self, request: Request) -> Response:
        return await self._answer(request, self._session_summary)

    async def logs(self, request: Request) -> Response:
        return await self._answer(request, self._logs)

    async def _answer(self, request: Request, build: Callable[[Request], Awaitable[Response | dict[str, Any]]]) -> Response:
        refusal = admin_refusal(request, self._is_admin)
        if refusal is not None:
            return refusal
        try:
            body = await build(request)
        except _BadRequest as bad:
            return _error(400, "invalid_request_error", bad.code, bad.message, bad.param)
        except StoreUnavailable as error:
            logger.warning("session-log request failed: turn log store unavailable (%s)", error)
            return _error(503, "server_error", "log_store_unavailable", "The turn log store is unavailable. Retry later.")
        if isinstance(body, Response):
            return body
        return Response(orjson.dumps(body), media_type="application/json")

    async def _session_logs(self, request: Request) -> dict[str, Any]:
        session_id = _session_id(request)
        query = request.query_params
        limit = _integer(query, "limit", DEFAULT_SESSION_LIMIT, 1, MAX_LIMIT)
        offset = _integer(query, "offset", 0, 0, MAX_OFFSET)
        order = _order(query, "asc")
        rows, total = await self.store.session_logs(session_id, limit=limit, offset=offset, order=order)
        return {"session_id": session_id, **_page(rows, total, limit, offset, order)}

    async def _session_summary(self, request: Request) -> Response | dict[str, Any]:
        session_id = _session_id(request)
        summary = await self.store.session_summary(session_id)
        if summary is None:
            return _error(404, "invalid_request_error", "not_found", f"No turns are logged for session '{session_id}'.", "session_id")
        return summary

    async def _logs(self, request: Request) -> dict[str, Any]:
        query = request.query_params
        limit = _integer(query, "limit", DEFAULT_LOGS_LIMIT, 1, MAX_LIMIT)
        offset = _integer(query, "offset", 0, 0, MAX_OFFSET)
        order = _order(query, "desc")
        since = _timestamp(query, "since")
        until = _timestamp(query, "until")
        if since is not None and until is not None and since > until:
            raise _BadRequest("since must not be later than until", "since")
        rows, total = await self.store.query(
            principal=query.get("virtual_key"),
            key_id=query.get("key_id"),
            model=query.get("model"),
            status=query.get("status"),
            since=since,
            until=until,
            limit=limit,
            offset=offset,
            order=order,
        )
        return _page(rows, total, limit, offset, order)
