//! A whole cluster on this machine, from the release binaries: a nats-server with JetStream
//! (or a JetStream cluster of three), coordinators and media nodes as child processes, each
//! logging to a file of one run directory. The benchmarks and the chaos runner start their
//! clusters here, from a [`ClusterSpec`] that says what runs where.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use chaos::sandbox::{Cluster, ClusterSpec, NodeSpec};
//! let spec = ClusterSpec::new("/tmp/run-1")
//!     .coordinator("c1")
//!     .node(NodeSpec::new("eu-1", "eu", (53000, 53299)).flag("--dev-tokens"))
//!     .node(NodeSpec::new("us-1", "us", (53300, 53599)).flag("--dev-tokens"));
//! let mut cluster = Cluster::start(spec).await?;
//! let ws = cluster.node("eu-1")?.ws_url();
//! // ... clients connect to `ws` ...
//! cluster.stop();
//! for line in cluster.health() {
//!     eprintln!("{line}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The calling contract:
//! - [`Cluster::start`] returns once the cluster is ready: every nats-server greets with
//!   JetStream enabled (with three servers, their JetStream cluster has also elected its
//!   meta leader: it answers an account-info request), every coordinator and node answers
//!   `/readyz` with 200 (a coordinator only once it opened the room directory, created with
//!   one replica per server), and every coordinator's
//!   `coord_live_nodes` and `coord_live_coordinators` reach the numbers in the spec
//!   (placement and the coordinators' sharding need them all). Both waits are bounded; on
//!   failure every child is stopped and the error carries the last lines of every log.
//! - [`Cluster::stop`] sends SIGINT to every child (nodes first, the nats-servers last) and
//!   SIGKILL to those still running 5 s later. Dropping a [`Cluster`] kills whatever still
//!   runs, so a failing, panicking or interrupted (Ctrl-C dropping the future) caller leaves
//!   no process behind. The logs stay in the run directory; the JetStream store is removed.
//! - Ports: HTTP, NATS client, route and monitoring ports are loopback ports that were free
//!   a moment before the child binds them (the binaries print their bound address only in
//!   their logs); UDP media ranges come from the spec, so the caller keeps them apart.
//! - Everything listens on 127.0.0.0/8.
//! - NATS URLs: with three servers every coordinator and node gets all three client URLs,
//!   comma-separated ([`Cluster::nats_url`]; the node and the coordinator split it), and
//!   its client moves to another server when its own goes. `async_nats::connect` takes a
//!   `&str` as one URL: connect with [`Cluster::nats_client`] (or split
//!   [`Cluster::nats_url`] at the commas) instead.
//! - NATS authorization is on, as in production (README "NATS security"): the servers'
//!   config (`nats-auth.conf` in the run directory) has a user per node (named after it),
//!   the coordinators' user and an unrestricted `admin` user, with the permissions of
//!   `protocol::nats_auth`. Each coordinator and node reads its password from a file
//!   (`secrets/` in the run directory, `--nats-password-file`). [`Cluster::nats_url`]
//!   carries the admin credentials for the caller's own clients: connect with
//!   [`nats_options`] (async-nats ignores credentials in a URL).

use crate::bench::{self, CpuSnap};
use anyhow::{anyhow, bail, Context, Result};
use protocol::nats_auth::{self, User};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`Cluster::stop`] waits after SIGINT before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to start. Build it with [`ClusterSpec::new`] and the chaining helpers, or set the
/// fields directly.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Run directory: one `<id>.log` per process and the JetStream store (`jetstream/`, one
    /// directory per server in it when there are three).
    /// Created when missing.
    pub dir: PathBuf,
    pub nats: NatsSpec,
    pub coordinator_bin: PathBuf,
    pub node_bin: PathBuf,
    /// Coordinator ids, started in this order.
    pub coordinators: Vec<String>,
    pub coordinator_flags: Vec<String>,
    /// `--admin-token` of every coordinator.
    pub admin_token: String,
    /// `--api-secret` of every node (the HS256 key of join tokens). The nodes refuse the
    /// development secret `devsecret` unless given `--dev-tokens`.
    pub api_secret: String,
    pub nodes: Vec<NodeSpec>,
    /// `RUST_LOG` of every child.
    pub child_log: String,
    /// Bound on nats-server greeting, and then on the whole cluster being ready.
    pub nats_timeout: Duration,
    pub ready_timeout: Duration,
}

