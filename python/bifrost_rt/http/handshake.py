"""What every transport reads from an incoming request: headers, query, session grouping."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

BAGGAGE_SESSION_ID_MAX = 255
# W3C Trace Context: version-trace_id-parent_id-flags, lower-case hex.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


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


def traceparent(headers: Mapping[str, str]) -> str | None:
    """The client's W3C `traceparent`, when well formed (not version ff, ids not all zero), for its trace to go on."""
    value = headers.get("traceparent", "").strip()
    if not _TRACEPARENT.fullmatch(value) or value.startswith("ff") or "-" + "0" * 32 + "-" in value or value[36:52] == "0" * 16:
        return None
    return value


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
