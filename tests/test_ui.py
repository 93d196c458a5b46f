"""The session UI (/ui): who may see it, how its login is kept, the headers that confine it, what its pages list;
then headless Chromium reading every page for sessions that real openai-python clients held through the gateway."""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from openai import AsyncOpenAI

from bifrost_rt.config import ConfigError, parse_config

from conftest import VIRTUAL_KEY, GatewayFactory, gateway_config
from servers import ServerThread
from test_browser import run_in_loopback_namespace

ADMIN_KEY = "sk-bf-admin-0123456789"
OTHER_ADMIN_KEY = "sk-bf-admin-other-9876543210"
UI_SECRET = "ui-cookie-secret-0123456789abcdef"
GROUP = "ui-test-group"
SAID = "Tell me about the lighthouse"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
BROWSER_SCRIPT = Path(__file__).with_name("browser_ui.py")
BROWSER_TIMEOUT_S = 120
ARTIFACTS_ENV = "BIFROST_RT_ARTIFACTS"


def ui_overrides(tmp_path: Path, **ui: Any) -> dict[str, Any]:
    return {
        "turn_log": {"store": "sqlite", "sqlite_path": str(tmp_path / "turns.db"), "spill_path": str(tmp_path / "spill.jsonl")},
        "admin_keys": [ADMIN_KEY, OTHER_ADMIN_KEY],
        "ui": {"enabled": True, "secret": UI_SECRET, **ui},
    }


async def hold_a_session(gateway: ServerThread, text: str = SAID, model: str = "gpt-realtime", group: str = GROUP) -> None:
    client = AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{gateway.url}/v1", websocket_base_url=f"{gateway.ws_url}/v1")
    async with client.realtime.connect(model=model, extra_headers={"baggage": f"session-id={group}"}) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                break


def wait_for_logged(gateway: ServerThread, count: int) -> None:
    deadline = time.monotonic() + 15
    while httpx.get(f"{gateway.url}/api/logs", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["total_count"] < count:
        assert time.monotonic() < deadline, "the turns did not reach the turn log"
        time.sleep(0.05)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def log_in(ui: httpx.Client, key: str = ADMIN_KEY) -> httpx.Response:
    form = ui.get("/ui/login")
    return ui.post("/ui/login", data={"key": key, "csrf_token": csrf_of(form.text)})


@pytest.fixture
async def ui_gateway(simulator: ServerThread, start_gateway: GatewayFactory, tmp_path: Path) -> ServerThread:
    gateway, _ = start_gateway(f"{simulator.url}/v1", **ui_overrides(tmp_path))
    await hold_a_session(gateway)
    wait_for_logged(gateway, 1)
    return gateway


DATA_PAGES = ["/ui/sessions", f"/ui/sessions/{GROUP}", "/ui/live", "/ui/keys"]


def assert_nothing_shown(response: httpx.Response) -> None:
    """No page and no data: sent to the login form, with nothing of any session in the answer."""
    assert response.status_code in (303, 401), response.text
    if response.status_code == 303:
        assert response.headers["location"] == "/ui/login"
    for secret in (GROUP, SAID, "lighthouse", "team-a", "sess_bf_"):
        assert secret not in response.text


# Off unless enabled ------------------------------------------------------------------------------------------


def test_the_ui_is_not_served_unless_enabled(simulator: ServerThread, start_gateway: GatewayFactory) -> None:
    gateway, _ = start_gateway(f"{simulator.url}/v1", admin_keys=[ADMIN_KEY])
    for path in ("/ui", "/ui/login", "/ui/sessions", "/ui/static/ui.css"):
        assert httpx.get(f"{gateway.url}{path}").status_code == 404


def test_enabling_the_ui_needs_a_signing_secret_of_16_characters() -> None:
    with pytest.raises(ConfigError, match="ui: Value error, secret is required"):
        parse_config(gateway_config("http://127.0.0.1:1/v1", ui={"enabled": True}))
    with pytest.raises(ConfigError, match="at least 16 characters"):
        parse_config(gateway_config("http://127.0.0.1:1/v1", ui={"enabled": True, "secret": "short"}))
    os.environ["BIFROST_RT_TEST_UI_SECRET"] = UI_SECRET
    try:
        config = parse_config(gateway_config("http://127.0.0.1:1/v1", ui={"enabled": True, "secret": "${BIFROST_RT_TEST_UI_SECRET}"}))
    finally:
        del os.environ["BIFROST_RT_TEST_UI_SECRET"]
    assert config.ui.secret is not None and config.ui.secret.get_secret_value() == UI_SECRET
    assert UI_SECRET not in repr(config)


# Who sees what -----------------------------------------------------------------------------------------------


async def test_without_an_admin_login_there_is_no_page_and_no_data(ui_gateway: ServerThread) -> None:
    with httpx.Client(base_url=ui_gateway.url) as anonymous:
        for path in [*DATA_PAGES, "/ui/live.json"]:
            assert_nothing_shown(anonymous.get(path))
        # The API's bearer credential, a key in the URL or a virtual key open nothing here.
        for path in DATA_PAGES:
            assert_nothing_shown(anonymous.get(path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}))
            assert_nothing_shown(anonymous.get(path, params={"key": ADMIN_KEY}))
        refused = log_in(anonymous, VIRTUAL_KEY)
        assert refused.status_code == 401 and "That is not an admin key." in refused.text
        assert "bifrost_rt_ui=" not in refused.headers.get("set-cookie", "")
        assert log_in(anonymous, "").status_code == 401
        for path in DATA_PAGES:
            assert_nothing_shown(anonymous.get(path))
        # A cookie signed with another secret, or altered, is no login.
        forged = forge_cookie(anonymous)
        with httpx.Client(base_url=ui_gateway.url, cookies={"bifrost_rt_ui": forged}) as forger:
            for path in DATA_PAGES:
                assert_nothing_shown(forger.get(path))
    assert httpx.get(f"{ui_gateway.url}/ui/live.json").json()["error"]["code"] == "invalid_api_key"


