//! `bench_scale`: the control plane with many nodes (issue 13).
//!
//! Starts a nats-server (JetStream, free port) and two real coordinators (`c1`, `c2`) from
//! the release binaries with [`chaos::sandbox`], and no real node. Fake nodes are this
//! program: for each size in `--nodes` (growing, on the same cluster), it publishes every
//! fake node's real `cluster.node.heartbeat` once a second, spread evenly over the second, and
//! waits (bounded) until both coordinators count them all alive. Then:
//!
//! 1. **Heartbeats**: each coordinator's CPU over `--idle-secs` with nothing else to do.
//! 2. **Allocations**: `--allocations` `coord.allocate` requests for fresh rooms (a random
//!    region each) with `--inflight` in flight, standing in for fake node 0: allocations/s,
//!    latency p50/p99, and the coordinators' CPU over the burst less the heartbeats' share,
//!    per allocation (both coordinators together: the deciding one decides and writes KV,
//!    the other forwards half the requests to it).
//!
//! 3. **User routing** ([`users`], measured first, before any fake node): `--users`
//!    `user.<id>` subscriptions over `--user-conns` connections, and cross-node message
//!    deliveries to random users through them.
//!
//! 4. **The directory** ([`rooms`], last, with the largest node count still heartbeating):
//!    `--rooms` entries in the `rooms` bucket; a coordinator's mirror memory, a restarted
//!    coordinator's time to ready and to a complete mirror, and allocations of existing rooms.
//!
//! `--nats-servers 3` runs it all on a three-server JetStream cluster (buckets with three
//! replicas). Every loop is bounded; traffic goes to 127.0.0.1 only. `--write FILE` replaces
//! the `bench_scale` section.

mod rooms;
mod users;

use anyhow::{bail, Context, Result};
use chaos::bench::{self, CpuUse, MachineFacts};
use chaos::sandbox::{Cluster, ClusterSpec};
use clap::Parser;
use futures::StreamExt;
use protocol::cluster::{self as wire, AllocateReply, AllocateRequest, NodeHeartbeat, NodeLoad};
use protocol::{NodeId, RoomId};
use rand::Rng;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const REGIONS: [&str; 4] = ["eu", "us", "ap", "sa"];

#[derive(Parser, Debug)]
#[command(
    name = "bench_scale",
    about = "Coordinator cost of heartbeats and allocations by node count"
)]
struct Args {
    #[command(flatten)]
    bins: bench::Binaries,
    /// Fake node counts, growing.
    #[arg(long, value_delimiter = ',', default_value = "3,1000,5000,10000")]
    nodes: Vec<usize>,
    /// Allocations per burst (fresh rooms per node count; existing rooms in part four).
    #[arg(long, default_value_t = 20_000)]
    allocations: usize,
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Seconds of heartbeats alone, for their CPU.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// Sessions, each with its `user.<id>` subscription (0 skips part three).
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Connections the user subscriptions are spread over (the nodes).
    #[arg(long, default_value_t = 100)]
    user_conns: usize,
    /// Deliveries sent to random users.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    #[arg(long, default_value_t = 16)]
    message_inflight: usize,
    /// Entries written into the `rooms` bucket for part four (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    rooms: usize,
    /// nats-servers: 1, or 3 (a JetStream cluster; the buckets get three replicas).
    #[arg(long, default_value_t = 1)]
    nats_servers: usize,
    /// Replace the `bench_scale` section of this file.
    #[arg(long)]
    write: Option<PathBuf>,
    #[arg(long)]
    note: Option<String>,
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("fake-{i:05}")).expect("node id")
}

fn heartbeat(i: usize, cpu: f64) -> NodeHeartbeat {
    NodeHeartbeat {
        v: wire::VERSION,
        node: node_id(i),
        region: REGIONS[i % REGIONS.len()].into(),
        ws_url: format!("ws://127.0.0.1:1/ws/{i}"),
        draining: false,
        load: NodeLoad {
            cpu,
            rooms: 0,
            peers: 0,
            tracks: 0,
            egress_bps: 0,
            max_rooms: 100_000,
            max_peers: 1_000_000,
            max_egress_bps: 10_000_000_000,
        },
        sent_ms: 0,
    }
}

