"""The session UI in a real browser: openai-python clients hold sessions through the gateway (to the simulator),
then headless Chromium, driven over the DevTools protocol, logs in and reads each page as a person would. What it
saw prints as one JSON line on stdout; a full-page screenshot of each page is saved under `--artifacts`.

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python tests/browser_ui.py --artifacts /tmp/ui'

Run it in a network namespace whose only interface is loopback (as tests/browser_call.py is), so the pages are
shown to work with nothing but the gateway reachable: no CDN, no font or script from elsewhere.

The sessions: "support-call" (a baggage `session-id`, its key records audio) with a tool call, the tool's output
answered, a spoken question answered in speech, and a turn the word-list guardrail refuses; another whose provider closes the connection mid-answer (close 4000); and one held
open while the live view is watched, closed to see the view empty itself without a reload.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import math
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from openai import AsyncOpenAI

from bifrost_rt.config import parse_config
from bifrost_rt.runtime.app import create_app
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from browser_call import chromium, log_tail, serving
from conftest import VIRTUAL_KEY, gateway_config
from servers import ServerThread

ADMIN_KEY = "sk-bf-admin-ui-test-key"
UI_SECRET = "ui-cookie-signing-secret-0123456789"
GROUP = "support-call"
REFUSED_WORDS = ["wire transfer"]
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]
WINDOW = (1280, 900)
EXPECTED_TURNS = 5  # support-call: 4 turns; the closed session: 1
SPOKEN_MS = 600


class Failure(Exception):
    """The scenario did not happen as it should; the message says why."""


class Page:
    """One Chromium tab over the DevTools protocol: navigate, click, evaluate, screenshot."""

    def __init__(self, socket: Any, step_timeout_s: float) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._event_added = asyncio.Event()
        self._timeout = step_timeout_s
        self.console: list[dict[str, Any]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            data = orjson.loads(message)
            if "id" in data:
                future = self._replies.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                if data["method"] == "Log.entryAdded":
                    self.console.append(data["params"]["entry"])
                elif data["method"] == "Runtime.exceptionThrown":
                    self.console.append({"level": "error", "text": str(data["params"]["exceptionDetails"])})
                self._events.append(data)
                self._event_added.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[command_id] = future
        await self._socket.send(orjson.dumps({"id": command_id, "method": method, "params": params}).decode())
        reply = await asyncio.wait_for(future, self._timeout)
        if "error" in reply:
            raise Failure(f"{method}: {reply['error']}")
        return reply["result"]

    async def _loaded_after(self, action: Any) -> None:
        self._events.clear()
        await action
        deadline = time.monotonic() + self._timeout
        while not any(event["method"] == "Page.loadEventFired" for event in self._events):
            self._event_added.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure("the page did not finish loading in time")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event_added.wait(), remaining)

    async def start(self) -> None:
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    async def open(self, url: str) -> None:
        await self._loaded_after(self.send("Page.navigate", url=url))

    async def click(self, selector: str) -> None:
        """A click that navigates (a link or a submit button); returns once the next page has loaded."""
        await self._loaded_after(self.evaluate(f"document.querySelector({orjson.dumps(selector).decode()}).click()"))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise Failure(f"the page's script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> str:
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))
        return str(path)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._socket.close()


# What a person sees on each page, read from the rendered DOM (text as shown, not the HTML).
SEE_LOGIN = """({url: location.pathname, problem: document.querySelector('#login-problem')?.innerText ?? null,
  form: !!document.querySelector('#login-form'), sessions: !!document.querySelector('#sessions')})"""
SEE_SESSIONS = """({url: location.pathname, count: document.querySelector('#session-count')?.innerText,
  rows: [...document.querySelectorAll('#sessions tr.session-row')].map((tr) => ({
    session: tr.cells[0].innerText, key: tr.cells[1].innerText, model: tr.cells[2].innerText,
    transport: tr.cells[4].innerText, turns: tr.cells[6].innerText, tokens: tr.cells[7].innerText,
    cost: tr.cells[8].innerText, flags: tr.cells[9].innerText}))})"""
SEE_SESSION = """(async () => {
  const audio = [...document.querySelectorAll('audio.turn-audio')];
  await Promise.all(audio.map((a) => a.readyState >= 1 ? null : new Promise((resolve) => {
    a.addEventListener('loadedmetadata', resolve, {once: true}); a.addEventListener('error', resolve, {once: true});
    a.load(); })));
  const text = (sel, root = document) => [...root.querySelectorAll(sel)].map((e) => e.innerText.trim());
  return {
    url: location.pathname, title: document.querySelector('#session-title')?.innerText,
    totals: {turns: document.querySelector('#total-turns')?.innerText, tokens: document.querySelector('#total-tokens')?.innerText,
             cost: document.querySelector('#total-cost')?.innerText},
    grouping: document.querySelector('#grouping')?.innerText,
    turns: [...document.querySelectorAll('article.turn')].map((t) => ({
      status: t.querySelector('.badge.status').innerText, said: text('.said p, .said .tool-output', t),
      answered: text('.answered p, .answered .tool-call', t), refusal: t.querySelector('.refusal')?.innerText ?? null,
      error: t.querySelector('.turn-error')?.innerText ?? null, cost: t.querySelector('.turn-cost').innerText,
      numbers: t.querySelector('table.numbers').innerText})),
    bars: [...document.querySelectorAll('#timeline g.turn-bar')].map((g) => ({
      turn: g.dataset.turn,
      segments: [...g.querySelectorAll('rect')].map((r) => {
        const box = r.getBoundingClientRect();
        return {kind: r.classList[1], x: box.x, width: box.width, fill: getComputedStyle(r).fill};
      })})),
    gaps: document.querySelectorAll('#timeline g.gap').length,
    audio: audio.map((a) => ({src: new URL(a.src).pathname, readyState: a.readyState, duration: a.duration,
                              error: a.error ? a.error.code : null})),
    styled: getComputedStyle(document.body).backgroundColor,
  };
})()"""
SEE_LIVE = """({url: location.pathname, refreshed: Number(document.querySelector('#live').dataset.refreshed || 0),
  rows: [...document.querySelectorAll('#live tr.live-row')].map((tr) => ({
    session: tr.cells[0].innerText, link: tr.cells[0].querySelector('a').getAttribute('href'),
    transport: tr.cells[1].innerText, key: tr.cells[2].innerText, model: tr.cells[3].innerText,
    age: tr.cells[4].innerText, turns: tr.cells[5].innerText})),
  empty: !!document.querySelector('#live tr.empty-row'), status: document.querySelector('#live-status').innerText})"""
SEE_KEYS = """({url: location.pathname,
  keys: [...document.querySelectorAll('#keys tr.key-row')].map((tr) => [...tr.cells].map((c) => c.innerText)),
  teams: [...document.querySelectorAll('#teams tr.team-row')].map((tr) => [...tr.cells].map((c) => c.innerText)),
  meters: [...document.querySelectorAll('svg.meter rect.meter-fill')].map((r) => Number(r.getAttribute('width')))})"""


def tone_pcm16(ms: int, rate: int = 24000, hz: float = 440.0) -> bytes:
    return b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(rate * ms // 1000))


async def until_done(connection: Any) -> None:
    async for event in connection:
        if event.type == "response.done":
            return
        if event.type == "error" and event.error.code == "content_blocked":
            return
    raise Failure("the connection closed before response.done")


async def support_call(client: AsyncOpenAI) -> None:
    """A tool call, its output answered in speech, a spoken question, then a refused turn."""
    async with client.realtime.connect(model="gpt-realtime", extra_headers={"baggage": f"session-id={GROUP}"}) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"], "tools": TOOLS,
                                           "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What does get_weather say about Paris?"}]})
        await conn.response.create()
        call_id = None
        async for event in conn:
            if event.type == "response.function_call_arguments.done":
                call_id = event.call_id
            if event.type == "response.done":
                break
        if call_id is None:
            raise Failure("the simulator did not call the tool")
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call_id,
                                                  "output": '{"forecast": "sunny, 21 C"}'})
        await conn.response.create()
        await until_done(conn)
        spoken = tone_pcm16(SPOKEN_MS)
        for offset in range(0, len(spoken), 9600):
            await conn.input_audio_buffer.append(audio=base64.b64encode(spoken[offset:offset + 9600]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        await until_done(conn)
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Now make a wire transfer of all my money"}]})
        await conn.response.create()
        await until_done(conn)


async def dropped_call(client: AsyncOpenAI) -> None:
    """The provider closes with 4000 in the middle of the answer."""
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Tell me a long story [sim:fault=close:4000]"}]})
        await conn.response.create()
        with contextlib.suppress(Exception):  # the SDK ends the iteration or raises when the socket closes
            async for _ in conn:
                pass


async def wait_for_turns(gateway: ServerThread, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        while True:
            logged = (await api.get("/api/logs", params={"limit": 1})).json()["total_count"]
            if logged >= count:
                return
            if time.monotonic() > deadline:
                raise Failure(f"{logged} of {count} turns reached the turn log")
            await asyncio.sleep(0.1)


async def devtools_page(profile: Path, timeout_s: float) -> Page:
    """The first tab of the Chromium using `profile`, once its DevTools endpoint is up."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while not active.exists() or len(active.read_text().splitlines()) < 2:
        if time.monotonic() > deadline:
            raise Failure("Chromium did not open its DevTools port")
        await asyncio.sleep(0.05)
    port = int(active.read_text().splitlines()[0])
    async with httpx.AsyncClient() as http:
        while True:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            pages = [t for t in targets if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.05)
    socket = await websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
    page = Page(socket, timeout_s)
    await page.start()
    return page


