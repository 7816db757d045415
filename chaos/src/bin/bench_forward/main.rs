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

mod node;
mod report;
mod run;
#[cfg(test)]
mod tests;
mod window;

use node::{perf_profile, NodeProc};
use report::{render_headline, render_section, render_table};
use run::{run_one, tracks_of};
use window::{measure_window, Metrics, Window};

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
