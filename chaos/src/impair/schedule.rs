//! The pure half of the impairment proxy: when a packet may leave, and the bounded queue that
//! holds it until then. No IO and no clock: callers pass `now` in, so every rule here is
//! unit-tested with made-up instants instead of sleeps, and the socket shells in `udp` and
//! `tcp` only translate socket events into [`Lane::offer`] and [`Lane::pop_due`].

use super::Impairment;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The most delay (or jitter, or rate wait) the scheduler ever adds to one packet. Bounding
/// it keeps `Instant` arithmetic from overflowing on absurd input (`Duration::MAX`, a rate of
/// one bit per second) instead of panicking; an hour is "never" for any test.
pub const MAX_ADDED_DELAY: Duration = Duration::from_secs(3600);

/// How long a datagram may wait for the rate cap before it is dropped as overflow. A
/// bottleneck router buffers a fraction of a second, not minutes: a sender that outruns the
/// cap should see loss, as its congestion control expects, rather than ever-growing delay.
pub const MAX_RATE_WAIT: Duration = Duration::from_millis(500);

/// The token bucket's burst, as time at the capped rate: short enough that the cap shapes
/// traffic at packet scale, long enough that a capped link does not space out a keyframe's
/// first packets more than the wire would.
const BURST_TIME_SECS: f64 = 0.010;

/// The smallest burst in bytes, so one full-size datagram crosses an idle capped link without
/// waiting whatever the rate.
const MIN_BURST_BYTES: f64 = 1500.0;

/// What kind of traffic a [`Scheduler`] shapes; the two differ in what they may do to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// UDP: datagrams may be lost, dropped by a partition or by a full rate queue, and jitter
    /// may reorder them (as netem does).
    Datagram,
    /// A TCP byte stream: nothing is ever dropped (a proxy that loses bytes corrupts the
    /// stream, and TCP would only have retransmitted them), and chunks leave in order, so
    /// jitter delays the stream but never reorders it. Partitions are the caller's business:
    /// it stops reading.
    Stream,
}

/// Why a packet did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss.
    Loss,
    /// The link was partitioned when the packet arrived or when it was due.
    Partition,
    /// The queue was full, or the rate cap would have held the datagram too long.
    Overflow,
}

/// The scheduling decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet on at this instant (never before the `now` it arrived at).
    Release(Instant),
    Drop(DropReason),
}

/// Decides each packet's fate and release time for one direction of one flow: delay plus
/// uniform jitter, after the rate cap's token bucket lets it go. Its RNG is seeded, so the
/// same packets at the same instants get the same decisions.
#[derive(Debug)]
pub struct Scheduler {
    mode: Mode,
    rng: StdRng,
    bucket: TokenBucket,
    last_release: Option<Instant>,
}

impl Scheduler {
    pub fn new(mode: Mode, seed: u64) -> Self {
        Self {
            mode,
            rng: StdRng::seed_from_u64(seed),
            bucket: TokenBucket::default(),
            last_release: None,
        }
    }

    /// The fate of a packet of `len` bytes that arrives at `now` under `imp`.
    pub fn schedule(&mut self, now: Instant, imp: &Impairment, len: usize) -> Verdict {
        if self.mode == Mode::Datagram {
            if imp.partitioned {
                return Verdict::Drop(DropReason::Partition);
            }
            if self.lost(imp.loss) {
                return Verdict::Drop(DropReason::Loss);
            }
        }
        let ready = match imp.rate_bps {
            None => {
                self.bucket = TokenBucket::default();
                now
            }
            Some(rate) => {
                // A stream never drops: its wait is only clamped (in `take`).
                let max_wait = match self.mode {
                    Mode::Datagram => MAX_RATE_WAIT,
                    Mode::Stream => Duration::MAX,
                };
                match self.bucket.take(now, rate, len, max_wait) {
                    Some(wait) => add(now, wait),
                    None => return Verdict::Drop(DropReason::Overflow),
                }
            }
        };
        let mut release = self.delayed(ready, imp);
        if self.mode == Mode::Stream {
            if let Some(last) = self.last_release {
                release = release.max(last);
            }
        }
        self.last_release = Some(release);
        Verdict::Release(release)
    }

