//! The node's control plane, one actor per concept (DESIGN.md "Actors on a node"):
//! [`session::SignalingSession`] per WebSocket, [`router::SessionRouter`] for user-id routing,
//! [`rooms::RoomRegistry`] for room lifecycle, [`room::Room`] per room, [`peer::Peer`] per
//! participant and [`transport::Transport`] per peer connection. Each answers [`Observe`]
//! with a serializable snapshot.
//!
//! # Dependencies
//!
//! The actor modules import each other one way, from the entry points down:
//!
//! ```text
//! agent, session       entry points: WebSocket and NATS
//!       │
//!     rooms            the registry of rooms hosted here
//!       │
//!     room             with its child room::links
//!       │
//!     peer
//!       │
//! transport, router    leaves: import no other actor module
//! ```
//!
//! Each imports only modules below it; exactly (an arrow reads "imports"):
//!
//! - agent → rooms, room
//! - session → rooms, room, peer, router
//! - rooms → room
//! - room (and its child `room::links`) → peer, router
//! - peer → transport, router
//! - transport, router → no other actor module
//!
//! Messages an actor receives are defined in its own module. A lower actor talks back up
//! only through an output type of its own, sent to a [`actix::Recipient`] its owner gave it
//! at construction: [`transport::TransportEvent`] to the peer, [`peer::PeerEvent`] to the
//! room, [`room::RoomReport`] to the registry, [`router::Routed`] to a session. The
//! registry's watches of the rooms' directory entries report likewise
//! ([`rooms::watch::WatchReport`]).
//!
//! [`NodeCtx`] names no actor above the router, so every module may hold it; the room
//! registry is reached from the entry points only, through [`NodeEntry`].

pub mod agent;
pub mod drain;
pub mod peer;
pub mod room;
pub mod rooms;
pub mod router;
pub mod session;
pub mod transport;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::counters::Counters;
use crate::media::MediaContext;
use crate::peers::PeerNodes;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// What every actor of one node can reach.
#[derive(Clone)]
pub struct NodeCtx {
    pub config: Arc<Config>,
    pub media: Arc<MediaContext>,
    pub counters: Arc<Counters>,
    pub router: actix::Addr<router::SessionRouter>,
    /// The cluster connection; `None` for a standalone node.
    pub cluster: Option<Cluster>,
    /// Set by a drain command: the coordinator sends no new rooms here.
    pub draining: Arc<AtomicBool>,
    /// A coordinator counts this node as alive, so joins through it can be placed: with NATS
    /// connected, what `/readyz` means by ready. Always true standalone.
    pub placeable: Arc<AtomicBool>,
    /// The other nodes, from their heartbeats.
    pub peers: Arc<Mutex<PeerNodes>>,
    /// A drain runs (it sets `draining` and ends in `exit`).
    pub drain_started: Arc<AtomicBool>,
    /// Notified when the node should exit (a drain ended).
    pub exit: Arc<tokio::sync::Notify>,
    /// The signaling sockets held, in all and per source address (`limits`).
    pub connections: Arc<crate::limits::Connections>,
    /// Where the rooms hand their participants' webhook events (nothing standalone).
    pub webhooks: crate::webhooks::Webhooks,
}

impl NodeCtx {
    /// Other nodes' WebSocket URLs for `joined.fallback_urls`, nearest first.
    pub fn fallback_urls(&self) -> Vec<String> {
        lock(&self.peers).fallback_urls(std::time::Instant::now(), crate::peers::FALLBACK_URLS)
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the node's entry points hold (WebSocket sessions, the NATS agent, HTTP): the node
/// context and the room registry every join and resume goes through. The actors the
/// registry owns (rooms, peers) get the [`NodeCtx`] only.
#[derive(Clone)]
pub struct NodeEntry {
    pub shared: NodeCtx,
    pub rooms: actix::Addr<rooms::RoomRegistry>,
}

/// Asks an actor for a snapshot of its state.
pub struct Observe;

impl actix::Message for Observe {
    type Result = serde_json::Value;
}
