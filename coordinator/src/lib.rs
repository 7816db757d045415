//! The coordinator: node registry from heartbeats, room placement with compare-and-swap in
//! JetStream KV, sharding of decisions among live coordinators, admin HTTP API and metrics.
//!
//! Run two or more; all are active. Whichever coordinator an allocation reaches decides it
//! (a new room without reading KV, from its in-memory mirror of the directory, [`mirror`]);
//! every directory write is
//! conditional on the key's revision, so two coordinators deciding for one room still install
//! at most one origin per epoch (the loser reads KV and decides again). Work nobody asked
//! for (moving a dead node's rooms, finishing created rooms nobody joined) is sharded: each
//! room has one deciding coordinator, by rendezvous hash of the room id over the live
//! coordinators.
//!
//! A room spans nodes (DESIGN.md "Placement and cascading"): its entry lists them with their
//! regions. An allocation is served by the room's node in the client's region, or extends
//! the room with a node there; a node that leaves the room (`cluster.room.closed`) leaves
//! the entry, which is deleted with the room's last node.
//!
//! A node that dies leaves its rooms' entries (DESIGN.md "Failover, fencing, drain"): a
//! suspicion is checked with a direct probe, so a killed node is found dead within a probe's
//! round trip, and heartbeat silence is the backstop; each death is announced on
//! `cluster.node.down` and the dead node's rooms move at once (see `failover`).
//!
//! Threads: one multi-thread tokio runtime per coordinator (`--worker-threads`, one by default) runs the NATS client and its
//! tasks and drives the actix-web server (whose single worker runs on its own thread). Tests
//! start several coordinators in one process.
//!
//! | module | what |
//! |---|---|
//! | [`registry`] | live nodes and coordinators, pending rooms (pure) |
//! | [`decide`] | the allocation and leave decisions given the directory's record (pure) |
//! | [`directory`] | the `rooms` KV bucket |
//! | [`mirror`] | the `rooms` bucket's live entries, watched into memory, by room and by node |
//! | `agent` | NATS: connection, heartbeats, subscriptions |
//! | `allocate` | serving `coord.allocate`: decide, then write |
//! | `failover` | suspicions, probes, deaths: `cluster.node.down`, rooms moved off dead nodes |
//! | `http` | admin API |
//! | [`api`] | room API (`/v1`, README "Room API", `docs/openapi.yaml`) |
//! | [`settings`] | the `room_settings` KV bucket, watched into memory |
//! | `lifecycle` | rooms opening and finishing: settings, `room_started`/`room_finished`, the empty-room sweep |
//! | `webhooks` | the coordinator's webhook events and their delivery |
//! | [`metrics`] | Prometheus exposition |
#![forbid(unsafe_code)]

mod agent;
mod allocate;
pub mod api;
pub mod cli;
pub mod config;
pub mod decide;
pub mod directory;
pub mod error;
mod failover;
mod http;
mod lifecycle;
pub mod metrics;
pub mod mirror;
pub mod registry;
pub mod settings;
mod webhooks;

pub use config::{Config, DEV_API_KEY, DEV_API_SECRET};
pub use directory::RoomDirectory;
pub use error::{Error, Result};

use registry::{CoordRegistry, NodeRegistry, NodeStatus};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Semaphore};

/// Allocation requests served at once; more wait in the subscription.
const MAX_INFLIGHT: u32 = 512;

/// State shared by the NATS tasks and the HTTP handlers.
pub(crate) struct Shared {
    config: Config,
    nodes: Mutex<NodeRegistry>,
    coords: Mutex<CoordRegistry>,
    client: OnceLock<async_nats::Client>,
    directory: OnceLock<RoomDirectory>,
    /// The directory's live entries, as of a moment ago.
    mirror: Mutex<mirror::DirectoryMirror>,
    /// The mirror's revision, for waiting until it has caught up.
    mirror_revision: watch::Sender<u64>,
    settings: OnceLock<settings::SettingsStore>,
    /// Whether the webhook stream may exist (false once an event met none; see
    /// `webhooks::stream_presence`).
    webhook_stream: std::sync::atomic::AtomicBool,
    probes: Mutex<failover::ProbeGate<failover::Probe>>,
    metrics: metrics::Metrics,
    inflight: Arc<Semaphore>,
    rt: tokio::runtime::Handle,
}

