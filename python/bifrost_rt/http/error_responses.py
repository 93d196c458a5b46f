"""OpenAI-shaped HTTP errors for the REST routes, and how a provider's refusal is passed on to the caller."""

from __future__ import annotations

import logging

import httpx
from starlette.responses import JSONResponse

from bifrost_rt import errors

logger = logging.getLogger("bifrost_rt.http")


def error_response(status: int, type_: str, code: str | None, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "code": code, "message": message, "param": param}}, status_code=status)


def provider_error_response(provider: str, action: str, upstream: httpx.Response) -> JSONResponse:
    """The caller's answer when the provider refused `action` (e.g. "a call").

    Its 401/403 means the gateway's credential was refused, not the caller's: a 502. Its other 4xx errors reach the
    caller as they were (type, code, message, param only, OpenAI's shape or Azure's, without URLs or the provider's
    host); anything else is a 502 naming the status. No provider header is passed on.
    """
    status = upstream.status_code
    logger.warning("provider %s refused %s: HTTP %d", provider, action, status)
    error = errors.provider_refusal(status, upstream.content, upstream.request.url.host)
    if error.code in ("upstream_auth_failed", "upstream_unavailable") and error.type == "server_error":
        code = error.code if status in (401, 403) else "upstream_error"
        message = error.message if status in (401, 403) else f"The realtime provider answered HTTP {status}."
        return error_response(502, "server_error", code, message)
    return error_response(status, error.type, error.code, error.message, error.param)