def forge_cookie(client: httpx.Client) -> str:
    """A real login's cookie with its expiry pushed out and the signature kept: it must not verify."""
    with httpx.Client(base_url=client.base_url) as other:
        log_in(other)
        version, payload, signature = other.cookies["bifrost_rt_ui"].split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).replace(b'"exp":', b'"exp":9')
    return ".".join([version, base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), signature])


async def test_an_admin_login_shows_the_sessions_and_is_kept_in_a_strict_cookie(ui_gateway: ServerThread) -> None:
    with httpx.Client(base_url=ui_gateway.url) as ui:
        logged_in = log_in(ui)
        assert logged_in.status_code == 303 and logged_in.headers["location"] == "/ui/sessions"
        cookie = next(c for c in logged_in.headers.get_list("set-cookie") if c.startswith("bifrost_rt_ui="))
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in attributes and "samesite=strict" in attributes and "path=/ui" in attributes
        assert "secure" not in attributes  # plain http: a Secure cookie would never come back
        assert any(a.startswith("max-age=") for a in attributes)
        value = ui.cookies["bifrost_rt_ui"]
        decoded = b"".join(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in value.split(".")[1:])
        assert ADMIN_KEY not in value and ADMIN_KEY.encode() not in decoded
        assert "ADMIN" not in logged_in.headers.get("location", "").upper()

        listing = ui.get("/ui/sessions")
        assert listing.status_code == 200 and GROUP in listing.text and "1 session" in listing.text
        page = ui.get(f"/ui/sessions/{GROUP}")
        assert page.status_code == 200 and SAID in page.text and "You said: Tell me about the lighthouse" in page.text
        assert ADMIN_KEY not in page.text and ADMIN_KEY not in listing.text
        assert ui.get("/ui/live.json").json() == {"object": "list", "sessions": []}


def test_behind_https_the_cookie_is_secure(ui_gateway: ServerThread) -> None:
    # uvicorn takes X-Forwarded-Proto from a proxy on loopback, as from a TLS-terminating proxy in front.
    # httpx keeps Secure cookies for https, so the pre-login cookie is carried by hand.
    https = {"X-Forwarded-Proto": "https"}
    form = httpx.get(f"{ui_gateway.url}/ui/login", headers=https)
    (pre_login,) = form.headers.get_list("set-cookie")
    assert "secure" in [part.strip().lower() for part in pre_login.split(";")]
    logged_in = httpx.post(f"{ui_gateway.url}/ui/login", data={"key": ADMIN_KEY, "csrf_token": csrf_of(form.text)},
                           headers={**https, "Cookie": pre_login.split(";")[0]})
    cookie = next(c for c in logged_in.headers.get_list("set-cookie") if c.startswith("bifrost_rt_ui="))
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


