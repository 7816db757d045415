//! What a connection sent on each outgoing stream: its last packets, to answer NACKs from, and
//! the counts its sender reports carry.
//!
//! The node writes forwarded media past `rtc`'s interceptor chain (SRTP and the selected pair
//! only, see `vendor/rtc/PATCH.md`), so it answers NACKs and sends sender reports itself, as
//! mediasoup does. The packets kept share their payloads with every other subscriber's copy
//! (`Bytes`), so a log costs a header per packet.

use rtc::rtcp::sender_report::SenderReport;
use rtp::packet::Packet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Packets kept per stream: 5 s of 100 pkt/s video, 2 s at 250 pkt/s.
pub const HISTORY: usize = 512;

/// A stream that sent nothing for this long gets no more sender reports (RFC 3550 §6.4: a
/// participant that stopped sending is no longer a sender).
pub const SENDER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct SendLog {
    /// By sequence number modulo [`HISTORY`]; grows to it as packets are sent.
    ring: Vec<Option<Packet>>,
    packets: u32,
    octets: u32,
    /// The newest packet's RTP timestamp and when it was sent.
    last: Option<(u32, Instant)>,
}

impl SendLog {
    /// Counts `packet`, sent at `now`, and keeps it (the packet it displaces is dropped).
    pub fn record(&mut self, packet: Packet, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(packet.payload.len() as u32);
        self.last = Some((packet.header.timestamp, now));
        let i = usize::from(packet.header.sequence_number) % HISTORY;
        if self.ring.len() <= i {
            self.ring.resize_with(i + 1, || None);
        }
        self.ring[i] = Some(packet);
    }

    /// Packets and payload octets sent so far (both wrap, as a sender report's do).
    pub fn counts(&self) -> (u32, u32) {
        (self.packets, self.octets)
    }

    /// The packet sent with sequence number `seq`, if it is still kept.
    pub fn get(&self, seq: u16) -> Option<&Packet> {
        self.ring
            .get(usize::from(seq) % HISTORY)?
            .as_ref()
            .filter(|p| p.header.sequence_number == seq)
    }

    /// A sender report for `ssrc`, or `None` when the stream has not sent for
    /// [`SENDER_TIMEOUT`]. Its NTP and RTP timestamps are those of the newest packet (the
    /// instant it was sent, on the wall clock `wall` read at `now`), so they match exactly
    /// without knowing the codec's clock rate.
    pub fn report(&self, ssrc: u32, now: Instant, wall: SystemTime) -> Option<SenderReport> {
        let (rtp_time, sent) = self.last?;
        let age = now.checked_duration_since(sent).unwrap_or_default();
        if age > SENDER_TIMEOUT {
            return None;
        }
        Some(SenderReport {
            ssrc,
            ntp_time: ntp(wall.checked_sub(age).unwrap_or(wall)),
            rtp_time,
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// Seconds from 1900 (NTP's epoch) to 1970 (Unix's).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// `t` in NTP's 64-bit format: seconds since 1900 in the high 32 bits, the fraction in the low.
pub fn ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(seq: u16, ts: u32, len: usize) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.payload = vec![0u8; len].into();
        p
    }

    #[test]
    fn keeps_the_last_packets_and_forgets_older_ones() {
        let mut log = SendLog::default();
        let now = Instant::now();
        for seq in 0..(HISTORY as u16 + 10) {
            log.record(packet(seq, u32::from(seq) * 3000, 100), now);
        }
        // Sequence numbers HISTORY .. HISTORY + 9 took the slots of 0 .. 9.
        assert!(log.get(5).is_none(), "displaced by 5 + HISTORY");
        assert!(log.get(9).is_none(), "displaced by 9 + HISTORY");
        assert_eq!(log.get(10).map(|p| p.header.sequence_number), Some(10));
        let newest = HISTORY as u16 + 9;
        assert_eq!(
            log.get(newest).map(|p| p.header.timestamp),
            Some(u32::from(newest) * 3000)
        );
    }

    #[test]
    fn report_counts_what_was_sent_and_stops_with_the_sender() {
        let mut log = SendLog::default();
        let t0 = Instant::now();
        assert!(
            log.report(7, t0, SystemTime::now()).is_none(),
            "nothing sent"
        );
        log.record(packet(1, 1000, 1200), t0);
        log.record(packet(2, 4000, 800), t0 + Duration::from_millis(10));
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = t0 + Duration::from_millis(510);
        let sr = log.report(7, at, wall).expect("a sender");
        assert_eq!((sr.ssrc, sr.packet_count, sr.octet_count), (7, 2, 2000));
        assert_eq!(sr.rtp_time, 4000, "the newest packet's timestamp");
        // ... paired with the wall-clock time it was sent: 500 ms before `wall`.
        assert_eq!(sr.ntp_time, ntp(wall - Duration::from_millis(500)));
        assert!(log
            .report(7, t0 + SENDER_TIMEOUT + Duration::from_secs(1), wall)
            .is_none());
    }

    #[test]
    fn ntp_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(ntp(t) >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp(t) & 0xffff_ffff, 1 << 31);
    }

    proptest! {
        /// Whatever order packets are sent in, `get` returns a packet only with the sequence
        /// number asked for, and always the newest one recorded for it among the last
        /// HISTORY distinct slots.
        #[test]
        fn get_never_returns_another_sequence_number(seqs in proptest::collection::vec(any::<u16>(), 1..2000), probe in any::<u16>()) {
            let mut log = SendLog::default();
            let now = Instant::now();
            for (i, s) in seqs.iter().enumerate() {
                log.record(packet(*s, i as u32, 10), now);
            }
            if let Some(p) = log.get(probe) {
                prop_assert_eq!(p.header.sequence_number, probe);
            }
            let last = *seqs.last().unwrap();
            prop_assert_eq!(log.get(last).map(|p| p.header.timestamp), Some(seqs.len() as u32 - 1));
        }
    }
}
