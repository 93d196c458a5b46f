"""The relay core and the session core without sockets: event strings in, actions and turn records out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bifrost_rt.config import parse_config
from bifrost_rt.core import ending as endings
from bifrost_rt.core.registry import SessionRegistry
from bifrost_rt.core.relay import FORWARD, Check, End, Relay, Reply, ToClient, ToUpstream
from bifrost_rt.core.session import RealtimeSession
from bifrost_rt.dialects import beta
from bifrost_rt.dialects.seam import Untranslatable
from bifrost_rt.errors import RealtimeError
from bifrost_rt.policy.auth import Authenticator
from bifrost_rt.policy.hooks import Decision, HookPipeline, Plugin
from bifrost_rt.policy.pricing import PriceTable
from bifrost_rt.providers import ModelResolver
from bifrost_rt.records import TRANSCRIPT_UNAVAILABLE, TurnRecord

KEY = "sk-bf-core"
MODEL = "gpt-realtime"


class Records:
    """Stands in for the turn writer: the session core hands it each finished record."""

    def __init__(self) -> None:
        self.records: list[TurnRecord] = []

    def submit(self, record: TurnRecord) -> None:
        self.records.append(record)


class Checking(Plugin):
    name = "checking"


async def _never(request: Any) -> None:  # pragma: no cover - the relay never awaits in these tests
    return None


Checking.pre_turn = _never  # type: ignore[method-assign]


def _config(**limits: Any) -> Any:
    return parse_config(
        {"providers": {"openai": {"base_url": "http://127.0.0.1:1/v1"}}, "virtual_keys": [{"key": KEY, "name": "core"}], "realtime": limits}
    )


def _relay(*, checks: bool = False, max_bytes: int = 1024 * 1024, client_dialect: Any = None, **limits: Any) -> tuple[Relay, Records]:
    config = _config(**limits)
    principal = Authenticator(config).authenticate(KEY)
    route = ModelResolver(config).resolve(MODEL)
    assert principal is not None and route is not None
    records = Records()
    hooks = HookPipeline([Checking()] if checks else [])
    session = RealtimeSession(
        principal=principal, route=route, transport="test", session_group=None, limits=config.realtime,
        prices=PriceTable(), writer=records, hooks=hooks,  # type: ignore[arg-type]
    )
    extra = {"client_dialect": client_dialect} if client_dialect is not None else {}
    return Relay(session, hooks, max_message_bytes=max_bytes, **extra), records


def ev(type_: str, **fields: Any) -> str:
    return json.dumps({"type": type_, "event_id": f"event_{type_}", **fields}, ensure_ascii=False)


def created(response_id: str, **response: Any) -> str:
    return ev("response.created", response={"id": response_id, "object": "realtime.response", "status": "in_progress", **response})


def done(response_id: str, status: str = "completed", usage: dict[str, Any] | None = None, **response: Any) -> str:
    body = {"id": response_id, "object": "realtime.response", "status": status, "output": [], **response}
    if usage is not None:
        body["usage"] = usage
    return ev("response.done", response=body)


def user_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


USAGE = {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20, "input_token_details": {"text_tokens": 10}, "output_token_details": {"text_tokens": 20}}


# ---- the hot path -------------------------------------------------------------------------------------------------


def test_plain_events_are_forwarded_as_the_same_string():
    relay, _ = _relay()
    append = ev("input_audio_buffer.append", audio="AAAA")
    delta = ev("response.output_audio.delta", response_id="resp_1", item_id="i", output_index=0, content_index=0, delta="AAAA")
    assert relay.from_client(append) is FORWARD
    assert relay.from_server(delta) is FORWARD
    assert relay.from_server(b"\x00binary") is FORWARD  # the provider's binary passes untouched
    assert relay.relayed() == {"frames_up": 1, "frames_down": 2, "bytes_up": len(append), "bytes_down": len(delta) + 7}


def test_a_binary_client_frame_gets_an_error_reply_and_the_session_goes_on():
    relay, _ = _relay()
    (reply,) = relay.from_client(b"\x01\x02")
    assert isinstance(reply, Reply) and json.loads(reply.message)["error"]["code"] == "invalid_event"
    assert not relay.ended


def test_an_oversize_client_frame_ends_with_message_too_big_and_1009():
    relay, _ = _relay(max_bytes=2048)
    (end,) = relay.from_client(ev("conversation.item.create", item=user_item("x", "é" * 1100)))  # 2,200 bytes, 1,100 chars
    assert isinstance(end, End)
    assert end.ending.client_error is not None and end.ending.client_error.code == "message_too_big"
    assert end.ending.client_close_frame == (1009, "invalid_request_error.message_too_big")
    assert relay.from_client(ev("conversation.item.create", item=user_item("y", "é" * 500))) is FORWARD


# ---- turns --------------------------------------------------------------------------------------------------------


def test_a_text_turn_is_recorded_with_its_input_output_usage_and_request_match():
    relay, records = _relay()
    relay.from_client(ev("conversation.item.create", item=user_item("item_u", "hello")))
    relay.from_server(ev("conversation.item.done", item=user_item("item_u", "hello")))
    relay.from_client(ev("response.create", event_id="client_ev_1"))
    relay.from_server(created("resp_1"))
    relay.from_server(ev("response.output_text.delta", response_id="resp_1", item_id="i", output_index=0, content_index=0, delta="Hi "))
    relay.from_server(ev("response.output_text.delta", response_id="resp_1", item_id="i", output_index=0, content_index=0, delta="there"))
    relay.from_server(done("resp_1", usage=USAGE))
    (record,) = records.records
    assert (record.status, record.response_id, record.transport) == ("completed", "resp_1", "test")
    assert [i["text"] for i in record.inputs] == ["hello"]
    assert record.output["text"] == "Hi there"
    assert record.usage is not None and record.usage["total_tokens"] == 30
    assert record.cost["total"] > 0
    assert record.metadata["client_event_ids"] == ["client_ev_1"]
    assert record.latency_ms["first_delta"] is not None


def test_parallel_and_out_of_band_responses_are_separate_turns_matched_by_metadata():
    relay, records = _relay()
    relay.from_server(ev("conversation.item.done", item=user_item("item_u", "in conversation")))
    relay.from_client(ev("response.create", event_id="ev_a", response={"conversation": "none", "metadata": {"k": "a"}, "input": [user_item("oob", "side question")]}))
    relay.from_client(ev("response.create", event_id="ev_b"))
    relay.from_server(created("resp_b"))
    relay.from_server(created("resp_a", conversation_id=None, metadata={"k": "a"}))
    relay.from_server(done("resp_a", metadata={"k": "a"}))
    relay.from_server(done("resp_b"))
    by_id = {r.response_id: r for r in records.records}
    assert by_id["resp_a"].metadata["client_event_ids"] == ["ev_a"]
    assert by_id["resp_a"].metadata["conversation"] == "none"
    assert [i["text"] for i in by_id["resp_a"].inputs] == ["side question"]
    assert by_id["resp_b"].metadata["client_event_ids"] == ["ev_b"]
    assert [i["text"] for i in by_id["resp_b"].inputs] == ["in conversation"]


def test_a_vad_started_turn_is_timed_from_the_commit_and_takes_the_audio_input():
    relay, records = _relay()
    relay.from_server(ev("input_audio_buffer.committed", item_id="item_audio", previous_item_id=None))
    relay.from_server(ev("conversation.item.done", item={"id": "item_audio", "type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": None}]}))
    relay.from_server(created("resp_vad"))
    relay.from_server(done("resp_vad"))
    (record,) = records.records
    assert record.inputs == [{"kind": "audio", "item_id": "item_audio", "call_id": None, "text": TRANSCRIPT_UNAVAILABLE}]
    assert record.metadata["client_event_ids"] == []


def test_transcription_usage_is_billed_once_with_the_turn_that_takes_the_audio():
    relay, records = _relay()
    relay.from_server(ev("session.updated", session={"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}))
    relay.from_server(ev("conversation.item.done", item={"id": "item_a", "type": "message", "role": "user", "content": [{"type": "input_audio"}]}))
    usage = {"type": "tokens", "total_tokens": 12, "input_tokens": 8, "output_tokens": 4, "input_token_details": {"audio_tokens": 8, "text_tokens": 0}}
    relay.from_server(ev("conversation.item.input_audio_transcription.completed", item_id="item_a", content_index=0, transcript="hi there", usage=usage))
    relay.from_server(created("resp_1"))
    relay.from_server(done("resp_1"))
    relay.from_server(created("resp_2"))
    relay.from_server(done("resp_2"))
    first, second = records.records
    assert [i["text"] for i in first.inputs] == ["hi there"]
    assert [t["total_tokens"] for t in first.transcription_usage] == [12]
    assert first.cost["transcription"] > 0
    assert second.transcription_usage == [] and second.cost["transcription"] == 0


# ---- checks and refusals ------------------------------------------------------------------------------------------


def test_a_checked_response_create_is_held_then_forwarded_when_allowed():
    relay, records = _relay(checks=True)
    create = ev("response.create", event_id="ev_1")
    (check,) = relay.from_client(create)
    assert isinstance(check, Check) and check.response_id is None
    assert relay.checked(check, Decision.allow()) == (ToUpstream(create),)
    assert records.records == []


def test_a_denied_response_create_is_withheld_refused_with_its_event_id_and_recorded():
    relay, records = _relay(checks=True)
    (check,) = relay.from_client(ev("response.create", event_id="ev_1"))
    (reply,) = relay.checked(check, Decision.deny("Not now.", code="quiet_hours"))
    error = json.loads(reply.message)["error"]
    assert isinstance(reply, Reply) and error["code"] == "quiet_hours" and error["event_id"] == "ev_1"
    (record,) = records.records
    assert (record.status, record.status_reason) == ("refused", "quiet_hours")
    assert not relay.ended


def test_a_disconnect_decision_ends_the_session_with_policy_close():
    relay, _ = _relay(checks=True)
    (check,) = relay.from_client(ev("response.create"))
    (end,) = relay.checked(check, Decision.disconnect("Bye.", code="abuse"))
    assert isinstance(end, End) and end.ending.client_close_frame == (1008, "invalid_request_error.abuse")


def test_a_provider_started_turn_that_is_denied_is_cancelled_upstream_and_the_client_told():
    relay, _ = _relay(checks=True)
    out = relay.from_server(created("resp_vad"))
    assert isinstance(out[0], ToClient)
    check = out[1]
    assert isinstance(check, Check) and check.response_id == "resp_vad" and check.request.server_started
    cancel, told = relay.checked(check, Decision.deny("No.", code="blocked"))
    assert isinstance(cancel, ToUpstream) and json.loads(cancel.message) == {"type": "response.cancel", "response_id": "resp_vad"}
    assert isinstance(told, ToClient) and json.loads(told.message)["error"]["code"] == "blocked"
    relay.from_server(done("resp_vad", status="cancelled"))
    assert relay.checked(check, Decision.deny("No.", code="blocked")) == ()  # the turn is over: nothing to cancel


def test_frames_sent_before_they_are_noted_are_recorded_the_same_and_what_follows_them_is_returned():
    """The WebSocket transport sends an untranslated provider frame first and notes it after (`forwarded`)."""
    relay, records = _relay(checks=True)
    assert relay.passes_server_frames
    relay.from_client(ev("conversation.item.create", item=user_item("item_u", "hello")))
    (check,) = relay.forwarded(created("resp_1"))  # a turn the provider started: its check follows the frame
    assert isinstance(check, Check) and check.response_id == "resp_1"
    assert relay.forwarded(ev("response.output_text.delta", response_id="resp_1", item_id="i", output_index=0, content_index=0, delta="Hi")) == ()
    assert relay.forwarded(done("resp_1", usage=USAGE)) == ()
    (record,) = records.records
    assert (record.status, record.output["text"], record.usage["total_tokens"]) == ("completed", "Hi", 30)
    error = ev("error", error={"type": "insufficient_quota", "code": "insufficient_quota", "message": "quota"})
    (end,) = relay.forwarded(error)
    assert isinstance(end, End) and end.ending.client_close_frame == (1008, "insufficient_quota.insufficient_quota")
    relay.end(end.ending)
    assert not relay.passes_server_frames  # an ended session passes nothing
    assert relay.relayed()["frames_down"] == 4
    translating, _ = _relay(client_dialect=beta.BETA_CLIENT)
    assert not translating.passes_server_frames  # a beta client's frames are renamed: never sent before the relay


def test_the_providers_quota_error_is_forwarded_then_the_session_ends():
    relay, _ = _relay()
    error = ev("error", error={"type": "insufficient_quota", "code": "insufficient_quota", "message": "quota"})
    forwarded, end = relay.from_server(error)
    assert forwarded == ToClient(error)
    assert isinstance(end, End) and end.ending.client_close_frame == (1008, "insufficient_quota.insufficient_quota")


# ---- endings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "status", "reason", "client_close", "upstream_close"),
    [
        (endings.upstream_closed(None), "failed", "upstream_connection_lost", (1011, "server_error.upstream_connection_lost"), None),
        (endings.upstream_closed(1000, "bye"), "interrupted", "upstream_closed:1000", (1000, "bye"), None),
        (endings.upstream_closed(1011, "boom"), "failed", "upstream_closed:1011", (1011, "boom"), None),
        (endings.upstream_closed(1005), "interrupted", "upstream_closed:1005", (1000, ""), None),
        (endings.upstream_closed(1006), "failed", "upstream_closed:1006", (1011, ""), None),
        (endings.client_disconnected(1000, "done"), "interrupted", "client_disconnected:1000", None, (1000, "done")),
        (endings.client_disconnected(1006), "interrupted", "client_disconnected:1006", None, (1000, "")),
        (endings.client_gone(), "interrupted", "client_gone", None, (1000, "")),
        (endings.internal_error(), "failed", "internal_error", (1011, "server_error.internal_error"), (1000, "")),
        (endings.queue_full("to the client"), "interrupted", "message_queue_full", (1008, "invalid_request_error.message_queue_full"), (1000, "")),
        (endings.hangup(), "interrupted", "hangup", None, (1000, "")),
    ],
)
def test_every_ending_says_how_turns_are_recorded_and_both_sides_are_closed(ending, status, reason, client_close, upstream_close):
    assert (ending.turn_status, ending.reason, ending.client_close_frame, ending.upstream_close) == (status, reason, client_close, upstream_close)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RealtimeError("invalid_request_error", "session_idle_timeout", "idle", close_code=1000), 1000),
        (RealtimeError("server_error", "server_shutting_down", "bye", close_code=1001), 1001),
        (RealtimeError("insufficient_quota", "insufficient_quota", "budget", close_code=1008), 1008),
    ],
)
def test_a_stop_records_open_turns_interrupted_once_and_the_first_ending_wins(error, code):
    relay, records = _relay()
    relay.from_server(created("resp_1"))
    relay.from_server(created("resp_2"))
    ending = relay.end(relay.stop(error, upstream_code=1001))
    assert ending.client_close_frame == (code, error.close_reason) and ending.upstream_close == (1001, "")
    assert relay.end(endings.client_gone()) is ending
    assert sorted((r.response_id, r.status, r.status_reason) for r in records.records) == [
        ("resp_1", "interrupted", error.code),
        ("resp_2", "interrupted", error.code),
    ]


# ---- the dialect seam ---------------------------------------------------------------------------------------------


class Shouting:
    """A toy client dialect: the client's `say` is GA conversation text; GA text deltas reach it upper-cased."""

    identity = False

    def inbound(self, message: str | bytes) -> list[str]:
        event = json.loads(message)
        if event["type"] == "whisper":
            raise Untranslatable(RealtimeError("invalid_request_error", "unsupported_event", "This dialect cannot whisper."))
        if event["type"] != "say":
            return [message if isinstance(message, str) else message.decode()]
        item = user_item(event["id"], event["text"])
        return [ev("conversation.item.create", item=item), ev("response.create", event_id=event["id"])]

    def outbound(self, event: str) -> list[str | bytes]:
        parsed = json.loads(event)
        if parsed["type"] == "response.output_text.delta":
            return [json.dumps({"type": "shout", "text": parsed["delta"].upper()})]
        return [event]


