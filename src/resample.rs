//! PCM16 24 kHz → 16 kHz for providers that take 16 kHz input (Gemini Live), one call per append.
//!
//! A polyphase windowed-sinc filter: conceptually upsample by 2 (to 48 kHz), low-pass below the
//! 8 kHz output Nyquist, keep every third sample; only the non-zero taps of each output's phase are
//! computed. The last input samples are carried across calls (and an odd trailing byte), so a
//! stream cut into chunks anywhere resamples exactly as the whole stream does — no click at
//! chunk boundaries. Base64 in and out (standard alphabet out; standard or URL-safe in).

use std::f64::consts::PI;

const UP: usize = 2;
const DOWN: usize = 3;
/// Taps per polyphase branch; the prototype filter at 48 kHz has `UP * TAPS` taps.
const TAPS: usize = 72;
const _: () = assert!(TAPS.is_multiple_of(8), "dot() sums eight lanes at a time");
/// Cut-off at 48 kHz (passband to ~6.5 kHz, stopband from 8 kHz, the output Nyquist).
const CUTOFF_HZ: f64 = 7_250.0;
const PROTOTYPE_RATE_HZ: f64 = 48_000.0;
/// Kaiser window β for about 70 dB of stopband attenuation.
const KAISER_BETA: f64 = 6.8;

/// Why a base64 input was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64Error {
    pub position: usize,
}

/// One stream's 24 kHz → 16 kHz state.
pub struct Resampler {
    /// `phases[p][TAPS - 1 - j]` is the tap applied to input `floor(3n/2) - j` for outputs with
    /// `3n % 2 == p`: stored oldest-first, so a window of the input and its taps run the same way.
    phases: [[f32; TAPS]; UP],
    /// The newest `TAPS - 1` input samples before the current call, oldest first.
    history: Vec<f32>,
    /// Absolute index of the next output sample.
    next_output: u64,
    /// Absolute index of the first sample after `history`.
    consumed: u64,
    /// A lone byte of a PCM16 sample split across two appends.
    odd_byte: Option<u8>,
    scratch: Vec<f32>,
}

impl Default for Resampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Resampler {
    pub fn new() -> Self {
        let length = UP * TAPS;
        let centre = (length - 1) as f64 / 2.0;
        let normalised = 2.0 * CUTOFF_HZ / PROTOTYPE_RATE_HZ;
        let denominator = bessel_i0(KAISER_BETA);
        let mut prototype = vec![0.0f64; length];
        for (k, tap) in prototype.iter_mut().enumerate() {
            let t = k as f64 - centre;
            let sinc = if t == 0.0 {
                1.0
            } else {
                (PI * normalised * t).sin() / (PI * normalised * t)
            };
            let ratio = t / centre;
            let window =
                bessel_i0(KAISER_BETA * (1.0 - ratio * ratio).max(0.0).sqrt()) / denominator;
            *tap = normalised * sinc * window;
        }
        // Each phase sums to one, so DC (and the passband) keeps unit gain after zero-stuffing.
        let mut phases = [[0.0f32; TAPS]; UP];
        for (p, phase) in phases.iter_mut().enumerate() {
            let sum: f64 = (0..TAPS).map(|j| prototype[p + UP * j]).sum();
            for (j, tap) in phase.iter_mut().enumerate() {
                *tap = (prototype[p + UP * (TAPS - 1 - j)] / sum) as f32;
            }
        }
        Resampler {
            phases,
            history: vec![0.0; TAPS - 1],
            next_output: 0,
            consumed: 0,
            odd_byte: None,
            scratch: Vec::new(),
        }
    }

