//! `chaos`: synthetic clients against a media node.
//!
//! Subcommands: `client` (one participant that joins, optionally publishes, and prints what it
//! received) and `token` (mints a join token). Load generation and fault scenarios will be
//! further subcommands of [`Command`].

use anyhow::{bail, Context};
use chaos::{Client, ClientConfig, PublishOpts, TrackStats};
use clap::{Args, Parser, Subcommand};
use protocol::token::{mint, Claims};
use protocol::{RoomId, UserId};
use std::net::IpAddr;
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
}