async def test_logging_out_ends_the_login_even_for_a_copied_cookie(ui_gateway: ServerThread) -> None:
    with httpx.Client(base_url=ui_gateway.url) as ui:
        log_in(ui)
        copied = ui.cookies["bifrost_rt_ui"]
        page = ui.get("/ui/sessions")
        out = ui.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert "bifrost_rt_ui" not in ui.cookies
    with httpx.Client(base_url=ui_gateway.url, cookies={"bifrost_rt_ui": copied}) as replay:
        for path in DATA_PAGES:
            assert_nothing_shown(replay.get(path))


async def test_posts_without_the_sessions_csrf_token_are_refused(ui_gateway: ServerThread) -> None:
    with httpx.Client(base_url=ui_gateway.url) as ui:
        log_in(ui)
        token = csrf_of(ui.get("/ui/sessions").text)
        with httpx.Client(base_url=ui_gateway.url) as other:
            log_in(other)
            others_token = csrf_of(other.get("/ui/sessions").text)
        for form in ({}, {"csrf_token": "forged"}, {"csrf_token": others_token}):
            refused = ui.post("/ui/logout", data=form)
            assert refused.status_code == 403 and "did not come from this page" in refused.text
        assert ui.get("/ui/sessions").status_code == 200  # still logged in
        assert ui.post("/ui/logout", data={"csrf_token": token}).status_code == 303
    # A body bigger than any of the UI's forms is refused before it is kept.
    with httpx.Client(base_url=ui_gateway.url) as big:
        token = csrf_of(big.get("/ui/login").text)
        refused = big.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": token, "padding": "x" * 10_000})
        assert refused.status_code == 413 and "bifrost_rt_ui=" not in refused.headers.get("set-cookie", "")
        assert big.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": csrf_of(refused.text)}).status_code == 303
    # The login form is bound to the page that showed it: a post from elsewhere logs no one in.
    with httpx.Client(base_url=ui_gateway.url) as fresh:
        refused = fresh.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": "anything"})
        assert refused.status_code == 403 and "bifrost_rt_ui=" not in refused.headers.get("set-cookie", "")
        assert_nothing_shown(fresh.get("/ui/sessions"))