/// The nats-server(s).
#[derive(Debug, Clone)]
pub struct NatsSpec {
    /// nats-server ≥ 2.10 (TOOLS.md).
    pub bin: PathBuf,
    /// Client port of the first server (`nats`); `None` picks a free one. Fixing it lets a
    /// caller put proxies in front of the server before it starts (a per-region NATS URL for
    /// [`NodeSpec::nats_url`]). The other servers' ports are always free ones.
    pub port: Option<u16>,
    /// 1 (default): one server, `nats`. 3: a JetStream cluster named `chaos` of `nats`,
    /// `nats2` and `nats3`, joined by routes, each with its own store; the coordinators
    /// create the room directory with three replicas (`--kv-replicas 3`), so it takes writes
    /// while any two servers run.
    pub servers: usize,
    /// Serve the monitoring endpoints (`-m <free port>`: `/connz`, `/jsz`, `/routez`) on
    /// every server; [`Proc::monitor_port`] tells where.
    pub monitor: bool,
    /// Flags after `-js -sd <dir> -a 127.0.0.1 -p <port>` (and the cluster flags), given to
    /// every server.
    pub extra_args: Vec<String>,
}

impl NatsSpec {
    /// The process id of server `i` (0-based): `nats`, `nats2`, `nats3`.
    pub fn server_id(i: usize) -> String {
        if i == 0 {
            "nats".to_owned()
        } else {
            format!("nats{}", i + 1)
        }
    }

    /// The ids of every server of the spec.
    pub fn server_ids(&self) -> Vec<String> {
        (0..self.servers).map(NatsSpec::server_id).collect()
    }
}

/// One media node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub region: String,
    /// `--udp-ip`: the address the media sockets bind to.
    pub udp_ip: IpAddr,
    /// `--public-ip`: the address announced in ICE candidates, when not `udp_ip` (a gateway
    /// in front of the node).
    pub public_ip: Option<IpAddr>,
    /// `--udp-ports`, inclusive.
    pub udp_ports: (u16, u16),
    /// The node's own NATS URL (e.g. through a proxy of its region); `None` uses the
    /// cluster's server directly.
    pub nats_url: Option<String>,
    /// Any other node flags, e.g. `--dev-tokens`, `--msg-rate 1000`.
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// A node binding its media sockets to 127.0.0.1, on the cluster's NATS server directly.
    pub fn new(id: &str, region: &str, udp_ports: (u16, u16)) -> NodeSpec {
        NodeSpec {
            id: id.to_owned(),
            region: region.to_owned(),
            udp_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            udp_ports,
            nats_url: None,
            extra_args: Vec::new(),
        }
    }

    /// Adds one flag (or flag value) to the node's command line.
    pub fn flag(mut self, arg: impl Into<String>) -> NodeSpec {
        self.extra_args.push(arg.into());
        self
    }
}

