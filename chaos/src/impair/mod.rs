//! A userspace network impairment proxy for UDP and TCP on loopback: delay, jitter, random
//! loss, a rate cap and partitions between two addresses of one machine. The kernel here has
//! no netem, and tests, benchmarks and `deploy/local-cluster --geo` still need "geography"
//! between regions, so a region's media (UDP) and NATS (TCP) traffic goes through a proxy.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use chaos::impair::{Impairment, Link, UdpProxy};
//! use std::time::Duration;
//! let geo = Impairment {
//!     delay: Duration::from_millis(40),
//!     loss: 0.01,
//!     ..Impairment::default()
//! };
//! let link = Link::with_seed(geo, 42);
//! let (listen, media) = ("127.0.0.1:0".parse().unwrap(), "127.0.0.1:7882".parse().unwrap());
//! let proxy = UdpProxy::start(listen, media, link.clone()).await?;
//! // Clients send to `proxy.local_addr()` instead of port 7882.
//! link.partition(true); // the regions lose each other ...
//! link.partition(false); // ... and find each other again
//! println!("{:?}", link.stats());
//! # Ok(())
//! # }
//! ```
//!
//! What each impairment does:
//! - **delay and jitter**: every datagram or TCP chunk leaves `delay` plus a uniform draw in
//!   [-jitter, +jitter] after it arrived (never before). UDP datagrams may be reordered by
//!   jitter, as on a real path; a TCP stream stays in order (a chunk never leaves before the
//!   one ahead of it).
//! - **loss**: UDP only. TCP is reliable, so loss on its path shows up as delay from
//!   retransmission, not as missing bytes; a proxy that dropped bytes would corrupt the
//!   stream. Model lossy TCP with more delay or jitter.
//! - **rate cap**: a token bucket with a 10 ms burst delays release. A datagram that would
//!   wait more than [`MAX_RATE_WAIT`] is dropped (as a bottleneck's buffer would); a TCP
//!   stream waits, and its sender feels backpressure.
//! - **partition**: UDP drops everything while on, including datagrams already queued when
//!   they fall due. TCP stalls: nothing is read or forwarded either way (queued chunks are
//!   held) and new connections are not dialled upstream until the partition heals, then
//!   everything resumes on the same connections. [`Link::cut`] instead closes every current
//!   TCP connection, as a broken NATS link does.
//!
//! One [`Link`] may serve several proxies (a region pair's UDP and TCP); its counters then
//! add up. Every queue is bounded (see the `*_QUEUE_*` constants); a UDP datagram that finds
//! its queue full is dropped and counted, a TCP pump stops reading instead.
//!
//! Decisions come from seeded RNGs ([`Link::with_seed`]), so the same traffic in the same
//! order gets the same losses and jitter. Proxies refuse any non-loopback address: they are
//! test instruments, not relays. Every task of a proxy ends when its handle is dropped.

mod schedule;
mod tcp;
mod udp;

pub use schedule::{
    DelayLine, DropReason, Lane, Mode, Scheduler, Verdict, MAX_ADDED_DELAY, MAX_RATE_WAIT,
};
pub use tcp::TcpProxy;
pub use udp::{Route, UdpProxy};

use serde::Serialize;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Packets a UDP direction may hold in its delay queue.
pub const UDP_QUEUE_PACKETS: usize = 4096;
/// Bytes a UDP direction may hold in its delay queue.
pub const UDP_QUEUE_BYTES: usize = 4 << 20;
/// Bytes a TCP direction of one connection may hold before it stops reading: room for the
/// bandwidth-delay product of a fast local link with a few hundred milliseconds of delay.
pub const TCP_QUEUE_BYTES: usize = 1 << 20;

/// What a link does to the traffic crossing it. `Default` is a perfect link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// One-way delay added to every datagram or chunk.
    pub delay: Duration,
    /// Half-width of the uniform variation around `delay`.
    pub jitter: Duration,
    /// Probability in [0, 1] that a UDP datagram is lost; values outside act as the nearest
    /// bound, NaN as 0. Not applied to TCP.
    pub loss: f64,
    /// Cap in bits per second, each direction; `None` is unlimited, `Some(0)` acts as 1.
    pub rate_bps: Option<u64>,
    /// Nothing crosses while on.
    pub partitioned: bool,
}

/// Which way traffic crosses a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the clients of the listen address toward `to`.
    Forward,
    /// Replies from `to` back to the clients.
    Reverse,
}

/// A shared, live-adjustable impairment with its counters. Cloning gives another handle to
/// the same link; a test keeps one and hands another to the proxies.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    /// A watch rather than a lock: readers take the current value without blocking senders,
    /// and stalled TCP pumps wake when a partition heals.
    impairment: watch::Sender<Impairment>,
    /// Bumped by [`Link::cut`]; each TCP connection closes when it changes.
    cuts: watch::Sender<u64>,
    seed: u64,
    /// Flows opened so far, to give each its own RNG stream.
    flows: AtomicU64,
    forward: Counters,
    reverse: Counters,
}

