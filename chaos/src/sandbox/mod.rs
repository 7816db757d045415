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

mod proc;
mod spec;
mod start;
#[cfg(test)]
mod tests;

pub use proc::{Proc, Role};
pub use spec::{ClusterSpec, NatsSpec, NodeSpec};

use crate::bench::{self, CpuSnap};
use anyhow::{anyhow, bail, Context, Result};
use protocol::nats_auth::{self, User};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`Cluster::stop`] waits after SIGINT before SIGKILL.
/// The API key the sandbox's coordinators take room API call tokens for (`--api-key`); the
/// secret is the cluster's API secret ([`Cluster::api_secret`]).
pub const API_KEY: &str = "sandbox";

pub const STOP_GRACE: Duration = Duration::from_secs(5);

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