def test_a_translating_dialect_is_observed_in_ga_form():
    relay, records = _relay(client_dialect=Shouting())
    out = relay.from_client(json.dumps({"type": "say", "id": "say_1", "text": "hello"}))
    assert [json.loads(a.message)["type"] for a in out if isinstance(a, ToUpstream)] == ["conversation.item.create", "response.create"]
    (refused,) = relay.from_client(json.dumps({"type": "whisper"}))
    assert isinstance(refused, Reply) and json.loads(refused.message)["error"]["code"] == "unsupported_event"
    relay.from_server(ev("conversation.item.done", item=user_item("say_1", "hello")))
    relay.from_server(created("resp_1"))
    (shout,) = relay.from_server(ev("response.output_text.delta", response_id="resp_1", item_id="i", output_index=0, content_index=0, delta="hi"))
    assert isinstance(shout, ToClient) and json.loads(shout.message) == {"type": "shout", "text": "HI"}
    relay.from_server(done("resp_1"))
    (record,) = records.records
    assert [i["text"] for i in record.inputs] == ["hello"] and record.output["text"] == "hi"
    assert record.metadata["client_event_ids"] == ["say_1"]


def test_a_beta_client_keeps_the_fast_path_for_what_needs_no_translation():
    relay, records = _relay(client_dialect=beta.BETA_CLIENT)
    append = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"})  # as json.dumps writes it
    assert relay.from_client(append) is FORWARD
    (update,) = relay.from_client(json.dumps({"type": "session.update", "session": {"modalities": ["text"], "voice": "ash"}}))
    assert isinstance(update, ToUpstream)
    assert json.loads(update.message)["session"] == {"type": "realtime", "output_modalities": ["text"], "audio": {"output": {"voice": "ash"}}}
    relay.from_server(created("resp_1"))
    delta = ev("response.output_text.delta", response_id="resp_1", item_id="i", output_index=0, content_index=0, delta="hi")
    (renamed,) = relay.from_server(delta)
    assert isinstance(renamed, ToClient) and json.loads(renamed.message)["type"] == "response.text.delta"
    assert relay.from_server(ev("rate_limits.updated", rate_limits=[])) is FORWARD
    assert relay.from_server(ev("conversation.item.done", item=user_item("i", "x"))) == ()  # beta has no such event
    relay.from_server(done("resp_1", usage=USAGE))
    (record,) = records.records
    assert record.output["text"] == "hi" and record.usage["output_tokens"] == 20  # the core saw GA


