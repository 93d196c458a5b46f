//! Single-pass scanner for one realtime event frame.
//!
//! The scanner validates the whole frame as JSON (same verdict as a full parser) but only records
//! where the handful of top-level fields the gateway routes on live, as byte spans into the frame.
//! Nothing is copied or decoded: the large base64 payload of audio events is skipped with a
//! block-wise scan, and ids are unescaped only when somebody asks for them.

use std::borrow::Cow;
use std::fmt;

/// Deepest nesting accepted, counting the top-level container as 1 (orjson's limit).
pub const MAX_DEPTH: usize = 1024;

/// Largest frame the scanner accepts. Spans are 32-bit to keep `FrameInfo` small.
pub const MAX_FRAME_BYTES: usize = u32::MAX as usize;

/// The contents of a JSON string in the frame, still escaped, without the quotes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StrSpan {
    pub start: u32,
    pub len: u32,
    /// The raw contents contain at least one backslash escape.
    pub escaped: bool,
}

impl StrSpan {
    /// The raw, still-escaped bytes; empty if the span does not fit `frame`.
    pub fn raw<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        frame
            .get(start..start.saturating_add(self.len as usize))
            .unwrap_or(&[])
    }

    /// The decoded string value. Borrowed unless the string has escapes.
    pub fn text<'a>(&self, frame: &'a [u8]) -> Cow<'a, str> {
        let raw = self.raw(frame);
        if self.escaped {
            return Cow::Owned(unescape(raw));
        }
        match std::str::from_utf8(raw) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(raw),
        }
    }
}

/// The bytes of one complete JSON value in the frame, `start..end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValueSpan {
    pub start: u32,
    pub end: u32,
}

impl ValueSpan {
    pub fn raw<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame
            .get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }
}

/// Why a frame has no event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclassified {
    InvalidUtf8 {
        at: usize,
    },
    /// The frame was text with an unpaired surrogate, which has no UTF-8 encoding.
    LoneSurrogate,
    InvalidJson {
        at: usize,
    },
    TooLarge,
    NotObject,
    MissingType,
    TypeNotString,
}

impl fmt::Display for Unclassified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unclassified::InvalidUtf8 { at } => write!(f, "invalid UTF-8 at byte {at}"),
            Unclassified::LoneSurrogate => f.write_str("invalid UTF-8: lone surrogate"),
            Unclassified::InvalidJson { at } => write!(f, "invalid JSON at byte {at}"),
            Unclassified::TooLarge => write!(f, "frame larger than {MAX_FRAME_BYTES} bytes"),
            Unclassified::NotObject => f.write_str("not a JSON object"),
            Unclassified::MissingType => f.write_str("missing type"),
            Unclassified::TypeNotString => f.write_str("type is not a string"),
        }
    }
}

/// The event types the accumulator and the usage extractors act on. GA and beta names of the
/// same event map to the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    ResponseCreated,
    ResponseDone,
    OutputItemAdded,
    OutputItemDone,
    TextDelta,
    TranscriptDelta,
    AudioDelta,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    InputAudioBufferAppend,
    InputAudioTranscriptionCompleted,
    Other,
}

impl EventKind {
    pub fn from_type(event_type: &[u8]) -> EventKind {
        match event_type {
            b"response.output_audio.delta" | b"response.audio.delta" => EventKind::AudioDelta,
            b"response.output_audio_transcript.delta" | b"response.audio_transcript.delta" => {
                EventKind::TranscriptDelta
            }
            b"response.output_text.delta" | b"response.text.delta" => EventKind::TextDelta,
            b"response.function_call_arguments.delta" => EventKind::FunctionCallArgumentsDelta,
            b"response.function_call_arguments.done" => EventKind::FunctionCallArgumentsDone,
            b"response.created" => EventKind::ResponseCreated,
            b"response.done" => EventKind::ResponseDone,
            b"response.output_item.added" => EventKind::OutputItemAdded,
            b"response.output_item.done" => EventKind::OutputItemDone,
            b"input_audio_buffer.append" => EventKind::InputAudioBufferAppend,
            b"conversation.item.input_audio_transcription.completed" => {
                EventKind::InputAudioTranscriptionCompleted
            }
            _ => EventKind::Other,
        }
    }

    /// Streaming deltas that belong to a response.
    pub fn is_response_delta(self) -> bool {
        matches!(
            self,
            EventKind::TextDelta
                | EventKind::TranscriptDelta
                | EventKind::AudioDelta
                | EventKind::FunctionCallArgumentsDelta
        )
    }
}

/// Fields of the top-level `response` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseFields {
    pub id: Option<StrSpan>,
    pub status: Option<StrSpan>,
    /// `metadata` is present and not null.
    pub has_metadata: bool,
    pub usage: Option<ValueSpan>,
}

/// Fields of the top-level `item` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemFields {
    pub item_type: Option<StrSpan>,
    pub id: Option<StrSpan>,
    pub call_id: Option<StrSpan>,
    pub name: Option<StrSpan>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadField {
    Delta,
    Audio,
}

impl PayloadField {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadField::Delta => "delta",
            PayloadField::Audio => "audio",
        }
    }
}

/// What the scanner found in one frame. String fields are set only when the key holds a string,
/// integer fields only when it holds an integer within i64; with duplicate keys the last one wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// `None` exactly when `unclassified` is set.
    pub event_type: Option<StrSpan>,
    pub unclassified: Option<Unclassified>,
    pub event_id: Option<StrSpan>,
    pub response_id: Option<StrSpan>,
    pub item_id: Option<StrSpan>,
    pub call_id: Option<StrSpan>,
    pub previous_item_id: Option<StrSpan>,
    pub name: Option<StrSpan>,
    pub arguments: Option<StrSpan>,
    pub output_index: Option<i64>,
    pub content_index: Option<i64>,
    /// Set when the top-level `response` key holds an object.
    pub response: Option<ResponseFields>,
    /// Set when the top-level `item` key holds an object.
    pub item: Option<ItemFields>,
    /// The top-level `usage` value (transcription events).
    pub usage: Option<ValueSpan>,
    pub delta: Option<StrSpan>,
    pub audio: Option<StrSpan>,
}

impl FrameInfo {
    /// Classifies the event type; left to the callers that act on it, which `scan` alone is not.
    pub fn kind(&self, frame: &[u8]) -> EventKind {
        match self.event_type {
            Some(span) if span.escaped => EventKind::from_type(span.text(frame).as_bytes()),
            Some(span) => EventKind::from_type(span.raw(frame)),
            None => EventKind::Other,
        }
    }

    /// The large string of the event: `delta`, or else `audio`.
    pub fn payload(&self) -> Option<(PayloadField, StrSpan)> {
        match (self.delta, self.audio) {
            (Some(delta), _) => Some((PayloadField::Delta, delta)),
            (None, Some(audio)) => Some((PayloadField::Audio, audio)),
            (None, None) => None,
        }
    }
}

