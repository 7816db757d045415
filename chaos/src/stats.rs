//! Receive statistics of synthetic tracks: loss and duplicates from the embedded sequence
//! numbers, latency from the embedded send time. Pure: arrival times are passed in.

use crate::payload::PayloadHeader;
use hdrhistogram::Histogram;
use protocol::signal::TrackKind;
use serde::Serialize;

/// How many sequence numbers behind the highest one are still checked for duplicates.
const WINDOW: u64 = 4096;
const WINDOW_WORDS: usize = (WINDOW / 64) as usize;

/// How many of the newest sequence numbers count as still in flight: a gap among them may yet
/// be repaired by a retransmission (at 200 video packets/s, 1.3 s of media).
pub const IN_FLIGHT: u64 = 256;

/// Counts unique, duplicate and missing sequence numbers of one stream, tolerating
/// reordering within a window of 4096 sequence numbers.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    first: Option<u64>,
    highest: u64,
    unique: u64,
    duplicates: u64,
    /// Bit `s % WINDOW` is set when `s` in `(highest - WINDOW, highest]` was seen.
    seen: Box<[u64; WINDOW_WORDS]>,
}

/// What [`SeqTracker::record`] made of a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    New,
    Duplicate,
    /// Older than the window: counted as new when it is past the first one seen.
    TooOld,
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker {
            first: None,
            highest: 0,
            unique: 0,
            duplicates: 0,
            seen: Box::new([0; WINDOW_WORDS]),
        }
    }
}

impl SeqTracker {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn test_and_set(&mut self, seq: u64) -> bool {
        let (w, m) = Self::bit(seq);
        let was = self.seen[w] & m != 0;
        self.seen[w] |= m;
        was
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = Self::bit(seq);
        self.seen[w] &= !m;
    }

    pub fn record(&mut self, seq: u64) -> Arrival {
        let Some(first) = self.first else {
            self.first = Some(seq);
            self.highest = seq;
            self.test_and_set(seq);
            self.unique = 1;
            return Arrival::New;
        };
        if seq > self.highest {
            if seq - self.highest >= WINDOW {
                self.seen.fill(0);
            } else {
                for s in self.highest + 1..seq {
                    self.clear(s);
                }
                self.clear(seq);
            }
            self.highest = seq;
            self.test_and_set(seq);
            self.unique += 1;
            return Arrival::New;
        }
        if self.highest - seq < WINDOW {
            if self.test_and_set(seq) {
                self.duplicates += 1;
                return Arrival::Duplicate;
            }
            self.unique += 1;
            if seq < first {
                self.first = Some(seq);
            }
            return Arrival::New;
        }
        if seq >= first {
            self.unique += 1;
        }
        Arrival::TooOld
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Of the newest `n` sequence numbers up to the highest (those at or past the first
    /// one): how many there are, and how many of them have not arrived. `n` is capped at
    /// the window.
    pub fn newest(&self, n: u64) -> (u64, u64) {
        let Some(first) = self.first else {
            return (0, 0);
        };
        let span = n.min(WINDOW).min(self.highest - first + 1);
        let missing = (self.highest + 1 - span..=self.highest)
            .filter(|&s| {
                let (w, m) = Self::bit(s);
                self.seen[w] & m == 0
            })
            .count() as u64;
        (span, missing)
    }

    /// Sequence numbers between the first and the highest seen that never arrived.
    pub fn lost(&self) -> u64 {
        match self.first {
            Some(first) => (self.highest - first + 1).saturating_sub(self.unique),
            None => 0,
        }
    }
}

/// Histogram of latencies in µs: an HDR histogram with two significant digits (exact below
/// 256 µs, within 1 % above), growing with the largest value seen, plus the exact maximum.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            hist: Histogram::new(2).expect("2 significant digits are within HDR's 0..=5"),
            max: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, us: u64) {
        // The histogram grows to fit; a value beyond any size it can take counts as its top.
        if self.hist.record(us).is_err() {
            self.hist.saturating_record(us);
        }
        self.max = self.max.max(us);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Adds the samples of `other` (e.g. to pool many tracks' latencies).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // The histogram resizes itself: only a count overflowing u64 could fail.
        let _ = self.hist.add(&other.hist);
        self.max = self.max.max(other.max);
    }

    /// The samples recorded since `earlier`, an older copy of this same histogram. The
    /// window's exact maximum is unknown; it is taken as the top of its highest non-empty
    /// bucket (never above this histogram's maximum).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut hist = self.hist.clone();
        if hist.subtract(&earlier.hist).is_err() {
            // `earlier` is no older copy of this histogram: nothing is known of the window.
            return LatencyHistogram::default();
        }
        let max = if hist.is_empty() {
            0
        } else {
            hist.max().min(self.max)
        };
        LatencyHistogram { hist, max }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Nearest-rank percentile (`p` in 0..=100), never above the maximum. 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        let q = p.clamp(0.0, 100.0) / 100.0;
        self.hist.value_at_quantile(q).min(self.max)
    }
}

