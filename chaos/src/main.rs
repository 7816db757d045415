//! `chaos`: synthetic clients against a media node.
//!
//! Subcommands: `client` (one participant that joins, optionally publishes, and prints what it
//! received), `token` (mints a join token), `proxy` (an impaired loopback relay that puts
//! delay, jitter, loss and a rate cap between two ports), `geo` (regions on loopback with
//! delayed links between them, see [`chaos::geo`]), `run` (fault scenarios) and `load`
//! (rooms of publishers and subscribers with a progress line and a summary, see
//! [`chaos::load`]).

use anyhow::{bail, Context};
use chaos::geo::GeoNet;
use chaos::impair::{Impairment, Link, TcpProxy, UdpProxy};
use chaos::{
    mint_tokens, ClientConfig, EndReason, Participant, ParticipantConfig, PublishOpts, Recovery,
    RecoveryPolicy, TrackStats,
};
use clap::{Args, Parser, Subcommand};
use protocol::token::{mint, Claims};
use protocol::{RoomId, UserId};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Synthetic WebRTC clients for the media cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join a room as one synthetic participant and report per-track statistics.
    Client(ClientArgs),
    /// Print a join token.
    Token(TokenArgs),
    /// Relay a loopback address to another through an impaired link until Ctrl-C, then print
    /// the link's counters as JSON.
    Proxy(ProxyArgs),
    /// Put regions on loopback with delayed links between them until Ctrl-C: print the
    /// flags each region's nodes need, then, at the end, every pair's counters as JSON.
    Geo(GeoArgs),
    /// Start a local cluster, inject a scenario's faults on a schedule drawn from the seed,
    /// check the invariants and exit non-zero on any violation.
    Run(RunArgs),
    /// Put rooms of publishers and subscribers on a cluster for a while, with a progress
    /// line each second and a summary at the end (joins, join time, bitrate, loss, latency).
    Load(chaos::load::LoadArgs),
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    room: String,
    #[arg(long)]
    user: String,
    /// The cluster's API secret.
    #[arg(long, env = "CHAOS_API_SECRET")]
    secret: String,
    /// Display name carried in the token.
    #[arg(long)]
    name: Option<String>,
    /// Validity in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[derive(Args)]
struct ClientArgs {
    #[arg(long, default_value = "ws://127.0.0.1:7880/ws")]
    url: String,
    #[command(flatten)]
    token: TokenArgs,
    /// Publish synthetic audio and video.
    #[arg(long)]
    publish: bool,
    /// Publish audio only (with --publish).
    #[arg(long, conflicts_with = "video_only")]
    audio_only: bool,
    /// Publish video only (with --publish).
    #[arg(long)]
    video_only: bool,
    #[arg(long, default_value_t = 100)]
    video_pps: u32,
    #[arg(long, default_value_t = 50)]
    audio_pps: u32,
    /// How long to stay in the room: `10s`, `500ms`, `2m` or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Local IP for the peer connections' UDP sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: IpAddr,
    /// Print the statistics as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Stop at the first fault instead of recovering (reconnect, `resume`, publish again).
    #[arg(long)]
    no_recover: bool,
    /// Bound on one recovery, from the fault to `joined` and the republish.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    recovery_deadline: Duration,
}

