//! `bench_failover`: how long the coordinators take to find a dead node, and how long
//! participants go without media when their node dies (SIGKILL) or drains (SIGTERM).
//!
//! Starts clusters on loopback from the release binaries (build them first:
//! `cargo build --release -p node -p coordinator -p chaos`) with [`chaos::sandbox`]:
//! nats-server, coordinators c1 and c2, nodes n1, n2, n3 (`--room-empty-grace-secs=1`, so a
//! round's rooms are gone by the next). Participants are [`chaos::Participant`]s, which
//! recover by themselves as PROTOCOL.md says.
//!
//! 1. **kill** (`--kills` rounds, all nodes in `eu`): `--rooms` rooms of three publishing
//!    participants, a room's three sockets on three nodes. Once everyone receives everyone,
//!    the node hosting most rooms gets SIGKILL. *Detection* = kill → the first
//!    `cluster.node.down` naming it; per participant: kill → a packet from every other one
//!    over its new connections, split into kill → noticed → `joined` → media. Everyone
//!    leaves, the victim starts again, and every coordinator must count three live nodes.
//! 2. **drain** (`--drains` rounds; n1 alone in `eu`, n2 and n3 in `us`): `--drain-rooms`
//!    such rooms, sockets and media all on n1, which gets SIGTERM. Per participant the
//!    *gap* from its `reconnect` to media from every other one; who never got media back
//!    (*dropped*); how long n1 took to exit.
//!
//! Every wait is bounded; a participant without media back within `--recovery-secs` is a
//! failure, listed in the report. `--write FILE` replaces the `bench_failover` section.

mod report;
mod rounds;

use anyhow::{bail, Result};
use chaos::bench::{self, MachineFacts};
use chaos::sandbox::{Cluster, ClusterSpec, NodeSpec};
use clap::Parser;
use rounds::Fault;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
pub const COORDINATORS: [&str; 2] = ["c1", "c2"];
const PORTS_PER_NODE: u16 = 200;

#[derive(Parser, Debug)]
#[command(
    name = "bench_failover",
    about = "Node death detection, kill → media back and drain media gap per participant"
)]
pub struct Args {
    #[command(flatten)]
    bins: bench::Binaries,
    /// Kill rounds (0 skips the part).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Rooms of three publishing participants per kill round.
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// Drain rounds (0 skips the part).
    #[arg(long, default_value_t = 3)]
    drains: usize,
    /// Rooms of three publishing participants per drain round.
    #[arg(long, default_value_t = 4)]
    drain_rooms: usize,
    /// Video packets/s of each participant (1200-byte payloads).
    #[arg(long, default_value_t = 50)]
    video_pps: u32,
    /// Audio packets/s of each participant (160-byte payloads).
    #[arg(long, default_value_t = 50)]
    audio_pps: u32,
    /// Bound on a participant getting media from every other one back after a fault.
    #[arg(long, default_value_t = 20)]
    recovery_secs: u64,
    /// ICE check interval of the participants, ms (browsers: about 50); 0 keeps 200.
    #[arg(long, default_value_t = 50)]
    client_ice_ms: u64,
    /// First UDP port of n1's media range (200 ports per node); n2 and n3 follow. Below
    /// the ephemeral range (Linux: 32768-60999), where the clients' own sockets would collide.
    #[arg(long, default_value_t = 20000)]
    udp_base: u16,
    /// Directory for the processes' logs [default: a fresh directory under the temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Replace the bench_failover section of this markdown file (created if missing).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Markdown file whose text is added to the section's interpretation.
    #[arg(long)]
    note: Option<PathBuf>,
}

impl Args {
    pub fn recovery(&self) -> Duration {
        Duration::from_secs(self.recovery_secs)
    }

