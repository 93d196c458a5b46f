//! Property tests: the scanner agrees with serde_json on generated events, and never panics on
//! mutated or arbitrary bytes.

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::frame::{scan, scan_str, FrameInfo, StrSpan, Unclassified};

/// A JSON string as it appears in the frame (escaped, no quotes) and its decoded value.
#[derive(Clone, Debug)]
struct JsonString {
    raw: String,
    value: String,
}

/// Characters that exercise every branch of the string scanner and decoder.
fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        2 => prop::sample::select(vec![
            ' ', '!', '#', '/', '"', '\\', '_', '.', '=', '+', '0', '9', '\u{7f}',
        ]),
        1 => prop::char::range('\u{0}', '\u{1f}'),
        1 => prop::sample::select(vec!['é', 'ß', '中', '\u{2028}', '\u{fffd}', '😀', '𝄞']),
    ]
}

/// How one character is written: literally where JSON allows it, or as one of its escapes.
fn encode_char(c: char, style: u8, out: &mut String) {
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '/' => Some("\\/"),
        '\u{8}' => Some("\\b"),
        '\u{c}' => Some("\\f"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        _ => None,
    };
    let must_escape = c == '"' || c == '\\' || c < '\u{20}';
    match (style % 3, short) {
        (0, _) if !must_escape => out.push(c),
        (1, Some(escape)) => out.push_str(escape),
        _ => {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                if style >= 128 {
                    out.push_str(&format!("\\u{unit:04X}"));
                } else {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

fn json_string() -> impl Strategy<Value = JsonString> {
    prop::collection::vec((interesting_char(), any::<u8>()), 0..24).prop_map(|chars| {
        let mut raw = String::new();
        let mut value = String::new();
        for (c, style) in chars {
            encode_char(c, style, &mut raw);
            value.push(c);
        }
        JsonString { raw, value }
    })
}

/// A long base64-like payload, so that the block-wise scan runs, with an occasional escape.
fn payload_string() -> impl Strategy<Value = JsonString> {
    (0usize..900, any::<u8>(), prop::option::of(0usize..900)).prop_map(|(len, seed, escape_at)| {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut value: String = (0..len)
            .map(|i| ALPHABET[(i * 31 + usize::from(seed)) % ALPHABET.len()] as char)
            .collect();
        value.push_str(&"=".repeat(usize::from(seed % 3)));
        let mut raw = value.clone();
        if let Some(at) = escape_at.filter(|at| *at < len) {
            // JSON lets `/` be written `\/`; base64 contains `/`.
            value.insert(at, '/');
            raw.insert_str(at, "\\/");
        }
        JsonString { raw, value }
    })
}

fn whitespace() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![" ", "\t", "\n", "\r"]), 0..3)
        .prop_map(|pieces| pieces.concat())
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..1000).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_owned()),
        Just("1.5".to_owned()),
        Just("-2.25e-3".to_owned()),
        Just("6E+2".to_owned()),
        Just("0.0".to_owned()),
    ]
}

/// Any JSON value, serialized with random whitespace. Nested objects may use the same keys as
/// the top level, which the scanner must not pick up.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number(),
        json_string().prop_map(|s| format!("\"{}\"", s.raw)),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec((whitespace(), inner.clone()), 0..4).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(ws, v)| format!("{ws}{v}{ws}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((key(), whitespace(), inner), 0..4).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, ws, v)| format!("{ws}\"{}\"{ws}:{ws}{v}", k.raw))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

const KNOWN_KEYS: &[&str] = &[
    "type",
    "event_id",
    "response_id",
    "item_id",
    "call_id",
    "previous_item_id",
    "output_index",
    "content_index",
    "response",
    "delta",
    "audio",
    "obfuscation",
];

/// A member key: usually a known one, written plainly or with escapes, sometimes anything.
fn key() -> impl Strategy<Value = JsonString> {
    prop_oneof![
        4 => (prop::sample::select(KNOWN_KEYS), any::<u8>(), any::<bool>()).prop_map(|(name, style, escape)| {
            let mut raw = String::new();
            for c in name.chars() {
                encode_char(c, if escape { style } else { 0 }, &mut raw);
            }
            JsonString { raw, value: name.to_owned() }
        }),
        1 => json_string(),
    ]
}

/// The value written for a member: shaped by its key most of the time, anything otherwise.
fn member_value(key: &str) -> BoxedStrategy<String> {
    let quoted = |s: JsonString| format!("\"{}\"", s.raw);
    let typed: BoxedStrategy<String> = match key {
        "output_index" | "content_index" => number().boxed(),
        "delta" | "audio" => prop_oneof![payload_string(), json_string()]
            .prop_map(quoted)
            .boxed(),
        "response" => (
            json_string(),
            json_string(),
            prop::option::of(json_value()),
            json_value(),
        )
            .prop_map(|(id, status, metadata, other)| {
                let metadata = metadata
                    .map(|m| format!(",\"metadata\":{m}"))
                    .unwrap_or_default();
                format!(
                    "{{\"other\":{other},\"id\":\"{}\",\"status\":\"{}\"{metadata}}}",
                    id.raw, status.raw
                )
            })
            .boxed(),
        _ => json_string().prop_map(quoted).boxed(),
    };
    prop_oneof![4 => typed, 1 => json_value()].boxed()
}

