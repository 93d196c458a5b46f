"""Simulator settings and the fault grammar shared by the options, response metadata and text directives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Close codes an endpoint may put in a close frame (RFC 6455 §7.4; 1005, 1006 and 1015 are reserved for reporting).
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
MAX_AUDIO_MS = 3_600_000  # longest generated answer, from the options or `sim.audio_ms`


@dataclass(frozen=True)
class Fault:
    """What goes wrong with a response: `drop`, `stall`, `failed`, or `close` with `close_code`."""

    kind: str
    close_code: int | None = None


def parse_fault(spec: str) -> Fault:
    """Parses `drop`, `stall`, `failed` or `close:<code>`; raises ValueError otherwise."""
    spec = spec.strip()
    if spec in ("drop", "stall", "failed"):
        return Fault(spec)
    kind, _, code = spec.partition(":")
    if kind == "close" and code.isdigit():
        value = int(code)
        if value in _SENDABLE_CLOSE_CODES or 3000 <= value <= 4999:
            return Fault("close", value)
        raise ValueError(f"close code {value} cannot be sent in a close frame")
    raise ValueError(f"unknown fault {spec!r}; expected drop, stall, failed or close:<code>")


class SimulatorOptions(BaseModel):
    """How the simulator behaves; one instance serves every connection of an app."""

    model_config = ConfigDict(extra="forbid")

    pace: float = Field(1.0, ge=0)
    """Multiple of realtime for output audio delivery; 0 sends as fast as possible, without sleeping.
    Text deltas are never paced."""
    audio_delta_ms: int = Field(100, ge=10, le=60_000)
    """Duration of audio carried by each `response.output_audio.delta`."""
    response_audio_ms: int = Field(1200, ge=0, le=MAX_AUDIO_MS)
    """Length of generated audio per audio response; `response.metadata["sim.audio_ms"]` overrides it."""
    fault: str | None = None
    """Default fault for every response: None, "drop", "stall", "failed" or "close:<code>"."""
    api_keys: list[str] | None = None
    """When set, only these bearer keys (and client secrets issued here) are accepted; else any non-empty key."""
    stamp_events: bool = False
    """Adds "sim_sent_ns" (time.time_ns() at send) to every delta event, for latency measurements through relays."""
    model: str = "gpt-realtime"
    """Session model when the URL has no `?model=`."""
    webrtc_max_calls: int = Field(100, ge=1)
    """Most WebRTC calls (`POST /v1/realtime/calls`) open at once; more are refused with 429."""
    webrtc_host_candidates: Literal["loopback", "interfaces", "all"] = "loopback"
    """Where a call's ICE host candidates are: 127.0.0.1 only (clients on this machine; media never leaves it),
    the network interfaces' addresses (aioice's own choice, for clients elsewhere), or both."""
    webrtc_ice_servers: list[str] = []
    """STUN server URLs (`stun:host:port`) for server-reflexive candidates. Empty: no server is contacted
    (aiortc would otherwise use a public STUN server)."""
    flavor: Literal["openai", "azure"] = "openai"
    """Whose API is played: OpenAI's (`/v1/realtime`, bearer keys) or an Azure OpenAI resource's (`/openai/v1/…` and
    the preview `/openai/realtime?api-version=…&deployment=…`, `api-key` or bearer, Azure's refusals and headers)."""
    azure_deployments: dict[str, str] = {
        "gpt-realtime": "gpt-realtime", "gpt-realtime-mini": "gpt-realtime-mini", "gpt-4o": "gpt-4o",
    }
    """Azure flavor: deployment name → the model it serves. Other names are `DeploymentNotFound`; a deployment of a
    model that is not a realtime model is `OperationNotSupported`."""
    azure_region: str = "swedencentral"
    """Azure flavor: the `x-ms-region` header of every answer."""

    @field_validator("fault")
    @classmethod
    def _check_fault(cls, value: str | None) -> str | None:
        if value is not None:
            parse_fault(value)
        return value

    @property
    def default_fault(self) -> Fault | None:
        return parse_fault(self.fault) if self.fault else None
