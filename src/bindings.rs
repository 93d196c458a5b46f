//! The `bifrost_rt._native` Python module: thin wrappers over the core modules.
//!
//! Frames arrive as `str` (read in place through its cached UTF-8 form) or `bytes`. A returned
//! `FrameInfo` keeps a reference to its frame plus the scanner's spans, and builds Python strings
//! only when an attribute is read, so scanning allocates nothing but the `FrameInfo` itself.

use std::borrow::Cow;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::frame::{self, PayloadField, StrSpan};
use crate::resample;
use crate::rtp;
use crate::turn::{self, Observed, TrackerLimits};
use crate::usage::{self, TranscriptionBilling};

/// The frame a `FrameInfo` describes, kept alive so its spans stay readable.
enum FrameObject {
    Str(Py<PyString>),
    Bytes(Py<PyBytes>),
}

impl FrameObject {
    /// The frame's UTF-8 bytes; empty for a `str` that has no UTF-8 form (and so no spans).
    fn bytes<'a>(&'a self, py: Python<'_>) -> &'a [u8] {
        match self {
            FrameObject::Str(text) => text.to_str(py).map(str::as_bytes).unwrap_or(&[]),
            FrameObject::Bytes(bytes) => bytes.as_bytes(py),
        }
    }
}

/// A frame argument, borrowed in place.
enum FrameArg<'a, 'py> {
    /// `text` is None for a `str` with lone surrogates, which JSON text cannot carry.
    Str {
        object: &'a Bound<'py, PyString>,
        text: Option<&'a str>,
    },
    Bytes(&'a Bound<'py, PyBytes>),
}

impl<'a, 'py> FrameArg<'a, 'py> {
    fn extract(frame: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(object) = frame.cast::<PyString>() {
            let text = object.to_str().ok();
            return Ok(FrameArg::Str { object, text });
        }
        if let Ok(object) = frame.cast::<PyBytes>() {
            return Ok(FrameArg::Bytes(object));
        }
        Err(PyTypeError::new_err(format!(
            "frame must be str or bytes, not {}",
            frame.get_type().name()?
        )))
    }

    fn as_bytes(&self) -> &'a [u8] {
        match self {
            FrameArg::Str { text, .. } => text.map(str::as_bytes).unwrap_or(&[]),
            FrameArg::Bytes(object) => object.as_bytes(),
        }
    }

    /// Inlined, so that the large result is built in the caller's frame rather than copied.
    #[inline(always)]
    fn scan(&self) -> frame::FrameInfo {
        match self {
            FrameArg::Str {
                text: Some(text), ..
            } => frame::scan_str(text),
            FrameArg::Str { text: None, .. } => frame::FrameInfo {
                unclassified: Some(frame::Unclassified::LoneSurrogate),
                ..frame::FrameInfo::default()
            },
            FrameArg::Bytes(object) => frame::scan(object.as_bytes()),
        }
    }

    fn into_frame_info(self, info: frame::FrameInfo) -> FrameInfo {
        let frame = match self {
            FrameArg::Str { object, .. } => FrameObject::Str(object.clone().unbind()),
            FrameArg::Bytes(object) => FrameObject::Bytes(object.clone().unbind()),
        };
        FrameInfo {
            frame,
            found: Found::from(&info),
        }
    }
}

/// The part of a scan result that `FrameInfo` exposes. Much smaller than `frame::FrameInfo`,
/// which matters because the result is copied into the Python object.
struct Found {
    event_type: Option<StrSpan>,
    event_id: Option<StrSpan>,
    response_id: Option<StrSpan>,
    item_id: Option<StrSpan>,
    call_id: Option<StrSpan>,
    previous_item_id: Option<StrSpan>,
    response_object_id: Option<StrSpan>,
    response_status: Option<StrSpan>,
    payload: Option<(PayloadField, StrSpan)>,
    output_index: Option<i64>,
    content_index: Option<i64>,
    unclassified: Option<frame::Unclassified>,
    has_response: bool,
    response_has_metadata: bool,
}

