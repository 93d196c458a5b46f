"""The relay core with the Gemini dialect, without sockets: provider reconnects as `Reconnect` actions."""

from __future__ import annotations

import json
from typing import Any

from bifrost_rt import errors
from bifrost_rt.config import parse_config
from bifrost_rt.core.relay import Check, End, Reconnect, Relay, ToClient, ToUpstream
from bifrost_rt.core.session import RealtimeSession
from bifrost_rt.dialects import for_provider
from bifrost_rt.policy.auth import Authenticator
from bifrost_rt.policy.hooks import Decision, HookPipeline, Plugin
from bifrost_rt.policy.pricing import PriceTable
from bifrost_rt.providers import ModelResolver

from test_relay import KEY, Records


class Checking(Plugin):
    """A plugin with a pre-turn check, so the relay holds each `response.create` for a decision."""

    name = "checking"

    async def pre_turn(self, request: Any) -> None:  # pragma: no cover - the relay never awaits in these tests
        return None


def gemini_relay(checks: bool = False) -> tuple[Relay, Records]:
    config = parse_config({
        "providers": {"gemini": {"kind": "gemini", "api_key": "g"}},
        "models": {"gemini-live": {"provider": "gemini", "model": "gemini-live-2.5-flash-preview"}},
        "virtual_keys": [{"key": KEY, "name": "core"}],
    })  # fmt: skip
    principal = Authenticator(config).authenticate(KEY)
    route = ModelResolver(config).resolve("gemini-live")
    assert principal is not None and route is not None and route.dialect == "gemini"
    records = Records()
    hooks = HookPipeline([Checking()] if checks else [])
    session = RealtimeSession(
        principal=principal, route=route, transport="test", session_group=None, limits=config.realtime,
        prices=PriceTable(), writer=records, hooks=hooks,  # type: ignore[arg-type]
    )
    return Relay(session, hooks, max_message_bytes=1 << 20, upstream_dialect=for_provider(route)), records


def client(type_: str, **fields: Any) -> str:
    return json.dumps({"type": type_, **fields})


def gemini(**message: Any) -> bytes:
    return json.dumps(message).encode()  # Gemini sends binary frames


USAGE = {"promptTokenCount": 10, "responseTokenCount": 4, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}]}


def upstream(actions: tuple[Any, ...], relay: Relay | None = None) -> list[dict[str, Any]]:
    """What goes to Gemini, in order; a held `response.create` is allowed through `relay`."""
    sent: list[Any] = []
    for action in actions:
        if isinstance(action, ToUpstream):
            sent.append(action.message)
        elif isinstance(action, Check) and relay is not None:
            sent += [a.message for a in relay.checked(action, Decision.allow()) if isinstance(a, ToUpstream)]
    return [json.loads(m) for m in sent]


def to_client(actions: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [json.loads(a.message) for a in actions if isinstance(a, ToClient)]


def open_session(relay: Relay) -> None:
    sent = upstream(relay.from_client(client("session.update", session={"type": "realtime", "output_modalities": ["text"]})))
    assert "setup" in sent[0] and sent[0]["setup"]["sessionResumption"] == {}
    assert [e["type"] for e in to_client(relay.from_server(gemini(setupComplete={})))] == ["session.created", "session.updated"]


def text_turn(relay: Relay, words: str, *, handle: str | None = "h1", go_away: bool = False) -> list[Any]:
    relay.from_client(client("conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": words}]}))
    relay.from_client(client("response.create"))
    actions = list(relay.from_server(gemini(serverContent={"modelTurn": {"parts": [{"text": "ok"}]}})))
    if go_away:  # mid-turn: the switch waits for the turn's end
        during = relay.from_server(gemini(goAway={"timeLeft": "10s"}))
        assert not any(isinstance(a, Reconnect) for a in during)
    actions += relay.from_server(gemini(serverContent={"turnComplete": True}, usageMetadata=USAGE))
    if handle:
        actions += relay.from_server(gemini(sessionResumptionUpdate={"newHandle": handle, "resumable": True}))
    return actions