/// Slices a second of heartbeats is spread over: real nodes beat on their own clocks, so
/// a coordinator meets them evenly, not in bursts.
const HEARTBEAT_SLICES: usize = 100;

/// Publishes the heartbeats of fake nodes `0..count` (read each round) once a second each,
/// spread over the second in [`HEARTBEAT_SLICES`] slices, until `stop`.
async fn heartbeats(
    client: async_nats::Client,
    count: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
) {
    let cpus: Vec<f64> = {
        let mut rng = rand::thread_rng();
        (0..100_000).map(|_| rng.gen_range(0.0..0.6)).collect()
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / HEARTBEAT_SLICES as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut slice = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.notified() => return,
        }
        let n = count.load(std::sync::atomic::Ordering::Relaxed);
        for i in (slice..n).step_by(HEARTBEAT_SLICES) {
            let Ok(body) = serde_json::to_vec(&heartbeat(i, cpus[i % cpus.len()])) else {
                continue;
            };
            let _ = client.publish(wire::NODE_HEARTBEAT, body.into()).await;
        }
        slice = (slice + 1) % HEARTBEAT_SLICES;
    }
}

async fn live_nodes(cluster: &Cluster) -> Vec<f64> {
    let mut out = Vec::new();
    for c in cluster.coordinators() {
        let n = match c.http_get("/metrics").await {
            Ok(text) => bench::metric(&text, "coord_live_nodes", None).unwrap_or(0.0),
            Err(_) => 0.0,
        };
        out.push(n);
    }
    out
}

fn coord_cpu(cpu: &CpuUse) -> f64 {
    cpu.procs
        .iter()
        .filter(|(id, _)| id.starts_with('c'))
        .map(|(_, v)| v)
        .sum()
}

/// One request of `body` on `subject`: how long it took, and whether the reply, read as `R`,
/// is what `good` wants. A timeout, a refusal or an unreadable reply is a failure.
pub(crate) async fn timed_request<R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    body: &impl serde::Serialize,
    good: impl Fn(&R) -> bool,
) -> (Duration, bool) {
    let t0 = Instant::now();
    let ok = match serde_json::to_vec(body) {
        Ok(body) => {
            let ask = async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(Duration::from_secs(10)));
            match client.send_request(subject, ask).await {
                Ok(m) => serde_json::from_slice::<R>(&m.payload).is_ok_and(|r| good(&r)),
                Err(_) => false,
            }
        }
        Err(_) => false,
    };
    (t0.elapsed(), ok)
}

/// The successful requests' latencies, sorted, and how many failed.
pub(crate) fn latencies(results: &[(Duration, bool)]) -> (Vec<Duration>, usize) {
    let mut ok: Vec<Duration> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    ok.sort();
    let failed = results.len() - ok.len();
    (ok, failed)
}

/// The `p`th percentile of sorted latencies, ms (NaN when there are none).
pub(crate) fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    bench::percentile_sorted(sorted, p).map_or(f64::NAN, bench::ms)
}

struct Row {
    nodes: usize,
    heartbeat_pct: f64,
    allocs_per_sec: f64,
    cpu_per_alloc_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: usize,
}

