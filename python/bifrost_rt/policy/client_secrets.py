"""Gateway client secrets: `ek_` tokens that wrap a provider's ephemeral secret.

A token is an AES-GCM box, keyed from the configured secret, holding the provider token, the minting key, the
provider, the model and the expiry. Any gateway instance with the same secret opens it without a lookup; the
browser holding it never sees the provider token and cannot use the token anywhere but through a gateway.
Revocations (one token, or every token a key minted so far) live in the KV store.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bifrost_rt.state.kv import KVStore

TOKEN_PREFIX = "ek_"
_VERSION = b"\x01"
_NONCE_BYTES = 12
_AAD = b"bifrost-rt client secret v1"
_REVOKED_TOKEN = "client-secret:revoked:"
_REVOKED_KEY = "client-secret:key-revoked-at:"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a gateway token carries."""

    token_id: str
    key_id: str
    provider: str
    model: str | None
    provider_token: str
    expires_at: int  # unix seconds, as upstream reported
    minted_at: float


class InvalidToken(Exception):
    """Expired, tampered, revoked or sealed with another secret; the message is safe to log (no token)."""


def is_gateway_token(credential: str) -> bool:
    return credential.startswith(TOKEN_PREFIX)


class ClientSecrets:
    def __init__(self, secret: str, kv: KVStore, max_ttl_s: float = 7200) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"bifrost-rt client secrets").derive(secret.encode())
        self._aead = AESGCM(key)
        self._kv = kv
        # No token outlives this from its minting, whatever it asked for: revocation records live exactly as long.
        self.max_ttl_s = max_ttl_s

    def capped_expiry(self, expires_at: int, now: float | None = None) -> int:
        return min(int(expires_at), int((time.time() if now is None else now) + self.max_ttl_s))

    def seal(self, *, key_id: str, provider: str, model: str | None, provider_token: str, expires_at: int) -> str:
        payload = orjson.dumps(
            {
                "i": os.urandom(12).hex(),
                "k": key_id,
                "p": provider,
                "m": model,
                "t": provider_token,
                "x": self.capped_expiry(expires_at),
                "n": time.time(),
            }
        )
        nonce = os.urandom(_NONCE_BYTES)
        box = _VERSION + nonce + self._aead.encrypt(nonce, payload, _AAD)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(box).rstrip(b"=").decode()

    async def open(self, token: str) -> Grant:
        grant = self._unseal(token)
        now = time.time()
        if grant.expires_at <= now or grant.minted_at + self.max_ttl_s <= now:
            raise InvalidToken("client secret expired")
        if await self._kv.get(_REVOKED_TOKEN + grant.token_id) is not None:
            raise InvalidToken("client secret revoked")
        revoked_at = await self._kv.get(_REVOKED_KEY + grant.key_id)
        if revoked_at is not None and grant.minted_at <= float(revoked_at):
            raise InvalidToken("client secrets of this key revoked")
        return grant

    def _unseal(self, token: str) -> Grant:
        if not is_gateway_token(token):
            raise InvalidToken("not a gateway client secret")
        body = token[len(TOKEN_PREFIX) :]
        try:
            box = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise InvalidToken("malformed client secret") from None
        if len(box) <= 1 + _NONCE_BYTES or box[:1] != _VERSION:
            raise InvalidToken("malformed client secret")
        try:
            payload = orjson.loads(self._aead.decrypt(box[1 : 1 + _NONCE_BYTES], box[1 + _NONCE_BYTES :], _AAD))
            return Grant(
                token_id=payload["i"],
                key_id=payload["k"],
                provider=payload["p"],
                model=payload["m"],
                provider_token=payload["t"],
                expires_at=int(payload["x"]),
                minted_at=float(payload["n"]),
            )
        except InvalidTag:
            raise InvalidToken("client secret not issued by this gateway, or altered") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InvalidToken("malformed client secret") from None

    async def revoke_token(self, token: str) -> Grant:
        """Revoke one token until it would have expired anyway. Raises InvalidToken if it cannot be opened."""
        grant = self._unseal(token)
        ttl = grant.expires_at - time.time()
        if ttl > 0:
            await self._kv.set(_REVOKED_TOKEN + grant.token_id, "1", ttl_s=ttl)
        return grant

    async def revoke_key(self, key_id: str, max_ttl_s: float) -> None:
        """Revoke every token the key minted until now; tokens it mints later are valid."""
        # Kept as long as any token minted before now can live.
        await self._kv.set(_REVOKED_KEY + key_id, repr(time.time()), ttl_s=max_ttl_s)
