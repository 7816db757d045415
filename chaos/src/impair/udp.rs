//! The UDP shell: one listen socket, one upstream socket per client address (so `to` sees a
//! distinct source per client and its replies find their way back), two impaired lanes.
//!
//! One task owns the listen socket, the client table and both lanes; a small task per
//! mapping reads its upstream socket and hands replies over a bounded channel. The client
//! table is a plain struct with time passed in.

use super::{
    ensure_loopback, now, sleep_until, Direction, DropReason, Impairment, Lane, Link, Mode,
    UDP_QUEUE_BYTES, UDP_QUEUE_PACKETS,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
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
        ensure_loopback(listen)?;
        ensure_loopback(to)?;
        let socket = UdpSocket::bind(listen).await?;
        let local_addr = socket.local_addr()?;
        let mappings = Arc::new(AtomicUsize::new(0));
        let relay = Relay::new(socket, to, link, mappings.clone());
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

/// One client's upstream socket; dropping it stops the task reading its replies.
struct Mapping {
    upstream: Arc<UdpSocket>,
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
    link: Link,
    clients: ClientTable<Mapping>,
    mappings: Arc<AtomicUsize>,
    readers: JoinSet<()>,
    replies_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    replies_rx: mpsc::Receiver<(SocketAddr, Bytes)>,
    forward: Lane<(Arc<UdpSocket>, Bytes)>,
    reverse: Lane<(SocketAddr, Bytes)>,
}

impl Relay {
    fn new(listen: UdpSocket, to: SocketAddr, link: Link, mappings: Arc<AtomicUsize>) -> Self {
        let (forward_seed, reverse_seed) = link.flow_seeds();
        let (replies_tx, replies_rx) = mpsc::channel(REPLY_CHANNEL);
        Self {
            listen,
            to,
            link,
            clients: ClientTable::new(UDP_IDLE_TIMEOUT, UDP_MAX_MAPPINGS),
            mappings,
            readers: JoinSet::new(),
            replies_tx,
            replies_rx,
            forward: Lane::new(
                Mode::Datagram,
                forward_seed,
                UDP_QUEUE_PACKETS,
                UDP_QUEUE_BYTES,
            ),
            reverse: Lane::new(
                Mode::Datagram,
                reverse_seed,
                UDP_QUEUE_PACKETS,
                UDP_QUEUE_BYTES,
            ),
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
                Some((client, data)) = self.replies_rx.recv() => self.upstream_replied(client, data),
                _ = sleep_until(forward_due), if forward_due.is_some() => self.release_forward().await,
                _ = sleep_until(reverse_due), if reverse_due.is_some() => self.release_reverse().await,
                _ = sweep.tick() => self.expire(),
                Some(_) = self.readers.join_next(), if !self.readers.is_empty() => {}
            }
        }
    }

    async fn client_sent(&mut self, client: SocketAddr, data: &[u8]) {
        let now = now();
        let upstream = match self.clients.touch(client, now) {
            Some(mapping) => mapping.upstream.clone(),
            None => match self.open_mapping(client, now).await {
                Ok(upstream) => upstream,
                Err(e) => {
                    debug!(%client, error = %e, "udp mapping could not be opened");
                    return;
                }
            },
        };
        let imp = self.link.impairment();
        let item = (upstream, Bytes::copy_from_slice(data));
        offer(
            &mut self.forward,
            &self.link,
            Direction::Forward,
            &imp,
            data.len(),
            item,
        );
    }

    fn upstream_replied(&mut self, client: SocketAddr, data: Bytes) {
        let now = now();
        self.clients.touch(client, now);
        let imp = self.link.impairment();
        let len = data.len();
        offer(
            &mut self.reverse,
            &self.link,
            Direction::Reverse,
            &imp,
            len,
            (client, data),
        );
    }

    async fn open_mapping(
        &mut self,
        client: SocketAddr,
        now: Instant,
    ) -> io::Result<Arc<UdpSocket>> {
        let local: SocketAddr = if self.to.is_ipv4() {
            (Ipv4Addr::LOCALHOST, 0).into()
        } else {
            (Ipv6Addr::LOCALHOST, 0).into()
        };
        let upstream = UdpSocket::bind(local).await?;
        upstream.connect(self.to).await?;
        let upstream = Arc::new(upstream);
        let reader = self.readers.spawn(read_replies(
            upstream.clone(),
            client,
            self.replies_tx.clone(),
            self.link.clone(),
        ));
        let mapping = Mapping {
            upstream: upstream.clone(),
            reader,
        };
        if let Some((evicted, _)) = self.clients.insert(client, mapping, now) {
            debug!(%evicted, "udp mapping evicted");
        }
        debug!(%client, upstream = ?upstream.local_addr().ok(), "udp mapping opened");
        self.mappings.store(self.clients.len(), Ordering::Relaxed);
        Ok(upstream)
    }

    async fn release_forward(&mut self) {
        let now = now();
        let partitioned = self.link.impairment().partitioned;
        let counters = self.link.counters(Direction::Forward);
        while let Some((upstream, data)) = self.forward.pop_due(now) {
            if partitioned {
                counters.dropped(DropReason::Partition);
                continue;
            }
            match upstream.send(&data).await {
                Ok(_) => counters.forwarded(data.len()),
                Err(e) => debug!(error = %e, "udp send upstream failed"),
            }
        }
    }

    async fn release_reverse(&mut self) {
        let now = now();
        let partitioned = self.link.impairment().partitioned;
        let counters = self.link.counters(Direction::Reverse);
        while let Some((client, data)) = self.reverse.pop_due(now) {
            if partitioned {
                counters.dropped(DropReason::Partition);
                continue;
            }
            match self.listen.send_to(&data, client).await {
                Ok(_) => counters.forwarded(data.len()),
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
    }
}

/// Queues a packet on `lane` or counts why it was dropped.
fn offer<T>(
    lane: &mut Lane<T>,
    link: &Link,
    direction: Direction,
    imp: &Impairment,
    len: usize,
    item: T,
) {
    if let Err(reason) = lane.offer(now(), imp, len, item) {
        link.counters(direction).dropped(reason);
    }
}

/// Reads one mapping's replies until the mapping (or the proxy) goes away.
async fn read_replies(
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    replies: mpsc::Sender<(SocketAddr, Bytes)>,
    link: Link,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(len) => {
                let reply = (client, Bytes::copy_from_slice(&buf[..len]));
                match replies.try_send(reply) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => link
                        .counters(Direction::Reverse)
                        .dropped(DropReason::Overflow),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