async fn burst(
    client: &async_nats::Client,
    cluster: &Cluster,
    step: usize,
    args: &Args,
    heartbeat_pct: f64,
) -> Result<(f64, f64, f64, f64, usize)> {
    let from = node_id(0);
    let before = cluster.cpu_snapshot();
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(0..args.allocations)
        .map(|i| {
            let client = client.clone();
            let from = from.clone();
            async move {
                let req = AllocateRequest {
                    v: wire::VERSION,
                    room: RoomId::new(format!("scale-{step}-{i}")).expect("room id"),
                    region: Some(REGIONS[i % REGIONS.len()].into()),
                    from,
                    forwarded: false,
                    lookup: false,
                    full: Vec::new(),
                    suspects: Vec::new(),
                    settings: None,
                };
                timed_request(
                    &client,
                    wire::ALLOCATE.to_owned(),
                    &req,
                    |r: &AllocateReply| matches!(r, AllocateReply::Assigned { .. }),
                )
                .await
            }
        })
        .buffer_unordered(args.inflight)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let after = cluster.cpu_snapshot();
    let cpu = CpuUse::between(&before, &after);
    let (lat, failed) = latencies(&results);
    // Core-seconds of both coordinators over the burst, less what heartbeats took.
    let busy = (coord_cpu(&cpu) - 2.0 * heartbeat_pct).max(0.0) / 100.0 * secs;
    let per_alloc_us = busy * 1e6 / lat.len().max(1) as f64;
    Ok((
        lat.len() as f64 / secs,
        per_alloc_us,
        pct_ms(&lat, 50.0),
        pct_ms(&lat, 99.0),
        failed,
    ))
}

struct Measured {
    rows: Vec<Row>,
    routed: Option<users::UserRow>,
    rooms: Option<rooms::RoomsRow>,
}

