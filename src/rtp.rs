//! RTP forwarding for the WebRTC relay: header parsing (RFC 3550) and a bounded ring that carries
//! Opus packets from one peer to the other without decoding them.
//!
//! Packets enter the ring as they arrive, before any jitter buffer, and leave in the same order.
//! Nothing is held back to undo reordering, because every packet held adds delay to live speech;
//! the receiving peer's jitter buffer places packets by their timestamps anyway. The ring
//! re-stamps what it forwards so that the receiver sees one continuous stream: sequence numbers
//! count forwarded packets, so packets lost upstream or dropped here do not look like loss on the
//! next hop, and timestamps keep the source's timing but carry over its restarts (a new SSRC, or
//! a timestamp jump) instead of jumping with them.
//!
//! Storage is preallocated once: payloads are copied into a byte arena, each kept contiguous so it
//! can be lent out as a slice, and their header fields into a ring of fixed slots. Pushing and
//! popping never allocate.

use std::fmt;
use std::ops::Range;

const HEADER_LEN: usize = 12;

/// A jump ahead by less than this is a gap in the same numbering (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// A packet less than this far behind the highest sequence number is late, not a restart (A.1).
/// Below 128, so every late packet falls inside the duplicate window.
const MAX_MISORDER: u16 = 100;
/// Seconds of clock that a timestamp may move, from one packet to the next in sequence, before
/// it counts as a discontinuity and the output timeline is re-based.
const JUMP_SECONDS: u64 = 10;
/// The longest packet duration taken as a frame length. Opus packets carry at most 120 ms; longer
/// steps between consecutive packets are silence (DTX), not frames.
const MAX_FRAME_MS: u64 = 120;
/// The frame length assumed until one is observed: 20 ms, the WebRTC Opus default (960 at 48 kHz).
const DEFAULT_FRAME_MS: u64 = 20;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The fields of an RTP header that forwarding needs, and where the payload lies in the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrc_count: u8,
    /// Byte range of the payload: after the CSRC list and any header extension, before padding.
    pub payload: Range<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    TooShort,
    /// The version field is not 2.
    BadVersion(u8),
    /// The padding bit is set but the padding count is zero or reaches into the header.
    BadPadding,
    /// The CSRC list runs past the end of the packet.
    TruncatedCsrc,
    /// The header extension runs past the end of the packet.
    TruncatedExtension,
}

impl fmt::Display for RtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtpError::TooShort => f.write_str("RTP packet shorter than its 12-byte header"),
            RtpError::BadVersion(version) => write!(f, "RTP version {version}, expected 2"),
            RtpError::BadPadding => f.write_str("RTP padding count is zero or exceeds the payload"),
            RtpError::TruncatedCsrc => f.write_str("RTP CSRC list runs past the packet"),
            RtpError::TruncatedExtension => {
                f.write_str("RTP header extension runs past the packet")
            }
        }
    }
}

impl std::error::Error for RtpError {}

/// Parses an RTP header (RFC 3550 §5.1). The CSRC list and header extension are validated and
/// skipped; the payload is located, not copied.
pub fn parse(packet: &[u8]) -> Result<RtpPacket, RtpError> {
    let Some(fixed) = packet.first_chunk::<HEADER_LEN>() else {
        return Err(RtpError::TooShort);
    };
    let version = fixed[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let csrc_count = fixed[0] & 0x0f;
    let mut header_len = HEADER_LEN + 4 * usize::from(csrc_count);
    if packet.len() < header_len {
        return Err(RtpError::TruncatedCsrc);
    }
    if fixed[0] & 0x10 != 0 {
        let Some(extension) = packet.get(header_len..header_len + 4) else {
            return Err(RtpError::TruncatedExtension);
        };
        let words = usize::from(u16::from_be_bytes([extension[2], extension[3]]));
        header_len += 4 + 4 * words;
        if packet.len() < header_len {
            return Err(RtpError::TruncatedExtension);
        }
    }
    let mut end = packet.len();
    if fixed[0] & 0x20 != 0 {
        // The count includes itself, so it is at least 1, and it may not reach into the header.
        let padding = usize::from(packet[end - 1]);
        if padding == 0 || padding > end - header_len {
            return Err(RtpError::BadPadding);
        }
        end -= padding;
    }
    Ok(RtpPacket {
        marker: fixed[1] & 0x80 != 0,
        payload_type: fixed[1] & 0x7f,
        sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
        csrc_count,
        payload: header_len..end,
    })
}

/// What became of a pushed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued for forwarding, after dropping the oldest queued packets if that was needed for room.
    Queued,
    /// Its sequence number was seen recently; dropped.
    Duplicate,
    /// Not a valid RTP packet; dropped.
    Malformed(RtpError),
    /// Its payload is larger than the whole ring; dropped.
    Overflow,
}

/// A packet leaving the ring, re-stamped for the outgoing stream. The payload is lent from the
/// ring's storage until the next push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded<'a> {
    pub payload: &'a [u8],
    pub marker: bool,
    pub payload_type: u8,
    /// One more than the previous forwarded packet's, wrapping.
    pub sequence: u16,
    /// The source timestamp moved onto the continuous output timeline.
    pub timestamp: u32,
    /// As given to `push`, so the sender can tell how long the packet waited.
    pub arrival_ns: u64,
}

impl Forwarded<'_> {
    /// Writes the outgoing packet into `out`: a 12-byte header with the sender's `ssrc` (no CSRCs,
    /// extension or padding; those belong to the incoming hop) followed by the payload. Returns the
    /// length written, or `None` when `out` is too small.
    pub fn write_rtp(&self, ssrc: u32, out: &mut [u8]) -> Option<usize> {
        let len = HEADER_LEN + self.payload.len();
        let out = out.get_mut(..len)?;
        out[0] = 0x80;
        out[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7f);
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&ssrc.to_be_bytes());
        out[HEADER_LEN..].copy_from_slice(self.payload);
        Some(len)
    }
}

