"""Identifiers in the shapes the Realtime API uses: `<prefix>_` + 21 base62 characters, secrets `ek_` + 32 hex."""

from __future__ import annotations

import random
import secrets
import string

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Ids are labels, not secrets: a fast non-cryptographic generator keeps per-event cost low under load.
_rng = random.Random()


def new_id(prefix: str) -> str:
    return prefix + "_" + "".join(_rng.choices(_BASE62, k=21))


def new_client_secret() -> str:
    return "ek_" + secrets.token_hex(16)


def obfuscation(delta: str) -> str:
    """Random padding like the `obfuscation` field of GA deltas: it evens out the length of short deltas."""
    return "".join(_rng.choices(_BASE62, k=max(4, 16 - len(delta))))
