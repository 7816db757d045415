//! Parts 1–3: what one relay hop adds in latency and CPU, and what a relay link carries
//! against the subscribers behind it.

use crate::{leave, leave_all, wait_packets, Args, Site, Window, PUBLISHER_NODE, REMOTE_NODE};
use anyhow::{bail, Context, Result};
use chaos::stats::LatencyHistogram;
use chaos::{Client, PublishOpts};
use futures::StreamExt;
use std::time::Duration;

pub const RELAY_PACKETS: &str = "sfu_relay_packets_sent_total";
pub const RELAY_BYTES: &str = "sfu_relay_bytes_sent_total";
pub const PUBLISHED_BYTES: &str = "sfu_published_bytes_received_total";
pub const PACKETS_IN: &str = "sfu_packets_received_total";
pub const FORWARDED: &str = "sfu_packets_forwarded_total";
const ALL: [&str; 5] = [
    RELAY_PACKETS,
    RELAY_BYTES,
    PUBLISHED_BYTES,
    PACKETS_IN,
    FORWARDED,
];

/// Bound on a subscriber's first packets arriving.
const MEDIA_WAIT: Duration = Duration::from_secs(20);

/// Bound on the nodes closing the rooms of an earlier measurement.
const IDLE_WAIT: Duration = Duration::from_secs(30);

/// Video only, 1200-byte payloads: what TOOLS.md says per-packet CPU is measured with.
fn video(pps: u32) -> PublishOpts {
    PublishOpts {
        audio: false,
        video: true,
        video_pps: pps,
        video_payload: 1200,
        ..PublishOpts::default()
    }
}

/// A publisher on eu-1, publishing `opts`; returns it with its participant id.
async fn publisher(site: &Site<'_>, room: &str, opts: PublishOpts) -> Result<(Client, String)> {
    let (c, joined) = site.join(PUBLISHER_NODE, room, "pub").await?;
    if let Err(e) = c.publish(opts).await {
        leave(&c).await;
        return Err(e).context("publish");
    }
    Ok((c, joined.participant.id.to_string()))
}

/// A copy of everything `c` received from `publisher`, all tracks pooled.
fn histogram(c: &Client, publisher: &str) -> LatencyHistogram {
    let mut h = LatencyHistogram::default();
    for (p, _, t) in c.latency_histograms() {
        if p == publisher {
            h.merge(&t);
        }
    }
    h
}

// ---------------------------------------------------------------------------------------
// Part 1: latency.

pub struct LatencyResult {
    /// Over the window: the subscriber on the publisher's node, and the one behind a link.
    pub direct: LatencyHistogram,
    pub relayed: LatencyHistogram,
    pub window: Window,
}

pub async fn latency(args: &Args, site: &Site<'_>, run_id: &str) -> Result<LatencyResult> {
    site.wait_idle(IDLE_WAIT).await?;
    let room = format!("cl-{run_id}");
    let (p, pid) = publisher(site, &room, video(PublishOpts::default().video_pps)).await?;
    let mut clients = vec![p];
    let r = async {
        let (direct, _) = site.join(PUBLISHER_NODE, &room, "direct").await?;
        clients.push(direct);
        let (relayed, _) = site.join(REMOTE_NODE, &room, "relayed").await?;
        clients.push(relayed);
        for c in &clients[1..] {
            wait_packets(c, &pid, 50, MEDIA_WAIT).await?;
        }
        tokio::time::sleep(args.settle()).await;
        let (d0, r0) = (histogram(&clients[1], &pid), histogram(&clients[2], &pid));
        let window = site
            .window(&[PUBLISHER_NODE, REMOTE_NODE], &ALL, args.window())
            .await?;
        let direct = histogram(&clients[1], &pid).since(&d0);
        let relayed = histogram(&clients[2], &pid).since(&r0);
        if direct.count() == 0 || relayed.count() == 0 {
            bail!(
                "no packets in the window (direct {}, relayed {})",
                direct.count(),
                relayed.count()
            );
        }
        eprintln!(
            "   direct p50 {:.2} ms p99 {:.2} ms; relayed p50 {:.2} ms p99 {:.2} ms",
            direct.percentile(50.0) as f64 / 1e3,
            direct.percentile(99.0) as f64 / 1e3,
            relayed.percentile(50.0) as f64 / 1e3,
            relayed.percentile(99.0) as f64 / 1e3,
        );
        Ok(LatencyResult {
            direct,
            relayed,
            window,
        })
    }
    .await;
    leave_all(clients).await;
    r
}

// ---------------------------------------------------------------------------------------
// Part 2: CPU.

pub struct CpuResult {
    pub rooms: usize,
    pub pps: u32,
    /// No rooms at all: the nodes' timers and background work.
    pub idle: Window,
    /// Subscribers on us-1: every packet crosses the link.
    pub relayed: Window,
    /// Subscribers on eu-1: no hop.
    pub direct: Window,
}

