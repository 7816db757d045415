//! Counters of what the participants sent and received, and the rates between two readings.
//! Pure: the client library's statistics and the clock are passed in.

use crate::publisher::SentStats;
use crate::stats::TrackStats;
use protocol::signal::TrackKind;
use serde::Serialize;
use std::time::Duration;

/// RTP payload bytes of one packet of each kind: the synthetic tracks' sizes are fixed, so
/// bytes are counted from packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadSizes {
    pub audio: usize,
    pub video: usize,
}

impl PayloadSizes {
    fn of(&self, kind: TrackKind) -> u64 {
        match kind {
            TrackKind::Audio => self.audio as u64,
            TrackKind::Video => self.video as u64,
        }
    }
}

/// What one participant, or many added up, sent and received so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// RTP packets handed to the publisher connections.
    pub sent_packets: u64,
    /// Their RTP payload bytes.
    pub sent_bytes: u64,
    /// Synthetic RTP packets received, duplicates included.
    pub received_packets: u64,
    pub received_bytes: u64,
    /// Sequence numbers between the first and the highest received that never arrived.
    pub lost: u64,
    pub duplicates: u64,
}

impl Counts {
    /// The counts of one participant from what its client reports.
    pub fn from_stats(sent: &[SentStats], received: &[TrackStats], sizes: PayloadSizes) -> Self {
        let mut c = Counts::default();
        for s in sent {
            c.sent_packets += s.sent;
            c.sent_bytes += s.sent * sizes.of(s.kind);
        }
        for t in received {
            c.received_packets += t.received;
            c.received_bytes += t.received * sizes.of(t.kind);
            c.lost += t.lost;
            c.duplicates += t.duplicates;
        }
        c
    }

    pub fn add(&mut self, o: &Counts) {
        self.sent_packets += o.sent_packets;
        self.sent_bytes += o.sent_bytes;
        self.received_packets += o.received_packets;
        self.received_bytes += o.received_bytes;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
    }

    /// What changed since `earlier`, a reading of the same participants (a gap filled late
    /// makes `lost` go down: never below zero).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            sent_packets: self.sent_packets.saturating_sub(earlier.sent_packets),
            sent_bytes: self.sent_bytes.saturating_sub(earlier.sent_bytes),
            received_packets: self
                .received_packets
                .saturating_sub(earlier.received_packets),
            received_bytes: self.received_bytes.saturating_sub(earlier.received_bytes),
            lost: self.lost.saturating_sub(earlier.lost),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
        }
    }

    /// Lost packets over the packets that should have arrived, 0 to 1.
    pub fn loss(&self) -> f64 {
        let unique = self.received_packets.saturating_sub(self.duplicates);
        let expected = unique + self.lost;
        if expected == 0 {
            0.0
        } else {
            self.lost as f64 / expected as f64
        }
    }
}

/// Bitrates and loss between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    /// RTP payload bits per second sent.
    pub send_bps: f64,
    pub receive_bps: f64,
    /// Lost over expected in the window, 0 to 1.
    pub loss: f64,
}

impl Rates {
    pub fn between(now: &Counts, before: &Counts, window: Duration) -> Rates {
        let d = now.since(before);
        let secs = window.as_secs_f64();
        let bps = |bytes: u64| {
            if secs > 0.0 {
                bytes as f64 * 8.0 / secs
            } else {
                0.0
            }
        };
        Rates {
            send_bps: bps(d.sent_bytes),
            receive_bps: bps(d.received_bytes),
            loss: d.loss(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: PayloadSizes = PayloadSizes {
        audio: 160,
        video: 1200,
    };

    fn sent(kind: TrackKind, n: u64) -> SentStats {
        SentStats {
            local_track_id: "t".into(),
            kind,
            ssrc: 1,
            payload_type: 96,
            sent: n,
            keyframe_requests: 0,
            active: true,
        }
    }

    fn received(kind: TrackKind, n: u64, lost: u64, dups: u64) -> TrackStats {
        TrackStats {
            publisher: "p".into(),
            track_id: "t".into(),
            kind,
            received: n,
            lost,
            duplicates: dups,
            foreign: 0,
            restarts: 0,
            in_flight: 0,
            in_flight_missing: 0,
            latency_p50_us: 0,
            latency_p99_us: 0,
            latency_max_us: 0,
            last_packet_unix_us: 0,
            ended: false,
        }
    }

    #[test]
    fn bytes_follow_the_kind_of_each_track() {
        let c = Counts::from_stats(
            &[sent(TrackKind::Audio, 50), sent(TrackKind::Video, 100)],
            &[
                received(TrackKind::Video, 98, 2, 0),
                received(TrackKind::Audio, 51, 0, 1),
            ],
            SIZES,
        );
        assert_eq!((c.sent_packets, c.sent_bytes), (150, 50 * 160 + 100 * 1200));
        assert_eq!(
            (c.received_packets, c.received_bytes),
            (149, 98 * 1200 + 51 * 160)
        );
        // 148 unique of 150 expected.
        assert!((c.loss() - 2.0 / 150.0).abs() < 1e-12);
        assert_eq!(Counts::default().loss(), 0.0);
    }

    #[test]
    fn rates_are_per_second_over_the_window() {
        let before = Counts {
            sent_bytes: 1000,
            received_bytes: 0,
            lost: 5,
            ..Counts::default()
        };
        let now = Counts {
            sent_bytes: 126_000,
            received_bytes: 250_000,
            received_packets: 99,
            lost: 6,
            ..Counts::default()
        };
        let r = Rates::between(&now, &before, Duration::from_millis(500));
        assert_eq!(r.send_bps, 2_000_000.0);
        assert_eq!(r.receive_bps, 4_000_000.0);
        assert!((r.loss - 0.01).abs() < 1e-12);
        // A gap filled late lowers `lost`: no negative loss.
        let filled = Counts { lost: 4, ..now };
        assert_eq!(Rates::between(&filled, &now, Duration::ZERO).loss, 0.0);
        assert_eq!(Rates::between(&now, &before, Duration::ZERO).send_bps, 0.0);
    }
}
