//! The media node: signaling over WebSocket, room/peer/transport actors, SFU forwarding.
//!
//! Threads: actix arbiters run the actors and HTTP; one multi-thread tokio runtime runs
//! webrtc-rs and the per-packet forwarding loops. Actors hand work to that runtime with
//! `Handle::spawn` and get results back as messages (TOOLS.md).
#![forbid(unsafe_code)]

pub mod actors;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod counters;
pub mod http;
pub mod limits;
pub mod media;
pub mod membership;
pub mod metrics;
pub mod peers;
pub mod process_metrics;
pub mod webhooks;
pub mod ws_limit;

pub use config::Config;

use actix::{Actor, Addr};
use actors::agent::NodeAgent;
use actors::rooms::RoomRegistry;
use actors::router::SessionRouter;
use actors::{NodeCtx, NodeEntry};
use cluster::Cluster;
use counters::{Counters, CountersSnapshot};
use media::engine::EngineConfig;
use media::MediaContext;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Seconds since the Unix epoch (token expiry, TURN credential expiry).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (webhook events, `joined_ms`).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fault planted for the fuzzers' self-test (tests/tests/fuzz_*.rs), in debug builds only:
/// with `NODE_PLANTED_PANIC=<site>` in the environment, the call at `site` panics when `hit`
/// says the input is the one that site's fuzzer should find. Release builds compile it out,
/// and without the variable it does nothing.
#[inline]
pub fn planted_panic(site: &str, hit: impl FnOnce() -> bool) {
    #[cfg(debug_assertions)]
    if std::env::var_os("NODE_PLANTED_PANIC").is_some_and(|v| v == site) && hit() {
        panic!("planted panic at `{site}` (NODE_PLANTED_PANIC={site})");
    }
    #[cfg(not(debug_assertions))]
    let _ = (site, hit);
}

/// Everything an operator or a test can see of a node, from the actors' own snapshots.
pub async fn snapshot(node: &NodeEntry) -> serde_json::Value {
    let (mut rooms, router) = http::observe_all(node).await;
    let shared = &node.shared;
    shared.media.engine.quality().annotate(&mut rooms["rooms"]);
    serde_json::json!({
        "node": shared.config.node_id,
        "region": shared.config.region,
        "counters": shared.counters.snapshot(),
        "router": router,
        "rooms": rooms["rooms"],
    })
}

/// Builds the media runtime a node's webrtc work runs on.
pub fn media_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("media")
        .enable_all()
        .build()
}

/// Starts the actors and the HTTP server inside the current actix `System`; with a NATS URL
/// also the cluster connection and the `NodeAgent`.
pub async fn start_in_system(
    config: Config,
    media_rt: tokio::runtime::Handle,
) -> anyhow::Result<(actix_web::dev::Server, SocketAddr, NodeEntry)> {
    metrics::install(config.room_series_ttl);
    let counters = Arc::new(Counters::default());
    let announce_ip = match &config.public_ip {
        Some(ip) => Some(
            ip.parse()
                .map_err(|e| anyhow::anyhow!("--public-ip {ip}: {e}"))?,
        ),
        None => None,
    };
    let media = Arc::new(MediaContext::new(
        media_rt.clone(),
        counters.clone(),
        EngineConfig {
            udp: SocketAddr::new(config.udp_ip, config.udp_port),
            tcp_port: config.ice_tcp_port,
            announce_ip,
            workers: config.media_workers,
            queue: 8192,
            relay_ports: config.relay_ports,
        },
    )?);
    let cluster = match &config.nats_url {
        Some(url) => {
            let credentials = config.nats_user.clone().zip(config.nats_password.clone());
            let ca = config.nats_ca_file.clone();
            Some(Cluster::connect(url, config.node_id.clone(), credentials, ca, media_rt).await?)
        }
        None => None,
    };
    let router =
        SessionRouter::new(cluster.clone(), config.limits.recipient_messages_per_sec).start();
    let peers = peers::PeerNodes::new(
        config.node_id.clone(),
        config.region.clone(),
        config.node_timeout,
    );
    let shared = NodeCtx {
        config: Arc::new(config),
        media,
        counters,
        router,
        cluster: cluster.clone(),
        draining: Arc::new(AtomicBool::new(false)),
        placeable: Arc::new(AtomicBool::new(cluster.is_none())),
        peers: Arc::new(std::sync::Mutex::new(peers)),
        drain_started: Arc::new(AtomicBool::new(false)),
        exit: Arc::new(tokio::sync::Notify::new()),
        connections: Arc::default(),
        webhooks: cluster
            .as_ref()
            .map(webhooks::Webhooks::start)
            .unwrap_or_else(webhooks::Webhooks::disabled),
    };
    let rooms: Addr<RoomRegistry> = RoomRegistry::new(shared.clone()).start();
    let node = NodeEntry { shared, rooms };
    let data = actix_web::web::Data::new(node.clone());
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .configure(http::routes)
    })
    .workers(node.shared.config.http_workers.max(1))
    // Signaling is many small frames in quick succession; Nagle held the second of two
    // back-to-back messages (`joined`, then `subscribe_offer`) for ~40 ms.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(2);
    let tls = match &node.shared.config.tls {
        Some((cert, key)) => {
            let read = |p: &std::path::Path| {
                use anyhow::Context;
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))
            };
            Some(protocol::tls::server_config(&read(cert)?, &read(key)?)?)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(node.shared.config.listen, tls)?,
        None => server.bind(node.shared.config.listen)?,
    };
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("server bound no address"))?;
    // The advertised URL defaults to the address actually bound (port 0 picks one).
    let ws_url = node
        .shared
        .config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}/ws"));
    if let Some(c) = cluster {
        NodeAgent::new(node.clone(), c, ws_url).start();
    }
    tracing::info!(node = %node.shared.config.node_id, %addr, cluster = node.shared.cluster.is_some(), "node listening");
    Ok((server.run(), addr, node))
}

