"""The body of a call request (`POST /v1/realtime/calls`): an SDP offer, raw or in a multipart form with a session."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request


class OfferError(ValueError):
    """An unusable request body; `code` and `param` as in OpenAI's 400 errors."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


async def read_offer(request: Request, max_bytes: int) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer and the `session` object (None when absent).

    The body is either the raw offer (`application/sdp`, or any type but multipart) or `multipart/form-data` with
    parts `sdp` and `session`, each a plain field or a file.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise OfferError(f"The request body exceeds {max_bytes} bytes.", "request_too_large")
    session: Any = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            async with request.form(max_files=2, max_fields=8, max_part_size=max_bytes) as form:
                sdp = await _part_text(form.get("sdp"), "sdp", max_bytes)
                session_text = await _part_text(form.get("session"), "session", max_bytes)
        except HTTPException as exc:
            raise OfferError(f"Invalid multipart body: {exc.detail}", "invalid_request_body") from None
        if session_text is not None:
            try:
                session = orjson.loads(session_text)
            except orjson.JSONDecodeError:
                raise OfferError("Invalid 'session': expected a JSON object.", "invalid_value", "session") from None
            if not isinstance(session, dict):
                raise OfferError("Invalid 'session': expected a JSON object.", "invalid_type", "session")
    else:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise OfferError(f"The request body exceeds {max_bytes} bytes.", "request_too_large")
        sdp = _utf8(bytes(body), "sdp")
    if sdp is None or not sdp.strip():
        raise OfferError("Missing required parameter: 'sdp'.", "missing_required_parameter", "sdp")
    return sdp, session


async def _part_text(part: UploadFile | str | None, name: str, max_bytes: int) -> str | None:
    if isinstance(part, UploadFile):
        data = await part.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise OfferError(f"The '{name}' part exceeds {max_bytes} bytes.", "request_too_large", name)
        return _utf8(data, name)
    return part


def _utf8(data: bytes, name: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise OfferError(f"Invalid '{name}': expected UTF-8 text.", "invalid_value", name) from None