async def look(page: Page, gateway: ServerThread, client: AsyncOpenAI, artifacts: Path, timeout_s: float) -> dict[str, Any]:
    ui = f"{gateway.url}/ui"
    seen: dict[str, Any] = {"screenshots": {}}

    async def shoot(name: str) -> None:
        seen["screenshots"][name] = await page.screenshot(artifacts / f"ui-{name}.png")

    await page.open(f"{ui}/sessions")
    seen["before_login"] = await page.evaluate(SEE_LOGIN)
    await page.evaluate(f"document.querySelector('#key').value = {orjson.dumps(VIRTUAL_KEY).decode()}")
    await page.click("#login-form button")
    seen["wrong_key"] = await page.evaluate(SEE_LOGIN)
    await page.evaluate(f"document.querySelector('#key').value = {orjson.dumps(ADMIN_KEY).decode()}")
    await page.click("#login-form button")
    seen["sessions"] = await page.evaluate(SEE_SESSIONS)
    await shoot("sessions")

    await page.open(f"{ui}/sessions?q=paris")
    seen["search"] = await page.evaluate(SEE_SESSIONS)
    await page.open(f"{ui}/sessions?status=failed")
    seen["failed_filter"] = await page.evaluate(SEE_SESSIONS)

    await page.open(f"{ui}/sessions")
    await page.click(f"#sessions a[href='/ui/sessions/{GROUP}']")
    seen["session"] = await page.evaluate(SEE_SESSION)
    await shoot("session")
    await page.open(f"{ui}/sessions?status=failed")
    await page.click("#sessions tr.session-row a")
    seen["dropped_session"] = await page.evaluate(SEE_SESSION)
    await shoot("session-closed")

    async with client.realtime.connect(model="gpt-realtime-mini") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "still here"}]})
        await conn.response.create()
        await until_done(conn)
        await page.open(f"{ui}/live")
        seen["live"] = await watch_live(page, lambda s: s["rows"] and s["rows"][0]["turns"] == "1", timeout_s)
        await shoot("live")
    seen["live_after_close"] = await watch_live(page, lambda s: s["empty"], timeout_s)

    await page.open(f"{ui}/keys")
    seen["keys"] = await page.evaluate(SEE_KEYS)
    await shoot("keys")

    seen["audio_without_login"] = await audio_status(gateway, seen["session"]["audio"])
    await page.click(".logout button")
    seen["after_logout"] = await page.evaluate(SEE_LOGIN)
    await page.open(f"{ui}/sessions/{GROUP}")
    seen["after_logout_session"] = await page.evaluate(SEE_LOGIN)
    seen["console"] = page.console
    return seen


