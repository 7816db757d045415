//! The UDP shell: one listen socket, one upstream socket per client address (so `to` sees a
//! distinct source per client and its replies find their way back), and impaired lanes.
//!
//! Which link a client's traffic crosses is decided once, when its mapping opens, by a
//! [`Route`] on the client's IP: a geography gateway impairs clients of other regions and
//! lets its own region's clients through untouched. Each direction keeps one lane per link
//! in use, so a link's rate cap, jitter draws and partition apply to that link's packets
//! only; a mapping without a link skips the lanes and is relayed at once.
//!
//! One task owns the listen socket, the client table and the lanes; a small task per
//! mapping reads its upstream socket and hands replies over a bounded channel. The client
//! table is a plain struct with time passed in.

use super::{
    ensure_loopback, now, sleep_until, Direction, DropReason, Lane, Link, Mode, UDP_QUEUE_BYTES,
    UDP_QUEUE_PACKETS,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::debug;

/// A mapping with no traffic either way for this long is closed, as a NAT would.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many client mappings (upstream sockets); a new client past it evicts the
/// least recently active one.
pub const UDP_MAX_MAPPINGS: usize = 1024;
/// How often idle mappings are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Replies read by mapping tasks but not yet scheduled; beyond it they are dropped as overflow.
const REPLY_CHANNEL: usize = 1024;
const MAX_DATAGRAM: usize = 65_536;
/// Links one direction of a proxy keeps a lane for at once. A route normally returns a
/// handful (a region's peers); lanes of links no mapping uses any more are pruned at each
/// sweep, and a packet for a link past the cap is dropped as overflow.
pub const UDP_MAX_LANES: usize = 64;

/// Picks the link a client's traffic crosses from the client's IP, once per mapping;
/// `None` relays that client unimpaired and uncounted.
pub type Route = Arc<dyn Fn(IpAddr) -> Option<Link> + Send + Sync>;

/// A running UDP impairment proxy; it stops when dropped.
#[derive(Debug)]
pub struct UdpProxy {
    local_addr: SocketAddr,
    to: SocketAddr,
    mappings: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl UdpProxy {
    /// Binds `listen` and relays every datagram to `to` through `link`. Both must be loopback
    /// addresses (`InvalidInput` otherwise). Needs a tokio runtime.
    pub async fn start(listen: SocketAddr, to: SocketAddr, link: Link) -> io::Result<Self> {
        Self::start_routed(listen, to, Arc::new(move |_| Some(link.clone()))).await
    }

    /// Like [`UdpProxy::start`], but each client's link is `route(client ip)`, asked when
    /// its mapping opens; replies on that mapping cross the same link the other way.
    pub async fn start_routed(
        listen: SocketAddr,
        to: SocketAddr,
        route: Route,
    ) -> io::Result<Self> {
        ensure_loopback(listen)?;
        ensure_loopback(to)?;
        let socket = UdpSocket::bind(listen).await?;
        let local_addr = socket.local_addr()?;
        let mappings = Arc::new(AtomicUsize::new(0));
        let relay = Relay::new(socket, to, route, mappings.clone());
        let task = tokio::spawn(relay.run());
        debug!(%local_addr, %to, "udp impairment proxy started");
        Ok(Self {
            local_addr,
            to,
            mappings,
            task: Some(task),
        })
    }

    /// Where clients send (the bound port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Client mappings (upstream sockets) currently open.
    pub fn mappings(&self) -> usize {
        self.mappings.load(Ordering::Relaxed)
    }

    /// Stops the proxy and waits until its sockets are closed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        debug!(local_addr = %self.local_addr, to = %self.to, "udp impairment proxy stopped");
    }
}

/// One client's upstream socket and the link its route chose; dropping it stops the task
/// reading its replies.
struct Mapping {
    upstream: Arc<UdpSocket>,
    link: Option<Link>,
    reader: AbortHandle,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Relay {
    listen: UdpSocket,
    to: SocketAddr,
    route: Route,
    clients: ClientTable<Mapping>,
    mappings: Arc<AtomicUsize>,
    readers: JoinSet<()>,
    replies_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    replies_rx: mpsc::Receiver<(SocketAddr, Bytes)>,
    forward: Lanes<Arc<UdpSocket>>,
    reverse: Lanes<SocketAddr>,
}

impl Relay {
    fn new(listen: UdpSocket, to: SocketAddr, route: Route, mappings: Arc<AtomicUsize>) -> Self {
        let (replies_tx, replies_rx) = mpsc::channel(REPLY_CHANNEL);
        Self {
            listen,
            to,
            route,
            clients: ClientTable::new(UDP_IDLE_TIMEOUT, UDP_MAX_MAPPINGS),
            mappings,
            readers: JoinSet::new(),
            replies_tx,
            replies_rx,
            forward: Lanes::new(Direction::Forward),
            reverse: Lanes::new(Direction::Reverse),
        }
    }

    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forward_due = self.forward.next_release();
            let reverse_due = self.reverse.next_release();
            tokio::select! {
                received = self.listen.recv_from(&mut buf) => match received {
                    Ok((len, client)) => self.client_sent(client, &buf[..len]).await,
                    Err(e) => recv_failed(&e, "listen").await,
                },
                Some((client, data)) = self.replies_rx.recv() => self.upstream_replied(client, data).await,
                _ = sleep_until(forward_due), if forward_due.is_some() => self.release_forward().await,
                _ = sleep_until(reverse_due), if reverse_due.is_some() => self.release_reverse().await,
                _ = sweep.tick() => self.expire(),
                Some(_) = self.readers.join_next(), if !self.readers.is_empty() => {}
            }
        }
    }

    async fn client_sent(&mut self, client: SocketAddr, data: &[u8]) {
        let now = now();
        let (upstream, link) = match self.clients.touch(client, now) {
            Some(mapping) => (mapping.upstream.clone(), mapping.link.clone()),
            None => match self.open_mapping(client, now).await {
                Ok(opened) => opened,
                Err(e) => {
                    debug!(%client, error = %e, "udp mapping could not be opened");
                    return;
                }
            },
        };
        match link {
            Some(link) => self
                .forward
                .offer(&link, upstream, Bytes::copy_from_slice(data)),
            None => {
                if let Err(e) = upstream.send(data).await {
                    debug!(error = %e, "udp send upstream failed");
                }
            }
        }
    }

    async fn upstream_replied(&mut self, client: SocketAddr, data: Bytes) {
        let link = match self.clients.touch(client, now()) {
            Some(mapping) => mapping.link.clone(),
            // Evicted after its reader queued this reply: the route still knows the link.
            None => (self.route)(client.ip()),
        };
        match link {
            Some(link) => self.reverse.offer(&link, client, data),
            None => {
                if let Err(e) = self.listen.send_to(&data, client).await {
                    debug!(%client, error = %e, "udp send to client failed");
                }
            }
        }
    }

    async fn open_mapping(
        &mut self,
        client: SocketAddr,
        now: Instant,
    ) -> io::Result<(Arc<UdpSocket>, Option<Link>)> {
        let local: SocketAddr = if self.to.is_ipv4() {
            (Ipv4Addr::LOCALHOST, 0).into()
        } else {
            (Ipv6Addr::LOCALHOST, 0).into()
        };
        let upstream = UdpSocket::bind(local).await?;
        upstream.connect(self.to).await?;
        let upstream = Arc::new(upstream);
        let link = (self.route)(client.ip());
        let reader = self.readers.spawn(read_replies(
            upstream.clone(),
            client,
            self.replies_tx.clone(),
            link.clone(),
        ));
        let mapping = Mapping {
            upstream: upstream.clone(),
            link: link.clone(),
            reader,
        };
        if let Some((evicted, _)) = self.clients.insert(client, mapping, now) {
            debug!(%evicted, "udp mapping evicted");
        }
        debug!(
            %client,
            upstream = ?upstream.local_addr().ok(),
            impaired = link.is_some(),
            "udp mapping opened"
        );
        self.mappings.store(self.clients.len(), Ordering::Relaxed);
        Ok((upstream, link))
    }

    async fn release_forward(&mut self) {
        let now = now();
        while let Some((link, upstream, data)) = self.forward.pop_due(now) {
            match upstream.send(&data).await {
                Ok(_) => link.counters(Direction::Forward).forwarded(data.len()),
                Err(e) => debug!(error = %e, "udp send upstream failed"),
            }
        }
    }

    async fn release_reverse(&mut self) {
        let now = now();
        while let Some((link, client, data)) = self.reverse.pop_due(now) {
            match self.listen.send_to(&data, client).await {
                Ok(_) => link.counters(Direction::Reverse).forwarded(data.len()),
                Err(e) => debug!(%client, error = %e, "udp send to client failed"),
            }
        }
    }

    fn expire(&mut self) {
        let expired = self.clients.expire(now());
        if !expired.is_empty() {
            debug!(count = expired.len(), "udp mappings expired");
            self.mappings.store(self.clients.len(), Ordering::Relaxed);
        }
        let clients = &self.clients;
        let in_use = |link: &Link| {
            clients
                .values()
                .any(|m| m.link.as_ref().is_some_and(|l| same_link(l, link)))
        };
        self.forward.prune(in_use);
        self.reverse.prune(in_use);
    }
}

