//! `bench_forward`: what forwarding costs one media node.
//!
//! For each subscriber count N and each load (`--load`) it starts a fresh node process
//! (`--node-bin`, built beforehand with `cargo build --release -p node -p chaos`), connects one
//! publisher and N subscribe-only clients, waits until every subscriber receives every
//! published track, and then measures a steady window. The loads:
//!
//! - `video`: one synthetic VP8 track only (≈ 1 Mbps at 100 packets/s of 1200 bytes), no audio
//!   track at all: the per-packet cost of video-size packets;
//! - `mixed`: the same video plus Opus-like audio at 50 packets/s of 160 bytes (small packets,
//!   which make the per-packet cost look lower);
//! - `both` (default): each N is measured with `video`, then with `mixed`.
//!
//! Figures of a window:
//!
//! - forwarded packets/s: least-squares slope of `sfu_packets_forwarded_total` sampled from
//!   `/metrics` at 4 Hz (the node adds to that counter in batches of 64 packets per track,
//!   so a two-point delta over 10 s can be off by several percent);
//! - node CPU: utime + stime of the node process (`/proc/<pid>/stat`, all threads) over the
//!   window, per million forwarded packets (= µs per forwarded packet, the headline) and as %
//!   of one core;
//! - the bench process's own CPU the same way (its clients share the machine's cores), and
//!   everything else's: all cores' busy time (`/proc/stat`) minus node and bench. On a shared
//!   machine the bench waits for a quiet moment before each run and measures up to
//!   `--attempts` windows, reporting the least disturbed;
//! - loss: over all subscribers and every published track, sequence numbers that should have
//!   arrived in the window (growth of highest − first + 1) and did not, from statistics
//!   snapshots taken at the start and the end of the window; plus subscribers whose stream
//!   stalled;
//! - latency: receive time − send time (same machine clock) of every non-duplicate packet
//!   received in the window, pooled over all subscribers and every published track, from
//!   latency histograms copied at the start and the end of the window and subtracted;
//! - node RSS (`VmRSS`) at the end of the window.
//!
//! Then every client leaves and the node is stopped (SIGINT, then SIGKILL). With `--write
//! FILE` the results replace the `bench_forward` section of FILE. Traffic goes to 127.0.0.1
//! only; every wait is bounded.

use anyhow::{anyhow, bail, Context, Result};
use chaos::bench::{
    self, command_line, command_output, free_port, http_get, machine_ticks, metric, proc_cpu_ticks,
    unix_secs, vm_rss_kib, wait_quiet, MachineFacts,
};
use chaos::stats::LatencyHistogram;
use chaos::{Client, PublishOpts, TrackStats};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use protocol::signal::TrackKind;
use protocol::token::{mint, Claims};
use protocol::{RoomId, UserId};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const API_SECRET: &[u8] = b"devsecret";
const SECTION_BEGIN: &str = "<!-- bench_forward:begin -->";
const SECTION_END: &str = "<!-- bench_forward:end -->";

#[derive(Parser, Debug)]
#[command(
    name = "bench_forward",
    about = "Forwarding cost of one node: one publisher, N subscribers"
)]
struct Args {
    /// The node binary (build it first: cargo build --release -p node -p chaos).
    #[arg(long, default_value = "target/release/node")]
    node_bin: PathBuf,
    /// Subscriber counts to measure, one fresh node per count and load.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    subscribers: Vec<usize>,
    /// What the publisher sends: `video` (a video track only, no audio track), `mixed` (video
    /// and audio), or `both` (each N with `video`, then with `mixed`, each on a fresh node).
    #[arg(long, value_enum, default_value_t = LoadArg::Both)]
    load: LoadArg,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds to wait after every subscriber receives media, before the window.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Subscribers being set up (connect, join, negotiate, first media) at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Bound on setting up all subscribers, in seconds [default: 60 + N].
    #[arg(long)]
    setup_timeout: Option<u64>,
    /// Video packets per second of the publisher.
    #[arg(long, default_value_t = 100)]
    video_pps: u32,
    /// Audio packets per second of the publisher (the `mixed` load only).
    #[arg(long, default_value_t = 50)]
    audio_pps: u32,
    /// Video RTP payload bytes (both loads).
    #[arg(long, default_value_t = 1200)]
    video_payload: usize,
    /// Where the node logs (and perf data) go.
    #[arg(long, default_value = "target/bench_forward")]
    log_dir: PathBuf,
    /// After each measured window (not during it), profile the node with `perf record` for
    /// this many seconds and print its hottest symbols.
    #[arg(long)]
    perf_seconds: Option<u64>,
    /// Windows to measure at most per N: another is taken while other processes used more
    /// than --max-other % of a core; the least disturbed one is reported.
    #[arg(long, default_value_t = 3)]
    attempts: usize,
    /// See --attempts.
    #[arg(long, default_value_t = 20.0)]
    max_other: f64,
    /// Before each N, wait up to this many seconds for the machine to be quiet (other
    /// processes share its cores; the "other CPU %" column shows what was left).
    #[arg(long, default_value_t = 300)]
    quiet_wait: u64,
    /// "Quiet": all cores busy less than this % over one second.
    #[arg(long, default_value_t = 15.0)]
    quiet_below: f64,
    /// Replace the bench_forward section of this markdown file (created if missing).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Markdown file whose text becomes the section's "What dominates" note.
    #[arg(long)]
    note: Option<PathBuf>,
}

