"""Gateway configuration: one YAML or TOML file, validated by pydantic.

Secrets are never written in the file itself when they can be avoided: any secret field accepts
`${ENV_VAR}` (or `env:ENV_VAR`), resolved at load time. Validation errors name the offending field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$|^env:([A-Za-z_][A-Za-z0-9_]*)$")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the field."""


def resolve_secret(value: str) -> str:
    """Expand an env-var reference (`${NAME}` or `env:NAME`); plain strings pass unchanged."""
    match = _ENV_REFERENCE.match(value.strip())
    if not match:
        return value
    name = match.group(1) or match.group(2)
    resolved = os.environ.get(name)
    if resolved is None:
        raise ValueError(f"environment variable {name} is not set")
    return resolved


def _from_env(value: Any) -> Any:
    return resolve_secret(value) if isinstance(value, str) else value


# A secret field: the value itself, or `${NAME}` / `env:NAME` read from the environment at load time.
EnvSecret = Annotated[SecretStr, BeforeValidator(_from_env)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    usd: float = Field(gt=0, description="spend allowed per period")
    period: Literal["day", "week", "month"] = Field(description="calendar period in UTC; resets at its start")


class RateLimits(_Strict):
    turns_per_minute: int | None = Field(None, ge=1, description="client-requested responses per minute")
    tokens_per_minute: int | None = Field(None, ge=1, description="new turns are refused once this many were used")


class KeyPolicy(_Strict):
    budget: Budget | None = None
    rate_limits: RateLimits | None = None
    max_sessions: int | None = Field(None, ge=1, description="concurrent sessions across every gateway process")
    team: str | None = None


class TeamPolicy(_Strict):
    budget: Budget | None = None
    max_sessions: int | None = Field(None, ge=1)


GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"


class GeminiConfig(_Strict):
    """How a `kind: gemini` provider is reached: the Google AI API (key in `x-goog-api-key`) or Vertex AI (bearer)."""

    api: Literal["google_ai", "vertex"] = "google_ai"
    api_version: str = Field("v1beta", pattern=r"^v[0-9a-z]+$", description="in the BidiGenerateContent path")
    buffer_bytes: int = Field(
        4 * 1024 * 1024, ge=64 * 1024, description="client input held while the next upstream connection opens"
    )
    setup_timeout_s: float = Field(10.0, gt=0, description="wait for setupComplete on a reconnect")
    setup_wait_ms: int = Field(
        500, ge=0, le=60_000, description="a client silent this long after connecting gets the default setup (session.created)"
    )


class WarmPoolConfig(_Strict):
    """Upstream sessions opened ahead of demand, already past `session.created` (docs/ARCHITECTURE.md, Warm pool).

    Each idle session is a live session at the provider: it holds a connection and counts against the provider
    account's concurrent sessions, though it bills nothing until a caller uses it.
    """

    min_size: int = Field(1, ge=0, description="sessions kept ready per pool key, whatever the demand")
    max_size: int = Field(4, ge=1, description="most sessions kept ready per pool key")
    demand_window_s: float = Field(
        30.0, gt=0, description="a pool holds as many sessions as were asked for in this window, within min and max"
    )
    models: list[str] = Field(
        default_factory=list, description="on a provider: models warmed from the start (others once first asked for)"
    )
    max_age_s: float = Field(3600.0, gt=0, description="the provider's longest session (OpenAI: 60 min)")
    recycle_after_s: float = Field(
        600.0, gt=0, description="an unclaimed session this old is replaced, so a caller gets at least max_age_s - this"
    )
    key_idle_ttl_s: float = Field(
        600.0, gt=0, description="a pool opened for a URL or headers callers asked for is closed after this long unasked"
    )
    max_keys: int = Field(16, ge=1, description="pools opened for what callers asked for, per provider or model")
    refill_concurrency: int = Field(2, ge=1, description="upstream connects in flight per pool key")
    refill_delay_s: float = Field(
        0.25, ge=0, description="a claim's refill waits this long, so its connect stays off the caller's first turn"
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="after a failed connect; doubles per failure")
    backoff_max_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> WarmPoolConfig:
        if self.min_size > self.max_size:
            raise ValueError("min_size must not exceed max_size")
        if self.recycle_after_s >= self.max_age_s:
            raise ValueError("recycle_after_s must be below max_age_s: a caller would get an expiring session")
        return self


class EntraTokenConfig(_Strict):
    """An Entra ID bearer token for an Azure OpenAI resource: a fixed value, a file, or a command's output.

    A file or command token is read again every `refresh_s` (sooner when the command's JSON says it expires).
    """

    token: EnvSecret | None = None
    token_file: str | None = Field(None, description="a file holding the token, rewritten by whatever renews it")
    token_command: list[str] | None = Field(
        None, description="argv printing the token, or JSON with `accessToken`/`access_token` and `expires_on`"
    )
    refresh_s: float = Field(300.0, gt=0)
    command_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> EntraTokenConfig:
        if sum(source is not None for source in (self.token, self.token_file, self.token_command)) != 1:
            raise ValueError("exactly one of token, token_file or token_command is required")
        if self.token_command is not None and not self.token_command:
            raise ValueError("token_command must not be empty")
        return self


class ProviderConfig(_Strict):
    """A realtime upstream: OpenAI or an OpenAI-compatible server (`kind: openai`), an Azure OpenAI resource, or
    Gemini Live (`kind: gemini`)."""

    kind: Literal["openai", "azure", "gemini"] = "openai"
    base_url: str = Field(
        description="HTTP(S) base URL, e.g. https://api.openai.com/v1; for Azure the resource endpoint, "
        "e.g. https://<resource>.openai.azure.com; http→ws, https→wss; "
        f"for kind gemini it defaults to {GEMINI_BASE_URL} (Vertex: https://LOCATION-aiplatform.googleapis.com)"
    )
    api_key: EnvSecret | None = Field(None, description="sent as a bearer token; to Azure as the `api-key` header")
    headers: dict[str, str] = Field(default_factory=dict, description="static headers sent upstream")
    entra: EntraTokenConfig | None = Field(None, description="Azure only: an Entra ID bearer token instead of api_key")
    url_form: Literal["ga", "preview"] = Field(
        "ga", description="Azure only: /openai/v1/realtime?model= (GA events) or /openai/realtime?api-version=&deployment= (beta events)"
    )
    api_version: str = Field("2025-04-01-preview", description="Azure preview form only: the api-version query parameter")
    gemini: GeminiConfig = Field(default_factory=GeminiConfig, description="kind gemini only")
    warm_pool: WarmPoolConfig | None = Field(None, description="off unless set: upstream sessions opened ahead of demand")

    @model_validator(mode="before")
    @classmethod
    def _gemini_default_url(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("kind") == "gemini" and not value.get("base_url"):
            return {**value, "base_url": GEMINI_BASE_URL}
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must start with http://, https://, ws:// or wss://")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> ProviderConfig:
        if self.kind == "azure":
            if (self.api_key is None) == (self.entra is None):
                raise ValueError("an azure provider needs exactly one of api_key or entra")
        elif self.entra is not None or self.url_form != "ga":
            raise ValueError("entra and url_form apply to kind: azure only")
        if self.kind == "gemini" and self.warm_pool is not None:
            raise ValueError("warm_pool: a Gemini Live session is set up by the client's first message, so none can be opened ahead")
        return self


class ModelRoute(_Strict):
    """Maps a model name clients use to a provider and the model name sent upstream."""

    provider: str
    model: str | None = Field(default=None, description="upstream model name (an Azure deployment); defaults to the client's name")
    priced_as: str | None = Field(
        default=None, description="the price table's model for this route (what an Azure deployment serves); default: the upstream model if priced, else the client's name"
    )
    warm_pool: WarmPoolConfig | None = Field(None, description="this model's own pool, instead of the provider's")


class VirtualKeyConfig(_Strict):
    key: EnvSecret = Field(description="the credential clients present, e.g. sk-bf-…")
    name: str
    allowed_models: list[str] = Field(default_factory=lambda: ["*"])
    allowed_providers: list[str] = Field(default_factory=lambda: ["*"])
    budget: Budget | None = None
    rate_limits: RateLimits | None = None
    max_sessions: int | None = Field(None, ge=1, description="concurrent sessions of this key, across processes sharing the store")
    team: str | None = Field(None, description="a name under `teams`, whose budget and session cap apply too")
    log_content: bool | None = Field(None, description="override turn_log.log_content for this key")
    record_audio: bool = Field(False, description="record each turn's input and output audio (never when content is not logged)")

    @field_validator("key")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    def allows(self, model: str | None, provider: str) -> bool:
        if "*" not in self.allowed_providers and provider not in self.allowed_providers:
            return False
        if "*" in self.allowed_models:
            return True
        return model is not None and model in self.allowed_models


class RealtimeConfig(_Strict):
    """Limits and timers of the WebSocket relay. Every cap has a defined behaviour (see docs/ARCHITECTURE.md)."""

    max_frame_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    permessage_deflate: bool = Field(False, description="compression roughly doubles per-event CPU; off by default")
    ping_interval_s: float = Field(15.0, gt=0)
    ping_timeout_s: float = Field(30.0, gt=0, description="a client is dead after interval + timeout without a pong")
    upstream_ping_interval_s: float = Field(20.0, gt=0)
    upstream_ping_timeout_s: float = Field(20.0, gt=0)
    upstream_connect_timeout_s: float = Field(10.0, gt=0)
    write_timeout_s: float = Field(30.0, gt=0, description="a client that accepts no data for this long is dropped")
    close_timeout_s: float = Field(1.0, gt=0, description="a peer that does not take its closing frames within this is dropped")
    idle_timeout_s: float = Field(0.0, ge=0, description="0 disables; no frame either way for this long ends the session")
    max_session_s: float = Field(3600.0, ge=0, description="0 disables; hard cap on one session's duration")
    shutdown_drain_s: float = Field(10.0, ge=0, description="how long open turns may finish on SIGTERM")
    max_sessions: int = Field(1000, ge=1, description="concurrent sessions per process; more are refused")
    max_text_bytes: int = Field(65536, ge=0, description="per-turn cap on accumulated output text/transcript")
    max_arguments_bytes: int = Field(65536, ge=0, description="per-call cap on accumulated tool arguments")
    max_open_responses: int = Field(64, ge=1)
    max_pending_inputs: int = Field(256, ge=1, description="inputs remembered until a turn consumes them")
    max_pending_creates: int = Field(64, ge=1, description="response.create requests awaiting response.created")


class IceServerConfig(_Strict):
    urls: list[str] = Field(description="stun:host:port or turn:host:port?transport=udp|tcp URLs")
    username: str | None = None
    credential: EnvSecret | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value



class WebRTCConfig(_Strict):
    """WebRTC calls: the gateway answers the client's offer and places its own call to the provider."""

    ice_servers: list[IceServerConfig] = Field(default_factory=list, description="STUN/TURN for the client-facing peer")
    upstream_ice_servers: list[IceServerConfig] = Field(default_factory=list, description="STUN/TURN for the provider-facing peer")
    host_candidates: Literal["interfaces", "loopback", "all"] = Field(
        "interfaces", description="addresses offered as ICE host candidates: interface addresses, 127.0.0.1 only, or both"
    )
    ice_gather_timeout_s: float = Field(5.0, gt=0, description="per peer; a call whose gathering overruns is refused (504)")
    upstream_timeout_s: float = Field(10.0, gt=0, description="the provider's SDP answer must arrive within this")
    connect_timeout_s: float = Field(15.0, gt=0, description="both peers must connect within this after the answer")
    disconnect_grace_s: float = Field(5.0, ge=0, description="a peer that disconnects may come back within this")
    upstream_silence_s: float = Field(
        10.0, ge=0, description="0 disables; a provider that sends no audio and no event this long mid-response is gone"
    )
    max_calls: int = Field(200, ge=1, description="concurrent calls per process; more are refused (429)")
    max_calls_per_key: int | None = Field(None, ge=1, description="concurrent calls per virtual key in this process")
    max_pending_messages: int = Field(1000, ge=1, description="data-channel messages queued per direction before the call ends")
    max_pending_bytes: int = Field(1024 * 1024, ge=1024, description="data-channel bytes queued per direction before the call ends")
    max_offer_bytes: int = Field(64 * 1024, ge=1024, description="largest accepted SDP offer / request body")
    ring_packets: int = Field(250, ge=8, description="RTP packets queued per direction (5 s of 20 ms audio); oldest dropped first")


class TurnLogConfig(_Strict):
    queue_size: int = Field(10000, ge=1, description="records awaiting the sinks; overflow is written synchronously")
    log_content: bool = Field(True, description="include user and model text in turn records (per-key override)")
    store: Literal["sqlite", "postgres", "none"] = Field("sqlite", description="the durable turn log")
    sqlite_path: str = "bifrost-rt/turns.db"
    postgres_dsn: EnvSecret | None = Field(None, description="required when store is postgres")
    postgres_pool_size: int = Field(4, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    spill_path: str = Field("bifrost-rt/turns.spill.jsonl", description="records wait here while the store is unreachable")
    spill_max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="beyond it records are still kept; a warning is logged")
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    raw_frames: bool = Field(False, description="keep the response.create and response.done frames (capped at 16 KiB each)")

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> TurnLogConfig:
        if self.store == "postgres" and self.postgres_dsn is None:
            raise ValueError("postgres_dsn is required when store is postgres")
        return self


class AudioConfig(_Strict):
    """Turn audio of the keys with `record_audio`, written off the relay path to a directory."""

    directory: str = Field("bifrost-rt/audio", description="one file per turn and direction")
    max_bytes: int = Field(1024**3, ge=1024, description="total size of the directory; the oldest files are deleted first")
    retention_s: float = Field(7 * 86400.0, gt=0, description="files older than this are deleted by the periodic sweep")
    sweep_interval_s: float = Field(60.0, gt=0)
    queue_size: int = Field(64, ge=1, description="turns awaiting the writer; beyond it a turn's audio is dropped and counted")
    max_queued_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="audio awaiting the writer; a turn that would exceed it is dropped and counted"
    )
    max_turn_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="audio held per turn and direction (as received), so per recording session in memory; beyond it the recording is cut"
    )