fn same_link(a: &Link, b: &Link) -> bool {
    Arc::ptr_eq(&a.shared, &b.shared)
}

/// One direction's lanes, one per link, with one bound on what they hold together: the
/// proxy holds no more with many links than with one.
struct Lanes<T> {
    direction: Direction,
    lanes: Vec<(Link, Lane<(T, Bytes)>)>,
    packets: usize,
    bytes: usize,
}

impl<T> Lanes<T> {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            lanes: Vec::new(),
            packets: 0,
            bytes: 0,
        }
    }

    /// Queues `data` for `to` on `link`'s lane (made on first use), or counts on `link` why
    /// it was dropped.
    fn offer(&mut self, link: &Link, to: T, data: Bytes) {
        let counters = link.counters(self.direction);
        let len = data.len();
        if self.packets >= UDP_QUEUE_PACKETS || self.bytes.saturating_add(len) > UDP_QUEUE_BYTES {
            counters.dropped(DropReason::Overflow);
            return;
        }
        let Some(lane) = self.lane(link) else {
            counters.dropped(DropReason::Overflow);
            return;
        };
        match lane.offer(now(), &link.impairment(), len, (to, data)) {
            Ok(()) => {
                self.packets += 1;
                self.bytes += len;
            }
            Err(reason) => counters.dropped(reason),
        }
    }

    fn lane(&mut self, link: &Link) -> Option<&mut Lane<(T, Bytes)>> {
        let index = match self.lanes.iter().position(|(l, _)| same_link(l, link)) {
            Some(index) => index,
            None if self.lanes.len() < UDP_MAX_LANES => {
                let (forward, reverse) = link.flow_seeds();
                let seed = match self.direction {
                    Direction::Forward => forward,
                    Direction::Reverse => reverse,
                };
                let lane = Lane::new(Mode::Datagram, seed, UDP_QUEUE_PACKETS, UDP_QUEUE_BYTES);
                self.lanes.push((link.clone(), lane));
                self.lanes.len() - 1
            }
            None => return None,
        };
        self.lanes.get_mut(index).map(|(_, lane)| lane)
    }

    fn next_release(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|(_, lane)| lane.next_release())
            .min()
    }

    /// The next packet due at `now` that its link lets through, with that link; packets due
    /// on a partitioned link are dropped and counted on the way.
    fn pop_due(&mut self, now: Instant) -> Option<(Link, T, Bytes)> {
        for (link, lane) in &mut self.lanes {
            while let Some((to, data)) = lane.pop_due(now) {
                self.packets = self.packets.saturating_sub(1);
                self.bytes = self.bytes.saturating_sub(data.len());
                if link.impairment().partitioned {
                    link.counters(self.direction).dropped(DropReason::Partition);
                    continue;
                }
                return Some((link.clone(), to, data));
            }
        }
        None
    }

    /// Forgets the empty lanes of links `in_use` no longer wants, so a route that hands out
    /// ever new links cannot fill the table.
    fn prune(&mut self, in_use: impl Fn(&Link) -> bool) {
        self.lanes
            .retain(|(link, lane)| !lane.is_empty() || in_use(link));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lanes.len()
    }
}