/// The value of one member handed out by [`read_object`].
#[derive(Clone, Debug, PartialEq)]
pub enum MemberValue<'a> {
    /// `value` is set for an integer that fits i64; `raw` is the literal as written.
    Number {
        value: Option<i64>,
        raw: &'a [u8],
    },
    Text(Cow<'a, str>),
    /// The complete raw object, ready for a nested `read_object`.
    Object(&'a [u8]),
    /// An array, `true`, `false` or `null`.
    Other,
}

impl MemberValue<'_> {
    /// The number as a double, for values that may have a fraction.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MemberValue::Number { raw, .. } => std::str::from_utf8(raw).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Calls `on_member` with each key (decoded) and value of the JSON object `raw`, in order, so
/// that with duplicate keys the last call wins. Returns false, possibly after some calls, if
/// `raw` is not exactly one valid JSON object.
pub fn read_object<'a>(raw: &'a [u8], mut on_member: impl FnMut(&[u8], MemberValue<'a>)) -> bool {
    let mut scanner = Scanner {
        bytes: raw,
        pos: 0,
        validate_utf8: true,
    };
    scanner.skip_whitespace();
    if scanner.peek() != Some(b'{') {
        return false;
    }
    let walked = scanner.object(0, |scanner, key| {
        let depth = 1;
        let bytes = scanner.bytes;
        let start = scanner.pos;
        let value = match scanner.peek() {
            Some(b'-' | b'0'..=b'9') => {
                let value = scanner.number()?;
                MemberValue::Number {
                    value,
                    raw: bytes.get(start..scanner.pos).unwrap_or(&[]),
                }
            }
            Some(b'"') => MemberValue::Text(scanner.string()?.text(bytes)),
            Some(b'{') => {
                scanner.skip_value(depth)?;
                MemberValue::Object(bytes.get(start..scanner.pos).unwrap_or(&[]))
            }
            _ => {
                scanner.skip_value(depth)?;
                MemberValue::Other
            }
        };
        on_member(key, value);
        Ok(())
    });
    if walked.is_err() {
        return false;
    }
    scanner.skip_whitespace();
    scanner.pos == raw.len()
}

/// Scans a frame given as bytes, validating UTF-8 along the way.
#[inline]
pub fn scan(frame: &[u8]) -> FrameInfo {
    // Inlined, so that the result is written straight into the caller's slot.
    let mut info = FrameInfo::default();
    scan_frame(frame, true, &mut info);
    info
}

/// Scans a frame that is already known to be UTF-8.
#[inline]
pub fn scan_str(frame: &str) -> FrameInfo {
    let mut info = FrameInfo::default();
    scan_frame(frame.as_bytes(), false, &mut info);
    info
}

/// Fills `info`, which holds the defaults, in place: the struct is large and copies of it
/// would cost as much as scanning a small frame.
fn scan_frame(frame: &[u8], validate_utf8: bool, info: &mut FrameInfo) {
    if frame.len() > MAX_FRAME_BYTES {
        info.unclassified = Some(Unclassified::TooLarge);
        return;
    }
    let mut scanner = Scanner {
        bytes: frame,
        pos: 0,
        validate_utf8,
    };
    let unclassified = match scanner.document(info) {
        Err(ScanError::Json(at)) => Unclassified::InvalidJson { at: at as usize },
        Err(ScanError::Utf8(at)) => Unclassified::InvalidUtf8 { at: at as usize },
        Ok(None) => Unclassified::NotObject,
        Ok(Some(TypeField::Missing)) => Unclassified::MissingType,
        Ok(Some(TypeField::NotString)) => Unclassified::TypeNotString,
        Ok(Some(TypeField::String(span))) => {
            info.event_type = Some(span);
            return;
        }
    };
    if !matches!(
        unclassified,
        Unclassified::MissingType | Unclassified::TypeNotString
    ) {
        // Fields recorded before the frame turned out unusable are meaningless.
        *info = FrameInfo::default();
    }
    info.unclassified = Some(unclassified);
}

/// Positions are 32-bit, as in the spans, so that results carrying a span fit in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanError {
    Json(u32),
    Utf8(u32),
}

impl ScanError {
    // Positions fit u32: frames are at most MAX_FRAME_BYTES long.
    fn json(at: usize) -> Self {
        ScanError::Json(at as u32)
    }

    fn utf8(at: usize) -> Self {
        ScanError::Utf8(at as u32)
    }
}

type ScanResult<T> = Result<T, ScanError>;

