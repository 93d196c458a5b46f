"""What every transport reads from an incoming request: headers, query, session grouping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

BAGGAGE_SESSION_ID_MAX = 255


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """Lower-cased header names; repeated headers are joined with commas, as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def scope_query(scope: Mapping[str, Any]) -> dict[str, str]:
    """First value of each query parameter."""
    query: dict[str, str] = {}
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        query.setdefault(name, value)
    return query


def baggage_session_id(headers: Mapping[str, str]) -> str | None:
    """`session-id` from a W3C `baggage` header; a client-chosen grouping that the gateway never overwrites."""
    baggage = headers.get("baggage")
    if not baggage:
        return None
    for member in baggage.split(","):
        key, eq, value = member.partition("=")
        if eq and key.strip() == "session-id":
            session_id = unquote(value.split(";", 1)[0].strip())
            if session_id and len(session_id) <= BAGGAGE_SESSION_ID_MAX:
                return session_id
    return None