#[derive(Args)]
struct RunArgs {
    /// The scenario: smoke, soak, kill, stop, nats, hostile, coordinator, cut, starve,
    /// churn; or `all`: every one but soak and smoke, one after the other.
    scenario: String,
    /// Seed of the fault schedule; random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Length of the fault phase: `90s`, `10m`; the scenario's default when absent.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    bins: chaos::bench::Binaries,
    /// Write `report.json` and `report.md` here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Directory for the processes' logs [default: a fresh directory under the temp dir].
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// First UDP port of n1's media range (200 ports per node, the next nodes follow).
    #[arg(long, default_value_t = 23000)]
    udp_base: u16,
    /// Print the schedule and exit, starting nothing.
    #[arg(long)]
    dry_run: bool,
    /// The cluster to start and its load, from a TOML file (coordinators, nats_servers,
    /// nodes or regions, rooms, per_room, video_pps, recovery_bound_secs); what it leaves
    /// out keeps the scenario's value.
    #[arg(long)]
    cluster: Option<std::path::PathBuf>,
    /// With `all`: write the suite's summary to this file (the repository keeps it as
    /// CHAOS.md) and the timeline pictures to `docs/chaos/` beside it.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ProxyArgs {
    /// Loopback address to listen on, e.g. `127.0.0.1:17882`.
    #[arg(long)]
    listen: SocketAddr,
    /// Loopback address to relay to.
    #[arg(long)]
    to: SocketAddr,
    /// Relay UDP (the default when neither --udp nor --tcp is given).
    #[arg(long)]
    udp: bool,
    /// Relay TCP. With --udp as well, both listen on the same port number and share one link.
    #[arg(long)]
    tcp: bool,
    /// One-way delay added each way: `40ms`, `1s`.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    delay: Duration,
    /// Uniform variation of the delay, plus or minus.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    jitter: Duration,
    /// Probability in [0, 1] that a UDP datagram is lost (TCP is never dropped, only delayed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    loss: f64,
    /// Rate cap each way, in kbit/s.
    #[arg(long)]
    rate_kbps: Option<u64>,
    /// Seed of the loss and jitter draws, to repeat a run; random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct GeoArgs {
    /// Region names, comma separated; the first is NATS's home (coordinators run there).
    #[arg(long, value_delimiter = ',', required = true)]
    regions: Vec<String>,
    /// One-way delay between any two regions: a round trip pays it twice.
    #[arg(long, default_value = "40ms", value_parser = parse_duration)]
    delay: Duration,
    /// Uniform variation of the delay, plus or minus.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    jitter: Duration,
    /// The NATS server; regions other than the home region reach it through their link.
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats: SocketAddr,
    /// A node's media gateway, `region:k:first-last` (node k of the region, its inclusive
    /// UDP port range); repeat for each node.
    #[arg(long = "node", value_parser = parse_node)]
    nodes: Vec<NodeSpec>,
    /// Seed of the jitter draws, to repeat a run; random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
}

/// `--node region:k:first-last`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeSpec {
    region: String,
    k: u8,
    ports: (u16, u16),
}

fn parse_node(s: &str) -> Result<NodeSpec, String> {
    let bad = || format!("invalid node `{s}` (want region:k:first-last, e.g. eu:0:50000-50299)");
    let mut parts = s.trim().rsplitn(3, ':');
    let (ports, k, region) = match (parts.next(), parts.next(), parts.next()) {
        (Some(ports), Some(k), Some(region)) if !region.is_empty() => (ports, k, region),
        _ => return Err(bad()),
    };
    let (first, last) = ports.split_once('-').ok_or_else(bad)?;
    Ok(NodeSpec {
        region: region.to_string(),
        k: k.parse().map_err(|_| bad())?,
        ports: (
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        ),
    })
}

fn parse_loss(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("invalid loss `{s}` (a probability from 0 to 1)")),
    }
}

/// A duration such as `250ms`, `10s`, `2m` or `1h 30m` (humantime); a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

fn claims(args: &TokenArgs) -> anyhow::Result<Claims> {
    let room = RoomId::new(args.room.as_str()).context("room")?;
    let user = UserId::new(args.user.as_str()).context("user")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = Claims::new(room, user, now, args.ttl);
    claims.name = args.name.clone();
    Ok(claims)
}

fn token(args: &TokenArgs) -> anyhow::Result<String> {
    Ok(mint(args.secret.as_bytes(), &claims(args)?))
}

