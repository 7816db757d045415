//! Receive statistics of one inbound RTP stream, as RFC 3550 appendix A computes them: the
//! extended sequence number and the source-restart rule (A.1, with more room for late
//! packets), expected and lost packets per
//! interval (A.3), and the interarrival jitter in timestamp units (A.8, the integer version).
//!
//! [`UpStream::on_packet`] runs on every packet a publisher sends, so it does a handful of
//! integer operations and no allocation; [`UpStream::sample`] runs about once a second.

use std::time::Instant;

/// A jump of more sequence numbers than this (forward) is a source restart or garbage, not
/// loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// Sequence numbers up to this far behind the highest are late, not a restart. RFC 3550
/// A.1 allows 100; a NACK retransmission lost and asked for again arrives later than that
/// (a second of video is 100 packets), and two of them in a row would pass for a source
/// restarting there and wipe the counts.
const MAX_LATE: u16 = 3000;
/// No sequence number is pending as a restart candidate.
const NO_BAD_SEQ: u32 = 1 << 16;

/// What an inbound stream did since the previous [`UpStream::sample`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpSample {
    /// Lost / expected over the interval, in [0, 1] (late and repaired packets count as
    /// received, so a NACK-repaired video stream shows only what stayed lost).
    pub loss: f64,
    /// The interarrival jitter at the end of the interval, in seconds.
    pub jitter: f64,
    /// Payload bits per second over the interval.
    pub bitrate_bps: f64,
    /// Packets received in the interval.
    pub packets: u64,
}

/// One inbound stream's counts. Create one per stream with its clock rate.
#[derive(Debug, Clone)]
pub struct UpStream {
    /// Timestamp units per microsecond, in 32.32 fixed point (0: no jitter is computed).
    units_per_us_q32: u64,
    clock_rate: u32,
    started: bool,
    /// Arrival times are measured from the first packet.
    epoch: Option<Instant>,
    max_seq: u16,
    /// Sequence number cycles, shifted left 16 bits.
    cycles: u64,
    base_seq: u64,
    bad_seq: u32,
    received: u64,
    bytes: u64,
    /// The previous in-order packet's relative transit time, in timestamp units.
    transit: Option<u32>,
    /// The jitter estimate times 16 (RFC 3550 A.8).
    jitter16: u64,
    /// At the previous sample.
    expected_prior: u64,
    received_prior: u64,
    bytes_prior: u64,
    sampled_at: Option<Instant>,
}

impl UpStream {
    pub fn new(clock_rate: u32) -> Self {
        UpStream {
            units_per_us_q32: (u64::from(clock_rate) << 32) / 1_000_000,
            clock_rate,
            started: false,
            epoch: None,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: NO_BAD_SEQ,
            received: 0,
            bytes: 0,
            transit: None,
            jitter16: 0,
            expected_prior: 0,
            received_prior: 0,
            bytes_prior: 0,
            sampled_at: None,
        }
    }

    /// Counts one packet (not a duplicate the caller already dropped) that arrived at `at`.
    #[inline]
    pub fn on_packet(&mut self, seq: u16, timestamp: u32, payload: usize, at: Instant) {
        self.bytes += payload as u64;
        if !self.started {
            self.restart(seq, timestamp, at);
            return;
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta == 0 {
            // A repeat of the highest: received, no news.
        } else if delta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
            self.bad_seq = NO_BAD_SEQ;
            // Late and resent packets would count their wait as jitter: in order only.
            self.update_jitter(timestamp, at);
        } else if delta < 0u16.wrapping_sub(MAX_LATE) {
            // A large jump: two sequential packets past it mean the source restarted.
            if u32::from(seq) == self.bad_seq {
                self.restart(seq, timestamp, at);
            } else {
                self.bad_seq = u32::from(seq.wrapping_add(1));
            }
            return;
        }
        // else: late or reordered, within MAX_LATE behind the highest.
        self.received += 1;
    }

    fn restart(&mut self, seq: u16, timestamp: u32, at: Instant) {
        self.started = true;
        self.max_seq = seq;
        self.cycles = 0;
        self.base_seq = u64::from(seq);
        self.bad_seq = NO_BAD_SEQ;
        self.received = 1;
        self.expected_prior = 0;
        self.received_prior = 0;
        self.transit = None;
        if self.epoch.is_none() {
            self.epoch = Some(at);
        }
        self.update_jitter(timestamp, at);
    }

