//! The media engine: every peer connection of the node (clients and relay links) on one UDP
//! port, plus one TCP port for ICE-TCP, driven by a fixed set of worker threads on the
//! sans-IO `rtc` core.
//!
//! - One **receiver thread** reads the UDP socket, routes each datagram to its connection
//!   ([`demux`]: the ufrag of a STUN binding request names worker and connection; then the
//!   remote address) and hands it to the owning worker's bounded queue. A full queue drops
//!   the datagram (counted): under CPU starvation the node loses packets, it does not
//!   buffer them.
//! - **Workers** ([`worker`]) own their connections outright: no task, mutex or channel per
//!   connection. They send on the shared socket without blocking (a full socket buffer
//!   drops, counted).
//! - **ICE-TCP** (RFC 6544 passive candidates, RFC 4571 framing) runs on the media runtime: a
//!   TCP client is the exception, so its stream gets a reader and a writer task; its frames
//!   join the same worker queues.

pub mod demux;
pub mod handle;
pub mod setup;
pub mod tcp;
pub mod worker;

use crate::counters::Counters;
use bytes::BytesMut;
use demux::{AddrTable, Verdict};
use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::shared::{TaggedBytesMut, TransportProtocol};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use worker::{ConnSpec, EngineError, Worker, WorkerHandle};

/// Where a connection lives.
#[derive(Clone)]
pub struct ConnRef {
    pub worker: WorkerHandle,
    pub conn: u64,
}

/// How the engine binds and what it announces.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The UDP (and TCP) address to bind; port 0 picks a free one.
    pub udp: SocketAddr,
    /// ICE-TCP port on the same IP; `None`: no ICE-TCP, `Some(0)`: a free port.
    pub tcp_port: Option<u16>,
    /// The address clients are told (1:1 NAT); default: the bound IP, or for a wildcard
    /// bind the first non-loopback interface address.
    pub announce_ip: Option<IpAddr>,
    pub workers: usize,
    /// Datagrams a worker's queue holds before the receiver drops.
    pub queue: usize,
    /// Ports for the receiving ends of relay links, inclusive; `(0, 0)`: any free port.
    pub relay_ports: (u16, u16),
}

/// What the workers share (read-only after start).
pub struct EngineShared {
    /// The UDP address as candidates announce it (what `rtc` sees as the local address).
    pub udp_local: SocketAddr,
    pub tcp_local: Option<SocketAddr>,
    /// `a=candidate` values every connection starts with.
    pub candidates: Vec<String>,
    pub certificate: RTCCertificate,
    socket: socket2::Socket,
    tcp_writers: tcp::Writers,
    /// What connections send to, for the receiver's address table.
    learn: crossbeam_channel::Sender<Learn>,
    /// The bound IP, and the announced one, for relay links' own sockets.
    bind_ip: IpAddr,
    announce_ip: IpAddr,
    pub(crate) relay_ports: crate::media::ports::PortPool,
    pub(crate) rt: tokio::runtime::Handle,
    /// Every connection's latest quality sample, by worker.
    pub quality: crate::media::quality::Board,
}

/// A worker tells the receiver which addresses are whose.
pub enum Learn {
    /// A connection sent to this address (not a STUN error): what comes from it is its.
    Add(SocketAddr, demux::Route),
    /// A connection closed.
    Forget(demux::Route),
}

pub struct Engine {
    workers: Arc<[WorkerHandle]>,
    shared: Arc<EngineShared>,
    bound_udp: SocketAddr,
    bound_tcp: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
}

