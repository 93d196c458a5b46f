//! Per-session accumulation of what each response produced: text, transcript, audio volume and
//! tool calls, gathered from the streaming deltas without keeping the frames.
//!
//! Memory is bounded. Each text, transcript and arguments buffer stops at its byte cap. At most
//! `max_open_responses` responses keep content; a response that opens while that many are open
//! keeps counters only (its output reports `text_truncated` and `transcript_truncated`, and no
//! tool calls). Counters-only responses are bounded by the same number, dropping the oldest, so
//! a peer that never finishes its responses cannot grow the tracker without limit.

use std::borrow::Cow;

use crate::frame::{EventKind, FrameInfo, StrSpan};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerLimits {
    pub max_text_bytes: usize,
    pub max_arguments_bytes: usize,
    pub max_open_responses: usize,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        TrackerLimits {
            max_text_bytes: 65536,
            max_arguments_bytes: 65536,
            max_open_responses: 64,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub call_id: String,
    pub name: Option<String>,
    pub item_id: Option<String>,
    pub arguments: String,
    pub truncated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnOutput {
    pub text: String,
    pub text_truncated: bool,
    pub transcript: String,
    pub transcript_truncated: bool,
    /// Decoded size of the output audio, computed from the base64 lengths.
    pub audio_bytes: u64,
    pub audio_deltas: u64,
    /// Text and transcript deltas together.
    pub text_deltas: u64,
    /// In order of first appearance.
    pub tool_calls: Vec<ToolCall>,
}

/// What the caller should do with a frame it handed to the tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Folded into the tracker's state; nothing to surface.
    Absorbed,
    /// The first delta of its response: surfaced so that its arrival can be timed.
    FirstDelta,
    /// Any other event: surfaced.
    Event,
}

struct OpenResponse {
    id: String,
    keeps_content: bool,
    first_delta_seen: bool,
    output: TurnOutput,
}

pub struct Tracker {
    limits: TrackerLimits,
    /// In order of opening. Usually one or two entries, so a linear search beats hashing.
    open: Vec<OpenResponse>,
    input_audio_bytes: u64,
}

impl Tracker {
    pub fn new(limits: TrackerLimits) -> Self {
        Tracker {
            limits,
            open: Vec::new(),
            input_audio_bytes: 0,
        }
    }

    /// Folds in one server event; `info` is the scan of `frame`.
    pub fn observe_server(&mut self, frame: &[u8], info: &FrameInfo) -> Observed {
        match info.kind(frame) {
            kind if kind.is_response_delta() => self.response_delta(frame, info, kind),
            EventKind::ResponseCreated => {
                if let Some(id) = info.response.and_then(|response| response.id) {
                    self.response_entry(&id.text(frame));
                }
                Observed::Event
            }
            EventKind::OutputItemAdded | EventKind::OutputItemDone => {
                self.function_call_item(frame, info);
                Observed::Event
            }
            EventKind::FunctionCallArgumentsDone => {
                self.function_call_done(frame, info);
                Observed::Event
            }
            _ => Observed::Event,
        }
    }

    /// Folds in one client event; `info` is the scan of `frame`.
    pub fn observe_client(&mut self, frame: &[u8], info: &FrameInfo) -> Observed {
        match (info.kind(frame), info.audio) {
            (EventKind::InputAudioBufferAppend, Some(audio)) => {
                self.input_audio_bytes = self
                    .input_audio_bytes
                    .saturating_add(base64_span_decoded_len(frame, audio));
                Observed::Absorbed
            }
            _ => Observed::Event,
        }
    }

    /// Removes a response and returns everything accumulated for it.
    pub fn take(&mut self, response_id: &str) -> Option<TurnOutput> {
        let index = self.open.iter().position(|entry| entry.id == response_id)?;
        Some(self.open.remove(index).output)
    }

    /// Ids of the responses being tracked, in order of opening.
    pub fn open_responses(&self) -> impl Iterator<Item = &str> {
        self.open.iter().map(|entry| entry.id.as_str())
    }

    /// Decoded input-audio bytes appended since the previous call.
    pub fn take_input_audio_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.input_audio_bytes)
    }

    pub fn clear(&mut self) {
        self.open.clear();
        self.input_audio_bytes = 0;
    }

    fn response_delta(&mut self, frame: &[u8], info: &FrameInfo, kind: EventKind) -> Observed {
        let Some(response_id) = info.response_id else {
            // Nothing to file it under: let the caller see it.
            return Observed::Event;
        };
        let limits = self.limits;
        let entry = self.response_entry(&response_id.text(frame));
        let first = !entry.first_delta_seen;
        entry.first_delta_seen = true;
        let output = &mut entry.output;
        match kind {
            EventKind::AudioDelta => {
                output.audio_deltas += 1;
                if let Some(delta) = info.delta {
                    output.audio_bytes = output
                        .audio_bytes
                        .saturating_add(base64_span_decoded_len(frame, delta));
                }
            }
            EventKind::TextDelta => {
                output.text_deltas += 1;
                if let Some(delta) = info.delta {
                    append_capped(
                        &mut output.text,
                        &delta.text(frame),
                        limits.max_text_bytes,
                        &mut output.text_truncated,
                    );
                }
            }
            EventKind::TranscriptDelta => {
                output.text_deltas += 1;
                if let Some(delta) = info.delta {
                    append_capped(
                        &mut output.transcript,
                        &delta.text(frame),
                        limits.max_text_bytes,
                        &mut output.transcript_truncated,
                    );
                }
            }
            EventKind::FunctionCallArgumentsDelta if entry.keeps_content => {
                let call = tool_call_entry(
                    &mut output.tool_calls,
                    span_text(frame, info.call_id),
                    span_text(frame, info.item_id),
                );
                if let Some(delta) = info.delta {
                    append_capped(
                        &mut call.arguments,
                        &delta.text(frame),
                        limits.max_arguments_bytes,
                        &mut call.truncated,
                    );
                }
            }
            _ => {}
        }
        if first {
            Observed::FirstDelta
        } else {
            Observed::Absorbed
        }
    }

    /// `response.output_item.added`/`.done` announcing a function call.
    fn function_call_item(&mut self, frame: &[u8], info: &FrameInfo) {
        let (Some(response_id), Some(item)) = (info.response_id, info.item) else {
            return;
        };
        let is_function_call = item
            .item_type
            .is_some_and(|item_type| item_type.text(frame) == "function_call");
        if !is_function_call {
            return;
        }
        let entry = self.response_entry(&response_id.text(frame));
        if !entry.keeps_content {
            return;
        }
        let call = tool_call_entry(
            &mut entry.output.tool_calls,
            span_text(frame, item.call_id),
            span_text(frame, item.id),
        );
        if let Some(name) = span_text(frame, item.name) {
            call.name = Some(name.into_owned());
        }
    }

    /// `response.function_call_arguments.done`: its arguments replace the streamed ones.
    fn function_call_done(&mut self, frame: &[u8], info: &FrameInfo) {
        let Some(response_id) = info.response_id else {
            return;
        };
        let max_arguments_bytes = self.limits.max_arguments_bytes;
        let entry = self.response_entry(&response_id.text(frame));
        if !entry.keeps_content {
            return;
        }
        let call = tool_call_entry(
            &mut entry.output.tool_calls,
            span_text(frame, info.call_id),
            span_text(frame, info.item_id),
        );
        if let Some(name) = span_text(frame, info.name) {
            call.name = Some(name.into_owned());
        }
        if let Some(arguments) = info.arguments {
            call.arguments.clear();
            call.truncated = false;
            append_capped(
                &mut call.arguments,
                &arguments.text(frame),
                max_arguments_bytes,
                &mut call.truncated,
            );
        }
    }

    /// The entry for `id`, opened if needed under the content and counters-only caps.
    fn response_entry(&mut self, id: &str) -> &mut OpenResponse {
        let index = match self.open.iter().position(|entry| entry.id == id) {
            Some(index) => index,
            None => {
                let with_content = self.open.iter().filter(|entry| entry.keeps_content).count();
                let keeps_content = with_content < self.limits.max_open_responses;
                if !keeps_content {
                    let counters_only_cap = self.limits.max_open_responses.max(1);
                    if self.open.len() - with_content >= counters_only_cap {
                        if let Some(oldest) =
                            self.open.iter().position(|entry| !entry.keeps_content)
                        {
                            self.open.remove(oldest);
                        }
                    }
                }
                self.open.push(OpenResponse {
                    id: id.to_owned(),
                    keeps_content,
                    first_delta_seen: false,
                    output: TurnOutput {
                        text_truncated: !keeps_content,
                        transcript_truncated: !keeps_content,
                        ..TurnOutput::default()
                    },
                });
                self.open.len() - 1
            }
        };
        // `index` is in range: found by `position` or just pushed.
        &mut self.open[index]
    }
}

