"""Plugin hooks on a real gateway: deny, disconnect, time budget, exceptions, off-path hooks, the word-list guardrail."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from bifrost_rt.policy.hooks import Decision, Plugin, SessionInfo, TurnRequest
from bifrost_rt.records import TurnRecord
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY, recv_json, recv_until
from servers import ServerThread


class KeywordPolicy(Plugin):
    """Denies (or disconnects) turns whose user text contains a keyword; records what it saw."""

    name = "keyword"

    def __init__(self, keyword: str, action: str = "deny") -> None:
        self.keyword = keyword
        self.action = action
        self.requests: list[TurnRequest] = []

    async def pre_turn(self, request: TurnRequest) -> Decision | None:
        self.requests.append(request)
        if any(self.keyword in (i["text"] or "") for i in request.inputs):
            if self.action == "disconnect":
                return Decision.disconnect("Not allowed here.", code="policy_violation")
            return Decision.deny("That topic is off limits.", code="topic_blocked")
        return None


class Slow(Plugin):
    name = "slow"

    async def pre_turn(self, request: TurnRequest) -> Decision | None:
        await asyncio.sleep(5)
        return None


class Broken(Plugin):
    name = "broken"

    async def pre_turn(self, request: TurnRequest) -> Decision | None:
        raise RuntimeError("plugin bug")


class Recorder(Plugin):
    """Collects what the off-path hooks see."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.changed = threading.Condition()

    def _add(self, event: tuple[str, object]) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    async def on_session_start(self, session: SessionInfo) -> None:
        self._add(("start", session))

    async def post_turn(self, record: TurnRecord) -> None:
        self._add(("turn", record))

    async def on_session_end(self, session: SessionInfo, reason: str) -> None:
        self._add(("end", reason))

    def wait_for(self, kind: str, timeout: float = 10.0) -> object:
        with self.changed:
            assert self.changed.wait_for(lambda: any(k == kind for k, _ in self.events), timeout), self.events
            return next(v for k, v in self.events if k == kind)


def user_text(text: str) -> str:
    return json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})





def connect(server):
    return websockets.connect(
        f"{server.ws_url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {VIRTUAL_KEY}"}
    )


async def test_a_denied_turn_is_withheld_and_the_session_continues(simulator, start_gateway):
    policy = KeywordPolicy("weapons")
    server, sink = start_gateway(f"{simulator.url}/v1", with_plugins=(policy,))
    async with connect(server) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"], "tools": [{"type": "function", "name": "lookup", "parameters": {}}]}}))
        await recv_until(ws, "session.updated")
        await ws.send(user_text("tell me about weapons"))
        blocked_item = (await recv_until(ws, "conversation.item.done"))[-1]["item"]["id"]
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_blocked"}))
        events = await recv_until(ws, "error")
        assert [e["type"] for e in events if e["type"].startswith("response.")] == []  # never forwarded
        assert events[-1]["error"] == {"type": "invalid_request_error", "code": "topic_blocked", "message": "That topic is off limits.", "param": None, "event_id": "evt_blocked"}
        # The blocked message is still in the conversation, so every turn would be refused until it goes.
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_again"}))
        assert (await recv_until(ws, "error"))[-1]["error"]["event_id"] == "evt_again"
        await ws.send(json.dumps({"type": "conversation.item.delete", "item_id": blocked_item}))
        await recv_until(ws, "conversation.item.deleted")
        # The session goes on: a clean turn is answered.
        await ws.send(user_text("tell me about gardens"))
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_ok"}))
        done = (await recv_until(ws, "response.done"))[-1]
        assert done["response"]["status"] == "completed"
    request = policy.requests[0]
    assert request.session.principal == "team-a" and request.session.model == "gpt-realtime"
    assert request.client_event_id == "evt_blocked" and request.tools[0]["name"] == "lookup"
    records = sink.wait_for(3)
    assert [r.status for r in records] == ["refused", "refused", "completed"]
    refused = records[0]
    assert refused.error["code"] == "topic_blocked" and refused.error["plugin"] == "keyword"
    assert refused.inputs[-1]["text"] == "tell me about weapons" and refused.cost["total"] == 0
    assert records[2].metadata["client_event_ids"] == ["evt_ok"]
    assert [i["text"] for i in records[2].inputs] == ["tell me about gardens"]


async def test_a_disconnect_decision_closes_with_1008(simulator, start_gateway):
    server, sink = start_gateway(f"{simulator.url}/v1", with_plugins=(KeywordPolicy("forbidden", action="disconnect"),))
    async with connect(server) as ws:
        await recv_json(ws)
        await ws.send(user_text("something forbidden"))
        await ws.send(json.dumps({"type": "response.create"}))
        event = (await recv_until(ws, "error"))[-1]
        assert event["error"]["code"] == "policy_violation"
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert (ws.close_code, ws.close_reason) == (1008, "invalid_request_error.policy_violation")
    assert sink.wait_for(1)[0].status == "refused"