class TelemetryConfig(_Strict):
    """OpenTelemetry traces over OTLP/HTTP: a span per session, a child span per turn. Unset endpoint: off."""

    endpoint: str | None = Field(None, description="the OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces")
    headers: dict[str, EnvSecret] = Field(default_factory=dict, description="sent with every export (e.g. an API key)")
    service_name: str = "bifrost-rt"
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class ClientSecretsConfig(_Strict):
    secret: EnvSecret | None = Field(
        default=None,
        description="seals gateway client secrets; every instance that should accept a token needs the same one. "
        "Unset: minting is disabled (503).",
    )
    max_ttl_s: int = Field(
        7200, ge=1, description="the longest any client secret lives from its minting (longer requests are capped); revocations last as long"
    )
    upstream_timeout_s: float = Field(10.0, gt=0)

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class CorsConfig(_Strict):
    allowed_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed to call the gateway ('*' for any); WS upgrades too"
    )
    max_age_s: int = Field(86400, ge=0)

    def allows(self, origin: str | None) -> bool:
        """Requests without an Origin (servers, SDKs) are always allowed; browsers must be listed."""
        return not origin or "*" in self.allowed_origins or origin in self.allowed_origins


class MetricsConfig(_Strict):
    bearer_token: EnvSecret | None = Field(
        default=None, description="required as `Authorization: Bearer …` on GET /metrics (401 otherwise); unset: open"
    )
    key_label: Literal["name", "id"] = Field(
        "name", description="the `key` label of token and cost series: the key's name, or its id (vk_ + hash prefix, stable)"
    )

    @field_validator("bearer_token")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