fn span_text(frame: &[u8], span: Option<StrSpan>) -> Option<Cow<'_, str>> {
    span.map(|span| span.text(frame))
}

/// The tool call with `call_id` (or, lacking one, `item_id`), added at the end if new.
fn tool_call_entry<'c>(
    calls: &'c mut Vec<ToolCall>,
    call_id: Option<Cow<'_, str>>,
    item_id: Option<Cow<'_, str>>,
) -> &'c mut ToolCall {
    let found = calls.iter().position(|call| match (&call_id, &item_id) {
        (Some(call_id), _) if !call.call_id.is_empty() => call.call_id == *call_id,
        (_, Some(item_id)) => call.item_id.as_deref() == Some(item_id),
        _ => false,
    });
    let index = match found {
        Some(index) => index,
        None => {
            calls.push(ToolCall::default());
            calls.len() - 1
        }
    };
    // `index` is in range: found by `position` or just pushed.
    let call = &mut calls[index];
    if let Some(call_id) = call_id {
        if call.call_id.is_empty() {
            call.call_id = call_id.into_owned();
        }
    }
    if let Some(item_id) = item_id {
        if call.item_id.is_none() {
            call.item_id = Some(item_id.into_owned());
        }
    }
    call
}

/// Appends `piece` while `dst` stays within `cap` bytes, cutting on a character boundary.
/// Once something was dropped nothing more is appended, so the kept text is always a prefix.
fn append_capped(dst: &mut String, piece: &str, cap: usize, truncated: &mut bool) {
    if *truncated {
        return;
    }
    let room = cap.saturating_sub(dst.len());
    if piece.len() <= room {
        dst.push_str(piece);
        return;
    }
    let mut cut = room;
    while !piece.is_char_boundary(cut) {
        cut -= 1;
    }
    dst.push_str(piece.get(..cut).unwrap_or(""));
    *truncated = true;
}