impl Engine {
    /// Binds the sockets and starts the receiver, the workers and (with a TCP port) the
    /// ICE-TCP listener on `rt`.
    pub fn start(
        config: EngineConfig,
        counters: Arc<Counters>,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<Engine> {
        let workers_n = config.workers.clamp(1, 64);
        let udp = UdpSocket::bind(config.udp)?;
        let bound_udp = udp.local_addr()?;
        let sock = socket2::Socket::from(udp.try_clone()?);
        // Best effort: the kernel caps these at net.core.[rw]mem_max.
        let _ = sock.set_send_buffer_size(4 << 20);
        let _ = sock.set_recv_buffer_size(4 << 20);
        udp.set_read_timeout(Some(Duration::from_millis(250)))?;

        let announce_ip = config
            .announce_ip
            .unwrap_or_else(|| default_announce_ip(bound_udp.ip()));
        let udp_local = SocketAddr::new(announce_ip, bound_udp.port());
        let mut candidates = vec![format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            announce_ip,
            bound_udp.port()
        )];
        let tcp_listener = match config.tcp_port {
            Some(port) => {
                let l = std::net::TcpListener::bind(SocketAddr::new(config.udp.ip(), port))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        let bound_tcp = tcp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let tcp_local = bound_tcp.map(|b| SocketAddr::new(announce_ip, b.port()));
        if let Some(t) = tcp_local {
            candidates.push(format!(
                "candidate:2 1 tcp 1518280447 {} {} typ host tcptype passive",
                t.ip(),
                t.port()
            ));
        }
        let provider = rtc::crypto::default_provider().map_err(|e| anyhow::anyhow!("{e}"))?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            CertificateParams::new(vec!["webrtc-node".to_owned()])
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (learn_tx, learn_rx) = crossbeam_channel::bounded(65536);
        let shared = Arc::new(EngineShared {
            udp_local,
            tcp_local,
            candidates,
            certificate,
            socket: sock,
            tcp_writers: tcp::Writers::default(),
            learn: learn_tx,
            bind_ip: config.udp.ip(),
            announce_ip,
            relay_ports: crate::media::ports::PortPool::new(config.relay_ports),
            rt: rt.clone(),
            quality: crate::media::quality::Board::new(workers_n),
        });

        let mut handles = Vec::with_capacity(workers_n);
        let mut receivers = Vec::with_capacity(workers_n);
        for i in 0..workers_n {
            let (ctl_tx, ctl_rx) = crossbeam_channel::bounded(4096);
            let (data_tx, data_rx) = crossbeam_channel::bounded(config.queue.max(64));
            handles.push(WorkerHandle {
                index: i as u8,
                ctl: ctl_tx,
                data: data_tx,
            });
            receivers.push((ctl_rx, data_rx));
        }
        let workers: Arc<[WorkerHandle]> = handles.into();
        let stop = Arc::new(AtomicBool::new(false));
        for (i, (ctl_rx, data_rx)) in receivers.into_iter().enumerate() {
            let w = Worker::new(i as u8, shared.clone(), counters.clone(), workers.clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || w.run(ctl_rx, data_rx, &stop))?;
        }
        {
            let (workers, counters, stop) = (workers.clone(), counters.clone(), stop.clone());
            std::thread::Builder::new()
                .name("media-recv".into())
                .spawn(move || receive(udp, &learn_rx, &workers, &counters, &stop))?;
        }
        if let Some(listener) = tcp_listener {
            let listener = {
                let _in_runtime = rt.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            rt.spawn(tcp::accept_loop(
                listener,
                workers.clone(),
                shared.clone(),
                counters.clone(),
                stop.clone(),
            ));
        }
        tracing::info!(udp = %bound_udp, tcp = ?bound_tcp, announce = %announce_ip, workers = workers_n, "media engine started");
        Ok(Engine {
            workers,
            shared,
            bound_udp,
            bound_tcp,
            stop,
        })
    }

    /// The worker that serves `key` (a room id): one room's connections share a worker.
    pub fn worker_for(&self, key: &str) -> &WorkerHandle {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.workers[(h.finish() % self.workers.len() as u64) as usize]
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.bound_udp
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.bound_tcp
    }

    /// Every connection's latest quality sample.
    pub fn quality(&self) -> &crate::media::quality::Board {
        &self.shared.quality
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn default_announce_ip(bound: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    let found = nix::ifaddrs::getifaddrs().ok().and_then(|addrs| {
        addrs
            .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())))
            .find(|ip| !ip.is_loopback() && !ip.is_link_local())
    });
    found
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The receiver thread: reads datagrams until the engine stops, routes them to workers.
fn receive(
    socket: UdpSocket,
    learn: &crossbeam_channel::Receiver<Learn>,
    workers: &[WorkerHandle],
    counters: &Counters,
    stop: &AtomicBool,
) {
    let mut table = AddrTable::new(1 << 16, Duration::from_secs(30));
    let mut buf = vec![0u8; 2048];
    let learn_all = |table: &mut AddrTable, now: Instant| {
        while let Ok(l) = learn.try_recv() {
            match l {
                Learn::Add(addr, route) => {
                    if !table.learn(addr, route, now) {
                        tracing::warn!(%addr, "media address table full");
                    }
                }
                Learn::Forget(route) => table.forget(route),
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let received = socket.recv_from(&mut buf);
        learn_all(&mut table, Instant::now());
        let (n, from) = match received {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                table.maybe_sweep(Instant::now());
                continue;
            }
            Err(e) => {
                // ICMP errors (a peer's port closed) surface here on Linux; they are not ours.
                tracing::trace!(error = %e, "udp receive");
                continue;
            }
        };
        let now = Instant::now();
        counters.engine_datagrams_in.fetch_add(1, Ordering::Relaxed);
        let data = &buf[..n];
        match table.route(data, from, workers.len(), now) {
            Verdict::To(route) => {
                let d = worker::Data::Datagram {
                    conn: route.conn,
                    from,
                    local: None,
                    proto: TransportProtocol::UDP,
                    bytes: BytesMut::from(data),
                    at: now,
                };
                if workers[usize::from(route.worker)].data.try_send(d).is_err() {
                    counters.engine_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            Verdict::Unroutable | Verdict::Junk => {
                counters.engine_unroutable.fetch_add(1, Ordering::Relaxed);
            }
        }
        table.maybe_sweep(now);
    }
}

/// The socket of one relay link's receiving end: its own port, read by a task on the media
/// runtime that feeds the owning worker like the receiver thread does.
pub struct OwnSocket {
    pub socket: Arc<socket2::Socket>,
    /// The address its candidate announces (what `rtc` sees as local).
    pub local: SocketAddr,
    reader: tokio::task::JoinHandle<()>,
    _lease: crate::media::ports::PortLease,
}

impl Drop for OwnSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl EngineShared {
    /// Binds a port of the relay range for connection `conn` of `worker`.
    pub(crate) fn own_socket(
        &self,
        worker: WorkerHandle,
        conn: u64,
        counters: Arc<Counters>,
    ) -> anyhow::Result<OwnSocket> {
        let mut last = None;
        for _ in 0..8 {
            let lease = self.relay_ports.lease()?;
            let bound = match UdpSocket::bind(SocketAddr::new(self.bind_ip, lease.port())) {
                Ok(s) => s,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            bound.set_nonblocking(true)?;
            let port = bound.local_addr()?.port();
            let local = SocketAddr::new(self.announce_ip, port);
            let sender = Arc::new(socket2::Socket::from(bound.try_clone()?));
            let reader = {
                let _in_runtime = self.rt.enter();
                let socket = tokio::net::UdpSocket::from_std(bound)?;
                self.rt.spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                        counters.engine_datagrams_in.fetch_add(1, Ordering::Relaxed);
                        let d = worker::Data::Datagram {
                            conn,
                            from,
                            local: Some(local),
                            proto: TransportProtocol::UDP,
                            bytes: BytesMut::from(&buf[..n]),
                            at: Instant::now(),
                        };
                        if worker.data.try_send(d).is_err() {
                            counters.engine_queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            };
            return Ok(OwnSocket {
                socket: sender,
                local,
                reader,
                _lease: lease,
            });
        }
        Err(anyhow::anyhow!(
            "no usable relay port: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }
}

/// What a worker's connections wrote, sent at the end of its loop iteration.
pub struct Outbox {
    shared: Arc<EngineShared>,
    queue: Vec<TaggedBytesMut>,
    /// Relay links' own sockets by their announced address.
    pub(crate) own: std::collections::HashMap<SocketAddr, Arc<socket2::Socket>>,
}

impl Outbox {
    fn new(shared: Arc<EngineShared>) -> Self {
        Outbox {
            shared,
            queue: Vec::with_capacity(512),
            own: std::collections::HashMap::new(),
        }
    }

    pub fn push(&mut self, w: TaggedBytesMut) {
        self.queue.push(w);
    }

    /// Sends everything queued: UDP datagrams in `sendmmsg` batches per socket (one system
    /// call for a packet's whole fan-out), ICE-TCP frames to their streams' queues. Nothing
    /// blocks: what the socket buffer cannot take is dropped and counted.
    pub fn flush(&mut self, counters: &Counters) {
        if self.queue.is_empty() {
            return;
        }
        let (mut sent, mut dropped) = (0u64, 0u64);
        let mut queue = std::mem::take(&mut self.queue);
        let mut i = 0;
        while i < queue.len() {
            let w = &mut queue[i];
            if w.transport.transport_protocol == TransportProtocol::TCP {
                let frame = std::mem::take(&mut w.message).freeze();
                if self.shared.tcp_writers.send(w.transport.peer_addr, frame) {
                    sent += 1;
                } else {
                    dropped += 1;
                }
                i += 1;
                continue;
            }
            // A run of datagrams leaving through the same socket.
            let local = w.transport.local_addr;
            let own = self.own.get(&local).cloned();
            let mut end = i + 1;
            while end < queue.len()
                && end - i < SEND_BATCH
                && queue[end].transport.transport_protocol != TransportProtocol::TCP
                && (own.is_none() || queue[end].transport.local_addr == local)
                && (own.is_some() || !self.own.contains_key(&queue[end].transport.local_addr))
            {
                end += 1;
            }
            let socket = own.as_deref().unwrap_or(&self.shared.socket);
            let n = send_batch(socket, &queue[i..end]);
            sent += n as u64;
            dropped += (end - i - n) as u64;
            i = end;
        }
        queue.clear();
        self.queue = queue;
        counters
            .engine_datagrams_out
            .fetch_add(sent, Ordering::Relaxed);
        if dropped > 0 {
            counters
                .engine_send_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

/// Datagrams per `sendmmsg` call (the kernel takes at most `UIO_MAXIOV`, 1024).
const SEND_BATCH: usize = 512;

/// Sends `batch` on `socket` with as few `sendmmsg` calls as the kernel allows; returns how
/// many went out. A full socket buffer (EAGAIN) drops the rest of the batch.
fn send_batch(socket: &socket2::Socket, batch: &[TaggedBytesMut]) -> usize {
    use std::os::fd::AsRawFd;
    let addrs: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|w| Some(SockaddrStorage::from(w.transport.peer_addr)))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|w| [IoSlice::new(&w.message)]).collect();
    // (The headers hold raw pointers, so they are not `Send` and cannot live in the worker
    // between flushes; one allocation per batch.)
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    let (mut at, mut sent) = (0, 0);
    // Bounded: each round moves `at` forward or stops.
    while at < batch.len() {
        let res = sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &iovs[at..],
            &addrs[at..],
            [],
            MsgFlags::MSG_DONTWAIT,
        );
        match res {
            Ok(results) => {
                let n = results.count();
                if n == 0 {
                    break;
                }
                at += n;
                sent += n;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // The socket buffer is full: the rest is dropped.
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => {
                // Anything else (a peer's ICMP error surfacing) concerns the first datagram.
                tracing::trace!(error = %e, to = %batch[at].transport.peer_addr, "send");
                at += 1;
            }
        }
    }
    sent
}
