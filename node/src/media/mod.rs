//! The media plane: the engine that drives every peer connection of the node on one UDP port
//! (and one ICE-TCP port) on the sans-IO `rtc` core, and the forwarding path (publisher
//! packets rewritten for each subscriber through a forwarding table).

pub mod engine;
pub mod forward;
pub mod history;
pub mod interceptor;
pub mod ports;
pub mod quality;
pub mod sdp;

use crate::counters::Counters;
use engine::{Engine, EngineConfig};
use std::sync::Arc;

/// What every peer connection of a node shares.
pub struct MediaContext {
    /// The node's multi-thread runtime (NATS, ICE-TCP streams, actors' waiting).
    pub rt: tokio::runtime::Handle,
    pub counters: Arc<Counters>,
    pub engine: Engine,
}

impl MediaContext {
    pub fn new(
        rt: tokio::runtime::Handle,
        counters: Arc<Counters>,
        config: EngineConfig,
    ) -> anyhow::Result<Self> {
        let engine = Engine::start(config, counters.clone(), &rt)?;
        Ok(MediaContext {
            rt,
            counters,
            engine,
        })
    }
}
