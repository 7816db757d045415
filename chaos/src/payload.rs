//! Synthetic media: RTP packets whose payload carries a header any subscriber can decode.
//!
//! The header is `magic (4) | sequence (u64 BE) | send time (u64 BE, µs since the Unix
//! epoch) | stream (u32 BE)`, followed by padding up to the configured size. `stream` is
//! random per generator, so a receiver can tell a restarted sender (sequence from 0 again)
//! from duplicates. Audio payloads start with the
//! header. Video payloads start with a VP8 payload descriptor and a 10-byte area holding the
//! VP8 frame header on the first packet of a frame, so a node that inspects VP8 (keyframe
//! detection, frame boundaries) sees plausible video; the synthetic header follows at
//! [`VP8_PREFIX_LEN`].
//!
//! Everything here is pure: the caller passes the clock in.

use bytes::Bytes;
use rtc::rtp;
use std::time::Duration;

/// Marks a payload as ours. Packets without it are counted as foreign and otherwise ignored.
pub const MAGIC: [u8; 4] = *b"CHS1";
/// Size of the synthetic header.
pub const HEADER_LEN: usize = 24;
/// Bytes before the synthetic header in a VP8 payload: the 1-byte payload descriptor and
/// room for a keyframe header (3-byte frame tag, start code, width, height).
pub const VP8_PREFIX_LEN: usize = 11;
/// Frames per second of synthetic video (capped by the packet rate).
pub const VIDEO_FPS: u32 = 25;
/// Width and height written into synthetic keyframe headers.
const VP8_WIDTH: u16 = 640;
const VP8_HEIGHT: u16 = 480;

/// The decoded synthetic header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    /// Per-track counter, 0 for the first packet sent.
    pub seq: u64,
    /// When the packet was built, µs since the Unix epoch.
    pub sent_unix_us: u64,
    /// Random per sending stream; a new value means the sender started over.
    pub stream: u32,
}

impl PayloadHeader {
    /// Writes the header at the start of `buf`. Returns false when `buf` is too short.
    pub fn encode_into(&self, buf: &mut [u8]) -> bool {
        let Some(dst) = buf.get_mut(..HEADER_LEN) else {
            return false;
        };
        dst[..4].copy_from_slice(&MAGIC);
        dst[4..12].copy_from_slice(&self.seq.to_be_bytes());
        dst[12..20].copy_from_slice(&self.sent_unix_us.to_be_bytes());
        dst[20..24].copy_from_slice(&self.stream.to_be_bytes());
        true
    }

    /// Reads a header at the start of `buf`, if it is there.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        let src = buf.get(..HEADER_LEN)?;
        if src[..4] != MAGIC {
            return None;
        }
        Some(PayloadHeader {
            seq: u64::from_be_bytes(src[4..12].try_into().ok()?),
            sent_unix_us: u64::from_be_bytes(src[12..20].try_into().ok()?),
            stream: u32::from_be_bytes(src[20..24].try_into().ok()?),
        })
    }

    /// Finds the header in an audio (offset 0) or VP8 (offset [`VP8_PREFIX_LEN`]) payload.
    pub fn find(payload: &[u8]) -> Option<Self> {
        Self::decode(payload).or_else(|| Self::decode(payload.get(VP8_PREFIX_LEN..)?))
    }
}

/// Which kind of synthetic stream a [`Generator`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Opus-like: one packet per tick, 48 kHz RTP clock.
    Audio,
    /// VP8-like: frames of several packets, 90 kHz RTP clock, marker on frame ends.
    Video,
}

/// Produces the RTP packets of one synthetic track, tick by tick.
#[derive(Debug, Clone)]
pub struct Generator {
    kind: MediaKind,
    ssrc: u32,
    payload_type: u8,
    payload_len: usize,
    pps: u32,
    /// Ticks per second: packets per second for audio, frames per second for video.
    tick_rate: u32,
    rtp_seq: u16,
    rtp_ts: u32,
    stream: u32,
    next_seq: u64,
    tick: u64,
}