/// Counters of one ring. Every pushed packet ends up in exactly one of: forwarded, still queued,
/// `duplicates`, `overflow_dropped` or `malformed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Every packet pushed, malformed ones included.
    pub packets_in: u64,
    pub packets_out: u64,
    /// Payload bytes of the well-formed packets pushed.
    pub bytes_in: u64,
    /// Payload bytes popped.
    pub bytes_out: u64,
    pub duplicates: u64,
    /// Forwarded after a packet with a higher sequence number.
    pub reordered: u64,
    /// Expected minus received (RFC 3550 A.3), summed over sources: what the network lost, not
    /// what the ring dropped.
    pub lost: u64,
    /// Queued packets dropped to make room, and packets too large for the ring.
    pub overflow_dropped: u64,
    pub malformed: u64,
    /// Interarrival jitter (RFC 3550 §6.4.1), in timestamp units.
    pub jitter: u32,
    /// Every change counts, so a peer alternating between sources shows here.
    pub ssrc_changes: u64,
    /// The clock the timestamps, and so the jitter, are counted in.
    pub clock_rate: u32,
}

impl RingStats {
    pub fn jitter_ms(&self) -> f64 {
        f64::from(self.jitter) * 1000.0 / f64::from(self.clock_rate)
    }
}

/// Where a sequence number falls relative to the ones already received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// Ahead of the highest, by `advance`.
    Next {
        advance: u16,
    },
    /// Behind the highest and not seen before; `before_rebase` when it precedes the packet that
    /// last re-based the output timeline.
    Late {
        before_rebase: bool,
    },
    Duplicate,
    /// Too far from the highest to place: a stray packet, or the start of a new numbering.
    Jump,
}

/// Sequence state of the current source, after RFC 3550 A.1 without its probation period (the
/// WebRTC stack has already authenticated the packets).
#[derive(Clone, Copy, Debug, Default)]
struct Sequence {
    /// Extended sequence numbers. A source starts at 2^16 + its first sequence number, so the
    /// packets that arrive late from before its first one stay positive.
    base: u64,
    highest: u64,
    received: u64,
    /// Loss of the earlier sources and numberings, carried over on a restart.
    lost_before: u64,
    /// The sequence number that confirms a jump as a new numbering: the one after the jump.
    bad_seq: Option<u16>,
    /// Bit `i` set when `highest - i` has been received: the duplicate window.
    seen: u128,
    /// Late packets below this extended sequence number precede the last re-base of the output
    /// timeline, and take the offset from before it.
    rebased_at: u64,
}

impl Sequence {
    fn start(sequence: u16) -> Sequence {
        let extended = (1 << 16) + u64::from(sequence);
        Sequence {
            base: extended,
            highest: extended,
            received: 1,
            seen: 1,
            ..Sequence::default()
        }
    }

    /// Starts a new numbering at `sequence`, keeping the loss counted so far.
    fn restart(&mut self, sequence: u16) {
        let lost = self.lost();
        *self = Sequence::start(sequence);
        self.lost_before = lost;
    }

    fn lost(&self) -> u64 {
        let expected = self.highest - self.base + 1;
        self.lost_before + expected.saturating_sub(self.received)
    }

    fn observe(&mut self, sequence: u16) -> Order {
        let udelta = sequence.wrapping_sub(self.highest as u16);
        if udelta == 0 {
            return Order::Duplicate;
        }
        if udelta < MAX_DROPOUT {
            self.highest += u64::from(udelta);
            self.seen = if udelta < 128 {
                (self.seen << udelta) | 1
            } else {
                1
            };
            self.received += 1;
            return Order::Next { advance: udelta };
        }
        let behind = udelta.wrapping_neg();
        if behind < MAX_MISORDER {
            let bit = 1u128 << behind;
            if self.seen & bit != 0 {
                return Order::Duplicate;
            }
            self.seen |= bit;
            self.received += 1;
            let extended = self.highest - u64::from(behind);
            self.base = self.base.min(extended);
            return Order::Late {
                before_rebase: extended < self.rebased_at,
            };
        }
        match self.bad_seq {
            // The packet after the jump confirms it: a new numbering that began one packet ago.
            Some(confirming) if confirming == sequence => {
                self.restart(sequence.wrapping_sub(1));
                self.observe(sequence)
            }
            Some(confirming) if confirming == sequence.wrapping_add(1) => Order::Duplicate,
            _ => {
                self.bad_seq = Some(sequence.wrapping_add(1));
                Order::Jump
            }
        }
    }
}

/// Header fields of a queued packet and where its payload lies in the arena.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    start: usize,
    len: usize,
    /// `len` plus the arena bytes skipped just before the payload to keep it contiguous.
    span: usize,
    timestamp: u32,
    arrival_ns: u64,
    marker: bool,
    payload_type: u8,
}

/// One direction of a relayed audio stream: packets pushed as they arrive, popped by the sender.
///
/// Bounded by packet count and by payload bytes. When either bound is reached the oldest queued
/// packets are dropped: a sender that fell behind should catch up on fresh audio, not stale.
pub struct ForwardRing {
    /// Payloads, each contiguous; a payload that would cross the end starts over at 0 and the
    /// skipped tail counts as used until the packet leaves.
    arena: Box<[u8]>,
    slots: Box<[Slot]>,
    head: usize,
    queued: usize,
    /// Arena bytes taken: the queued payloads and the tails skipped before them.
    used: usize,
    /// End of the newest payload.
    write: usize,
    clock_rate: u32,
    started: bool,
    ssrc: u32,
    sequence: Sequence,
    next_sequence: u16,
    /// Output timestamp = input timestamp + offset (wrapping).
    offset: u32,
    /// The offset before the last re-base, for late packets from before it.
    previous_offset: u32,
    /// The newest packet that moved the stream forward: what a timestamp jump is measured from,
    /// and where a re-based timeline continues.
    last_in_ts: u32,
    last_out_ts: u32,
    last_arrival_ns: u64,
    /// Timestamp units per packet, from the last pair of consecutive packets.
    frame: u32,
    max_frame: u32,
    max_jump: u32,
    /// RFC 3550 A.8 state, on output timestamps so that re-basing does not read as jitter.
    transit: Option<u32>,
    jitter16: u64,
    stats: RingStats,
}