fn member() -> impl Strategy<Value = (JsonString, String)> {
    key().prop_flat_map(|key| {
        let value = member_value(&key.value);
        (Just(key), value)
    })
}

fn event() -> impl Strategy<Value = (String, Vec<(JsonString, String)>)> {
    (
        prop::collection::vec((member(), whitespace()), 0..10),
        whitespace(),
    )
        .prop_map(|(members, outer)| {
            let text: Vec<String> = members
                .iter()
                .map(|((key, value), ws)| format!("{ws}\"{}\"{ws}:{ws}{value}{ws}", key.raw))
                .collect();
            let frame = format!("{outer}{{{}}}{outer}", text.join(","));
            (
                frame,
                members.into_iter().map(|(member, _)| member).collect(),
            )
        })
}

fn span_value(frame: &str, span: Option<StrSpan>) -> Option<String> {
    span.map(|span| span.text(frame.as_bytes()).into_owned())
}

fn string_member(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn integer_member(object: &Map<String, Value>, key: &str) -> Option<i64> {
    object
        .get(key)
        .filter(|value| value.is_i64() || value.is_u64())
        .and_then(Value::as_i64)
}

fn is_invalid(info: &FrameInfo) -> bool {
    matches!(
        info.unclassified,
        Some(Unclassified::InvalidJson { .. } | Unclassified::InvalidUtf8 { .. })
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn scanner_agrees_with_serde_json((frame, members) in event()) {
        let parsed: Value = serde_json::from_str(&frame).expect("generated frames are valid JSON");
        let object = parsed.as_object().expect("generated frames are objects");
        let info = scan_str(&frame);
        prop_assert_eq!(&scan(frame.as_bytes()), &info);

        match object.get("type") {
            None => prop_assert_eq!(info.unclassified, Some(Unclassified::MissingType)),
            Some(Value::String(event_type)) => {
                prop_assert_eq!(info.unclassified, None);
                prop_assert_eq!(span_value(&frame, info.event_type), Some(event_type.clone()));
            }
            Some(_) => prop_assert_eq!(info.unclassified, Some(Unclassified::TypeNotString)),
        }
        prop_assert_eq!(span_value(&frame, info.event_id), string_member(object, "event_id"));
        prop_assert_eq!(span_value(&frame, info.response_id), string_member(object, "response_id"));
        prop_assert_eq!(span_value(&frame, info.item_id), string_member(object, "item_id"));
        prop_assert_eq!(span_value(&frame, info.call_id), string_member(object, "call_id"));
        prop_assert_eq!(span_value(&frame, info.previous_item_id), string_member(object, "previous_item_id"));
        prop_assert_eq!(info.output_index, integer_member(object, "output_index"));
        prop_assert_eq!(info.content_index, integer_member(object, "content_index"));

        match object.get("response") {
            Some(Value::Object(response)) => {
                let fields = info.response.expect("response object");
                prop_assert_eq!(span_value(&frame, fields.id), string_member(response, "id"));
                prop_assert_eq!(span_value(&frame, fields.status), string_member(response, "status"));
                prop_assert_eq!(
                    fields.has_metadata,
                    response.get("metadata").is_some_and(|metadata| !metadata.is_null())
                );
            }
            _ => prop_assert_eq!(info.response, None),
        }

        // The payload span is exactly the raw text of the last `delta` (or `audio`) member.
        for (name, span) in [("delta", info.delta), ("audio", info.audio)] {
            let last = members.iter().rev().find(|(key, _)| key.value == name);
            let expected_raw = last
                .filter(|_| object.get(name).is_some_and(Value::is_string))
                .and_then(|(_, value)| value.strip_prefix('"')?.strip_suffix('"'))
                .map(str::to_owned);
            prop_assert_eq!(span.map(|span| String::from_utf8_lossy(span.raw(frame.as_bytes())).into_owned()), expected_raw);
            prop_assert_eq!(span_value(&frame, span), string_member(object, name));
        }
        let payload_field = info.payload().map(|(field, _)| field.as_str());
        let expected_field = ["delta", "audio"].into_iter().find(|name| object.get(*name).is_some_and(Value::is_string));
        prop_assert_eq!(payload_field, expected_field);
    }

    #[test]
    fn mutations_never_panic_and_agree_on_validity(
        (frame, _) in event(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(vec![
            b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b'u', b'0', b'e', b'-', b'.', b' ', 0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xed, 0xf0, 0xff,
        ])), 1..4),
    ) {
        let mut bytes = frame.into_bytes();
        for (index, operation, byte) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let at = index.index(bytes.len());
            match operation {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let info = scan(&bytes);
        let valid = serde_json::from_slice::<Value>(&bytes).is_ok();
        prop_assert_eq!(!is_invalid(&info), valid, "{:?}", String::from_utf8_lossy(&bytes));
        if let Ok(text) = std::str::from_utf8(&bytes) {
            prop_assert_eq!(scan_str(text), info);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let info = scan(&bytes);
        let valid = serde_json::from_slice::<Value>(&bytes).is_ok();
        prop_assert_eq!(!is_invalid(&info), valid);
    }
}