    #[inline]
    fn update_jitter(&mut self, timestamp: u32, at: Instant) {
        let Some(epoch) = self.epoch else {
            return;
        };
        if self.units_per_us_q32 == 0 {
            return;
        }
        let us = at.saturating_duration_since(epoch).as_micros() as u64;
        // The arrival time in timestamp units, modulo 2^32 as RTP timestamps are.
        let arrival = ((u128::from(us) * u128::from(self.units_per_us_q32)) >> 32) as u32;
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(prev) = self.transit {
            let d = u64::from((transit.wrapping_sub(prev) as i32).unsigned_abs());
            self.jitter16 = self.jitter16 - ((self.jitter16 + 8) >> 4) + d;
        }
        self.transit = Some(transit);
    }

    /// The extended highest sequence number received.
    pub fn highest(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// Packets expected since the first (or since the source restarted).
    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        self.highest() + 1 - self.base_seq
    }

    /// Packets received in all (duplicates the caller dropped excepted).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets lost in all (never below zero).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// The interarrival jitter in timestamp units (what a receiver report carries).
    pub fn jitter_units(&self) -> u32 {
        u32::try_from(self.jitter16 >> 4).unwrap_or(u32::MAX)
    }

    /// The interval since the previous sample (the first sample covers everything so far),
    /// or `None` when no packet arrived in it.
    pub fn sample(&mut self, now: Instant) -> Option<UpSample> {
        let since = self.sampled_at.or(self.epoch);
        self.sampled_at = Some(now);
        let (expected, received, bytes) = (self.expected(), self.received, self.bytes);
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = received.saturating_sub(self.received_prior);
        let bytes_interval = bytes.saturating_sub(self.bytes_prior);
        self.expected_prior = expected;
        self.received_prior = received;
        self.bytes_prior = bytes;
        if received_interval == 0 {
            return None;
        }
        let lost = expected_interval.saturating_sub(received_interval);
        let secs = since
            .map(|s| now.saturating_duration_since(s).as_secs_f64())
            .unwrap_or(0.0);
        Some(UpSample {
            loss: ratio(lost, expected_interval),
            jitter: if self.clock_rate == 0 {
                0.0
            } else {
                f64::from(self.jitter_units()) / f64::from(self.clock_rate)
            },
            bitrate_bps: if secs > 0.0 {
                bytes_interval as f64 * 8.0 / secs
            } else {
                0.0
            },
            packets: received_interval,
        })
    }
}

