//! The per-packet path: a publisher track's packets, as the media engine's worker reads
//! them, are rewritten for each subscriber and written to that subscriber's connection.
//!
//! The `Room` actor decides who receives what and publishes it as each source's forwarding
//! table (an `ArcSwap` of down tracks). The worker only loads that table: no actor
//! mailbox, no lock, one packet clone per subscriber.

use crate::counters::{Counters, Kind, Live};
use crate::media::engine::ConnRef;
use crate::media::quality::up::UpStream;
use arc_swap::ArcSwap;
use protocol::signal::TrackKind;
use protocol::{NodeId, TrackId, UserId};
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fewest milliseconds between two keyframe requests sent to one publisher track.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// One published track: what the forwarding path needs, shared with the actors.
pub struct TrackSource {
    pub id: TrackId,
    pub owner: UserId,
    /// Set when the track arrived over a relay link from that node: it is never sent on to
    /// another relay (the full mesh stays loop-free).
    pub relayed_from: Option<NodeId>,
    pub kind: TrackKind,
    pub codec: RTCRtpCodec,
    /// The forwarding table, replaced whole by the `Room` on every change.
    pub fanout: ArcSwap<Vec<Arc<DownTrack>>>,
    /// Packets written to subscribers so far (added in batches), for the room's counter.
    pub forwarded: Arc<AtomicU64>,
    /// The publisher's connection, where keyframe requests go.
    origin: ConnRef,
    pub media_ssrc: u32,
    /// The application muted the track (room API): its packets are dropped on arrival, so
    /// neither local subscribers nor relay links receive anything. Read per packet.
    muted: AtomicBool,
    created: Instant,
    keyframe_gate: RateGate,
    counters: Arc<Counters>,
    _live: Live,
}