/// Reads one mapping's replies until the mapping (or the proxy) goes away.
async fn read_replies(
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    replies: mpsc::Sender<(SocketAddr, Bytes)>,
    link: Option<Link>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(len) => {
                let reply = (client, Bytes::copy_from_slice(&buf[..len]));
                match replies.try_send(reply) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if let Some(link) = &link {
                            link.counters(Direction::Reverse)
                                .dropped(DropReason::Overflow);
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Err(e) => recv_failed(&e, "upstream").await,
        }
    }
}

/// A receive error is never fatal to a relay: on Linux a connected UDP socket reports an
/// earlier ICMP "port unreachable" as `ConnectionRefused` on its next receive, and the
/// server may simply not be up yet. Anything else pauses briefly so a persistent error
/// cannot spin.
async fn recv_failed(e: &io::Error, socket: &'static str) {
    debug!(socket, error = %e, "udp receive failed");
    if !matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    ) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Client address → value, with the NAT rules: entries idle past a timeout expire, and a
/// full table evicts its least recently active entry.
#[derive(Debug)]
struct ClientTable<V> {
    entries: HashMap<SocketAddr, (V, Instant)>,
    idle: Duration,
    max: usize,
}

impl<V> ClientTable<V> {
    fn new(idle: Duration, max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            idle,
            max: max.max(1),
        }
    }

    /// The client's entry, marked active at `now`.
    fn touch(&mut self, client: SocketAddr, now: Instant) -> Option<&V> {
        let (value, seen) = self.entries.get_mut(&client)?;
        *seen = (*seen).max(now);
        Some(value)
    }

    /// Adds (or replaces) the client's entry; returns the entry evicted to make room.
    fn insert(&mut self, client: SocketAddr, value: V, now: Instant) -> Option<(SocketAddr, V)> {
        let mut evicted = None;
        if !self.entries.contains_key(&client) && self.entries.len() >= self.max {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(addr, _)| *addr);
            evicted = oldest.and_then(|addr| self.entries.remove(&addr).map(|(v, _)| (addr, v)));
        }
        self.entries.insert(client, (value, now));
        evicted
    }

    /// Removes and returns the entries idle for longer than the timeout at `now`.
    fn expire(&mut self, now: Instant) -> Vec<V> {
        let idle = self.idle;
        let stale: Vec<SocketAddr> = self
            .entries
            .iter()
            .filter(|(_, (_, seen))| now.saturating_duration_since(*seen) > idle)
            .map(|(addr, _)| *addr)
            .collect();
        stale
            .into_iter()
            .filter_map(|addr| self.entries.remove(&addr).map(|(v, _)| v))
            .collect()
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(value, _)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impair::Impairment;

    fn delayed(ms: u64, seed: u64) -> Link {
        Link::with_seed(
            Impairment {
                delay: Duration::from_millis(ms),
                ..Impairment::default()
            },
            seed,
        )
    }

    #[test]
    fn each_link_gets_its_own_lane_delay_and_partition() {
        let (slow, fast) = (delayed(50, 1), delayed(10, 2));
        let mut lanes = Lanes::new(Direction::Forward);
        lanes.offer(&slow, "slow", Bytes::from_static(b"aaaa"));
        lanes.offer(&fast, "fast", Bytes::from_static(b"bb"));
        lanes.offer(&slow.clone(), "slow again", Bytes::from_static(b"c"));
        assert_eq!(lanes.len(), 2, "a clone is the same link");
        let t0 = now();
        let due = lanes.next_release().expect("queued");
        assert!(due <= t0 + Duration::from_millis(10), "the fast lane leads");

        let later = t0 + Duration::from_millis(100);
        slow.partition(true);
        let (link, to, data) = lanes.pop_due(later).expect("the fast packet");
        assert!(same_link(&link, &fast));
        assert_eq!((to, &data[..]), ("fast", &b"bb"[..]));
        // Both slow packets fall due on a partitioned link: dropped and counted there.
        assert!(lanes.pop_due(later).is_none());
        assert_eq!(slow.stats().forward.dropped_partition, 2);
        assert_eq!(fast.stats().forward.dropped_partition, 0);
        assert_eq!((lanes.packets, lanes.bytes), (0, 0));
    }

    #[test]
    fn lanes_are_capped_and_unused_empty_ones_pruned() {
        let mut lanes = Lanes::new(Direction::Reverse);
        let links: Vec<Link> = (0..=UDP_MAX_LANES as u64).map(|s| delayed(5, s)).collect();
        for link in &links {
            lanes.offer(link, (), Bytes::from_static(b"x"));
        }
        assert_eq!(lanes.len(), UDP_MAX_LANES);
        let past_cap = &links[UDP_MAX_LANES];
        assert_eq!(past_cap.stats().reverse.dropped_overflow, 1);

        // Queued packets keep their lane whoever uses the link.
        lanes.prune(|_| false);
        assert_eq!(lanes.len(), UDP_MAX_LANES);
        while lanes.pop_due(now() + Duration::from_secs(1)).is_some() {}
        lanes.prune(|link| same_link(link, &links[0]));
        assert_eq!(lanes.len(), 1);
        lanes.offer(past_cap, (), Bytes::from_static(b"x"));
        assert_eq!(lanes.len(), 2);
    }

    #[test]
    fn the_queue_bound_holds_across_lanes() {
        let (a, b) = (delayed(1000, 1), delayed(1000, 2));
        let mut lanes = Lanes::new(Direction::Forward);
        for i in 0..UDP_QUEUE_PACKETS {
            let link = if i % 2 == 0 { &a } else { &b };
            lanes.offer(link, (), Bytes::from_static(b"x"));
        }
        lanes.offer(&a, (), Bytes::from_static(b"x"));
        lanes.offer(&b, (), Bytes::from_static(b"x"));
        assert_eq!(a.stats().forward.dropped_overflow, 1);
        assert_eq!(b.stats().forward.dropped_overflow, 1);
        assert_eq!(lanes.packets, UDP_QUEUE_PACKETS);
    }

    fn addr(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    #[test]
    fn idle_entries_expire_and_activity_keeps_them() {
        let t0 = Instant::now();
        let mut table = ClientTable::new(Duration::from_secs(60), 10);
        table.insert(addr(1), "a", t0);
        table.insert(addr(2), "b", t0);
        assert_eq!(
            table.touch(addr(2), t0 + Duration::from_secs(50)),
            Some(&"b")
        );
        assert!(table.expire(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(table.expire(t0 + Duration::from_secs(61)), vec!["a"]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.expire(t0 + Duration::from_secs(111)), vec!["b"]);
        assert_eq!(table.touch(addr(2), t0), None);
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_active() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut table = ClientTable::new(Duration::from_secs(60), 2);
        assert!(table.insert(addr(1), 1, at(0)).is_none());
        assert!(table.insert(addr(2), 2, at(1)).is_none());
        table.touch(addr(1), at(2));
        assert_eq!(table.insert(addr(3), 3, at(3)), Some((addr(2), 2)));
        // Replacing an existing client evicts no one.
        assert!(table.insert(addr(3), 30, at(4)).is_none());
        assert_eq!(table.len(), 2);
        assert_eq!(table.touch(addr(3), at(5)), Some(&30));
    }
}