/// `part / whole` in [0, 1]; 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part.min(whole) as f64) / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Feeds `seqs` 20 ms apart with timestamps 960 apart (48 kHz audio).
    fn feed(s: &mut UpStream, t0: Instant, seqs: &[u16]) {
        for (i, seq) in seqs.iter().enumerate() {
            let at = t0 + Duration::from_millis(20 * i as u64);
            s.on_packet(*seq, 960 * i as u32, 100, at);
        }
    }

    #[test]
    fn counts_gaps_as_loss() {
        let mut s = UpStream::new(48_000);
        let t0 = Instant::now();
        let seqs: Vec<u16> = (0..100u16).filter(|n| n % 10 != 3).collect();
        feed(&mut s, t0, &seqs);
        assert_eq!((s.expected(), s.received(), s.lost()), (100, 90, 10));
        let sample = s.sample(t0 + Duration::from_secs(2)).unwrap();
        assert!((sample.loss - 0.1).abs() < 1e-9, "{sample:?}");
        assert_eq!(sample.packets, 90);
        // 90 packets of 100 B over 2 s.
        assert!((sample.bitrate_bps - 36_000.0).abs() < 1.0, "{sample:?}");
        assert!(
            s.sample(t0 + Duration::from_secs(3)).is_none(),
            "nothing new"
        );
    }

    #[test]
    fn the_sequence_number_wraps_without_loss() {
        let mut s = UpStream::new(48_000);
        let seqs: Vec<u16> = (0..200u16).map(|i| 65_500u16.wrapping_add(i)).collect();
        feed(&mut s, Instant::now(), &seqs);
        assert_eq!(s.highest(), 65_536 + 163);
        assert_eq!((s.expected(), s.lost()), (200, 0));
    }

    #[test]
    fn late_packets_repair_the_interval_they_arrive_in() {
        let mut s = UpStream::new(90_000);
        let t0 = Instant::now();
        feed(&mut s, t0, &[1, 2, 4, 5]);
        let first = s.sample(t0 + Duration::from_secs(1)).unwrap();
        assert!(
            (first.loss - 0.2).abs() < 1e-9,
            "one of five lost: {first:?}"
        );
        // 3 arrives late (a retransmission) with 6 and 7: three received, two expected.
        for seq in [3u16, 6, 7] {
            s.on_packet(seq, 0, 10, t0 + Duration::from_millis(1500));
        }
        let second = s.sample(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(second.loss, 0.0, "{second:?}");
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn retransmissions_a_second_late_are_received_not_a_restart() {
        let mut s = UpStream::new(90_000);
        let t0 = Instant::now();
        let seqs: Vec<u16> = (0..300u16).filter(|n| !(100..102).contains(n)).collect();
        feed(&mut s, t0, &seqs);
        assert_eq!(s.lost(), 2);
        feed(&mut s, t0, &[100, 101]);
        assert_eq!((s.highest(), s.lost(), s.received()), (299, 0, 300));
    }

    #[test]
    fn a_restarted_source_starts_over_after_two_sequential_packets() {
        let mut s = UpStream::new(48_000);
        let t0 = Instant::now();
        feed(&mut s, t0, &[10, 11, 12]);
        s.on_packet(40_000, 0, 10, t0);
        assert_eq!(s.highest(), 12, "one packet far away is ignored");
        s.on_packet(40_001, 0, 10, t0);
        assert_eq!((s.highest(), s.expected(), s.received()), (40_001, 1, 1));
        s.on_packet(40_002, 0, 10, t0);
        assert_eq!((s.expected(), s.lost()), (2, 0));
    }

    #[test]
    fn steady_arrivals_have_no_jitter_and_uneven_ones_do() {
        let mut steady = UpStream::new(48_000);
        let t0 = Instant::now();
        feed(&mut steady, t0, &(0..500).collect::<Vec<u16>>());
        assert!(steady.jitter_units() <= 1, "{}", steady.jitter_units());

        // Every other packet 10 ms late: |D| = 480 units each time; jitter converges to 480.
        let mut uneven = UpStream::new(48_000);
        for i in 0..2000u32 {
            let late = if i % 2 == 1 { 10 } else { 0 };
            let at = t0 + Duration::from_millis(u64::from(20 * i + late));
            uneven.on_packet(i as u16, 960 * i, 100, at);
        }
        let j = uneven.jitter_units();
        assert!((470..=490).contains(&j), "jitter {j} units");
        let sample = uneven.sample(t0 + Duration::from_secs(40)).unwrap();
        assert!((sample.jitter - 0.010).abs() < 0.0005, "{sample:?}");
    }

    #[test]
    fn jitter_ignores_the_rtp_timestamp_wrapping() {
        let mut s = UpStream::new(90_000);
        let t0 = Instant::now();
        for i in 0..200u32 {
            let ts = (u32::MAX - 100 * 3000).wrapping_add(3000 * i);
            s.on_packet(
                i as u16,
                ts,
                10,
                t0 + Duration::from_micros(33_333 * u64::from(i)),
            );
        }
        assert!(s.jitter_units() <= 2, "{}", s.jitter_units());
    }

    proptest! {
        /// Whatever subset of a run of sequence numbers arrives, in whatever order within
        /// windows of 32 (late packets stay within the reorder allowance), expected −
        /// received is exactly the number missing.
        #[test]
        fn loss_is_exact_for_any_subset(
            start in any::<u16>(),
            len in 2usize..3000,
            keep in proptest::collection::vec(any::<bool>(), 3000),
            reverse in proptest::collection::vec(any::<bool>(), 100),
        ) {
            let kept = |i: &usize| *i == 0 || *i == len - 1 || keep[*i];
            let mut seqs: Vec<u16> = Vec::new();
            for (window, reversed) in reverse.iter().enumerate().take(len.div_ceil(32)) {
                let mut w: Vec<u16> = (window * 32..((window + 1) * 32).min(len))
                    .filter(kept)
                    .map(|i| start.wrapping_add(i as u16))
                    .collect();
                // The first packet stays first: it is where counting starts.
                if window > 0 && *reversed {
                    w.reverse();
                }
                seqs.extend(w);
            }
            let mut s = UpStream::new(48_000);
            let t0 = Instant::now();
            for (i, seq) in seqs.iter().enumerate() {
                s.on_packet(*seq, i as u32 * 960, 1, t0 + Duration::from_millis(i as u64));
            }
            prop_assert_eq!(s.expected(), len as u64);
            prop_assert_eq!(s.lost(), (len - seqs.len()) as u64);
            let sample = s.sample(t0 + Duration::from_secs(10)).unwrap();
            prop_assert!((0.0..=1.0).contains(&sample.loss));
        }
    }
}