# ---- caps ---------------------------------------------------------------------------------------------------------


def test_pending_inputs_are_capped_oldest_first():
    relay, records = _relay(max_pending_inputs=2)
    for n in range(3):
        relay.from_server(ev("conversation.item.done", item=user_item(f"item_{n}", f"text {n}")))
    relay.from_server(created("resp_1"))
    relay.from_server(done("resp_1"))
    assert [i["text"] for i in records.records[0].inputs] == ["text 1", "text 2"]


def test_pending_requests_are_capped_and_the_oldest_forgotten():
    relay, records = _relay(max_pending_creates=2)
    for n in range(3):
        relay.from_client(ev("response.create", event_id=f"ev_{n}"))
    relay.from_server(created("resp_1"))
    relay.from_server(done("resp_1"))
    assert records.records[0].metadata["client_event_ids"] == ["ev_1"]


def test_client_strings_in_records_are_bounded_with_a_flag():
    relay, records = _relay()
    relay.from_client(ev("response.create", event_id="e" * 10_000))
    metadata = {f"k{n}": "v" * 1000 for n in range(20)}
    relay.from_server(created("resp_1", metadata=metadata))
    relay.from_server(done("resp_1", metadata=metadata))
    (record,) = records.records
    assert len(record.metadata["client_event_ids"][0]) == 256
    assert len(record.metadata["response_metadata"]) == 16
    assert all(len(v) == 512 for v in record.metadata["response_metadata"].values())
    assert record.metadata["response_metadata_truncated"] is True
    assert len(record.to_json()) < 16_000