def test_go_away_between_turns_reconnects_with_the_latest_handle_and_the_client_sees_nothing() -> None:
    relay, records = gemini_relay()
    open_session(relay)
    text_turn(relay, "one", handle="h-old")
    text_turn(relay, "two", handle="h-new")
    (reconnect,) = [a for a in relay.from_server(gemini(goAway={"timeLeft": "10s"})) if isinstance(a, Reconnect)]
    setup = json.loads(reconnect.opening[0])["setup"]
    assert setup["sessionResumption"] == {"handle": "h-new"}
    assert to_client(relay.reconnected(gemini(setupComplete={}))) == []  # no second session.created
    done = to_client(tuple(text_turn(relay, "three")))
    assert done[-1]["type"] == "response.done" and done[-1]["response"]["status"] == "completed"
    assert [r.metadata.get("upstream_connection") for r in records.records] == [None, None, 2]


def test_go_away_mid_turn_waits_for_the_turn_to_end() -> None:
    relay, _ = gemini_relay()
    open_session(relay)
    actions = text_turn(relay, "one", go_away=True)
    kinds = [type(a).__name__ for a in actions]
    # The response is done first, the reconnect comes after it (with the handle that arrived with the turn's end).
    assert kinds.index("Reconnect") > max(i for i, a in enumerate(actions) if isinstance(a, ToClient) and "response.done" in a.message)


def test_go_away_without_a_handle_ends_the_session_with_an_openai_error() -> None:
    relay, records = gemini_relay()
    open_session(relay)
    text_turn(relay, "one", handle=None)
    (end,) = [a for a in relay.from_server(gemini(goAway={"timeLeft": "1s"})) if isinstance(a, End)]
    error = end.ending.client_error
    assert error is not None and error.code == "upstream_session_not_resumable" and error.close_code == errors.CLOSE_INTERNAL
    assert [r.status for r in records.records] == ["completed"]


def test_a_config_change_after_a_turn_goes_to_the_next_connection() -> None:
    relay, _ = gemini_relay()
    open_session(relay)
    text_turn(relay, "one")
    actions = relay.from_client(client("session.update", session={"type": "realtime", "instructions": "Speak French."}))
    assert upstream(actions) == [] and to_client(actions) == []
    (reconnect,) = [a for a in actions if isinstance(a, Reconnect)]
    setup = json.loads(reconnect.opening[0])["setup"]
    assert setup["systemInstruction"] == {"parts": [{"text": "Speak French."}]} and setup["sessionResumption"] == {"handle": "h1"}
    updated = to_client(relay.reconnected(gemini(setupComplete={})))
    assert [e["type"] for e in updated] == ["session.updated"] and updated[0]["session"]["instructions"] == "Speak French."


def test_a_failed_reconnect_ends_the_session_with_an_error_and_a_close_code() -> None:
    relay, _ = gemini_relay()
    open_session(relay)
    text_turn(relay, "one")
    assert any(isinstance(a, Reconnect) for a in relay.from_server(gemini(goAway={"timeLeft": "1s"})))
    ending = relay.reconnect_failed("the new connection was not set up")
    assert ending.client_error is not None and ending.client_error.code == "upstream_session_not_resumable"
    assert ending.client_close_frame is not None and ending.client_close_frame[0] == errors.CLOSE_INTERNAL