/// `--load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoadArg {
    Video,
    Mixed,
    Both,
}

impl LoadArg {
    /// The loads to run for each N, in order.
    fn loads(self) -> &'static [Load] {
        match self {
            LoadArg::Video => &[Load::Video],
            LoadArg::Mixed => &[Load::Mixed],
            LoadArg::Both => &[Load::Video, Load::Mixed],
        }
    }
}

/// What the publisher of one run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// One video track, nothing else.
    Video,
    /// A video and an audio track.
    Mixed,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Video => "video",
            Load::Mixed => "mixed",
        }
    }

    /// The tracks the publisher publishes, and so the ones every subscriber must receive.
    fn kinds(self) -> &'static [TrackKind] {
        match self {
            Load::Video => &[TrackKind::Video],
            Load::Mixed => &[TrackKind::Video, TrackKind::Audio],
        }
    }

    fn publish_opts(self, args: &Args) -> PublishOpts {
        PublishOpts {
            audio: self.kinds().contains(&TrackKind::Audio),
            video: self.kinds().contains(&TrackKind::Video),
            video_pps: args.video_pps,
            audio_pps: args.audio_pps,
            video_payload: args.video_payload,
            ..PublishOpts::default()
        }
    }

    /// For the section's "load:" line.
    fn describe(self, args: &Args) -> String {
        let o = self.publish_opts(args);
        match self {
            Load::Video => format!(
                "*video*: a video track only (no audio track), {} pkt/s × {} B payload",
                o.video_pps, o.video_payload
            ),
            Load::Mixed => format!(
                "*mixed*: video {} pkt/s × {} B payload + audio {} pkt/s × {} B",
                o.video_pps, o.video_payload, o.audio_pps, o.audio_payload
            ),
        }
    }
}

/// Every track kind of `kinds` is among `tracks` and has received something.
fn receives_all(tracks: &[TrackStats], kinds: &[TrackKind]) -> bool {
    kinds
        .iter()
        .all(|k| tracks.iter().any(|t| t.kind == *k && t.received > 0))
}

/// One run: N subscribers with one load, on a fresh node.
struct Outcome {
    n: usize,
    load: Load,
    result: Result<RunResult>,
}