    /// Whether random loss takes this datagram. Loss outside (0, 1) or NaN draws nothing,
    /// so changing the loss to 0 does not shift the RNG's later decisions.
    fn lost(&mut self, loss: f64) -> bool {
        if loss >= 1.0 {
            true
        } else if loss > 0.0 {
            self.rng.gen::<f64>() < loss
        } else {
            false
        }
    }

    /// `ready` plus the delay and a uniform jitter in [-jitter, +jitter], never before `ready`
    /// (which is never before the arrival).
    fn delayed(&mut self, ready: Instant, imp: &Impairment) -> Instant {
        let base = add(ready, imp.delay.min(MAX_ADDED_DELAY));
        let jitter = imp.jitter.min(MAX_ADDED_DELAY).as_nanos() as u64;
        if jitter == 0 {
            return base;
        }
        let offset = self.rng.gen_range(0..=2 * jitter);
        let at = if offset >= jitter {
            add(base, Duration::from_nanos(offset - jitter))
        } else {
            base.checked_sub(Duration::from_nanos(jitter - offset))
                .unwrap_or(ready)
        };
        at.max(ready)
    }
}

fn add(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or(at)
}

/// The rate cap: tokens are bytes, refilled at the rate up to a small burst. A packet that
/// finds too few tokens takes them anyway (the balance goes negative) and waits until the
/// balance would have been repaid, which spaces packets at the rate and keeps them in order.
#[derive(Debug, Default)]
struct TokenBucket {
    tokens: f64,
    /// When `tokens` was last brought up to date; `None` means full (a fresh or uncapped link).
    at: Option<Instant>,
}

impl TokenBucket {
    /// How long `len` bytes arriving at `now` wait for the rate. `None`, leaving the bucket
    /// untouched, when that wait would exceed `max_wait`. A rate of 0 acts as 1 bit/s.
    fn take(
        &mut self,
        now: Instant,
        rate_bps: u64,
        len: usize,
        max_wait: Duration,
    ) -> Option<Duration> {
        let rate = rate_bps.max(1) as f64 / 8.0;
        let burst = (rate * BURST_TIME_SECS).max(MIN_BURST_BYTES);
        let tokens = match self.at {
            None => burst,
            Some(at) => {
                (self.tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(burst)
            }
        };
        let after = tokens - len as f64;
        let wait = if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-after / rate).unwrap_or(MAX_ADDED_DELAY)
        };
        if wait > max_wait {
            return None;
        }
        self.tokens = after;
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
        Some(wait.min(MAX_ADDED_DELAY))
    }
}

