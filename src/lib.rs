//! Hot path of the bifrost_rt realtime gateway.
//!
//! The core modules are plain Rust: `frame` scans one event frame, `turn` accumulates a
//! response's output across its deltas, `usage` extracts token usage and prices it. The Python
//! extension module lives in `bindings`, built only with the `python` feature.

pub mod frame;
pub mod resample;
pub mod rtp;
pub mod turn;
pub mod usage;

#[cfg(test)]
mod frame_props;

#[cfg(feature = "python")]
mod bindings;
