"""Dialects: translators between what a peer speaks and OpenAI GA, and the choice of one per session side.

`for_client` reads the client's handshake; `for_provider` reads the route's provider. Each returns a fresh
dialect for one session (a dialect may keep per-session state), or the shared identity when nothing needs
translating, which keeps the relay on its untranslated fast path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bifrost_rt.dialects import beta
from bifrost_rt.dialects.seam import IDENTITY, Dialect, Identity, Untranslatable
from bifrost_rt.providers import Route

__all__ = ["IDENTITY", "Dialect", "Identity", "Untranslatable", "for_client", "for_provider"]


def for_client(headers: Mapping[str, str], subprotocols: Sequence[str], *, legacy: bool = False) -> Dialect:
    """The dialect the client speaks, from its handshake (lower-case header names); `legacy`: a retired beta route."""
    if legacy or beta.requested(headers, subprotocols):
        return beta.BETA_CLIENT
    return IDENTITY


def for_provider(route: Route) -> Dialect:
    """The dialect the route's provider speaks (`Route.dialect`)."""
    if route.dialect == "openai-beta":
        return beta.BETA_PROVIDER
    return IDENTITY