/// Where the value of a top-level member goes.
enum Member<'i> {
    Text(&'i mut Option<StrSpan>),
    Integer(&'i mut Option<i64>),
    Raw(&'i mut Option<ValueSpan>),
    Response(&'i mut Option<ResponseFields>),
    Item(&'i mut Option<ItemFields>),
    Ignored,
}

/// The top-level keys the scanner records.
#[derive(Clone, Copy)]
enum TopKey {
    Type,
    EventId,
    ResponseId,
    ItemId,
    CallId,
    PreviousItemId,
    Name,
    Arguments,
    Delta,
    Audio,
    OutputIndex,
    ContentIndex,
    Usage,
    Response,
    Item,
    Other,
}

impl TopKey {
    fn from_key(key: &[u8]) -> TopKey {
        match key {
            b"type" => TopKey::Type,
            b"event_id" => TopKey::EventId,
            b"response_id" => TopKey::ResponseId,
            b"item_id" => TopKey::ItemId,
            b"call_id" => TopKey::CallId,
            b"previous_item_id" => TopKey::PreviousItemId,
            b"name" => TopKey::Name,
            b"arguments" => TopKey::Arguments,
            b"delta" => TopKey::Delta,
            b"audio" => TopKey::Audio,
            b"output_index" => TopKey::OutputIndex,
            b"content_index" => TopKey::ContentIndex,
            b"usage" => TopKey::Usage,
            b"response" => TopKey::Response,
            b"item" => TopKey::Item,
            _ => TopKey::Other,
        }
    }
}

/// `"key":` as a little-endian word, for a masked compare against the frame's next 16 bytes.
#[derive(Clone, Copy)]
struct KeyLiteral {
    word: u128,
    mask: u128,
    len: usize,
}

impl KeyLiteral {
    const fn new(literal: &[u8]) -> Self {
        assert!(literal.len() <= 16);
        let mut word = 0u128;
        let mut index = 0;
        while index < literal.len() {
            word |= (literal[index] as u128) << (8 * index);
            index += 1;
        }
        KeyLiteral {
            word,
            mask: u128::MAX >> (8 * (16 - literal.len())),
            len: literal.len(),
        }
    }

    #[inline(always)]
    fn matches(self, word: u128) -> bool {
        (word ^ self.word) & self.mask == 0
    }
}

const KEY_TYPE: KeyLiteral = KeyLiteral::new(br#""type":"#);
const KEY_EVENT_ID: KeyLiteral = KeyLiteral::new(br#""event_id":"#);
const KEY_RESPONSE_ID: KeyLiteral = KeyLiteral::new(br#""response_id":"#);
const KEY_RESPONSE: KeyLiteral = KeyLiteral::new(br#""response":"#);
const KEY_ITEM_ID: KeyLiteral = KeyLiteral::new(br#""item_id":"#);
const KEY_ITEM: KeyLiteral = KeyLiteral::new(br#""item":"#);
const KEY_OUTPUT_INDEX: KeyLiteral = KeyLiteral::new(br#""output_index":"#);
const KEY_CONTENT_INDEX: KeyLiteral = KeyLiteral::new(br#""content_index":"#);
const KEY_CALL_ID: KeyLiteral = KeyLiteral::new(br#""call_id":"#);
const KEY_DELTA: KeyLiteral = KeyLiteral::new(br#""delta":"#);
const KEY_AUDIO: KeyLiteral = KeyLiteral::new(br#""audio":"#);
const KEY_ARGUMENTS: KeyLiteral = KeyLiteral::new(br#""arguments":"#);
const KEY_NAME: KeyLiteral = KeyLiteral::new(br#""name":"#);
const KEY_USAGE: KeyLiteral = KeyLiteral::new(br#""usage":"#);

enum TypeField {
    Missing,
    NotString,
    String(StrSpan),
}

/// Open containers of a nested value being skipped: one bit per level, set for objects.
struct ContainerStack {
    bits: [u64; MAX_DEPTH / 64],
    len: usize,
}

impl ContainerStack {
    fn new() -> Self {
        ContainerStack {
            bits: [0; MAX_DEPTH / 64],
            len: 0,
        }
    }

    /// Callers check the depth limit first, so `len` never exceeds `MAX_DEPTH`.
    fn push(&mut self, is_object: bool) {
        if let Some(word) = self.bits.get_mut(self.len / 64) {
            let bit = 1u64 << (self.len % 64);
            if is_object {
                *word |= bit;
            } else {
                *word &= !bit;
            }
            self.len += 1;
        }
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn top_is_object(&self) -> Option<bool> {
        let index = self.len.checked_sub(1)?;
        let word = self.bits.get(index / 64)?;
        Some(word & (1u64 << (index % 64)) != 0)
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    validate_utf8: bool,
}

impl<'a> Scanner<'a> {
    /// The whole frame: one value and trailing whitespace. When that value is an object, its
    /// members go to `info` and its `type` member is returned.
    fn document(&mut self, info: &mut FrameInfo) -> ScanResult<Option<TypeField>> {
        self.skip_whitespace();
        let event_type = if self.peek() == Some(b'{') {
            Some(self.top_level_object(info)?)
        } else {
            self.skip_value(0)?;
            None
        };
        self.skip_whitespace();
        if self.pos != self.bytes.len() {
            return Err(ScanError::json(self.pos));
        }
        Ok(event_type)
    }

    /// The top-level object, with its own loop: keys of the API's frames are matched whole at
    /// the current position, and only other keys go through the general string scan.
    fn top_level_object(&mut self, info: &mut FrameInfo) -> ScanResult<TypeField> {
        let depth = 1;
        let mut type_span = None;
        let mut type_seen = false;
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(TypeField::Missing);
        }
        loop {
            let key = match self.known_key() {
                Some(key) => key,
                None => self.other_key()?,
            };
            self.skip_whitespace();
            // Map the key to its destination first, so that each value parser is inlined once.
            let member = match key {
                TopKey::Type => {
                    type_seen = true;
                    Member::Text(&mut type_span)
                }
                TopKey::EventId => Member::Text(&mut info.event_id),
                TopKey::ResponseId => Member::Text(&mut info.response_id),
                TopKey::ItemId => Member::Text(&mut info.item_id),
                TopKey::CallId => Member::Text(&mut info.call_id),
                TopKey::PreviousItemId => Member::Text(&mut info.previous_item_id),
                TopKey::Name => Member::Text(&mut info.name),
                TopKey::Arguments => Member::Text(&mut info.arguments),
                TopKey::Delta => Member::Text(&mut info.delta),
                TopKey::Audio => Member::Text(&mut info.audio),
                TopKey::OutputIndex => Member::Integer(&mut info.output_index),
                TopKey::ContentIndex => Member::Integer(&mut info.content_index),
                TopKey::Usage => Member::Raw(&mut info.usage),
                TopKey::Response => Member::Response(&mut info.response),
                TopKey::Item => Member::Item(&mut info.item),
                TopKey::Other => Member::Ignored,
            };
            match member {
                Member::Text(slot) => *slot = self.string_value(depth)?,
                Member::Integer(slot) => *slot = self.integer_value(depth)?,
                Member::Raw(slot) => *slot = Some(self.value_span(depth)?),
                Member::Response(slot) => {
                    *slot = if self.peek() == Some(b'{') {
                        Some(self.response_object(depth)?)
                    } else {
                        self.skip_value(depth)?;
                        None
                    }
                }
                Member::Item(slot) => {
                    *slot = if self.peek() == Some(b'{') {
                        Some(self.item_object(depth)?)
                    } else {
                        self.skip_value(depth)?;
                        None
                    }
                }
                Member::Ignored => self.skip_value(depth)?,
            }
            // Frames from the API have no whitespace between members.
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => {
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(ScanError::json(self.pos)),
                    }
                }
            }
            self.skip_whitespace();
        }
        Ok(match (type_seen, type_span) {
            (false, _) => TypeField::Missing,
            (true, None) => TypeField::NotString,
            (true, Some(span)) => TypeField::String(span),
        })
    }

    /// Recognizes `"key":` for the keys the API sends, compared whole against 16 bytes at
    /// `self.pos`, and steps past it. `None` leaves the key to [`Self::other_key`].
    #[inline(always)]
    fn known_key(&mut self) -> Option<TopKey> {
        let window: [u8; 16] = self.bytes.get(self.pos..self.pos + 16)?.try_into().ok()?;
        let word = u128::from_le_bytes(window);
        let (key, literal) = match window[1] {
            b't' if KEY_TYPE.matches(word) => (TopKey::Type, KEY_TYPE),
            b'e' if KEY_EVENT_ID.matches(word) => (TopKey::EventId, KEY_EVENT_ID),
            b'r' if KEY_RESPONSE_ID.matches(word) => (TopKey::ResponseId, KEY_RESPONSE_ID),
            b'r' if KEY_RESPONSE.matches(word) => (TopKey::Response, KEY_RESPONSE),
            b'i' if KEY_ITEM_ID.matches(word) => (TopKey::ItemId, KEY_ITEM_ID),
            b'i' if KEY_ITEM.matches(word) => (TopKey::Item, KEY_ITEM),
            b'o' if KEY_OUTPUT_INDEX.matches(word) => (TopKey::OutputIndex, KEY_OUTPUT_INDEX),
            b'c' if KEY_CONTENT_INDEX.matches(word) => (TopKey::ContentIndex, KEY_CONTENT_INDEX),
            b'c' if KEY_CALL_ID.matches(word) => (TopKey::CallId, KEY_CALL_ID),
            b'd' if KEY_DELTA.matches(word) => (TopKey::Delta, KEY_DELTA),
            b'a' if KEY_AUDIO.matches(word) => (TopKey::Audio, KEY_AUDIO),
            b'a' if KEY_ARGUMENTS.matches(word) => (TopKey::Arguments, KEY_ARGUMENTS),
            b'n' if KEY_NAME.matches(word) => (TopKey::Name, KEY_NAME),
            b'u' if KEY_USAGE.matches(word) => (TopKey::Usage, KEY_USAGE),
            _ => return None,
        };
        self.pos += literal.len;
        Some(key)
    }

    /// Any other key: scanned as a string, unescaped if needed, then classified. Leaves
    /// `self.pos` just past the `:`.
    #[inline(never)]
    fn other_key(&mut self) -> ScanResult<TopKey> {
        if self.peek() != Some(b'"') {
            return Err(ScanError::json(self.pos));
        }
        let span = self.string()?;
        self.skip_whitespace();
        self.expect(b':')?;
        let raw = span.raw(self.bytes);
        Ok(if span.escaped {
            TopKey::from_key(unescape(raw).as_bytes())
        } else {
            TopKey::from_key(raw)
        })
    }

    fn response_object(&mut self, parent_depth: usize) -> ScanResult<ResponseFields> {
        let mut fields = ResponseFields::default();
        let depth = parent_depth + 1;
        self.object(parent_depth, |scanner, key| {
            match key {
                b"id" => fields.id = scanner.string_value(depth)?,
                b"status" => fields.status = scanner.string_value(depth)?,
                b"usage" => fields.usage = Some(scanner.value_span(depth)?),
                b"metadata" => {
                    let is_null = scanner
                        .bytes
                        .get(scanner.pos..)
                        .is_some_and(|rest| rest.starts_with(b"null"));
                    scanner.skip_value(depth)?;
                    fields.has_metadata = !is_null;
                }
                _ => scanner.skip_value(depth)?,
            }
            Ok(())
        })?;
        Ok(fields)
    }

    fn item_object(&mut self, parent_depth: usize) -> ScanResult<ItemFields> {
        let mut fields = ItemFields::default();
        let depth = parent_depth + 1;
        self.object(parent_depth, |scanner, key| {
            match key {
                b"type" => fields.item_type = scanner.string_value(depth)?,
                b"id" => fields.id = scanner.string_value(depth)?,
                b"call_id" => fields.call_id = scanner.string_value(depth)?,
                b"name" => fields.name = scanner.string_value(depth)?,
                _ => scanner.skip_value(depth)?,
            }
            Ok(())
        })?;
        Ok(fields)
    }

    /// Walks an object at `self.pos` (which holds `{`) whose container sits at `parent_depth + 1`,
    /// handing each decoded key to `on_member` with `self.pos` at the start of the member's value.
    /// `on_member` must consume exactly that value.
    #[inline(always)]
    fn object<F>(&mut self, parent_depth: usize, mut on_member: F) -> ScanResult<()>
    where
        F: FnMut(&mut Self, &[u8]) -> ScanResult<()>,
    {
        if parent_depth + 1 > MAX_DEPTH {
            return Err(ScanError::json(self.pos));
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(ScanError::json(self.pos));
            }
            let key_span = self.string()?;
            // Frames from the API have no whitespace around `:`.
            if self.peek() == Some(b':') {
                self.pos += 1;
            } else {
                self.skip_whitespace();
                self.expect(b':')?;
            }
            self.skip_whitespace();
            // One call site, so that `on_member` is inlined into the loop.
            let bytes = self.bytes;
            let unescaped;
            let key = if key_span.escaped {
                unescaped = unescape(key_span.raw(bytes));
                unescaped.as_bytes()
            } else {
                key_span.raw(bytes)
            };
            on_member(self, key)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(ScanError::json(self.pos)),
            }
        }
    }

    /// A member value that is recorded only if it is a string.
    #[inline(always)]
    fn string_value(&mut self, depth: usize) -> ScanResult<Option<StrSpan>> {
        if self.peek() == Some(b'"') {
            self.string().map(Some)
        } else {
            self.skip_value(depth)?;
            Ok(None)
        }
    }

    /// A member value that is recorded only if it is an integer that fits i64.
    #[inline(always)]
    fn integer_value(&mut self, depth: usize) -> ScanResult<Option<i64>> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => {
                self.skip_value(depth)?;
                Ok(None)
            }
        }
    }

    fn value_span(&mut self, depth: usize) -> ScanResult<ValueSpan> {
        let start = self.pos;
        self.skip_value(depth)?;
        // Positions fit u32: frames are at most MAX_FRAME_BYTES long.
        Ok(ValueSpan {
            start: start as u32,
            end: self.pos as u32,
        })
    }

    /// Validates and skips one value at `self.pos`, iteratively so that nesting cannot exhaust
    /// the stack. `depth` is the number of containers already open around the value.
    fn skip_value(&mut self, depth: usize) -> ScanResult<()> {
        // Scalars, the common case, need no container stack.
        match self.peek() {
            Some(b'"') => return self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => return self.number().map(drop),
            Some(b't') => return self.literal(b"true"),
            Some(b'f') => return self.literal(b"false"),
            Some(b'n') => return self.literal(b"null"),
            _ => {}
        }
        let mut open = ContainerStack::new();
        'value: loop {
            match self.peek() {
                Some(open_byte @ (b'{' | b'[')) => {
                    if depth + open.len + 1 > MAX_DEPTH {
                        return Err(ScanError::json(self.pos));
                    }
                    let is_object = open_byte == b'{';
                    let close = if is_object { b'}' } else { b']' };
                    self.pos += 1;
                    self.skip_whitespace();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        open.push(is_object);
                        if is_object {
                            self.member_key()?;
                        }
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(ScanError::json(self.pos)),
            }
            // A value just ended: close as many containers as the input closes.
            loop {
                let Some(in_object) = open.top_is_object() else {
                    return Ok(());
                };
                self.skip_whitespace();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_whitespace();
                        if in_object {
                            self.member_key()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        open.pop();
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return Err(ScanError::json(self.pos)),
                }
            }
        }
    }

    /// `"key" :` followed by whitespace, inside an object being skipped.
    fn member_key(&mut self) -> ScanResult<()> {
        if self.peek() != Some(b'"') {
            return Err(ScanError::json(self.pos));
        }
        self.string()?;
        self.skip_whitespace();
        self.expect(b':')?;
        self.skip_whitespace();
        Ok(())
    }

    /// A string at `self.pos` (which holds `"`).
    #[inline(always)]
    fn string(&mut self) -> ScanResult<StrSpan> {
        let start = self.pos + 1;
        let mut at = start;
        let mut escaped = false;
        loop {
            at = find_string_special(self.bytes, at);
            match self.bytes.get(at) {
                None => return Err(ScanError::json(at)),
                Some(b'"') => {
                    self.pos = at + 1;
                    // Positions fit u32: frames are at most MAX_FRAME_BYTES long.
                    return Ok(StrSpan {
                        start: start as u32,
                        len: (at - start) as u32,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    at = escape_end(self.bytes, at).ok_or(ScanError::json(at))?;
                }
                Some(&byte) if byte < 0x20 => return Err(ScanError::json(at)),
                Some(_) => {
                    at = if self.validate_utf8 {
                        utf8_char_end(self.bytes, at).ok_or(ScanError::utf8(at))?
                    } else {
                        // Already valid UTF-8: step over the whole run of non-ASCII bytes.
                        let run = self.bytes.get(at..).unwrap_or(&[]);
                        at + run.iter().take_while(|&&byte| byte >= 0x80).count()
                    };
                }
            }
        }
    }

    /// A number at `self.pos`; returns its value when it is an integer that fits i64.
    #[inline(always)]
    fn number(&mut self) -> ScanResult<Option<i64>> {
        // Fast path for a lone digit, such as the indices of streaming events.
        if let Some(&[digit @ b'0'..=b'9', next]) = self.bytes.get(self.pos..self.pos + 2) {
            if !matches!(next, b'0'..=b'9' | b'.' | b'e' | b'E') {
                self.pos += 1;
                return Ok(Some(i64::from(digit - b'0')));
            }
        }
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        // Magnitude accumulated as u64; `None` once it no longer fits.
        let mut magnitude: Option<u64> = Some(0);
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
            }
            Some(b'1'..=b'9') => {
                while let Some(digit @ b'0'..=b'9') = self.peek() {
                    magnitude = magnitude
                        .and_then(|m| m.checked_mul(10))
                        .and_then(|m| m.checked_add(u64::from(digit - b'0')));
                    self.pos += 1;
                }
            }
            _ => return Err(ScanError::json(self.pos)),
        }
        let integer_digits = self.pos - digits_start;
        let mut is_integer = true;
        if self.peek() == Some(b'.') {
            is_integer = false;
            self.pos += 1;
            self.digits()?;
        }
        let mut has_exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            is_integer = false;
            has_exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        // A literal that overflows a double to infinity is rejected, as orjson and serde_json do.
        // Without an exponent, fewer than 309 integer digits cannot reach f64::MAX.
        if has_exponent || integer_digits > 300 {
            let literal = self.bytes.get(start..self.pos).unwrap_or(&[]);
            let finite = std::str::from_utf8(literal)
                .ok()
                .and_then(|text| text.parse::<f64>().ok())
                .is_some_and(f64::is_finite);
            if !finite {
                return Err(ScanError::json(start));
            }
        }
        if !is_integer {
            return Ok(None);
        }
        Ok(magnitude.and_then(|m| {
            if negative {
                0i64.checked_sub_unsigned(m)
            } else {
                i64::try_from(m).ok()
            }
        }))
    }

    /// One or more decimal digits.
    fn digits(&mut self) -> ScanResult<()> {
        let first = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        if self.pos == first {
            return Err(ScanError::json(self.pos));
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> ScanResult<()> {
        let end = self.pos + word.len();
        if self.bytes.get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(())
        } else {
            Err(ScanError::json(self.pos))
        }
    }

    fn expect(&mut self, byte: u8) -> ScanResult<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(ScanError::json(self.pos))
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }
}

/// Index of the first byte at or after `from` that ends a plain run inside a JSON string:
/// `"`, `\`, a control character (< 0x20) or a non-ASCII byte; `bytes.len()` if there is none.
#[inline(always)]
fn find_string_special(bytes: &[u8], from: usize) -> usize {
    let rest = bytes.get(from..).unwrap_or(&[]);
    from + plain_prefix_len(rest)
}

/// Length of the longest prefix that needs no attention inside a JSON string.
#[inline(always)]
fn plain_prefix_len(bytes: &[u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        x86::plain_prefix_len(bytes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        plain_prefix_len_portable(bytes)
    }
}

#[inline(always)]
fn is_plain(byte: u8) -> bool {
    (0x20..0x80).contains(&byte) && byte != b'"' && byte != b'\\'
}

fn plain_prefix_len_bytewise(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&byte| !is_plain(byte))
        .unwrap_or(bytes.len())
}

const PLAIN_CHUNK: usize = 128;

/// Chunk-wise scan: a branch-free test the compiler vectorizes clears most chunks at once, and
/// only a chunk it flags is searched byte by byte. Used where no explicit SIMD version exists.
#[cfg(any(not(target_arch = "x86_64"), test))]
fn plain_prefix_len_portable(bytes: &[u8]) -> usize {
    let mut chunks = bytes.chunks_exact(PLAIN_CHUNK);
    let mut offset = 0;
    for chunk in &mut chunks {
        if chunk_may_need_attention(chunk) {
            if let Some(position) = chunk.iter().position(|&byte| !is_plain(byte)) {
                return offset + position;
            }
        }
        offset += PLAIN_CHUNK;
    }
    offset + plain_prefix_len_bytewise(chunks.remainder())
}

/// False only if every byte is plain. Flags every byte below 0x23 as a signed byte (controls,
/// space, `!`, `"` and all non-ASCII) plus backslash: one compare fewer than the exact test, at
/// the price of sending a chunk with a space or `!` to the byte-wise search.
#[inline(always)]
fn chunk_may_need_attention(chunk: &[u8]) -> bool {
    chunk.iter().fold(false, |flagged, &byte| {
        flagged | ((byte as i8) < 0x23) | (byte == b'\\')
    })
}

/// Explicit SSE2/AVX2 versions: keys and ids end within a few exact 16-byte steps, and long
/// payloads are cleared 128 bytes per test.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{chunk_may_need_attention, plain_prefix_len_bytewise, PLAIN_CHUNK};

    /// Exact 32-byte steps taken before switching to the long-run scan.
    const SHORT_STEPS: usize = 2;

    /// Inlined into the string scanner so that short strings cost a few instructions: an id
    /// fits one 32-byte step, whose two 16-byte halves are tested independently.
    #[inline(always)]
    pub(super) fn plain_prefix_len(bytes: &[u8]) -> usize {
        let mut at = 0;
        for _ in 0..SHORT_STEPS {
            let (Some(low), Some(high)) =
                (special_mask_16(bytes, at), special_mask_16(bytes, at + 16))
            else {
                return at + exact_steps(bytes.get(at..).unwrap_or(&[]));
            };
            match low | high << 16 {
                0 => at += 32,
                mask => return at + mask.trailing_zeros() as usize,
            }
        }
        at + long_run(bytes.get(at..).unwrap_or(&[]))
    }

    #[inline(never)]
    fn long_run(bytes: &[u8]) -> usize {
        if bytes.len() >= PLAIN_CHUNK && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { long_run_avx2(bytes) }
        } else {
            exact_steps(bytes)
        }
    }

    /// Bit i set if byte `at + i` needs attention; None if fewer than 16 bytes remain.
    #[inline(always)]
    fn special_mask_16(bytes: &[u8], at: usize) -> Option<u32> {
        let block = bytes.get(at..at + 16)?;
        // SAFETY: SSE2 is part of the x86_64 baseline, and `block` has 16 readable bytes.
        let mask = unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast());
            // Signed compare: below 0x20 means a control character or a non-ASCII byte.
            let control_or_high = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(
                _mm_or_si128(control_or_high, quote),
                backslash,
            ))
        };
        Some(mask as u32)
    }

    fn exact_steps(bytes: &[u8]) -> usize {
        let mut at = 0;
        loop {
            match special_mask_16(bytes, at) {
                Some(0) => at += 16,
                Some(mask) => return at + mask.trailing_zeros() as usize,
                None => return at + plain_prefix_len_bytewise(bytes.get(at..).unwrap_or(&[])),
            }
        }
    }

    /// The portable chunk test written out for 256-bit vectors, with fewer operations: a signed
    /// minimum across the chunk finds any byte below 0x23, so only backslash needs compares.
    #[target_feature(enable = "avx2")]
    fn long_run_avx2(bytes: &[u8]) -> usize {
        let mut chunks = bytes.chunks_exact(PLAIN_CHUNK);
        let mut offset = 0;
        for chunk in &mut chunks {
            if chunk_flagged_avx2(chunk) {
                let position = exact_steps(chunk);
                if position < PLAIN_CHUNK {
                    return offset + position;
                }
            }
            offset += PLAIN_CHUNK;
        }
        offset + exact_steps(chunks.remainder())
    }

    /// Same verdict as `chunk_may_need_attention` for a `PLAIN_CHUNK`-byte chunk.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn chunk_flagged_avx2(chunk: &[u8]) -> bool {
        const _: () = assert!(PLAIN_CHUNK == 128);
        let Some(chunk) = chunk.first_chunk::<128>() else {
            return chunk_may_need_attention(chunk);
        };
        let at = chunk.as_ptr();
        // SAFETY: AVX2 is enabled for this function, and `chunk` has 128 readable bytes.
        unsafe {
            let v0 = _mm256_loadu_si256(at.cast());
            let v1 = _mm256_loadu_si256(at.add(32).cast());
            let v2 = _mm256_loadu_si256(at.add(64).cast());
            let v3 = _mm256_loadu_si256(at.add(96).cast());
            let low = _mm256_min_epi8(_mm256_min_epi8(v0, v1), _mm256_min_epi8(v2, v3));
            let below = _mm256_cmpgt_epi8(_mm256_set1_epi8(0x23), low);
            let backslash = _mm256_set1_epi8(b'\\' as i8);
            let escapes = _mm256_or_si256(
                _mm256_or_si256(
                    _mm256_cmpeq_epi8(v0, backslash),
                    _mm256_cmpeq_epi8(v1, backslash),
                ),
                _mm256_or_si256(
                    _mm256_cmpeq_epi8(v2, backslash),
                    _mm256_cmpeq_epi8(v3, backslash),
                ),
            );
            let flagged = _mm256_or_si256(below, escapes);
            _mm256_testz_si256(flagged, flagged) == 0
        }
    }
}

/// Validates the escape sequence starting at `at` (which holds `\`) and returns the index just
/// past it. `\u` escapes must form valid scalar values: surrogates only as high+low pairs.
fn escape_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => {
            let unit = hex4(bytes, at + 2)?;
            match unit {
                0xD800..=0xDBFF => {
                    if bytes.get(at + 6) != Some(&b'\\') || bytes.get(at + 7) != Some(&b'u') {
                        return None;
                    }
                    let low = hex4(bytes, at + 8)?;
                    (0xDC00..=0xDFFF).contains(&low).then_some(at + 12)
                }
                0xDC00..=0xDFFF => None,
                _ => Some(at + 6),
            }
        }
        _ => None,
    }
}

fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |value, &digit| {
        let nibble = (digit as char).to_digit(16)?;
        Some(value << 4 | nibble as u16)
    })
}

/// Validates one UTF-8 encoded character starting at `at` (a byte >= 0x80) and returns the
/// index just past it. Rejects overlong forms, surrogates and code points above U+10FFFF.
fn utf8_char_end(bytes: &[u8], at: usize) -> Option<usize> {
    let lead = *bytes.get(at)?;
    let (continuation_count, second_range) = match lead {
        0xC2..=0xDF => (1, 0x80..=0xBF),
        0xE0 => (2, 0xA0..=0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80..=0xBF),
        0xED => (2, 0x80..=0x9F),
        0xF0 => (3, 0x90..=0xBF),
        0xF1..=0xF3 => (3, 0x80..=0xBF),
        0xF4 => (3, 0x80..=0x8F),
        _ => return None,
    };
    if !second_range.contains(bytes.get(at + 1)?) {
        return None;
    }
    for offset in 2..=continuation_count {
        if !(0x80..=0xBF).contains(bytes.get(at + offset)?) {
            return None;
        }
    }
    Some(at + 1 + continuation_count)
}

/// Decodes the raw contents of a JSON string. Input the scanner accepted decodes exactly;
/// anything malformed decodes to U+FFFD rather than failing.
pub fn unescape(raw: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut at = 0;
    while let Some(offset) = memchr::memchr(b'\\', raw.get(at..).unwrap_or(&[])) {
        out.extend_from_slice(raw.get(at..at + offset).unwrap_or(&[]));
        at += offset;
        let (decoded, consumed) = decode_escape(raw, at);
        let mut utf8 = [0u8; 4];
        out.extend_from_slice(decoded.encode_utf8(&mut utf8).as_bytes());
        at += consumed;
    }
    out.extend_from_slice(raw.get(at..).unwrap_or(&[]));
    match String::from_utf8(out) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

/// Decodes the escape at `at` (which holds `\`): the character and the number of bytes used.
fn decode_escape(raw: &[u8], at: usize) -> (char, usize) {
    const REPLACEMENT: (char, usize) = (char::REPLACEMENT_CHARACTER, 1);
    let Some(&kind) = raw.get(at + 1) else {
        return REPLACEMENT;
    };
    let simple = match kind {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let Some(unit) = hex4(raw, at + 2) else {
                return REPLACEMENT;
            };
            if (0xD800..=0xDBFF).contains(&unit)
                && raw.get(at + 6) == Some(&b'\\')
                && raw.get(at + 7) == Some(&b'u')
            {
                if let Some(low @ 0xDC00..=0xDFFF) = hex4(raw, at + 8) {
                    let scalar =
                        0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    return (
                        char::from_u32(scalar).unwrap_or(char::REPLACEMENT_CHARACTER),
                        12,
                    );
                }
            }
            return (
                char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER),
                6,
            );
        }
        _ => return REPLACEMENT,
    };
    (simple, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &str, span: Option<StrSpan>) -> Option<String> {
        span.map(|s| s.text(frame.as_bytes()).into_owned())
    }

    fn reason(frame: &[u8]) -> Option<String> {
        scan(frame).unclassified.map(|r| r.to_string())
    }

    #[test]
    fn audio_delta_fields_and_payload_span() {
        let frame = r#"{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":2,"delta":"AAAA//8="}"#;
        let info = scan_str(frame);
        assert_eq!(info.kind(frame.as_bytes()), EventKind::AudioDelta);
        assert_eq!(
            text(frame, info.event_type).as_deref(),
            Some("response.output_audio.delta")
        );
        assert_eq!(text(frame, info.event_id).as_deref(), Some("event_1"));
        assert_eq!(text(frame, info.response_id).as_deref(), Some("resp_1"));
        assert_eq!(text(frame, info.item_id).as_deref(), Some("item_1"));
        assert_eq!(info.output_index, Some(0));
        assert_eq!(info.content_index, Some(2));
        let (field, span) = info.payload().expect("payload");
        assert_eq!(field, PayloadField::Delta);
        assert_eq!(span.raw(frame.as_bytes()), b"AAAA//8=");
        assert_eq!(
            &frame[span.start as usize..(span.start + span.len) as usize],
            "AAAA//8="
        );
        assert!(info.unclassified.is_none());
    }

    #[test]
    fn escaped_keys_and_values_are_decoded() {
        let frame = r#"{"typ\u0065":"response.output_text\u002edelta","response_id":"resp_\u00e9\ud83d\ude00","delta":"a\"b\\c\/\n"}"#;
        let info = scan_str(frame);
        assert_eq!(info.kind(frame.as_bytes()), EventKind::TextDelta);
        assert_eq!(text(frame, info.response_id).as_deref(), Some("resp_é😀"));
        let span = info.delta.expect("delta");
        assert!(span.escaped);
        assert_eq!(span.raw(frame.as_bytes()), br#"a\"b\\c\/\n"#);
        assert_eq!(span.text(frame.as_bytes()), "a\"b\\c/\n");
    }

    #[test]
    fn nested_type_keys_are_ignored() {
        let frame = r#"{"item":{"type":"function_call"},"x":[{"type":"bad"}],"type":"response.output_item.added"}"#;
        let info = scan_str(frame);
        assert_eq!(
            text(frame, info.event_type).as_deref(),
            Some("response.output_item.added")
        );
        let item = info.item.expect("item");
        assert_eq!(
            text(frame, item.item_type).as_deref(),
            Some("function_call")
        );

        let only_nested = r#"{"item":{"type":"message"}}"#;
        assert_eq!(
            reason(only_nested.as_bytes()).as_deref(),
            Some("missing type")
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let frame = r#"{"type":"a","type":"b","response_id":"r1","response_id":null,"delta":"x","delta":1,"audio":"y"}"#;
        let info = scan_str(frame);
        assert_eq!(text(frame, info.event_type).as_deref(), Some("b"));
        assert_eq!(info.response_id, None);
        assert_eq!(info.delta, None);
        assert_eq!(
            info.payload().map(|(field, _)| field),
            Some(PayloadField::Audio)
        );

        let type_then_number = r#"{"type":"a","type":1}"#;
        assert_eq!(
            reason(type_then_number.as_bytes()).as_deref(),
            Some("type is not a string")
        );

        let response_then_string =
            r#"{"type":"response.done","response":{"id":"r"},"response":"x"}"#;
        assert_eq!(scan_str(response_then_string).response, None);
    }

    #[test]
    fn response_object_fields() {
        let frame = r#"{"type":"response.done","response":{"id":"resp_9","status":"completed","metadata":{"k":"v"},"usage":{"total_tokens":3}}}"#;
        let info = scan_str(frame);
        let response = info.response.expect("response");
        assert_eq!(text(frame, response.id).as_deref(), Some("resp_9"));
        assert_eq!(text(frame, response.status).as_deref(), Some("completed"));
        assert!(response.has_metadata);
        assert_eq!(
            response.usage.expect("usage").raw(frame.as_bytes()),
            br#"{"total_tokens":3}"#
        );

        let null_metadata = r#"{"type":"response.created","response":{"metadata":null}}"#;
        assert!(
            !scan_str(null_metadata)
                .response
                .expect("response")
                .has_metadata
        );
        let no_metadata = r#"{"type":"response.created","response":{}}"#;
        assert!(
            !scan_str(no_metadata)
                .response
                .expect("response")
                .has_metadata
        );
    }

    #[test]
    fn indices_must_be_integers() {
        for (value, expected) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("17", Some(17)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775807", Some(i64::MAX)),
            ("9223372036854775808", None),
            ("1.0", None),
            ("1e2", None),
            ("\"1\"", None),
            ("null", None),
            ("[1]", None),
        ] {
            let frame = format!(r#"{{"type":"t","output_index":{value}}}"#);
            let info = scan_str(&frame);
            assert!(info.unclassified.is_none(), "{frame}");
            assert_eq!(info.output_index, expected, "{frame}");
        }
    }

    #[test]
    fn unclassified_reasons() {
        assert_eq!(reason(b"").as_deref(), Some("invalid JSON at byte 0"));
        assert_eq!(reason(b"   ").as_deref(), Some("invalid JSON at byte 3"));
        assert_eq!(reason(b"[1,2]").as_deref(), Some("not a JSON object"));
        assert_eq!(reason(b"\"type\"").as_deref(), Some("not a JSON object"));
        assert_eq!(reason(b"{}").as_deref(), Some("missing type"));
        assert_eq!(
            reason(br#"{"type":null}"#).as_deref(),
            Some("type is not a string")
        );
        assert_eq!(
            reason(br#"{"type":"a","x":1,}"#).as_deref(),
            Some("invalid JSON at byte 18")
        );
        assert_eq!(
            reason(b"{\"type\":\"\xff\"}").as_deref(),
            Some("invalid UTF-8 at byte 9")
        );
    }

    #[test]
    fn rejects_invalid_json() {
        let invalid: &[&[u8]] = &[
            b"{",
            b"{\"type\"",
            b"{\"type\":",
            b"{\"type\":\"a\"",
            b"{\"type\":\"a\"}}",
            b"{\"type\":\"a\"} x",
            b"{\"type\":'a'}",
            b"{type:\"a\"}",
            b"{\"type\":\"a\",}",
            b"{,\"type\":\"a\"}",
            b"{\"type\" \"a\"}",
            b"{\"type\":\"a\" \"b\":1}",
            b"{\"type\":\"a\",\"x\":[1,]}",
            b"{\"type\":\"a\",\"x\":[1 2]}",
            b"{\"type\":\"a\",\"x\":01}",
            b"{\"type\":\"a\",\"x\":1.}",
            b"{\"type\":\"a\",\"x\":.5}",
            b"{\"type\":\"a\",\"x\":1e}",
            b"{\"type\":\"a\",\"x\":-}",
            b"{\"type\":\"a\",\"x\":+1}",
            b"{\"type\":\"a\",\"x\":1e400}",
            b"{\"type\":\"a\",\"x\":NaN}",
            b"{\"type\":\"a\",\"x\":tru}",
            b"{\"type\":\"a\",\"x\":nul}",
            b"{\"type\":\"a\",\"x\":\"\\x\"}",
            b"{\"type\":\"a\",\"x\":\"\\u12\"}",
            b"{\"type\":\"a\",\"x\":\"\\ud800\"}",
            b"{\"type\":\"a\",\"x\":\"\\udc00\"}",
            b"{\"type\":\"a\",\"x\":\"\\ud800\\u0041\"}",
            b"{\"type\":\"a\",\"x\":\"tab\there\"}",
            b"{\"type\":\"a\",\"x\":\"\x00\"}",
            b"{\"type\":\"a\"}\x0b",
            b"\xef\xbb\xbf{\"type\":\"a\"}",
            b"{\"type\":\"\xc0\xaf\"}",
            b"{\"type\":\"\xed\xa0\x80\"}",
            b"{\"type\":\"\xf4\x90\x80\x80\"}",
            b"{\"type\":\"\xe2\x82\"}",
        ];
        for frame in invalid {
            let info = scan(frame);
            assert!(
                matches!(
                    info.unclassified,
                    Some(Unclassified::InvalidJson { .. } | Unclassified::InvalidUtf8 { .. })
                ),
                "{:?} -> {:?}",
                String::from_utf8_lossy(frame),
                info.unclassified
            );
            assert_eq!(info.event_type, None);
        }
    }

    #[test]
    fn accepts_valid_edge_cases() {
        let valid: &[&[u8]] = &[
            b" \t\r\n{\"type\":\"a\"} \t\r\n",
            b"{\"type\":\"a\",\"x\":-0.0e-0}",
            b"{\"type\":\"a\",\"x\":1E+2}",
            b"{\"type\":\"a\",\"x\":1e-400}",
            b"{\"type\":\"a\",\"x\":18446744073709551616}",
            b"{\"type\":\"a\",\"x\":\"\x7f\"}",
            b"{\"type\":\"a\",\"x\":\"\\ud83d\\ude00\"}",
            b"{\"type\":\"a\",\"x\":[[],{},[{}],{\"a\":[true,false,null]}]}",
            "{\"type\":\"caf\u{e9} \u{1f600}\"}".as_bytes(),
        ];
        for frame in valid {
            let info = scan(frame);
            assert!(
                info.unclassified.is_none(),
                "{:?}",
                String::from_utf8_lossy(frame)
            );
        }
    }

    #[test]
    fn nesting_limit_matches_orjson() {
        let nested = |depth: usize| {
            format!(
                "{{\"type\":\"a\",\"x\":{}{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert!(scan_str(&nested(MAX_DEPTH)).unclassified.is_none());
        assert!(matches!(
            scan_str(&nested(MAX_DEPTH + 1)).unclassified,
            Some(Unclassified::InvalidJson { .. })
        ));
        let arrays = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(
            scan_str(&arrays(MAX_DEPTH)).unclassified,
            Some(Unclassified::NotObject)
        );
        assert!(matches!(
            scan_str(&arrays(MAX_DEPTH + 1)).unclassified,
            Some(Unclassified::InvalidJson { .. })
        ));
        // Deep nesting far past the limit fails cleanly instead of exhausting the stack.
        assert!(scan_str(&"[".repeat(1 << 20)).unclassified.is_some());
    }

    #[test]
    fn long_strings_use_the_block_scan_and_still_find_specials() {
        let plain = "A".repeat(1000);
        for (index, special) in [
            (0usize, "\\n"),
            (63, "\\\""),
            (64, "é"),
            (500, "\\u00e9"),
            (999, "\""),
        ] {
            let mut payload = plain.clone();
            if special == "\"" {
                payload.replace_range(index..index + 1, "\\\"");
            } else {
                payload.insert_str(index, special);
            }
            let frame = format!(r#"{{"type":"t","delta":"{payload}"}}"#);
            let info = scan(frame.as_bytes());
            let span = info.delta.expect("delta");
            assert_eq!(span.raw(frame.as_bytes()), payload.as_bytes());
        }
        let with_control = format!("{{\"type\":\"t\",\"delta\":\"{}\u{1}{}\"}}", plain, plain);
        assert!(scan(with_control.as_bytes()).unclassified.is_some());
        let with_bad_utf8 = [
            b"{\"type\":\"t\",\"delta\":\"".as_slice(),
            plain.as_bytes(),
            b"\xff\"}",
        ]
        .concat();
        assert_eq!(
            scan(&with_bad_utf8).unclassified,
            Some(Unclassified::InvalidUtf8 {
                at: 21 + plain.len()
            })
        );
    }

    #[test]
    fn plain_prefix_agrees_with_bytewise_definition() {
        let mut bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        for start in [0usize, 1, 35, 100, 255, 256, 1000] {
            let slice = &bytes[start..];
            let expected = slice
                .iter()
                .position(|&b| !is_plain(b))
                .unwrap_or(slice.len());
            assert_eq!(plain_prefix_len(slice), expected);
        }
        bytes.iter_mut().for_each(|b| *b = b'A' + (*b % 26));
        bytes[3000] = b'!';
        bytes[3500] = 0x1f;
        assert_eq!(plain_prefix_len(&bytes), 3500);
        assert_eq!(plain_prefix_len_portable(&bytes), 3500);
        for start in [0usize, 7, 16, 64, 65, 200, 3400, 3490, 3499, 3500] {
            let slice = &bytes[start..];
            assert_eq!(
                plain_prefix_len(slice),
                plain_prefix_len_bytewise(slice),
                "{start}"
            );
            assert_eq!(
                plain_prefix_len_portable(slice),
                plain_prefix_len_bytewise(slice),
                "{start}"
            );
        }
    }

    #[test]
    fn unescape_decodes_every_escape() {
        assert_eq!(
            unescape(br#"\"\\\/\b\f\n\r\t\u0041\u00e9\ud83d\ude00"#),
            "\"\\/\u{8}\u{c}\n\r\tAé😀"
        );
        assert_eq!(unescape(b"plain"), "plain");
        assert_eq!(unescape(br"\ud800"), "\u{fffd}");
        assert_eq!(unescape(br"\q"), "\u{fffd}q");
        assert_eq!(unescape(b"\\"), "\u{fffd}");
    }

    #[test]
    fn spans_outside_the_frame_are_empty() {
        let span = StrSpan {
            start: 10,
            len: 5,
            escaped: false,
        };
        assert_eq!(span.raw(b"short"), b"");
        assert_eq!(span.text(b"short"), "");
        assert_eq!(ValueSpan { start: 3, end: 99 }.raw(b"short"), b"");
    }

    #[test]
    fn read_object_hands_out_members_in_order() {
        let raw = br#" {"n":7,"f":-1.5e1,"s":"a\u00e9","o":{"x":[1]},"l":[1,{}],"z":null,"n":8} "#;
        let mut seen = Vec::new();
        assert!(read_object(raw, |key, value| seen
            .push((String::from_utf8_lossy(key).into_owned(), value))));
        let numbers: Vec<(String, Option<i64>)> = seen
            .iter()
            .filter_map(|(key, value)| match value {
                MemberValue::Number { value, .. } => Some((key.clone(), *value)),
                _ => None,
            })
            .collect();
        assert_eq!(
            numbers,
            [
                ("n".to_owned(), Some(7)),
                ("f".to_owned(), None),
                ("n".to_owned(), Some(8))
            ]
        );
        assert_eq!(seen[1].1.as_f64(), Some(-15.0));
        assert_eq!(seen[2].1, MemberValue::Text(Cow::Owned("aé".to_owned())));
        assert_eq!(seen[3].1, MemberValue::Object(br#"{"x":[1]}"#));
        assert_eq!(
            (seen[4].1.clone(), seen[5].1.clone()),
            (MemberValue::Other, MemberValue::Other)
        );

        for invalid in [
            &b"[1]"[..],
            b"null",
            b"",
            b"{\"a\":1",
            b"{\"a\":1} x",
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(
                !read_object(invalid, |_, _| {}),
                "{:?}",
                String::from_utf8_lossy(invalid)
            );
        }
    }

    #[test]
    fn event_kinds_cover_ga_and_beta_names() {
        assert_eq!(
            EventKind::from_type(b"response.audio.delta"),
            EventKind::AudioDelta
        );
        assert_eq!(
            EventKind::from_type(b"response.audio_transcript.delta"),
            EventKind::TranscriptDelta
        );
        assert_eq!(
            EventKind::from_type(b"response.text.delta"),
            EventKind::TextDelta
        );
        assert_eq!(
            EventKind::from_type(b"response.output_text.done"),
            EventKind::Other
        );
        assert!(EventKind::AudioDelta.is_response_delta());
        assert!(!EventKind::ResponseDone.is_response_delta());
    }
}