impl Link {
    /// A link with a random seed (see [`Link::seed`] to reproduce a run).
    pub fn new(impairment: Impairment) -> Self {
        Self::with_seed(impairment, rand::random())
    }

    /// A link whose random decisions follow from `seed`.
    pub fn with_seed(impairment: Impairment, seed: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                impairment: watch::Sender::new(impairment),
                cuts: watch::Sender::new(0),
                seed,
                flows: AtomicU64::new(0),
                forward: Counters::default(),
                reverse: Counters::default(),
            }),
        }
    }

    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// The impairment now in force.
    pub fn impairment(&self) -> Impairment {
        *self.shared.impairment.borrow()
    }

    /// Replaces the impairment; packets already queued keep their release times.
    pub fn set(&self, impairment: Impairment) {
        self.shared.impairment.send_replace(impairment);
    }

    /// Turns the partition on or off, keeping the rest of the impairment.
    pub fn partition(&self, on: bool) {
        self.shared
            .impairment
            .send_modify(|imp| imp.partitioned = on);
    }

    /// Closes every TCP connection currently open through proxies on this link (new ones
    /// are accepted as usual). UDP has no connections and is untouched.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What crossed and what was dropped so far, each way.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            forward: self.shared.forward.snapshot(),
            reverse: self.shared.reverse.snapshot(),
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Impairment> {
        self.shared.impairment.subscribe()
    }

    pub(crate) fn cuts(&self) -> watch::Receiver<u64> {
        self.shared.cuts.subscribe()
    }

    pub(crate) fn counters(&self, direction: Direction) -> &Counters {
        match direction {
            Direction::Forward => &self.shared.forward,
            Direction::Reverse => &self.shared.reverse,
        }
    }

    /// Seeds for the two directions of the next flow (a UDP proxy or a TCP connection).
    pub(crate) fn flow_seeds(&self) -> (u64, u64) {
        let flow = self.shared.flows.fetch_add(1, Ordering::Relaxed);
        let base = self.shared.seed.wrapping_add(flow.wrapping_mul(2));
        (base, base.wrapping_add(1))
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new(Impairment::default())
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("impairment", &self.impairment())
            .field("seed", &self.seed())
            .finish_non_exhaustive()
    }
}

/// Counters of a [`Link`], both ways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    pub forward: DirectionStats,
    pub reverse: DirectionStats,
}

/// What one direction of a link carried and dropped. A "packet" is a UDP datagram or a TCP
/// chunk (one read, up to 16 KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Packets handed on.
    pub packets: u64,
    pub bytes: u64,
    pub dropped_loss: u64,
    pub dropped_partition: u64,
    /// Dropped because a queue was full or the rate cap would have held them too long.
    pub dropped_overflow: u64,
}

impl DirectionStats {
    /// Every packet that reached the proxy and has been decided: handed on or dropped.
    pub fn handled(&self) -> u64 {
        self.packets + self.dropped_loss + self.dropped_partition + self.dropped_overflow
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_partition: AtomicU64,
    dropped_overflow: AtomicU64,
}

impl Counters {
    pub(crate) fn forwarded(&self, len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        let counter = match reason {
            DropReason::Loss => &self.dropped_loss,
            DropReason::Partition => &self.dropped_partition,
            DropReason::Overflow => &self.dropped_overflow,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped_loss: self.dropped_loss.load(Ordering::Relaxed),
            dropped_partition: self.dropped_partition.load(Ordering::Relaxed),
            dropped_overflow: self.dropped_overflow.load(Ordering::Relaxed),
        }
    }
}

/// Refuses anything but 127.0.0.0/8 and ::1: an impairment proxy bound to a public address
/// would be an open relay, and one pointed at another machine would impair a network we do
/// not own.
fn ensure_loopback(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("impairment proxy is loopback only, refused {addr}"),
        ))
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The clock the shells hand to the pure scheduler; tokio's, so paused-time tests see it move.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_accepted() {
        for ok in ["127.0.0.1:1", "127.8.9.10:0", "[::1]:5"] {
            assert!(ensure_loopback(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "0.0.0.0:1",
            "10.0.0.1:80",
            "[::]:1",
            "[::ffff:127.0.0.1]:1",
            "192.0.2.1:9",
        ] {
            let err = ensure_loopback(bad.parse().unwrap()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn link_changes_are_seen_and_counted() {
        let link = Link::with_seed(Impairment::default(), 9);
        let other = link.clone();
        other.set(Impairment {
            delay: Duration::from_millis(5),
            ..Impairment::default()
        });
        other.partition(true);
        assert_eq!(
            link.impairment(),
            Impairment {
                delay: Duration::from_millis(5),
                partitioned: true,
                ..Impairment::default()
            }
        );
        link.counters(Direction::Forward).forwarded(100);
        link.counters(Direction::Reverse).dropped(DropReason::Loss);
        let stats = other.stats();
        assert_eq!((stats.forward.packets, stats.forward.bytes), (1, 100));
        assert_eq!(stats.reverse.dropped_loss, 1);
        assert_eq!(stats.reverse.handled(), 1);
        assert_ne!(link.flow_seeds(), other.flow_seeds());
    }
}
