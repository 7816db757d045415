//! A cluster of real processes for the failover tests: nats-server, coordinators and nodes
//! as children (`chaos::sandbox`), so that a node can be killed with SIGKILL, stopped with
//! SIGSTOP, or drained with SIGTERM, exactly as in production. The node and coordinator
//! programs are the test package's own builds of them (`cluster-node`,
//! `cluster-coordinator`), passed in by the test through `env!("CARGO_BIN_EXE_…")`.

use anyhow::Context;
use chaos::sandbox::{Cluster, ClusterSpec, NodeSpec};
use protocol::cluster::{self as wire, RoomAssignment};
use protocol::token::{self, Claims};
use protocol::RoomId;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// UDP ports for the media of the nodes of one test process, handed out in blocks so
/// that the tests of one binary (run in parallel) never share a range.
static NEXT_UDP: AtomicU16 = AtomicU16::new(0);
const UDP_BLOCK: u16 = 100;
/// Blocks below Linux's ephemeral range (32768–60999), where the clients' own sockets are.
const UDP_BLOCKS: u16 = 120;

fn udp_range(base: u16) -> (u16, u16) {
    let i = NEXT_UDP.fetch_add(1, Ordering::Relaxed);
    let lo = base + (i % UDP_BLOCKS) * UDP_BLOCK;
    (lo, lo + UDP_BLOCK - 1)
}

/// The programs and the shape of a process cluster.
pub struct ProcSpec {
    pub node_bin: PathBuf,
    pub coordinator_bin: PathBuf,
    /// `(id, region)` per node.
    pub nodes: Vec<(String, String)>,
    pub coordinators: usize,
    /// Flags every node gets beside the sandbox's.
    pub node_flags: Vec<String>,
    /// Flags every coordinator gets.
    pub coordinator_flags: Vec<String>,
    /// First UDP port of this test binary's media ranges.
    pub udp_base: u16,
    /// nats-server's client port (default: a free one), for proxies set up beforehand.
    pub nats_port: Option<u16>,
    /// Nodes that reach NATS at another URL (through an impairment proxy, say).
    pub node_nats: Vec<(String, String)>,
}

impl ProcSpec {
    pub fn new(node_bin: &str, coordinator_bin: &str, nodes: &[(&str, &str)]) -> Self {
        ProcSpec {
            node_bin: node_bin.into(),
            coordinator_bin: coordinator_bin.into(),
            nodes: nodes
                .iter()
                .map(|(n, r)| (n.to_string(), r.to_string()))
                .collect(),
            coordinators: 2,
            node_flags: Vec::new(),
            coordinator_flags: Vec::new(),
            udp_base: 20000,
            nats_port: None,
            node_nats: Vec::new(),
        }
    }

    pub fn node_flag(mut self, flag: &str) -> Self {
        self.node_flags.push(flag.to_owned());
        self
    }

    pub fn coordinator_flag(mut self, flag: &str) -> Self {
        self.coordinator_flags.push(flag.to_owned());
        self
    }
}

/// A running process cluster. Dropping it kills every child.
pub struct Procs {
    pub cluster: Cluster,
    _dir: crate::RunDir,
}

/// A test that ends without a panic fails if a nats-server logged a permissions violation:
/// every process ran as its production role (README "NATS security").
impl Drop for Procs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let violations = self.cluster.nats_violations();
            assert!(
                violations.is_empty(),
                "nats permissions violations: {violations:#?}"
            );
        }
    }
}

