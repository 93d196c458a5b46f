"""OpenAI-shaped HTTP errors for the REST routes, and how a provider's refusal is passed on to the caller."""

from __future__ import annotations

import logging

import httpx
from starlette.responses import JSONResponse

logger = logging.getLogger("bifrost_rt.http")


def error_response(status: int, type_: str, code: str | None, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "code": code, "message": message, "param": param}}, status_code=status)


def provider_error_response(provider: str, action: str, upstream: httpx.Response) -> JSONResponse:
    """The caller's answer when the provider refused `action` (e.g. "a call").

    Its 401/403 means the gateway's credential was refused, not the caller's: a 502. Its other 4xx errors reach the
    caller as they were (type, code, message, param only); anything else is a 502 naming the status.
    """
    status = upstream.status_code
    logger.warning("provider %s refused %s: HTTP %d", provider, action, status)
    if status in (401, 403):
        return error_response(502, "server_error", "upstream_auth_failed", "The realtime provider rejected the gateway's credentials.")
    try:
        error = upstream.json()["error"]
        if isinstance(error, dict) and 400 <= status < 500:
            return JSONResponse({"error": {key: error.get(key) for key in ("type", "code", "message", "param")}}, status_code=status)
    except (ValueError, KeyError, TypeError):
        pass
    return error_response(502, "server_error", "upstream_error", f"The realtime provider answered HTTP {status}.")