class UiConfig(_Strict):
    enabled: bool = Field(False, description="serve the session UI at /ui (admin keys only)")
    secret: EnvSecret | None = Field(None, description="signs the UI's session cookies; required when enabled")
    session_ttl_s: int = Field(8 * 3600, ge=60, description="a login lasts this long")

    @model_validator(mode="after")
    def _enabled_needs_secret(self) -> UiConfig:
        if self.enabled and self.secret is None:
            raise ValueError("secret is required when the UI is enabled")
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret must be at least 16 characters")
        return self


class PluginConfig(_Strict):
    use: str = Field(description="import path, package.module:ClassName (a bifrost_rt.plugins.Plugin)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the class")


class HooksConfig(_Strict):
    pre_turn_timeout_ms: float = Field(200.0, gt=0, description="time budget of the whole pre_turn chain per turn")
    on_failure: Literal["open", "closed"] = Field("open", description="a hook that raises or times out allows (open) or denies (closed)")
    queue_size: int = Field(10000, ge=1, description="queued post_turn/session hook calls; beyond it calls are dropped and counted")


class StoreConfig(_Strict):
    redis_url: EnvSecret | None = Field(
        default=None, description="shared counters for budgets, rate limits, session caps, revocations and the call directory; unset: in-memory"
    )
    timeout_s: float = Field(0.5, gt=0)