impl ClusterSpec {
    /// No coordinators, no nodes; binaries from `target/release` and `nats-server` from
    /// PATH; a random API secret; children log at `info`; 15 s for NATS, 30 s for readiness.
    pub fn new(dir: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            dir: dir.into(),
            nats: NatsSpec {
                bin: "nats-server".into(),
                port: None,
                servers: 1,
                monitor: false,
                extra_args: Vec::new(),
            },
            coordinator_bin: "target/release/coordinator".into(),
            node_bin: "target/release/node".into(),
            coordinators: Vec::new(),
            coordinator_flags: Vec::new(),
            admin_token: "sandboxadmin".into(),
            api_secret: format!("sandbox-{:032x}", rand::random::<u128>()),
            nodes: Vec::new(),
            child_log: "info".into(),
            nats_timeout: Duration::from_secs(15),
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn coordinator(mut self, id: &str) -> ClusterSpec {
        self.coordinators.push(id.to_owned());
        self
    }

    pub fn node(mut self, node: NodeSpec) -> ClusterSpec {
        self.nodes.push(node);
        self
    }

    /// A JetStream cluster of `servers` nats-servers (1 or 3) instead of one.
    pub fn nats_servers(mut self, servers: usize) -> ClusterSpec {
        self.nats.servers = servers;
        self
    }

    /// Refuses what would only fail later: missing binaries, a server count other than 1
    /// or 3, duplicate ids, empty or overlapping UDP ranges on one address.
    pub fn validate(&self) -> Result<()> {
        if ![1, 3].contains(&self.nats.servers) {
            bail!(
                "{} nats servers: the sandbox runs 1, or a JetStream cluster of 3",
                self.nats.servers
            );
        }
        for (what, p) in [
            ("node", &self.node_bin),
            ("coordinator", &self.coordinator_bin),
        ] {
            if !p.is_file() {
                bail!(
                    "{what} binary {} not found: run `cargo build --release -p node -p coordinator -p chaos` first",
                    p.display()
                );
            }
        }
        let mut ids: Vec<&str> = self.coordinators.iter().map(String::as_str).collect();
        ids.extend(self.nodes.iter().map(|n| n.id.as_str()));
        let servers = self.nats.server_ids();
        ids.extend(servers.iter().map(String::as_str));
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            bail!("process id {} is used twice", w[0]);
        }
        for (i, a) in self.nodes.iter().enumerate() {
            if a.udp_ports.0 == 0 || a.udp_ports.0 > a.udp_ports.1 {
                bail!("node {}: empty UDP range {:?}", a.id, a.udp_ports);
            }
            for b in &self.nodes[i + 1..] {
                let overlap = a.udp_ports.0 <= b.udp_ports.1 && b.udp_ports.0 <= a.udp_ports.1;
                if a.udp_ip == b.udp_ip && overlap {
                    bail!(
                        "nodes {} and {} share UDP ports on {}",
                        a.id,
                        b.id,
                        a.udp_ip
                    );
                }
            }
        }
        Ok(())
    }
}

/// What a child process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Nats,
    Coordinator,
    Node,
}

/// One child process, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// `nats` (`nats2`, `nats3`), then the ids of the spec.
    id: String,
    role: Role,
    /// Nodes only.
    region: Option<String>,
    /// HTTP port (coordinators, nodes) or client port (nats).
    port: u16,
    /// A nats-server's monitoring port, when [`NatsSpec::monitor`] is on.
    monitor_port: Option<u16>,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
    /// Killed or drained on purpose: its exit is no crash.
    expected_exit: bool,
    /// How it was started, to start it again.
    program: PathBuf,
    args: Vec<String>,
    child_log: String,
}