impl ForwardRing {
    /// A ring holding at most `capacity_packets` packets and `capacity_bytes` payload bytes, for a
    /// stream whose timestamps count `clock_rate` units per second (48000 for Opus).
    ///
    /// # Panics
    /// If `capacity_packets` or `clock_rate` is zero.
    pub fn new(capacity_packets: usize, capacity_bytes: usize, clock_rate: u32) -> ForwardRing {
        assert!(
            capacity_packets > 0,
            "a forwarding ring needs room for a packet"
        );
        assert!(clock_rate > 0, "the clock rate must be positive");
        let clock = u64::from(clock_rate);
        let clock_ms = |ms: u64| (clock * ms / 1000).clamp(1, i32::MAX as u64) as u32;
        ForwardRing {
            arena: vec![0; capacity_bytes].into_boxed_slice(),
            slots: vec![Slot::default(); capacity_packets].into_boxed_slice(),
            head: 0,
            queued: 0,
            used: 0,
            write: 0,
            clock_rate,
            started: false,
            ssrc: 0,
            sequence: Sequence::default(),
            next_sequence: 0,
            offset: 0,
            previous_offset: 0,
            last_in_ts: 0,
            last_out_ts: 0,
            last_arrival_ns: 0,
            frame: clock_ms(DEFAULT_FRAME_MS),
            max_frame: clock_ms(MAX_FRAME_MS),
            max_jump: clock_ms(JUMP_SECONDS * 1000),
            transit: None,
            jitter16: 0,
            stats: RingStats {
                clock_rate,
                ..RingStats::default()
            },
        }
    }

    /// Takes one packet as it arrived off the wire; `arrival_ns` is any monotonic clock.
    pub fn push(&mut self, packet: &[u8], arrival_ns: u64) -> Push {
        self.stats.packets_in += 1;
        let rtp = match parse(packet) {
            Ok(rtp) => rtp,
            Err(error) => {
                self.stats.malformed += 1;
                return Push::Malformed(error);
            }
        };
        let payload = &packet[rtp.payload.clone()];
        self.stats.bytes_in += payload.len() as u64;
        let Some(timestamp) = self.restamp(&rtp, arrival_ns) else {
            self.stats.duplicates += 1;
            return Push::Duplicate;
        };
        self.update_jitter(timestamp, arrival_ns);
        if payload.len() > self.arena.len() {
            self.stats.overflow_dropped += 1;
            return Push::Overflow;
        }
        self.enqueue(payload, &rtp, timestamp, arrival_ns);
        Push::Queued
    }

    /// The oldest queued packet, numbered next in the outgoing stream.
    pub fn pop(&mut self) -> Option<Forwarded<'_>> {
        if self.queued == 0 {
            return None;
        }
        let slot = self.take_oldest();
        let sequence = self.next_sequence;
        self.next_sequence = sequence.wrapping_add(1);
        self.stats.packets_out += 1;
        self.stats.bytes_out += slot.len as u64;
        Some(Forwarded {
            payload: &self.arena[slot.start..slot.start + slot.len],
            marker: slot.marker,
            payload_type: slot.payload_type,
            sequence,
            timestamp: slot.timestamp,
            arrival_ns: slot.arrival_ns,
        })
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub fn stats(&self) -> RingStats {
        RingStats {
            lost: if self.started {
                self.sequence.lost()
            } else {
                0
            },
            jitter: u32::try_from(self.jitter16 >> 4).unwrap_or(u32::MAX),
            ..self.stats
        }
    }

    /// The output timestamp of a packet, or `None` for a duplicate.
    fn restamp(&mut self, rtp: &RtpPacket, arrival_ns: u64) -> Option<u32> {
        if !self.started {
            // The first packet keeps its numbering and timestamp: an undisturbed stream passes
            // through unchanged.
            self.started = true;
            self.ssrc = rtp.ssrc;
            self.sequence = Sequence::start(rtp.sequence);
            self.next_sequence = rtp.sequence;
            self.set_last(rtp.timestamp, rtp.timestamp, arrival_ns);
            return Some(rtp.timestamp);
        }
        if rtp.ssrc != self.ssrc {
            self.ssrc = rtp.ssrc;
            self.stats.ssrc_changes += 1;
            self.sequence.restart(rtp.sequence);
            return Some(self.rebase(rtp.timestamp, arrival_ns, 1));
        }
        match self.sequence.observe(rtp.sequence) {
            Order::Duplicate => None,
            Order::Late { before_rebase } => {
                self.stats.reordered += 1;
                let offset = if before_rebase {
                    self.previous_offset
                } else {
                    self.offset
                };
                Some(rtp.timestamp.wrapping_add(offset))
            }
            Order::Next { advance } => {
                let step = rtp.timestamp.wrapping_sub(self.last_in_ts);
                if advance == 1 && step > 0 && step <= self.max_frame {
                    self.frame = step;
                }
                Some(self.advance(rtp.timestamp, arrival_ns, advance))
            }
            Order::Jump => Some(self.advance(rtp.timestamp, arrival_ns, 1)),
        }
    }

    /// Restamps a packet that moves the stream forward, by `frames` packets as far as the
    /// numbering tells; re-bases when its timestamp jumped.
    fn advance(&mut self, in_ts: u32, arrival_ns: u64, frames: u16) -> u32 {
        let jump = (in_ts.wrapping_sub(self.last_in_ts) as i32).unsigned_abs();
        if jump > self.max_jump {
            self.sequence.rebased_at = self.sequence.highest;
            return self.rebase(in_ts, arrival_ns, frames);
        }
        let out_ts = in_ts.wrapping_add(self.offset);
        self.set_last(in_ts, out_ts, arrival_ns);
        out_ts
    }

    /// Continues the output timeline from the newest packet, by at least `frames` frames and by
    /// as many whole frames as the arrival gap spans, so that a source resuming after a pause
    /// keeps its real timing.
    fn rebase(&mut self, in_ts: u32, arrival_ns: u64, frames: u16) -> u32 {
        let frame = u64::from(self.frame);
        let elapsed = ticks(
            arrival_ns.saturating_sub(self.last_arrival_ns),
            self.clock_rate,
        );
        let step = (elapsed / frame).max(u64::from(frames)).max(1) * frame;
        let out_ts = self.last_out_ts.wrapping_add(step as u32);
        self.previous_offset = self.offset;
        self.offset = out_ts.wrapping_sub(in_ts);
        self.set_last(in_ts, out_ts, arrival_ns);
        out_ts
    }

