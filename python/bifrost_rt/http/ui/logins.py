"""UI logins: a signed, expiring cookie naming the login, never holding the admin key; CSRF tokens bound to it.

    cookie = "v1." + b64url(json{sid, kid, exp}) + "." + b64url(HMAC-SHA256(k, payload))

`sid` is a random login reference, `kid` the admin key's id (a hash prefix, `Authenticator.admin_id`), `exp` unix
seconds. The key `k` is derived from `ui.secret`, so every process with the same secret accepts the cookie. A login
stops working when it expires, when its admin key leaves the configuration, or on logout (the `sid` is then kept
in the KV store until it would have expired: shared between processes with Redis, per process in memory).
Every POST form carries `csrf_token(sid)`, an HMAC of the login; the login form itself, before there is a login,
carries one bound to a short-lived signed pre-login cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from bifrost_rt.policy.auth import Authenticator
from bifrost_rt.state.kv import KVStore

LOGIN_COOKIE = "bifrost_rt_ui"
PRE_LOGIN_COOKIE = "bifrost_rt_ui_login"
PRE_LOGIN_TTL_S = 600
_LOGGED_OUT = "ui:logged-out:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Login:
    sid: str
    admin_id: str
    expires_at: float


class Logins:
    def __init__(self, secret: str, authenticator: Authenticator, kv: KVStore, ttl_s: float) -> None:
        self._key = hmac.new(secret.encode(), b"bifrost-rt ui cookie v1", hashlib.sha256).digest()
        self._authenticator = authenticator
        self._kv = kv
        self.ttl_s = ttl_s

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def _seal(self, fields: dict[str, object]) -> str:
        payload = orjson.dumps(fields)
        return f"v1.{_b64(payload)}.{self._sign(payload)}"

    def _open(self, cookie: str | None) -> dict[str, object] | None:
        if not cookie:
            return None
        version, _, rest = cookie.partition(".")
        encoded, _, signature = rest.partition(".")
        try:
            payload = _unb64(encoded)
        except ValueError:
            return None
        if version != "v1" or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            fields = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        exp = fields.get("exp") if isinstance(fields, dict) else None
        if not isinstance(exp, (int, float)) or exp <= time.time():
            return None
        return fields

    # ---- logins ------------------------------------------------------------------------------------

    def log_in(self, credential: str) -> tuple[str, Login] | None:
        """The cookie value and the login for an admin key; None for any other credential."""
        admin_id = self._authenticator.admin_id(credential)
        if admin_id is None:
            return None
        login = Login(secrets.token_urlsafe(18), admin_id, time.time() + self.ttl_s)
        return self._seal({"sid": login.sid, "kid": login.admin_id, "exp": login.expires_at}), login

    async def current(self, cookie: str | None) -> Login | None:
        """The login a request's cookie proves, if it still holds. Raises KVUnavailable."""
        fields = self._open(cookie)
        if fields is None:
            return None
        sid, admin_id, exp = fields.get("sid"), fields.get("kid"), fields.get("exp")
        if not isinstance(sid, str) or not isinstance(admin_id, str) or not self._authenticator.is_admin_id(admin_id):
            return None
        if await self._kv.get(_LOGGED_OUT + sid) is not None:
            return None
        assert isinstance(exp, (int, float))
        return Login(sid, admin_id, float(exp))

    async def log_out(self, login: Login) -> None:
        await self._kv.set(_LOGGED_OUT + login.sid, "1", ttl_s=max(1.0, login.expires_at - time.time()))

    # ---- CSRF ----------------------------------------------------------------------------------------

    def csrf_token(self, sid: str) -> str:
        return self._sign(b"csrf|" + sid.encode())

    def csrf_valid(self, sid: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf_token(sid))

    def pre_login(self) -> tuple[str, str]:
        """(cookie, form token) for the login form."""
        nonce = secrets.token_urlsafe(18)
        return self._seal({"pre": nonce, "exp": time.time() + PRE_LOGIN_TTL_S}), self.csrf_token("pre|" + nonce)

    def pre_login_valid(self, cookie: str | None, token: str | None) -> bool:
        fields = self._open(cookie)
        nonce = fields.get("pre") if fields else None
        return isinstance(nonce, str) and self.csrf_valid("pre|" + nonce, token)