async fn run_client(args: ClientArgs) -> anyhow::Result<()> {
    let tokens = mint_tokens(
        &args.token.secret,
        claims(&args.token)?,
        Duration::from_secs(args.token.ttl),
    );
    let config = ParticipantConfig {
        client: ClientConfig {
            bind_ip: args.bind_ip,
            ..ClientConfig::default()
        },
        recovery: RecoveryPolicy {
            enabled: !args.no_recover,
            deadline: args.recovery_deadline,
            ..RecoveryPolicy::default()
        },
        region: None,
    };
    let participant = Participant::join(&args.url, &args.token.room, tokens, config).await?;
    let joined = participant.joined();
    eprintln!(
        "joined room {} as {} on node {} ({} others)",
        joined.room,
        joined.participant.id,
        joined.node,
        joined.participants.len()
    );
    if args.publish {
        let opts = PublishOpts {
            audio: !args.video_only,
            video: !args.audio_only,
            video_pps: args.video_pps,
            audio_pps: args.audio_pps,
            ..PublishOpts::default()
        };
        participant.publish(opts).await?;
        eprintln!("publishing");
    }
    let ended = stay(&participant, args.duration).await;
    let stats = participant.track_stats();
    let sent = participant.sent_stats().await;
    let errors = participant.local_errors();
    let recoveries = participant.recoveries();
    if ended.is_none() {
        participant.leave().await.ok();
    }
    if args.json {
        let recoveries: Vec<_> = recoveries.iter().map(recovery_json).collect();
        let out = serde_json::json!({
            "received": stats, "sent": sent, "errors": errors, "recoveries": recoveries,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for s in &sent {
            println!(
                "sent {:<5} {:<16} ssrc {:>10} pt {:>3} packets {}",
                format!("{:?}", s.kind).to_lowercase(),
                s.local_track_id,
                s.ssrc,
                s.payload_type,
                s.sent
            );
        }
        print_table(&stats);
        for (i, r) in recoveries.iter().enumerate() {
            println!("recovery {}: {}", i + 1, describe(r));
            for p in r.media_at.keys() {
                if let Some(after) = r.time_to_media(p) {
                    println!("recovery {}: media from {p} after {after:?}", i + 1);
                }
            }
        }
        for e in &errors {
            eprintln!("background error: {e}");
        }
    }
    if let Some(reason) = ended {
        bail!("the participant stopped: {reason:?}");
    }
    Ok(())
}

/// Stays in the room for `duration` (or until Ctrl-C), printing a line per recovery;
/// returns why the participant stopped early, if it did.
async fn stay(participant: &Participant, duration: Duration) -> Option<EndReason> {
    let end = tokio::time::Instant::now() + duration;
    let mut printed = 0;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return None,
            _ = tokio::signal::ctrl_c() => return None,
            r = participant.wait_ended(left) => return r.ok(),
            r = participant.wait_recoveries(printed + 1, left) => {
                let Ok(recoveries) = r else { return None };
                for r in recoveries.iter().skip(printed).take_while(|r| r.is_over()) {
                    eprintln!("{}", describe(r));
                    printed += 1;
                }
            }
        }
    }
}

/// One line per recovery: the cause, how and how fast `joined` came back.
fn describe(r: &Recovery) -> String {
    match (&r.rejoined, &r.gave_up) {
        (Some(j), _) => format!(
            "recovered from {} by {:?} via {} (node {}) in {:?}, {} attempt(s)",
            r.cause,
            j.by,
            j.url,
            j.node,
            j.at - r.noticed_at,
            r.attempts
        ),
        (None, Some(e)) => format!(
            "gave up recovering from {} after {} attempt(s): {e}",
            r.cause, r.attempts
        ),
        (None, None) => format!("recovering from {}", r.cause),
    }
}

fn recovery_json(r: &Recovery) -> serde_json::Value {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let media: serde_json::Map<String, serde_json::Value> = r
        .media_at
        .keys()
        .filter_map(|p| Some((p.clone(), ms(r.time_to_media(p)?).into())))
        .collect();
    serde_json::json!({
        "cause": r.cause.to_string(),
        "attempts": r.attempts,
        "by": r.rejoined.as_ref().map(|j| format!("{:?}", j.by)),
        "url": r.rejoined.as_ref().map(|j| j.url.clone()),
        "node": r.rejoined.as_ref().map(|j| j.node.to_string()),
        "joined_ms": r.time_to_joined().map(ms),
        "media_ms": media,
        "gave_up": r.gave_up,
    })
}

async fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let impairment = Impairment {
        delay: args.delay,
        jitter: args.jitter,
        loss: args.loss,
        rate_bps: args.rate_kbps.map(|k| k.saturating_mul(1000)),
        partitioned: false,
    };
    let link = match args.seed {
        Some(seed) => Link::with_seed(impairment, seed),
        None => Link::new(impairment),
    };
    let mut listen = args.listen;
    let tcp = if args.tcp {
        let proxy = TcpProxy::start(listen, args.to, link.clone())
            .await
            .context("tcp proxy")?;
        // With --udp too, UDP takes the port TCP got (they are separate port spaces).
        listen = proxy.local_addr();
        eprintln!("tcp {} -> {}", proxy.local_addr(), args.to);
        Some(proxy)
    } else {
        None
    };
    let udp = if args.udp || !args.tcp {
        let proxy = UdpProxy::start(listen, args.to, link.clone())
            .await
            .context("udp proxy")?;
        eprintln!("udp {} -> {}", proxy.local_addr(), args.to);
        Some(proxy)
    } else {
        None
    };
    eprintln!("{impairment:?} seed {}; ctrl-c stops", link.seed());
    tokio::signal::ctrl_c().await?;
    drop((tcp, udp));
    println!("{}", serde_json::to_string_pretty(&link.stats())?);
    Ok(())
}