    fn set_last(&mut self, in_ts: u32, out_ts: u32, arrival_ns: u64) {
        self.last_in_ts = in_ts;
        self.last_out_ts = out_ts;
        self.last_arrival_ns = arrival_ns;
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, kept scaled by 16.
    fn update_jitter(&mut self, out_ts: u32, arrival_ns: u64) {
        let transit = (ticks(arrival_ns, self.clock_rate) as u32).wrapping_sub(out_ts);
        if let Some(previous) = self.transit.replace(transit) {
            let d = u64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
            self.jitter16 = self.jitter16 + d - ((self.jitter16 + 8) >> 4);
        }
    }

    fn enqueue(&mut self, payload: &[u8], rtp: &RtpPacket, timestamp: u32, arrival_ns: u64) {
        let len = payload.len();
        let capacity = self.arena.len();
        let (start, skipped) = loop {
            if self.queued == 0 {
                self.write = 0;
            }
            let (start, skipped) = if self.write + len <= capacity {
                (self.write, 0)
            } else {
                (0, capacity - self.write)
            };
            // The free space runs from `write` round to the oldest payload; this takes its prefix.
            if self.queued < self.slots.len() && self.used + skipped + len <= capacity {
                break (start, skipped);
            }
            self.take_oldest();
            self.stats.overflow_dropped += 1;
        };
        self.arena[start..start + len].copy_from_slice(payload);
        let mut index = self.head + self.queued;
        if index >= self.slots.len() {
            index -= self.slots.len();
        }
        self.slots[index] = Slot {
            start,
            len,
            span: skipped + len,
            timestamp,
            arrival_ns,
            marker: rtp.marker,
            payload_type: rtp.payload_type,
        };
        self.queued += 1;
        self.used += skipped + len;
        self.write = start + len;
    }

    fn take_oldest(&mut self) -> Slot {
        let slot = self.slots[self.head];
        self.head += 1;
        if self.head == self.slots.len() {
            self.head = 0;
        }
        self.queued -= 1;
        self.used -= slot.span;
        slot
    }
}

/// Nanoseconds as clock units, without overflowing for any input.
fn ticks(ns: u64, clock_rate: u32) -> u64 {
    let clock = u64::from(clock_rate);
    (ns / NANOS_PER_SECOND)
        .wrapping_mul(clock)
        .wrapping_add(ns % NANOS_PER_SECOND * clock / NANOS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PT: u8 = 111;
    const MS: u64 = 1_000_000;

    /// A packet with the fixed header only.
    fn packet(sequence: u16, timestamp: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, PT];
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out.extend_from_slice(&ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Forwarded packets, copied out of the ring.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Out {
        payload: Vec<u8>,
        sequence: u16,
        timestamp: u32,
    }

    fn drain(ring: &mut ForwardRing) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(packet) = ring.pop() {
            out.push(Out {
                payload: packet.payload.to_vec(),
                sequence: packet.sequence,
                timestamp: packet.timestamp,
            });
        }
        out
    }

    fn sequences(out: &[Out]) -> Vec<u16> {
        out.iter().map(|packet| packet.sequence).collect()
    }

    fn timestamps(out: &[Out]) -> Vec<u32> {
        out.iter().map(|packet| packet.timestamp).collect()
    }

    fn opus_ring() -> ForwardRing {
        ForwardRing::new(64, 64 * 1500, 48000)
    }

    /// Pushes `(sequence, timestamp, ssrc)` packets 20 ms apart, starting at 0.
    fn feed(ring: &mut ForwardRing, packets: &[(u16, u32, u32)]) -> Vec<Push> {
        packets
            .iter()
            .enumerate()
            .map(|(i, &(sequence, timestamp, ssrc))| {
                let payload = [sequence as u8; 4];
                ring.push(
                    &packet(sequence, timestamp, ssrc, &payload),
                    i as u64 * 20 * MS,
                )
            })
            .collect()
    }

    #[test]
    fn parses_a_plain_packet() {
        let mut bytes = packet(0x1234, 0xdead_beef, 0x0102_0304, b"opus");
        bytes[1] |= 0x80;
        let rtp = parse(&bytes).unwrap();
        assert_eq!(
            rtp,
            RtpPacket {
                marker: true,
                payload_type: PT,
                sequence: 0x1234,
                timestamp: 0xdead_beef,
                ssrc: 0x0102_0304,
                csrc_count: 0,
                payload: 12..16,
            }
        );
        assert_eq!(parse(&packet(1, 2, 3, b"")).unwrap().payload, 12..12);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut bytes = packet(7, 960, 42, b"");
        bytes[0] |= 0x02;
        bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        let rtp = parse(&[bytes.as_slice(), b"opus"].concat()).unwrap();
        assert_eq!((rtp.csrc_count, rtp.payload), (2, 20..24));

        // One-byte-header extension (profile 0xBEDE) of two words, then the payload.
        let mut bytes = packet(7, 960, 42, b"");
        bytes[0] |= 0x10;
        bytes.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x10, 0xff, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(b"opus");
        assert_eq!(parse(&bytes).unwrap().payload, 24..28);

        // CSRCs, an empty extension and three bytes of padding together.
        let mut bytes = packet(7, 960, 42, b"");
        bytes[0] |= 0x20 | 0x10 | 0x01;
        bytes.extend_from_slice(&[9, 9, 9, 9, 0x10, 0x00, 0, 0]);
        bytes.extend_from_slice(b"opus\0\0\x03");
        let rtp = parse(&bytes).unwrap();
        assert_eq!((rtp.csrc_count, rtp.payload.clone()), (1, 20..24));
        assert_eq!(&bytes[rtp.payload], b"opus");

        // Padding that fills everything after the header.
        let mut bytes = packet(7, 960, 42, b"\0\x02");
        bytes[0] |= 0x20;
        assert_eq!(parse(&bytes).unwrap().payload, 12..12);
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(parse(&[]), Err(RtpError::TooShort));
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort));
        for version in [0u8, 1, 3] {
            let mut bytes = packet(1, 2, 3, b"x");
            bytes[0] = (version << 6) | (bytes[0] & 0x3f);
            assert_eq!(parse(&bytes), Err(RtpError::BadVersion(version)));
        }

        let mut bytes = packet(1, 2, 3, b"abc");
        bytes[0] |= 0x02;
        assert_eq!(parse(&bytes), Err(RtpError::TruncatedCsrc));
        bytes.extend_from_slice(&[0; 5]);
        assert_eq!(parse(&bytes).unwrap().payload, 20..20);

        let mut bytes = packet(1, 2, 3, b"\xbe\xde\0");
        bytes[0] |= 0x10;
        assert_eq!(parse(&bytes), Err(RtpError::TruncatedExtension));
        bytes.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(parse(&bytes), Err(RtpError::TruncatedExtension));
        bytes.push(0);
        assert_eq!(parse(&bytes).unwrap().payload, 20..20);

        let mut bytes = packet(1, 2, 3, b"opus\0");
        bytes[0] |= 0x20;
        assert_eq!(parse(&bytes), Err(RtpError::BadPadding));
        *bytes.last_mut().unwrap() = 6;
        assert_eq!(parse(&bytes), Err(RtpError::BadPadding));
        *bytes.last_mut().unwrap() = 5;
        assert_eq!(parse(&bytes).unwrap().payload, 12..12);
        // A header alone cannot carry padding: its last byte is the SSRC's.
        let mut bytes = packet(1, 2, 0x0000_0001, b"");
        bytes[0] |= 0x20;
        assert_eq!(parse(&bytes), Err(RtpError::BadPadding));
    }