impl From<&frame::FrameInfo> for Found {
    #[inline(always)]
    fn from(info: &frame::FrameInfo) -> Self {
        Found {
            event_type: info.event_type,
            event_id: info.event_id,
            response_id: info.response_id,
            item_id: info.item_id,
            call_id: info.call_id,
            previous_item_id: info.previous_item_id,
            response_object_id: info.response.and_then(|response| response.id),
            response_status: info.response.and_then(|response| response.status),
            payload: info.payload(),
            output_index: info.output_index,
            content_index: info.content_index,
            unclassified: info.unclassified,
            has_response: info.response.is_some(),
            response_has_metadata: info.response.is_some_and(|response| response.has_metadata),
        }
    }
}

/// What the scanner found in one frame. Read-only. Most are dropped right after a few reads, so
/// a free list saves the allocation and zeroing of each new one.
#[pyclass(frozen, freelist = 16, module = "bifrost_rt._native")]
pub struct FrameInfo {
    frame: FrameObject,
    found: Found,
}

impl FrameInfo {
    fn text<'a>(&'a self, py: Python<'_>, span: Option<StrSpan>) -> Option<Cow<'a, str>> {
        span.map(|span| span.text(self.frame.bytes(py)))
    }
}

#[pymethods]
impl FrameInfo {
    #[getter]
    fn r#type(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.event_type)
    }

    #[getter]
    fn unclassified_reason(&self) -> Option<String> {
        self.found.unclassified.map(|reason| reason.to_string())
    }

    #[getter]
    fn event_id(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.event_id)
    }

    #[getter]
    fn response_id(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.response_id)
    }

    #[getter]
    fn item_id(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.item_id)
    }

    #[getter]
    fn call_id(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.call_id)
    }

    #[getter]
    fn previous_item_id(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.previous_item_id)
    }

    #[getter]
    fn output_index(&self) -> Option<i64> {
        self.found.output_index
    }

    #[getter]
    fn content_index(&self) -> Option<i64> {
        self.found.content_index
    }

    #[getter]
    fn has_response(&self) -> bool {
        self.found.has_response
    }

    #[getter]
    fn response_object_id(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.response_object_id)
    }

    #[getter]
    fn response_status(&self, py: Python<'_>) -> Option<Cow<'_, str>> {
        self.text(py, self.found.response_status)
    }

    #[getter]
    fn response_has_metadata(&self) -> bool {
        self.found.response_has_metadata
    }

    #[getter]
    fn payload_field(&self) -> Option<&'static str> {
        self.found.payload.map(|(field, _)| field.as_str())
    }

    #[getter]
    fn payload_start(&self) -> i64 {
        self.found
            .payload
            .map_or(-1, |(_, span)| i64::from(span.start))
    }

    #[getter]
    fn payload_len(&self) -> i64 {
        self.found
            .payload
            .map_or(0, |(_, span)| i64::from(span.len))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut parts = Vec::new();
        let quoted =
            |text: &str| -> PyResult<String> { Ok(PyString::new(py, text).repr()?.to_string()) };
        match self.r#type(py) {
            Some(event_type) => parts.push(format!("type={}", quoted(&event_type)?)),
            None => parts.push("type=None".to_owned()),
        }
        if let Some(reason) = self.unclassified_reason() {
            parts.push(format!("unclassified_reason={}", quoted(&reason)?));
        }
        let ids = [
            ("event_id", self.event_id(py)),
            ("response_id", self.response_id(py)),
            ("item_id", self.item_id(py)),
            ("call_id", self.call_id(py)),
            ("previous_item_id", self.previous_item_id(py)),
        ];
        for (name, value) in ids {
            if let Some(value) = value {
                parts.push(format!("{name}={}", quoted(&value)?));
            }
        }
        for (name, value) in [
            ("output_index", self.found.output_index),
            ("content_index", self.found.content_index),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={value}"));
            }
        }
        if self.has_response() {
            parts.push("has_response=True".to_owned());
            for (name, value) in [
                ("response_object_id", self.response_object_id(py)),
                ("response_status", self.response_status(py)),
            ] {
                if let Some(value) = value {
                    parts.push(format!("{name}={}", quoted(&value)?));
                }
            }
            if self.response_has_metadata() {
                parts.push("response_has_metadata=True".to_owned());
            }
        }
        if let Some(field) = self.payload_field() {
            parts.push(format!(
                "payload_field='{field}', payload_start={}, payload_len={}",
                self.payload_start(),
                self.payload_len()
            ));
        }
        Ok(format!("FrameInfo({})", parts.join(", ")))
    }
}