pub async fn cpu(args: &Args, site: &Site<'_>, run_id: &str) -> Result<CpuResult> {
    site.wait_idle(IDLE_WAIT).await?;
    let idle = site
        .window(&[PUBLISHER_NODE, REMOTE_NODE], &ALL, args.window())
        .await?;
    eprintln!(
        "   idle: eu-1 {:.1} %, us-1 {:.1} %",
        idle.cpu.of(PUBLISHER_NODE),
        idle.cpu.of(REMOTE_NODE)
    );
    let relayed = cpu_run(args, site, &format!("cr-{run_id}"), REMOTE_NODE).await?;
    let direct = cpu_run(args, site, &format!("cd-{run_id}"), PUBLISHER_NODE).await?;
    Ok(CpuResult {
        rooms: args.cpu_rooms,
        pps: args.cpu_video_pps,
        idle,
        relayed,
        direct,
    })
}

/// `--cpu-rooms` rooms, each a video publisher on eu-1 and one subscriber on `sub_node`.
async fn cpu_run(
    args: &Args,
    site: &Site<'_>,
    prefix: &str,
    sub_node: &'static str,
) -> Result<Window> {
    site.wait_idle(IDLE_WAIT).await?;
    let mut clients = Vec::new();
    let r = async {
        let mut pairs = Vec::new();
        for i in 0..args.cpu_rooms {
            let room = format!("{prefix}-{i:02}");
            let (p, pid) = publisher(site, &room, video(args.cpu_video_pps)).await?;
            clients.push(p);
            let (s, _) = site.join(sub_node, &room, "sub").await?;
            clients.push(s);
            pairs.push((clients.len() - 1, pid));
        }
        for (i, pid) in &pairs {
            wait_packets(&clients[*i], pid, 50, MEDIA_WAIT).await?;
        }
        tokio::time::sleep(args.settle()).await;
        let window = site
            .window(&[PUBLISHER_NODE, REMOTE_NODE], &ALL, args.window())
            .await?;
        eprintln!(
            "   subscribers on {sub_node}: eu-1 {:.1} % relaying {:.0} pkt/s, forwarding {:.0} pkt/s; us-1 {:.1} % forwarding {:.0} pkt/s",
            window.cpu.of(PUBLISHER_NODE),
            window.rate(PUBLISHER_NODE, RELAY_PACKETS),
            window.rate(PUBLISHER_NODE, FORWARDED),
            window.cpu.of(REMOTE_NODE),
            window.rate(REMOTE_NODE, FORWARDED),
        );
        Ok(window)
    }
    .await;
    leave_all(clients).await;
    r
}

// ---------------------------------------------------------------------------------------
// Part 3: relay bytes against subscribers.

pub struct BytesStep {
    pub subscribers: usize,
    pub window: Window,
}

pub struct BytesResult {
    pub steps: Vec<BytesStep>,
}

pub async fn bytes(args: &Args, site: &Site<'_>, run_id: &str) -> Result<BytesResult> {
    site.wait_idle(IDLE_WAIT).await?;
    let room = format!("cb-{run_id}");
    let (p, pid) = publisher(site, &room, PublishOpts::default()).await?;
    let mut subs: Vec<Client> = Vec::new();
    let r = async {
        let mut steps = Vec::new();
        for &n in &args.subscribers {
            // Up to n subscribers on us-1, 8 joining at once, all bounded.
            let have = subs.len();
            let joining = futures::stream::iter(have..n)
                .map(|i| {
                    let room = room.clone();
                    async move { site.join(REMOTE_NODE, &room, &format!("s{i:03}")).await }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>();
            let joined = tokio::time::timeout(Duration::from_secs(120), joining)
                .await
                .map_err(|_| anyhow::anyhow!("{n} subscribers took more than 120 s to join"))?;
            // Keep every client that joined (they leave at the end), then fail.
            let mut first_error = None;
            for j in joined {
                match j {
                    Ok((c, _)) => subs.push(c),
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            for s in &subs {
                wait_packets(s, &pid, 20, MEDIA_WAIT).await?;
            }
            tokio::time::sleep(args.settle()).await;
            let window = site
                .window(&[PUBLISHER_NODE, REMOTE_NODE], &ALL, args.window())
                .await?;
            eprintln!(
                "   {n} subscribers on us-1: relay {:.0} B/s, published {:.0} B/s (ratio {:.3})",
                window.rate(PUBLISHER_NODE, RELAY_BYTES),
                window.rate(PUBLISHER_NODE, PUBLISHED_BYTES),
                window.rate(PUBLISHER_NODE, RELAY_BYTES)
                    / window.rate(PUBLISHER_NODE, PUBLISHED_BYTES),
            );
            steps.push(BytesStep {
                subscribers: n,
                window,
            });
        }
        Ok(BytesResult { steps })
    }
    .await;
    subs.push(p);
    leave_all(subs).await;
    r
}