    /// Resamples little-endian PCM16 bytes, appending the output samples' bytes to `out`.
    pub fn process(&mut self, pcm: &[u8], out: &mut Vec<u8>) {
        let mut bytes = pcm;
        let buffer = &mut self.scratch;
        buffer.clear();
        buffer.extend_from_slice(&self.history);
        if let Some(first) = self.odd_byte.take() {
            if let Some((&second, rest)) = bytes.split_first() {
                buffer.push(i16::from_le_bytes([first, second]) as f32);
                bytes = rest;
            } else {
                self.odd_byte = Some(first);
            }
        }
        let mut pairs = bytes.chunks_exact(2);
        buffer.extend(
            pairs
                .by_ref()
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]]) as f32),
        );
        if let [last] = pairs.remainder() {
            self.odd_byte = Some(*last);
        }
        let fresh = (buffer.len() - (TAPS - 1)) as u64;
        // `buffer[0]` holds absolute input index `consumed - (TAPS - 1)`.
        let origin = self.consumed as i64 - (TAPS as i64 - 1);
        let available = self.consumed + fresh; // inputs 0..available exist
        out.reserve(((fresh as usize) * UP / DOWN + 1) * 2);
        loop {
            let n = self.next_output;
            let newest = n * DOWN as u64 / UP as u64; // floor(3n / 2)
            if newest >= available {
                break;
            }
            let phase = &self.phases[(n * DOWN as u64 % UP as u64) as usize];
            let end = (newest as i64 - origin) as usize; // index of `newest` in the buffer
            let window = &buffer[end + 1 - TAPS..=end];
            let acc = dot(phase, window);
            let sample = acc.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16;
            out.extend_from_slice(&sample.to_le_bytes());
            self.next_output += 1;
        }
        self.consumed = available;
        let keep = buffer.len() - (TAPS - 1);
        self.history.clear();
        self.history.extend_from_slice(&buffer[keep..]);
    }

    /// One append's base64 audio, resampled, as base64.
    pub fn process_base64(&mut self, encoded: &[u8]) -> Result<String, Base64Error> {
        let pcm = decode_base64(encoded)?;
        let mut out = Vec::with_capacity(pcm.len() * UP / DOWN + 2);
        self.process(&pcm, &mut out);
        Ok(encode_base64(&out))
    }
}

/// Σ taps·samples with eight independent sums, which the compiler turns into vector code.
fn dot(taps: &[f32; TAPS], window: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for (t, w) in taps.chunks_exact(8).zip(window.chunks_exact(8)) {
        for lane in 0..8 {
            lanes[lane] += t[lane] * w[lane];
        }
    }
    lanes.iter().sum()
}

/// The modified Bessel function of the first kind, order 0 (for the Kaiser window).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..50 {
        term *= half / k as f64;
        sum += term * term;
        if term * term < sum * 1e-17 {
            break;
        }
    }
    sum
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn sextet(byte: u8) -> Option<u32> {
    Some(match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    } as u32)
}

