"""Credentials → principal.

A credential arrives in one of the places OpenAI and Azure clients put it: `x-bf-vk`, `Authorization: Bearer`,
`api-key` (Azure), `x-api-key`, the browser subprotocol `openai-insecure-api-key.<key>`, or, for browsers built
for Azure, the `?api-key=` query parameter. Only virtual keys from the configuration are accepted; nothing is
forwarded upstream as-is (the query parameter included).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bifrost_rt.config import GatewayConfig, VirtualKeyConfig
from bifrost_rt.providers import Route

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
_CREDENTIAL_HEADERS = ("x-bf-vk", "authorization", "api-key", "x-api-key")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a session acts for; carried into every turn record."""

    name: str
    key_id: str  # a stable, non-secret identifier of the key (hash prefix)
    virtual_key: VirtualKeyConfig

    def allows(self, route: Route) -> bool:
        return self.virtual_key.allows(route.requested_model, route.provider_name)


def key_id(secret: str) -> str:
    return "vk_" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def presented_credential(
    headers: Mapping[str, str], subprotocols: Iterable[str], query: Mapping[str, str] | None = None
) -> str | None:
    """The first credential found, in header order, then subprotocols, then `?api-key=`; None if there is none."""
    for name in _CREDENTIAL_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                continue
            value = token.strip()
        if value:
            return value
    for protocol in subprotocols:
        if protocol.startswith(SUBPROTOCOL_KEY_PREFIX):
            token = protocol[len(SUBPROTOCOL_KEY_PREFIX) :].strip()
            if token:
                return token
    key = (query or {}).get("api-key", "").strip()
    return key or None


class Authenticator:
    def __init__(self, config: GatewayConfig) -> None:
        # Keyed by digest so lookups never compare secrets byte by byte.
        self._by_digest: dict[bytes, Principal] = {}
        self._by_key_id: dict[str, Principal] = {}
        self._by_name: dict[str, Principal] = {}
        for vk in config.virtual_keys:
            secret = vk.key.get_secret_value()
            principal = Principal(vk.name, key_id(secret), vk)
            self._by_digest[self._digest(secret)] = principal
            self._by_key_id[principal.key_id] = principal
            self._by_name[principal.name] = principal
        self._admin_digests = {self._digest(key.get_secret_value()) for key in config.admin_keys}
        self._admin_ids = {self._admin_id(digest) for digest in self._admin_digests}

    @staticmethod
    def _digest(secret: str) -> bytes:
        return hashlib.sha256(secret.encode()).digest()

    def authenticate(self, credential: str) -> Principal | None:
        return self._by_digest.get(self._digest(credential))

    def by_key_id(self, key_id: str) -> Principal | None:
        """The key behind a client secret; None once the key is removed from the configuration."""
        return self._by_key_id.get(key_id)

    def by_name(self, name: str) -> Principal | None:
        return self._by_name.get(name)

    def is_admin(self, credential: str) -> bool:
        return self._digest(credential) in self._admin_digests

    @staticmethod
    def _admin_id(digest: bytes) -> str:
        return "ak_" + digest.hex()[:16]

    def admin_id(self, credential: str) -> str | None:
        """A stable, non-secret name of an admin key (a hash prefix), to remember a login by; None if not admin."""
        digest = self._digest(credential)
        return self._admin_id(digest) if digest in self._admin_digests else None

    def is_admin_id(self, admin_id: str) -> bool:
        """Whether the admin key behind a login is still configured."""
        return admin_id in self._admin_ids