    #[test]
    fn an_undisturbed_stream_passes_through_unchanged() {
        let mut ring = opus_ring();
        let mut bytes = packet(500, 48_000, 9, &[7; 80]);
        bytes[1] |= 0x80;
        assert_eq!(ring.push(&bytes, 123), Push::Queued);
        assert_eq!(ring.len(), 1);
        let forwarded = ring.pop().unwrap();
        assert_eq!(
            forwarded,
            Forwarded {
                payload: &[7; 80],
                marker: true,
                payload_type: PT,
                sequence: 500,
                timestamp: 48_000,
                arrival_ns: 123,
            }
        );
        let mut out = [0u8; 1500];
        let len = forwarded.write_rtp(0xabcd, &mut out).unwrap();
        assert_eq!(len, 92);
        let mut expected = bytes.clone();
        expected[8..12].copy_from_slice(&0xabcd_u32.to_be_bytes());
        assert_eq!(&out[..len], expected.as_slice());
        assert_eq!(forwarded.write_rtp(0xabcd, &mut out[..91]), None);
        assert!(ring.pop().is_none());
        assert!(ring.is_empty());

        let stats = ring.stats();
        assert_eq!((stats.packets_in, stats.packets_out), (1, 1));
        assert_eq!((stats.bytes_in, stats.bytes_out), (80, 80));
        assert_eq!(stats.lost, 0);
    }

    #[test]
    fn output_sequence_is_continuous_across_input_gaps() {
        let mut ring = opus_ring();
        feed(
            &mut ring,
            &[(10, 0, 1), (11, 960, 1), (15, 4800, 1), (16, 5760, 1)],
        );
        let out = drain(&mut ring);
        assert_eq!(sequences(&out), [10, 11, 12, 13]);
        // Timestamps keep the gap, so the receiver conceals the missing 60 ms.
        assert_eq!(timestamps(&out), [0, 960, 4800, 5760]);
        assert_eq!(ring.stats().lost, 3);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut ring = opus_ring();
        feed(
            &mut ring,
            &[(65534, 0, 1), (65535, 960, 1), (0, 1920, 1), (1, 2880, 1)],
        );
        assert_eq!(sequences(&drain(&mut ring)), [65534, 65535, 0, 1]);
        let stats = ring.stats();
        assert_eq!((stats.lost, stats.reordered, stats.duplicates), (0, 0, 0));

        // Loss straddling the wrap, then a late packet from before it.
        let mut ring = opus_ring();
        feed(&mut ring, &[(65533, 0, 1), (2, 4800, 1)]);
        assert_eq!(ring.stats().lost, 4);
        feed(&mut ring, &[(65535, 1920, 1)]);
        let stats = ring.stats();
        assert_eq!((stats.lost, stats.reordered), (3, 1));
        assert_eq!(sequences(&drain(&mut ring)), [65533, 65534, 65535]);
    }

    #[test]
    fn timestamps_wrap_without_re_basing() {
        let mut ring = opus_ring();
        let start = u32::MAX - 959;
        feed(
            &mut ring,
            &[(1, start - 960, 1), (2, start, 1), (3, 0, 1), (4, 960, 1)],
        );
        assert_eq!(timestamps(&drain(&mut ring)), [start - 960, start, 0, 960]);
    }

    #[test]
    fn a_new_ssrc_continues_the_timeline() {
        let mut ring = opus_ring();
        // Source 1 loses seq 2; source 2 starts elsewhere entirely and loses two packets.
        feed(
            &mut ring,
            &[
                (1, 1000, 1),
                (3, 2920, 1),
                (4, 3880, 1),
                (40000, 7_000_000, 2),
                (40003, 7_002_880, 2),
            ],
        );
        let out = drain(&mut ring);
        assert_eq!(sequences(&out), [1, 2, 3, 4, 5]);
        assert_eq!(timestamps(&out), [1000, 2920, 3880, 4840, 7720]);
        let stats = ring.stats();
        assert_eq!((stats.ssrc_changes, stats.lost), (1, 3));
    }

    #[test]
    fn a_new_ssrc_after_a_pause_keeps_the_pause() {
        let mut ring = opus_ring();
        ring.push(&packet(1, 0, 1, b"a"), 0);
        ring.push(&packet(2, 960, 1, b"b"), 20 * MS);
        // 3 s later (plus a little jitter): 150 frames of 960.
        ring.push(&packet(9, 123_456, 2, b"c"), 3027 * MS);
        assert_eq!(timestamps(&drain(&mut ring)), [0, 960, 960 + 150 * 960]);
    }

    #[test]
    fn the_observed_frame_length_is_the_re_basing_step() {
        let mut ring = opus_ring();
        // 10 ms packets; then a DTX step of 400 ms between consecutive packets, not a frame.
        for (sequence, timestamp, ssrc, arrival_ms) in [
            (1, 0, 1, 0),
            (2, 480, 1, 10),
            (3, 19_680, 1, 410),
            (4, 1_000_000, 2, 420),
        ] {
            ring.push(&packet(sequence, timestamp, ssrc, b""), arrival_ms * MS);
        }
        assert_eq!(timestamps(&drain(&mut ring)), [0, 480, 19_680, 20_160]);
    }

    #[test]
    fn timestamp_jumps_beyond_ten_seconds_are_re_based() {
        let mut ring = opus_ring();
        let forward = 960 + 11 * 48_000;
        feed(
            &mut ring,
            &[
                (1, 0, 1),
                (2, 960, 1),
                (3, forward, 1),
                (4, forward + 960, 1),
            ],
        );
        assert_eq!(timestamps(&drain(&mut ring)), [0, 960, 1920, 2880]);

        let mut ring = opus_ring();
        let backward = 960u32.wrapping_sub(11 * 48_000);
        feed(
            &mut ring,
            &[
                (1, 0, 1),
                (2, 960, 1),
                (3, backward, 1),
                (4, backward + 960, 1),
            ],
        );
        assert_eq!(timestamps(&drain(&mut ring)), [0, 960, 1920, 2880]);

        // Nine seconds is within the threshold and passes through.
        let mut ring = opus_ring();
        let nine = 960 + 9 * 48_000;
        feed(&mut ring, &[(1, 0, 1), (2, 960, 1), (3, nine, 1)]);
        assert_eq!(timestamps(&drain(&mut ring)), [0, 960, nine]);
        assert_eq!(ring.stats().ssrc_changes, 0);
    }

