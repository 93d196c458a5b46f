//! Token usage reported by the upstream, and its price.
//!
//! Only the small `usage` object is read; the scanner has already located it in the frame.
//! Prices are USD per 1M tokens (per minute of audio for duration-billed transcription).

use crate::frame::{read_object, EventKind, FrameInfo, MemberValue};

/// Usage of one response (`response.done` → `response.usage`). Counts are 0 when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub input_text_tokens: i64,
    pub input_audio_tokens: i64,
    pub input_image_tokens: i64,
    pub cached_tokens: i64,
    pub cached_text_tokens: i64,
    pub cached_audio_tokens: i64,
    pub cached_image_tokens: i64,
    pub output_text_tokens: i64,
    pub output_audio_tokens: i64,
}

impl Usage {
    /// Fills `total_tokens` from input + output when it is 0.
    pub fn with_total_fallback(mut self) -> Usage {
        if self.total_tokens == 0 {
            self.total_tokens = self.input_tokens.saturating_add(self.output_tokens);
        }
        self
    }

    pub fn named_counts(&self) -> [(&'static str, i64); 12] {
        [
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("total_tokens", self.total_tokens),
            ("input_text_tokens", self.input_text_tokens),
            ("input_audio_tokens", self.input_audio_tokens),
            ("input_image_tokens", self.input_image_tokens),
            ("cached_tokens", self.cached_tokens),
            ("cached_text_tokens", self.cached_text_tokens),
            ("cached_audio_tokens", self.cached_audio_tokens),
            ("cached_image_tokens", self.cached_image_tokens),
            ("output_text_tokens", self.output_text_tokens),
            ("output_audio_tokens", self.output_audio_tokens),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranscriptionBilling {
    Tokens,
    Duration,
}

impl TranscriptionBilling {
    pub fn as_str(self) -> &'static str {
        match self {
            TranscriptionBilling::Tokens => "tokens",
            TranscriptionBilling::Duration => "duration",
        }
    }

    pub fn from_name(name: &str) -> Option<TranscriptionBilling> {
        match name {
            "tokens" => Some(TranscriptionBilling::Tokens),
            "duration" => Some(TranscriptionBilling::Duration),
            _ => None,
        }
    }
}

/// Usage of one input-audio transcription, billed either by tokens or by audio duration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TranscriptionUsage {
    pub billing: TranscriptionBilling,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub input_text_tokens: i64,
    pub input_audio_tokens: i64,
    pub seconds: f64,
}

/// USD per 1M tokens; `per_minute` is USD per minute of duration-billed transcription.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prices {
    pub input_text: f64,
    pub cached_text: f64,
    pub input_audio: f64,
    pub cached_audio: f64,
    pub input_image: f64,
    pub cached_image: f64,
    pub output_text: f64,
    pub output_audio: f64,
    pub per_minute: f64,
}

/// USD per usage category.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub input_text: f64,
    pub cached_text: f64,
    pub input_audio: f64,
    pub cached_audio: f64,
    pub input_image: f64,
    pub cached_image: f64,
    pub output_text: f64,
    pub output_audio: f64,
    pub total: f64,
}