/// How many earlier stream ids of a track are remembered, so their late packets are not
/// mistaken for yet another restart.
const RETIRED_STREAMS: usize = 8;

/// Everything one subscriber knows about one remote track.
#[derive(Debug, Clone)]
pub struct TrackAccumulator {
    pub kind: TrackKind,
    /// The sending stream currently tracked; a new one (the publisher started over under
    /// the same track id) starts a fresh [`SeqTracker`].
    stream: Option<u32>,
    retired: Vec<u32>,
    seq: SeqTracker,
    /// Loss and duplicates of retired streams.
    prior_lost: u64,
    prior_duplicates: u64,
    latency: LatencyHistogram,
    received: u64,
    foreign: u64,
    last_unix_us: u64,
    ended: bool,
}

impl TrackAccumulator {
    pub fn new(kind: TrackKind) -> Self {
        TrackAccumulator {
            kind,
            stream: None,
            retired: Vec::new(),
            seq: SeqTracker::default(),
            prior_lost: 0,
            prior_duplicates: 0,
            latency: LatencyHistogram::default(),
            received: 0,
            foreign: 0,
            last_unix_us: 0,
            ended: false,
        }
    }

    /// Accounts one RTP payload that arrived at `now_unix_us`.
    pub fn record_payload(&mut self, payload: &[u8], now_unix_us: u64) {
        let Some(h) = PayloadHeader::find(payload) else {
            self.foreign += 1;
            return;
        };
        self.received += 1;
        self.last_unix_us = now_unix_us;
        let latency = now_unix_us.saturating_sub(h.sent_unix_us);
        match self.stream {
            Some(s) if s == h.stream => {}
            None => self.stream = Some(h.stream),
            // A straggler of a stream already replaced: counted, not tracked.
            Some(_) if self.retired.contains(&h.stream) => {
                self.latency.record(latency);
                return;
            }
            Some(old) => {
                if self.retired.len() == RETIRED_STREAMS {
                    self.retired.remove(0);
                }
                self.retired.push(old);
                self.prior_lost += self.seq.lost();
                self.prior_duplicates += self.seq.duplicates();
                self.seq = SeqTracker::default();
                self.stream = Some(h.stream);
            }
        }
        if self.seq.record(h.seq) != Arrival::Duplicate {
            self.latency.record(latency);
        }
    }

    /// Latencies of the non-duplicate packets so far.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    pub fn mark_ended(&mut self) {
        self.ended = true;
    }

    pub fn snapshot(&self, publisher: &str, track_id: &str) -> TrackStats {
        let (in_flight, in_flight_missing) = self.seq.newest(IN_FLIGHT);
        TrackStats {
            publisher: publisher.to_owned(),
            track_id: track_id.to_owned(),
            kind: self.kind,
            received: self.received,
            lost: self.prior_lost + self.seq.lost(),
            duplicates: self.prior_duplicates + self.seq.duplicates(),
            foreign: self.foreign,
            restarts: self.retired.len() as u64,
            in_flight,
            in_flight_missing,
            latency_p50_us: self.latency.percentile(50.0),
            latency_p99_us: self.latency.percentile(99.0),
            latency_max_us: self.latency.max(),
            last_packet_unix_us: self.last_unix_us,
            ended: self.ended,
        }
    }
}