    #[test]
    fn a_re_base_leaves_room_for_skipped_packets_and_late_ones_keep_their_time() {
        let mut ring = opus_ring();
        let jumped = 2880 + 20 * 48_000;
        feed(
            &mut ring,
            &[
                (1, 0, 1),
                (2, 960, 1),
                (4, jumped, 1),
                (3, 1920, 1),
                (5, jumped + 960, 1),
            ],
        );
        let out = drain(&mut ring);
        assert_eq!(sequences(&out), [1, 2, 3, 4, 5]);
        assert_eq!(timestamps(&out), [0, 960, 2880, 1920, 3840]);
        let stats = ring.stats();
        assert_eq!((stats.reordered, stats.lost), (1, 0));
    }

    #[test]
    fn late_packets_are_forwarded_in_arrival_order() {
        let mut ring = opus_ring();
        let pushes = feed(
            &mut ring,
            &[
                (1, 0, 1),
                (2, 960, 1),
                (4, 2880, 1),
                (3, 1920, 1),
                (5, 3840, 1),
            ],
        );
        assert!(pushes.iter().all(|push| *push == Push::Queued));
        let out = drain(&mut ring);
        assert_eq!(sequences(&out), [1, 2, 3, 4, 5]);
        assert_eq!(timestamps(&out), [0, 960, 2880, 1920, 3840]);
        assert_eq!(out[3].payload, [3; 4]);
        let stats = ring.stats();
        assert_eq!((stats.reordered, stats.lost, stats.duplicates), (1, 0, 0));

        // A packet from before the first one received extends the expected range.
        let mut ring = opus_ring();
        feed(&mut ring, &[(10, 9600, 1), (8, 7680, 1)]);
        let stats = ring.stats();
        assert_eq!((stats.reordered, stats.lost), (1, 1));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut ring = opus_ring();
        let pushes = feed(
            &mut ring,
            &[(1, 0, 1), (2, 960, 1), (2, 960, 1), (3, 1920, 1), (1, 0, 1)],
        );
        use Push::*;
        assert_eq!(pushes, [Queued, Queued, Duplicate, Queued, Duplicate]);
        assert_eq!(sequences(&drain(&mut ring)), [1, 2, 3]);

        // Across the wrap, and a late packet seen twice.
        let mut ring = opus_ring();
        let pushes = feed(
            &mut ring,
            &[
                (65535, 0, 1),
                (1, 1920, 1),
                (65535, 0, 1),
                (0, 960, 1),
                (0, 960, 1),
            ],
        );
        assert_eq!(pushes, [Queued, Queued, Duplicate, Queued, Duplicate]);
        let stats = ring.stats();
        assert_eq!((stats.duplicates, stats.reordered, stats.lost), (2, 1, 0));
        assert_eq!(
            stats.packets_out + ring.len() as u64,
            stats.packets_in - stats.duplicates
        );

        // The window reaches 99 behind the highest.
        let mut ring = opus_ring();
        feed(&mut ring, &[(1, 0, 1)]);
        for sequence in 2..=100u16 {
            ring.push(&packet(sequence, u32::from(sequence) * 960, 1, b""), 0);
        }
        assert_eq!(ring.push(&packet(1, 0, 1, b""), 0), Duplicate);
    }

    #[test]
    fn loss_is_counted_per_source_and_recovered_by_late_packets() {
        let mut ring = opus_ring();
        let stream: Vec<_> = [1u16, 2, 5, 6, 7, 8, 9, 10]
            .iter()
            .map(|&sequence| (sequence, u32::from(sequence) * 960, 1))
            .collect();
        feed(&mut ring, &stream);
        assert_eq!(ring.stats().lost, 2);
        feed(&mut ring, &[(3, 2880, 1)]);
        assert_eq!(ring.stats().lost, 1);
        // A new source starts its own count; the old one's loss stays.
        feed(&mut ring, &[(100, 0, 2), (103, 2880, 2)]);
        assert_eq!(ring.stats().lost, 3);
    }

    #[test]
    fn a_sequence_jump_is_forwarded_and_restarts_the_numbering_once_confirmed() {
        let mut ring = opus_ring();
        let pushes = feed(
            &mut ring,
            &[
                (100, 0, 1),
                (101, 960, 1),
                (20000, 1920, 1),
                (20000, 1920, 1),
            ],
        );
        // A stray is forwarded (once) but not counted against the old numbering.
        assert_eq!(pushes[2..], [Push::Queued, Push::Duplicate]);
        assert_eq!(ring.stats().lost, 0);
        feed(&mut ring, &[(102, 2880, 1), (103, 3840, 1)]);
        assert_eq!(ring.stats().lost, 0);
        // A jump confirmed by the next packet is a new numbering.
        feed(
            &mut ring,
            &[(30000, 4800, 1), (30001, 5760, 1), (30003, 7680, 1)],
        );
        let out = drain(&mut ring);
        assert_eq!(sequences(&out), (100..108).collect::<Vec<_>>());
        let stats = ring.stats();
        assert_eq!(
            (stats.lost, stats.duplicates, stats.ssrc_changes),
            (1, 1, 0)
        );
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        // Transit times 0, 0, 240, 0: |D| = 0, 240, 240.
        // J16: 0 → 0 + 0 - 0 = 0 → 0 + 240 - 0 = 240 → 240 + 240 - 15 = 465; J = 465 / 16 = 29.
        let mut ring = opus_ring();
        for (sequence, arrival_ms) in [(0u16, 0u64), (1, 20), (2, 45), (3, 60)] {
            let timestamp = u32::from(sequence) * 960;
            ring.push(&packet(sequence, timestamp, 1, b""), arrival_ms * MS);
        }
        let stats = ring.stats();
        assert_eq!(stats.jitter, 29);
        assert!((stats.jitter_ms() - 29.0 / 48.0).abs() < 1e-12);

        // A steady stream re-based onto a new source adds no jitter.
        let mut ring = opus_ring();
        for i in 0..10u16 {
            let ssrc = if i < 5 { 1 } else { 2 };
            let timestamp = if i < 5 { 0 } else { 3_000_000 } + u32::from(i) * 960;
            ring.push(&packet(i, timestamp, ssrc, b""), u64::from(i) * 20 * MS);
        }
        assert_eq!(ring.stats().jitter, 0);
    }