/// Standard or URL-safe base64, padding optional; anything else is refused with its position.
pub fn decode_base64(encoded: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let body_len = encoded
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(0, |i| i + 1);
    if encoded.len() - body_len > 2 || body_len % 4 == 1 {
        return Err(Base64Error { position: body_len });
    }
    let body = &encoded[..body_len];
    let mut out = Vec::with_capacity(body_len * 3 / 4);
    let mut chunks = body.chunks_exact(4);
    for (index, chunk) in chunks.by_ref().enumerate() {
        let mut value = 0u32;
        for (offset, &byte) in chunk.iter().enumerate() {
            value = value << 6
                | sextet(byte).ok_or(Base64Error {
                    position: index * 4 + offset,
                })?;
        }
        out.extend_from_slice(&[(value >> 16) as u8, (value >> 8) as u8, value as u8]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let start = body_len - rest.len();
        let mut value = 0u32;
        for (offset, &byte) in rest.iter().enumerate() {
            value = value << 6
                | sextet(byte).ok_or(Base64Error {
                    position: start + offset,
                })?;
        }
        value <<= 6 * (4 - rest.len()) as u32;
        out.push((value >> 16) as u8);
        if rest.len() == 3 {
            out.push((value >> 8) as u8);
        }
    }
    Ok(out)
}

pub fn encode_base64(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    let mut chunks = bytes.chunks_exact(3);
    for chunk in chunks.by_ref() {
        let value = (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32;
        out.extend([18, 12, 6, 0].map(|shift| ALPHABET[(value >> shift & 63) as usize]));
    }
    match *chunks.remainder() {
        [a] => {
            let value = (a as u32) << 16;
            out.extend([
                ALPHABET[(value >> 18) as usize],
                ALPHABET[(value >> 12 & 63) as usize],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let value = (a as u32) << 16 | (b as u32) << 8;
            out.extend([
                ALPHABET[(value >> 18) as usize],
                ALPHABET[(value >> 12 & 63) as usize],
                ALPHABET[(value >> 6 & 63) as usize],
                b'=',
            ]);
        }
        _ => {}
    }
    // Only ASCII from the alphabet was written.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, samples: usize, amplitude: f64) -> Vec<u8> {
        (0..samples)
            .flat_map(|n| {
                ((amplitude * (2.0 * PI * hz * n as f64 / 24_000.0).sin()).round() as i16)
                    .to_le_bytes()
            })
            .collect()
    }

    fn samples(pcm: &[u8]) -> Vec<f64> {
        pcm.chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]) as f64)
            .collect()
    }

    fn rms(values: &[f64]) -> f64 {
        (values.iter().map(|v| v * v).sum::<f64>() / values.len() as f64).sqrt()
    }

    /// Output RMS over input RMS for a steady tone, after the filter has settled.
    fn gain(hz: f64) -> f64 {
        let input = tone(hz, 24_000, 10_000.0);
        let mut out = Vec::new();
        Resampler::new().process(&input, &mut out);
        let output = samples(&out);
        rms(&output[800..15_000]) / rms(&samples(&input)[1_200..22_500])
    }

    #[test]
    fn one_second_in_is_two_thirds_out() {
        let mut out = Vec::new();
        Resampler::new().process(&tone(440.0, 24_000, 1000.0), &mut out);
        assert_eq!(out.len(), 16_000 * 2);
    }

    #[test]
    fn a_1_khz_tone_passes_at_unit_gain() {
        let g = gain(1_000.0);
        assert!((g - 1.0).abs() < 0.01, "gain {g}");
    }

    #[test]
    fn speech_band_is_flat() {
        for hz in [100.0, 300.0, 3_000.0, 5_000.0, 6_000.0] {
            let g = gain(hz);
            assert!((g - 1.0).abs() < 0.03, "{hz} Hz: gain {g}");
        }
    }

    #[test]
    fn a_10_khz_tone_is_attenuated_by_40_db_or_more() {
        for hz in [8_500.0, 10_000.0, 11_000.0] {
            let db = 20.0 * gain(hz).log10();
            assert!(db <= -40.0, "{hz} Hz: {db:.1} dB");
        }
    }

    #[test]
    fn chunk_boundaries_change_nothing() {
        let input = tone(1_000.0, 4_801, 12_000.0);
        let mut whole = Vec::new();
        Resampler::new().process(&input, &mut whole);
        let mut pieces = Vec::new();
        let mut resampler = Resampler::new();
        // Odd sizes, a split sample, an empty append.
        for chunk in input.chunks(333).chain(std::iter::once(&[][..])) {
            resampler.process(chunk, &mut pieces);
        }
        assert_eq!(whole, pieces);
        let mut bytewise = Vec::new();
        let mut resampler = Resampler::new();
        for byte in input.chunks(1) {
            resampler.process(byte, &mut bytewise);
        }
        assert_eq!(whole, bytewise);
    }

    #[test]
    fn loud_input_clamps_instead_of_wrapping() {
        // A full-scale 100 Hz square: the low-passed edges overshoot, which must saturate.
        let square: Vec<u8> = (0..2_400)
            .flat_map(|n| {
                if (n / 120) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
                .to_le_bytes()
            })
            .collect();
        let mut out = Vec::new();
        Resampler::new().process(&square, &mut out);
        let values = samples(&out);
        assert!(values.contains(&(i16::MAX as f64)) && values.contains(&(i16::MIN as f64)));
        // Wrapping would flip the sign at every overshoot; clamping leaves one crossing per edge
        // (19 edges; the first outputs, still ringing around the zero history, are skipped).
        let settled = &values[40..];
        let crossings = settled
            .windows(2)
            .filter(|pair| (pair[0] < 0.0) != (pair[1] < 0.0))
            .count();
        assert_eq!(crossings, 19);
    }

    #[test]
    fn base64_round_trips_both_alphabets() {
        let data: Vec<u8> = (0..=255u8).chain(0..7).collect();
        for len in 0..data.len() {
            let encoded = encode_base64(&data[..len]);
            assert_eq!(decode_base64(encoded.as_bytes()).unwrap(), &data[..len]);
            let url_safe = encoded
                .replace('+', "-")
                .replace('/', "_")
                .trim_end_matches('=')
                .to_string();
            assert_eq!(decode_base64(url_safe.as_bytes()).unwrap(), &data[..len]);
        }
        assert_eq!(encode_base64(b"hi!?"), "aGkhPw==");
    }

    #[test]
    fn bad_base64_is_refused_with_its_position() {
        assert_eq!(decode_base64(b"AAA*AAAA"), Err(Base64Error { position: 3 }));
        assert_eq!(decode_base64(b"AAAAA"), Err(Base64Error { position: 5 }));
        assert!(decode_base64(b"AA===").is_err());
    }

    #[test]
    fn base64_in_base64_out() {
        let input = tone(1_000.0, 480, 5_000.0);
        let mut direct = Vec::new();
        Resampler::new().process(&input, &mut direct);
        let encoded = Resampler::new()
            .process_base64(encode_base64(&input).as_bytes())
            .unwrap();
        assert_eq!(decode_base64(encoded.as_bytes()).unwrap(), direct);
    }
}