impl TrackStats {
    /// Sequence numbers the sender used, from the first received to the highest.
    pub fn expected(&self) -> u64 {
        self.received - self.duplicates + self.lost
    }

    /// The share of the packets sent that arrived, counting only those older than the
    /// newest [`IN_FLIGHT`]: a gap among those was given up, while a newer one may still be
    /// filled by a retransmission. 1.0 before anything settled.
    pub fn settled_delivery(&self) -> f64 {
        self.settled_delivery_since(None)
    }

    /// [`Self::settled_delivery`] of the packets that settled after `earlier` (a snapshot of
    /// the same stream), so what happened before it — e.g. a subscription's first moments —
    /// is left out. A gap `earlier` still counted as in flight counts here, repaired or not.
    pub fn settled_delivery_since(&self, earlier: Option<&TrackStats>) -> f64 {
        let settled = |t: &TrackStats| {
            (
                t.expected().saturating_sub(t.in_flight),
                t.lost.saturating_sub(t.in_flight_missing),
            )
        };
        let (expected, lost) = settled(self);
        let (expected_before, lost_before) = earlier.map(settled).unwrap_or((0, 0));
        let expected = expected.saturating_sub(expected_before);
        if expected == 0 {
            return 1.0;
        }
        1.0 - lost.saturating_sub(lost_before) as f64 / expected as f64
    }
}

