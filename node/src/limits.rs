//! What one client, one address or one room may take of a node. Each limit is configurable
//! (`Limits`, flags `--max-…`), and each refusal is counted in `limits_hit_total{limit}`.
//!
//! | limit | default | when it bites |
//! |---|---|---|
//! | `auth_failures` | 3 per socket | the socket is closed with 1008 |
//! | `tracks_per_publisher` | 8 | the `publish` offer gets `error forbidden` |
//! | `connections` | 10 000 per node | the WebSocket upgrade gets HTTP 503 |
//! | `connections_per_ip` | 200 per source address | the upgrade gets HTTP 429 |
//! | `room_joins` | 50 per second per room, burst 100 | the join gets `error rate_limited` |
//! | `recipient_messages` | 50 per second per recipient, burst 100 | the sender gets `error rate_limited` |
//! | `cluster_requests` | 256 NATS requests served at once | the request is answered `unavailable` |

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Failed token checks (join, resume) a socket may make before it is closed.
    pub auth_failures: u32,
    /// Tracks one publisher may send at once.
    pub tracks_per_publisher: usize,
    /// Signaling sockets this node holds at once.
    pub connections: usize,
    /// Signaling sockets from one source address (behind a proxy: the proxy's).
    pub connections_per_ip: usize,
    /// Joins per second one room takes on this node (burst: twice that). Participants
    /// moved here by a failover or drain rejoin with their resume token and are not counted.
    pub room_joins_per_sec: u32,
    /// Application messages per second one recipient may be sent from this node (burst:
    /// twice that).
    pub recipient_messages_per_sec: u32,
    /// NATS requests (remote joins, resumes, room lists) this node serves at once.
    pub cluster_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            auth_failures: 3,
            tracks_per_publisher: 8,
            connections: 10_000,
            connections_per_ip: 200,
            room_joins_per_sec: 50,
            recipient_messages_per_sec: 50,
            cluster_requests: 256,
        }
    }
}

/// Counts a refusal by limit `limit`.
pub fn hit(limit: &'static str) {
    metrics::counter!("limits_hit_total", "limit" => limit).increment(1);
}

/// Per-key rate limits (rooms, recipients): a token bucket per key, `rate` a second with a
/// burst of twice that. Keys whose buckets are full again are forgotten once more than
/// `keep` are held, so the map stays bounded by the keys active in the last few seconds.
pub struct KeyedRate<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    keep: usize,
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    pub fn new(rate: u32, keep: usize) -> Self {
        let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        KeyedRate {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            keep,
        }
    }

    /// Takes one token of `key`'s bucket; false when it is empty.
    pub fn admit(&self, key: &K) -> bool {
        let admitted = self.limiter.check_key(key).is_ok();
        if self.limiter.len() > self.keep {
            self.limiter.retain_recent();
        }
        admitted
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    Node,
    Address,
}

/// The signaling sockets a node holds, in all and per source address.
#[derive(Default)]
pub struct Connections {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted socket; dropping it gives its place back.
pub struct ConnectionGuard {
    conns: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    /// Admits a socket from `ip` if the node and the address are under their limits.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
    ) -> Result<ConnectionGuard, ConnRefusal> {
        let mut open = crate::actors::lock(&self.open);
        let (total, per_ip) = &mut *open;
        if *total >= limits.connections {
            return Err(ConnRefusal::Node);
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limits.connections_per_ip {
            return Err(ConnRefusal::Address);
        }
        *n += 1;
        *total += 1;
        Ok(ConnectionGuard {
            conns: self.clone(),
            ip,
        })
    }

    /// Sockets open now, in all and from `ip`.
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let open = crate::actors::lock(&self.open);
        (open.0, open.1.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = crate::actors::lock(&self.conns.open);
        let (total, per_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_node_and_per_address_and_given_back() {
        let limits = Limits {
            connections: 3,
            connections_per_ip: 2,
            ..Limits::default()
        };
        let conns = Arc::new(Connections::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = conns.admit(a, &limits).unwrap();
        let _a2 = conns.admit(a, &limits).unwrap();
        assert_eq!(conns.admit(a, &limits).err(), Some(ConnRefusal::Address));
        let _b1 = conns.admit(b, &limits).unwrap();
        assert_eq!(conns.admit(b, &limits).err(), Some(ConnRefusal::Node));
        drop(a1);
        assert_eq!(conns.open(a), (2, 1));
        let _b2 = conns.admit(b, &limits).unwrap();
        assert_eq!(conns.open(b), (3, 2));
    }

    #[test]
    fn a_keyed_rate_takes_its_burst_then_refuses_per_key() {
        let rate = KeyedRate::new(5, 1000);
        let admitted = (0..100).filter(|_| rate.admit(&"room-a")).count();
        // The burst (10) and at most a token or two refilled meanwhile.
        assert!((10..=12).contains(&admitted), "{admitted}");
        assert!(rate.admit(&"room-b"), "another key has its own bucket");
    }

    proptest::proptest! {
        /// Whatever the order of admissions and departures, the counts stay within the
        /// limits and return to zero when every socket is gone.
        #[test]
        fn connection_counts_never_exceed_the_limits(ops in proptest::collection::vec((0u8..4, proptest::bool::ANY), 1..200)) {
            let limits = Limits { connections: 5, connections_per_ip: 2, ..Limits::default() };
            let conns = Arc::new(Connections::default());
            let mut held: Vec<ConnectionGuard> = Vec::new();
            for (ip, open) in ops {
                let ip = IpAddr::from([10, 0, 0, ip]);
                if open {
                    if let Ok(g) = conns.admit(ip, &limits) {
                        held.push(g);
                    }
                } else if let Some(i) = held.iter().position(|g| g.ip == ip) {
                    held.swap_remove(i);
                }
                let (total, from_ip) = conns.open(ip);
                proptest::prop_assert!(total <= 5 && from_ip <= 2);
                proptest::prop_assert_eq!(total, held.len());
            }
            held.clear();
            proptest::prop_assert_eq!(conns.open(IpAddr::from([10, 0, 0, 0])), (0, 0));
        }
    }
}
