"""The Gemini Live shape of a provider (google-genai's `live.py`): the BidiGenerateContent socket of the Google AI
API (key in `x-goog-api-key`) or of Vertex AI (a bearer token). The model travels in `setup`, not in the URL."""

from __future__ import annotations

from bifrost_rt.config import ProviderConfig


def realtime_url(provider: ProviderConfig, model: str | None) -> tuple[str, dict[str, str]]:
    scheme, rest = provider.base_url.split("://", 1)
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    version = provider.gemini.api_version
    if provider.gemini.api == "vertex":
        return f"{ws_scheme}://{rest}/ws/google.cloud.aiplatform.{version}.LlmBidiService/BidiGenerateContent", {}
    return f"{ws_scheme}://{rest}/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent", {}


def http_url(provider: ProviderConfig, path: str) -> str:
    """Gemini Live has no OpenAI REST endpoints; the routes that would use one refuse Gemini models first."""
    scheme, rest = provider.base_url.split("://", 1)
    return f"{ {'ws': 'http', 'wss': 'https'}.get(scheme, scheme)}://{rest}{path}"


def auth_headers(provider: ProviderConfig, credential: str) -> dict[str, str]:
    if provider.gemini.api == "vertex":
        return {"Authorization": "Bearer " + credential}
    return {"x-goog-api-key": credential}
