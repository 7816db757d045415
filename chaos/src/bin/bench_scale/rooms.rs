//! Part three: a `rooms` directory with many entries. With the fake nodes heartbeating (so
//! no entry is failed over), this program writes `--rooms` entries into the bucket as the
//! coordinators would have (each room on one to three fake nodes of its regions), then:
//!
//! - coordinator `c1`, which mirrored the fill as it happened: its RSS before and after (the
//!   mirror's memory per room);
//! - coordinator `c2`, killed and started again: how long until it is ready (`/readyz`),
//!   and until its mirror holds every entry (its `coord_directory_replay_seconds`, and
//!   the wall time until `coord_directory_synced`), and its RSS then;
//! - nats-server's RSS with the bucket;
//! - a burst of allocations for rooms of the bucket (each a KV read, answered without a
//!   write): allocations/s and p99.

use anyhow::{bail, Context, Result};
use chaos::bench;
use chaos::sandbox::Cluster;
use futures::StreamExt;
use protocol::cluster::{
    self as wire, token, AllocateReply, AllocateRequest, RoomAssignment, RoomNode,
};
use protocol::RoomId;
use std::time::{Duration, Instant};

pub struct RoomsRow {
    pub rooms: usize,
    pub fill_per_sec: f64,
    pub mirror_bytes_per_room: f64,
    pub restart_ready_secs: f64,
    pub replay_secs: f64,
    pub synced_secs: f64,
    pub mirrored: f64,
    pub c2_rss_mib: f64,
    pub nats_rss_mib: f64,
    pub existing_per_sec: f64,
    pub existing_p99_ms: f64,
}

fn room(i: usize) -> RoomId {
    RoomId::new(format!("fill-{i:07}")).expect("room id")
}

/// Room `i`'s entry: one to three of the `nodes` fake nodes, the origin first.
fn entry(i: usize, nodes: usize) -> RoomAssignment {
    let span = 1 + i % 3;
    let members: Vec<RoomNode> = (0..span)
        .map(|k| {
            let n = (i * 7 + k * 1_009) % nodes.max(1);
            RoomNode {
                node: super::node_id(n),
                region: super::REGIONS[n % super::REGIONS.len()].into(),
            }
        })
        .collect();
    RoomAssignment {
        v: wire::VERSION,
        room: room(i),
        node: members[0].node.clone(),
        epoch: 1,
        coordinator: "c1".into(),
        assigned_ms: 1,
        nodes: members,
    }
}

async fn coord_metric(cluster: &Cluster, id: &str, name: &str) -> Result<f64> {
    let c = cluster
        .coordinators()
        .find(|p| p.id() == id)
        .with_context(|| format!("no coordinator {id}"))?;
    let text = c.http_get("/metrics").await?;
    bench::metric(&text, name, None).with_context(|| format!("{id} has no {name}"))
}

fn rss_mib(cluster: &Cluster, id: &str) -> f64 {
    cluster
        .procs()
        .iter()
        .find(|p| p.id() == id)
        .and_then(|p| bench::vm_rss_kib(p.pid()).ok())
        .unwrap_or(0) as f64
        / 1024.0
}

/// Waits (bounded) until coordinator `id`'s mirror says `synced` and holds at least
/// `rooms` entries; returns when, from `since`.
async fn wait_mirrored(cluster: &Cluster, id: &str, rooms: usize, since: Instant) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let synced = coord_metric(cluster, id, "coord_directory_synced")
            .await
            .unwrap_or(0.0);
        let held = coord_metric(cluster, id, "coord_directory_rooms")
            .await
            .unwrap_or(0.0);
        if synced == 1.0 && held as usize >= rooms {
            return Ok(since.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            bail!("{id}: mirror synced={synced}, {held} rooms, not {rooms} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(
    cluster: &mut Cluster,
    rooms: usize,
    nodes: usize,
    allocations: usize,
    inflight: usize,
) -> Result<RoomsRow> {
    let client = cluster.nats_client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .get_key_value(wire::ROOMS_BUCKET)
        .await
        .context("open the rooms bucket")?;
    let before_live = coord_metric(cluster, "c1", "coord_directory_rooms").await?;
    let c1_before = rss_mib(cluster, "c1");

    let started = Instant::now();
    let written = futures::stream::iter(0..rooms)
        .map(|i| {
            let kv = kv.clone();
            async move {
                let body = serde_json::to_vec(&entry(i, nodes)).ok()?;
                kv.put(token(room(i).as_str()), body.into()).await.ok()
            }
        })
        .buffer_unordered(256)
        .filter(|r| futures::future::ready(r.is_some()))
        .count()
        .await;
    let fill_secs = started.elapsed().as_secs_f64();
    if written < rooms {
        bail!("only {written} of {rooms} entries written");
    }
    let total = before_live as usize + rooms;
    wait_mirrored(cluster, "c1", total, Instant::now()).await?;
    let c1_after = rss_mib(cluster, "c1");
    let nats_rss_mib = cluster
        .nats_servers()
        .filter_map(|p| bench::vm_rss_kib(p.pid()).ok())
        .sum::<u64>() as f64
        / 1024.0;

    cluster.proc_mut("c2")?.signal("KILL")?;
    let restarted = Instant::now();
    cluster.restart("c2", Duration::from_secs(60)).await?;
    let restart_ready_secs = restarted.elapsed().as_secs_f64();
    let synced_secs = wait_mirrored(cluster, "c2", total, restarted).await?;
    let replay_secs = coord_metric(cluster, "c2", "coord_directory_replay_seconds").await?;
    let mirrored = coord_metric(cluster, "c2", "coord_directory_rooms").await?;
    let c2_rss_mib = rss_mib(cluster, "c2");

    // Joins to rooms that exist: a KV read each, no write.
    let began = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(0..allocations)
        .map(|k| {
            let client = client.clone();
            async move {
                let i = (k * 7_919) % rooms.max(1);
                let e = entry(i, nodes);
                let req = AllocateRequest {
                    v: wire::VERSION,
                    room: e.room.clone(),
                    region: Some(e.nodes[0].region.clone()),
                    from: super::node_id(0),
                    forwarded: false,
                    lookup: false,
                    full: Vec::new(),
                    suspects: Vec::new(),
                    settings: None,
                };
                super::timed_request(&client, wire::ALLOCATE.to_owned(), &req, |r| {
                    matches!(r, AllocateReply::Assigned { .. })
                })
                .await
            }
        })
        .buffer_unordered(inflight.max(1))
        .collect()
        .await;
    let secs = began.elapsed().as_secs_f64();
    let (lat, failed) = super::latencies(&results);
    if failed > 0 {
        bail!("{failed} of {allocations} allocations of existing rooms failed");
    }
    Ok(RoomsRow {
        rooms,
        fill_per_sec: rooms as f64 / fill_secs,
        mirror_bytes_per_room: (c1_after - c1_before) * 1024.0 * 1024.0 / rooms as f64,
        restart_ready_secs,
        replay_secs,
        synced_secs,
        mirrored,
        c2_rss_mib,
        nats_rss_mib,
        existing_per_sec: lat.len() as f64 / secs,
        existing_p99_ms: super::pct_ms(&lat, 99.0),
    })
}
