//! The TCP shell: each accepted connection is dialled through to `to`, and two pumps copy
//! chunks each way through an impaired [`Lane`] in stream mode (in order, never dropped).
//!
//! Backpressure replaces dropping: a pump whose lane is full, or whose link is partitioned,
//! stops reading, so the kernel's buffers fill and the sender blocks as on a stalled path.

use super::{
    ensure_loopback, now, sleep_until, Direction, Impairment, Lane, Link, Mode, TCP_QUEUE_BYTES,
};
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

/// Connections open at once; past it the proxy stops accepting until one ends.
pub const TCP_MAX_CONNECTIONS: usize = 1024;
/// The largest chunk read (and scheduled) at once.
const CHUNK: usize = 16 * 1024;
/// Bound on dialling `to` once the link lets the connection through.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running TCP impairment proxy; it stops, closing every connection, when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    local_addr: SocketAddr,
    to: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on `listen` and relays each connection to `to` through `link`. Both must be
    /// loopback addresses (`InvalidInput` otherwise). Needs a tokio runtime.
    pub async fn start(listen: SocketAddr, to: SocketAddr, link: Link) -> io::Result<Self> {
        ensure_loopback(listen)?;
        ensure_loopback(to)?;
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(listener, to, link, connections.clone()));
        debug!(%local_addr, %to, "tcp impairment proxy started");
        Ok(Self {
            local_addr,
            to,
            connections,
            task: Some(task),
        })
    }

    /// Where clients connect (the bound port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently relayed (accepted and not yet closed).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops the proxy and waits until its listener is closed; connections are aborted.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        debug!(local_addr = %self.local_addr, to = %self.to, "tcp impairment proxy stopped");
    }
}

/// Accepts connections, each in the task set this loop owns: aborting the loop drops the set,
/// which aborts every connection.
async fn accept_loop(listener: TcpListener, to: SocketAddr, link: Link, count: Arc<AtomicUsize>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if connections.len() < TCP_MAX_CONNECTIONS => match accepted {
                Ok((client, peer)) => {
                    let open = Open::new(count.clone());
                    connections.spawn(relay(client, peer, to, link.clone(), open));
                }
                Err(e) => {
                    // Typically out of file descriptors: pause rather than spin.
                    debug!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts an open connection for as long as it lives, however its task ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection: waits out a partition before dialling (a partitioned link carries no
/// SYN either), then pumps both ways until both sides are done, one fails, or the link is cut.
async fn relay(client: TcpStream, peer: SocketAddr, to: SocketAddr, link: Link, _open: Open) {
    let mut cuts = link.cuts();
    let mut imp = link.watch();
    let dial = async {
        // Err only if the link's sender is gone, which our `link` prevents.
        let _ = imp.wait_for(|i| !i.partitioned).await;
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await
    };
    let upstream = tokio::select! {
        dialled = dial => dialled,
        _ = cut(&mut cuts) => {
            debug!(%peer, "tcp connection cut before dialling");
            return;
        }
    };
    let upstream = match upstream {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(%peer, %to, error = %e, "tcp dial failed");
            return;
        }
        Err(_) => {
            debug!(%peer, %to, "tcp dial timed out");
            return;
        }
    };
    // The proxy re-chunks and delays on purpose; Nagle on top would add delay nobody asked for.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    debug!(%peer, %to, "tcp connection relayed");
    let (forward_seed, reverse_seed) = link.flow_seeds();
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let forward = pump(
        client_read,
        upstream_write,
        &link,
        Direction::Forward,
        forward_seed,
    );
    let reverse = pump(
        upstream_read,
        client_write,
        &link,
        Direction::Reverse,
        reverse_seed,
    );
    tokio::select! {
        ended = async { tokio::try_join!(forward, reverse) } => match ended {
            Ok(_) => debug!(%peer, "tcp connection closed"),
            Err(e) => debug!(%peer, error = %e, "tcp connection failed"),
        },
        _ = cut(&mut cuts) => debug!(%peer, "tcp connection cut"),
    }
}

/// Resolves at the next [`Link::cut`]; never if the link can no longer be cut.
async fn cut(cuts: &mut watch::Receiver<u64>) {
    if cuts.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Copies one direction: read a chunk when there is room and no partition, schedule it,
/// write it when due, and pass the end of stream on once everything before it is written.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: &Link,
    direction: Direction,
    seed: u64,
) -> io::Result<()> {
    let mut updates = link.watch();
    let counters = link.counters(direction);
    let mut lane: Lane<Bytes> = Lane::new(Mode::Stream, seed, usize::MAX, TCP_QUEUE_BYTES);
    let mut buf = vec![0u8; CHUNK];
    let mut eof = false;
    let mut watching = true;
    loop {
        let imp: Impairment = *updates.borrow_and_update();
        if eof && lane.is_empty() {
            // The peer may already be gone; the stream is over either way.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let stalled = imp.partitioned;
        let can_read = !eof && !stalled && lane.has_room(CHUNK);
        let due = if stalled { None } else { lane.next_release() };
        tokio::select! {
            read = from.read(&mut buf), if can_read => {
                let len = read?;
                if len == 0 {
                    eof = true;
                    continue;
                }
                // Stream lanes never drop, and the room was checked before reading.
                let _ = lane.offer(now(), &imp, len, Bytes::copy_from_slice(&buf[..len]));
            }
            _ = sleep_until(due), if due.is_some() => {
                let now = now();
                while let Some(chunk) = lane.pop_due(now) {
                    to.write_all(&chunk).await?;
                    counters.forwarded(chunk.len());
                }
            }
            changed = updates.changed(), if watching => watching = changed.is_ok(),
            // Only when partitioned with no way left to heal: nothing more will move.
            else => std::future::pending::<()>().await,
        }
    }
}
