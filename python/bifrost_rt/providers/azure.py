"""The Azure OpenAI shape of a provider: a resource endpoint, its two URL forms, `api-key` or Entra bearer auth.

GA form: `wss://<resource>/openai/v1/realtime?model=<deployment>` (GA events); REST under `/openai/v1`.
Preview form: `wss://<resource>/openai/realtime?api-version=<v>&deployment=<deployment>` (beta events); client
secrets and calls exist only in the GA form, so REST always goes to `/openai/v1`.
An Entra token comes from the configuration, a file or a command, never from a cloud SDK; file and command
tokens are read again when stale, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import orjson

from bifrost_rt.config import EntraTokenConfig, ProviderConfig

logger = logging.getLogger("bifrost_rt.providers.azure")

_REFRESH_MARGIN_S = 60  # a token that says it expires sooner than this is read again


def _resource(provider: ProviderConfig) -> tuple[str, str]:
    """(scheme, authority and path) of the resource endpoint, without a trailing `/openai` or `/openai/v1`."""
    scheme, rest = provider.base_url.split("://", 1)
    for suffix in ("/openai/v1", "/openai"):
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            break
    return scheme, rest


def realtime_url(provider: ProviderConfig, deployment: str | None) -> tuple[str, dict[str, str]]:
    scheme, rest = _resource(provider)
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    if provider.url_form == "preview":
        params = {"api-version": provider.api_version}
        if deployment:
            params["deployment"] = deployment
        return f"{ws_scheme}://{rest}/openai/realtime", params
    return f"{ws_scheme}://{rest}/openai/v1/realtime", ({"model": deployment} if deployment else {})


def http_url(provider: ProviderConfig, path: str) -> str:
    scheme, rest = _resource(provider)
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return f"{http_scheme}://{rest}/openai/v1{path}"


def auth_headers(credential: str, *, bearer: bool) -> dict[str, str]:
    """A resource key goes in `api-key`; an Entra token or a client secret is a bearer token."""
    return {"Authorization": "Bearer " + credential} if bearer else {"api-key": credential}


class EntraToken:
    """The current Entra token of one provider; `get` reads a file or runs a command only when the token is stale."""

    def __init__(self, config: EntraTokenConfig) -> None:
        self.config = config
        self._token: str | None = config.token.get_secret_value() if config.token is not None else None
        self._fresh_until = float("inf") if config.token is not None else 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> str | None:
        """The token; the last good one while a refresh fails, None when none was ever read."""
        if time.monotonic() < self._fresh_until:
            return self._token
        async with self._lock:
            if time.monotonic() >= self._fresh_until:
                await self._refresh()
        return self._token

    async def _refresh(self) -> None:
        config = self.config
        try:
            if config.token_file is not None:
                text = await asyncio.to_thread(Path(config.token_file).read_text, encoding="utf-8")
            else:
                text = await self._run_command()
            token, expires_in = _parse_token(text)
        except (OSError, ValueError, TimeoutError, asyncio.TimeoutError) as error:
            # Never the output itself: it may hold a token.
            logger.warning("Entra token could not be read: %s", type(error).__name__)
            self._fresh_until = time.monotonic() + min(5.0, config.refresh_s)
            return
        self._token = token
        lifetime = config.refresh_s if expires_in is None else max(0.0, min(config.refresh_s, expires_in - _REFRESH_MARGIN_S))
        self._fresh_until = time.monotonic() + lifetime

    async def _run_command(self) -> str:
        assert self.config.token_command is not None
        process = await asyncio.create_subprocess_exec(
            *self.config.token_command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), self.config.command_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise ValueError(f"the token command exited with {process.returncode}")
        return stdout.decode("utf-8", "replace")


def _parse_token(text: str) -> tuple[str, float | None]:
    """A bare token, or JSON as `az account get-access-token` prints it: (token, seconds until it expires)."""
    text = text.strip()
    if not text.startswith("{"):
        if not text or any(c.isspace() for c in text):
            raise ValueError("not a token")
        return text, None
    data = orjson.loads(text)
    token = data.get("accessToken") or data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise ValueError("no accessToken in the token JSON")
    expires_on = data.get("expires_on")
    if isinstance(expires_on, str) and expires_on.isdigit():
        expires_on = int(expires_on)
    return token, (expires_on - time.time()) if isinstance(expires_on, (int, float)) else None
