//! Coordinators against a real nats-server, with fake nodes (plain NATS clients that
//! heartbeat) standing in for media nodes.
//!
//! Allocation requests here retry a request that failed (timeout, no responder, or an
//! `unavailable` answer) a bounded number of times: that is what a node does, and what makes
//! a coordinator's death invisible to clients. The invariant checks read the KV *history* of
//! every room, so a second primary that existed for a moment would be caught.

mod admin;
mod allocation;
mod cascade;
mod failover;

use coordinator::decide::RoomRecord;
use coordinator::registry::Liveness;
use coordinator::{CoordinatorHandle, RoomDirectory};
use futures::StreamExt;
use protocol::cluster::{
    AllocateRequest, DeathCause, NodeDown, RoomAssignment, RoomClosed, RoomMembers, RoomNode,
    NODE_DOWN, NODE_SUSPECT, ROOM_CLOSED, VERSION,
};
use protocol::{NodeId, RoomId};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::fake_node::{self, FakeNode};
use tests::nats::NatsServer;
use tests::{http_get, room_name, wait_until};

const TOKEN: &str = "dev-admin-token";
const WAIT: Duration = Duration::from_secs(10);

fn start_coordinator(nats: &NatsServer, id: &str) -> CoordinatorHandle {
    tests::init_logs();
    let mut config = coordinator::Config::local(nats.coordinator_url());
    config.id = id.into();
    coordinator::spawn(config).expect("coordinator starts")
}

async fn fake_nodes(nats: &NatsServer, specs: &[(&str, &str)]) -> Vec<FakeNode> {
    let mut nodes = Vec::new();
    for (id, region) in specs {
        nodes.push(
            FakeNode::start(&nats.url(), id, region)
                .await
                .expect("fake node"),
        );
    }
    nodes
}

/// Waits until every coordinator is ready, sees all the others, and sees `nodes` alive.
async fn wait_cluster(coords: &[&CoordinatorHandle], nodes: usize) -> anyhow::Result<()> {
    wait_until(
        WAIT,
        "coordinators ready and seeing the cluster",
        || async {
            for c in coords {
                let s = c.snapshot();
                let live = s.nodes.iter().filter(|n| n.healthy).count();
                if !s.ready || s.live_coordinators.len() != coords.len() || live != nodes {
                    return Err(format!(
                        "{}: ready {} coordinators {:?} live nodes {live}",
                        s.id, s.ready, s.live_coordinators
                    ));
                }
            }
            Ok(())
        },
    )
    .await
}

fn request(room: &str) -> AllocateRequest {
    AllocateRequest {
        v: VERSION,
        room: RoomId::new(room).unwrap(),
        region: None,
        from: NodeId::new("test").unwrap(),
        forwarded: false,
        lookup: false,
        full: Vec::new(),
        suspects: Vec::new(),
        settings: None,
    }
}

/// One allocation request with a 2 s timeout, for a client of no particular region.
async fn allocate_once(client: &async_nats::Client, room: &str) -> Result<RoomAssignment, String> {
    let (a, serve) = fake_node::allocate(client, &request(room)).await?;
    if serve != a.node {
        return Err(format!("a one-node room served by {serve}: {a:?}"));
    }
    Ok(a)
}

/// Allocates, retrying a failed request up to 5 times. Returns the assignment and the
/// number of retries it took.
async fn allocate(
    client: &async_nats::Client,
    room: &str,
) -> anyhow::Result<(RoomAssignment, u32)> {
    let mut last = String::new();
    for retries in 0..5 {
        match allocate_once(client, room).await {
            Ok(a) => return Ok((a, retries)),
            Err(e) => last = e,
        }
    }
    anyhow::bail!("allocating {room}: {last}")
}

/// Every `Put` in the key's history, checked: epochs never fall, one origin per epoch, and
/// the origin is one of the room's nodes.
async fn checked_history(dir: &RoomDirectory, room: &str) -> anyhow::Result<Vec<RoomAssignment>> {
    let events = dir.history(&RoomId::new(room)?).await?;
    let puts: Vec<RoomAssignment> = events.into_iter().filter_map(|e| e.assignment).collect();
    for pair in puts.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        anyhow::ensure!(
            b.epoch > a.epoch || (b.epoch == a.epoch && b.node == a.node),
            "{room}: epoch {} on {} written after {} on {} (two origins?): {puts:?}",
            b.epoch,
            b.node,
            a.epoch,
            a.node
        );
    }
    for a in &puts {
        anyhow::ensure!(
            a.nodes.iter().any(|n| n.node == a.node),
            "{room}: origin {} not among the room's nodes: {a:?}",
            a.node
        );
    }
    Ok(puts)
}

/// The room's entry as the directory holds it now.
async fn entry(dir: &RoomDirectory, room: &str) -> Result<Option<RoomAssignment>, String> {
    let room = RoomId::new(room).map_err(|e| e.to_string())?;
    match dir.read(&room).await.map_err(|e| e.to_string())? {
        RoomRecord::Assigned { assignment, .. } => Ok(Some(assignment)),
        _ => Ok(None),
    }
}

fn room_node(node: &FakeNode) -> RoomNode {
    RoomNode {
        node: node.id().clone(),
        region: node.state().region,
    }
}

/// An HTTP request on loopback with an optional bearer token: (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    tests::http_request(addr, method, path, &headers).await
}

async fn admin_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http(addr, "GET", path, Some(TOKEN)).await?;
    anyhow::ensure!(status == 200, "{path}: {status} {body}");
    // actix answers HTTP/1.1 with a fixed length here; the body is the JSON.
    Ok(serde_json::from_str(&body)?)
}

/// Waits until the room's entry has this origin, epoch and nodes (`None`: no entry).
async fn wait_entry(
    dir: &RoomDirectory,
    room: &str,
    want: Option<(&NodeId, u64, Vec<NodeId>)>,
) -> anyhow::Result<()> {
    wait_until(WAIT, "the room's entry", || async {
        let now = entry(dir, room).await?;
        let got = now.as_ref().map(|a| (&a.node, a.epoch, a.members()));
        if got == want {
            Ok(())
        } else {
            Err(format!("{now:?}, want {want:?}"))
        }
    })
    .await
}

/// The sum of one series (name and labels) over the coordinators' `/metrics`.
async fn counted(coords: &[CoordinatorHandle], series: &str) -> Result<u64, String> {
    let mut total = 0;
    for c in coords {
        let (_, text) = http(c.http_addr(), "GET", "/metrics", None)
            .await
            .map_err(|e| e.to_string())?;
        total += text
            .lines()
            .filter_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    Ok(total)
}

/// Waits until each series, summed over the coordinators, is exactly its count.
async fn wait_counts(coords: &[CoordinatorHandle], want: &[(&str, u64)]) -> anyhow::Result<()> {
    wait_until(WAIT, "the counters", || async {
        for (series, n) in want {
            let got = counted(coords, series).await?;
            if got != *n {
                return Err(format!("{series}: {got}, want {n}"));
            }
        }
        Ok(())
    })
    .await
}