impl TrackSource {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: TrackId,
        owner: UserId,
        relayed_from: Option<NodeId>,
        kind: TrackKind,
        codec: RTCRtpCodec,
        origin: ConnRef,
        media_ssrc: u32,
        counters: &Arc<Counters>,
    ) -> Arc<Self> {
        Arc::new(TrackSource {
            id,
            owner,
            relayed_from,
            kind,
            codec,
            fanout: ArcSwap::from_pointee(Vec::new()),
            forwarded: Arc::new(AtomicU64::new(0)),
            origin,
            media_ssrc,
            muted: AtomicBool::new(false),
            created: Instant::now(),
            keyframe_gate: RateGate::new(KEYFRAME_REQUEST_INTERVAL),
            counters: counters.clone(),
            _live: Live::new(counters, Kind::Track),
        })
    }

    /// Asks the publisher for a keyframe, at most once per [`KEYFRAME_REQUEST_INTERVAL`]
    /// however many subscribers ask. Audio has no keyframes.
    pub fn request_keyframe(&self) {
        if self.kind != TrackKind::Video {
            return;
        }
        // +1 so that the first request, at 0 ms, is never mistaken for "sent at 0".
        let now_ms = self.created.elapsed().as_millis() as u64 + 1;
        if !self.keyframe_gate.try_pass(now_ms) {
            return;
        }
        self.counters
            .keyframe_requests
            .fetch_add(1, Ordering::Relaxed);
        let (conn, ssrc) = (self.origin.conn, self.media_ssrc);
        if let Err(e) = self.origin.worker.post(move |w| w.send_pli(conn, ssrc)) {
            tracing::debug!(track = %self.id, error = %e, "keyframe request not sent");
        }
    }

    /// The track as clients see it.
    pub fn info(&self) -> protocol::signal::TrackInfo {
        protocol::signal::TrackInfo {
            id: self.id.clone(),
            kind: self.kind,
            muted: self.is_muted(),
        }
    }

    pub fn is_muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// Mutes or unmutes the track; whether that changed anything. Unmuting asks for a
    /// keyframe: the subscribers decode nothing until the next one.
    pub fn set_muted(&self, muted: bool) -> bool {
        let changed = self.muted.swap(muted, Ordering::Relaxed) != muted;
        if changed && !muted {
            self.request_keyframe();
        }
        changed
    }

    pub fn add_downtrack(&self, dt: Arc<DownTrack>) {
        self.fanout.rcu(|cur| {
            let mut next: Vec<Arc<DownTrack>> = cur
                .iter()
                .filter(|d| d.subscriber != dt.subscriber)
                .cloned()
                .collect();
            next.push(dt.clone());
            next
        });
    }

    pub fn remove_subscriber(&self, subscriber: &UserId) {
        self.fanout.rcu(|cur| {
            cur.iter()
                .filter(|d| &d.subscriber != subscriber)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    pub fn clear_fanout(&self) {
        self.fanout.store(Arc::new(Vec::new()));
    }
}

/// Lets one caller through per interval, whichever thread asks: the keyframe requests of
/// many subscribers become at most one PLI per interval upstream.
#[derive(Debug)]
pub struct RateGate {
    interval_ms: u64,
    /// When the last caller passed (ms on the caller's clock); 0 = never.
    last_ms: AtomicU64,
}

impl RateGate {
    pub fn new(interval: Duration) -> Self {
        RateGate {
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
        }
    }

    /// `now_ms` must be positive and not go backwards.
    pub fn try_pass(&self, now_ms: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < self.interval_ms {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// One subscriber's outgoing copy of a source: its connection, its own SSRC, and the
/// payload type its connection negotiated for the source's codec.
pub struct DownTrack {
    pub subscriber: UserId,
    /// The subscriber is a relay link to another node.
    pub to_relay: bool,
    pub source: TrackId,
    /// The engine worker and connection the copy is written to.
    pub worker: u8,
    pub conn: u64,
    pub ssrc: u32,
    pub payload_type: u8,
    pub forwarded: AtomicU64,
    pub congested: AtomicU64,
    _live: Live,
}

impl DownTrack {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        subscriber: UserId,
        to_relay: bool,
        source: TrackId,
        conn: &ConnRef,
        ssrc: u32,
        payload_type: u8,
        counters: &Arc<Counters>,
    ) -> Arc<Self> {
        Arc::new(DownTrack {
            subscriber,
            to_relay,
            source,
            worker: conn.worker.index,
            conn: conn.conn,
            ssrc,
            payload_type,
            forwarded: AtomicU64::new(0),
            congested: AtomicU64::new(0),
            _live: Live::new(counters, Kind::DownTrack),
        })
    }
}

/// Drops duplicates (retransmissions webrtc delivered twice) and keeps sequence numbers
/// contiguous when the node drops padding-only packets, so subscribers see no false gaps.
#[derive(Debug, Default)]
pub struct SeqFilter {
    started: bool,
    /// Highest extended sequence number seen.
    highest: u64,
    /// Bit i set = `highest - i` was seen. Covers the last 128 packets.
    seen: u128,
    /// Padding packets dropped so far, subtracted from every later sequence number.
    skipped: u16,
}

/// What to do with one incoming packet.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    Forward(u16),
    Duplicate,
    /// Padding only: nothing to forward, and later numbers close the gap.
    Skip,
}

impl SeqFilter {
    pub fn accept(&mut self, seq: u16, padding_only: bool) -> SeqVerdict {
        let ext = self.extend(seq);
        if !self.started {
            self.started = true;
            self.highest = ext;
            self.seen = 1;
        } else if ext > self.highest {
            let shift = ext - self.highest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = ext;
        } else {
            let back = self.highest - ext;
            if back >= 128 {
                // Too old to tell; forwarding a stale packet is harmless, a gap is not.
                return SeqVerdict::Forward(seq.wrapping_sub(self.skipped));
            }
            let bit = 1u128 << back;
            if self.seen & bit != 0 {
                return SeqVerdict::Duplicate;
            }
            self.seen |= bit;
        }
        if padding_only {
            self.skipped = self.skipped.wrapping_add(1);
            return SeqVerdict::Skip;
        }
        SeqVerdict::Forward(seq.wrapping_sub(self.skipped))
    }

    /// Extends a 16-bit number to the 64-bit one closest to the highest seen.
    fn extend(&self, seq: u16) -> u64 {
        if !self.started {
            return (1u64 << 16) + u64::from(seq);
        }
        let cycle = self.highest & !0xFFFF;
        let candidates = [
            cycle.wrapping_sub(1 << 16) | u64::from(seq),
            cycle | u64::from(seq),
            (cycle + (1 << 16)) | u64::from(seq),
        ];
        candidates
            .into_iter()
            .min_by_key(|c| c.abs_diff(self.highest))
            .unwrap_or(cycle | u64::from(seq))
    }
}

/// Counts batched locally and added to the node's totals every so often, so the hot loop
/// does not bounce a shared cache line per packet.
#[derive(Default)]
struct LocalCounts {
    packets_in: u64,
    published_bytes: u64,
    relay_packets: u64,
    relay_bytes: u64,
    forwarded: u64,
    bytes: u64,
    duplicate: u64,
}

impl LocalCounts {
    fn flush(&mut self, c: &Counters, source_forwarded: &AtomicU64) {
        source_forwarded.fetch_add(self.forwarded, Ordering::Relaxed);
        c.packets_in.fetch_add(self.packets_in, Ordering::Relaxed);
        c.published_bytes_in
            .fetch_add(self.published_bytes, Ordering::Relaxed);
        c.relay_packets_out
            .fetch_add(self.relay_packets, Ordering::Relaxed);
        c.relay_bytes_out
            .fetch_add(self.relay_bytes, Ordering::Relaxed);
        c.packets_forwarded
            .fetch_add(self.forwarded, Ordering::Relaxed);
        c.bytes_forwarded.fetch_add(self.bytes, Ordering::Relaxed);
        c.dropped_duplicate
            .fetch_add(self.duplicate, Ordering::Relaxed);
        *self = LocalCounts::default();
    }
}

/// A published track as its connection's worker sees it: the source, its sequence filter
/// and its counts.
pub struct Inbound {
    pub source: Arc<TrackSource>,
    /// Receive statistics (loss, jitter, bitrate) for `media::quality`.
    pub quality: UpStream,
    filter: SeqFilter,
    counts: LocalCounts,
    local: bool,
    _live: Live,
}

impl Inbound {
    pub fn new(source: Arc<TrackSource>) -> Self {
        let live = Live::new(&source.counters, Kind::ForwardingTask);
        Inbound {
            local: source.relayed_from.is_none(),
            quality: UpStream::new(source.codec.clock_rate),
            source,
            filter: SeqFilter::default(),
            counts: LocalCounts::default(),
            _live: live,
        }
    }

    /// The packet to forward, rewritten, or `None` (duplicate, padding). `at`: when it
    /// arrived at the node's socket.
    pub fn accept(
        &mut self,
        mut packet: rtp::packet::Packet,
        at: Instant,
    ) -> Option<rtp::packet::Packet> {
        self.counts.packets_in += 1;
        let len = packet.payload.len();
        if self.local {
            self.counts.published_bytes += len as u64;
        }
        // A muted track's packets are skipped like padding: nothing is forwarded, and the
        // subscribers' sequence numbers stay contiguous when it is unmuted.
        let padding_only = len == 0 || self.source.is_muted();
        let (seq_in, ts) = (packet.header.sequence_number, packet.header.timestamp);
        let seq = match self.filter.accept(seq_in, padding_only) {
            SeqVerdict::Forward(seq) => seq,
            SeqVerdict::Duplicate => {
                self.counts.duplicate += 1;
                return None;
            }
            SeqVerdict::Skip => {
                self.quality.on_packet(seq_in, ts, len, at);
                return None;
            }
        };
        self.quality.on_packet(seq_in, ts, len, at);
        // Header extension ids are negotiated per connection; the publisher's ids mean
        // nothing to a subscriber.
        packet.header.sequence_number = seq;
        packet.header.extension = false;
        packet.header.extension_profile = 0;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        packet.header.padding = false;
        Some(packet)
    }

    /// Counts one packet of `len` payload bytes written to `fanout`.
    pub fn count_forwarded(&mut self, fanout: &[Arc<DownTrack>], len: usize) {
        let len = len as u64;
        for dt in fanout {
            self.counts.forwarded += 1;
            self.counts.bytes += len;
            if dt.to_relay {
                self.counts.relay_packets += 1;
                self.counts.relay_bytes += len;
            }
        }
        if self.counts.packets_in >= 64 {
            self.counts
                .flush(&self.source.counters, &self.source.forwarded);
        }
    }

    /// The track ended: its last counts go to the node's totals and nobody receives it.
    pub fn finish(mut self) {
        self.counts
            .flush(&self.source.counters, &self.source.forwarded);
        self.source.clear_fanout();
        tracing::debug!(track = %self.source.id, "publisher track ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_requests_pass_once_per_interval() {
        let gate = RateGate::new(KEYFRAME_REQUEST_INTERVAL);
        assert!(gate.try_pass(1));
        assert!(!gate.try_pass(2));
        assert!(!gate.try_pass(500));
        assert!(gate.try_pass(501));
        // Two hundred subscribers asking within one interval make one request.
        let passed = (0..200).filter(|i| gate.try_pass(600 + i)).count();
        assert_eq!(passed, 0);
        assert!(gate.try_pass(1001));
    }

    #[test]
    fn the_gate_lets_exactly_one_of_many_threads_through() {
        let gate = std::sync::Arc::new(RateGate::new(KEYFRAME_REQUEST_INTERVAL));
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let gate = gate.clone();
                    s.spawn(move || usize::from(gate.try_pass(10)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 1);
    }

    #[test]
    fn duplicates_are_dropped_and_reordering_kept() {
        let mut f = SeqFilter::default();
        assert_eq!(f.accept(10, false), SeqVerdict::Forward(10));
        assert_eq!(f.accept(12, false), SeqVerdict::Forward(12));
        assert_eq!(f.accept(11, false), SeqVerdict::Forward(11));
        assert_eq!(f.accept(11, false), SeqVerdict::Duplicate);
        assert_eq!(f.accept(12, false), SeqVerdict::Duplicate);
        assert_eq!(f.accept(13, false), SeqVerdict::Forward(13));
    }

    #[test]
    fn wraparound_is_continuous() {
        let mut f = SeqFilter::default();
        assert_eq!(f.accept(65534, false), SeqVerdict::Forward(65534));
        assert_eq!(f.accept(65535, false), SeqVerdict::Forward(65535));
        assert_eq!(f.accept(0, false), SeqVerdict::Forward(0));
        assert_eq!(f.accept(65535, false), SeqVerdict::Duplicate);
        assert_eq!(f.accept(1, false), SeqVerdict::Forward(1));
    }

    #[test]
    fn padding_is_removed_without_a_gap() {
        let mut f = SeqFilter::default();
        assert_eq!(f.accept(100, false), SeqVerdict::Forward(100));
        assert_eq!(f.accept(101, true), SeqVerdict::Skip);
        assert_eq!(f.accept(102, true), SeqVerdict::Skip);
        assert_eq!(f.accept(103, false), SeqVerdict::Forward(101));
        assert_eq!(f.accept(102, true), SeqVerdict::Duplicate);
    }

    #[test]
    fn a_large_jump_resets_the_window() {
        let mut f = SeqFilter::default();
        assert_eq!(f.accept(1, false), SeqVerdict::Forward(1));
        assert_eq!(f.accept(1000, false), SeqVerdict::Forward(1000));
        assert_eq!(f.accept(1, false), SeqVerdict::Forward(1));
        assert_eq!(f.accept(1000, false), SeqVerdict::Duplicate);
    }
}
