//! What a subscriber says about one stream the node sends it: its RTCP receiver reports'
//! loss, jitter and the round trip they measure against the node's sender reports.
//!
//! A receiver report's loss counts every sequence number that did not arrive, including
//! those the node never had (lost on the publisher's path: the node forwards the gap as it
//! is). The loss here is the node's path's alone: between two reports, the packets the node
//! sent in the sequence range they cover ([`SendLog`]) against those the subscriber says it
//! received. NACK retransmissions arrive under their own sequence numbers, so repaired video
//! loss is not loss here either.

use super::up::ratio;
use crate::media::history::{SendLog, HISTORY};
use rtc::rtcp::reception_report::ReceptionReport;
use std::time::{Duration, Instant};

/// Sender reports remembered per stream to match receiver reports' LSR against: a report
/// answers the newest one its sender received, a second or two back at most.
const SENT_REPORTS: usize = 4;
/// Sequence ranges up to this long are counted against the send log exactly; a longer one
/// (a fast stream, or reports far apart) counts as all sent.
const EXACT_RANGE: u32 = (HISTORY / 2) as u32;

/// What the reports about a stream said since the previous [`DownStream::sample`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DownSample {
    /// Lost / sent on the node's path, when the reports covered packets sent.
    pub loss: Option<f64>,
    /// The newest report's interarrival jitter, in seconds.
    pub jitter: Option<f64>,
    /// The newest round trip measured, when a report answered a known sender report.
    pub rtt: Option<Duration>,
    /// Payload bits per second the node sent on the stream.
    pub bitrate_bps: f64,
    /// Packets the reports covered that the node sent, and of those lost.
    pub sent: u64,
    pub lost: u64,
}

/// One outgoing stream of a subscriber connection.
#[derive(Debug, Clone)]
pub struct DownStream {
    clock_rate: u32,
    /// (middle 32 bits of the NTP time, when sent) of the last sender reports.
    sent_reports: [(u32, Option<Instant>); SENT_REPORTS],
    next_report: usize,
    /// The previous report's extended highest sequence number and cumulative loss.
    last: Option<(u32, u32)>,
    /// Since the previous sample.
    sent: u64,
    lost: u64,
    jitter_units: Option<u32>,
    rtt: Option<Duration>,
    /// The send log's octet count and when it was read, at the previous sample.
    octets_prior: Option<(u32, Instant)>,
}

impl DownStream {
    pub fn new(clock_rate: u32) -> Self {
        DownStream {
            clock_rate,
            sent_reports: [(0, None); SENT_REPORTS],
            next_report: 0,
            last: None,
            sent: 0,
            lost: 0,
            jitter_units: None,
            rtt: None,
            octets_prior: None,
        }
    }

    /// The node sent a sender report with this NTP time at `at`.
    pub fn report_sent(&mut self, ntp_time: u64, at: Instant) {
        self.sent_reports[self.next_report] = (lsr(ntp_time), Some(at));
        self.next_report = (self.next_report + 1) % SENT_REPORTS;
    }

    /// A receiver report block about this stream arrived at `at`; `log` is what the node
    /// sent on it.
    pub fn on_report(&mut self, block: &ReceptionReport, at: Instant, log: Option<&SendLog>) {
        self.jitter_units = Some(block.jitter);
        if let Some(rtt) = self.round_trip(block.last_sender_report, block.delay, at) {
            self.rtt = Some(rtt);
        }
        let (highest, lost) = (block.last_sequence_number, block.total_lost & 0xFF_FFFF);
        let Some((prev_highest, prev_lost)) = self.last else {
            self.last = Some((highest, lost));
            return;
        };
        let range = highest.wrapping_sub(prev_highest);
        if range == 0 || range > i32::MAX as u32 {
            // Nothing new, or a report older than the previous one.
            return;
        }
        self.last = Some((highest, lost));
        let missing = lost_delta(prev_lost, lost);
        let received = i64::from(range) - missing;
        let sent = match log {
            Some(log) if range <= EXACT_RANGE => (1..=range)
                .filter(|i| log.get(prev_highest.wrapping_add(*i) as u16).is_some())
                .count() as i64,
            _ => i64::from(range),
        };
        self.sent += sent.max(0) as u64;
        self.lost += (sent - received).clamp(0, sent.max(0)) as u64;
    }

    /// The round trip a report block measures: from the sender report it names (`lsr`)
    /// leaving to the block arriving at `at`, less the time the subscriber held it
    /// (`dlsr`, in 1/65536 s).
    pub fn round_trip(&self, lsr: u32, dlsr: u32, at: Instant) -> Option<Duration> {
        if lsr == 0 {
            return None;
        }
        let (_, sent) = self
            .sent_reports
            .iter()
            .find(|(l, s)| *l == lsr && s.is_some())?;
        let held = Duration::from_micros(u64::from(dlsr) * 1_000_000 / 65_536);
        at.checked_duration_since((*sent)?)?.checked_sub(held)
    }