def test_a_cancelled_answer_that_gemini_interrupts_ends_client_cancelled_without_speech() -> None:
    relay, records = gemini_relay()
    open_session(relay)
    relay.from_client(client("conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "long"}]}))
    relay.from_client(client("response.create"))
    relay.from_server(gemini(serverContent={"modelTurn": {"parts": [{"text": "once upon"}]}}))
    assert upstream(relay.from_client(client("response.cancel"))) == []  # Gemini cannot stop; the gateway stops relaying
    assert to_client(relay.from_server(gemini(serverContent={"modelTurn": {"parts": [{"text": " a time"}]}}))) == []
    ended = to_client(relay.from_server(gemini(serverContent={"interrupted": True}, usageMetadata=USAGE)))
    assert [e["type"] for e in ended][-1] == "response.done" and "input_audio_buffer.speech_started" not in [e["type"] for e in ended]
    assert ended[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert records.records[0].status == "cancelled" and records.records[0].usage["input_tokens"] == 10


async def test_the_gemini_provider_url_and_credentials() -> None:
    def route(provider: dict[str, Any]) -> Any:
        config = parse_config({"providers": {"g": provider}, "virtual_keys": [{"key": KEY, "name": "core"}]})
        resolved = ModelResolver(config).resolve("gemini-live-2.5-flash-preview")
        assert resolved is not None and resolved.dialect == "gemini"
        return resolved

    google = route({"kind": "gemini", "api_key": "g-secret"})
    url = google.upstream_url({"model": "x", "key": "leak", "intent": "y"})
    assert url == "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    headers = await google.upstream_headers({"openai-organization": "org", "authorization": "Bearer sk-bf"}, ["realtime"])
    assert headers == {"x-goog-api-key": "g-secret"}  # nothing of the client's, and no bearer

    vertex = route({"kind": "gemini", "base_url": "https://us-central1-aiplatform.googleapis.com", "api_key": "ya29.token",
                    "gemini": {"api": "vertex", "api_version": "v1"}})
    assert vertex.upstream_url({}) == (
        "wss://us-central1-aiplatform.googleapis.com/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"
    )
    assert await vertex.upstream_headers({}, []) == {"Authorization": "Bearer ya29.token"}


def test_a_refused_turn_leaves_its_text_for_the_next_allowed_one() -> None:
    relay, records = gemini_relay(checks=True)
    open_session(relay)
    assert upstream(relay.from_client(client("conversation.item.create", item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "still here"}]}))) == []
    (held,) = [a for a in relay.from_client(client("response.create", event_id="first")) if isinstance(a, Check)]
    denied = relay.checked(held, Decision("deny", code="budget_exceeded", message="No budget."))
    assert not [a for a in denied if isinstance(a, ToUpstream)]  # nothing reached Gemini for the refused turn
    (retry,) = [a for a in relay.from_client(client("response.create")) if isinstance(a, Check)]
    sent = [json.loads(a.message) for a in relay.checked(retry, Decision.allow()) if isinstance(a, ToUpstream)]
    assert sent == [{"clientContent": {"turns": [{"role": "user", "parts": [{"text": "still here"}]}], "turnComplete": True}}]
    assert records.records[0].status == "refused"


def test_every_message_sent_to_gemini_validates_against_google_genai_types() -> None:
    from google.genai import types

    relay, _ = gemini_relay()
    tools = [{"type": "function", "name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {}}}]
    sent = upstream(relay.from_client(client("session.update", session={
        "type": "realtime", "instructions": "hi", "tools": tools, "max_output_tokens": 100,
        "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}, "output": {"voice": "Kore"}},
    })))  # fmt: skip
    relay.from_server(gemini(setupComplete={}))
    for event in (
        client("input_audio_buffer.append", audio="AAAAAAAA"),
        client("input_audio_buffer.commit"),
        client("conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}),
        client("response.create"),
    ):
        sent += upstream(relay.from_client(event), relay)
    relay.from_server(gemini(toolCall={"functionCalls": [{"id": "c1", "name": "get_weather", "args": {}}]}))
    sent += upstream(relay.from_client(client("conversation.item.create", item={"type": "function_call_output", "call_id": "c1", "output": "{}"})))
    sent += upstream(relay.from_client(client("response.create")), relay)
    # activityStart, the audio; at response.create the text (turn not complete) and activityEnd; the tool response
    # alone (Gemini goes on by itself).
    assert [next(iter(m)) for m in sent] == ["setup", "realtimeInput", "realtimeInput", "clientContent", "realtimeInput", "toolResponse"]
    assert sent[3]["clientContent"]["turnComplete"] is False and sent[4] == {"realtimeInput": {"activityEnd": {}}}
    for message in sent:
        setup = message.get("setup", {})
        # google-genai sends realtimeInputConfig in setup without modelling it there; it is checked on its own.
        types.RealtimeInputConfig.model_validate(setup.pop("realtimeInputConfig", {}))
        types.LiveClientMessage.model_validate(message)
    assert sent[0]["setup"]["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"] == "Kore"