impl Procs {
    /// Starts the cluster and returns once every process is ready (every node counted by
    /// every coordinator).
    pub async fn start(spec: ProcSpec) -> anyhow::Result<Procs> {
        crate::init_logs();
        let dir = std::env::temp_dir().join(format!("procs-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let mut cs = ClusterSpec::new(&dir);
        cs.node_bin = spec.node_bin;
        cs.coordinator_bin = spec.coordinator_bin;
        cs.child_log = "info,node=debug".into();
        cs.ready_timeout = Duration::from_secs(60);
        for i in 0..spec.coordinators {
            cs = cs.coordinator(&format!("c{}", i + 1));
        }
        cs.coordinator_flags = spec.coordinator_flags;
        cs.nats.port = spec.nats_port;
        for (id, region) in &spec.nodes {
            let mut n = NodeSpec::new(id, region, udp_range(spec.udp_base));
            n.extra_args = spec.node_flags.clone();
            n.nats_url = spec
                .node_nats
                .iter()
                .find(|(node, _)| node == id)
                .map(|(_, url)| url.clone());
            cs = cs.node(n);
        }
        let cluster = Cluster::start(cs)
            .await
            .context("start the process cluster")?;
        Ok(Procs {
            cluster,
            _dir: crate::RunDir(dir),
        })
    }

    pub fn ws_url(&self, node: &str) -> String {
        self.cluster
            .node(node)
            .map(|p| p.ws_url())
            .unwrap_or_default()
    }

    pub fn secret(&self) -> &str {
        self.cluster.api_secret()
    }

    /// A join token for `user` in `room`, valid for ten minutes.
    pub fn token(&self, room: &str, user: &str) -> String {
        token::mint(self.secret().as_bytes(), &crate::claims(room, user, 600))
    }

    pub fn claims_token(&self, claims: &Claims) -> String {
        token::mint(self.secret().as_bytes(), claims)
    }

    /// A client joined with `claims` through `node`'s socket, saying it is in `region`.
    pub async fn join_as(
        &self,
        node: &str,
        region: &str,
        claims: &Claims,
    ) -> anyhow::Result<chaos::Client> {
        let client = chaos::Client::connect(&self.ws_url(node)).await?;
        client
            .join_in_region(claims.room.as_str(), &self.claims_token(claims), region)
            .await?;
        Ok(client)
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`) to a process of the cluster.
    pub fn signal(&mut self, id: &str, signal: &str) -> anyhow::Result<()> {
        eprintln!("   signal {signal} to {id}");
        self.cluster.proc_mut(id)?.signal(signal)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self, id: &str) -> bool {
        self.cluster
            .proc_mut(id)
            .map(|p| p.exited().is_some())
            .unwrap_or(false)
    }

    /// A node's `/debug/snapshot`.
    pub async fn snapshot(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let port = self.cluster.node(node)?.port();
        let auth = format!("Bearer {}", self.cluster.node_admin_token());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (status, body) = crate::http_request(
            addr,
            "GET",
            "/debug/snapshot",
            &[("authorization", auth.as_str())],
        )
        .await?;
        anyhow::ensure!(status == 200, "snapshot of {node}: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// The rooms a node serves, by its snapshot, with their member ids.
    pub async fn rooms_on(&self, node: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let snap = self.snapshot(node).await?;
        let rooms = snap["rooms"]
            .as_array()
            .cloned()
            .with_context(|| format!("no rooms in the snapshot of {node}: {snap}"))?;
        Ok(rooms
            .iter()
            .map(|r| {
                let id = r["id"].as_str().unwrap_or_default().to_owned();
                let members = r["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|x| x["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                (id, members)
            })
            .collect())
    }

    /// Every revision of a room's directory entry, oldest first (deletes as `None`).
    pub async fn kv_history(&self, room: &str) -> anyhow::Result<Vec<Option<RoomAssignment>>> {
        let client = chaos::sandbox::nats_connect(self.cluster.nats_url()).await?;
        let js = async_nats::jetstream::new(client);
        let kv = js.get_key_value(wire::ROOMS_BUCKET).await?;
        let key = wire::token(RoomId::new(room)?.as_str());
        let mut history = kv.history(key).await?;
        let mut out = Vec::new();
        use futures::StreamExt;
        while let Some(entry) = history.next().await {
            let entry = entry?;
            out.push(match entry.operation {
                async_nats::jetstream::kv::Operation::Put => {
                    Some(serde_json::from_slice(&entry.value)?)
                }
                _ => None,
            });
        }
        Ok(out)
    }

    /// The room's current directory entry.
    pub async fn assignment(&self, room: &str) -> anyhow::Result<Option<RoomAssignment>> {
        Ok(self.kv_history(room).await?.pop().flatten())
    }
}