async fn run(args: Args) -> Result<Measured> {
    let dir = bench::run_dir("bench_scale", None)?;
    let mut spec = args.bins.apply(ClusterSpec::new(&dir));
    spec = spec.coordinator("c1").coordinator("c2");
    spec.nats.servers = args.nats_servers;
    spec.ready_timeout = Duration::from_secs(60);
    let mut cluster = Cluster::start(spec)
        .await
        .context("start nats and the coordinators")?;
    // User routing first, on a quiet cluster: once the fake nodes stop heartbeating the
    // coordinators would be failing all of them over.
    let routed = if args.users > 0 {
        let r = users::run(
            &cluster,
            args.users,
            args.user_conns,
            args.messages,
            args.message_inflight,
        )
        .await?;
        eprintln!(
            "{} users over {} connections: subscribed in {:.1} s, nats-server {:.0} MiB; {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, {} failed",
            r.users, r.conns, r.subscribe_secs, r.nats_rss_mib, r.per_sec, r.p50_ms, r.p99_ms, r.failed
        );
        Some(r)
    } else {
        None
    };
    let client = cluster.nats_client().await?;
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let beating = tokio::spawn(heartbeats(client.clone(), count.clone(), stop.clone()));
    let mut rows = Vec::new();
    for (step, &n) in args.nodes.iter().enumerate() {
        count.store(n, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let live = live_nodes(&cluster).await;
            if live.iter().all(|l| *l as usize == n) {
                break;
            }
            if Instant::now() >= deadline {
                bail!("coordinators count {live:?} live nodes, not {n}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let before = cluster.cpu_snapshot();
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let idle = CpuUse::between(&before, &cluster.cpu_snapshot());
        let heartbeat_pct = coord_cpu(&idle) / 2.0;
        let (allocs_per_sec, cpu_per_alloc_us, p50_ms, p99_ms, failed) =
            burst(&client, &cluster, step, &args, heartbeat_pct).await?;
        eprintln!(
            "{n} nodes: heartbeats {heartbeat_pct:.2} % of a core per coordinator; {allocs_per_sec:.0} allocations/s, {cpu_per_alloc_us:.0} µs CPU each, p50 {p50_ms:.1} ms, p99 {p99_ms:.1} ms, {failed} failed"
        );
        rows.push(Row {
            nodes: n,
            heartbeat_pct,
            allocs_per_sec,
            cpu_per_alloc_us,
            p50_ms,
            p99_ms,
            failed,
        });
    }
    // The directory part with every fake node still heartbeating: none of the entries'
    // nodes is dead, so nothing is failed over.
    let rooms = if args.rooms > 0 {
        let largest = args.nodes.iter().copied().max().unwrap_or(1);
        let r = rooms::run(
            &mut cluster,
            args.rooms,
            largest,
            args.allocations,
            args.inflight,
        )
        .await?;
        eprintln!(
            "{} rooms: filled at {:.0}/s; mirror {:.0} B/room; c2 ready {:.2} s after restart, mirror synced after {:.2} s (replay {:.2} s, {} rooms), RSS {:.0} MiB; nats-server {:.0} MiB; existing-room allocations {:.0}/s, p99 {:.1} ms",
            r.rooms, r.fill_per_sec, r.mirror_bytes_per_room, r.restart_ready_secs, r.synced_secs, r.replay_secs, r.mirrored, r.c2_rss_mib, r.nats_rss_mib, r.existing_per_sec, r.existing_p99_ms
        );
        Some(r)
    } else {
        None
    };
    stop.notify_one();
    let _ = beating.await;
    Ok(Measured {
        rows,
        routed,
        rooms,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let facts = MachineFacts::collect();
    let write = args.write.clone();
    let note = args.note.clone();
    let (allocations, inflight) = (args.allocations, args.inflight);
    let (messages, inflight_msgs) = (args.messages, args.message_inflight);
    let servers = args.nats_servers;
    let Measured {
        rows,
        routed,
        rooms,
    } = bench::run_until_ctrl_c(run(args))?;
    let mut table = String::from(
        "| live nodes | coordinator CPU for heartbeats (% of a core, each) | CPU per allocation (both coordinators) | allocations/s | p50 | p99 | failed |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let _ = writeln!(
            table,
            "| {} | {:.2} % | {:.0} µs | {:.0} | {:.1} ms | {:.1} ms | {} |",
            r.nodes,
            r.heartbeat_pct,
            r.cpu_per_alloc_us,
            r.allocs_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.failed
        );
    }
    if let Some(r) = &routed {
        let _ = write!(
            table,
            "\n| user subscriptions | connections | subscribed in | nats-server RSS | deliveries/s | p50 | p99 | failed |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n| {} | {} | {:.1} s | {:.0} MiB | {:.0} | {:.2} ms | {:.2} ms | {} |\n",
            r.users, r.conns, r.subscribe_secs, r.nats_rss_mib, r.per_sec, r.p50_ms, r.p99_ms, r.failed
        );
    }
    if let Some(r) = &rooms {
        let _ = write!(
            table,
            "\n| rooms in the directory | written at | mirror memory | restarted coordinator ready | its mirror complete (replay) | nats-server RSS | allocations of existing rooms | p99 |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n| {} | {:.0}/s | {:.0} B/room | {:.2} s | {:.2} s ({:.2} s) | {:.0} MiB | {:.0}/s | {:.1} ms |\n",
            r.rooms, r.fill_per_sec, r.mirror_bytes_per_room, r.restart_ready_secs, r.synced_secs, r.replay_secs, r.nats_rss_mib, r.existing_per_sec, r.existing_p99_ms
        );
    }
    let verdict = format!(
        "{servers} nats-server(s). {allocations} allocations per size, {inflight} in flight, through nats-server and two \
         coordinators on this machine (the fake nodes' heartbeats and the requests come from \
         this program, on the same cores). CPU per allocation is both coordinators' CPU over the \
         burst less their heartbeat share, divided by the allocations. User routing: \
         {messages} deliveries ({inflight_msgs} in flight) from one connection to random \
         `user.<id>` subjects, each answered by the connection holding the user's \
         subscription, as a node's router does.\n"
    );
    bench::print_and_write(
        "bench_scale",
        write.as_deref(),
        &table,
        &verdict,
        |begin, end| {
            let mut s = bench::section_head(
                begin,
                "Control plane by node count (bench_scale: heartbeats, allocations)",
                "cargo build --release -p node -p coordinator -p chaos",
                &facts,
            );
            s.push('\n');
            s.push_str(&table);
            s.push('\n');
            s.push_str(&bench::section_tail(&verdict, note.as_deref(), &[], end));
            s
        },
    )
}