# ---- the supervisor -----------------------------------------------------------------------------------------------


class _Live:
    """A live session as the registry sees one, with no transport behind it."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.session = relay.session
        self.blocked = False
        self.ended: list[str] = []

    def activity(self) -> int:
        return self.relay.activity

    def relayed(self) -> dict[str, int]:
        return self.relay.relayed()

    def blocked_on_client(self) -> bool:
        return self.blocked

    def end(self, error: RealtimeError, *, upstream_code: int = 1000) -> None:
        self.ended.append(error.code or "")

    def watch(self, now: float) -> None:
        pass


@pytest.mark.parametrize(
    ("limits", "blocked", "after_s", "code"),
    [
        ({"idle_timeout_s": 5}, False, 6, "session_idle_timeout"),
        ({"max_session_s": 10}, False, 11, "session_expired"),
        ({"write_timeout_s": 2}, True, 3, "client_write_timeout"),
        ({"idle_timeout_s": 5, "write_timeout_s": 30}, False, 4, None),
    ],
)
async def test_the_supervisor_ends_idle_expired_and_stalled_sessions(limits, blocked, after_s, code):
    relay, _ = _relay(**limits)
    live = _Live(relay)
    registry = SessionRegistry(_config(**limits).realtime)
    registry.add(live)
    try:
        start = relay.session.started_at
        live.blocked = blocked
        registry.check(start + 1)
        registry.check(start + after_s)
        assert live.ended == ([code] if code else [])
    finally:
        await registry.close()
