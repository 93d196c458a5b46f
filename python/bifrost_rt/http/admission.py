"""Who is calling and where their session goes: the checks every transport makes before it opens anything upstream."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bifrost_rt import errors
from bifrost_rt.errors import RealtimeError
from bifrost_rt.http.services import Services
from bifrost_rt.policy.auth import Principal
from bifrost_rt.policy.client_secrets import Grant, InvalidToken, is_gateway_token
from bifrost_rt.providers import Route
from bifrost_rt.state.kv import KVUnavailable

logger = logging.getLogger("bifrost_rt.admission")


@dataclass(frozen=True, slots=True)
class Admission:
    principal: Principal
    route: Route
    upstream_credential: str | None  # a provider client secret from a gateway token; None: the provider key


async def admit(
    gateway: Services, credential: str | None, model: str | None, *, model_required: bool
) -> Admission | RealtimeError:
    """Authenticates `credential` (a virtual key or a gateway client secret) and resolves the model.

    A client secret carries its model; `model`, when given too, must match it. With a key, `model` is required
    when `model_required`, else the provider's default applies.
    """
    if credential is None:
        return errors.missing_credential()
    upstream_credential = None
    if is_gateway_token(credential):
        grant = await _open_client_secret(gateway, credential)
        if grant is None:
            return errors.invalid_client_secret()
        principal = gateway.authenticator.by_key_id(grant.key_id)
        if principal is None:  # the minting key was removed from the configuration
            return errors.invalid_client_secret()
        if model is not None and model != grant.model:
            return errors.model_not_allowed(model)
        route = gateway.models.resolve(grant.model)
        if route is None or route.provider_name != grant.provider:
            return errors.unknown_model(grant.model or "")
        upstream_credential = grant.provider_token
    else:
        principal = gateway.authenticator.authenticate(credential)
        if principal is None:
            return errors.invalid_credential()
        if model is None and model_required:
            return errors.missing_model()
        route = gateway.models.resolve(model)
        if route is None:
            return errors.unknown_model(model or "")
    if not principal.allows(route):
        return errors.model_not_allowed(route.requested_model)
    return Admission(principal, route, upstream_credential)


async def _open_client_secret(gateway: Services, token: str) -> Grant | None:
    secrets = gateway.client_secrets
    if secrets is None:
        return None
    try:
        return await secrets.open(token)
    except InvalidToken as error:
        logger.info("client secret refused: %s", error)
        return None
    except KVUnavailable:
        # Revocations cannot be checked: refuse rather than accept a possibly revoked token.
        logger.warning("client secret refused: the revocation store is unreachable")
        return None
