//! `chaos`: synthetic clients against a media node.
//!
//! Subcommands: `client` (one participant that joins, optionally publishes, and prints what it
//! received), `token` (mints a join token) and `proxy` (an impaired loopback relay that puts
//! delay, jitter, loss and a rate cap between two ports). Load generation and fault scenarios
//! will be further subcommands of [`Command`].

use anyhow::{bail, Context};
use chaos::impair::{Impairment, Link, TcpProxy, UdpProxy};
use chaos::{Client, ClientConfig, PublishOpts, TrackStats};
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
    // Later: `Load` (many clients, ramp, report) and `Scenario` (scripted faults).
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

fn parse_loss(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("invalid loss `{s}` (a probability from 0 to 1)")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unknown unit `{unit}` in `{s}` (use ms, s, m, h)")),
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let room = RoomId::new(args.room.as_str()).context("room")?;
    let user = UserId::new(args.user.as_str()).context("user")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = Claims::new(room, user, now, args.ttl);
    claims.name = args.name.clone();
    Ok(mint(args.secret.as_bytes(), &claims))
}

async fn run_client(args: ClientArgs) -> anyhow::Result<()> {
    let jwt = token(&args.token)?;
    let config = ClientConfig {
        bind_ip: args.bind_ip,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&args.url, config).await?;
    let joined = client.join(&args.token.room, &jwt).await?;
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
        client.publish(opts).await?;
        eprintln!("publishing");
    }
    let closed = tokio::select! {
        _ = tokio::time::sleep(args.duration) => None,
        c = client.wait_closed(args.duration + Duration::from_secs(1)) => c.ok(),
        _ = tokio::signal::ctrl_c() => None,
    };
    let stats = client.track_stats();
    let sent = client.sent_stats().await;
    let errors = client.local_errors();
    if closed.is_none() {
        client.leave().await.ok();
    }
    if args.json {
        let out = serde_json::json!({ "received": stats, "sent": sent, "errors": errors });
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
        for e in &errors {
            eprintln!("background error: {e}");
        }
    }
    if let Some(c) = closed {
        bail!("the node closed the connection: {c:?}");
    }
    Ok(())
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
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
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