    /// What the reports since the previous sample said, and the bitrate sent since then
    /// (`octets`: the send log's payload octet count, which wraps).
    pub fn sample(&mut self, octets: Option<u32>, now: Instant) -> DownSample {
        let bitrate_bps = match (octets, self.octets_prior) {
            (Some(o), Some((prior, at))) => {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    f64::from(o.wrapping_sub(prior)) * 8.0 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.octets_prior = octets.map(|o| (o, now));
        let sample = DownSample {
            loss: (self.sent > 0).then(|| ratio(self.lost, self.sent)),
            jitter: self
                .jitter_units
                .filter(|_| self.clock_rate > 0)
                .map(|j| f64::from(j) / f64::from(self.clock_rate)),
            rtt: self.rtt,
            bitrate_bps,
            sent: self.sent,
            lost: self.lost,
        };
        self.sent = 0;
        self.lost = 0;
        self.jitter_units = None;
        self.rtt = None;
        sample
    }
}

/// The middle 32 bits of an NTP time: what a receiver report's LSR field echoes.
pub fn lsr(ntp_time: u64) -> u32 {
    (ntp_time >> 16) as u32
}

/// How much a 24-bit signed cumulative loss grew from `prev` to `now` (RFC 3550 6.4.1: it
/// may go down when duplicates arrive).
fn lost_delta(prev: u32, now: u32) -> i64 {
    let sign_extend = |v: u32| ((v << 8) as i32 >> 8) as i64;
    sign_extend(now) - sign_extend(prev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rtp::packet::Packet;

    fn log_of(seqs: impl IntoIterator<Item = u16>) -> SendLog {
        let mut log = SendLog::default();
        let now = Instant::now();
        for seq in seqs {
            let mut p = Packet::default();
            p.header.sequence_number = seq;
            p.payload = vec![0u8; 100].into();
            log.record(p, now);
        }
        log
    }

    fn block(highest: u32, lost: u32) -> ReceptionReport {
        ReceptionReport {
            last_sequence_number: highest,
            total_lost: lost,
            ..Default::default()
        }
    }

    #[test]
    fn loss_on_the_node_path_is_net_of_gaps_the_node_forwarded() {
        // The node sent 0..=200 but for 50..60 (lost upstream): 190 packets after 0.
        let log = log_of((0..=200u16).filter(|s| !(50..60).contains(s)));
        let mut d = DownStream::new(48_000);
        let now = Instant::now();
        d.on_report(&block(0, 0), now, Some(&log));
        // The subscriber misses the upstream gap (10) and 19 more the node sent.
        d.on_report(&block(200, 29), now, Some(&log));
        let s = d.sample(None, now);
        let loss = s.loss.unwrap();
        assert!((loss - 19.0 / 190.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_wrapping_sequence_and_a_long_range_still_count() {
        let log = log_of((0..100u16).map(|i| 65_500u16.wrapping_add(i)));
        let mut d = DownStream::new(90_000);
        let now = Instant::now();
        d.on_report(&block(65_500, 7), now, Some(&log));
        d.on_report(&block(65_536 + 63, 12), now, Some(&log));
        assert!((d.sample(None, now).loss.unwrap() - 5.0 / 99.0).abs() < 1e-9);
        // A range longer than the log is exact for counts all sent.
        d.on_report(&block(65_536 + 63 + 1000, 112), now, Some(&log));
        assert!((d.sample(None, now).loss.unwrap() - 0.1).abs() < 1e-9);
        // Duplicates made the cumulative loss go down (24-bit signed): no loss, no panic.
        d.on_report(&block(65_536 + 63 + 1010, 0xFF_FFFF), now, None);
        assert_eq!(d.sample(None, now).loss, Some(0.0));
        // An old report changes nothing.
        d.on_report(&block(10, 0), now, None);
        assert_eq!(d.sample(None, now).loss, None);
    }

    #[test]
    fn round_trip_from_the_sender_report_named() {
        let mut d = DownStream::new(48_000);
        let t0 = Instant::now();
        let ntp = (3_900_000_000u64 << 32) | (1 << 31);
        d.report_sent(ntp, t0);
        d.report_sent(ntp + (1 << 32), t0 + Duration::from_secs(1));
        // Answered 80 ms after the first report, held 30 ms (1966 / 65536 s) of those.
        let at = t0 + Duration::from_millis(80);
        let rtt = d.round_trip(lsr(ntp), 1966, at).unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(50)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        assert!(
            d.round_trip(0, 0, at).is_none(),
            "no sender report received yet"
        );
        assert!(d.round_trip(12345, 0, at).is_none(), "an unknown report");
        assert!(
            d.round_trip(lsr(ntp), 65_536 * 10, at).is_none(),
            "held longer than it took"
        );
        d.on_report(
            &ReceptionReport {
                last_sender_report: lsr(ntp + (1 << 32)),
                delay: 0,
                jitter: 480,
                ..Default::default()
            },
            t0 + Duration::from_millis(1020),
            None,
        );
        let s = d.sample(None, t0);
        assert_eq!(s.rtt, Some(Duration::from_millis(20)));
        assert_eq!(s.jitter, Some(0.01));
    }

    #[test]
    fn bitrate_from_the_octets_sent() {
        let mut d = DownStream::new(48_000);
        let t0 = Instant::now();
        assert_eq!(d.sample(Some(u32::MAX - 999), t0).bitrate_bps, 0.0);
        let s = d.sample(Some(124_000), t0 + Duration::from_secs(1));
        assert!((s.bitrate_bps - 125_000.0 * 8.0).abs() < 1.0, "{s:?}");
    }

    proptest! {
        /// Whatever the reports say, the loss stays a ratio and nothing panics.
        #[test]
        fn any_reports_give_a_ratio(reports in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()), 1..50)) {
            let log = log_of(0..300u16);
            let mut d = DownStream::new(90_000);
            let t0 = Instant::now();
            d.report_sent(1 << 40, t0);
            for (i, (highest, lost, lsr, dlsr)) in reports.into_iter().enumerate() {
                let b = ReceptionReport { last_sequence_number: highest, total_lost: lost, last_sender_report: lsr, delay: dlsr, ..Default::default() };
                d.on_report(&b, t0 + Duration::from_millis(i as u64), Some(&log));
                if let Some(loss) = d.sample(Some(i as u32), t0).loss {
                    prop_assert!((0.0..=1.0).contains(&loss));
                }
            }
        }
    }
}