/// Decoded size of the base64 string in `span` without decoding it. Escapes (JSON allows `\/`)
/// are resolved first; that path is rare.
fn base64_span_decoded_len(frame: &[u8], span: StrSpan) -> u64 {
    if span.escaped {
        base64_decoded_len(span.text(frame).as_bytes())
    } else {
        base64_decoded_len(span.raw(frame))
    }
}

/// Decoded size of a base64 string from its length: 3 bytes per 4 characters, less `=` padding.
/// Unpadded input counts its trailing 2 or 3 characters as 1 or 2 bytes.
pub fn base64_decoded_len(base64: &[u8]) -> u64 {
    let padding = base64
        .iter()
        .rev()
        .take(2)
        .take_while(|&&c| c == b'=')
        .count();
    let data_chars = (base64.len() - padding) as u64;
    let partial = match data_chars % 4 {
        2 => 1,
        3 => 2,
        _ => 0,
    };
    data_chars / 4 * 3 + partial
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::scan_str;

    fn server(tracker: &mut Tracker, frame: &str) -> Observed {
        tracker.observe_server(frame.as_bytes(), &scan_str(frame))
    }

    fn client(tracker: &mut Tracker, frame: &str) -> Observed {
        tracker.observe_client(frame.as_bytes(), &scan_str(frame))
    }

    fn delta(kind: &str, response_id: &str, delta: &str) -> String {
        format!(
            r#"{{"type":"{kind}","event_id":"e","response_id":"{response_id}","item_id":"item_1","output_index":0,"content_index":0,"delta":"{delta}"}}"#
        )
    }

    #[test]
    fn base64_sizes() {
        assert_eq!(base64_decoded_len(b""), 0);
        assert_eq!(base64_decoded_len(b"AAAA"), 3);
        assert_eq!(base64_decoded_len(b"AAA="), 2);
        assert_eq!(base64_decoded_len(b"AA=="), 1);
        assert_eq!(base64_decoded_len(b"AAAAAA"), 4);
        assert_eq!(base64_decoded_len(b"AAAAAAA"), 5);
        assert_eq!(base64_decoded_len(b"="), 0);
        // 6400 characters of 100 ms pcm16 at 24 kHz: 6400 / 4 * 3 = 4800 bytes.
        assert_eq!(base64_decoded_len("A".repeat(6400).as_bytes()), 4800);
    }

    #[test]
    fn audio_text_and_transcript_accumulate_per_response() {
        let mut tracker = Tracker::new(TrackerLimits::default());
        assert_eq!(
            server(
                &mut tracker,
                r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#
            ),
            Observed::Event
        );
        assert_eq!(
            server(
                &mut tracker,
                &delta("response.output_audio.delta", "resp_1", "AAAA")
            ),
            Observed::FirstDelta
        );
        assert_eq!(
            server(
                &mut tracker,
                &delta("response.output_audio.delta", "resp_1", "AA==")
            ),
            Observed::Absorbed
        );
        assert_eq!(
            server(
                &mut tracker,
                &delta("response.output_audio_transcript.delta", "resp_1", "Hel")
            ),
            Observed::Absorbed
        );
        assert_eq!(
            server(
                &mut tracker,
                &delta("response.audio_transcript.delta", "resp_1", "lo \\u00e9")
            ),
            Observed::Absorbed
        );
        assert_eq!(
            server(
                &mut tracker,
                &delta("response.output_text.delta", "resp_1", "a\\nb")
            ),
            Observed::Absorbed
        );
        assert_eq!(
            server(
                &mut tracker,
                &delta("response.audio.delta", "resp_1", "AA\\/A")
            ),
            Observed::Absorbed
        );
        assert_eq!(tracker.open_responses().collect::<Vec<_>>(), ["resp_1"]);

        let output = tracker.take("resp_1").expect("tracked");
        assert_eq!(output.audio_deltas, 3);
        // 3 + 1 + 3 ("AA/A" after unescaping).
        assert_eq!(output.audio_bytes, 7);
        assert_eq!(output.transcript, "Hello é");
        assert_eq!(output.text, "a\nb");
        assert_eq!(output.text_deltas, 3);
        assert!(!output.text_truncated && !output.transcript_truncated);
        assert!(tracker.take("resp_1").is_none());
        assert_eq!(tracker.open_responses().count(), 0);
    }

    #[test]
    fn first_delta_is_per_response_and_needs_a_response_id() {
        let mut tracker = Tracker::new(TrackerLimits::default());
        assert_eq!(
            server(&mut tracker, &delta("response.output_text.delta", "a", "x")),
            Observed::FirstDelta
        );
        assert_eq!(
            server(&mut tracker, &delta("response.output_text.delta", "b", "x")),
            Observed::FirstDelta
        );
        assert_eq!(
            server(
                &mut tracker,
                &delta("response.output_audio.delta", "a", "AAAA")
            ),
            Observed::Absorbed
        );
        assert_eq!(
            server(
                &mut tracker,
                r#"{"type":"response.output_text.delta","delta":"x"}"#
            ),
            Observed::Event
        );
        assert_eq!(
            server(
                &mut tracker,
                r#"{"type":"response.done","response":{"id":"a"}}"#
            ),
            Observed::Event
        );
        assert_eq!(server(&mut tracker, "not json"), Observed::Event);
        assert_eq!(tracker.open_responses().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn text_cap_cuts_on_char_boundary_and_stays_a_prefix() {
        let limits = TrackerLimits {
            max_text_bytes: 5,
            ..TrackerLimits::default()
        };
        let mut tracker = Tracker::new(limits);
        server(
            &mut tracker,
            &delta("response.output_text.delta", "r", "abc"),
        );
        // "é" is 2 bytes: "abc" + "dé" would be 6 bytes, so the cut falls before "é".
        server(
            &mut tracker,
            &delta("response.output_text.delta", "r", "d\u{e9}"),
        );
        // Would fit in the 1 byte left, but must not follow the gap.
        server(&mut tracker, &delta("response.output_text.delta", "r", "z"));
        server(
            &mut tracker,
            &delta("response.output_audio_transcript.delta", "r", "12345"),
        );
        let output = tracker.take("r").expect("tracked");
        assert_eq!(output.text, "abcd");
        assert!(output.text_truncated);
        assert_eq!(output.transcript, "12345");
        assert!(!output.transcript_truncated);
        assert_eq!(output.text_deltas, 4);
    }

    #[test]
    fn tool_calls_from_items_deltas_and_done() {
        let limits = TrackerLimits {
            max_arguments_bytes: 16,
            ..TrackerLimits::default()
        };
        let mut tracker = Tracker::new(limits);
        server(
            &mut tracker,
            r#"{"type":"response.created","response":{"id":"r"}}"#,
        );
        server(
            &mut tracker,
            r#"{"type":"response.output_item.added","response_id":"r","output_index":0,"item":{"id":"item_m","type":"message"}}"#,
        );
        server(
            &mut tracker,
            r#"{"type":"response.output_item.added","response_id":"r","output_index":1,"item":{"id":"item_f","type":"function_call","status":"in_progress","name":"get_weather","call_id":"call_1","arguments":""}}"#,
        );
        assert_eq!(
            server(
                &mut tracker,
                r#"{"type":"response.function_call_arguments.delta","response_id":"r","item_id":"item_f","output_index":1,"call_id":"call_1","delta":"{\"city\":"}"#
            ),
            Observed::FirstDelta
        );
        server(
            &mut tracker,
            r#"{"type":"response.function_call_arguments.delta","response_id":"r","item_id":"item_f","output_index":1,"call_id":"call_1","delta":"\"Paris\"}"}"#,
        );
        let mid = tracker.take("r").expect("tracked");
        assert_eq!(mid.tool_calls.len(), 1);
        assert_eq!(mid.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert!(!mid.tool_calls[0].truncated);

        server(
            &mut tracker,
            r#"{"type":"response.function_call_arguments.delta","response_id":"r","item_id":"item_g","call_id":"call_2","delta":"{\"q\":\"0123456789abcdef\"}"}"#,
        );
        server(
            &mut tracker,
            r#"{"type":"response.function_call_arguments.done","response_id":"r","item_id":"item_g","call_id":"call_2","name":"search","arguments":"{}"}"#,
        );
        server(
            &mut tracker,
            r#"{"type":"response.function_call_arguments.done","response_id":"r","item_id":"item_h","call_id":"call_3","name":"long","arguments":"{\"q\":\"0123456789abcdef\"}"}"#,
        );
        server(
            &mut tracker,
            r#"{"type":"response.output_item.done","response_id":"r","item":{"id":"item_h","type":"function_call","name":"long","call_id":"call_3"}}"#,
        );
        let output = tracker.take("r").expect("tracked");
        assert_eq!(
            output.tool_calls,
            vec![
                ToolCall {
                    call_id: "call_2".into(),
                    name: Some("search".into()),
                    item_id: Some("item_g".into()),
                    arguments: "{}".into(),
                    truncated: false,
                },
                ToolCall {
                    call_id: "call_3".into(),
                    name: Some("long".into()),
                    item_id: Some("item_h".into()),
                    arguments: "{\"q\":\"0123456789".into(),
                    truncated: true,
                },
            ]
        );
    }

    #[test]
    fn responses_past_the_cap_keep_counters_only() {
        let limits = TrackerLimits {
            max_open_responses: 2,
            ..TrackerLimits::default()
        };
        let mut tracker = Tracker::new(limits);
        for id in ["a", "b", "c"] {
            server(&mut tracker, &delta("response.output_text.delta", id, "hi"));
            server(
                &mut tracker,
                &delta("response.output_audio.delta", id, "AAAA"),
            );
        }
        server(
            &mut tracker,
            r#"{"type":"response.function_call_arguments.delta","response_id":"c","call_id":"call_1","delta":"{}"}"#,
        );
        let over = tracker.take("c").expect("tracked");
        assert_eq!(over.text, "");
        assert!(over.text_truncated && over.transcript_truncated);
        assert_eq!(
            (over.text_deltas, over.audio_deltas, over.audio_bytes),
            (1, 1, 3)
        );
        assert!(over.tool_calls.is_empty());
        let kept = tracker.take("a").expect("tracked");
        assert_eq!(kept.text, "hi");
        assert!(!kept.text_truncated);

        // With "a" gone there is room again.
        server(
            &mut tracker,
            &delta("response.output_text.delta", "d", "yo"),
        );
        assert_eq!(tracker.take("d").expect("tracked").text, "yo");
    }

    #[test]
    fn counters_only_responses_are_bounded_too() {
        let limits = TrackerLimits {
            max_open_responses: 1,
            ..TrackerLimits::default()
        };
        let mut tracker = Tracker::new(limits);
        for id in ["kept", "x1", "x2", "x3"] {
            server(&mut tracker, &delta("response.output_text.delta", id, "t"));
        }
        assert_eq!(tracker.open_responses().collect::<Vec<_>>(), ["kept", "x3"]);
    }

    #[test]
    fn input_audio_is_counted_and_reset() {
        let mut tracker = Tracker::new(TrackerLimits::default());
        assert_eq!(
            client(
                &mut tracker,
                r#"{"type":"input_audio_buffer.append","audio":"AAAAAAA="}"#
            ),
            Observed::Absorbed
        );
        assert_eq!(
            client(
                &mut tracker,
                r#"{"event_id":"c1","audio":"AAAA","type":"input_audio_buffer.append"}"#
            ),
            Observed::Absorbed
        );
        assert_eq!(
            client(&mut tracker, r#"{"type":"input_audio_buffer.append"}"#),
            Observed::Event
        );
        assert_eq!(
            client(&mut tracker, r#"{"type":"input_audio_buffer.commit"}"#),
            Observed::Event
        );
        assert_eq!(client(&mut tracker, "{"), Observed::Event);
        assert_eq!(tracker.take_input_audio_bytes(), 5 + 3);
        assert_eq!(tracker.take_input_audio_bytes(), 0);
    }

    #[test]
    fn clear_forgets_everything() {
        let mut tracker = Tracker::new(TrackerLimits::default());
        server(&mut tracker, &delta("response.output_text.delta", "r", "x"));
        client(
            &mut tracker,
            r#"{"type":"input_audio_buffer.append","audio":"AAAA"}"#,
        );
        tracker.clear();
        assert_eq!(tracker.open_responses().count(), 0);
        assert_eq!(tracker.take_input_audio_bytes(), 0);
        assert_eq!(
            server(&mut tracker, &delta("response.output_text.delta", "r", "x")),
            Observed::FirstDelta
        );
    }
}
