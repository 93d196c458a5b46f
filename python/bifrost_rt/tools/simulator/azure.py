"""The Azure OpenAI flavor of the simulator: a resource's paths, its credentials and its refusals.

Paths: `/openai/v1/realtime?model=<deployment>` (GA events), `/openai/realtime?api-version=…&deployment=…` (the
preview form; beta events with a `-preview` api-version), and `/openai/v1/realtime/client_secrets`,
`/openai/v1/realtime/calls`, `…/calls/{id}/hangup`. A key arrives as `api-key` (header or, for browsers, query)
or as a bearer token (an Entra token, or a client secret issued here). Refusals are Azure's: the handshake is
answered with an HTTP error and Azure's JSON body (`{"error": {"code", "message"}}`), never an error event.
Every answer carries the resource's `apim-request-id` and `x-ms-region` headers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import orjson
from starlette.responses import Response

# api-versions of the preview path; those ending in `-preview` speak the beta protocol.
API_VERSIONS = frozenset({"2024-10-01-preview", "2024-12-17", "2025-04-01-preview", "2025-08-28"})
ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)


class AzureRefusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def resource_headers(region: str) -> dict[str, str]:
    return {"apim-request-id": str(uuid.uuid4()), "x-ms-region": region}


def error_response(refusal: AzureRefusal) -> Response:
    body = orjson.dumps({"error": {"code": refusal.code, "message": refusal.message}})
    return Response(body, status_code=refusal.status, media_type="application/json")


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[str | None, bool]:
    """(the credential, whether it came as a bearer token)."""
    key = headers.get("api-key") or query.get("api-key")
    if key:
        return key.strip(), False
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), True
    return None, False


def missing_key() -> AzureRefusal:
    return AzureRefusal(401, "401", ACCESS_DENIED)


def preview_version(query: Mapping[str, str]) -> bool:
    """Checks the preview path's api-version; True when it speaks the beta protocol."""
    version = query.get("api-version")
    if not version:
        raise AzureRefusal(404, "404", "Resource not found")
    if version not in API_VERSIONS:
        raise AzureRefusal(400, "BadRequest", "API version not supported")
    return version.endswith("-preview")


def deployment_model(deployment: str | None, intent: str | None, deployments: Mapping[str, str]) -> str | None:
    """The model a realtime session's deployment serves (None for a transcription session without one)."""
    if not deployment:
        if intent == "transcription":
            return None
        raise AzureRefusal(
            400, "OperationNotSupported", "The realtime operation requires a deployment or intent=transcription."
        )
    model = deployments.get(deployment)
    if model is None:
        raise AzureRefusal(
            404,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 "
            "minutes, please wait a moment and try again.",
        )
    if "realtime" not in model:
        raise AzureRefusal(
            400,
            "OperationNotSupported",
            f"The realtime operation does not work with the specified model, {model}. Please choose different model "
            "and try again. You can learn more about which models can be used with each operation here: "
            "https://go.microsoft.com/fwlink/?linkid=2197993.",
        )
    return model
