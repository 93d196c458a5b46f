"""Usage extraction and pricing in the native module, checked against hand-computed numbers."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
import pytest

from bifrost_rt import _native

# The real GA response.done from the protocol reference (§4.1).
GA_RESPONSE_DONE = (
    '{"type":"response.done","event_id":"event_CsZyNdzXT4hWhvq6Pv8ad","response":{"object":"realtime.response",'
    '"id":"resp_CsZyL5IuqSgPEut0cI82K","status":"completed","status_details":null,'
    '"output":[{"id":"item_CsZyLdZ3sHZ2DniSNrTKs","type":"message","status":"completed","role":"assistant",'
    '"content":[{"type":"output_audio","transcript":"Claro, …"}]}],'
    '"conversation_id":"conv_CsZyGLqmGCDohCYjjDPqf","output_modalities":["audio"],"max_output_tokens":"inf",'
    '"audio":{"output":{"format":{"type":"audio/pcm","rate":24000},"voice":"alloy"}},'
    '"usage":{"total_tokens":320,"input_tokens":132,"output_tokens":188,'
    '"input_token_details":{"text_tokens":59,"audio_tokens":73,"image_tokens":0,"cached_tokens":64,'
    '"cached_tokens_details":{"text_tokens":0,"audio_tokens":64,"image_tokens":0}},'
    '"output_token_details":{"text_tokens":41,"audio_tokens":147}},'
    '"metadata":null}}'
)

PRICE_FIELDS = {
    "input_text",
    "cached_text",
    "input_audio",
    "cached_audio",
    "input_image",
    "cached_image",
    "output_text",
    "output_audio",
    "per_minute",
}


def shipped_prices() -> dict[str, dict[str, float]]:
    return orjson.loads(resources.files("bifrost_rt").joinpath("data/prices.json").read_bytes())


def prices_for(model: str) -> _native.Prices:
    return _native.Prices(**shipped_prices()[model])


def response_done(usage: Any) -> str:
    return orjson.dumps({"type": "response.done", "event_id": "e", "response": {"id": "r", "status": "completed", "usage": usage}}).decode()


def transcription_completed(usage: Any) -> str:
    return orjson.dumps(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "e",
            "item_id": "item_1",
            "content_index": 0,
            "transcript": "Hello.",
            "usage": usage,
        }
    ).decode()


def test_ga_response_done_usage() -> None:
    usage = _native.extract_usage(GA_RESPONSE_DONE)
    assert usage is not None
    assert usage.to_dict() == {
        "input_tokens": 132,
        "output_tokens": 188,
        "total_tokens": 320,
        "input_text_tokens": 59,
        "input_audio_tokens": 73,
        "input_image_tokens": 0,
        "cached_tokens": 64,
        "cached_text_tokens": 0,
        "cached_audio_tokens": 64,
        "cached_image_tokens": 0,
        "output_text_tokens": 41,
        "output_audio_tokens": 147,
    }
    assert _native.extract_usage(GA_RESPONSE_DONE.encode()) == usage


def test_ga_response_done_cost_with_shipped_gpt_realtime_prices() -> None:
    cost = _native.cost(_native.extract_usage(GA_RESPONSE_DONE), prices_for("gpt-realtime"))
    # Text 4.00 / cached 0.40 / output 16.00; audio 32.00 / cached 0.40 / output 64.00 (USD per 1M).
    assert cost.input_text == pytest.approx(59 * 4.00 / 1e6)  # 0.000236
    assert cost.cached_text == 0.0
    assert cost.input_audio == pytest.approx((73 - 64) * 32.00 / 1e6)  # 0.000288
    assert cost.cached_audio == pytest.approx(64 * 0.40 / 1e6)  # 0.0000256, not 64 × 32.00
    assert cost.input_image == 0.0 and cost.cached_image == 0.0
    assert cost.output_text == pytest.approx(41 * 16.00 / 1e6)  # 0.000656
    assert cost.output_audio == pytest.approx(147 * 64.00 / 1e6)  # 0.009408
    # 0.000236 + 0.000288 + 0.0000256 + 0.000656 + 0.009408
    assert cost.total == pytest.approx(0.0106136)
    assert cost.to_dict() == pytest.approx(
        {
            "input_text": 0.000236,
            "cached_text": 0.0,
            "input_audio": 0.000288,
            "cached_audio": 0.0000256,
            "input_image": 0.0,
            "cached_image": 0.0,
            "output_text": 0.000656,
            "output_audio": 0.009408,
            "total": 0.0106136,
        }
    )


def test_ga_response_done_cost_with_shipped_gpt_realtime_mini_prices() -> None:
    cost = _native.cost(_native.extract_usage(GA_RESPONSE_DONE), prices_for("gpt-realtime-mini"))
    # 59 × 0.60 + 9 × 10.00 + 64 × 0.30 + 41 × 2.40 + 147 × 20.00 = 35.4 + 90 + 19.2 + 98.4 + 2940 = 3183 per 1M
    assert cost.total == pytest.approx(0.003183)
    assert cost.cached_audio == pytest.approx(0.0000192)


def test_image_tokens_and_clamped_cached_counts() -> None:
    usage = _native.Usage(input_image_tokens=100, cached_image_tokens=40, input_text_tokens=10, cached_text_tokens=25)
    cost = _native.cost(usage, prices_for("gpt-realtime"))
    assert cost.input_image == pytest.approx(60 * 5.00 / 1e6)  # 0.0003
    assert cost.cached_image == pytest.approx(40 * 0.50 / 1e6)  # 0.00002
    # Cached text is clamped to the 10 text tokens: nothing left at the full rate.
    assert cost.input_text == 0.0
    assert cost.cached_text == pytest.approx(10 * 0.40 / 1e6)  # 0.000004
    assert cost.total == pytest.approx(0.0003 + 0.00002 + 0.000004)


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 10, "output_tokens": 5},
        {"input_tokens": 10, "output_tokens": 5, "total_tokens": 0},
        {"input_tokens": 10, "output_tokens": 5, "total_tokens": None},
    ],
)
def test_total_falls_back_to_input_plus_output(usage: dict[str, Any]) -> None:
    extracted = _native.extract_usage(response_done(usage))
    assert (extracted.input_tokens, extracted.output_tokens, extracted.total_tokens) == (10, 5, 15)


def test_cached_tokens_without_breakdown_count_as_text() -> None:
    usage = _native.extract_usage(response_done({"input_tokens": 50, "input_token_details": {"text_tokens": 50, "cached_tokens": 20}}))
    assert (usage.cached_tokens, usage.cached_text_tokens, usage.cached_audio_tokens) == (20, 20, 0)
    cost = _native.cost(usage, prices_for("gpt-realtime"))
    assert cost.input_text == pytest.approx(30 * 4.00 / 1e6)  # 0.00012
    assert cost.cached_text == pytest.approx(20 * 0.40 / 1e6)  # 0.000008


@pytest.mark.parametrize(
    "frame",
    [
        response_done(None),
        orjson.dumps({"type": "response.done", "response": {"id": "r"}}).decode(),
        orjson.dumps({"type": "response.done"}).decode(),
        response_done([1, 2]),
        orjson.dumps({"type": "response.created", "response": {"usage": {"input_tokens": 1}}}).decode(),
        GA_RESPONSE_DONE[:-1],
        "",
        b"\xff",
    ],
)
def test_missing_or_unusable_usage_is_none(frame: str | bytes) -> None:
    assert _native.extract_usage(frame) is None


def test_usage_constructor() -> None:
    usage = _native.Usage(input_tokens=7, output_tokens=5, cached_audio_tokens=2)
    assert usage.total_tokens == 12
    assert usage.cached_audio_tokens == 2 and usage.input_text_tokens == 0
    assert usage == _native.Usage(**usage.to_dict())
    assert usage != _native.Usage(input_tokens=7, output_tokens=5)
    assert _native.Usage(total_tokens=99, input_tokens=1).total_tokens == 99
    assert repr(_native.Usage()).startswith("Usage(input_tokens=0, output_tokens=0, total_tokens=0,")
    with pytest.raises(TypeError):
        _native.Usage(bogus_tokens=1)
    with pytest.raises(TypeError):
        _native.Usage(1)


def test_transcription_usage_by_tokens() -> None:
    frame = transcription_completed(
        {"type": "tokens", "input_tokens": 14, "output_tokens": 3, "total_tokens": 17, "input_token_details": {"text_tokens": 0, "audio_tokens": 14}}
    )
    usage = _native.extract_transcription_usage(frame)
    assert usage.to_dict() == {
        "kind": "tokens",
        "input_tokens": 14,
        "output_tokens": 3,
        "total_tokens": 17,
        "input_text_tokens": 0,
        "input_audio_tokens": 14,
        "seconds": 0.0,
    }
    # gpt-4o-transcribe: 14 audio × 6.00 + 3 output × 10.00 = 84 + 30 = 114 per 1M
    assert _native.transcription_cost(usage, prices_for("gpt-4o-transcribe")) == pytest.approx(0.000114)

    mixed = _native.extract_transcription_usage(
        transcription_completed({"type": "tokens", "input_tokens": 120, "output_tokens": 30, "input_token_details": {"text_tokens": 20, "audio_tokens": 100}})
    )
    assert mixed.total_tokens == 150
    # gpt-4o-mini-transcribe: 20 × 1.25 + 100 × 3.00 + 30 × 5.00 = 25 + 300 + 150 = 475 per 1M
    assert _native.transcription_cost(mixed, prices_for("gpt-4o-mini-transcribe")) == pytest.approx(0.000475)


def test_transcription_tokens_without_details_count_as_audio() -> None:
    usage = _native.extract_transcription_usage(transcription_completed({"type": "tokens", "input_tokens": 100, "output_tokens": 10}))
    assert (usage.input_text_tokens, usage.input_audio_tokens, usage.total_tokens) == (0, 0, 110)
    # 100 audio × 6.00 + 10 × 10.00 = 700 per 1M
    assert _native.transcription_cost(usage, prices_for("gpt-4o-transcribe")) == pytest.approx(0.0007)


def test_transcription_usage_by_duration() -> None:
    usage = _native.extract_transcription_usage(transcription_completed({"type": "duration", "seconds": 42.5}))
    assert (usage.kind, usage.seconds) == ("duration", 42.5)
    # whisper-1: 42.5 s = 0.7083 min × 0.006
    assert _native.transcription_cost(usage, prices_for("whisper-1")) == pytest.approx(42.5 / 60 * 0.006)
    assert _native.transcription_cost(usage, prices_for("whisper-1")) == pytest.approx(0.00425)


def test_transcription_usage_edge_cases() -> None:
    assert _native.extract_transcription_usage(transcription_completed(None)) is None
    assert _native.extract_transcription_usage(transcription_completed({})) is None
    assert _native.extract_transcription_usage(GA_RESPONSE_DONE) is None
    untyped = _native.extract_transcription_usage(transcription_completed({"seconds": 3}))
    assert (untyped.kind, untyped.seconds) == ("duration", 3.0)
    built = _native.TranscriptionUsage(kind="duration", seconds=120.0)
    assert _native.transcription_cost(built, _native.Prices(per_minute=0.006)) == pytest.approx(0.012)
    with pytest.raises(ValueError):
        _native.TranscriptionUsage(kind="minutes")


def test_prices_defaults_and_attributes() -> None:
    prices = _native.Prices(input_text=1.5)
    assert (prices.input_text, prices.output_audio, prices.per_minute) == (1.5, 0.0, 0.0)
    assert _native.cost(_native.Usage(input_text_tokens=1_000_000), prices).total == pytest.approx(1.5)
    with pytest.raises(TypeError):
        _native.Prices(1.0)


def test_shipped_price_table() -> None:
    table = shipped_prices()
    assert {
        "gpt-realtime",
        "gpt-realtime-2025-08-28",
        "gpt-realtime-mini",
        "gpt-4o-realtime-preview",
        "gpt-4o-mini-realtime-preview",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "whisper-1",
    } <= set(table)
    for model, prices in table.items():
        assert set(prices) == PRICE_FIELDS, model
        assert all(isinstance(value, float) and value >= 0 for value in prices.values()), model
        _native.Prices(**prices)
    assert table["gpt-realtime-2025-08-28"] == table["gpt-realtime"]
    assert table["gpt-4o-realtime-preview"]["output_audio"] == 80.0
    assert table["whisper-1"]["per_minute"] == 0.006