/// Scans one frame. Never raises for malformed frames: they come back with `type` None.
#[pyfunction]
fn scan(frame: &Bound<'_, PyAny>) -> PyResult<FrameInfo> {
    let arg = FrameArg::extract(frame)?;
    let info = arg.scan();
    Ok(arg.into_frame_info(info))
}

#[pyclass(frozen, get_all, module = "bifrost_rt._native")]
pub struct ToolCall {
    call_id: String,
    name: Option<String>,
    item_id: Option<String>,
    arguments: String,
    truncated: bool,
}

#[pymethods]
impl ToolCall {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let quoted =
            |text: &str| -> PyResult<String> { Ok(PyString::new(py, text).repr()?.to_string()) };
        let optional = |text: &Option<String>| -> PyResult<String> {
            match text {
                Some(text) => quoted(text),
                None => Ok("None".to_owned()),
            }
        };
        Ok(format!(
            "ToolCall(call_id={}, name={}, item_id={}, arguments={}, truncated={})",
            quoted(&self.call_id)?,
            optional(&self.name)?,
            optional(&self.item_id)?,
            quoted(&self.arguments)?,
            python_bool(self.truncated)
        ))
    }
}

/// Everything a response produced, as accumulated by a `Tracker`.
#[pyclass(frozen, module = "bifrost_rt._native")]
pub struct TurnOutput {
    #[pyo3(get)]
    text: String,
    #[pyo3(get)]
    text_truncated: bool,
    #[pyo3(get)]
    transcript: String,
    #[pyo3(get)]
    transcript_truncated: bool,
    #[pyo3(get)]
    audio_bytes: u64,
    #[pyo3(get)]
    audio_deltas: u64,
    #[pyo3(get)]
    text_deltas: u64,
    tool_calls: Vec<Py<ToolCall>>,
}

#[pymethods]
impl TurnOutput {
    /// A new list on every read; the `ToolCall` objects are shared.
    #[getter]
    fn tool_calls<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.tool_calls.iter().map(|call| call.clone_ref(py)))
    }

    fn __repr__(&self) -> String {
        format!(
            "TurnOutput(text_len={}, text_truncated={}, transcript_len={}, transcript_truncated={}, audio_bytes={}, audio_deltas={}, text_deltas={}, tool_calls={})",
            self.text.len(),
            python_bool(self.text_truncated),
            self.transcript.len(),
            python_bool(self.transcript_truncated),
            self.audio_bytes,
            self.audio_deltas,
            self.text_deltas,
            self.tool_calls.len()
        )
    }
}