/// A bounded queue of packets ordered by release time (ties in arrival order). Bounded in
/// both packets and bytes so no sender can make the proxy grow without limit.
#[derive(Debug)]
pub struct DelayLine<T> {
    heap: BinaryHeap<Entry<T>>,
    bytes: usize,
    next_seq: u64,
    max_packets: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry<T> {
    at: Instant,
    seq: u64,
    len: usize,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so the max-heap pops the earliest release first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<T> DelayLine<T> {
    pub fn new(max_packets: usize, max_bytes: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            bytes: 0,
            next_seq: 0,
            max_packets,
            max_bytes,
        }
    }

    /// Whether a packet of `len` bytes fits now.
    pub fn has_room(&self, len: usize) -> bool {
        self.heap.len() < self.max_packets && self.bytes.saturating_add(len) <= self.max_bytes
    }

    /// Queues `item` (of `len` bytes) for `at`; gives it back when the line is full.
    pub fn push(&mut self, at: Instant, len: usize, item: T) -> Result<(), T> {
        if !self.has_room(len) {
            return Err(item);
        }
        self.heap.push(Entry {
            at,
            seq: self.next_seq,
            len,
            item,
        });
        self.next_seq = self.next_seq.wrapping_add(1);
        self.bytes += len;
        Ok(())
    }

    /// When the earliest packet is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// The earliest packet if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let entry = self.heap.pop()?;
        self.bytes -= entry.len;
        Some(entry.item)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// One direction of one flow: a [`Scheduler`] feeding a [`DelayLine`].
#[derive(Debug)]
pub struct Lane<T> {
    scheduler: Scheduler,
    line: DelayLine<T>,
}

impl<T> Lane<T> {
    pub fn new(mode: Mode, seed: u64, max_packets: usize, max_bytes: usize) -> Self {
        Self {
            scheduler: Scheduler::new(mode, seed),
            line: DelayLine::new(max_packets, max_bytes),
        }
    }

    /// Schedules and queues a packet that arrived at `now`, or says why it was dropped. A
    /// full queue is checked first, so a dropped packet spends no rate-cap tokens.
    pub fn offer(
        &mut self,
        now: Instant,
        imp: &Impairment,
        len: usize,
        item: T,
    ) -> Result<(), DropReason> {
        if !self.line.has_room(len) {
            return Err(DropReason::Overflow);
        }
        match self.scheduler.schedule(now, imp, len) {
            Verdict::Release(at) => self
                .line
                .push(at, len, item)
                .map_err(|_| DropReason::Overflow),
            Verdict::Drop(reason) => Err(reason),
        }
    }

    pub fn has_room(&self, len: usize) -> bool {
        self.line.has_room(len)
    }

    pub fn next_release(&self) -> Option<Instant> {
        self.line.next_release()
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        self.line.pop_due(now)
    }

    pub fn is_empty(&self) -> bool {
        self.line.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn release(v: Verdict) -> Instant {
        match v {
            Verdict::Release(at) => at,
            Verdict::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    #[test]
    fn no_impairment_releases_at_once() {
        let now = Instant::now();
        for mode in [Mode::Datagram, Mode::Stream] {
            let mut s = Scheduler::new(mode, 1);
            assert_eq!(
                s.schedule(now, &Impairment::default(), 1200),
                Verdict::Release(now)
            );
        }
    }

    #[test]
    fn delay_is_added() {
        let now = Instant::now();
        let imp = Impairment {
            delay: ms(40),
            ..Impairment::default()
        };
        let mut s = Scheduler::new(Mode::Datagram, 1);
        assert_eq!(release(s.schedule(now, &imp, 100)), now + ms(40));
    }

    #[test]
    fn jitter_stays_in_bounds_never_before_arrival_and_is_reproducible() {
        let now = Instant::now();
        let imp = Impairment {
            delay: ms(5),
            jitter: ms(10),
            ..Impairment::default()
        };
        let run = |seed| {
            let mut s = Scheduler::new(Mode::Datagram, seed);
            (0..1000u64)
                .map(|i| {
                    let t = now + ms(i);
                    let at = release(s.schedule(t, &imp, 100));
                    assert!(at >= t, "released before arrival");
                    assert!(at <= t + ms(15), "beyond delay + jitter");
                    at - t
                })
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same decisions");
        assert_ne!(a, run(8));
        // Clamped at arrival: some draws fell below zero and were pulled up to it.
        assert!(a.iter().any(|d| d.is_zero()));
        assert!(a.iter().any(|d| *d > ms(10)));
    }

    #[test]
    fn datagrams_may_reorder_streams_never_do() {
        let now = Instant::now();
        let imp = Impairment {
            delay: ms(20),
            jitter: ms(10),
            ..Impairment::default()
        };
        let releases = |mode| {
            let mut s = Scheduler::new(mode, 3);
            (0..200u64)
                .map(|i| release(s.schedule(now + Duration::from_micros(100 * i), &imp, 100)))
                .collect::<Vec<_>>()
        };
        let stream = releases(Mode::Stream);
        assert!(stream.windows(2).all(|w| w[0] <= w[1]));
        let datagrams = releases(Mode::Datagram);
        assert!(datagrams.windows(2).any(|w| w[0] > w[1]));
    }

    #[test]
    fn loss_drops_datagrams_only_and_odd_values_do_not_panic() {
        let now = Instant::now();
        let with_loss = |loss| Impairment {
            loss,
            ..Impairment::default()
        };
        let mut d = Scheduler::new(Mode::Datagram, 1);
        let mut st = Scheduler::new(Mode::Stream, 1);
        for _ in 0..100 {
            assert_eq!(
                d.schedule(now, &with_loss(1.0), 10),
                Verdict::Drop(DropReason::Loss)
            );
            assert_eq!(
                d.schedule(now, &with_loss(7.0), 10),
                Verdict::Drop(DropReason::Loss)
            );
            assert_eq!(st.schedule(now, &with_loss(1.0), 10), Verdict::Release(now));
            for odd in [0.0, -1.0, f64::NAN] {
                assert_eq!(d.schedule(now, &with_loss(odd), 10), Verdict::Release(now));
            }
        }
        let half = with_loss(0.5);
        let lost = (0..10_000)
            .filter(|_| d.schedule(now, &half, 10) == Verdict::Drop(DropReason::Loss))
            .count();
        assert!((4_500..5_500).contains(&lost), "lost {lost} of 10000");
    }

    #[test]
    fn partition_drops_datagrams_and_leaves_streams_to_the_caller() {
        let now = Instant::now();
        let imp = Impairment {
            partitioned: true,
            ..Impairment::default()
        };
        let mut d = Scheduler::new(Mode::Datagram, 1);
        assert_eq!(
            d.schedule(now, &imp, 10),
            Verdict::Drop(DropReason::Partition)
        );
        let mut s = Scheduler::new(Mode::Stream, 1);
        assert_eq!(s.schedule(now, &imp, 10), Verdict::Release(now));
    }

    #[test]
    fn rate_cap_spaces_packets_after_the_burst() {
        let now = Instant::now();
        // 8 kbit/s = 1000 bytes/s; the burst is the 1500-byte floor.
        let imp = Impairment {
            rate_bps: Some(8_000),
            ..Impairment::default()
        };
        let mut s = Scheduler::new(Mode::Stream, 1);
        assert_eq!(release(s.schedule(now, &imp, 1000)), now);
        // 500 tokens left: the next 1000 bytes wait half a second, the one after a full second more.
        assert_eq!(release(s.schedule(now, &imp, 1000)), now + ms(500));
        assert_eq!(release(s.schedule(now, &imp, 1000)), now + ms(1500));
        // Idle long enough, the bucket refills to its burst, no more.
        let later = now + Duration::from_secs(60);
        assert_eq!(release(s.schedule(later, &imp, 1500)), later);
        assert_eq!(release(s.schedule(later, &imp, 100)), later + ms(100));
    }

    #[test]
    fn rate_cap_adds_to_delay_and_removing_it_refills() {
        let now = Instant::now();
        let capped = Impairment {
            delay: ms(30),
            rate_bps: Some(8_000),
            ..Impairment::default()
        };
        let mut s = Scheduler::new(Mode::Datagram, 1);
        assert_eq!(release(s.schedule(now, &capped, 1500)), now + ms(30));
        assert_eq!(release(s.schedule(now, &capped, 100)), now + ms(130));
        let uncapped = Impairment {
            rate_bps: None,
            ..capped
        };
        assert_eq!(release(s.schedule(now, &uncapped, 100)), now + ms(30));
        assert_eq!(release(s.schedule(now, &capped, 1500)), now + ms(30));
    }

    #[test]
    fn datagrams_that_would_wait_too_long_for_the_rate_overflow_and_spend_nothing() {
        let now = Instant::now();
        let imp = Impairment {
            rate_bps: Some(8_000),
            ..Impairment::default()
        };
        let mut s = Scheduler::new(Mode::Datagram, 1);
        assert_eq!(release(s.schedule(now, &imp, 1500)), now);
        assert_eq!(release(s.schedule(now, &imp, 500)), now + ms(500));
        assert_eq!(
            s.schedule(now, &imp, 1),
            Verdict::Drop(DropReason::Overflow)
        );
        // The dropped byte took no token: 500 ms on, exactly one more 500-byte slot is due.
        let t = now + ms(500);
        assert_eq!(release(s.schedule(t, &imp, 500)), t + ms(500));
    }

    #[test]
    fn absurd_values_do_not_panic() {
        let now = Instant::now();
        let imp = Impairment {
            delay: Duration::MAX,
            jitter: Duration::MAX,
            loss: f64::NAN,
            rate_bps: Some(0),
            partitioned: false,
        };
        for mode in [Mode::Datagram, Mode::Stream] {
            let mut s = Scheduler::new(mode, u64::MAX);
            for len in [0, 1, 65_535, usize::MAX] {
                match s.schedule(now, &imp, len) {
                    Verdict::Release(at) => assert!(at >= now && at <= now + 3 * MAX_ADDED_DELAY),
                    Verdict::Drop(r) => {
                        assert_eq!((mode, r), (Mode::Datagram, DropReason::Overflow))
                    }
                }
            }
        }
        let big_rate = Impairment {
            rate_bps: Some(u64::MAX),
            ..Impairment::default()
        };
        let mut s = Scheduler::new(Mode::Datagram, 0);
        assert_eq!(s.schedule(now, &big_rate, 1_000_000), Verdict::Release(now));
    }

    #[test]
    fn delay_line_releases_in_time_order_ties_in_arrival_order() {
        let now = Instant::now();
        let mut line = DelayLine::new(10, 1000);
        line.push(now + ms(30), 1, "c").unwrap();
        line.push(now + ms(10), 1, "a").unwrap();
        line.push(now + ms(20), 1, "b1").unwrap();
        line.push(now + ms(20), 1, "b2").unwrap();
        assert_eq!(line.next_release(), Some(now + ms(10)));
        assert_eq!(line.pop_due(now), None);
        assert_eq!(line.pop_due(now + ms(25)), Some("a"));
        assert_eq!(line.pop_due(now + ms(25)), Some("b1"));
        assert_eq!(line.pop_due(now + ms(25)), Some("b2"));
        assert_eq!(line.pop_due(now + ms(25)), None);
        assert_eq!(line.pop_due(now + ms(30)), Some("c"));
        assert!(line.is_empty());
        assert_eq!(line.bytes(), 0);
    }

    #[test]
    fn delay_line_is_bounded_in_packets_and_bytes() {
        let now = Instant::now();
        let mut line = DelayLine::new(3, 100);
        line.push(now, 40, 1).unwrap();
        line.push(now, 40, 2).unwrap();
        assert!(!line.has_room(21));
        assert_eq!(line.push(now, 21, 3), Err(3));
        line.push(now, 20, 3).unwrap();
        assert!(!line.has_room(0));
        assert_eq!(line.push(now, 0, 4), Err(4));
        assert_eq!((line.len(), line.bytes()), (3, 100));
        assert_eq!(line.pop_due(now), Some(1));
        assert!(line.has_room(40));
    }

    #[test]
    fn lane_counts_a_full_queue_as_overflow_before_scheduling() {
        let now = Instant::now();
        let imp = Impairment {
            loss: 1.0,
            ..Impairment::default()
        };
        let mut lane = Lane::new(Mode::Datagram, 1, 1, 100);
        assert_eq!(lane.offer(now, &imp, 10, ()), Err(DropReason::Loss));
        assert_eq!(lane.offer(now, &Impairment::default(), 10, ()), Ok(()));
        assert_eq!(lane.offer(now, &imp, 10, ()), Err(DropReason::Overflow));
        assert_eq!(lane.pop_due(now), Some(()));
        assert!(lane.is_empty());
    }
}