/// A snapshot of one received track, as [`crate::Client::track_stats`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackStats {
    /// The publisher's participant id (the track's msid stream id).
    pub publisher: String,
    /// The track id the node assigned (the track's msid track id).
    pub track_id: String,
    pub kind: TrackKind,
    /// Packets carrying the synthetic header, duplicates included.
    pub received: u64,
    /// Sequence numbers between the first and highest received that never arrived.
    pub lost: u64,
    /// Packets whose sequence number had already arrived (e.g. retransmissions).
    pub duplicates: u64,
    /// Packets without the synthetic header (ignored otherwise).
    pub foreign: u64,
    /// Times the sender started over (new stream id) under this track id (at most 8 are
    /// remembered).
    pub restarts: u64,
    /// The newest [`IN_FLIGHT`] sequence numbers of the current stream (fewer at its start):
    /// a gap among them may still be repaired by a retransmission.
    pub in_flight: u64,
    /// How many of those have not arrived (yet); included in `lost`.
    pub in_flight_missing: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    /// Wall-clock arrival of the latest synthetic packet, 0 before the first.
    pub last_packet_unix_us: u64,
    /// The remote track ended (its connection closed, or webrtc reported it ended; a track
    /// the node merely stops offering may stay `false`).
    pub ended: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_gaps_are_told_apart_from_settled_ones() {
        let mut t = SeqTracker::default();
        for s in (0..1000).filter(|s| s % 100 != 7) {
            t.record(s);
        }
        // 10 gaps: 7, 107, … 907; the newest 256 (744..=999) hold 807 and 907.
        assert_eq!(t.lost(), 10);
        assert_eq!(t.newest(256), (256, 2));
        assert_eq!(t.newest(5000), (1000, 10));
        t.record(907);
        assert_eq!((t.lost(), t.newest(256)), (9, (256, 1)));
        assert_eq!(SeqTracker::default().newest(256), (0, 0));

        let mut acc = TrackAccumulator::new(TrackKind::Video);
        let mut buf = [0u8; crate::payload::HEADER_LEN];
        for seq in (0..1200).filter(|s| *s != 10 && *s != 1150) {
            let h = PayloadHeader {
                seq,
                sent_unix_us: 0,
                stream: 1,
            };
            assert!(h.encode_into(&mut buf));
            acc.record_payload(&buf, 1);
        }
        let s = acc.snapshot("a", "t");
        assert_eq!((s.lost, s.in_flight, s.in_flight_missing), (2, 256, 1));
        assert!((s.settled_delivery() - (1.0 - 1.0 / 944.0)).abs() < 1e-9);

        // Later: 1400 more, 3 of them lost for good (1300, 1310, 1320), 1150 repaired.
        let mut more = acc.clone();
        for seq in (1150..2600).filter(|s| ![1300, 1310, 1320].contains(s)) {
            let h = PayloadHeader {
                seq,
                sent_unix_us: 0,
                stream: 1,
            };
            assert!(h.encode_into(&mut buf));
            more.record_payload(&buf, 1);
        }
        let later = more.snapshot("a", "t");
        assert_eq!((later.lost, later.in_flight_missing), (4, 0));
        // Settled before: 0..944 (seq 10 lost); after: 944..2344, with 1300, 1310, 1320 lost.
        let since = later.settled_delivery_since(Some(&s));
        assert!((since - (1.0 - 3.0 / 1400.0)).abs() < 1e-9, "{since}");
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut t = SeqTracker::default();
        for s in 10..110 {
            assert_eq!(t.record(s), Arrival::New);
        }
        assert_eq!((t.unique(), t.lost(), t.duplicates()), (100, 0, 0));
    }

    #[test]
    fn gaps_count_as_loss_until_filled_by_reordering() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 5, 6] {
            t.record(s);
        }
        assert_eq!(t.lost(), 2);
        assert_eq!(t.record(4), Arrival::New);
        assert_eq!(t.record(3), Arrival::New);
        assert_eq!(t.lost(), 0);
        assert_eq!(t.record(3), Arrival::Duplicate);
        assert_eq!(t.record(6), Arrival::Duplicate);
        assert_eq!((t.unique(), t.lost(), t.duplicates()), (7, 0, 2));
    }

    #[test]
    fn a_late_packet_before_the_first_extends_the_range() {
        let mut t = SeqTracker::default();
        t.record(100);
        t.record(101);
        t.record(98);
        // 99 never arrives: it is lost, 98..=101 is the observed range.
        assert_eq!((t.unique(), t.lost()), (3, 1));
    }

    #[test]
    fn duplicates_are_detected_across_big_jumps_and_window_reuse() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(1);
        // A jump of more than the window clears it; the old bits must not look like dups.
        t.record(WINDOW * 3 + 1);
        assert_eq!(t.record(WINDOW * 3 + 1), Arrival::Duplicate);
        assert_eq!(
            t.record(WINDOW * 2 + 5),
            Arrival::New,
            "inside the new window"
        );
        assert_eq!(t.record(1), Arrival::TooOld);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.lost(), WINDOW * 3 + 2 - 5);
        // A jump smaller than the window clears exactly the skipped slots.
        let mut t = SeqTracker::default();
        for s in 0..10 {
            t.record(s);
        }
        t.record(WINDOW + 5);
        assert_eq!(t.record(WINDOW + 2), Arrival::New, "slot reused from seq 2");
        assert_eq!(t.record(9), Arrival::Duplicate, "still inside the window");
        assert_eq!(t.lost(), WINDOW + 6 - 12);
    }

    #[test]
    fn empty_tracker_reports_nothing() {
        let t = SeqTracker::default();
        assert_eq!((t.unique(), t.lost(), t.duplicates()), (0, 0, 0));
    }

    #[test]
    fn percentiles_are_exact_for_small_values() {
        let mut h = LatencyHistogram::default();
        assert_eq!((h.percentile(50.0), h.max()), (0, 0));
        for v in 1..=50 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 25);
        assert_eq!(h.percentile(99.0), 50);
        assert_eq!(h.percentile(100.0), 50);
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.count(), 50);
    }

    #[test]
    fn percentiles_are_within_one_percent_for_large_values() {
        let mut h = LatencyHistogram::default();
        // 1000 samples: 990 around 2 ms, 10 around 80 ms.
        for i in 0..990 {
            h.record(2_000 + i);
        }
        for i in 0..10 {
            h.record(80_000 + i * 100);
        }
        let p50 = h.percentile(50.0) as f64;
        let exact_p50 = 2_000.0 + 499.0;
        assert!((p50 - exact_p50).abs() / exact_p50 < 0.01, "p50 {p50}");
        let p99 = h.percentile(99.0) as f64;
        assert!((p99 - 2_989.0).abs() / 2_989.0 < 0.01, "p99 {p99}");
        let p999 = h.percentile(99.9) as f64;
        assert!((p999 - 80_800.0).abs() / 80_800.0 < 0.01, "p99.9 {p999}");
        assert_eq!(h.max(), 80_900);
        assert!(h.percentile(100.0) <= 80_900);
    }

    #[test]
    fn since_and_merge_give_window_and_pooled_percentiles() {
        let mut h = LatencyHistogram::default();
        for v in 0..100 {
            h.record(10_000 + v);
        }
        let before = h.clone();
        for v in 0..100 {
            h.record(100 + v);
        }
        let w = h.since(&before);
        assert_eq!(w.count(), 100);
        assert_eq!(w.percentile(50.0), 149);
        assert_eq!(w.max(), 199);
        assert_eq!(h.since(&h).count(), 0);
        let mut pooled = LatencyHistogram::default();
        pooled.merge(&w);
        pooled.merge(&before);
        assert_eq!(pooled.count(), 200);
        assert_eq!(pooled.max(), 10_099);
        assert_eq!(pooled.percentile(50.0), 199);
    }

    #[test]
    fn accumulator_ignores_foreign_payloads_and_skips_duplicate_latency() {
        let mut a = TrackAccumulator::new(TrackKind::Audio);
        let mut buf = vec![0u8; 40];
        for (seq, sent, now) in [
            (0u64, 1_000u64, 1_050u64),
            (2, 2_000, 2_030),
            (2, 2_000, 9_999),
        ] {
            PayloadHeader {
                seq,
                sent_unix_us: sent,
                stream: 1,
            }
            .encode_into(&mut buf);
            a.record_payload(&buf, now);
        }
        a.record_payload(b"not ours at all, long enough to hold a header", 5);
        // A clock that runs behind the sender's gives 0, not a wrapped value.
        PayloadHeader {
            seq: 3,
            sent_unix_us: 50_000,
            stream: 1,
        }
        .encode_into(&mut buf);
        a.record_payload(&buf, 40_000);
        let s = a.snapshot("alice", "TR_1");
        assert_eq!((s.received, s.lost, s.duplicates, s.foreign), (4, 1, 1, 1));
        assert_eq!(s.latency_max_us, 50);
        assert_eq!(s.latency_p50_us, 30);
        assert_eq!(s.last_packet_unix_us, 40_000);
        assert!(!s.ended);
    }

    fn packet(seq: u64, stream: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        PayloadHeader {
            seq,
            sent_unix_us: 0,
            stream,
        }
        .encode_into(&mut buf);
        buf
    }

    #[test]
    fn a_restarted_sender_is_a_new_stream_not_duplicates() {
        let mut a = TrackAccumulator::new(TrackKind::Video);
        for seq in [0, 1, 2, 4] {
            a.record_payload(&packet(seq, 7), 1);
        }
        // The sender starts over from 0 under the same track id.
        for seq in 0..3 {
            a.record_payload(&packet(seq, 8), 1);
        }
        // A straggler of the old stream neither restarts again nor counts as a duplicate.
        a.record_payload(&packet(3, 7), 1);
        a.record_payload(&packet(1, 8), 1);
        let s = a.snapshot("p", "t");
        assert_eq!(
            (s.received, s.lost, s.duplicates, s.restarts),
            (9, 1, 1, 1),
            "{s:?}"
        );
    }
}