/// A node running on its own threads, for tests and embedding.
pub struct NodeHandle {
    http_addr: SocketAddr,
    node: NodeEntry,
    server: actix_web::dev::ServerHandle,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
    media_rt: Option<tokio::runtime::Runtime>,
}

/// Starts a node in this process: an actix system on a new thread and a media runtime.
pub fn spawn(config: Config) -> anyhow::Result<NodeHandle> {
    let media_rt = media_runtime(config.media_threads)?;
    let rt_handle = media_rt.handle().clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("node-actix".into())
        .spawn(move || {
            let system = actix::System::new();
            let started = system.block_on(start_in_system(config, rt_handle));
            match started {
                Ok((server, addr, node)) => {
                    // A drain ends the node as the process would end.
                    let (exit, handle) = (node.shared.exit.clone(), server.handle());
                    let _ = tx.send(Ok((addr, node, server.handle(), actix::System::current())));
                    system.block_on(async move {
                        actix::spawn(async move {
                            exit.notified().await;
                            handle.stop(true).await;
                        });
                        let _ = server.await;
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    let (http_addr, node, server, system) = rx
        .recv()
        .map_err(|_| anyhow::anyhow!("node thread ended before starting"))??;
    Ok(NodeHandle {
        http_addr,
        node,
        server,
        system,
        thread: Some(thread),
        media_rt: Some(media_rt),
    })
}

impl NodeHandle {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ws_url(&self) -> String {
        let scheme = if self.node.shared.config.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}/ws", self.http_addr)
    }

    pub fn config(&self) -> &Config {
        &self.node.shared.config
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.node.shared.counters.snapshot()
    }

    /// The bound address of the node's media port (UDP).
    pub fn media_udp_addr(&self) -> SocketAddr {
        self.node.shared.media.engine.udp_addr()
    }

    /// The bound address of the node's ICE-TCP port, if it has one.
    pub fn media_tcp_addr(&self) -> Option<SocketAddr> {
        self.node.shared.media.engine.tcp_addr()
    }

    /// The actors' snapshots (rooms, members, tracks, fanouts) and the counters.
    pub async fn snapshot(&self) -> serde_json::Value {
        snapshot(&self.node).await
    }

    /// Stops the server, the actors and the media runtime.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let server = self.server.clone();
        let system = self.system.clone();
        if let Some(t) = self.thread.take() {
            futures::executor::block_on(server.stop(false));
            system.stop();
            let _ = t.join();
        }
        if let Some(rt) = self.media_rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
