"""The session UI under /ui: login, sessions, one session, live sessions, keys; admin keys only.

Every page is rendered on the server (Jinja2, autoescaped); the only script is the live view's poller, served
from the package's static files like the stylesheet, so the Content-Security-Policy allows nothing inline and
nothing from elsewhere. Data pages are never cached.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bifrost_rt.errors import RealtimeError
from bifrost_rt.http.logs_api import parse_time
from bifrost_rt.http.services import Services
from bifrost_rt.http.turn_audio import audio_response
from bifrost_rt.http.ui import views
from bifrost_rt.http.ui.logins import LOGIN_COOKIE, PRE_LOGIN_COOKIE, PRE_LOGIN_TTL_S, Login, Logins
from bifrost_rt.state.audio_store import AudioStore
from bifrost_rt.state.kv import KVStore, KVUnavailable
from bifrost_rt.state.turn_log import StoreUnavailable, TurnLogStore, TurnQuery

logger = logging.getLogger("bifrost_rt.ui")

PREFIX = "/ui"
SESSIONS_PER_PAGE = 50
TURNS_PER_PAGE = 200
MAX_FORM_BYTES = 8192  # the UI's forms hold a key and a token; a bigger body is refused before it is kept
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class _SecurityHeaders:
    """Adds the policy headers to every UI response; data pages (all but the static files) are not stored."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(f"{PREFIX}/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += _SECURITY_HEADERS
                headers.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _small_form(request: Request) -> dict[str, str] | None:
    """The fields of an urlencoded form of at most MAX_FORM_BYTES; None for anything bigger or malformed."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in fields.items()}


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 1_000_000 else 1


class SessionUi:
    def __init__(self, services: Services, store: TurnLogStore | None, kv: KVStore, audio: AudioStore | None = None) -> None:
        config = services.config.ui
        assert config.secret is not None
        self.services = services
        self.store = store
        self.audio = audio
        self.logins = Logins(config.secret.get_secret_value(), services.authenticator, kv, config.session_ttl_s)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("bifrost_rt.http.ui", "templates"),
            autoescape=True,
        )
        self.templates.filters.update(when=views.when, seconds=views.seconds, usd=views.usd)

    def app(self) -> ASGIApp:
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.log_in, methods=["POST"]),
            Route("/logout", self.log_out, methods=["POST"]),
            Route("/sessions", self.sessions, methods=["GET"]),
            Route("/sessions/{session_id:path}", self.session, methods=["GET"]),
            Route("/turns/{turn_id}/audio/{direction}", self.turn_audio, methods=["GET"]),
            Route("/live", self.live, methods=["GET"]),
            Route("/live.json", self.live_json, methods=["GET"]),
            Route("/keys", self.keys, methods=["GET"]),
            Mount("/static", StaticFiles(packages=[("bifrost_rt.http.ui", "static")]), name="static"),
        ]
        return _SecurityHeaders(Starlette(routes=routes))

    # ---- rendering and login checks --------------------------------------------------------------------

    def _render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(prefix=PREFIX, **context)
        return HTMLResponse(html, status)

    def _error_page(self, status: int, message: str, login: Login | None = None) -> HTMLResponse:
        return self._render("error.html", status, message=message, login=login, csrf=self._csrf(login), nav="")

    def _csrf(self, login: Login | None) -> str:
        return self.logins.csrf_token(login.sid) if login else ""

    async def _login(self, request: Request) -> Login | None:
        return await self.logins.current(request.cookies.get(LOGIN_COOKIE))

    async def _page(self, request: Request, build: Any) -> Response:
        """A data page for a logged-in admin; anyone else is sent to the login form and sees nothing."""
        try:
            login = await self._login(request)
        except KVUnavailable:
            return self._error_page(503, "The gateway's store is unavailable; try again shortly.")
        if login is None:
            return RedirectResponse(f"{PREFIX}/login", 303)
        try:
            return await build(request, login)
        except StoreUnavailable as error:
            logger.warning("session UI: turn log store unavailable (%s)", error)
            return self._error_page(503, "The turn log store is unavailable; try again shortly.", login)

    def _secure(self, request: Request) -> bool:
        return request.url.scheme == "https"

    # ---- login -------------------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/sessions", 303)

    def _login_page(self, request: Request, status: int = 200, message: str = "") -> Response:
        cookie, token = self.logins.pre_login()
        response = self._render("login.html", status, message=message, csrf=token, login=None, nav="")
        response.set_cookie(PRE_LOGIN_COOKIE, cookie, max_age=PRE_LOGIN_TTL_S, path=PREFIX, httponly=True,
                            samesite="strict", secure=self._secure(request))  # fmt: skip
        return response

    async def login_form(self, request: Request) -> Response:
        return self._login_page(request)

    async def log_in(self, request: Request) -> Response:
        form = await _small_form(request)
        if form is None:
            return self._login_page(request, 413, "The form was too large.")
        token, key = form.get("csrf_token"), form.get("key")
        if not self.logins.pre_login_valid(request.cookies.get(PRE_LOGIN_COOKIE), token):
            return self._login_page(request, 403, "The form expired or did not come from this page; log in again.")
        result = self.logins.log_in(key.strip()) if key and key.strip() else None
        if result is None:
            return self._login_page(request, 401, "That is not an admin key.")
        cookie, login = result
        response = RedirectResponse(f"{PREFIX}/sessions", 303)
        response.set_cookie(LOGIN_COOKIE, cookie, max_age=int(self.logins.ttl_s), path=PREFIX, httponly=True,
                            samesite="strict", secure=self._secure(request))  # fmt: skip
        response.delete_cookie(PRE_LOGIN_COOKIE, path=PREFIX)
        return response

    async def log_out(self, request: Request) -> Response:
        return await self._page(request, self._log_out)

    async def _log_out(self, request: Request, login: Login) -> Response:
        form = await _small_form(request)
        if not self.logins.csrf_valid(login.sid, form.get("csrf_token") if form else None):
            return self._error_page(403, "The form did not come from this page.", login)
        try:
            await self.logins.log_out(login)
        except KVUnavailable:
            return self._error_page(503, "The gateway's store is unavailable; the login is still valid.", login)
        response = RedirectResponse(f"{PREFIX}/login", 303)
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=self._secure(request))
        return response

    # ---- sessions ----------------------------------------------------------------------------------------

    async def sessions(self, request: Request) -> Response:
        return await self._page(request, self._sessions)

    async def _sessions(self, request: Request, login: Login) -> Response:
        query = request.query_params
        chosen = {name: query.get(name, "").strip() for name in ("key", "model", "provider", "transport", "status", "since", "until", "q")}
        problems = []
        times: dict[str, float | None] = {"since": None, "until": None}
        for name in times:
            if chosen[name]:
                try:
                    times[name] = parse_time(chosen[name])
                except ValueError:
                    problems.append(f"{name} is not a date and time; it was ignored")
        filters = TurnQuery(
            principal=chosen["key"] or None,
            model=chosen["model"] or None,
            provider=chosen["provider"] or None,
            transport=chosen["transport"] or None,
            status=chosen["status"] or None,
            since=times["since"],
            until=times["until"],
            text=chosen["q"] or None,
        )
        page = _page_number(request)
        rows: list[Any] = []
        total = 0
        if self.store is not None:
            rows, total = await self.store.sessions(filters, limit=SESSIONS_PER_PAGE, offset=(page - 1) * SESSIONS_PER_PAGE)
        pages = max(1, math.ceil(total / SESSIONS_PER_PAGE))
        config = self.services.config
        kept = {name: value for name, value in chosen.items() if value}
        return self._render(
            "sessions.html",
            login=login,
            csrf=self._csrf(login),
            nav="sessions",
            logged=self.store is not None,
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            chosen=chosen,
            kept=kept,
            problems=problems,
            keys=[vk.name for vk in config.virtual_keys],
            providers=sorted(config.providers),
            transports=views.TRANSPORTS,
            statuses=views.TURN_STATUSES,
        )

    async def session(self, request: Request) -> Response:
        return await self._page(request, self._session)

    async def _session(self, request: Request, login: Login) -> Response:
        group = request.path_params["session_id"]
        if self.store is None:
            return self._error_page(404, "No turn log is configured (turn_log.store is none).", login)
        summary = await self.store.session_summary(group)
        if summary is None:
            return self._error_page(404, "No turns are logged for this session.", login)
        page = _page_number(request)
        offset = (page - 1) * TURNS_PER_PAGE
        rows, total = await self.store.session_logs(group, limit=TURNS_PER_PAGE, offset=offset, order="asc")
        turns = views.turn_views(rows, offset + 1)
        gateway_sessions = Counter(row["session_id"] for row in rows)
        return self._render(
            "session.html",
            login=login,
            csrf=self._csrf(login),
            nav="sessions",
            group=group,
            summary=summary,
            turns=turns,
            timeline=views.timeline(rows),
            endings=views.session_endings(rows),
            gateway_sessions=sorted(gateway_sessions.items()),
            baggage=any(row["session_id"] != group for row in rows),
            first=rows[0] if rows else None,
            page=page,
            pages=max(1, math.ceil(total / TURNS_PER_PAGE)),
            total=total,
        )

    async def _api_login(self, request: Request) -> Login | Response:
        """The login behind a request for data (not a page): without one, a 401 that says no more."""
        try:
            login = await self._login(request)
        except KVUnavailable:
            login = None
        if login is None:
            error = RealtimeError("invalid_request_error", "invalid_api_key", "Log in with an admin key.")
            return Response(error.http_body(), 401, media_type="application/json")
        return login

    async def turn_audio(self, request: Request) -> Response:
        """A recorded clip for the page's <audio> players; without a login, nothing (not even whether it exists)."""
        login = await self._api_login(request)
        if not isinstance(login, Login):
            return login
        if self.audio is None:
            error = RealtimeError("invalid_request_error", "not_found", "No key records audio on this gateway.", "turn_id")
            return Response(error.http_body(), 404, media_type="application/json")
        return audio_response(self.audio, request.path_params["turn_id"], request.path_params["direction"])

    # ---- live --------------------------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        async def build(request: Request, login: Login) -> Response:
            rows = views.live_rows(self.services.registry, time.monotonic())
            return self._render("live.html", login=login, csrf=self._csrf(login), nav="live", rows=rows)

        return await self._page(request, build)

    async def live_json(self, request: Request) -> Response:
        login = await self._api_login(request)
        if not isinstance(login, Login):
            return login
        rows = views.live_rows(self.services.registry, time.monotonic())
        return Response(orjson.dumps({"object": "list", "sessions": rows}), media_type="application/json")

    # ---- keys --------------------------------------------------------------------------------------------

    async def keys(self, request: Request) -> Response:
        return await self._page(request, self._keys)

    async def _keys(self, request: Request, login: Login) -> Response:
        services = self.services
        open_here = Counter(live.session.principal.name for live in services.registry.live())
        keys = []
        teams: dict[str, dict[str, Any]] = {
            name: {"name": name, "keys": [], "budgets": [], "sessions": [], "open_here": 0} for name in services.config.teams
        }
        unavailable = False
        for vk in services.config.virtual_keys:
            principal = services.authenticator.by_name(vk.name)
            assert principal is not None
            try:
                report = await services.governance.spent(principal.key_id)
            except KVUnavailable:
                unavailable, report = True, {"budgets": [], "sessions": []}
            for budget in report["budgets"]:
                budget["share"] = min(1.0, budget["spent_usd"] / budget["budget_usd"]) if budget["budget_usd"] else 0.0
            keys.append(
                {
                    "name": vk.name,
                    "key_id": principal.key_id,
                    "team": vk.team,
                    "budgets": [b for b in report["budgets"] if b["scope"] == "key"],
                    "sessions": [s for s in report["sessions"] if s["scope"] == "key"],
                    "open_here": open_here[vk.name],
                }
            )
            if vk.team is not None:
                team = teams[vk.team]
                team["keys"].append(vk.name)
                team["open_here"] += open_here[vk.name]
                team["budgets"] = team["budgets"] or [b for b in report["budgets"] if b["scope"] == "team"]
                team["sessions"] = team["sessions"] or [s for s in report["sessions"] if s["scope"] == "team"]
        return self._render(
            "keys.html", login=login, csrf=self._csrf(login), nav="keys", keys=keys, teams=list(teams.values()), unavailable=unavailable
        )
