"""`GET /api/logs/turns/{turn_id}/audio/{input|output}` (admin keys only): a turn's recorded audio, as stored.

PCM16 (24 kHz) and G.711 (8 kHz, μ-law or A-law) play as WAV, Opus from WebRTC calls as Ogg. A turn without a
recording in that direction — not recorded, dropped, past its retention or evicted by the size cap — is a 404.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from bifrost_rt.errors import RealtimeError
from bifrost_rt.http.logs_api import admin_refusal
from bifrost_rt.state.audio_store import DIRECTIONS, AudioStore


def _error(status: int, code: str, message: str, param: str) -> Response:
    return Response(RealtimeError("invalid_request_error", code, message, param).http_body(), status, media_type="application/json")


def audio_response(store: AudioStore, turn_id: str, direction: str) -> Response:
    """The stored recording as a response (for any caller that has already checked its user is an admin)."""
    if direction not in DIRECTIONS:
        return _error(400, "invalid_value", "direction must be 'input' or 'output'", "direction")
    found = store.find(turn_id, direction)
    if found is None:
        return _error(404, "not_found", f"No {direction} audio is stored for turn '{turn_id[:64]}'.", "turn_id")
    path, media_type = found
    return FileResponse(
        path,
        media_type=media_type,
        filename=path.name,
        content_disposition_type="inline",
        headers={"Cache-Control": "private, no-store"},
    )


class TurnAudioApi:
    def __init__(self, store: AudioStore, is_admin: Callable[[str], bool]) -> None:
        self.store = store
        self._is_admin = is_admin

    async def audio(self, request: Request) -> Response:
        refusal = admin_refusal(request, self._is_admin)
        if refusal is not None:
            return refusal
        return audio_response(self.store, request.path_params["turn_id"], request.path_params["direction"])
