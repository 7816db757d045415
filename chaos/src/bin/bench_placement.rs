//! `bench_placement`: the coordinator's CPU per placement decision as the cluster grows
//! (issue 13's first bottleneck), in process, without NATS or KV: the coordinator's own
//! [`NodeRegistry`] fed real heartbeats of `N` nodes over four regions with random loads, then
//! `--decisions` calls of the coordinator's [`decide`] on one thread, each counted as pending
//! on its node as an allocation does: half for new rooms, half joins of a room that has
//! two nodes already (cascade planning).
//!
//! Two pools are timed on the same registry: **index** (what the coordinator uses: the views
//! in load order, `O(log n)` per choice) and **scan** (the slice reference, a pass over every
//! view per choice, as every decision cost before). `--write FILE` replaces the
//! `bench_placement` section.

use anyhow::Result;
use chaos::bench::{self, MachineFacts};
use clap::Parser;
use coordinator::decide::{decide, Join, RoomRecord, Stamp};
use coordinator::registry::NodeRegistry;
use protocol::cascade::plan_join;
use protocol::cluster::{NodeHeartbeat, NodeLoad, RoomAssignment, RoomNode, VERSION};
use protocol::placement::{self, NodeView};
use protocol::{NodeId, RoomId};
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const REGIONS: [&str; 4] = ["eu", "us", "ap", "sa"];

#[derive(Parser, Debug)]
#[command(
    name = "bench_placement",
    about = "Coordinator CPU per placement decision by cluster size"
)]
struct Args {
    /// Cluster sizes (live nodes).
    #[arg(long, value_delimiter = ',', default_value = "3,100,1000,10000")]
    nodes: Vec<usize>,
    /// Decisions timed per size and pool.
    #[arg(long, default_value_t = 20_000)]
    decisions: usize,
    /// Decisions timed with the scan above this size are fewer (it is slow): at most this.
    #[arg(long, default_value_t = 2_000)]
    scan_decisions: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replace the `bench_placement` section of this file.
    #[arg(long)]
    write: Option<PathBuf>,
    #[arg(long)]
    note: Option<String>,
}

fn heartbeat(i: usize, rng: &mut impl Rng) -> NodeHeartbeat {
    NodeHeartbeat {
        v: VERSION,
        node: NodeId::new(format!("node-{i:05}")).expect("node id"),
        region: REGIONS[i % REGIONS.len()].into(),
        ws_url: format!("ws://node-{i}/ws"),
        draining: i % 50 == 7,
        load: NodeLoad {
            cpu: rng.gen_range(0.0..0.8),
            rooms: rng.gen_range(0..500),
            peers: rng.gen_range(0..1500),
            tracks: 0,
            egress_bps: 0,
            max_rooms: 1000,
            max_peers: 2000,
            max_egress_bps: 1_000_000_000,
        },
        sent_ms: 0,
    }
}

/// A registry of `n` live nodes, heard at `now`.
fn registry(n: usize, seed: u64, now: Instant) -> NodeRegistry {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut r = NodeRegistry::new(Duration::from_secs(3), Duration::from_secs(3600));
    r.listening(now);
    for i in 0..n {
        r.heartbeat(heartbeat(i, &mut rng), now);
    }
    r
}

/// A room whose entry lists two nodes of two regions.
fn existing(room: &RoomId, r: &NodeRegistry, now: Instant) -> RoomRecord {
    let views = r.statuses(now);
    let pick = |k: usize| RoomNode {
        node: views[k % views.len()].id.clone(),
        region: views[k % views.len()].region.clone(),
    };
    let k = room.as_str().len() * 7919;
    let (a, b) = (pick(k), pick(k + 1));
    RoomRecord::Assigned {
        assignment: RoomAssignment {
            v: VERSION,
            room: room.clone(),
            node: a.node.clone(),
            epoch: 1,
            coordinator: "c1".into(),
            assigned_ms: 0,
            nodes: vec![a, b],
        },
        revision: 1,
    }
}

