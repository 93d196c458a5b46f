"""The `Origin` check for HTTP routes that act: placing and hanging up calls, minting and revoking client secrets.

CORS only keeps a disallowed origin's page from reading the answer; the request itself would still run (a page
holding a valid key could mint a token or place a call). So such requests are refused before the endpoint runs,
as the WebSocket upgrade already is. Preflights stay with Starlette's CORSMiddleware.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from bifrost_rt import errors
from bifrost_rt.config import CorsConfig
from bifrost_rt.http.error_responses import error_response

Endpoint = Callable[[Request], Awaitable[Response]]


def origin_checked(cors: CorsConfig, endpoint: Endpoint, on_refused: Callable[[str], None] | None = None) -> Endpoint:
    """`endpoint`, answering 403 `origin_not_allowed` instead when an `Origin` is present and not allowed."""

    @functools.wraps(endpoint)
    async def checked(request: Request) -> Response:
        if not cors.allows(request.headers.get("origin")):
            error = errors.origin_not_allowed()
            if on_refused is not None:
                on_refused(error.code or error.type)
            return error_response(403, error.type, error.code, error.message, error.param)
        return await endpoint(request)

    return checked