class GovernanceConfig(_Strict):
    fail_open: bool = Field(False, description="when the store is unreachable: allow (true) or refuse (false)")
    lease_s: float = Field(60.0, ge=3, description="a session's slot is freed this long after its process stops renewing it")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    request_head_timeout_s: float = Field(
        5.0, gt=0, description="a request head not complete this long after the connection opened (or, kept alive, after its first byte) is closed"
    )
    max_request_head_bytes: int = Field(
        16 * 1024, ge=1024, description="a larger request head is answered 431; a line may have at most 8 KiB either way"
    )
    max_pending_handshakes: int = Field(
        256, ge=1, description="connections per process still sending their first request head; beyond it new ones are closed at once"
    )
    instance_url: str | None = Field(
        default=None,
        description="http://host:port where the other instances reach this one's forwarding listener (bound on `host`; "
        "worker i listens on port + i); unset: a single process keeps its calls to itself, workers use loopback",
    )
    instance_secret: EnvSecret | None = Field(
        default=None, description="authenticates requests forwarded between instances; the same on every instance"
    )
    call_forwarding: Literal["proxy", "redirect"] = Field(
        "proxy", description="a hangup or sideband for another instance's call: relayed to it, or answered 307 to its instance_url"
    )
    call_directory_ttl_s: float = Field(30.0, ge=3, description="a call's directory entry outlives its owner by at most this")
    drain_ready_delay_s: float = Field(
        0.0, ge=0, description="on SIGTERM /readyz is 503 this long, still serving, before new sessions are refused"
    )

    @field_validator("instance_url")
    @classmethod
    def _check_instance_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if not re.match(r"^http://[^/:]+:\d+$", value):
            raise ValueError("must be http://host:port")
        return value

    @field_validator("instance_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _instances_need_a_secret(self) -> ServerConfig:
        if self.instance_url is not None and self.instance_secret is None:
            raise ValueError("instance_secret is required with instance_url")
        return self


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    providers: dict[str, ProviderConfig]
    models: dict[str, str | ModelRoute] = Field(default_factory=dict)
    default_provider: str | None = Field(
        default=None, description="provider for bare model names not listed in `models` (default: the only provider)"
    )
    virtual_keys: list[VirtualKeyConfig] = Field(default_factory=list)
    admin_keys: list[EnvSecret] = Field(default_factory=list, description="bearer keys for the /api admin routes")
    client_secrets: ClientSecretsConfig = Field(default_factory=ClientSecretsConfig)
    plugins: list[PluginConfig] = Field(default_factory=list)
    teams: dict[str, TeamPolicy] = Field(default_factory=dict)
    store: StoreConfig = Field(default_factory=StoreConfig)
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig)
    turn_log: TurnLogConfig = Field(default_factory=TurnLogConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per-model price overrides, same shape as the shipped table"
    )

    @field_validator("providers")
    @classmethod
    def _at_least_one_provider(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        if not value:
            raise ValueError("at least one provider is required")
        for name in value:
            if "/" in name or not name:
                raise ValueError(f"provider name {name!r} must be non-empty and contain no '/'")
        return value

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        if self.default_provider is not None and self.default_provider not in self.providers:
            raise ValueError(f"default_provider: unknown provider {self.default_provider!r}")
        for name, route in self.models.items():
            provider = route if isinstance(route, str) else route.provider
            if provider not in self.providers:
                raise ValueError(f"models.{name}: unknown provider {provider!r}")
            if not isinstance(route, str) and route.warm_pool is not None and self.providers[provider].kind == "gemini":
                raise ValueError(f"models.{name}.warm_pool: a Gemini Live session is set up by the client's first message, so none can be opened ahead")
        seen: set[str] = set()
        names: set[str] = set()
        for index, vk in enumerate(self.virtual_keys):
            unknown = [p for p in vk.allowed_providers if p != "*" and p not in self.providers]
            if unknown:
                raise ValueError(f"virtual_keys.{index}.allowed_providers: unknown provider(s) {unknown}")
            secret = vk.key.get_secret_value()
            if secret in seen:
                raise ValueError(f"virtual_keys.{index}.key: duplicate key")
            if vk.name in names:
                raise ValueError(f"virtual_keys.{index}.name: duplicate name {vk.name!r}")
            if vk.team is not None and vk.team not in self.teams:
                raise ValueError(f"virtual_keys.{index}.team: unknown team {vk.team!r}")
            seen.add(secret)
            names.add(vk.name)
        # Budgets, rate limits, session caps and the call directory (hangup and sideband of WebRTC calls) are
        # shared through the store; per-process memory would split them between workers or instances.
        if self.store.redis_url is None and (self.server.workers > 1 or self.server.instance_url is not None):
            raise ValueError(
                "store.redis_url: budgets, rate limits, session caps and WebRTC calls need a shared store with several workers or instances"
            )
        return self


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{location}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(data: dict[str, Any]) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {file}: {error.strerror}") from None
    try:
        if file.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # the parsers raise several unrelated types
        raise ConfigError(f"cannot parse {file}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    return parse_config(data)