fn turn_output(py: Python<'_>, output: turn::TurnOutput) -> PyResult<TurnOutput> {
    let tool_calls = output
        .tool_calls
        .into_iter()
        .map(|call| {
            Py::new(
                py,
                ToolCall {
                    call_id: call.call_id,
                    name: call.name,
                    item_id: call.item_id,
                    arguments: call.arguments,
                    truncated: call.truncated,
                },
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(TurnOutput {
        text: output.text,
        text_truncated: output.text_truncated,
        transcript: output.transcript,
        transcript_truncated: output.transcript_truncated,
        audio_bytes: output.audio_bytes,
        audio_deltas: output.audio_deltas,
        text_deltas: output.text_deltas,
        tool_calls,
    })
}

/// Per-session turn accumulator. Text, transcript and arguments are each capped at their byte
/// limit. At most `max_open_responses` responses keep content; one opened beyond that keeps
/// counters only, and its `TurnOutput` has `text_truncated` and `transcript_truncated` set and
/// no tool calls. Counters-only responses are capped at the same number, oldest dropped first.
#[pyclass(module = "bifrost_rt._native")]
pub struct Tracker {
    inner: turn::Tracker,
}

#[pymethods]
impl Tracker {
    #[new]
    #[pyo3(signature = (max_text_bytes = 65536, max_arguments_bytes = 65536, max_open_responses = 64))]
    fn new(max_text_bytes: usize, max_arguments_bytes: usize, max_open_responses: usize) -> Self {
        Tracker {
            inner: turn::Tracker::new(TrackerLimits {
                max_text_bytes,
                max_arguments_bytes,
                max_open_responses,
            }),
        }
    }

    /// Folds in a server event. Returns None for a delta already accumulated, except the first
    /// delta of each response; every other frame comes back as its `FrameInfo`.
    fn observe_server(&mut self, frame: &Bound<'_, PyAny>) -> PyResult<Option<FrameInfo>> {
        let arg = FrameArg::extract(frame)?;
        let info = arg.scan();
        match self.inner.observe_server(arg.as_bytes(), &info) {
            Observed::Absorbed => Ok(None),
            Observed::FirstDelta | Observed::Event => Ok(Some(arg.into_frame_info(info))),
        }
    }

    /// Folds in a client event. Returns None for `input_audio_buffer.append` (its audio is
    /// counted), the `FrameInfo` otherwise.
    fn observe_client(&mut self, frame: &Bound<'_, PyAny>) -> PyResult<Option<FrameInfo>> {
        let arg = FrameArg::extract(frame)?;
        let info = arg.scan();
        match self.inner.observe_client(arg.as_bytes(), &info) {
            Observed::Absorbed => Ok(None),
            Observed::FirstDelta | Observed::Event => Ok(Some(arg.into_frame_info(info))),
        }
    }

    fn take(&mut self, py: Python<'_>, response_id: &str) -> PyResult<Option<TurnOutput>> {
        self.inner
            .take(response_id)
            .map(|output| turn_output(py, output))
            .transpose()
    }

    fn open_responses(&self) -> Vec<String> {
        self.inner.open_responses().map(str::to_owned).collect()
    }

    fn take_input_audio_bytes(&mut self) -> u64 {
        self.inner.take_input_audio_bytes()
    }

    fn clear(&mut self) {
        self.inner.clear();
    }
}

/// Token usage of one response. Constructible with keyword arguments (each defaults to 0);
/// `total_tokens` falls back to input + output when 0.
#[pyclass(frozen, eq, get_all, module = "bifrost_rt._native")]
#[derive(Clone, PartialEq)]
pub struct Usage {
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
    input_text_tokens: i64,
    input_audio_tokens: i64,
    input_image_tokens: i64,
    cached_tokens: i64,
    cached_text_tokens: i64,
    cached_audio_tokens: i64,
    cached_image_tokens: i64,
    output_text_tokens: i64,
    output_audio_tokens: i64,
}

impl From<usage::Usage> for Usage {
    fn from(usage: usage::Usage) -> Self {
        Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            total_tokens: usage.total_tokens,
            input_text_tokens: usage.input_text_tokens,
            input_audio_tokens: usage.input_audio_tokens,
            input_image_tokens: usage.input_image_tokens,
            cached_tokens: usage.cached_tokens,
            cached_text_tokens: usage.cached_text_tokens,
            cached_audio_tokens: usage.cached_audio_tokens,
            cached_image_tokens: usage.cached_image_tokens,
            output_text_tokens: usage.output_text_tokens,
            output_audio_tokens: usage.output_audio_tokens,
        }
    }
}

impl From<&Usage> for usage::Usage {
    fn from(usage: &Usage) -> Self {
        usage::Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            total_tokens: usage.total_tokens,
            input_text_tokens: usage.input_text_tokens,
            input_audio_tokens: usage.input_audio_tokens,
            input_image_tokens: usage.input_image_tokens,
            cached_tokens: usage.cached_tokens,
            cached_text_tokens: usage.cached_text_tokens,
            cached_audio_tokens: usage.cached_audio_tokens,
            cached_image_tokens: usage.cached_image_tokens,
            output_text_tokens: usage.output_text_tokens,
            output_audio_tokens: usage.output_audio_tokens,
        }
    }
}

#[pymethods]
impl Usage {
    #[new]
    #[pyo3(signature = (
        *,
        input_tokens = 0,
        output_tokens = 0,
        total_tokens = 0,
        input_text_tokens = 0,
        input_audio_tokens = 0,
        input_image_tokens = 0,
        cached_tokens = 0,
        cached_text_tokens = 0,
        cached_audio_tokens = 0,
        cached_image_tokens = 0,
        output_text_tokens = 0,
        output_audio_tokens = 0
    ))]
    // Each argument is one keyword of the Python constructor (`*` above); a struct would not be Pythonic.
    #[allow(clippy::too_many_arguments)]
    fn new(
        input_tokens: i64,
        output_tokens: i64,
        total_tokens: i64,
        input_text_tokens: i64,
        input_audio_tokens: i64,
        input_image_tokens: i64,
        cached_tokens: i64,
        cached_text_tokens: i64,
        cached_audio_tokens: i64,
        cached_image_tokens: i64,
        output_text_tokens: i64,
        output_audio_tokens: i64,
    ) -> Self {
        usage::Usage {
            input_tokens,
            output_tokens,
            total_tokens,
            input_text_tokens,
            input_audio_tokens,
            input_image_tokens,
            cached_tokens,
            cached_text_tokens,
            cached_audio_tokens,
            cached_image_tokens,
            output_text_tokens,
            output_audio_tokens,
        }
        .with_total_fallback()
        .into()
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, count) in usage::Usage::from(self).named_counts() {
            dict.set_item(name, count)?;
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let fields: Vec<String> = usage::Usage::from(self)
            .named_counts()
            .iter()
            .map(|(name, count)| format!("{name}={count}"))
            .collect();
        format!("Usage({})", fields.join(", "))
    }
}