    pub fn client_ice(&self) -> Option<Duration> {
        (self.client_ice_ms > 0).then(|| Duration::from_millis(self.client_ice_ms))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    bench::init_logs();
    validate(&args)?;
    let note = bench::read_note(args.note.as_deref())?;
    let note = note.as_deref();
    let facts = MachineFacts::collect();
    let report = bench::run_until_ctrl_c(run(&args))?;
    let (tables, verdict) = (report::tables(&args, &report), report::verdict(&report));
    bench::print_and_write(
        "bench_failover",
        args.write.as_deref(),
        &tables,
        &verdict,
        |begin, end| {
            report::section(
                &args,
                &facts,
                &report,
                [begin, &tables, &verdict, end],
                note,
            )
        },
    )?;
    let failed: Vec<String> = [("kill", &report.kill), ("drain", &report.drain)]
        .into_iter()
        .filter_map(|(name, p)| Some(format!("{name}: {}", p.as_ref()?.error.as_ref()?)))
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if args.kills + args.drains == 0 || args.kills > 500 || args.drains > 100 {
        bail!("--kills must be at most 500, --drains at most 100, not both 0");
    }
    if !(1..=10).contains(&args.rooms) || !(1..=10).contains(&args.drain_rooms) {
        bail!("--rooms and --drain-rooms must be 1 to 10");
    }
    if !(1..=500).contains(&args.video_pps) || !(1..=500).contains(&args.audio_pps) {
        bail!("--video-pps and --audio-pps must be 1 to 500");
    }
    if !(1..=300).contains(&args.recovery_secs) {
        bail!("--recovery-secs must be 1 to 300");
    }
    if args.udp_base < 1024 || u32::from(args.udp_base) + 3 * u32::from(PORTS_PER_NODE) > 65535 {
        bail!("--udp-base must be 1024 to {}", 65535 - 3 * PORTS_PER_NODE);
    }
    cluster_spec(args, Path::new("."), Fault::Kill).validate()
}

/// Everything measured; a part not asked for is `None`.
pub struct Report {
    dir: PathBuf,
    busy_before: f64,
    /// Share of all cores busy during each part (this program and its cluster included).
    busy_during: Vec<(&'static str, f64)>,
    kill: Option<rounds::Part>,
    drain: Option<rounds::Part>,
    /// Children that exited on their own, and warnings/errors in the logs, per cluster.
    health: Vec<String>,
}

async fn run(args: &Args) -> Result<Report> {
    let dir = bench::run_dir("bench_failover", args.dir.as_deref())?;
    let busy_before = bench::wait_quiet(Duration::from_secs(60), 25.0).await?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut report = Report {
        dir: dir.clone(),
        busy_before,
        busy_during: Vec::new(),
        kill: None,
        drain: None,
        health: Vec::new(),
    };
    for (fault, rounds) in [(Fault::Kill, args.kills), (Fault::Drain, args.drains)] {
        if rounds == 0 {
            continue;
        }
        let name = fault.name();
        let mut cluster = Cluster::start(cluster_spec(args, &dir.join(name), fault)).await?;
        eprintln!("== {name} part: cluster is up");
        let ticks = bench::machine_ticks()?;
        let part = rounds::run(args, &mut cluster, &run_id, fault).await;
        let (busy, total) = bench::machine_ticks()?;
        let busy = 100.0 * (busy - ticks.0) as f64 / (total - ticks.1).max(1) as f64;
        report.busy_during.push((name, busy));
        match fault {
            Fault::Kill => report.kill = Some(part),
            Fault::Drain => report.drain = Some(part),
        }
        cluster.stop();
        let health = cluster.health().into_iter().map(|h| format!("{name} {h}"));
        report.health.extend(health);
    }
    Ok(report)
}

/// Two coordinators and three nodes: all in `eu` to kill any, n1 alone in `eu` to drain it.
fn cluster_spec(args: &Args, dir: &Path, fault: Fault) -> ClusterSpec {
    let mut spec = args.bins.apply(ClusterSpec::new(dir));
    spec.child_log = "info,webrtc=warn,rtc=error,rtc_ice=warn,rtc_dtls=error,rtc_srtp=error".into();
    for c in COORDINATORS {
        spec = spec.coordinator(c);
    }
    for (i, id) in NODES.iter().enumerate() {
        let region = if i == 0 || fault == Fault::Kill {
            "eu"
        } else {
            "us"
        };
        let lo = args.udp_base + i as u16 * PORTS_PER_NODE;
        let node = NodeSpec::new(id, region, (lo, lo + PORTS_PER_NODE - 1));
        spec = spec.node(node.flag("--room-empty-grace-secs=1"));
    }
    spec
}
