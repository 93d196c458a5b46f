"""Model → provider resolution, and the provider-facing side of a route: URL, query, headers, credential.

Each provider kind has its shape in its own module (`openai`, `azure`): where the realtime socket and the REST
endpoints are, and how the gateway's credential is presented. Everything else here is shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import ModuleType
from urllib.parse import urlencode

from bifrost_rt.config import GatewayConfig, ModelRoute, ProviderConfig
from bifrost_rt.providers import azure, openai

# Query parameters the gateway consumes or that carry credentials; never forwarded upstream. `api-version` and
# `deployment` select an Azure-shaped client's model; the provider's own shape sets its own.
_PRIVATE_QUERY = frozenset({"model", "api-key", "api_key", "key", "api-version", "deployment"})


@dataclass(frozen=True, slots=True)
class Route:
    provider_name: str
    provider: ProviderConfig
    requested_model: str | None  # what the client asked for
    upstream_model: str | None  # what the provider is asked for (for Azure, the deployment)
    entra: azure.EntraToken | None = None  # the provider's Entra token source, when it uses one
    priced_as: str | None = None  # the price table's model for this route (`models:` `priced_as`)

    @property
    def dialect(self) -> str:
        """What the provider speaks on its realtime socket: `openai` (GA events) or `openai-beta` (the retired beta
        shape, which Azure's preview form still speaks)."""
        if self.provider.kind == "azure" and self.provider.url_form == "preview":
            return "openai-beta"
        return "openai"

    def for_calls(self) -> Route:
        """The route as WebRTC calls see it: Azure has calls only in its GA form, so they speak GA events."""
        if self.provider.kind == "azure" and self.provider.url_form == "preview":
            return replace(self, provider=self.provider.model_copy(update={"url_form": "ga"}))
        return self

    @property
    def _shape(self) -> ModuleType:
        """The module that knows this provider kind's URLs."""
        return azure if self.provider.kind == "azure" else openai

    def upstream_url(self, query: Mapping[str, str]) -> str:
        url, params = self._shape.realtime_url(self.provider, self.upstream_model)
        for name, value in query.items():
            if name not in _PRIVATE_QUERY and name not in params:
                params[name] = value
        return f"{url}?{urlencode(params)}" if params else url

    def http_url(self, path: str) -> str:
        """A REST endpoint of the provider, `path` as under OpenAI's `/v1` (e.g. `/realtime/client_secrets`)."""
        return self._shape.http_url(self.provider, path)

    async def upstream_headers(
        self, client_headers: Mapping[str, str], subprotocols: list[str], credential: str | None = None
    ) -> dict[str, str]:
        """`credential` replaces the provider's own (a provider client secret from a gateway token)."""
        headers = dict(self.provider.headers)
        headers.update(await self._auth_headers(credential))
        if self.provider.kind == "azure":  # OpenAI's organisation and project headers mean nothing there
            return headers
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

    async def _auth_headers(self, credential: str | None) -> dict[str, str]:
        provider = self.provider
        if provider.kind == "azure":
            if credential is not None:
                return azure.auth_headers(credential, bearer=True)
            if self.entra is not None:
                token = await self.entra.get()
                return azure.auth_headers(token, bearer=True) if token else {}
            return azure.auth_headers(provider.api_key.get_secret_value(), bearer=False) if provider.api_key else {}
        if credential is None and provider.api_key is not None:
            credential = provider.api_key.get_secret_value()
        return openai.auth_headers(credential) if credential is not None else {}


class ModelResolver:
    def __init__(self, config: GatewayConfig) -> None:
        self._providers = config.providers
        self._models: dict[str, ModelRoute] = {
            name: ModelRoute(provider=route) if isinstance(route, str) else route for name, route in config.models.items()
        }
        self._default = config.default_provider or (next(iter(config.providers)) if len(config.providers) == 1 else None)
        # One token source per provider, so a file or command token is shared by every route to it.
        self._entra = {name: azure.EntraToken(p.entra) for name, p in config.providers.items() if p.entra is not None}

    def _route(self, provider: str, requested: str | None, upstream: str | None, priced_as: str | None = None) -> Route:
        return Route(provider, self._providers[provider], requested, upstream, self._entra.get(provider), priced_as)

    def resolve(self, model: str | None) -> Route | None:
        """A configured name, `provider/model`, or a bare name on the default provider; None if unknown."""
        default = self._default
        if not model:
            return self._route(default, None, None) if default else None
        route = self._models.get(model)
        if route is not None:
            return self._route(route.provider, model, route.model or model, route.priced_as)
        prefix, slash, rest = model.partition("/")
        if slash and prefix in self._providers and rest:
            return self._route(prefix, model, rest)
        if default is not None:
            return self._route(default, model, model)
        return None