/// Usage of one input-audio transcription: `kind` is "tokens" or "duration".
#[pyclass(frozen, eq, get_all, module = "bifrost_rt._native")]
#[derive(Clone, PartialEq)]
pub struct TranscriptionUsage {
    kind: &'static str,
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
    input_text_tokens: i64,
    input_audio_tokens: i64,
    seconds: f64,
}

impl TranscriptionUsage {
    fn core(&self) -> usage::TranscriptionUsage {
        usage::TranscriptionUsage {
            billing: TranscriptionBilling::from_name(self.kind)
                .unwrap_or(TranscriptionBilling::Tokens),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            total_tokens: self.total_tokens,
            input_text_tokens: self.input_text_tokens,
            input_audio_tokens: self.input_audio_tokens,
            seconds: self.seconds,
        }
    }
}

impl From<usage::TranscriptionUsage> for TranscriptionUsage {
    fn from(usage: usage::TranscriptionUsage) -> Self {
        TranscriptionUsage {
            kind: usage.billing.as_str(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            total_tokens: usage.total_tokens,
            input_text_tokens: usage.input_text_tokens,
            input_audio_tokens: usage.input_audio_tokens,
            seconds: usage.seconds,
        }
    }
}

#[pymethods]
impl TranscriptionUsage {
    #[new]
    #[pyo3(signature = (
        *,
        kind = "tokens",
        input_tokens = 0,
        output_tokens = 0,
        total_tokens = 0,
        input_text_tokens = 0,
        input_audio_tokens = 0,
        seconds = 0.0
    ))]
    fn new(
        kind: &str,
        input_tokens: i64,
        output_tokens: i64,
        total_tokens: i64,
        input_text_tokens: i64,
        input_audio_tokens: i64,
        seconds: f64,
    ) -> PyResult<Self> {
        let billing = TranscriptionBilling::from_name(kind).ok_or_else(|| {
            PyValueError::new_err(format!("kind must be 'tokens' or 'duration', not {kind:?}"))
        })?;
        Ok(TranscriptionUsage {
            kind: billing.as_str(),
            input_tokens,
            output_tokens,
            total_tokens,
            input_text_tokens,
            input_audio_tokens,
            seconds,
        })
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("kind", self.kind)?;
        dict.set_item("input_tokens", self.input_tokens)?;
        dict.set_item("output_tokens", self.output_tokens)?;
        dict.set_item("total_tokens", self.total_tokens)?;
        dict.set_item("input_text_tokens", self.input_text_tokens)?;
        dict.set_item("input_audio_tokens", self.input_audio_tokens)?;
        dict.set_item("seconds", self.seconds)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        format!(
            "TranscriptionUsage(kind='{}', input_tokens={}, output_tokens={}, total_tokens={}, input_text_tokens={}, input_audio_tokens={}, seconds={:?})",
            self.kind,
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
            self.input_text_tokens,
            self.input_audio_tokens,
            self.seconds
        )
    }
}

