"""What the endpoints need from the process's services; the runtime's `Gateway` provides it.

Typed as a protocol so the HTTP layer depends on the services it uses, not on the composition root above it.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from bifrost_rt.config import GatewayConfig
from bifrost_rt.core.registry import SessionRegistry
from bifrost_rt.core.session import RealtimeSession
from bifrost_rt.policy.auth import Authenticator, Principal
from bifrost_rt.policy.client_secrets import ClientSecrets
from bifrost_rt.policy.governance import Governance
from bifrost_rt.policy.hooks import HookPipeline
from bifrost_rt.providers import ModelResolver, Route


class Services(Protocol):
    config: GatewayConfig
    authenticator: Authenticator
    models: ModelResolver
    registry: SessionRegistry
    governance: Governance
    hooks: HookPipeline
    client_secrets: ClientSecrets | None
    http: httpx.AsyncClient

    def new_session(
        self, *, principal: Principal, route: Route, transport: str, session_group: str | None, session_id: str | None = None,
        traceparent: str | None = None,
    ) -> RealtimeSession: ...