impl Shared {
    fn nodes(&self) -> MutexGuard<'_, NodeRegistry> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn coords(&self) -> MutexGuard<'_, CoordRegistry> {
        self.coords.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mirror(&self) -> MutexGuard<'_, mirror::DirectoryMirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn probes(&self) -> MutexGuard<'_, failover::ProbeGate<failover::Probe>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connected to NATS with the directory open; otherwise why not.
    fn readiness(&self) -> std::result::Result<(), &'static str> {
        let Some(client) = self.client.get() else {
            return Err("nats client not created");
        };
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected to nats");
        }
        if self.directory.get().is_none() {
            return Err("room directory not open");
        }
        if self.settings.get().is_none() {
            return Err("room settings not open");
        }
        Ok(())
    }

    fn snapshot(&self) -> CoordinatorSnapshot {
        let now = Instant::now();
        CoordinatorSnapshot {
            id: self.config.id.clone(),
            ready: self.readiness().is_ok(),
            live_coordinators: self.coords().live(now),
            nodes: self.nodes().statuses(now),
        }
    }
}

/// What a coordinator knows, for tests and the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorSnapshot {
    pub id: String,
    pub ready: bool,
    pub live_coordinators: Vec<String>,
    pub nodes: Vec<NodeStatus>,
}

/// A coordinator running on its own threads in this process.
pub struct CoordinatorHandle {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    stop_tx: watch::Sender<bool>,
    agent_done: Option<oneshot::Receiver<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

/// Starts a coordinator: its HTTP server is listening when this returns; it connects to NATS
/// in the background (retrying until NATS is there) and reports ready on `/readyz` once
/// connected with the directory open.
pub fn spawn(config: Config) -> Result<CoordinatorHandle> {
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .thread_name(format!("coord-{}", config.id))
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        nodes: Mutex::new(NodeRegistry::new(
            config.node_timeout,
            config.pending_settle,
        )),
        coords: Mutex::new(CoordRegistry::new(config.id.clone(), config.node_timeout)),
        client: OnceLock::new(),
        directory: OnceLock::new(),
        mirror: Mutex::default(),
        mirror_revision: watch::Sender::new(0),
        settings: OnceLock::new(),
        webhook_stream: std::sync::atomic::AtomicBool::new(true),
        probes: Mutex::new(failover::ProbeGate::new(failover::PROBE_GAP)),
        metrics: metrics::Metrics::new(),
        inflight: Arc::new(Semaphore::new(MAX_INFLIGHT as usize)),
        rt: rt.handle().clone(),
        config,
    });
    let (server, http_addr) = {
        let _in_rt = rt.enter();
        http::serve(shared.clone())?
    };
    let server_handle = server.handle();
    rt.spawn(server);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = oneshot::channel();
    rt.spawn(agent::run(shared.clone(), stop_rx, done_tx));
    tracing::info!(coordinator = %shared.config.id, %http_addr, nats = %redact(&shared.config.nats_url), "coordinator started");
    Ok(CoordinatorHandle {
        shared,
        http_addr,
        server: server_handle,
        stop_tx,
        agent_done: Some(done_rx),
        rt: Some(rt),
    })
}

impl CoordinatorHandle {
    pub fn id(&self) -> &str {
        &self.shared.config.id
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Connected to NATS with the room directory open.
    pub fn is_ready(&self) -> bool {
        self.shared.readiness().is_ok()
    }

    pub fn snapshot(&self) -> CoordinatorSnapshot {
        self.shared.snapshot()
    }

    /// Abrupt death, as in a crash: every task is dropped at once, the NATS connection just
    /// closes, nothing is flushed or announced.
    pub fn kill(mut self) {
        self.abort();
    }

    /// Graceful stop: stops taking requests, lets those in flight answer (bounded), drains the
    /// NATS connection and stops the HTTP server. Call from within a tokio runtime.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(done) = self.agent_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
        let (tx, rx) = oneshot::channel();
        let server = self.server.clone();
        self.shared.rt.spawn(async move {
            server.stop(true).await;
            let _ = tx.send(());
        });
        let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        tracing::info!(coordinator = %self.shared.config.id, "coordinator stopped");
    }

    fn abort(&mut self) {
        let Some(rt) = self.rt.take() else { return };
        // The HTTP server's accept loop and worker live on their own threads: stop them (not
        // gracefully), then drop the runtime and with it every task and the NATS socket.
        let (tx, rx) = std::sync::mpsc::channel();
        let server = self.server.clone();
        rt.spawn(async move {
            server.stop(false).await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(2));
        rt.shutdown_background();
        tracing::info!(coordinator = %self.shared.config.id, "coordinator killed");
    }
}

impl Drop for CoordinatorHandle {
    fn drop(&mut self) {
        self.abort();
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// NATS URLs as they may be logged: a password inside one becomes `***`.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            match rest.split_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    let sep = if scheme.is_empty() { "" } else { "://" };
                    format!("{scheme}{sep}{user}:***@{host}")
                }
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            super::redact("nats://c:s3cret@127.0.0.1:4222, nats://h:4223"),
            "nats://c:***@127.0.0.1:4222,nats://h:4223"
        );
    }
}