/// Prices in USD per 1M tokens; `per_minute` in USD per minute of transcribed audio.
#[pyclass(frozen, get_all, module = "bifrost_rt._native")]
pub struct Prices {
    input_text: f64,
    cached_text: f64,
    input_audio: f64,
    cached_audio: f64,
    input_image: f64,
    cached_image: f64,
    output_text: f64,
    output_audio: f64,
    per_minute: f64,
}

impl Prices {
    fn core(&self) -> usage::Prices {
        usage::Prices {
            input_text: self.input_text,
            cached_text: self.cached_text,
            input_audio: self.input_audio,
            cached_audio: self.cached_audio,
            input_image: self.input_image,
            cached_image: self.cached_image,
            output_text: self.output_text,
            output_audio: self.output_audio,
            per_minute: self.per_minute,
        }
    }
}

#[pymethods]
impl Prices {
    #[new]
    #[pyo3(signature = (
        *,
        input_text = 0.0,
        cached_text = 0.0,
        input_audio = 0.0,
        cached_audio = 0.0,
        input_image = 0.0,
        cached_image = 0.0,
        output_text = 0.0,
        output_audio = 0.0,
        per_minute = 0.0
    ))]
    // Each argument is one keyword of the Python constructor (`*` above); a struct would not be Pythonic.
    #[allow(clippy::too_many_arguments)]
    fn new(
        input_text: f64,
        cached_text: f64,
        input_audio: f64,
        cached_audio: f64,
        input_image: f64,
        cached_image: f64,
        output_text: f64,
        output_audio: f64,
        per_minute: f64,
    ) -> Self {
        Prices {
            input_text,
            cached_text,
            input_audio,
            cached_audio,
            input_image,
            cached_image,
            output_text,
            output_audio,
            per_minute,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Prices(input_text={:?}, cached_text={:?}, input_audio={:?}, cached_audio={:?}, input_image={:?}, cached_image={:?}, output_text={:?}, output_audio={:?}, per_minute={:?})",
            self.input_text,
            self.cached_text,
            self.input_audio,
            self.cached_audio,
            self.input_image,
            self.cached_image,
            self.output_text,
            self.output_audio,
            self.per_minute
        )
    }
}