/// Prints, on stdout, lines whose words after the name are flags, so a script can read them
/// with `read kind name flags`: per region the NATS URL of its processes and the first
/// client address (`chaos client --bind-ip`), per node what `node run` needs:
///
/// ```text
/// region us --nats-url nats://127.0.0.1:40123
/// client us --bind-ip 127.0.11.100
/// node us:0 --region us --udp-ip 127.0.11.1 --public-ip 127.0.11.2 --udp-ports 50300-50599 --nats-url nats://127.0.0.1:40123
/// ```
///
/// then a line `ready`, and waits for Ctrl-C.
async fn run_geo(args: GeoArgs) -> anyhow::Result<()> {
    let names: Vec<&str> = args.regions.iter().map(|r| r.trim()).collect();
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut geo = GeoNet::new(&names, args.delay, args.jitter, seed).context("regions")?;
    let mut urls = Vec::with_capacity(names.len());
    for region in &names {
        let url = geo
            .nats_url(region, args.nats)
            .await
            .with_context(|| format!("nats proxy of {region}"))?;
        let client = geo.client_ip(region, 0).context("no client address")?;
        println!("region {region} --nats-url {url}");
        println!("client {region} --bind-ip {client}");
        urls.push(url);
    }
    for node in &args.nodes {
        let NodeSpec { region, k, ports } = node;
        let i = geo
            .region_index(region)
            .with_context(|| format!("--node {region}:{k}: unknown region"))?;
        let (bind, announce) = geo
            .node_ips(region, *k)
            .with_context(|| format!("--node {region}:{k}: no such node"))?;
        geo.add_node(region, *k, *ports)
            .await
            .with_context(|| format!("gateway of {region}:{k}"))?;
        println!(
            "node {region}:{k} --region {region} --udp-ip {bind} --public-ip {announce} \
             --udp-ports {}-{} --nats-url {}",
            ports.0, ports.1, urls[i]
        );
    }
    println!("ready");
    eprintln!(
        "geo: {} regions, one-way delay {:?} jitter {:?}, seed {seed}; ctrl-c stops",
        names.len(),
        args.delay,
        args.jitter
    );
    tokio::signal::ctrl_c().await?;
    println!("{}", serde_json::to_string_pretty(&geo.stats())?);
    Ok(())
}

fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    use chaos::runner::{self, report::schedule_table, scenario::Scenario};
    if args.scenario == "all" {
        return run_suite(args);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = runner::RunConfig {
        scenario: with_cluster_file(Scenario::named(&args.scenario)?, args.cluster.as_deref())?,
        seed,
        duration: args.duration,
        bins: args.bins,
        dir: args.dir,
        udp_base: args.udp_base,
        cluster_file: args.cluster.clone(),
    };
    let steps = runner::plan(&config)?;
    eprintln!("== {}", config.replay());
    if args.dry_run {
        println!("{}", schedule_table(&steps));
        return Ok(());
    }
    let report = chaos::bench::run_until_ctrl_c(runner::run(&config))?;
    if let Some(out) = &args.out {
        report.write(out)?;
        eprintln!("== report written to {}", out.display());
    }
    println!("{}", report.markdown());
    if !report.passed {
        bail!("scenario {} failed (seed {seed})", config.scenario.name);
    }
    Ok(())
}