async def test_a_login_ends_when_its_admin_key_leaves_the_configuration(
    simulator: ServerThread, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    first, _ = start_gateway(f"{simulator.url}/v1", **ui_overrides(tmp_path))
    with httpx.Client(base_url=first.url) as ui:
        log_in(ui, OTHER_ADMIN_KEY)
        cookie = ui.cookies["bifrost_rt_ui"]
        assert ui.get("/ui/sessions").status_code == 200
    # Another process with the same secret accepts the cookie while the key is configured there, and not after.
    same = ui_overrides(tmp_path)
    second, _ = start_gateway(f"{simulator.url}/v1", **same)
    assert httpx.get(f"{second.url}/ui/sessions", headers={"Cookie": f"bifrost_rt_ui={cookie}"}).status_code == 200
    without = {**same, "admin_keys": [ADMIN_KEY]}
    third, _ = start_gateway(f"{simulator.url}/v1", **without)
    assert_nothing_shown(httpx.get(f"{third.url}/ui/sessions", headers={"Cookie": f"bifrost_rt_ui={cookie}"}))


# Headers ------------------------------------------------------------------------------------------------------


async def test_every_ui_response_carries_a_strict_policy_and_data_pages_are_not_stored(ui_gateway: ServerThread) -> None:
    with httpx.Client(base_url=ui_gateway.url) as ui:
        answers = {"login": ui.get("/ui/login"), "refused": ui.get("/ui/sessions")}
        log_in(ui)
        for path in [*DATA_PAGES, "/ui/live.json", "/ui/static/ui.css", "/ui/static/live.js"]:
            answers[path] = ui.get(path)
    for name, answer in answers.items():
        assert answer.headers["content-security-policy"] == CSP, name
        assert answer.headers["x-frame-options"] == "DENY", name
        assert answer.headers["referrer-policy"] == "no-referrer", name
        assert answer.headers["x-content-type-options"] == "nosniff", name
        static = name.startswith("/ui/static/")
        assert (answer.headers["cache-control"] == "no-store") != static, name
    for path in DATA_PAGES:
        html = answers[path].text
        # Nothing inline for the policy to allow: no script bodies, no style attributes or elements, no handlers.
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert " style=" not in html and "<style" not in html and not re.search(r"\son[a-z]+=", html), path
        assert "http://" not in html and "https://" not in html, path  # nothing from elsewhere


# What the pages list --------------------------------------------------------------------------------------------


async def test_the_sessions_list_filters_and_totals(ui_gateway: ServerThread) -> None:
    await hold_a_session(ui_gateway, text="The weather in Oslo please", model="gpt-realtime-mini", group="second-group")
    wait_for_logged(ui_gateway, 2)
    with httpx.Client(base_url=ui_gateway.url) as ui:
        log_in(ui)

        def listed(**params: str) -> list[str]:
            html = ui.get("/ui/sessions", params=params).text
            return re.findall(r'<tr class="session-row">\s*<td><a href="/ui/sessions/([^"]+)"', html)

        assert listed() == ["second-group", GROUP]
        assert listed(q="oslo") == ["second-group"]
        assert listed(q="LIGHTHOUSE") == [GROUP]
        assert listed(model="gpt-realtime-mini") == ["second-group"]
        assert listed(key="team-a", transport="websocket", provider="openai", status="completed") == ["second-group", GROUP]
        assert listed(transport="webrtc") == [] and listed(status="failed") == []
        assert listed(until="2000-01-01T00:00:00") == [] and listed(since="2000-01-01T00:00:00") == ["second-group", GROUP]
        bad = ui.get("/ui/sessions", params={"since": "yesterday-ish"})
        assert bad.status_code == 200 and "since is not a date and time" in bad.text
        page = ui.get(f"/ui/sessions/{GROUP}").text
        row = ui.get("/api/logs", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, params={"limit": 500}).json()["logs"]
        turn = next(r for r in row if r["session_group"] == GROUP)
        assert f"${turn['cost']['total']:.4f}" in page
        assert f">{turn['usage']['total_tokens']}<" in page
        assert page.count('class="turn-bar"') == 1
        assert ui.get("/ui/sessions/no-such-session").status_code == 404


async def test_recorded_audio_plays_only_for_a_login(simulator: ServerThread, start_gateway: GatewayFactory, tmp_path: Path) -> None:
    overrides = ui_overrides(tmp_path)
    overrides["virtual_keys"] = [{"key": VIRTUAL_KEY, "name": "team-a", "record_audio": True}]
    overrides["audio"] = {"directory": str(tmp_path / "audio")}
    gateway, _ = start_gateway(f"{simulator.url}/v1", **overrides)
    client = AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{gateway.url}/v1", websocket_base_url=f"{gateway.ws_url}/v1")
    async with client.realtime.connect(model="gpt-realtime", extra_headers={"baggage": f"session-id={GROUP}"}) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": SAID}]})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                break
    wait_for_logged(gateway, 1)
    with httpx.Client(base_url=gateway.url) as ui:
        log_in(ui)
        page = ui.get(f"/ui/sessions/{GROUP}").text
        (source,) = re.findall(r'<audio class="turn-audio"[^>]* src="([^"]+)"', page)
        assert re.fullmatch(r"/ui/turns/turn_\w+/audio/output", source)
        clip = ui.get(source)
        assert clip.status_code == 200 and clip.headers["content-type"] == "audio/wav" and clip.content[:4] == b"RIFF"
        assert clip.headers["cache-control"] == "no-store"
        assert ui.get(source.replace("output", "input")).status_code == 404  # text in: nothing was said
        assert ui.get(source.replace("/output", "/sideways")).status_code == 400
        assert ui.get("/ui/turns/turn_unknown/audio/output").status_code == 404
    anonymous = httpx.get(f"{gateway.url}{source}")
    assert anonymous.status_code == 401 and anonymous.content[:4] != b"RIFF"
    forged = httpx.get(f"{gateway.url}{source}", headers={"Authorization": f"Bearer {ADMIN_KEY}", "Cookie": "bifrost_rt_ui=v1.e30.x"})
    assert forged.status_code == 401


async def test_what_clients_said_is_shown_as_text_never_as_markup(ui_gateway: ServerThread) -> None:
    said = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    await hold_a_session(ui_gateway, text=said, group='"><b>group</b>')
    wait_for_logged(ui_gateway, 2)
    with httpx.Client(base_url=ui_gateway.url) as ui:
        log_in(ui)
        listing = ui.get("/ui/sessions").text
        assert "<b>group</b>" not in listing and "&#34;&gt;&lt;b&gt;group&lt;/b&gt;" in listing
        page = ui.get("/ui/sessions/" + quote('"><b>group</b>', safe="")).text
        assert "<img src=x" not in page and "<script>alert" not in page
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page


@pytest.mark.parametrize("store", ["none"])
def test_without_a_turn_log_the_sessions_page_says_so(simulator: ServerThread, start_gateway: GatewayFactory, tmp_path: Path, store: str) -> None:
    overrides = ui_overrides(tmp_path)
    overrides["turn_log"] = {"store": store}
    gateway, _ = start_gateway(f"{simulator.url}/v1", **overrides)
    with httpx.Client(base_url=gateway.url) as ui:
        log_in(ui)
        assert "No turn log is configured" in ui.get("/ui/sessions").text
        assert ui.get(f"/ui/sessions/{GROUP}").status_code == 404
        assert ui.get("/ui/live").status_code == 200 and ui.get("/ui/keys").status_code == 200


# In a real browser ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One browser run over every page (it takes a while); the screenshots stay in the test's tmp dir and are
    copied to $BIFROST_RT_ARTIFACTS when it is set."""
    artifacts = tmp_path_factory.mktemp("ui-screenshots")
    report = run_in_loopback_namespace(BROWSER_SCRIPT, "--artifacts", str(artifacts), timeout_s=BROWSER_TIMEOUT_S)
    target = os.environ.get(ARTIFACTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in report["screenshots"].values():
            shutil.copy(shot, target)
    return report


def test_in_the_browser_a_wrong_key_shows_nothing_and_logout_closes_every_page(browser: dict[str, Any]) -> None:
    assert browser["before_login"] == {"url": "/ui/login", "problem": None, "form": True, "sessions": False}
    assert browser["wrong_key"] == {"url": "/ui/login", "problem": "That is not an admin key.", "form": True, "sessions": False}
    assert browser["after_logout"]["url"] == "/ui/login" and browser["after_logout_session"]["url"] == "/ui/login"
    assert not browser["after_logout_session"]["sessions"]


def test_in_the_browser_the_sessions_list_shows_each_session_with_its_totals(browser: dict[str, Any]) -> None:
    listing = browser["sessions"]
    assert listing["count"] == "2 sessions"
    support, dropped = (next(r for r in listing["rows"] if r["session"] == "support-call"),
                        next(r for r in listing["rows"] if r["session"] != "support-call"))
    assert support["turns"] == "4" and support["key"] == "team-a" and support["transport"] == "websocket"
    assert support["flags"] == "1 refused" and dropped["flags"] == "1 failed"
    assert support["cost"].startswith("$") and float(support["cost"][1:]) > 0
    assert int(support["tokens"]) > 0
    assert [r["session"] for r in browser["search"]["rows"]] == ["support-call"]  # "paris" is in its transcript
    assert [r["session"] for r in browser["failed_filter"]["rows"]] == [dropped["session"]]


def test_in_the_browser_a_session_page_shows_transcripts_tools_refusals_costs_and_the_timeline(browser: dict[str, Any]) -> None:
    page = browser["session"]
    assert page["url"] == "/ui/sessions/support-call"
    assert page["totals"]["turns"] == "4"
    assert "W3C baggage session-id" in page["grouping"]
    assert page["styled"] == "rgb(246, 248, 251)"  # the stylesheet loaded under the policy
    call, answer, spoken, refused = page["turns"]
    assert call["said"] == ["text What does get_weather say about Paris?"]
    assert call["answered"][0].startswith("tool call get_weather")
    assert '{"query":"What does get_weather say about Paris?"}' in call["answered"][0]
    assert answer["said"][0].startswith("tool output") and '{"forecast": "sunny, 21 C"}' in answer["said"][0]
    assert answer["answered"] == ['audio The function returned: {"forecast": "sunny, 21 C"}']
    assert "audio 0" not in answer["numbers"].split("Output tokens")[1]  # audio output tokens counted
    assert spoken["said"] == ["audio [audio transcript unavailable]"] and spoken["answered"] == ["audio I heard 600 ms of audio."]
    assert refused["status"] == "refused"
    assert refused["refusal"].startswith("Refused by wordlist: content_blocked")
    turn_costs = [float(t["cost"][1:]) for t in page["turns"]]
    assert turn_costs[0] > 0 and turn_costs[1] > 0 and turn_costs[2] > 0 and turn_costs[3] == 0
    assert abs(sum(turn_costs) - float(page["totals"]["cost"][1:])) < 0.00015  # rounding of each shown cost
    bars = page["bars"]
    assert len(bars) == 4
    answered = ["queue", "wait", "stream"]
    assert [[s["kind"] for s in bar["segments"]] for bar in bars] == [answered, answered, answered, ["refused"]]
    assert all(s["width"] > 0 for bar in bars for s in bar["segments"])
    starts = [bar["segments"][0]["x"] for bar in bars]
    assert starts == sorted(starts) and starts[0] < starts[-1]  # to one time scale, in order
    assert page["gaps"] == 3
    assert {s["fill"] for bar in bars for s in bar["segments"]} >= {"rgb(154, 167, 189)", "rgb(47, 158, 107)", "rgb(217, 83, 79)"}


def test_in_the_browser_recorded_turns_have_playable_audio_that_needs_the_login(browser: dict[str, Any]) -> None:
    page = browser["session"]
    turn_ids = [bar["turn"] for bar in page["bars"]]
    players = [(player["src"], player["readyState"], player["error"]) for player in page["audio"]]
    assert players == [
        (f"/ui/turns/{turn_ids[1]}/audio/output", 4, None),  # the spoken answer to the tool's output
        (f"/ui/turns/{turn_ids[2]}/audio/input", 4, None),  # what the client said
        (f"/ui/turns/{turn_ids[2]}/audio/output", 4, None),
    ]  # HAVE_ENOUGH_DATA: Chromium decoded the clips
    assert [round(player["duration"], 2) for player in page["audio"]] == [0.6, 0.6, 0.6]
    assert browser["audio_without_login"] == [401, 401, 401]


def test_in_the_browser_a_closed_session_shows_its_error_and_close_code(browser: dict[str, Any]) -> None:
    page = browser["dropped_session"]
    (turn,) = page["turns"]
    assert turn["status"] == "failed"
    assert turn["error"] == "Error: upstream_closed (close 4000 “server_error”)"
    assert "close code 4000" in page["grouping"] and "No baggage session-id" in page["grouping"]


def test_in_the_browser_the_live_view_refreshes_itself(browser: dict[str, Any]) -> None:
    live = browser["live"]
    (row,) = live["rows"]
    assert row["model"] == "gpt-realtime-mini" and row["transport"] == "websocket" and row["key"] == "team-a"
    assert row["turns"] == "1" and row["link"].startswith("/ui/sessions/sess_bf_")
    after = browser["live_after_close"]
    assert after["empty"] and after["rows"] == [] and after["refreshed"] > live["refreshed"]  # redrawn, not reloaded


def test_in_the_browser_the_keys_page_shows_spend_against_budgets(browser: dict[str, Any]) -> None:
    keys = browser["keys"]
    ((name, team, budget, sessions),) = keys["keys"]
    assert name.startswith("team-a vk_") and team == "voice"
    assert re.fullmatch(r"\$0\.\d{4} of \$5\.0000 per day \(\d+(\.\d)?%\) \(\d{4}-\d\d-\d\d, resets .* UTC\)\s*", budget), budget
    spent = float(budget.split(" ")[0][1:])
    assert spent > 0  # the session's turns were charged
    ((team_name, members, team_budget, team_sessions),) = keys["teams"]
    assert team_name == "voice" and members == "team-a" and "of $50.0000 per month" in team_budget
    assert "of 10 everywhere" in team_sessions


def test_in_the_browser_nothing_broke_the_pages_policy(browser: dict[str, Any]) -> None:
    problems = [entry for entry in browser["console"] if entry["level"] == "error" and "401" not in entry["text"]]
    assert problems == []  # no blocked script or style, no script error
    assert set(browser["screenshots"]) == {"sessions", "session", "session-closed", "live", "keys"}
    for shot in browser["screenshots"].values():
        assert Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