    #[test]
    fn a_full_ring_drops_the_oldest() {
        let mut ring = ForwardRing::new(3, 1500, 48000);
        let stream: Vec<_> = (1..=5u16)
            .map(|sequence| (sequence, u32::from(sequence) * 960, 1))
            .collect();
        let pushes = feed(&mut ring, &stream);
        assert!(pushes.iter().all(|push| *push == Push::Queued));
        assert_eq!(ring.len(), 3);
        let out = drain(&mut ring);
        assert_eq!(
            out.iter()
                .map(|packet| packet.payload[0])
                .collect::<Vec<_>>(),
            [3, 4, 5]
        );
        // Renumbered from the first forwarded packet; the timestamps show the 40 ms dropped.
        assert_eq!(sequences(&out), [1, 2, 3]);
        assert_eq!(timestamps(&out), [2880, 3840, 4800]);
        let stats = ring.stats();
        assert_eq!(
            (stats.overflow_dropped, stats.packets_out, stats.lost),
            (2, 3, 0)
        );
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_rejects_what_can_never_fit() {
        let mut ring = ForwardRing::new(16, 250, 48000);
        for sequence in 0..3u16 {
            let payload = [sequence as u8; 80];
            let push = ring.push(&packet(sequence, 0, 1, &payload), 0);
            assert_eq!(push, Push::Queued);
        }
        // 240 of 250 bytes used; the next 80 do not fit before the end and wrap to the start,
        // which needs the oldest gone.
        assert_eq!(ring.push(&packet(3, 0, 1, &[3; 80]), 0), Push::Queued);
        assert_eq!((ring.len(), ring.stats().overflow_dropped), (3, 1));
        // Too large for the ring: dropped, the queue untouched.
        assert_eq!(ring.push(&packet(4, 0, 1, &[4; 251]), 0), Push::Overflow);
        assert_eq!((ring.len(), ring.stats().overflow_dropped), (3, 2));
        // Exactly the ring's size fits, after everything else is dropped.
        assert_eq!(ring.push(&packet(5, 0, 1, &[5; 250]), 0), Push::Queued);
        let out = drain(&mut ring);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, [5; 250]);

        // Payloads survive the wrap intact.
        let mut ring = ForwardRing::new(16, 250, 48000);
        let mut popped = Vec::new();
        for sequence in 0..20u16 {
            let payload = vec![sequence as u8; 60 + usize::from(sequence) % 3 * 10];
            ring.push(&packet(sequence, 0, 1, &payload), 0);
            if sequence % 2 == 1 {
                popped.push(ring.pop().unwrap().payload.to_vec());
            }
        }
        popped.extend(drain(&mut ring).into_iter().map(|packet| packet.payload));
        let stats = ring.stats();
        assert_eq!(popped.len() as u64, 20 - stats.overflow_dropped);
        for payload in &popped {
            assert!(payload.iter().all(|byte| *byte == payload[0]));
            assert_eq!(payload.len(), 60 + usize::from(payload[0]) % 3 * 10);
        }
        assert!(popped.windows(2).all(|pair| pair[0][0] < pair[1][0]));
    }

    #[test]
    fn malformed_and_empty_packets() {
        let mut ring = ForwardRing::new(4, 0, 48000);
        assert_eq!(
            ring.push(&[0x40; 20], 0),
            Push::Malformed(RtpError::BadVersion(1))
        );
        assert_eq!(ring.push(&packet(1, 0, 1, b""), 0), Push::Queued);
        assert_eq!(ring.push(&packet(2, 960, 1, b"x"), 0), Push::Overflow);
        let stats = ring.stats();
        assert_eq!((stats.malformed, stats.overflow_dropped), (1, 1));
        assert_eq!(drain(&mut ring)[0].payload, b"");
    }

    /// A generated stream: which packets arrive, in what order, and which twice.
    #[derive(Clone, Debug)]
    struct Stream {
        first_sequence: u16,
        first_timestamp: u32,
        /// Index into the undisturbed stream, and whether this arrival repeats the previous one.
        arrivals: Vec<(u32, bool)>,
    }

    fn stream() -> impl Strategy<Value = Stream> {
        (
            any::<u16>(),
            any::<u32>(),
            prop::collection::vec(
                (
                    prop::bool::weighted(0.8),
                    0u32..32,
                    prop::bool::weighted(0.1),
                ),
                1..300,
            ),
        )
            .prop_map(|(first_sequence, first_timestamp, packets)| {
                // Drop some, displace the rest by up to 31 places, repeat some right away.
                let mut kept: Vec<(u32, u32, bool)> = packets
                    .iter()
                    .enumerate()
                    .filter(|(_, (keep, _, _))| *keep)
                    .map(|(i, &(_, shift, repeat))| (i as u32 + shift, i as u32, repeat))
                    .collect();
                kept.sort();
                let mut arrivals = Vec::new();
                for (_, index, repeat) in kept {
                    arrivals.push((index, false));
                    if repeat {
                        arrivals.push((index, true));
                    }
                }
                Stream {
                    first_sequence,
                    first_timestamp,
                    arrivals,
                }
            })
    }

    /// Pushes that reach every branch (garbage; valid headers from two sources, with sequence
    /// numbers and timestamps from small ranges for duplicates, reordering and jumps), and pops.
    fn event() -> impl Strategy<Value = Option<(Vec<u8>, u64)>> {
        let header = (
            0u16..8,
            prop::sample::select(vec![0u32, 960, 1920, 2_000_000_000, u32::MAX - 500]),
            1u32..3,
            prop::collection::vec(any::<u8>(), 0..120),
        )
            .prop_map(|(sequence, timestamp, ssrc, payload)| {
                packet(sequence.wrapping_sub(3), timestamp, ssrc, &payload)
            });
        let garbage = prop::collection::vec(any::<u8>(), 0..40);
        let mutated = (header.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |(mut bytes, index, value)| {
                let at = index.index(bytes.len());
                bytes[at] = value;
                bytes
            },
        );
        prop_oneof![
            1 => Just(None),
            4 => (prop_oneof![3 => header, 1 => garbage, 2 => mutated], any::<u64>())
                .prop_map(Some),
        ]
    }

