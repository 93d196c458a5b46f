"""Minting client secrets: `POST /v1/realtime/client_secrets` (GA) and `POST /v1/realtime/sessions` (legacy).

The provider mints its secret with the provider key; the caller receives OpenAI's response shape with the
`value` replaced by a gateway token that wraps it. Legacy (beta) requests are translated to a GA mint, since
providers retired the beta endpoint, and answered in the legacy shape.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bifrost_rt.dialects import beta
from bifrost_rt.http.error_responses import error_response, provider_error_response
from bifrost_rt.http.handshake import scope_headers
from bifrost_rt.http.services import Services
from bifrost_rt.policy.auth import presented_credential
from bifrost_rt.policy.client_secrets import InvalidToken, is_gateway_token
from bifrost_rt.state.kv import KVUnavailable

_PROVIDER_MIN_TTL_S = 10  # the shortest `expires_after.seconds` the API accepts

logger = logging.getLogger("bifrost_rt.client_secrets")

MAX_BODY_BYTES = 1024 * 1024
# Headers a caller may pass on to the provider's REST endpoint.
_FORWARDED_HEADERS = ("openai-organization", "openai-project", "openai-safety-identifier")

def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _replace_everywhere(value: Any, old: str, new: str) -> Any:
    """Every occurrence of the provider token in the upstream response becomes the gateway token."""
    if isinstance(value, str):
        return value.replace(old, new) if old in value else value
    if isinstance(value, dict):
        return {key: _replace_everywhere(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_everywhere(item, old, new) for item in value]
    return value


class ClientSecretEndpoint:
    """Starlette endpoint for the GA route (`legacy=False`) or the beta sessions route (`legacy=True`)."""

    def __init__(self, gateway: Services, *, legacy: bool) -> None:
        self.gateway = gateway
        self.legacy = legacy

    async def handle(self, request: Request) -> Response:
        gateway = self.gateway
        if gateway.client_secrets is None:
            return error_response(503, "server_error", "client_secrets_disabled", "Client secrets are not configured on this gateway.")
        if not _is_json(request.headers.get("content-type", "")):
            return error_response(415, "invalid_request_error", "unsupported_media_type", "Content-Type must be application/json.")
        headers = scope_headers(request.scope)
        credential = presented_credential(headers, (), request.query_params)
        if credential is None:
            return error_response(401, "invalid_request_error", "invalid_api_key", "Missing bearer or basic authentication in header.")
        if is_gateway_token(credential):
            return error_response(401, "invalid_request_error", "invalid_api_key", "A client secret cannot mint client secrets; use a virtual key.")
        principal = gateway.authenticator.authenticate(credential)
        if principal is None:
            return error_response(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return error_response(413, "invalid_request_error", "request_too_large", f"The request body exceeds {MAX_BODY_BYTES} bytes.")
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError as error:
            return error_response(400, "invalid_request_error", "invalid_json", f"The request body is not valid JSON: {error}.")
        if not isinstance(data, dict):
            return error_response(400, "invalid_request_error", "invalid_type", "The request body must be a JSON object.")

        if self.legacy:
            session = beta.ga_session(data)
            secret_options = data.get("client_secret") if isinstance(data.get("client_secret"), dict) else {}
            expires_after = secret_options.get("expires_after")
            model_param = "model"
        else:
            session = data.get("session", {})
            if not isinstance(session, dict):
                return error_response(400, "invalid_request_error", "invalid_type", "'session' must be an object.", "session")
            expires_after = data.get("expires_after")
            model_param = "session.model"
        model = session.get("model")
        if not isinstance(model, str) or not model:
            return error_response(400, "invalid_request_error", "missing_required_parameter", f"Missing required parameter: '{model_param}'.", model_param)
        route = gateway.models.resolve(model)
        if route is None:
            return error_response(400, "invalid_request_error", "model_not_found", f"The model '{model}' is not served by this gateway.", model_param)
        if not principal.allows(route):
            return error_response(403, "invalid_request_error", "model_not_allowed", f"This key is not allowed to use the model '{model}'.", model_param)
        refusal = await gateway.governance.check_budget(principal.key_id)
        if refusal is not None:
            return error_response(429 if refusal.type != "server_error" else 503, refusal.type, refusal.code, refusal.message)

        upstream_body: dict[str, Any] = {"session": {**session, "model": route.upstream_model, "type": session.get("type") or "realtime"}}
        max_ttl_s = int(gateway.config.client_secrets.max_ttl_s)
        if isinstance(expires_after, dict) and isinstance(expires_after.get("seconds"), int) and expires_after["seconds"] > max_ttl_s:
            # No token outlives client_secrets.max_ttl_s (the gateway token's own expiry is capped at sealing); the
            # provider's secret is asked for no longer, within the API's own 10 s minimum.
            expires_after = {**expires_after, "seconds": max(_PROVIDER_MIN_TTL_S, max_ttl_s)}
        if expires_after is not None:
            upstream_body["expires_after"] = expires_after
        forwarded = {name: headers[name] for name in _FORWARDED_HEADERS if name in headers}
        try:
            upstream = await gateway.http.post(
                route.http_url("/realtime/client_secrets"),
                content=orjson.dumps(upstream_body),
                headers={**await route.upstream_headers(forwarded, []), "content-type": "application/json"},
                timeout=gateway.config.client_secrets.upstream_timeout_s,
            )
        except httpx.HTTPError as error:
            logger.warning("provider %s unreachable for client secrets: %s", route.provider_name, type(error).__name__)
            return error_response(502, "server_error", "upstream_unavailable", "The realtime provider could not be reached. Retry later.")
        if upstream.status_code != 200:
            return provider_error_response(route.provider_name, "to mint a client secret", upstream)
        try:
            minted = upstream.json()
            provider_token, expires_at = minted["value"], int(minted["expires_at"])
            if not isinstance(provider_token, str) or not provider_token:
                raise ValueError
            expires_at = gateway.client_secrets.capped_expiry(expires_at)
            minted["expires_at"] = expires_at
        except (ValueError, KeyError, TypeError):
            return error_response(502, "server_error", "upstream_invalid_response", "The realtime provider returned an invalid client secret.")

        token = gateway.client_secrets.seal(
            key_id=principal.key_id,
            provider=route.provider_name,
            model=route.requested_model,
            provider_token=provider_token,
            expires_at=expires_at,
        )
        logger.info("client secret minted for %s (model %s, expires_at %d)", principal.name, route.requested_model, expires_at)
        if self.legacy:
            minted_session = minted.get("session") if isinstance(minted.get("session"), dict) else {}
            legacy = {
                **data,
                **beta.beta_session(minted_session),
                "object": "realtime.session",
                "model": model,
                "expires_at": expires_at,
                "client_secret": {"value": token, "expires_at": expires_at},
            }
            return JSONResponse(_replace_everywhere(legacy, provider_token, token))
        return JSONResponse(_replace_everywhere(minted, provider_token, token))



class RevokeEndpoint:
    """`POST /api/client_secrets/revoke` (admin): `{"token": "ek_…"}` or `{"virtual_key": "<name>"}`."""

    def __init__(self, gateway: Services) -> None:
        self.gateway = gateway

    async def handle(self, request: Request) -> Response:
        gateway = self.gateway
        credential = presented_credential(scope_headers(request.scope), ())
        if credential is None or not gateway.authenticator.is_admin(credential):
            return error_response(401, "invalid_request_error", "invalid_api_key", "An admin key is required.")
        if gateway.client_secrets is None:
            return error_response(503, "server_error", "client_secrets_disabled", "Client secrets are not configured on this gateway.")
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error_response(400, "invalid_request_error", "invalid_json", "The request body is not valid JSON.")
        if not isinstance(data, dict):
            return error_response(400, "invalid_request_error", "invalid_type", "The request body must be a JSON object.")
        try:
            return await self._revoke(data)
        except KVUnavailable:
            return error_response(503, "server_error", "store_unavailable", "The revocation store is unreachable; nothing was revoked.")

    async def _revoke(self, data: dict) -> Response:
        gateway = self.gateway
        assert gateway.client_secrets is not None
        if isinstance(data.get("token"), str):
            try:
                grant = await gateway.client_secrets.revoke_token(data["token"])
            except InvalidToken as error:
                return error_response(400, "invalid_request_error", "invalid_client_secret", str(error).capitalize() + ".", "token")
            return JSONResponse({"revoked": "token", "token_id": grant.token_id, "expires_at": grant.expires_at})
        if isinstance(data.get("virtual_key"), str):
            principal = gateway.authenticator.by_name(data["virtual_key"])
            if principal is None:
                return error_response(404, "invalid_request_error", "not_found", "No virtual key has that name.", "virtual_key")
            await gateway.client_secrets.revoke_key(principal.key_id, gateway.config.client_secrets.max_ttl_s)
            return JSONResponse({"revoked": "virtual_key", "name": principal.name})
        return error_response(400, "invalid_request_error", "missing_required_parameter", "Pass 'token' or 'virtual_key'.")