impl Cost {
    pub fn named_amounts(&self) -> [(&'static str, f64); 9] {
        [
            ("input_text", self.input_text),
            ("cached_text", self.cached_text),
            ("input_audio", self.input_audio),
            ("cached_audio", self.cached_audio),
            ("input_image", self.input_image),
            ("cached_image", self.cached_image),
            ("output_text", self.output_text),
            ("output_audio", self.output_audio),
            ("total", self.total),
        ]
    }
}

const PER_MILLION: f64 = 1_000_000.0;

/// Usage from a `response.done` frame; `None` for other events and when usage is absent, null
/// or not an object.
pub fn extract_usage(frame: &[u8], info: &FrameInfo) -> Option<Usage> {
    if info.kind(frame) != EventKind::ResponseDone {
        return None;
    }
    let mut usage = Usage::default();
    // Without a breakdown, cached tokens are priced as text.
    let mut cached_breakdown = false;
    let is_object = read_object(info.response?.usage?.raw(frame), |key, value| match key {
        b"input_tokens" => usage.input_tokens = count(&value),
        b"output_tokens" => usage.output_tokens = count(&value),
        b"total_tokens" => usage.total_tokens = count(&value),
        b"input_token_details" => {
            (
                usage.input_text_tokens,
                usage.input_audio_tokens,
                usage.input_image_tokens,
            ) = (0, 0, 0);
            (usage.cached_tokens, cached_breakdown) = (0, false);
            read_nested(&value, |key, value| match key {
                b"text_tokens" => usage.input_text_tokens = count(&value),
                b"audio_tokens" => usage.input_audio_tokens = count(&value),
                b"image_tokens" => usage.input_image_tokens = count(&value),
                b"cached_tokens" => usage.cached_tokens = count(&value),
                b"cached_tokens_details" => {
                    (
                        usage.cached_text_tokens,
                        usage.cached_audio_tokens,
                        usage.cached_image_tokens,
                    ) = (0, 0, 0);
                    cached_breakdown = read_nested(&value, |key, value| match key {
                        b"text_tokens" => usage.cached_text_tokens = count(&value),
                        b"audio_tokens" => usage.cached_audio_tokens = count(&value),
                        b"image_tokens" => usage.cached_image_tokens = count(&value),
                        _ => {}
                    });
                }
                _ => {}
            });
        }
        b"output_token_details" => {
            (usage.output_text_tokens, usage.output_audio_tokens) = (0, 0);
            read_nested(&value, |key, value| match key {
                b"text_tokens" => usage.output_text_tokens = count(&value),
                b"audio_tokens" => usage.output_audio_tokens = count(&value),
                _ => {}
            });
        }
        _ => {}
    });
    if !is_object {
        return None;
    }
    if !cached_breakdown {
        (
            usage.cached_text_tokens,
            usage.cached_audio_tokens,
            usage.cached_image_tokens,
        ) = (usage.cached_tokens, 0, 0);
    }
    Some(usage.with_total_fallback())
}

/// Usage from a `conversation.item.input_audio_transcription.completed` frame. The billing kind
/// comes from `usage.type`, or else from which fields are present.
pub fn extract_transcription_usage(frame: &[u8], info: &FrameInfo) -> Option<TranscriptionUsage> {
    if info.kind(frame) != EventKind::InputAudioTranscriptionCompleted {
        return None;
    }
    let mut declared = None;
    let (mut has_seconds, mut has_tokens) = (false, false);
    let mut usage = TranscriptionUsage {
        billing: TranscriptionBilling::Tokens,
        input_tokens: 0,
        output_tokens: 0,
        total_tokens: 0,
        input_text_tokens: 0,
        input_audio_tokens: 0,
        seconds: 0.0,
    };
    let is_object = read_object(info.usage?.raw(frame), |key, value| match key {
        b"type" => {
            declared = match &value {
                MemberValue::Text(name) => TranscriptionBilling::from_name(name),
                _ => None,
            }
        }
        b"input_tokens" => (usage.input_tokens, has_tokens) = (count(&value), true),
        b"output_tokens" => usage.output_tokens = count(&value),
        b"total_tokens" => (usage.total_tokens, has_tokens) = (count(&value), true),
        b"seconds" => {
            has_seconds = true;
            usage.seconds = value
                .as_f64()
                .filter(|seconds| *seconds > 0.0)
                .unwrap_or(0.0);
        }
        b"input_token_details" => {
            (usage.input_text_tokens, usage.input_audio_tokens) = (0, 0);
            read_nested(&value, |key, value| match key {
                b"text_tokens" => usage.input_text_tokens = count(&value),
                b"audio_tokens" => usage.input_audio_tokens = count(&value),
                _ => {}
            });
        }
        _ => {}
    });
    if !is_object {
        return None;
    }
    usage.billing = match declared {
        Some(billing) => billing,
        None if has_seconds => TranscriptionBilling::Duration,
        None if has_tokens => TranscriptionBilling::Tokens,
        None => return None,
    };
    if usage.total_tokens == 0 {
        usage.total_tokens = usage.input_tokens.saturating_add(usage.output_tokens);
    }
    Some(usage)
}

/// Prices a response's usage. Cached tokens of each modality are clamped to that modality's
/// input count and charged at its cached rate; the remaining input at the full rate.
pub fn cost(usage: &Usage, prices: &Prices) -> Cost {
    let split = |input: i64, cached: i64| {
        let input = input.max(0);
        let cached = cached.clamp(0, input);
        (input - cached, cached)
    };
    let (uncached_text, cached_text) = split(usage.input_text_tokens, usage.cached_text_tokens);
    let (uncached_audio, cached_audio) = split(usage.input_audio_tokens, usage.cached_audio_tokens);
    let (uncached_image, cached_image) = split(usage.input_image_tokens, usage.cached_image_tokens);
    let charge = |tokens: i64, rate: f64| tokens.max(0) as f64 * rate / PER_MILLION;
    let mut cost = Cost {
        input_text: charge(uncached_text, prices.input_text),
        cached_text: charge(cached_text, prices.cached_text),
        input_audio: charge(uncached_audio, prices.input_audio),
        cached_audio: charge(cached_audio, prices.cached_audio),
        input_image: charge(uncached_image, prices.input_image),
        cached_image: charge(cached_image, prices.cached_image),
        output_text: charge(usage.output_text_tokens, prices.output_text),
        output_audio: charge(usage.output_audio_tokens, prices.output_audio),
        total: 0.0,
    };
    cost.total = cost.input_text
        + cost.cached_text
        + cost.input_audio
        + cost.cached_audio
        + cost.input_image
        + cost.cached_image
        + cost.output_text
        + cost.output_audio;
    cost
}

/// Prices a transcription. Token billing without an input breakdown counts all input as audio.
pub fn transcription_cost(usage: &TranscriptionUsage, prices: &Prices) -> f64 {
    match usage.billing {
        TranscriptionBilling::Tokens => {
            let (text, audio) = if usage.input_text_tokens == 0 && usage.input_audio_tokens == 0 {
                (0, usage.input_tokens)
            } else {
                (usage.input_text_tokens, usage.input_audio_tokens)
            };
            (text.max(0) as f64 * prices.input_text
                + audio.max(0) as f64 * prices.input_audio
                + usage.output_tokens.max(0) as f64 * prices.output_text)
                / PER_MILLION
        }
        TranscriptionBilling::Duration => usage.seconds.max(0.0) / 60.0 * prices.per_minute,
    }
}

/// Reads the members of a nested object; false (and no calls) if the value is not an object.
fn read_nested<'a>(value: &MemberValue<'a>, on_member: impl FnMut(&[u8], MemberValue<'a>)) -> bool {
    match value {
        MemberValue::Object(raw) => read_object(raw, on_member),
        _ => false,
    }
}

/// A token count: a non-negative integer, 0 for anything else.
fn count(value: &MemberValue<'_>) -> i64 {
    match value {
        MemberValue::Number {
            value: Some(count), ..
        } => (*count).max(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;
    use crate::frame::scan_str;

    /// The real GA `response.done` from the protocol reference.
    const GA_RESPONSE_DONE: &str = r#"{"type":"response.done","event_id":"event_CsZyNdzXT4hWhvq6Pv8ad","response":{"object":"realtime.response","id":"resp_CsZyL5IuqSgPEut0cI82K","status":"completed","status_details":null,"output":[{"id":"item_CsZyLdZ3sHZ2DniSNrTKs","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Claro, …"}]}],"conversation_id":"conv_CsZyGLqmGCDohCYjjDPqf","output_modalities":["audio"],"max_output_tokens":"inf","audio":{"output":{"format":{"type":"audio/pcm","rate":24000},"voice":"alloy"}},"usage":{"total_tokens":320,"input_tokens":132,"output_tokens":188,"input_token_details":{"text_tokens":59,"audio_tokens":73,"image_tokens":0,"cached_tokens":64,"cached_tokens_details":{"text_tokens":0,"audio_tokens":64,"image_tokens":0}},"output_token_details":{"text_tokens":41,"audio_tokens":147}},"metadata":null}}"#;

    const GPT_REALTIME: Prices = Prices {
        input_text: 4.0,
        cached_text: 0.4,
        input_audio: 32.0,
        cached_audio: 0.4,
        input_image: 5.0,
        cached_image: 0.5,
        output_text: 16.0,
        output_audio: 64.0,
        per_minute: 0.0,
    };

    fn usage_of(frame: &str) -> Option<Usage> {
        extract_usage(frame.as_bytes(), &scan_str(frame))
    }

    fn transcription_usage_of(frame: &str) -> Option<TranscriptionUsage> {
        extract_transcription_usage(frame.as_bytes(), &scan_str(frame))
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-12, "{actual} != {expected}");
    }

    #[test]
    fn ga_response_done_usage() {
        let usage = usage_of(GA_RESPONSE_DONE).expect("usage");
        assert_eq!(
            usage,
            Usage {
                input_tokens: 132,
                output_tokens: 188,
                total_tokens: 320,
                input_text_tokens: 59,
                input_audio_tokens: 73,
                input_image_tokens: 0,
                cached_tokens: 64,
                cached_text_tokens: 0,
                cached_audio_tokens: 64,
                cached_image_tokens: 0,
                output_text_tokens: 41,
                output_audio_tokens: 147,
            }
        );
    }

    #[test]
    fn ga_response_done_cost_at_gpt_realtime_prices() {
        let cost = cost(&usage_of(GA_RESPONSE_DONE).expect("usage"), &GPT_REALTIME);
        assert_close(cost.input_text, 59.0 * 4.0 / 1e6); // 0.000236
        assert_close(cost.cached_text, 0.0);
        assert_close(cost.input_audio, (73.0 - 64.0) * 32.0 / 1e6); // 9 × 32 = 0.000288
        assert_close(cost.cached_audio, 64.0 * 0.4 / 1e6); // 0.0000256, not 64 × 32
        assert_close(cost.input_image, 0.0);
        assert_close(cost.cached_image, 0.0);
        assert_close(cost.output_text, 41.0 * 16.0 / 1e6); // 0.000656
        assert_close(cost.output_audio, 147.0 * 64.0 / 1e6); // 0.009408
                                                             // 0.000236 + 0.000288 + 0.0000256 + 0.000656 + 0.009408
        assert_close(cost.total, 0.0106136);
    }

    #[test]
    fn cached_counts_are_clamped_to_their_input() {
        let usage = Usage {
            input_text_tokens: 10,
            cached_text_tokens: 25,
            input_image_tokens: 100,
            cached_image_tokens: -3,
            ..Usage::default()
        };
        let cost = cost(&usage, &GPT_REALTIME);
        assert_close(cost.input_text, 0.0); // all 10 text tokens are cached
        assert_close(cost.cached_text, 10.0 * 0.4 / 1e6);
        assert_close(cost.input_image, 100.0 * 5.0 / 1e6);
        assert_close(cost.cached_image, 0.0);
        assert_close(cost.total, 0.000004 + 0.0005);
    }

    #[test]
    fn total_falls_back_to_input_plus_output() {
        let missing =
            r#"{"type":"response.done","response":{"usage":{"input_tokens":7,"output_tokens":5}}}"#;
        assert_eq!(usage_of(missing).expect("usage").total_tokens, 12);
        let zero = r#"{"type":"response.done","response":{"usage":{"total_tokens":0,"input_tokens":7,"output_tokens":5}}}"#;
        assert_eq!(usage_of(zero).expect("usage").total_tokens, 12);
        let given =
            r#"{"type":"response.done","response":{"usage":{"total_tokens":99,"input_tokens":7}}}"#;
        assert_eq!(usage_of(given).expect("usage").total_tokens, 99);
    }

    #[test]
    fn cached_without_breakdown_counts_as_text() {
        let frame = r#"{"type":"response.done","response":{"usage":{"input_tokens":50,"input_token_details":{"text_tokens":50,"cached_tokens":20}}}}"#;
        let usage = usage_of(frame).expect("usage");
        assert_eq!(
            (
                usage.cached_tokens,
                usage.cached_text_tokens,
                usage.cached_audio_tokens
            ),
            (20, 20, 0)
        );
    }

    #[test]
    fn usage_absent_null_or_elsewhere_is_none() {
        assert_eq!(
            usage_of(r#"{"type":"response.done","response":{"id":"r"}}"#),
            None
        );
        assert_eq!(
            usage_of(r#"{"type":"response.done","response":{"usage":null}}"#),
            None
        );
        assert_eq!(
            usage_of(r#"{"type":"response.done","response":{"usage":[1]}}"#),
            None
        );
        assert_eq!(usage_of(r#"{"type":"response.done"}"#), None);
        assert_eq!(
            usage_of(r#"{"type":"response.created","response":{"usage":{"input_tokens":1}}}"#),
            None
        );
        assert_eq!(
            usage_of(r#"{"type":"response.done","response":{"usage":{"input_tokens":1}"#),
            None
        );
    }

    #[test]
    fn odd_counts_become_zero() {
        let frame = r#"{"type":"response.done","response":{"usage":{"input_tokens":-4,"output_tokens":2.5,"total_tokens":"9","input_token_details":{"text_tokens":18446744073709551616,"audio_tokens":null}}}}"#;
        let usage = usage_of(frame).expect("usage");
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.total_tokens),
            (0, 0, 0)
        );
        assert_eq!((usage.input_text_tokens, usage.input_audio_tokens), (0, 0));
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let frame = r#"{"type":"response.done","response":{"usage":{"input_tokens":1,"input_tokens":5,"input_token_details":{"text_tokens":9,"cached_tokens":4,"cached_tokens_details":{"audio_tokens":4}},"input_token_details":{"text_tokens":5,"cached_tokens":2}}}}"#;
        let usage = usage_of(frame).expect("usage");
        assert_eq!(usage.input_tokens, 5);
        // The second details object has no cached breakdown: its 2 cached tokens count as text.
        assert_eq!((usage.input_text_tokens, usage.cached_tokens), (5, 2));
        assert_eq!(
            (usage.cached_text_tokens, usage.cached_audio_tokens),
            (2, 0)
        );
    }

    #[test]
    fn transcription_usage_by_tokens() {
        let frame = r#"{"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"i","content_index":0,"transcript":"hi","usage":{"type":"tokens","input_tokens":120,"output_tokens":30,"total_tokens":150,"input_token_details":{"text_tokens":20,"audio_tokens":100}}}"#;
        let usage = transcription_usage_of(frame).expect("usage");
        assert_eq!(usage.billing, TranscriptionBilling::Tokens);
        assert_eq!(
            (
                usage.input_text_tokens,
                usage.input_audio_tokens,
                usage.output_tokens
            ),
            (20, 100, 30)
        );
        let gpt_4o_transcribe = Prices {
            input_text: 2.5,
            input_audio: 6.0,
            output_text: 10.0,
            ..Prices::default()
        };
        // (20 × 2.50 + 100 × 6.00 + 30 × 10.00) / 1M = (50 + 600 + 300) / 1M
        assert_close(transcription_cost(&usage, &gpt_4o_transcribe), 0.00095);

        let no_details = r#"{"type":"conversation.item.input_audio_transcription.completed","usage":{"type":"tokens","input_tokens":100,"output_tokens":10}}"#;
        let usage = transcription_usage_of(no_details).expect("usage");
        assert_eq!(usage.total_tokens, 110);
        // (100 audio × 6.00 + 10 × 10.00) / 1M
        assert_close(transcription_cost(&usage, &gpt_4o_transcribe), 0.0007);
    }

    #[test]
    fn transcription_usage_by_duration() {
        let frame = r#"{"type":"conversation.item.input_audio_transcription.completed","usage":{"type":"duration","seconds":90}}"#;
        let usage = transcription_usage_of(frame).expect("usage");
        assert_eq!(usage.billing, TranscriptionBilling::Duration);
        assert_eq!(usage.seconds, 90.0);
        let whisper = Prices {
            per_minute: 0.006,
            ..Prices::default()
        };
        // 90 s = 1.5 min × 0.006
        assert_close(transcription_cost(&usage, &whisper), 0.009);

        let untyped = r#"{"type":"conversation.item.input_audio_transcription.completed","usage":{"seconds":2.5}}"#;
        assert_eq!(
            transcription_usage_of(untyped).expect("usage").billing,
            TranscriptionBilling::Duration
        );
        let empty =
            r#"{"type":"conversation.item.input_audio_transcription.completed","usage":{}}"#;
        assert_eq!(transcription_usage_of(empty), None);
        let wrong_event = r#"{"type":"response.done","usage":{"seconds":2.5}}"#;
        assert_eq!(transcription_usage_of(wrong_event), None);
    }

    #[test]
    fn shipped_price_table_is_complete() {
        let table: Map<String, Value> =
            serde_json::from_str(include_str!("../python/bifrost_rt/data/prices.json"))
                .expect("valid JSON");
        let fields = [
            "input_text",
            "cached_text",
            "input_audio",
            "cached_audio",
            "input_image",
            "cached_image",
            "output_text",
            "output_audio",
            "per_minute",
        ];
        for (model, prices) in &table {
            let prices = prices.as_object().expect("object per model");
            for field in fields {
                assert!(
                    prices.get(field).and_then(Value::as_f64).is_some(),
                    "{model}.{field}"
                );
            }
            assert_eq!(prices.len(), fields.len(), "{model}");
        }
        let gpt_realtime = &table["gpt-realtime"];
        for (field, expected) in [
            ("input_text", 4.0),
            ("cached_text", 0.4),
            ("input_audio", 32.0),
            ("cached_audio", 0.4),
            ("output_text", 16.0),
            ("output_audio", 64.0),
        ] {
            assert_eq!(gpt_realtime[field].as_f64(), Some(expected), "{field}");
        }
        assert_eq!(table["whisper-1"]["per_minute"].as_f64(), Some(0.006));
    }
}
