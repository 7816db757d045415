//! Live object counts and forwarding totals of one node, read by snapshots and `/metrics`.
//!
//! Each counted object holds a [`Live`] guard, so the counts cannot drift from reality when
//! an actor or task ends by any path.

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Counters {
    pub rooms: AtomicI64,
    pub peers: AtomicI64,
    pub transports: AtomicI64,
    pub tracks: AtomicI64,
    pub downtracks: AtomicI64,
    /// Media tasks: publisher read loops and subscriber RTCP loops.
    pub forwarding_tasks: AtomicI64,
    pub sessions: AtomicI64,
    /// Subscriptions to the directory entries of rooms hosted here (one per room).
    pub room_watches: AtomicI64,
    pub packets_in: AtomicU64,
    pub packets_forwarded: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    /// Payload bytes received from this node's own publishers (not over relay links).
    pub published_bytes_in: AtomicU64,
    /// Packets and payload bytes sent on relay links to other nodes (part of the forwarded
    /// totals).
    pub relay_packets_out: AtomicU64,
    pub relay_bytes_out: AtomicU64,
    /// Relay links whose connection failed (ICE consent lost: a partition, a dead node).
    pub relay_link_failures: AtomicU64,
    /// Connections failed because they stayed connecting past their setup timeout (a DTLS
    /// handshake that gave up silently, ICE that never completed).
    pub setup_timeouts: AtomicU64,
    /// A subscriber's send queue was full (slow subscriber).
    pub dropped_congested: AtomicU64,
    /// A retransmission or duplicate arrived twice from the publisher.
    pub dropped_duplicate: AtomicU64,
    /// The subscriber's connection could not protect the packet (no DTLS keys or no
    /// selected candidate pair yet, or closed).
    pub dropped_write_error: AtomicU64,
    /// Packets sent again because a subscriber's NACK named them.
    pub packets_retransmitted: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Media engine: datagrams (and ICE-TCP frames) read from the node's media port.
    pub engine_datagrams_in: AtomicU64,
    /// Datagrams sent on the media port (and ICE-TCP frames queued).
    pub engine_datagrams_out: AtomicU64,
    /// Dropped on arrival: the owning worker's queue was full (the node is starved).
    pub engine_queue_full: AtomicU64,
    /// Dropped on arrival: no connection for the address or ufrag (stray, spoofed, late).
    pub engine_unroutable: AtomicU64,
    /// Dropped on sending: the socket buffer or a TCP stream's queue was full.
    pub engine_send_dropped: AtomicU64,
    /// ICE-TCP streams open.
    pub engine_tcp_streams: AtomicI64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub rooms: i64,
    pub peers: i64,
    pub transports: i64,
    pub tracks: i64,
    pub downtracks: i64,
    pub forwarding_tasks: i64,
    pub sessions: i64,
    pub room_watches: i64,
    pub packets_in: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub published_bytes_in: u64,
    pub relay_packets_out: u64,
    pub relay_bytes_out: u64,
    pub relay_link_failures: u64,
    pub setup_timeouts: u64,
    pub dropped_congested: u64,
    pub dropped_duplicate: u64,
    pub dropped_write_error: u64,
    pub packets_retransmitted: u64,
    pub keyframe_requests: u64,
    pub engine_datagrams_in: u64,
    pub engine_datagrams_out: u64,
    pub engine_queue_full: u64,
    pub engine_unroutable: u64,
    pub engine_send_dropped: u64,
    pub engine_tcp_streams: i64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            rooms: g(&self.rooms),
            peers: g(&self.peers),
            transports: g(&self.transports),
            tracks: g(&self.tracks),
            downtracks: g(&self.downtracks),
            forwarding_tasks: g(&self.forwarding_tasks),
            sessions: g(&self.sessions),
            room_watches: g(&self.room_watches),
            packets_in: c(&self.packets_in),
            packets_forwarded: c(&self.packets_forwarded),
            bytes_forwarded: c(&self.bytes_forwarded),
            published_bytes_in: c(&self.published_bytes_in),
            relay_packets_out: c(&self.relay_packets_out),
            relay_bytes_out: c(&self.relay_bytes_out),
            relay_link_failures: c(&self.relay_link_failures),
            setup_timeouts: c(&self.setup_timeouts),
            dropped_congested: c(&self.dropped_congested),
            dropped_duplicate: c(&self.dropped_duplicate),
            dropped_write_error: c(&self.dropped_write_error),
            packets_retransmitted: c(&self.packets_retransmitted),
            keyframe_requests: c(&self.keyframe_requests),
            engine_datagrams_in: c(&self.engine_datagrams_in),
            engine_datagrams_out: c(&self.engine_datagrams_out),
            engine_queue_full: c(&self.engine_queue_full),
            engine_unroutable: c(&self.engine_unroutable),
            engine_send_dropped: c(&self.engine_send_dropped),
            engine_tcp_streams: g(&self.engine_tcp_streams),
        }
    }
}

/// Which live count a [`Live`] guard holds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Room,
    Peer,
    Transport,
    Track,
    DownTrack,
    ForwardingTask,
    Session,
    RoomWatch,
}

/// Increments a live count on creation and decrements it on drop.
#[derive(Debug)]
pub struct Live {
    counters: Arc<Counters>,
    kind: Kind,
}

impl Live {
    pub fn new(counters: &Arc<Counters>, kind: Kind) -> Self {
        Self::cell(counters, kind).fetch_add(1, Ordering::Relaxed);
        Live {
            counters: counters.clone(),
            kind,
        }
    }

    fn cell(c: &Counters, kind: Kind) -> &AtomicI64 {
        match kind {
            Kind::Room => &c.rooms,
            Kind::Peer => &c.peers,
            Kind::Transport => &c.transports,
            Kind::Track => &c.tracks,
            Kind::DownTrack => &c.downtracks,
            Kind::ForwardingTask => &c.forwarding_tasks,
            Kind::Session => &c.sessions,
            Kind::RoomWatch => &c.room_watches,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        Self::cell(&self.counters, self.kind).fetch_sub(1, Ordering::Relaxed);
    }
}