/// USD per usage category, and their sum.
#[pyclass(frozen, get_all, module = "bifrost_rt._native")]
pub struct Cost {
    input_text: f64,
    cached_text: f64,
    input_audio: f64,
    cached_audio: f64,
    input_image: f64,
    cached_image: f64,
    output_text: f64,
    output_audio: f64,
    total: f64,
}

impl Cost {
    fn core(&self) -> usage::Cost {
        usage::Cost {
            input_text: self.input_text,
            cached_text: self.cached_text,
            input_audio: self.input_audio,
            cached_audio: self.cached_audio,
            input_image: self.input_image,
            cached_image: self.cached_image,
            output_text: self.output_text,
            output_audio: self.output_audio,
            total: self.total,
        }
    }
}

impl From<usage::Cost> for Cost {
    fn from(cost: usage::Cost) -> Self {
        Cost {
            input_text: cost.input_text,
            cached_text: cost.cached_text,
            input_audio: cost.input_audio,
            cached_audio: cost.cached_audio,
            input_image: cost.input_image,
            cached_image: cost.cached_image,
            output_text: cost.output_text,
            output_audio: cost.output_audio,
            total: cost.total,
        }
    }
}

#[pymethods]
impl Cost {
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, amount) in self.core().named_amounts() {
            dict.set_item(name, amount)?;
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let fields: Vec<String> = self
            .core()
            .named_amounts()
            .iter()
            .map(|(name, amount)| format!("{name}={amount:?}"))
            .collect();
        format!("Cost({})", fields.join(", "))
    }
}

/// Usage from a `response.done` frame; None if absent, null or unparseable.
#[pyfunction]
fn extract_usage(frame: &Bound<'_, PyAny>) -> PyResult<Option<Usage>> {
    let arg = FrameArg::extract(frame)?;
    Ok(usage::extract_usage(arg.as_bytes(), &arg.scan()).map(Usage::from))
}

/// Usage from a `conversation.item.input_audio_transcription.completed` frame.
#[pyfunction]
fn extract_transcription_usage(frame: &Bound<'_, PyAny>) -> PyResult<Option<TranscriptionUsage>> {
    let arg = FrameArg::extract(frame)?;
    Ok(
        usage::extract_transcription_usage(arg.as_bytes(), &arg.scan())
            .map(TranscriptionUsage::from),
    )
}

#[pyfunction]
fn cost(usage: PyRef<'_, Usage>, prices: PyRef<'_, Prices>) -> Cost {
    usage::cost(&usage::Usage::from(&*usage), &prices.core()).into()
}

#[pyfunction]
fn transcription_cost(usage: PyRef<'_, TranscriptionUsage>, prices: PyRef<'_, Prices>) -> f64 {
    usage::transcription_cost(&usage.core(), &prices.core())
}