async def audio_status(gateway: ServerThread, players: list[dict[str, Any]]) -> list[int]:
    """What the players' sources answer a client without the login cookie."""
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        return [(await anonymous.get(player["src"])).status_code for player in players]


async def watch_live(page: Page, done: Any, timeout_s: float) -> dict[str, Any]:
    """The live table as it refreshes itself (no reload) until `done(seen)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = await page.evaluate(SEE_LIVE)
        if seen["refreshed"] >= 1 and done(seen):
            return seen
        if time.monotonic() > deadline:
            raise Failure(f"the live view did not show what was expected: {seen}")
        await asyncio.sleep(0.2)


async def scenario(binary: str, timeout_s: float, artifacts: Path) -> dict[str, Any]:
    step_timeout_s = timeout_s / 4
    with tempfile.TemporaryDirectory(prefix="browser-ui-") as state:
        simulator = ServerThread(create_simulator_app(SimulatorOptions(pace=0, response_audio_ms=600)))
        config = parse_config(gateway_config(
            f"{simulator.url}/v1",  # the port is bound already; the server starts below
            turn_log={"store": "sqlite", "sqlite_path": f"{state}/turns.db", "spill_path": f"{state}/spill.jsonl"},
            admin_keys=[ADMIN_KEY],
            ui={"enabled": True, "secret": UI_SECRET},
            virtual_keys=[{"key": VIRTUAL_KEY, "name": "team-a", "team": "voice", "budget": {"usd": 5, "period": "day"},
                           "record_audio": True}],
            audio={"directory": f"{state}/audio"},
            teams={"voice": {"budget": {"usd": 50, "period": "month"}, "max_sessions": 10}},
            plugins=[{"use": "bifrost_rt.plugins.wordlist:WordListGuardrail", "options": {"words": REFUSED_WORDS}}],
        ))
        gateway = ServerThread(create_app(config))
        with serving(simulator, gateway):
            client = AsyncOpenAI(api_key=VIRTUAL_KEY, base_url=f"{gateway.url}/v1", websocket_base_url=f"{gateway.ws_url}/v1")
            await asyncio.wait_for(support_call(client), step_timeout_s)
            await asyncio.wait_for(dropped_call(client), step_timeout_s)
            await wait_for_turns(gateway, EXPECTED_TURNS, step_timeout_s)
            with chromium(binary, "about:blank", [f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
                                                   "--remote-debugging-port=0"]) as (process, log):
                try:
                    page = await devtools_page(log.parent, step_timeout_s)
                except Failure as exc:
                    raise Failure(f"{exc}; Chromium's log:\n{log_tail(log)}") from None
                try:
                    return await look(page, gateway, client, artifacts, step_timeout_s)
                finally:
                    await page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="the browser binary (default: on PATH)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole scenario")
    parser.add_argument("--artifacts", type=Path, required=True, help="where the screenshots go")
    args = parser.parse_args()
    if not args.chromium:
        print("browser_ui: chromium is not installed (not on PATH)", file=sys.stderr)
        return 2
    args.artifacts.mkdir(parents=True, exist_ok=True)
    try:
        report = asyncio.run(asyncio.wait_for(scenario(args.chromium, args.timeout, args.artifacts), args.timeout))
    except (Failure, asyncio.TimeoutError) as exc:
        print(f"browser_ui: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