impl Proc {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// A node's region.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The HTTP port of a coordinator or node (`/readyz`, `/metrics`), the client port of
    /// nats-server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A nats-server's monitoring HTTP port (`/connz`, `/jsz`, `/routez`), if it serves one.
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor_port
    }

    /// A nats-server's client URL.
    pub fn nats_url(&self) -> Option<String> {
        (self.role == Role::Nats).then(|| format!("nats://127.0.0.1:{}", self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A node's WebSocket signaling URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The body of `GET <path>` on this process's HTTP port (bounded by 5 s).
    pub async fn http_get(&self, path: &str) -> Result<String> {
        bench::http_get(self.port, path)
            .await
            .with_context(|| format!("{} {path}", self.id))
    }

    /// How the process ended, once it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends `signal` (a name `kill` knows: `KILL`, `STOP`, `CONT`, `TERM`, `INT`) to the
    /// process. std has no signals but SIGKILL and the crate forbids `unsafe`: `kill` does it.
    pub fn signal(&mut self, signal: &str) -> Result<()> {
        if self.exited().is_some() {
            anyhow::bail!("{} has exited", self.id);
        }
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.id);
        if signal == "KILL" {
            self.expected_exit = true;
            let _ = self.child.wait();
            self.exited();
        }
        Ok(())
    }

    /// Marks an exit (after a drain, say) as wanted, so it is not reported as a crash.
    pub fn expect_exit(&mut self) {
        self.expected_exit = true;
    }

    fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns one child, its output appended to `log`.
fn launch(id: &str, program: &Path, args: &[String], child_log: &str, log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .env("RUST_LOG", child_log)
        // Colour codes would hide WARN/ERROR from `health`.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} ({id})", program.display()))?;
    eprintln!(
        "   started {id} (pid {}, log {})",
        child.id(),
        log.display()
    );
    Ok(child)
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The running cluster. See the module documentation for the contract.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    /// The servers' client URLs, comma-separated, without credentials (the processes').
    servers_url: String,
    /// The same with the admin user's credentials in each (the caller's clients).
    nats_url: String,
    admin_password: String,
    api_secret: String,
    /// In start order: the nats-servers, coordinators, nodes.
    procs: Vec<Proc>,
    stopped: bool,
    /// Children that had exited on their own when [`Cluster::stop`] ran.
    died: Vec<String>,
}

impl Cluster {
    /// Starts the nats-server(s), then the coordinators, then the nodes, and waits until the
    /// cluster is ready (bounded by the spec's timeouts).
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        spec.validate()?;
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let mut cluster = Cluster {
            dir: spec.dir.clone(),
            servers_url: String::new(),
            nats_url: String::new(),
            admin_password: format!("{:032x}", rand::random::<u128>()),
            api_secret: spec.api_secret.clone(),
            procs: Vec::new(),
            stopped: false,
            died: Vec::new(),
        };
        if let Err(e) = cluster.launch(&spec).await {
            let tails = cluster.log_tails(8);
            cluster.stop();
            return Err(e.context(format!(
                "starting the cluster; logs in {}\n{tails}",
                spec.dir.display()
            )));
        }
        Ok(cluster)
    }

    /// Starts the nats-server(s) and waits (bounded by the spec's `nats_timeout`) until each
    /// greets with JetStream and, with several, until their JetStream cluster answers an
    /// account-info request (it has a meta leader).
    async fn launch_nats(&mut self, spec: &ClusterSpec) -> Result<()> {
        let n = spec.nats.servers;
        let ids = spec.nats.server_ids();
        let mut client_ports = Vec::with_capacity(n);
        for i in 0..n {
            client_ports.push(match (i, spec.nats.port) {
                (0, Some(p)) => p,
                _ => bench::free_port()?,
            });
        }
        let route_ports = if n > 1 {
            (0..n)
                .map(|_| bench::free_port())
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let js = self.dir.join("jetstream");
        std::fs::create_dir_all(&js)?;
        let auth_conf = self.write_auth(spec)?;
        for (i, id) in ids.iter().enumerate() {
            // One server keeps the store directly in `jetstream/`, as it always has.
            let store = if n > 1 { js.join(id) } else { js.clone() };
            let mut args: Vec<String> = vec![
                "-c".into(),
                auth_conf.to_string_lossy().into_owned(),
                "-js".into(),
                "-sd".into(),
                store.to_string_lossy().into_owned(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client_ports[i].to_string(),
            ];
            if n > 1 {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                args.extend([
                    "-n".into(),
                    id.clone(),
                    "--cluster_name".into(),
                    "chaos".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", route_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ]);
            }
            let monitor_port = if spec.nats.monitor {
                let p = bench::free_port()?;
                args.extend(["-m".into(), p.to_string()]);
                Some(p)
            } else {
                None
            };
            args.extend(spec.nats.extra_args.iter().cloned());
            self.spawn(
                id,
                Role::Nats,
                None,
                client_ports[i],
                &spec.nats.bin,
                &args,
                spec,
            )?;
            if let Some(p) = self.procs.last_mut() {
                p.monitor_port = monitor_port;
            }
        }
        self.servers_url = client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        self.nats_url = client_ports
            .iter()
            .map(|p| {
                format!(
                    "nats://{}:{}@127.0.0.1:{p}",
                    nats_auth::ADMIN_USER,
                    self.admin_password
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let deadline = Instant::now() + spec.nats_timeout;
        for (id, port) in ids.iter().zip(&client_ports) {
            loop {
                if let Some(dead) = self.first_exited() {
                    bail!("{dead} exited during startup");
                }
                match probe_nats(*port).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        bail!("{id} not ready within {:?}: {e}", spec.nats_timeout)
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        if n > 1 {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(left, self.wait_jetstream_meta_leader())
                .await
                .map_err(|_| {
                    anyhow!(
                        "the JetStream cluster elected no meta leader within {:?}",
                        spec.nats_timeout
                    )
                })??;
        }
        Ok(())
    }

    /// Where the password of NATS user `user` lives (a node's user is its id).
    fn secret_path(&self, user: &str) -> PathBuf {
        self.dir
            .join("secrets")
            .join(format!("{}.password", protocol::cluster::token(user)))
    }

    /// Writes the servers' authorization config (admin, the coordinators, one user per
    /// node) and every process's password file; returns the config's path.
    fn write_auth(&self, spec: &ClusterSpec) -> Result<PathBuf> {
        std::fs::create_dir_all(self.dir.join("secrets"))?;
        let secret = |user: &str| -> Result<String> {
            let password = format!("{:032x}", rand::random::<u128>());
            let path = self.secret_path(user);
            std::fs::write(&path, &password)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(password)
        };
        let mut users = vec![
            User::admin(&self.admin_password),
            User::coordinator(secret(nats_auth::COORDINATOR_USER)?),
        ];
        for n in &spec.nodes {
            let id = protocol::NodeId::new(n.id.as_str())
                .map_err(|e| anyhow!("node id {:?}: {e}", n.id))?;
            users.push(User::node(&id, secret(&n.id)?));
        }
        let path = self.dir.join("nats-auth.conf");
        std::fs::write(&path, nats_auth::authorization_block(&users))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Until JetStream answers an account-info request (in a cluster only the meta leader
    /// does). Unbounded: the caller bounds it.
    async fn wait_jetstream_meta_leader(&self) -> Result<()> {
        let client = self.nats_client().await?;
        let js = async_nats::jetstream::new(client);
        loop {
            let asked = tokio::time::timeout(Duration::from_secs(2), js.query_account()).await;
            if let Ok(Ok(_)) = asked {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn launch(&mut self, spec: &ClusterSpec) -> Result<()> {
        self.launch_nats(spec).await?;

        let replicas = spec.nats.servers.to_string();
        for id in &spec.coordinators {
            let port = bench::free_port()?;
            let mut a: Vec<String> = [
                "--id",
                id,
                "--nats-url",
                &self.servers_url,
                "--nats-password-file",
                &self
                    .secret_path(nats_auth::COORDINATOR_USER)
                    .to_string_lossy(),
                "--http-listen",
                &format!("127.0.0.1:{port}"),
                "--admin-token",
                &spec.admin_token,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // The room directory gets a copy on every server, unless the caller chose.
            let chosen = spec
                .coordinator_flags
                .iter()
                .any(|f| f.starts_with("--kv-replicas"));
            if spec.nats.servers > 1 && !chosen {
                a.extend(["--kv-replicas".to_owned(), replicas.clone()]);
            }
            a.extend(spec.coordinator_flags.iter().cloned());
            self.spawn(
                id,
                Role::Coordinator,
                None,
                port,
                &spec.coordinator_bin,
                &a,
                spec,
            )?;
        }
        for n in &spec.nodes {
            let port = bench::free_port()?;
            let mut a: Vec<String> = vec![
                "--node-id".into(),
                n.id.clone(),
                "--region".into(),
                n.region.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--udp-ip".into(),
                n.udp_ip.to_string(),
            ];
            if let Some(ip) = n.public_ip {
                a.extend(["--public-ip".into(), ip.to_string()]);
            }
            a.extend([
                "--udp-ports".into(),
                format!("{}-{}", n.udp_ports.0, n.udp_ports.1),
                "--nats-url".into(),
                n.nats_url
                    .clone()
                    .unwrap_or_else(|| self.servers_url.clone()),
                "--nats-password-file".into(),
                self.secret_path(&n.id).to_string_lossy().into_owned(),
                "--api-secret".into(),
                spec.api_secret.clone(),
                "--admin-token".into(),
                node_admin_token(&spec.api_secret),
            ]);
            a.extend(n.extra_args.iter().cloned());
            let region = Some(n.region.clone());
            self.spawn(&n.id, Role::Node, region, port, &spec.node_bin, &a, spec)?;
        }

        let deadline = Instant::now() + spec.ready_timeout;
        loop {
            if let Some(dead) = self.first_exited() {
                bail!("{dead} exited during startup");
            }
            let waiting = self.not_ready().await;
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "not ready within {:?}: {}",
                    spec.ready_timeout,
                    waiting.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &mut self,
        id: &str,
        role: Role,
        region: Option<String>,
        port: u16,
        program: &Path,
        args: &[String],
        spec: &ClusterSpec,
    ) -> Result<()> {
        let log = self.dir.join(format!("{id}.log"));
        let child = launch(id, program, args, &spec.child_log, &log)?;
        self.procs.push(Proc {
            id: id.to_owned(),
            role,
            region,
            port,
            monitor_port: None,
            child,
            log,
            exit: None,
            expected_exit: false,
            program: program.to_owned(),
            args: args.to_vec(),
            child_log: spec.child_log.clone(),
        });
        Ok(())
    }

    /// Starts an exited process again, with the same id, ports, store and flags (its log
    /// grows on), and waits (bounded by `timeout`) until it is ready: a coordinator or node
    /// answers `/readyz` with 200, a nats-server greets with JetStream (as
    /// [`Cluster::restart_nats_server`]).
    pub async fn restart(&mut self, id: &str, timeout: Duration) -> Result<()> {
        let (port, role) = self.relaunch(id)?;
        let deadline = Instant::now() + timeout;
        loop {
            let ready = match role {
                Role::Nats => probe_nats(port).await.map_err(|e| format!("{e:#}")),
                _ => bench::http_get(port, "/readyz")
                    .await
                    .map(drop)
                    .map_err(|e| format!("/readyz {e:#}")),
            };
            let why = match ready {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if let Some(status) = self.proc_mut(id)?.exited() {
                bail!("{id} exited again after its restart ({status})");
            }
            if Instant::now() >= deadline {
                bail!("{id} not ready within {timeout:?} of its restart: {why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the exited nats-server `id` (`nats`, `nats2`, `nats3`) again on its ports, with
    /// its store and flags, and waits (bounded by `timeout`) until it greets with JetStream.
    /// A cluster server then rejoins the routes and catches its streams up by itself; a
    /// caller that needs it current asks JetStream (stream info lists each replica).
    pub async fn restart_nats_server(&mut self, id: &str, timeout: Duration) -> Result<()> {
        let role = self.proc_mut(id)?.role;
        if role != Role::Nats {
            bail!("{id} is no nats-server");
        }
        self.restart(id, timeout).await
    }

    /// Starts the exited process `id` again as it was started: (its port, its role).
    fn relaunch(&mut self, id: &str) -> Result<(u16, Role)> {
        let p = self.proc_mut(id)?;
        if p.exited().is_none() {
            bail!("{id} is still running");
        }
        p.child = launch(id, &p.program, &p.args, &p.child_log, &p.log)?;
        p.exit = None;
        p.expected_exit = false;
        Ok((p.port, p.role))
    }

    /// What is not ready yet, one entry per process: a `/readyz` not answering 200, or a
    /// coordinator that does not yet see every node and every coordinator.
    pub async fn not_ready(&self) -> Vec<String> {
        let nodes = self.nodes().count() as f64;
        let coordinators = self.coordinators().count() as f64;
        let mut waiting = Vec::new();
        for p in self.procs.iter().filter(|p| p.role != Role::Nats) {
            if let Err(e) = bench::http_get(p.port, "/readyz").await {
                waiting.push(format!("{}: /readyz {e:#}", p.id));
                continue;
            }
            if p.role == Role::Coordinator {
                match bench::http_get(p.port, "/metrics").await {
                    Ok(text) => {
                        let n = bench::metric(&text, "coord_live_nodes", None).unwrap_or(0.0);
                        let c =
                            bench::metric(&text, "coord_live_coordinators", None).unwrap_or(0.0);
                        if n < nodes || c < coordinators {
                            waiting.push(format!("{}: sees {n} nodes and {c} coordinators", p.id));
                        }
                    }
                    Err(e) => waiting.push(format!("{}: /metrics {e:#}", p.id)),
                }
            }
        }
        waiting
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The NATS servers' own client URLs (not a per-node override): one, or with three
    /// servers all three comma-separated, each with the admin user's credentials (connect
    /// with [`nats_options`]).
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// [`Cluster::nats_url`] without credentials, as the coordinators and nodes get it.
    pub fn servers_url(&self) -> &str {
        &self.servers_url
    }

    /// A NATS client of this test or tool, given every server of [`Cluster::nats_url`] (it
    /// moves to another when its own goes). Fails if none answers within 5 s.
    pub async fn nats_client(&self) -> Result<async_nats::Client> {
        let servers: Vec<&str> = self.nats_url.split(',').collect();
        let connect = nats_options(&self.nats_url)
            .name("sandbox")
            .connection_timeout(Duration::from_secs(2))
            .connect(servers);
        tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| anyhow!("no nats server of {} within 5 s", self.servers_url))?
            .with_context(|| format!("connecting to {}", self.servers_url))
    }

    /// The nats-servers: `nats`, then `nats2`, `nats3` when there are three.
    pub fn nats_servers(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.role == Role::Nats)
    }

    /// The nodes' API secret, to mint join tokens with (`protocol::token::mint`).
    pub fn api_secret(&self) -> &str {
        &self.api_secret
    }

    /// The nodes' `--admin-token` (`/debug/snapshot`, `/admin/drain`).
    pub fn node_admin_token(&self) -> String {
        node_admin_token(&self.api_secret)
    }

    /// Every child, in start order: the nats-servers, coordinators, nodes.
    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// The first child that has exited, as "id (status)".
    pub fn first_exited(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .find_map(|p| p.exited().map(|s| format!("{} ({s})", p.id)))
    }

    /// A process by id, to signal it.
    pub fn proc_mut(&mut self, id: &str) -> Result<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.id == id)
            .with_context(|| format!("no process `{id}`"))
    }

    pub fn node(&self, id: &str) -> Result<&Proc> {
        self.procs
            .iter()
            .find(|p| p.role == Role::Node && p.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.role == Role::Node)
    }

    pub fn coordinators(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.role == Role::Coordinator)
    }

    /// `(id, pid)` of every child, for CPU accounting.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs.iter().map(|p| (p.id.clone(), p.pid())).collect()
    }

    /// CPU counters of every child, this process and the machine, now.
    pub fn cpu_snapshot(&self) -> CpuSnap {
        CpuSnap::take(&self.pids())
    }

    /// The last `lines` lines of every log, under a header per process.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let _ = writeln!(s, "--- {} (last lines of {})", p.id, p.log.display());
            let _ = writeln!(s, "{}", p.log_tail(lines));
        }
        s
    }

    /// SIGINT to every child (nodes first), then SIGKILL to those still running after
    /// [`STOP_GRACE`]. Blocks the calling thread for up to that long. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        // Record children that died on their own before we stop them.
        for p in self.procs.iter_mut() {
            p.exited();
        }
        let died: Vec<String> = self
            .procs
            .iter()
            .filter(|p| !p.expected_exit)
            .filter_map(|p| p.exit.map(|s| format!("{} exited on its own ({s})", p.id)))
            .collect();
        self.stopped = true;
        // std has no SIGINT and the crate forbids unsafe (libc::kill): `kill` does it.
        for p in self.procs.iter_mut().rev() {
            if p.exit.is_none() {
                let _ = Command::new("kill")
                    .args(["-INT", &p.pid().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && self.procs.iter_mut().any(|p| p.exited().is_none()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in self.procs.iter_mut() {
            if p.exited().is_none() {
                eprintln!(
                    "   {} did not stop within {} s of SIGINT; killing it",
                    p.id,
                    STOP_GRACE.as_secs()
                );
                p.kill();
            }
        }
        for d in &died {
            eprintln!("   {d}");
        }
        self.died = died;
    }

    /// Permissions violations the nats-servers logged: a coordinator or node did what its
    /// NATS user may not (README "NATS security").
    pub fn nats_violations(&self) -> Vec<String> {
        self.nats_servers()
            .flat_map(|p| {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                text.lines()
                    .filter(|l| l.contains("Violation"))
                    .map(|l| format!("{}: {l}", p.id))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// After [`Cluster::stop`]: processes that had died by themselves, and per log the number
    /// of WARN/ERROR lines with the first of them.
    /// (A nats-server's permissions violations count as ERROR lines.)
    pub fn health(&self) -> Vec<String> {
        let mut out = self.died.clone();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let mut warn = 0usize;
            let mut error = 0usize;
            let mut first: Option<String> = None;
            for l in text.lines() {
                let l = strip_ansi(l);
                let is_warn = l.contains(" WARN ");
                // A permissions violation on NATS: a process did what its user may not.
                let is_error = l.contains(" ERROR ")
                    || l.contains("panicked")
                    || (p.role == Role::Nats && l.contains("Violation"));
                if is_warn || is_error {
                    if is_error {
                        error += 1;
                    } else {
                        warn += 1;
                    }
                    if first.is_none() {
                        first = Some(l.chars().take(300).collect());
                    }
                }
            }
            if warn + error > 0 {
                out.push(format!(
                    "{}: {error} ERROR and {warn} WARN log lines; first: `{}`",
                    p.id,
                    first.unwrap_or_default().replace('`', "'")
                ));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Proc::drop kills whatever still runs (on errors, panics and Ctrl-C too); the
        // JetStream store goes with the server, the logs stay.
        self.procs.clear();
        let _ = std::fs::remove_dir_all(self.dir.join("jetstream"));
    }
}

/// `s` without ANSI escape sequences (a child that colours its log despite `NO_COLOR`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Ready = accepts a connection on 127.0.0.1:`port` and greets with an INFO announcing
/// JetStream (bounded by 1 s).
/// Connect options carrying the credentials of the first URL of `urls` (comma-separated)
/// that has some (`nats://user:password@host:port`): async-nats ignores them in a URL.
pub fn nats_options(urls: &str) -> async_nats::ConnectOptions {
    let credentials = urls
        .split(',')
        .filter_map(|u| u.trim().parse::<async_nats::ServerAddr>().ok())
        .find(|s| s.has_user_pass())
        .and_then(|s| Some((s.username()?.to_owned(), s.password()?.to_owned())));
    match credentials {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        None => async_nats::ConnectOptions::new(),
    }
}

/// [`nats_options`] connected to every server of `urls`.
pub async fn nats_connect(urls: &str) -> Result<async_nats::Client> {
    let servers: Vec<&str> = urls.split(',').map(str::trim).collect();
    nats_options(urls)
        .connect(servers)
        .await
        .map_err(|e| anyhow!("connecting to nats: {e}"))
}

pub async fn probe_nats(port: u16) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let info = tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .map_err(|_| anyhow!("no INFO within 1 s"))??;
    if !info.starts_with("INFO ") {
        bail!("unexpected greeting {info:?}");
    }
    if !info.contains("\"jetstream\":true") {
        bail!("jetstream not enabled yet");
    }
    Ok(())
}

/// The nodes' admin token: derived from the API secret (so a spec names one secret) and never
/// equal to it, as the nodes require.
fn node_admin_token(api_secret: &str) -> String {
    format!("{api_secret}-admin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_stripped_from_log_lines() {
        assert_eq!(
            strip_ansi("2026 \u{1b}[33m WARN\u{1b}[0m x: y"),
            "2026  WARN x: y"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn specs_with_clashing_ids_or_ports_are_refused() {
        // Any existing file stands in for the binaries.
        let exe = std::env::current_exe().unwrap();
        let base = |nodes: Vec<NodeSpec>| {
            let mut s = ClusterSpec::new("/nonexistent").coordinator("c1");
            s.node_bin = exe.clone();
            s.coordinator_bin = exe.clone();
            s.nodes = nodes;
            s
        };
        let ok = base(vec![
            NodeSpec::new("n1", "eu", (50000, 50099)),
            NodeSpec::new("n2", "eu", (50100, 50199)),
        ]);
        assert!(ok.validate().is_ok());
        let same_id = base(vec![
            NodeSpec::new("c1", "eu", (50000, 50099)),
            NodeSpec::new("n2", "eu", (50100, 50199)),
        ]);
        assert!(same_id.validate().is_err());
        let overlap = base(vec![
            NodeSpec::new("n1", "eu", (50000, 50100)),
            NodeSpec::new("n2", "eu", (50100, 50199)),
        ]);
        assert!(overlap.validate().is_err());
        let mut apart = overlap.clone();
        apart.nodes[1].udp_ip = "127.0.0.2".parse().unwrap();
        assert!(apart.validate().is_ok());
        let three = ok.clone().nats_servers(3);
        assert!(three.validate().is_ok());
        assert!(ok.clone().nats_servers(2).validate().is_err());
        let mut taken = three.clone();
        taken.nodes[1].id = "nats3".into();
        assert!(taken.validate().is_err());
        let mut one = three;
        one.nats.servers = 1;
        one.nodes[1].id = "nats3".into();
        assert!(one.validate().is_ok(), "nats3 is free with one server");
        let mut missing = ok;
        missing.node_bin = "/nonexistent/node".into();
        assert!(missing.validate().is_err());
    }

    #[test]
    fn servers_are_named_nats_nats2_nats3() {
        let mut spec = ClusterSpec::new("/nonexistent");
        assert_eq!(spec.nats.server_ids(), ["nats"]);
        spec = spec.nats_servers(3);
        assert_eq!(spec.nats.server_ids(), ["nats", "nats2", "nats3"]);
    }
}