/// `scenario` shaped by the `--cluster` file, when one is given.
fn with_cluster_file(
    scenario: chaos::runner::scenario::Scenario,
    file: Option<&std::path::Path>,
) -> anyhow::Result<chaos::runner::scenario::Scenario> {
    let Some(file) = file else {
        return Ok(scenario);
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = chaos::runner::scenario::ClusterFile::parse(&text)
        .with_context(|| format!("cluster file {}", file.display()))?;
    Ok(parsed.apply(scenario))
}

/// `chaos run all`: the suite's scenarios one after the other; fails when one does.
fn run_suite(args: RunArgs) -> anyhow::Result<()> {
    use chaos::runner::{self, scenario::Scenario, suite};
    let seed = args.seed.unwrap_or_else(rand::random);
    let svg_dir = args.write.as_ref().map(|w| {
        w.parent()
            .unwrap_or(std::path::Path::new("."))
            .join("docs/chaos")
    });
    let mut entries = Vec::new();
    for name in suite::SUITE {
        let config = runner::RunConfig {
            scenario: with_cluster_file(Scenario::named(name)?, args.cluster.as_deref())?,
            seed,
            duration: args.duration,
            bins: args.bins.clone(),
            dir: args.dir.as_ref().map(|d| d.join(name)),
            udp_base: args.udp_base,
            cluster_file: args.cluster.clone(),
        };
        eprintln!("\n== suite: {}", config.replay());
        let started = std::time::Instant::now();
        let outcome = chaos::bench::run_until_ctrl_c(runner::run(&config));
        let took = started.elapsed();
        let mut timeline = None;
        if let Ok(report) = &outcome {
            if let Some(out) = &args.out {
                report.write(&out.join(name))?;
            }
            if let (Some(dir), Some(svg)) = (&svg_dir, &report.timeline_svg) {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(format!("{name}.svg")), svg)?;
                timeline = Some(format!("docs/chaos/{name}.svg"));
            }
            eprintln!("== {name}: {}", if report.passed { "pass" } else { "FAIL" });
        }
        entries.push(suite::Entry {
            scenario: name.to_owned(),
            outcome: outcome.map_err(|e| format!("{e:#}")),
            timeline,
            took,
        });
    }
    let command = format!(
        "cargo build --release -p node -p coordinator -p chaos && ./target/release/chaos run all --seed {seed} --write CHAOS.md"
    );
    let machine = chaos::bench::MachineFacts::collect().describe();
    let summary = suite::markdown(&entries, &command, &machine);
    println!("{summary}");
    if let Some(w) = &args.write {
        let text = format!(
            "# Chaos suite\n\nThe last full run of every chaos scenario but the soak \
             (README, \"Chaos runs\"). Regenerate it with the command below; each scenario's \
             own report (JSON, Markdown) goes to `--out DIR`.\n\n{summary}"
        );
        std::fs::write(w, text)?;
        eprintln!("== summary written to {}", w.display());
    }
    let failed: Vec<&str> = entries
        .iter()
        .filter(|e| !e.outcome.as_ref().is_ok_and(|r| r.passed))
        .map(|e| e.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("failed: {} (seed {seed})", failed.join(", "));
    }
    Ok(())
}

fn print_table(stats: &[TrackStats]) {
    println!(
        "{:<20} {:<24} {:<5} {:>9} {:>7} {:>5} {:>9} {:>9} {:>9}",
        "publisher", "track", "kind", "received", "lost", "dups", "p50_us", "p99_us", "max_us"
    );
    for t in stats {
        println!(
            "{:<20} {:<24} {:<5} {:>9} {:>7} {:>5} {:>9} {:>9} {:>9}",
            t.publisher,
            t.track_id,
            format!("{:?}", t.kind).to_lowercase(),
            t.received,
            t.lost,
            t.duplicates,
            t.latency_p50_us,
            t.latency_p99_us,
            t.latency_max_us
        );
    }
    if stats.is_empty() {
        println!("(no tracks received)");
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    chaos::init_logs();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Token(args) => {
            println!("{}", token(&args)?);
            Ok(())
        }
        Command::Client(args) => {
            // webrtc's tokio runtime spawns its drivers with `tokio::spawn`: multi-thread.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_client(args))
        }
        Command::Proxy(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_proxy(args))
        }
        Command::Geo(args) => {
            // Hundreds of gateways relay media at once: use every core.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_geo(args))
        }
        Command::Run(args) => run_scenario(args),
        Command::Load(args) => chaos::load::run_command(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn nodes_parse_as_region_index_and_port_range() {
        assert_eq!(
            parse_node("eu:0:50000-50299"),
            Ok(NodeSpec {
                region: "eu".into(),
                k: 0,
                ports: (50_000, 50_299)
            })
        );
        assert_eq!(
            parse_node("us-east:2:1-1").map(|n| n.region),
            Ok("us-east".into())
        );
        for bad in [
            "",
            "eu",
            "eu:0",
            ":0:1-2",
            "eu:x:1-2",
            "eu:256:1-2",
            "eu:0:1",
            "eu:0:1-70000",
            "eu:0:-",
        ] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loss_is_a_probability() {
        assert_eq!(parse_loss("0.01"), Ok(0.01));
        assert_eq!(parse_loss("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "NaN", "inf", "lots"] {
            assert!(parse_loss(bad).is_err(), "{bad}");
        }
    }
}
