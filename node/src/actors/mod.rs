//! The node's control plane, one actor per concept (DESIGN.md "Actors on a node"):
//! [`session::SignalingSession`] per WebSocket, [`router::SessionRouter`] for user-id routing,
//! [`rooms::RoomRegistry`] for room lifecycle, [`room::Room`] per room, [`peer::Peer`] per
//! participant and [`transport::Transport`] per peer connection. Each answers [`Observe`]
//! with a serializable snapshot.

pub mod agent;
pub mod peer;
pub mod room;
pub mod room_links;
pub mod rooms;
pub mod router;
pub mod session;
pub mod transport;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::counters::Counters;
use crate::media::MediaContext;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What every actor of one node can reach.
#[derive(Clone)]
pub struct NodeCtx {
    pub config: Arc<Config>,
    pub media: Arc<MediaContext>,
    pub counters: Arc<Counters>,
    pub router: actix::Addr<router::SessionRouter>,
    pub rooms: actix::Addr<rooms::RoomRegistry>,
    /// The cluster connection; `None` for a standalone node.
    pub cluster: Option<Cluster>,
    /// Set by a drain command: the coordinator sends no new rooms here.
    pub draining: Arc<AtomicBool>,
}

/// Asks an actor for a snapshot of its state.
pub struct Observe;

impl actix::Message for Observe {
    type Result = serde_json::Value;
}