/// Mean µs per decision through the coordinator's `decide` (the index).
fn time_index(n: usize, decisions: usize, seed: u64) -> (f64, usize) {
    let now = Instant::now();
    let mut r = registry(n, seed, now);
    let rooms: Vec<RoomId> = (0..decisions)
        .map(|i| RoomId::new(format!("room-{i}")).expect("room id"))
        .collect();
    let records: Vec<RoomRecord> = rooms
        .iter()
        .enumerate()
        .map(|(i, room)| {
            if i % 2 == 0 {
                RoomRecord::Missing
            } else {
                existing(room, &r, now)
            }
        })
        .collect();
    let started = Instant::now();
    let mut placed = 0;
    for (i, (room, record)) in rooms.iter().zip(records).enumerate() {
        let join = Join {
            room,
            region: Some(REGIONS[i % REGIONS.len()]),
            full: &[],
        };
        let stamp = Stamp {
            coordinator: "c1",
            now,
            now_ms: 0,
        };
        if !matches!(
            decide(join, record, &mut r, stamp),
            coordinator::decide::Decision::NoNode
        ) {
            placed += 1;
        }
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / decisions as f64;
    (us, placed)
}

/// Mean µs per decision by a scan of every view (the reference pool), with the same
/// choices: new rooms half the time, joins of two-node rooms the other half.
fn time_scan(n: usize, decisions: usize, seed: u64) -> f64 {
    let now = Instant::now();
    let mut r = registry(n, seed, now);
    let mut views: Vec<NodeView> = r.views(now).to_vec();
    let started = Instant::now();
    for i in 0..decisions {
        let region = Some(REGIONS[i % REGIONS.len()]);
        let members: Vec<RoomNode> = if i % 2 == 0 {
            Vec::new()
        } else {
            let a = &views[(i * 7919) % views.len()];
            let b = &views[(i * 7919 + 1) % views.len()];
            vec![
                RoomNode {
                    node: a.id.clone(),
                    region: a.region.clone(),
                },
                RoomNode {
                    node: b.id.clone(),
                    region: b.region.clone(),
                },
            ]
        };
        // The old registry refreshed every view's health per decision.
        for v in views.iter_mut() {
            v.healthy = std::hint::black_box(true);
        }
        let plan = plan_join(&members, region, &[], &views);
        if let protocol::cascade::JoinPlan::Extend(n) = &plan {
            if let Some(v) = views.iter_mut().find(|v| v.id == n.node) {
                v.pending_rooms += 1;
            }
        }
        std::hint::black_box(&plan);
    }
    let _ = placement::place(None, &views);
    started.elapsed().as_secs_f64() * 1e6 / decisions as f64
}

fn main() -> Result<()> {
    let args = Args::parse();
    let facts = MachineFacts::collect();
    let mut table = String::from(
        "| live nodes | index µs/decision | scan µs/decision | decisions/s (index, one core) |\n|---:|---:|---:|---:|\n",
    );
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let (index_us, placed) = time_index(n, args.decisions, args.seed);
        let scan_us = time_scan(n, args.decisions.min(args.scan_decisions), args.seed);
        eprintln!(
            "{n} nodes: index {index_us:.2} µs, scan {scan_us:.2} µs ({placed} of {} placed)",
            args.decisions
        );
        let _ = writeln!(
            table,
            "| {n} | {index_us:.2} | {scan_us:.2} | {:.0} |",
            1e6 / index_us
        );
        rows.push((n, index_us, scan_us));
    }
    let (small, large) = (rows.first(), rows.last());
    let verdict =
        match (small, large) {
            (Some(s), Some(l)) => format!(
            "From {} to {} live nodes the index's cost per decision went from {:.2} to {:.2} µs \
             (×{:.1}) and the scan's from {:.2} to {:.2} µs (×{:.1}). Issue 13's target is \
             ≤ 100 µs of coordinator CPU per allocation with 10,000 nodes; this is the placement \
             part of it, without NATS, KV or JSON.\n",
            s.0, l.0, s.1, l.1, l.1 / s.1, s.2, l.2, l.2 / s.2
        ),
            _ => String::new(),
        };
    bench::print_and_write(
        "bench_placement",
        args.write.as_deref(),
        &table,
        &verdict,
        |begin, end| {
            let mut s = bench::section_head(
                begin,
                "Placement decisions by cluster size (bench_placement)",
                "cargo build --release -p chaos --bin bench_placement",
                &facts,
            );
            s.push('\n');
            s.push_str(&table);
            s.push('\n');
            s.push_str(&bench::section_tail(
                &verdict,
                args.note.as_deref(),
                &[],
                end,
            ));
            s
        },
    )
}
