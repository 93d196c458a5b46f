"""The OpenAI shape of a provider: `<base_url>/realtime?model=`, REST endpoints under the base URL, bearer auth."""

from __future__ import annotations

from bifrost_rt.config import ProviderConfig


def realtime_url(provider: ProviderConfig, model: str | None) -> tuple[str, dict[str, str]]:
    """The realtime socket's URL without a query, and the query parameters that select the model."""
    scheme, rest = provider.base_url.split("://", 1)
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    return f"{ws_scheme}://{rest}/realtime", ({"model": model} if model else {})


def http_url(provider: ProviderConfig, path: str) -> str:
    """A REST endpoint under the base URL, e.g. `/realtime/client_secrets`."""
    scheme, rest = provider.base_url.split("://", 1)
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return f"{http_scheme}://{rest}{path}"


def auth_headers(credential: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + credential}