impl Generator {
    /// A generator of `pps` packets per second of `payload_len` bytes (raised to the minimum
    /// that holds the headers), with random RTP sequence number, timestamp and stream id.
    pub fn new(kind: MediaKind, ssrc: u32, payload_type: u8, pps: u32, payload_len: usize) -> Self {
        let pps = pps.max(1);
        let (tick_rate, min_len) = match kind {
            MediaKind::Audio => (pps, HEADER_LEN),
            MediaKind::Video => (pps.min(VIDEO_FPS), VP8_PREFIX_LEN + HEADER_LEN),
        };
        Generator {
            kind,
            ssrc,
            payload_type,
            payload_len: payload_len.max(min_len),
            pps,
            tick_rate,
            rtp_seq: rand::random(),
            rtp_ts: rand::random(),
            stream: rand::random(),
            next_seq: 0,
            tick: 0,
        }
    }

    /// Fixes the RTP sequence number, RTP timestamp and stream id to start from.
    pub fn with_start(mut self, rtp_seq: u16, rtp_ts: u32, stream: u32) -> Self {
        self.rtp_seq = rtp_seq;
        self.rtp_ts = rtp_ts;
        self.stream = stream;
        self
    }

    /// How often [`Generator::next_tick`] should be called.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_secs(1) / self.tick_rate
    }

    /// The RTP clock rate of this kind.
    pub fn clock_rate(&self) -> u32 {
        match self.kind {
            MediaKind::Audio => 48_000,
            MediaKind::Video => 90_000,
        }
    }

    /// How many synthetic packets have been produced so far.
    pub fn produced(&self) -> u64 {
        self.next_seq
    }

    /// Whether tick `n` carries a keyframe (video: one per second).
    fn is_keyframe(&self, tick: u64) -> bool {
        self.kind == MediaKind::Video && tick.is_multiple_of(u64::from(self.tick_rate))
    }

    /// Packets in tick `n`, spread so the long-run rate is exactly `pps`.
    fn packets_in_tick(&self, tick: u64) -> u64 {
        let (pps, rate) = (u64::from(self.pps), u64::from(self.tick_rate));
        (tick + 1) * pps / rate - tick * pps / rate
    }

    /// The packets of the next tick (one audio packet, or one video frame), stamped with
    /// `now_unix_us`.
    pub fn next_tick(&mut self, now_unix_us: u64) -> Vec<rtp::Packet> {
        let tick = self.tick;
        let count = self.packets_in_tick(tick);
        let keyframe = self.is_keyframe(tick);
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let first = i == 0;
            let last = i + 1 == count;
            let mut payload = vec![0u8; self.payload_len];
            let header_at = match self.kind {
                MediaKind::Audio => 0,
                MediaKind::Video => {
                    write_vp8_prefix(&mut payload, first, keyframe);
                    VP8_PREFIX_LEN
                }
            };
            PayloadHeader {
                seq: self.next_seq,
                sent_unix_us: now_unix_us,
                stream: self.stream,
            }
            .encode_into(&mut payload[header_at..]);
            let marker = match self.kind {
                // Start of a talk spurt: only the very first audio packet.
                MediaKind::Audio => tick == 0,
                MediaKind::Video => last,
            };
            out.push(rtp::Packet {
                header: rtp::Header {
                    version: 2,
                    marker,
                    payload_type: self.payload_type,
                    sequence_number: self.rtp_seq,
                    timestamp: self.rtp_ts,
                    ssrc: self.ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            });
            self.next_seq += 1;
            self.rtp_seq = self.rtp_seq.wrapping_add(1);
        }
        self.rtp_ts = self.rtp_ts.wrapping_add(self.clock_rate() / self.tick_rate);
        self.tick += 1;
        out
    }
}

/// Writes the VP8 payload descriptor (RFC 7741 §4.2, no extensions) and, on the first packet
/// of a frame, the VP8 frame header (RFC 6386 §9.1).
fn write_vp8_prefix(payload: &mut [u8], frame_start: bool, keyframe: bool) {
    // S bit (start of partition) on the first packet, partition index 0.
    payload[0] = if frame_start { 0x10 } else { 0x00 };
    if !frame_start {
        return;
    }
    // 3-byte little-endian frame tag: bit 0 frame type (0 = key), bits 1-3 version,
    // bit 4 show_frame, bits 5-23 first partition size.
    let first_part_size: u32 = 100;
    let tag = (first_part_size << 5) | (1 << 4) | u32::from(!keyframe);
    payload[1..4].copy_from_slice(&tag.to_le_bytes()[..3]);
    if keyframe {
        payload[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        payload[7..9].copy_from_slice(&VP8_WIDTH.to_le_bytes());
        payload[9..11].copy_from_slice(&VP8_HEIGHT.to_le_bytes());
    }
}

/// Whether a VP8 payload starts a keyframe, as an SFU would check it.
pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    // Descriptor without extensions: S=1, PID=0, then a frame tag with the P bit clear.
    matches!(payload, [d, tag, ..] if d & 0x80 == 0 && d & 0x1f == 0x10 && tag & 0x01 == 0)
}

/// Microseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_foreign_bytes() {
        let h = PayloadHeader {
            seq: 0x0102_0304_0506_0708,
            sent_unix_us: 1_700_000_000_123_456,
            stream: 0xdead_beef,
        };
        let mut buf = [0u8; 32];
        assert!(h.encode_into(&mut buf));
        assert_eq!(&buf[..4], b"CHS1");
        assert_eq!(PayloadHeader::decode(&buf), Some(h));
        assert_eq!(PayloadHeader::find(&buf), Some(h));
        assert!(!h.encode_into(&mut [0u8; HEADER_LEN - 1]));
        assert_eq!(PayloadHeader::decode(&buf[..HEADER_LEN - 1]), None);
        buf[0] = b'X';
        assert_eq!(PayloadHeader::decode(&buf), None);
        assert_eq!(PayloadHeader::find(&[]), None);
        assert_eq!(PayloadHeader::find(&[0u8; 64]), None);
    }

    #[test]
    fn audio_ticks_are_single_packets_on_a_48khz_clock() {
        let mut g = Generator::new(MediaKind::Audio, 7, 111, 50, 160).with_start(65535, 1000, 5);
        assert_eq!(g.tick_interval(), Duration::from_millis(20));
        let a = g.next_tick(10);
        let b = g.next_tick(20);
        assert_eq!((a.len(), b.len()), (1, 1));
        let (a, b) = (&a[0], &b[0]);
        assert_eq!(a.payload.len(), 160);
        assert_eq!((a.header.ssrc, a.header.payload_type), (7, 111));
        assert_eq!(
            b.header.sequence_number,
            a.header.sequence_number.wrapping_add(1)
        );
        assert_eq!(b.header.sequence_number, 0, "rtp sequence wraps");
        assert_eq!(b.header.timestamp - a.header.timestamp, 960);
        assert!(a.header.marker && !b.header.marker);
        let ha = PayloadHeader::decode(&a.payload).unwrap();
        let hb = PayloadHeader::find(&b.payload).unwrap();
        assert_eq!(
            (ha.seq, ha.sent_unix_us, hb.seq, hb.sent_unix_us),
            (0, 10, 1, 20)
        );
    }

    #[test]
    fn video_frames_have_exact_rate_markers_and_a_keyframe_per_second() {
        let mut g = Generator::new(MediaKind::Video, 9, 96, 100, 1200).with_start(0, 0, 6);
        assert_eq!(g.tick_interval(), Duration::from_millis(40));
        let mut total = 0;
        let mut keyframes = 0;
        let mut expected_seq = 0;
        for frame in 0..50u32 {
            let pkts = g.next_tick(0);
            assert_eq!(pkts.len(), 4);
            total += pkts.len();
            for (i, p) in pkts.iter().enumerate() {
                assert_eq!(p.payload.len(), 1200);
                assert_eq!(p.header.timestamp, frame * 3600);
                assert_eq!(p.header.marker, i == pkts.len() - 1);
                assert_eq!(
                    p.payload[0] & 0x10 != 0,
                    i == 0,
                    "S bit on the first packet only"
                );
                let h = PayloadHeader::find(&p.payload).unwrap();
                assert_eq!(h.seq, expected_seq);
                expected_seq += 1;
            }
            if vp8_is_keyframe(&pkts[0].payload) {
                keyframes += 1;
                assert_eq!(&pkts[0].payload[4..7], &[0x9d, 0x01, 0x2a]);
            }
        }
        assert_eq!(total, 200);
        assert_eq!(keyframes, 2);
        assert_eq!(g.produced(), 200);

        // A rate that does not divide into frames still averages out exactly.
        let mut g = Generator::new(MediaKind::Video, 9, 96, 37, 10);
        let n: usize = (0..25).map(|_| g.next_tick(0).len()).sum();
        assert_eq!(n, 37);
        // Tiny payload sizes are raised to fit the headers.
        assert_eq!(g.next_tick(0)[0].payload.len(), VP8_PREFIX_LEN + HEADER_LEN);
    }
}