fn python_bool(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

/// One direction of a relayed RTP audio stream (see `rtp::ForwardRing`).
#[pyclass(module = "bifrost_rt._native")]
struct RtpForwardRing {
    ring: rtp::ForwardRing,
}

#[pymethods]
impl RtpForwardRing {
    #[new]
    #[pyo3(signature = (capacity_packets = 256, capacity_bytes = 256 * 1500, clock_rate = 48000))]
    fn new(capacity_packets: usize, capacity_bytes: usize, clock_rate: u32) -> PyResult<Self> {
        if capacity_packets == 0 || clock_rate == 0 {
            return Err(PyValueError::new_err(
                "capacity_packets and clock_rate must be positive",
            ));
        }
        Ok(RtpForwardRing {
            ring: rtp::ForwardRing::new(capacity_packets, capacity_bytes, clock_rate),
        })
    }

    /// Takes one RTP packet as it arrived; True when it was queued for forwarding.
    fn push(&mut self, packet: &[u8], arrival_ns: u64) -> bool {
        matches!(self.ring.push(packet, arrival_ns), rtp::Push::Queued)
    }

    /// The oldest queued packet as `(payload, timestamp, arrival_ns)`, the timestamp on the
    /// ring's continuous output timeline; None when nothing is queued.
    fn pop<'py>(&mut self, py: Python<'py>) -> Option<(Bound<'py, PyBytes>, u32, u64)> {
        let forwarded = self.ring.pop()?;
        Some((
            PyBytes::new(py, forwarded.payload),
            forwarded.timestamp,
            forwarded.arrival_ns,
        ))
    }

    fn __len__(&self) -> usize {
        self.ring.len()
    }

    /// Counters: packets/bytes in and out, duplicates, reordered, lost, overflow_dropped,
    /// malformed, ssrc_changes, and jitter_ms.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.ring.stats();
        let dict = PyDict::new(py);
        dict.set_item("packets_in", stats.packets_in)?;
        dict.set_item("packets_out", stats.packets_out)?;
        dict.set_item("bytes_in", stats.bytes_in)?;
        dict.set_item("bytes_out", stats.bytes_out)?;
        dict.set_item("duplicates", stats.duplicates)?;
        dict.set_item("reordered", stats.reordered)?;
        dict.set_item("lost", stats.lost)?;
        dict.set_item("overflow_dropped", stats.overflow_dropped)?;
        dict.set_item("malformed", stats.malformed)?;
        dict.set_item("ssrc_changes", stats.ssrc_changes)?;
        dict.set_item("jitter_ms", stats.jitter_ms())?;
        Ok(dict)
    }
}

/// One stream's PCM16 24 kHz → 16 kHz resampler (see `resample::Resampler`).
#[pyclass(module = "bifrost_rt._native")]
struct Resampler24To16 {
    resampler: resample::Resampler,
}

#[pymethods]
impl Resampler24To16 {
    #[new]
    fn new() -> Self {
        Resampler24To16 {
            resampler: resample::Resampler::new(),
        }
    }

    /// One append's base64 audio (standard or URL-safe) resampled, as standard base64.
    fn base64(&mut self, audio: &Bound<'_, PyAny>) -> PyResult<String> {
        let result = if let Ok(text) = audio.cast::<PyString>() {
            self.resampler.process_base64(text.to_str()?.as_bytes())
        } else if let Ok(bytes) = audio.cast::<PyBytes>() {
            self.resampler.process_base64(bytes.as_bytes())
        } else {
            return Err(PyTypeError::new_err("audio must be str or bytes"));
        };
        result.map_err(|error| {
            PyValueError::new_err(format!("invalid base64 at character {}", error.position))
        })
    }

    /// Raw little-endian PCM16 bytes in, resampled bytes out.
    fn pcm<'py>(&mut self, py: Python<'py>, pcm: &[u8]) -> Bound<'py, PyBytes> {
        let mut out = Vec::with_capacity(pcm.len() * 2 / 3 + 2);
        self.resampler.process(pcm, &mut out);
        PyBytes::new(py, &out)
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(scan, module)?)?;
    module.add_function(wrap_pyfunction!(extract_usage, module)?)?;
    module.add_function(wrap_pyfunction!(extract_transcription_usage, module)?)?;
    module.add_function(wrap_pyfunction!(cost, module)?)?;
    module.add_function(wrap_pyfunction!(transcription_cost, module)?)?;
    module.add_class::<FrameInfo>()?;
    module.add_class::<Tracker>()?;
    module.add_class::<TurnOutput>()?;
    module.add_class::<ToolCall>()?;
    module.add_class::<Usage>()?;
    module.add_class::<TranscriptionUsage>()?;
    module.add_class::<Prices>()?;
    module.add_class::<Cost>()?;
    module.add_class::<RtpForwardRing>()?;
    module.add_class::<Resampler24To16>()?;
    Ok(())
}
