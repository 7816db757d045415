//! ICE-TCP: the node's passive TCP candidate. A client behind a firewall that blocks UDP
//! connects here; each stream carries RFC 4571 frames (a 2-byte length, then one STUN, DTLS,
//! RTP or RTCP message). The stream's first frame must be a STUN binding request whose ufrag
//! names a connection; every later frame goes to that connection. Writes come back from the
//! worker through a bounded queue per stream (full: dropped, as UDP would).

use super::demux::{classify, Datagram, Ufrag};
use super::worker::{Data, WorkerHandle};
use super::EngineShared;
use crate::counters::Counters;
use bytes::{Bytes, BytesMut};
use rtc::shared::TransportProtocol;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// TCP clients at once; more are refused.
const MAX_STREAMS: usize = 4096;
/// Frames queued for one stream's writer.
const WRITE_QUEUE: usize = 1024;
/// A stream must present a binding request this soon.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_FRAME: usize = 1500 * 2;

/// Each live stream's write queue, by the client's address.
#[derive(Default)]
pub struct Writers {
    map: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
}

impl Writers {
    /// Queues one frame for `peer`'s stream; false when there is none or it is full.
    pub fn send(&self, peer: SocketAddr, frame: Bytes) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&peer) {
            Some(tx) => tx.try_send(frame).is_ok(),
            None => false,
        }
    }

    fn insert(&self, peer: SocketAddr, tx: mpsc::Sender<Bytes>) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_STREAMS {
            return false;
        }
        map.insert(peer, tx);
        true
    }

    fn remove(&self, peer: &SocketAddr) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }
}

pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    workers: Arc<[WorkerHandle]>,
    shared: Arc<EngineShared>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let accepted = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
        let (stream, peer) = match accepted {
            Err(_) => continue,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "ice-tcp accept");
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            stream,
            peer,
            workers.clone(),
            shared.clone(),
            counters.clone(),
        ));
    }
}

async fn read_frame(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let len = usize::from(r.read_u16().await?);
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    workers: Arc<[WorkerHandle]>,
    shared: Arc<EngineShared>,
    counters: Arc<Counters>,
) {
    let (mut r, mut w) = stream.into_split();
    let mut buf = Vec::with_capacity(MAX_FRAME);
    // The first frame decides the connection.
    let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut r, &mut buf)).await;
    if !matches!(first, Ok(Ok(()))) {
        return;
    }
    let route = match classify(&buf) {
        Datagram::BindingRequest { local_ufrag } => Ufrag::parse(local_ufrag),
        _ => None,
    };
    let Some(route) = route.filter(|r| usize::from(r.worker) < workers.len()) else {
        counters.engine_unroutable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let worker = workers[usize::from(route.worker)].clone();
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if !shared.tcp_writers.insert(peer, tx) {
        tracing::warn!(%peer, "too many ice-tcp streams; refused");
        return;
    }
    counters.engine_tcp_streams.fetch_add(1, Ordering::Relaxed);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let Ok(len) = u16::try_from(frame.len()) else {
                continue;
            };
            if w.write_all(&len.to_be_bytes()).await.is_err() || w.write_all(&frame).await.is_err()
            {
                break;
            }
        }
    });
    loop {
        let d = Data::Datagram {
            conn: route.conn,
            from: peer,
            local: None,
            proto: TransportProtocol::TCP,
            bytes: BytesMut::from(&buf[..]),
            at: Instant::now(),
        };
        counters.engine_datagrams_in.fetch_add(1, Ordering::Relaxed);
        if worker.data.try_send(d).is_err() {
            counters.engine_queue_full.fetch_add(1, Ordering::Relaxed);
        }
        if read_frame(&mut r, &mut buf).await.is_err() {
            break;
        }
    }
    shared.tcp_writers.remove(&peer);
    writer.abort();
    counters.engine_tcp_streams.fetch_sub(1, Ordering::Relaxed);
}