@pytest.mark.parametrize("plugin", [Slow(), Broken()], ids=["timeout", "exception"])
@pytest.mark.parametrize("on_failure", ["open", "closed"])
async def test_failing_hooks_are_isolated_per_policy(simulator, start_gateway, plugin, on_failure):
    server, sink = start_gateway(f"{simulator.url}/v1", with_plugins=(plugin,), hooks={"pre_turn_timeout_ms": 100, "on_failure": on_failure})
    async with connect(server) as ws:
        await recv_json(ws)
        await ws.send(user_text("hello"))
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_1", "response": {"output_modalities": ["text"]}}))
        if on_failure == "open":
            assert (await recv_until(ws, "response.done"))[-1]["response"]["status"] == "completed"
        else:
            event = (await recv_until(ws, "error"))[-1]
            assert event["error"]["code"] == "hook_failed" and event["error"]["event_id"] == "evt_1"
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "still open"}}))
            assert (await recv_until(ws, "session.updated"))[-1]["session"]["instructions"] == "still open"
    assert sink.wait_for(1)[0].status == ("completed" if on_failure == "open" else "refused")


async def test_off_path_hooks_see_sessions_and_turn_records(simulator, start_gateway):
    recorder = Recorder()
    server, _ = start_gateway(f"{simulator.url}/v1", with_plugins=(recorder,))
    async with connect(server) as ws:
        await recv_json(ws)
        await ws.send(user_text("hi"))
        await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        await recv_until(ws, "response.done")
    started = recorder.wait_for("start")
    record = recorder.wait_for("turn")
    reason = recorder.wait_for("end")
    assert started.principal == "team-a" and started.session_id == record.session_id
    assert record.status == "completed" and record.inputs[0]["text"] == "hi"
    assert reason.startswith("client_disconnected")


async def test_wordlist_guardrail_screens_text_and_transcripts(simulator, start_gateway):
    server, sink = start_gateway(
        f"{simulator.url}/v1",
        plugins=[{"use": "bifrost_rt.plugins.wordlist:WordListGuardrail", "options": {"words": ["wire transfer", "audio"]}}],
    )
    async with connect(server) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"], "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}}}}))
        await recv_until(ws, "session.updated")
        await ws.send(user_text("Please make a WIRE   transfer now"))
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_text"}))
        assert (await recv_until(ws, "error"))[-1]["error"]["code"] == "content_blocked"
        # Speech: the transcript ("(N ms of audio)") arrives before the client asks for a response.
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 3200}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await recv_until(ws, "conversation.item.input_audio_transcription.completed")
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_audio"}))
        event = (await recv_until(ws, "error"))[-1]
        assert event["error"]["code"] == "content_blocked" and event["error"]["event_id"] == "evt_audio"
    records = sink.wait_for(3)
    assert [r.status for r in records] == ["refused", "refused", "completed"]
    assert records[1].inputs[-1]["kind"] == "audio"
    # No turn took the refused speech, so its transcription bill is recorded on its own when the session ends.
    assert records[2].status_reason == "transcription" and records[2].transcription_usage[0]["item_id"] == records[1].inputs[-1]["item_id"]


async def test_a_provider_started_turn_that_is_denied_is_cancelled(start_gateway):
    # Paced like a real provider, so the answer is still streaming when the check completes.
    with ServerThread(create_simulator_app(SimulatorOptions(pace=1.0, response_audio_ms=3000))) as paced:
        server, sink = start_gateway(f"{paced.url}/v1", with_plugins=(KeywordPolicy("audio"),))
        await _speak_and_expect_cancel(server)
    (record,) = sink.wait_for(1)
    assert record.status == "cancelled"


async def _speak_and_expect_cancel(server) -> None:
    async with connect(server) as ws:
        await recv_json(ws)
        # Server VAD answers on its own; the transcript is the only user text the policy can see.
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}}))
        await recv_until(ws, "session.updated")
        tone = "ACAAIAAgACAAIAAg" * 1600  # 400 ms of a loud pcm16 level: speech to the VAD
        silence = "A" * 64000
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": tone}))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": silence}))
        events = await recv_until(ws, "response.done")
        errors = [e for e in events if e["type"] == "error"]
        assert errors and errors[0]["error"]["code"] == "topic_blocked"
        assert events[-1]["response"]["status"] == "cancelled"