    fn check_sequence(next: &mut Option<u16>, sequence: u16) -> Result<(), TestCaseError> {
        if let Some(expected) = *next {
            prop_assert_eq!(sequence, expected);
        }
        *next = Some(sequence.wrapping_add(1));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_and_stays_in_bounds(
            mut bytes in prop::collection::vec(any::<u8>(), 0..200),
            flags in any::<u8>(),
        ) {
            // Version 2 with random flags, so that most inputs get past the first check.
            if let Some(first) = bytes.first_mut() {
                *first = 0x80 | (flags & 0x3f);
            }
            if let Ok(rtp) = parse(&bytes) {
                prop_assert!(rtp.payload.start >= HEADER_LEN + 4 * usize::from(rtp.csrc_count));
                prop_assert!(rtp.payload.start <= rtp.payload.end);
                prop_assert!(rtp.payload.end <= bytes.len());
            }
        }

        #[test]
        fn write_rtp_round_trips(
            payload in prop::collection::vec(any::<u8>(), 0..200),
            marker in any::<bool>(),
            payload_type in 0u8..128,
            sequence in any::<u16>(),
            timestamp in any::<u32>(),
            ssrc in any::<u32>(),
        ) {
            let forwarded = Forwarded {
                payload: &payload, marker, payload_type, sequence, timestamp, arrival_ns: 0,
            };
            let mut out = [0u8; 212];
            let len = forwarded.write_rtp(ssrc, &mut out).unwrap();
            let rtp = parse(&out[..len]).unwrap();
            prop_assert_eq!(rtp, RtpPacket {
                marker, payload_type, sequence, timestamp, ssrc, csrc_count: 0, payload: 12..len,
            });
        }

        #[test]
        fn any_input_keeps_the_accounting(
            events in prop::collection::vec(event(), 0..200),
            capacity_packets in 1usize..8,
            capacity_bytes in 0usize..400,
        ) {
            let mut ring = ForwardRing::new(capacity_packets, capacity_bytes, 48000);
            let mut next = None;
            for event in events {
                match event {
                    Some((bytes, arrival_ns)) => { ring.push(&bytes, arrival_ns); }
                    None => {
                        while let Some(packet) = ring.pop() {
                            check_sequence(&mut next, packet.sequence)?;
                        }
                    }
                }
                prop_assert!(ring.len() <= capacity_packets);
                prop_assert!(ring.used <= capacity_bytes);
            }
            while let Some(packet) = ring.pop() {
                check_sequence(&mut next, packet.sequence)?;
            }
            let stats = ring.stats();
            prop_assert_eq!(
                stats.packets_out,
                stats.packets_in - stats.duplicates - stats.overflow_dropped - stats.malformed
            );
        }

        #[test]
        fn drops_reordering_and_repeats_are_accounted(
            stream in stream(),
            capacity_packets in 1usize..400,
            pops in prop::collection::vec(0usize..4, 1..50),
        ) {
            let mut ring = ForwardRing::new(capacity_packets, 1500 * 400, 48000);
            let mut forwarded = Vec::new();
            let mut next = None;
            for (n, &(index, _)) in stream.arrivals.iter().enumerate() {
                let sequence = stream.first_sequence.wrapping_add(index as u16);
                let timestamp = stream.first_timestamp.wrapping_add(index * 960);
                let payload = index.to_be_bytes();
                ring.push(&packet(sequence, timestamp, 7, &payload), n as u64 * 20 * MS);
                for _ in 0..pops[n % pops.len()] {
                    if let Some(packet) = ring.pop() {
                        check_sequence(&mut next, packet.sequence)?;
                        forwarded.push((packet.payload.to_vec(), packet.timestamp));
                    }
                }
            }
            while let Some(packet) = ring.pop() {
                check_sequence(&mut next, packet.sequence)?;
                forwarded.push((packet.payload.to_vec(), packet.timestamp));
            }

            let stats = ring.stats();
            prop_assert_eq!(
                stats.packets_out,
                stats.packets_in - stats.duplicates - stats.overflow_dropped - stats.malformed
            );
            let repeats = stream.arrivals.iter().filter(|(_, repeat)| *repeat).count() as u64;
            prop_assert_eq!(stats.duplicates, repeats);
            let received: Vec<u32> = stream
                .arrivals
                .iter()
                .filter(|(_, repeat)| !repeat)
                .map(|(index, _)| *index)
                .collect();
            let expected_count = match (received.iter().min(), received.iter().max()) {
                (Some(low), Some(high)) => u64::from(high - low + 1),
                _ => 0,
            };
            prop_assert_eq!(stats.lost, expected_count - received.len() as u64);
            let mut highest = None;
            let mut late = 0;
            for &index in &received {
                if highest.is_some_and(|highest| index < highest) {
                    late += 1;
                }
                highest = highest.max(Some(index));
            }
            prop_assert_eq!(stats.reordered, late);
            prop_assert_eq!(stats.ssrc_changes, 0);

            // What is forwarded is the arrival order minus repeats and the oldest dropped, with
            // the source's own timestamps.
            let expected: Vec<(Vec<u8>, u32)> = received
                .iter()
                .map(|&index| {
                    let timestamp = stream.first_timestamp.wrapping_add(index * 960);
                    (index.to_be_bytes().to_vec(), timestamp)
                })
                .collect();
            let mut rest = expected.iter();
            for packet in &forwarded {
                prop_assert!(rest.any(|candidate| candidate == packet));
            }
            if stats.overflow_dropped == 0 {
                prop_assert_eq!(forwarded, expected);
            }
        }
    }

    /// Release-mode cost of one push and one pop of an 80-byte Opus payload:
    /// `cargo test --release -- --ignored --nocapture push_pop_timing`.
    #[test]
    #[ignore]
    fn push_pop_timing() {
        use std::hint::black_box;
        use std::time::Instant;

        const ROUNDS: u32 = 10_000_000;
        let mut ring = ForwardRing::new(64, 64 * 1500, 48000);
        let mut bytes = packet(0, 0, 0x1234_5678, &[0x5a; 80]);
        let start = Instant::now();
        for i in 0..ROUNDS {
            bytes[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            bytes[4..8].copy_from_slice(&i.wrapping_mul(960).to_be_bytes());
            black_box(ring.push(black_box(&bytes), u64::from(i) * 20_000_000));
            black_box(ring.pop());
        }
        let elapsed = start.elapsed();
        println!(
            "push+pop: {:.1} ns",
            elapsed.as_nanos() as f64 / f64::from(ROUNDS)
        );
        assert_eq!(ring.stats().packets_out, u64::from(ROUNDS));
    }
}
