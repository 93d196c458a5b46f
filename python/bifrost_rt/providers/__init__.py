"""Model → provider resolution and the upstream WebSocket request: OpenAI-compatible or Gemini Live."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from bifrost_rt.config import GatewayConfig, ModelRoute, ProviderConfig

# Query parameters the gateway consumes or that carry credentials; never forwarded upstream.
_PRIVATE_QUERY = frozenset({"model", "api-key", "api_key", "key"})


@dataclass(frozen=True, slots=True)
class Route:
    provider_name: str
    provider: ProviderConfig
    requested_model: str | None  # what the client asked for
    upstream_model: str | None  # what the provider is asked for

    @property
    def dialect(self) -> str:
        """What the provider speaks on its realtime socket: `openai` (GA events), `openai-beta` (the retired beta
        shape) or `gemini` (Gemini Live)."""
        return self.provider.kind

    def upstream_url(self, query: Mapping[str, str]) -> str:
        if self.provider.kind == "gemini":  # the model travels in `setup`; nothing of the client's query applies
            return self.provider.realtime_url
        params: dict[str, str] = {}
        if self.upstream_model:
            params["model"] = self.upstream_model
        for name, value in query.items():
            if name not in _PRIVATE_QUERY:
                params[name] = value
        url = self.provider.realtime_url
        return f"{url}?{urlencode(params)}" if params else url

    def upstream_headers(
        self, client_headers: Mapping[str, str], subprotocols: list[str], credential: str | None = None
    ) -> dict[str, str]:
        """`credential` replaces the provider key (a provider client secret from a gateway token)."""
        headers = dict(self.provider.headers)
        if credential is None and self.provider.api_key is not None:
            credential = self.provider.api_key.get_secret_value()
        if self.provider.kind == "gemini":
            if credential is not None:
                if self.provider.gemini.api == "vertex":
                    headers["Authorization"] = "Bearer " + credential
                else:
                    headers["x-goog-api-key"] = credential
            return headers
        if credential is not None:
            headers["Authorization"] = "Bearer " + credential
        # `OpenAI-Beta` is never passed on: the client's dialect is translated, not forwarded.
        for name in ("openai-organization", "openai-project", "openai-safety-identifier"):
            value = client_headers.get(name)
            if value:
                headers[name] = value
        # Browsers cannot set headers; OpenAI reads these from subprotocols instead.
        for protocol in subprotocols:
            if protocol.startswith("openai-organization."):
                headers["openai-organization"] = protocol.split(".", 1)[1]
            elif protocol.startswith("openai-project."):
                headers["openai-project"] = protocol.split(".", 1)[1]
        return headers


class ModelResolver:
    def __init__(self, config: GatewayConfig) -> None:
        self._providers = config.providers
        self._models: dict[str, ModelRoute] = {
            name: ModelRoute(provider=route) if isinstance(route, str) else route for name, route in config.models.items()
        }
        self._default = config.default_provider or (next(iter(config.providers)) if len(config.providers) == 1 else None)

    def resolve(self, model: str | None, path_provider: str | None = None) -> Route | None:
        """`provider/model`, a configured name, or a bare name on the default provider; None if unknown.

        `path_provider` is the provider implied by the route (e.g. `/openai/...`).
        """
        default = path_provider if path_provider in self._providers else self._default
        if not model:
            return Route(default, self._providers[default], None, None) if default else None
        route = self._models.get(model)
        if route is not None:
            return Route(route.provider, self._providers[route.provider], model, route.model or model)
        prefix, slash, rest = model.partition("/")
        if slash and prefix in self._providers and rest:
            return Route(prefix, self._providers[prefix], model, rest)
        if default is not None:
            return Route(default, self._providers[default], model, model)
        return None