impl Outcome {
    fn label(&self) -> String {
        format!("N={} {}", self.n, self.load.name())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    bench::init_logs();
    if args.subscribers.is_empty() || args.subscribers.contains(&0) {
        bail!("--subscribers needs positive counts, e.g. 50,100,200");
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if !args.node_bin.is_file() {
        bail!(
            "node binary {} not found: run `cargo build --release -p node -p chaos` first or pass --node-bin",
            args.node_bin.display()
        );
    }
    std::fs::create_dir_all(&args.log_dir)
        .with_context(|| format!("creating {}", args.log_dir.display()))?;
    let facts = MachineFacts::collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut outcomes = Vec::new();
    for &n in &args.subscribers {
        for &load in args.load.loads() {
            let name = load.name();
            eprintln!("== N = {n} subscribers, {name} load");
            let busy = rt.block_on(wait_quiet(
                Duration::from_secs(args.quiet_wait),
                args.quiet_below,
            ))?;
            if busy >= args.quiet_below {
                eprintln!(
                    "   the machine is still {busy:.0} % busy after {} s; measuring anyway",
                    args.quiet_wait
                );
            }
            let result = rt.block_on(run_one(&args, &facts, n, load));
            match &result {
                Ok(r) => eprintln!("== N = {n} {name}: {}", r.one_line()),
                Err(e) => eprintln!("== N = {n} {name} FAILED: {e:#}"),
            }
            outcomes.push(Outcome { n, load, result });
        }
    }
    // Clients closing in the background finish before the runtime goes.
    rt.shutdown_timeout(Duration::from_secs(5));

    let table = render_table(&outcomes, facts.nproc);
    println!("{table}");
    println!("{}", render_headline(&outcomes));
    for o in &outcomes {
        if let Some(p) = o.result.as_ref().ok().and_then(|r| r.profile.as_deref()) {
            println!(
                "perf profile of the node at N = {}, {} load:\n{p}",
                o.n,
                o.load.name()
            );
        }
    }
    if let Some(path) = &args.write {
        let note = match &args.note {
            Some(p) => Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ),
            None => None,
        };
        let section = render_section(&args, &facts, &table, &outcomes, note.as_deref());
        bench::write_section(path, SECTION_BEGIN, SECTION_END, &section)?;
        eprintln!("wrote the bench_forward section of {}", path.display());
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.result {
            Err(e) => Some(format!("{}: {e:#}", o.label())),
            Ok(r) if r.window.stalled > 0 => Some(format!(
                "{}: {} subscriber(s) stalled in the window",
                o.label(),
                r.window.stalled
            )),
            Ok(_) => None,
        })
        .collect();
    if !failed.is_empty() {
        bail!("{} run(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// The figures of one run (one N, one load).
struct RunResult {
    setup_secs: f64,
    /// The measured window (the least disturbed one, when several were taken).
    window: Window,
    peers_after_leave: Option<f64>,
    profile: Option<String>,
}

impl RunResult {
    fn one_line(&self) -> String {
        let w = &self.window;
        format!(
            "fwd {:.0}/s, node {:.0}% CPU, {:.2} µs node CPU per fwd pkt, bench {:.0}% CPU, machine {:.0}% busy, loss {:.3}%, p50 {:.2} ms, p99 {:.2} ms",
            w.forwarded_pps,
            w.node_cpu_pct(),
            w.cpu_per_mpkt(),
            w.bench_cpu_pct(),
            w.machine_busy,
            w.loss_pct,
            ms(w.lat.percentile(50.0)),
            ms(w.lat.percentile(99.0)),
        )
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A node child process, stopped when dropped.
struct NodeProc {
    child: Child,
    port: u16,
}

impl NodeProc {
    fn start(bin: &Path, log: &Path) -> Result<NodeProc> {
        let port = free_port()?;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--dev-tokens", "--udp-ports", "0", "--room-node-share", "0"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(NodeProc { child, port })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGINT (the node's graceful shutdown), then SIGKILL after 5 s.
    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn run_one(args: &Args, facts: &MachineFacts, n: usize, load: Load) -> Result<RunResult> {
    let log = args.log_dir.join(format!("node-n{n}-{}.log", load.name()));
    let mut node = NodeProc::start(&args.node_bin, &log)?;
    let result = run_with_node(args, facts, n, load, &mut node).await;
    node.stop();
    result.with_context(|| format!("node log: {}", log.display()))
}

async fn run_with_node(
    args: &Args,
    facts: &MachineFacts,
    n: usize,
    load: Load,
    node: &mut NodeProc,
) -> Result<RunResult> {
    let port = node.port;
    // Ready = /metrics answers. Bounded: 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = node.exited() {
            bail!("node exited during startup ({status})");
        }
        if http_get(port, "/metrics").await.is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("node did not answer /metrics on port {port} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ws = format!("ws://127.0.0.1:{port}/ws");
    let room = format!("bench-{n}-{}-{:04x}", load.name(), rand::random::<u16>());
    let kinds = load.kinds();

    let publisher = Client::connect(&ws).await.context("publisher connect")?;
    publisher
        .join(&room, &token(&room, "publisher", true)?)
        .await
        .context("publisher join")?;
    let publisher_id = publisher
        .participant_id()
        .ok_or_else(|| anyhow!("publisher has no participant id"))?
        .to_string();
    publisher
        .publish(load.publish_opts(args))
        .await
        .context("publisher publish")?;
    // Exactly the load's tracks are published (so `video` has no audio track).
    let mut published: Vec<TrackKind> = publisher
        .sent_stats()
        .await
        .iter()
        .filter(|t| t.active)
        .map(|t| t.kind)
        .collect();
    published.sort_by_key(|k| *k == TrackKind::Audio);
    if published != kinds {
        bail!(
            "the publisher publishes {published:?}, the {} load wants {kinds:?}",
            load.name()
        );
    }

    // Subscribers, `concurrency` at a time; each counts as set up once it receives every
    // published track. The first failure stops the setup.
    let setup_started = Instant::now();
    let setup_timeout = Duration::from_secs(args.setup_timeout.unwrap_or(60 + n as u64));
    let mut subs: Vec<Client> = Vec::with_capacity(n);
    let setup = async {
        let mut stream = futures::stream::iter(0..n)
            .map(|i| setup_subscriber(&ws, &room, i, &publisher_id, kinds))
            .buffer_unordered(args.concurrency.max(1));
        while let Some(r) = stream.next().await {
            subs.push(r?);
            if subs.len().is_multiple_of(25) {
                eprintln!(
                    "   {} / {n} subscribers receive media ({:.1} s)",
                    subs.len(),
                    setup_started.elapsed().as_secs_f64()
                );
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(setup_timeout, setup).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let done = subs.len();
            leave_all(subs, args.concurrency).await;
            return Err(e.context(format!(
                "setting up subscribers: {done} of {n} were receiving media when one failed"
            )));
        }
        Err(_) => {
            let done = subs.len();
            leave_all(subs, args.concurrency).await;
            bail!(
                "setting up subscribers: only {done} of {n} received media within {} s",
                setup_timeout.as_secs()
            );
        }
    }
    let setup_secs = setup_started.elapsed().as_secs_f64();
    eprintln!("   all {n} subscribers receive media after {setup_secs:.1} s");

    // Steady: every subscriber got a packet of each published track within the last second.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = chaos::payload::unix_now_us();
        let behind = subs
            .iter()
            .filter(|c| {
                let ts = tracks_of(c, &publisher_id);
                !receives_all(&ts, kinds)
                    || ts
                        .iter()
                        .any(|t| now.saturating_sub(t.last_packet_unix_us) > 1_000_000)
            })
            .count();
        if behind == 0 {
            break;
        }
        if Instant::now() >= deadline {
            leave_all(subs, args.concurrency).await;
            bail!("{behind} of {n} subscribers received nothing in the last second, for 15 s after setup");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    // No subscriber sees a track of a kind that was not published.
    let strays = subs
        .iter()
        .filter(|c| {
            tracks_of(c, &publisher_id)
                .iter()
                .any(|t| !kinds.contains(&t.kind))
        })
        .count();
    if strays > 0 {
        leave_all(subs, args.concurrency).await;
        bail!(
            "{strays} of {n} subscribers receive a track the {} load does not publish",
            load.name()
        );
    }

    // The window, repeated (bounded) while other processes take much of the machine.
    let pid = node.pid();
    let attempts = args.attempts.max(1);
    let mut best: Option<Window> = None;
    for attempt in 1..=attempts {
        let w = measure_window(args, facts, node, &publisher, &publisher_id, &subs, kinds).await?;
        let other = w.other_cpu_pct(facts.nproc);
        eprintln!(
            "   window {attempt}/{attempts}: node {:.0} %, bench {:.0} %, other {other:.0} % of a core",
            w.node_cpu_pct(),
            w.bench_cpu_pct()
        );
        let better = best
            .as_ref()
            .is_none_or(|b| other < b.other_cpu_pct(facts.nproc));
        if better {
            best = Some(w);
        }
        if other <= args.max_other {
            break;
        }
    }
    let window = best.ok_or_else(|| anyhow!("no window measured"))?;

    let profile = match args.perf_seconds {
        Some(s) if s > 0 => match perf_profile(pid, s, &args.log_dir, n, load).await {
            Ok(p) => Some(p),
            Err(e) => Some(format!("perf failed: {e:#}")),
        },
        _ => None,
    };

    // Teardown: everyone leaves; the node should be back to zero peers.
    leave_all(subs, args.concurrency).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), publisher.leave()).await;
    drop(publisher);
    let mut peers_after_leave = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        peers_after_leave = Metrics::fetch(port).await.ok().map(|m| m.peers);
        if peers_after_leave == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    Ok(RunResult {
        setup_secs,
        window,
        peers_after_leave,
        profile,
    })
}

/// Everything measured over one steady window.
struct Window {
    secs: f64,
    sent_pps: f64,
    forwarded_pps: f64,
    delivered_pps: f64,
    node_cpu_secs: f64,
    bench_cpu_secs: f64,
    /// Non-idle share of all cores, %.
    machine_busy: f64,
    loss_pct: f64,
    stalled: usize,
    lat: LatencyHistogram,
    rss_kib: u64,
    dropped_congested: f64,
    dropped_write_error: f64,
}

impl Window {
    fn node_cpu_pct(&self) -> f64 {
        100.0 * self.node_cpu_secs / self.secs
    }

    fn bench_cpu_pct(&self) -> f64 {
        100.0 * self.bench_cpu_secs / self.secs
    }

    /// CPU of everything else on the machine (% of one core): all cores' busy time minus
    /// the node's and the bench's.
    fn other_cpu_pct(&self, nproc: usize) -> f64 {
        (self.machine_busy * nproc as f64 - self.node_cpu_pct() - self.bench_cpu_pct()).max(0.0)
    }

    fn cpu_per_mpkt(&self) -> f64 {
        let forwarded = self.forwarded_pps * self.secs;
        if forwarded <= 0.0 {
            return f64::NAN;
        }
        self.node_cpu_secs / (forwarded / 1e6)
    }
}

async fn measure_window(
    args: &Args,
    facts: &MachineFacts,
    node: &NodeProc,
    publisher: &Client,
    publisher_id: &str,
    subs: &[Client],
    kinds: &[TrackKind],
) -> Result<Window> {
    let (port, pid) = (node.port, node.pid());
    let m0 = Metrics::fetch(port).await?;
    let sent0 = publisher.sent_stats().await;
    let subs0: Vec<SubSnap> = subs
        .iter()
        .map(|c| SubSnap::take(c, publisher_id))
        .collect();
    let cpu0 = (
        proc_cpu_ticks(&pid.to_string())?,
        proc_cpu_ticks("self")?,
        machine_ticks()?,
    );
    let t0 = Instant::now();
    let mut samples = vec![(0.0, m0.forwarded)];
    let window = Duration::from_secs(args.seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.tick().await;
    while t0.elapsed() < window {
        tick.tick().await;
        let m = Metrics::fetch(port).await?;
        samples.push((t0.elapsed().as_secs_f64(), m.forwarded));
    }
    let cpu1 = (
        proc_cpu_ticks(&pid.to_string())?,
        proc_cpu_ticks("self")?,
        machine_ticks()?,
    );
    let secs = t0.elapsed().as_secs_f64();
    let subs1: Vec<SubSnap> = subs
        .iter()
        .map(|c| SubSnap::take(c, publisher_id))
        .collect();
    let sent1 = publisher.sent_stats().await;
    let m1 = Metrics::fetch(port).await?;
    let rss_kib = vm_rss_kib(pid)?;

    let clk = facts.clk_tck as f64;
    let node_cpu_secs = (cpu1.0 - cpu0.0) as f64 / clk;
    let bench_cpu_secs = (cpu1.1 - cpu0.1) as f64 / clk;
    let (busy, total) = (cpu1.2 .0 - cpu0.2 .0, cpu1.2 .1 - cpu0.2 .1);
    let machine_busy = if total > 0 {
        100.0 * busy as f64 / total as f64
    } else {
        f64::NAN
    };
    let sent_by_kind = |s: &[chaos::SentStats], k: TrackKind| -> u64 {
        s.iter().filter(|t| t.kind == k).map(|t| t.sent).sum()
    };
    let sent_video =
        sent_by_kind(&sent1, TrackKind::Video) - sent_by_kind(&sent0, TrackKind::Video);
    let sent_audio =
        sent_by_kind(&sent1, TrackKind::Audio) - sent_by_kind(&sent0, TrackKind::Audio);

    let mut lost = 0i64;
    let mut expected = 0i64;
    let mut delivered = 0i64;
    let mut stalled = 0usize;
    let mut lat = LatencyHistogram::default();
    for (a, b) in subs0.iter().zip(&subs1) {
        // A subscriber missing a published track has stalled; tracks of kinds not
        // published cannot be there (checked before the window).
        let mut sub_stalled = !kinds.iter().all(|k| b.stats.values().any(|t| t.kind == *k));
        for (key, tb) in &b.stats {
            let Some(ta) = a.stats.get(key) else {
                sub_stalled = true;
                continue;
            };
            let unique = |t: &TrackStats| (t.received - t.duplicates) as i64;
            let d_unique = unique(tb) - unique(ta);
            let d_lost = tb.lost as i64 - ta.lost as i64;
            lost += d_lost;
            expected += d_unique + d_lost;
            delivered += (tb.received - ta.received) as i64;
            let sent = match tb.kind {
                TrackKind::Video => sent_video,
                TrackKind::Audio => sent_audio,
            };
            if ((d_unique + d_lost) as f64) < 0.5 * sent as f64 {
                sub_stalled = true;
            }
            if let (Some(ha), Some(hb)) = (a.latency.get(key), b.latency.get(key)) {
                lat.merge(&hb.since(ha));
            }
        }
        if sub_stalled {
            stalled += 1;
        }
    }
    let loss_pct = if expected > 0 {
        100.0 * lost as f64 / expected as f64
    } else {
        f64::NAN
    };
    Ok(Window {
        secs,
        sent_pps: (sent_video + sent_audio) as f64 / secs,
        forwarded_pps: slope(&samples),
        delivered_pps: delivered as f64 / secs,
        node_cpu_secs,
        bench_cpu_secs,
        machine_busy,
        loss_pct,
        stalled,
        lat,
        rss_kib,
        dropped_congested: m1.dropped_congested - m0.dropped_congested,
        dropped_write_error: m1.dropped_write_error - m0.dropped_write_error,
    })
}

fn token(room: &str, user: &str, can_publish: bool) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = Claims::new(RoomId::new(room)?, UserId::new(user)?, now, 3600);
    claims.can_publish = can_publish;
    Ok(mint(API_SECRET, &claims))
}

fn tracks_of(c: &Client, publisher: &str) -> Vec<TrackStats> {
    c.track_stats()
        .into_iter()
        .filter(|t| t.publisher == publisher)
        .collect()
}

/// Connects, joins subscribe-only and waits (30 s at most) until every published track
/// (`kinds`) arrives.
async fn setup_subscriber(
    ws: &str,
    room: &str,
    i: usize,
    publisher: &str,
    kinds: &[TrackKind],
) -> Result<Client> {
    let user = format!("sub-{i:04}");
    let c = Client::connect(ws)
        .await
        .with_context(|| format!("{user}: connect"))?;
    c.join(room, &token(room, &user, false)?)
        .await
        .with_context(|| format!("{user}: join"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ts = tracks_of(&c, publisher);
        if receives_all(&ts, kinds) {
            return Ok(c);
        }
        if Instant::now() >= deadline {
            let errors = c.local_errors();
            bail!(
                "{user}: no media from every published track ({kinds:?}) within 30 s after joining (tracks: {}, local errors: {:?})",
                ts.iter()
                    .map(|t| format!("{:?} received {}", t.kind, t.received))
                    .collect::<Vec<_>>()
                    .join(", "),
                errors
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every client leaves, `concurrency × 2` at a time, each bounded by 5 s, all by 120 s.
async fn leave_all(subs: Vec<Client>, concurrency: usize) {
    let all = futures::stream::iter(subs)
        .map(|c| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.leave()).await;
        })
        .buffer_unordered(concurrency.max(1) * 2)
        .collect::<Vec<()>>();
    if tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .is_err()
    {
        eprintln!("   leaving took more than 120 s; the rest are dropped");
    }
}

/// One subscriber's statistics of the publisher's tracks, keyed by track id.
struct SubSnap {
    stats: HashMap<String, TrackStats>,
    latency: HashMap<String, LatencyHistogram>,
}

impl SubSnap {
    fn take(c: &Client, publisher: &str) -> SubSnap {
        let latency = c
            .latency_histograms()
            .into_iter()
            .filter(|(p, _, _)| p == publisher)
            .map(|(_, t, h)| (t, h))
            .collect();
        let stats = tracks_of(c, publisher)
            .into_iter()
            .map(|t| (t.track_id.clone(), t))
            .collect();
        SubSnap { stats, latency }
    }
}

/// Least-squares slope of (seconds, counter) samples.
fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return f64::NAN;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx) * (s.0 - mx)).sum();
    sxy / sxx
}

/// The node counters the bench reads.
struct Metrics {
    forwarded: f64,
    dropped_congested: f64,
    dropped_write_error: f64,
    peers: f64,
}

impl Metrics {
    async fn fetch(port: u16) -> Result<Metrics> {
        let text = http_get(port, "/metrics").await.context("GET /metrics")?;
        let get = |name: &str, label: Option<&str>| -> Result<f64> {
            metric(&text, name, label).ok_or_else(|| anyhow!("/metrics has no {name} {label:?}"))
        };
        Ok(Metrics {
            forwarded: get("sfu_packets_forwarded_total", None)?,
            dropped_congested: get("sfu_packets_dropped_total", Some("reason=\"congested\""))?,
            dropped_write_error: get("sfu_packets_dropped_total", Some("reason=\"write_error\""))?,
            peers: get("sfu_peers", None)?,
        })
    }
}

/// `perf record` of the node for `secs` (sampling at 999 Hz, no call graphs), then the
/// hottest symbols by self time.
async fn perf_profile(pid: u32, secs: u64, dir: &Path, n: usize, load: Load) -> Result<String> {
    let data = dir.join(format!("perf-n{n}-{}.data", load.name()));
    let data_s = data.to_string_lossy().to_string();
    let pid_s = pid.to_string();
    let secs_s = secs.to_string();
    let record = tokio::process::Command::new("perf")
        .args(["record", "-q", "-F", "999", "-p", &pid_s, "-o", &data_s])
        .args(["--", "sleep", &secs_s])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), record)
        .await
        .map_err(|_| anyhow!("perf record did not finish"))??;
    if !out.status.success() {
        bail!(
            "perf record: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut report = String::new();
    for sort in ["dso", "dso,symbol"] {
        let out = tokio::process::Command::new("perf")
            .args(["report", "-i", &data_s, "--stdio", "--no-children", "-q"])
            .args(["--sort", sort, "--percent-limit", "1"])
            .stderr(Stdio::null())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), out)
            .await
            .map_err(|_| anyhow!("perf report did not finish"))??;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(30)
            .map(|l| l.trim_end())
            .collect();
        let _ = writeln!(report, "by {sort} (self time, ≥ 1 %):");
        for l in lines {
            // perf pads the symbol column to the widest name and appends empty columns.
            let l = l.trim().trim_end_matches(['-', ' ']);
            let _ = writeln!(
                report,
                "  {}",
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    Ok(report)
}

/// The µs-per-packet column's header: CPU-seconds per million forwarded packets is the same
/// number as CPU-microseconds per forwarded packet.
const CPU_PER_PKT: &str = "node CPU µs per fwd pkt (= CPU-s per M fwd)";

fn render_table(outcomes: &[Outcome], nproc: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| subscribers | load | setup s | sent pkt/s | forwarded pkt/s | delivered pkt/s | node CPU % | {CPU_PER_PKT} | bench CPU % | other CPU % | loss % | stalled | p50 ms | p99 ms | max ms | node RSS MiB | dropped congested / write err |"
    );
    t.push_str(
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        let (n, load) = (o.n, o.load.name());
        match &o.result {
            Ok(r) => {
                let w = &r.window;
                let _ = writeln!(
                    t,
                    "| {n} | {load} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.3} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} / {:.0} |",
                    r.setup_secs,
                    w.sent_pps,
                    w.forwarded_pps,
                    w.delivered_pps,
                    w.node_cpu_pct(),
                    w.cpu_per_mpkt(),
                    w.bench_cpu_pct(),
                    w.other_cpu_pct(nproc),
                    w.loss_pct,
                    w.stalled,
                    ms(w.lat.percentile(50.0)),
                    ms(w.lat.percentile(99.0)),
                    ms(w.lat.max()),
                    w.rss_kib as f64 / 1024.0,
                    w.dropped_congested,
                    w.dropped_write_error,
                );
            }
            Err(e) => {
                let msg = format!("{e:#}").replace('|', "/").replace('\n', " ");
                let _ = writeln!(
                    t,
                    "| {n} | {load} | failed: {msg} | | | | | | | | | | | | | | |"
                );
            }
        }
    }
    t
}

/// The headline: node CPU per forwarded packet, one line per N with every load measured.
fn render_headline(outcomes: &[Outcome]) -> String {
    let mut h = String::from("Node CPU per forwarded packet (µs; = CPU-s per M fwd):\n");
    let mut ns: Vec<usize> = Vec::new();
    for o in outcomes {
        if !ns.contains(&o.n) {
            ns.push(o.n);
        }
    }
    for n in ns {
        let per_load: Vec<String> = outcomes
            .iter()
            .filter(|o| o.n == n)
            .map(|o| match &o.result {
                Ok(r) => format!(
                    "{} {:.2} µs (loss {:.3} %)",
                    o.load.name(),
                    r.window.cpu_per_mpkt(),
                    r.window.loss_pct
                ),
                Err(_) => format!("{} failed", o.load.name()),
            })
            .collect();
        let _ = writeln!(h, "- N = {n}: {}", per_load.join(", "));
    }
    h
}

/// The section's "load:" line.
fn load_line(args: &Args) -> String {
    let loads: Vec<String> = args.load.loads().iter().map(|l| l.describe(args)).collect();
    let per_n = if args.load.loads().len() > 1 {
        "a row per N and load, each run on a fresh node"
    } else {
        "a row per N, each run on a fresh node"
    };
    format!(
        "- load ({per_n}): one publisher; {}; N subscribe-only clients set up {} at a time; window {} s after {} s of settling (up to {} windows while other processes took more than {} % of a core; the least disturbed is reported); node with default settings (`--dev-tokens --udp-ports 0`, 2 media threads); clients and node on the same machine",
        loads.join("; "),
        args.concurrency,
        args.seconds,
        args.settle,
        args.attempts.max(1),
        args.max_other
    )
}

fn render_section(
    args: &Args,
    facts: &MachineFacts,
    table: &str,
    outcomes: &[Outcome],
    note: Option<&str>,
) -> String {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_else(|| format!("unix {}", unix_secs()));
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]).map(|c| {
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c} (working tree had uncommitted changes)")
        } else {
            c
        }
    });
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_BEGIN}");
    let _ = writeln!(
        s,
        "## Forwarding: one publisher, N subscribers, one node (`bench_forward`)\n"
    );
    let _ = writeln!(
        s,
        "```\ncargo build --release -p node -p chaos\n{}\n```\n",
        command_line()
    );
    let _ = writeln!(s, "- date: {date}");
    if let Some(c) = commit {
        let _ = writeln!(s, "- commit: {c}");
    }
    let _ = writeln!(
        s,
        "- machine: {} CPUs (nproc), {}, Linux {}; CLK_TCK {} ({})",
        facts.nproc, facts.cpu_model, facts.kernel, facts.clk_tck, facts.clk_tck_note
    );
    let _ = writeln!(s, "{}\n", load_line(args));
    s.push_str(table);
    s.push('\n');
    s.push_str(&render_headline(outcomes));
    s.push('\n');
    s.push_str(
        "How each figure is computed:\n\n\
- *load*: *video* publishes one video track and no audio track, so every forwarded packet is \
video-size; *mixed* adds the audio track, whose small packets lower the average cost per packet. \
Every figure below covers exactly the tracks published in that row.\n\
- *forwarded pkt/s*: least-squares slope of the node's `sfu_packets_forwarded_total`, sampled \
from `/metrics` every 250 ms through the window (the node adds to the counter in batches of 64 \
received packets per track, so a two-point delta would be off by up to ±8 %). *delivered pkt/s*: \
packets the subscribers' applications received in the window (their own counters). *sent pkt/s*: \
packets the publisher handed to webrtc.\n\
- *node CPU*: utime + stime of the node process (all threads, `/proc/<pid>/stat`) over the \
window; 100 % = one core, so the machine has nproc × 100 %. *node CPU µs per fwd pkt* = node \
CPU-seconds / (forwarded pkt/s × window / 10⁶), i.e. CPU-seconds per million forwarded packets, \
which is the same number as CPU-microseconds per forwarded packet. \
*bench CPU*: the same for this process (publisher + all subscribers, which compete with the node \
for the same cores). *other CPU*: everything else on the machine in the window (all cores' non-idle time from \
`/proc/stat`, minus node and bench); well above 0 means the figures were disturbed.\n\
- *loss*: from statistics snapshots of every subscriber at the start and end of the window, \
Σ growth of missing sequence numbers / Σ growth of (highest − first + 1), over all subscribers and \
every published track. *stalled*: subscribers missing a published track, or with a track whose \
highest sequence number advanced less than half of what the publisher sent in the window (loss by \
sequence alone cannot see a stream that stopped).\n\
- *latency*: receive time − send time embedded in the payload (one clock), of every non-duplicate \
packet received in the window, pooled over all subscribers and every published track: each \
subscriber's latency histograms (≤ 1.6 % bucket error) are copied at the start and end of the \
window and subtracted. *max* is the top of the highest non-empty bucket.\n\
- *node RSS*: `VmRSS` at the end of the window. *dropped*: growth of \
`sfu_packets_dropped_total{reason=congested|write_error}` in the window.\n\n",
    );
    let leaks: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let r = o.result.as_ref().ok()?;
            let label = o.label();
            match r.peers_after_leave {
                Some(0.0) => None,
                Some(p) => Some(format!("{label}: sfu_peers = {p} 10 s after everyone left")),
                None => Some(format!("{label}: sfu_peers unreadable after everyone left")),
            }
        })
        .collect();
    if !leaks.is_empty() {
        let _ = writeln!(s, "Teardown: {}.\n", leaks.join("; "));
    }
    s.push_str("### What dominates\n\n");
    match note {
        Some(n) => {
            s.push_str(n.trim());
            s.push_str("\n\n");
        }
        None if outcomes
            .iter()
            .any(|o| o.result.as_ref().is_ok_and(|r| r.profile.is_some())) =>
        {
            s.push_str("No summary was given (`--note`); the profiles are below.\n\n")
        }
        None => s.push_str("Not measured (no profile was taken for this run).\n\n"),
    }
    for o in outcomes {
        if let Some(p) = o.result.as_ref().ok().and_then(|r| r.profile.as_deref()) {
            let _ = writeln!(
                s,
                "<details><summary>perf profile of the node at N = {}, {} load (taken after the window)</summary>\n\n```\n{}```\n</details>\n",
                o.n,
                o.load.name(),
                p
            );
        }
    }
    let _ = writeln!(s, "{SECTION_END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let s: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0 + 3.0 * i as f64)).collect();
        assert!((slope(&s) - 3.0).abs() < 1e-9);
    }

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("bench_forward").chain(extra.iter().copied())).unwrap()
    }

    /// A run of N subscribers: `pps` packets/s forwarded per subscriber over 10 s, with
    /// `cpu_secs` of node CPU.
    fn ok(n: usize, load: Load, pps: f64, cpu_secs: f64) -> Outcome {
        let mut lat = LatencyHistogram::default();
        lat.record(1_000);
        Outcome {
            n,
            load,
            result: Ok(RunResult {
                setup_secs: 1.0,
                window: Window {
                    secs: 10.0,
                    sent_pps: pps,
                    forwarded_pps: pps * n as f64,
                    delivered_pps: pps * n as f64,
                    node_cpu_secs: cpu_secs,
                    bench_cpu_secs: 0.5,
                    machine_busy: 10.0,
                    loss_pct: 0.0,
                    stalled: 0,
                    lat,
                    rss_kib: 20 * 1024,
                    dropped_congested: 0.0,
                    dropped_write_error: 0.0,
                },
                peers_after_leave: Some(0.0),
                profile: None,
            }),
        }
    }

    #[test]
    fn defaults_are_the_issue_benchmark() {
        let a = args(&[]);
        assert_eq!(a.subscribers, vec![50, 100, 200]);
        assert_eq!(a.load, LoadArg::Both);
        assert_eq!(a.load.loads(), &[Load::Video, Load::Mixed]);
        assert_eq!(a.video_payload, 1200);
        let a = args(&["--subscribers", "10", "--load", "video"]);
        assert_eq!(a.subscribers, vec![10]);
        assert_eq!(a.load.loads(), &[Load::Video]);
        assert_eq!(args(&["--load", "mixed"]).load.loads(), &[Load::Mixed]);
    }

    #[test]
    fn video_load_publishes_only_video() {
        let a = args(&[]);
        let v = Load::Video.publish_opts(&a);
        assert!(v.video && !v.audio);
        assert_eq!(v.video_payload, 1200);
        let m = Load::Mixed.publish_opts(&a);
        assert!(m.video && m.audio);
        assert_eq!(Load::Video.kinds(), &[TrackKind::Video]);
    }

    fn track(kind: TrackKind, received: u64) -> TrackStats {
        TrackStats {
            publisher: "p".into(),
            track_id: format!("{kind:?}"),
            kind,
            received,
            lost: 0,
            duplicates: 0,
            foreign: 0,
            restarts: 0,
            in_flight: 0,
            in_flight_missing: 0,
            latency_p50_us: 0,
            latency_p99_us: 0,
            latency_max_us: 0,
            last_packet_unix_us: 0,
            ended: false,
        }
    }

    #[test]
    fn a_video_only_subscriber_is_complete_without_audio() {
        let video = track(TrackKind::Video, 5);
        assert!(receives_all(
            std::slice::from_ref(&video),
            Load::Video.kinds()
        ));
        assert!(!receives_all(
            std::slice::from_ref(&video),
            Load::Mixed.kinds()
        ));
        let silent_audio = track(TrackKind::Audio, 0);
        assert!(!receives_all(&[video, silent_audio], Load::Mixed.kinds()));
    }

    #[test]
    fn table_has_a_load_column_and_a_row_per_run() {
        let outcomes = vec![
            ok(50, Load::Video, 100.0, 5.0),
            ok(50, Load::Mixed, 150.0, 6.0),
            Outcome {
                n: 100,
                load: Load::Video,
                result: Err(anyhow!("boom | bang")),
            },
        ];
        let t = render_table(&outcomes, 2);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("| subscribers | load | setup s |"));
        assert!(lines[0].contains("node CPU µs per fwd pkt"));
        let cells = |l: &str| l.matches('|').count();
        for l in &lines {
            assert_eq!(cells(l), cells(lines[0]), "{l}");
        }
        // 5 CPU-s over 10 s × 5000 pkt/s = 50 000 packets: 100 µs per packet.
        assert!(lines[2].starts_with("| 50 | video | 1.0 | 100 | 5000 | 5000 | 50 | 100.00 |"));
        assert!(lines[3].starts_with("| 50 | mixed | 1.0 | 150 | 7500 | 7500 | 60 | 80.00 |"));
        assert!(lines[4].starts_with("| 100 | video | failed: boom / bang |"));
    }

    #[test]
    fn headline_puts_the_loads_of_one_n_side_by_side() {
        let outcomes = vec![
            ok(50, Load::Video, 100.0, 5.0),
            ok(50, Load::Mixed, 150.0, 6.0),
            Outcome {
                n: 100,
                load: Load::Video,
                result: Err(anyhow!("boom")),
            },
            ok(100, Load::Mixed, 150.0, 12.0),
        ];
        let h = render_headline(&outcomes);
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("µs"));
        assert_eq!(
            lines[1],
            "- N = 50: video 100.00 µs (loss 0.000 %), mixed 80.00 µs (loss 0.000 %)"
        );
        assert_eq!(
            lines[2],
            "- N = 100: video failed, mixed 80.00 µs (loss 0.000 %)"
        );
    }

    #[test]
    fn load_line_describes_the_loads_run() {
        let both = load_line(&args(&[]));
        assert!(both.starts_with("- load (a row per N and load"));
        assert!(both.contains(
            "*video*: a video track only (no audio track), 100 pkt/s × 1200 B payload; \
*mixed*: video 100 pkt/s × 1200 B payload + audio 50 pkt/s × 160 B;"
        ));
        let video = load_line(&args(&["--load", "video"]));
        assert!(video.contains("*video*"));
        assert!(!video.contains("*mixed*"));
    }
}
