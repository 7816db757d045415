//! Coordinators against a real nats-server, with fake nodes (plain NATS clients that
//! heartbeat) standing in for media nodes.
//!
//! Allocation requests here retry a request that failed (timeout, no responder, or an
//! `unavailable` answer) a bounded number of times: that is what a node does, and what makes
//! a coordinator's death invisible to clients. The invariant checks read the KV *history* of
//! every room, so a second primary that existed for a moment would be caught.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_rooms_at_once_spread_evenly_with_one_primary_each() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu"), ("c", "eu")]).await;
    let (c1, c2) = (
        start_coordinator(&nats, "c1"),
        start_coordinator(&nats, "c2"),
    );
    wait_cluster(&[&c1, &c2], nodes.len()).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let rooms: Vec<String> = (0..300).map(|_| room_name("burst")).collect();
    let started = Instant::now();
    let replies = futures::future::join_all(rooms.iter().map(|r| allocate(&client, r))).await;
    let took = started.elapsed();
    let mut per_node = BTreeMap::<String, usize>::new();
    let dir = RoomDirectory::open(&client, 1).await?;
    for (room, reply) in rooms.iter().zip(replies) {
        let (a, _) = reply?;
        *per_node.entry(a.node.to_string()).or_default() += 1;
        let puts = checked_history(&dir, room).await?;
        anyhow::ensure!(
            puts == vec![a.clone()],
            "{room}: history {puts:?}, reply {a:?}"
        );
    }
    let max = *per_node.values().max().unwrap() as f64;
    let mean = 300.0 / nodes.len() as f64;
    println!("300 allocations in {took:?}: {per_node:?}");
    anyhow::ensure!(
        per_node.len() == 3 && max / mean <= 1.25,
        "spread {per_node:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_coordinator_mid_burst_loses_no_allocation_and_never_splits_a_room(
) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu"), ("c", "us")]).await;
    let c1 = start_coordinator(&nats, "c1");
    let c2 = start_coordinator(&nats, "c2");
    wait_cluster(&[&c1, &c2], nodes.len()).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let c1_http = c1.http_addr();
    let rooms: Vec<String> = (0..400).map(|_| room_name("kill")).collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let killer = tokio::spawn(async move {
        if kill_rx.await.is_ok() {
            tokio::task::spawn_blocking(move || c1.kill()).await.ok();
        }
    });
    let mut kill_tx = Some(kill_tx);
    // 16 in flight; the kill lands after a quarter of the rooms, mid-burst.
    let results: Vec<_> = futures::stream::iter(rooms.iter())
        .map(|room| {
            let done = &done;
            let client = &client;
            async move {
                let r = allocate(client, room).await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (room.clone(), r)
            }
        })
        .buffer_unordered(16)
        .inspect(|_| {
            if done.load(std::sync::atomic::Ordering::Relaxed) >= 100 {
                if let Some(tx) = kill_tx.take() {
                    let _ = tx.send(());
                }
            }
        })
        .collect()
        .await;
    killer.await?;
    anyhow::ensure!(kill_tx.is_none(), "the kill never happened");
    anyhow::ensure!(
        tokio::net::TcpStream::connect(c1_http).await.is_err(),
        "a killed coordinator still accepts http"
    );
    let dir = RoomDirectory::open(&client, 1).await?;
    let mut retried = 0;
    let mut decided_by = BTreeMap::<String, usize>::new();
    for (room, r) in &results {
        let (a, retries) = r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        retried += retries;
        *decided_by.entry(a.coordinator.clone()).or_default() += 1;
        let puts = checked_history(&dir, room).await?;
        anyhow::ensure!(
            puts.len() == 1 && puts[0] == *a,
            "{room}: {puts:?} vs {a:?}"
        );
        // Asking again (now only c2 is left) gives the same primary.
        let (again, _) = allocate(&client, room).await?;
        anyhow::ensure!(again == *a, "{room}: {again:?} after {a:?}");
    }
    println!("retried requests: {retried}; decided by {decided_by:?}");
    anyhow::ensure!(
        decided_by.get("c1").is_some_and(|n| *n > 0)
            && decided_by.get("c2").is_some_and(|n| *n > 0),
        "both coordinators should have decided some rooms: {decided_by:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_dies_after_the_timeout_and_its_room_moves_with_the_next_epoch(
) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu")]).await;
    let c = start_coordinator(&nats, "c1");
    wait_cluster(&[&c], 2).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let mut on_a = None;
    for _ in 0..20 {
        let room = room_name("fail");
        let (a, _) = allocate(&client, &room).await?;
        if a.node.as_str() == "a" {
            on_a = Some((room, a));
            break;
        }
    }
    let (room, first) = on_a.expect("some room lands on node a");
    assert_eq!(first.epoch, 1);

    nodes[0].set_beating(false);
    let silenced = Instant::now();
    wait_until(WAIT, "node a dead in /nodes", || async {
        let nodes = admin_json(c.http_addr(), "/nodes")
            .await
            .map_err(|e| e.to_string())?;
        let a = nodes
            .as_array()
            .and_then(|l| l.iter().find(|n| n["id"] == "a"))
            .ok_or("a not listed")?;
        if a["healthy"] == false && a["liveness"] == "dead" {
            Ok(())
        } else {
            Err(format!("{a}"))
        }
    })
    .await?;
    let took = silenced.elapsed();
    // Timeout 3 s, counted from the last heartbeat (≤ 500 ms before the silence began).
    assert!(
        took >= Duration::from_millis(2400),
        "dead too early: {took:?}"
    );
    assert!(took <= Duration::from_secs(5), "dead too late: {took:?}");

    for _ in 0..20 {
        let (a, _) = allocate(&client, &room_name("after")).await?;
        assert_eq!(a.node.as_str(), "b", "a dead node got a room");
    }
    let (moved, _) = allocate(&client, &room).await?;
    assert_eq!((moved.node.as_str(), moved.epoch), ("b", 2));
    let dir = RoomDirectory::open(&client, 1).await?;
    let puts = checked_history(&dir, &room).await?;
    assert_eq!(puts, vec![first, moved.clone()]);

    // The node comes back: it is alive again, and the room stays where it moved.
    nodes[0].set_beating(true);
    wait_until(WAIT, "node a alive again", || async {
        let s = c.snapshot();
        match s.nodes.iter().find(|n| n.id.as_str() == "a") {
            Some(n) if n.healthy => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let (again, _) = allocate(&client, &room).await?;
    assert_eq!(again, moved);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_room_leaves_the_directory_and_reopens_at_the_next_epoch() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let _nodes = fake_nodes(&nats, &[("a", "eu")]).await;
    let c = start_coordinator(&nats, "c1");
    wait_cluster(&[&c], 1).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let dir = RoomDirectory::open(&client, 1).await?;
    let room = room_name("close");
    let (first, _) = allocate(&client, &room).await?;
    let closed = |epoch| RoomClosed {
        v: VERSION,
        room: first.room.clone(),
        node: first.node.clone(),
        epoch,
    };
    // A stale close (wrong epoch) changes nothing; the right one deletes the record.
    for msg in [closed(7), closed(1)] {
        client
            .publish(ROOM_CLOSED, serde_json::to_vec(&msg)?.into())
            .await?;
    }
    client.flush().await?;
    wait_until(WAIT, "room record deleted", || async {
        let h = dir.history(&first.room).await.map_err(|e| e.to_string())?;
        match h.last() {
            Some(e) if e.assignment.is_none() && h.len() == 2 => Ok(()),
            _ => Err(format!("{h:?}")),
        }
    })
    .await?;
    let (reopened, _) = allocate(&client, &room).await?;
    assert_eq!(reopened.epoch, 2);
    assert_eq!(checked_history(&dir, &room).await?, vec![first, reopened]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_succeed_again_within_five_seconds_of_nats_coming_back() -> anyhow::Result<()> {
    let mut nats = NatsServer::start()?;
    let _nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu")]).await;
    let c = start_coordinator(&nats, "c1");
    wait_cluster(&[&c], 2).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let room = room_name("before");
    let (before, _) = allocate(&client, &room).await?;

    nats.stop();
    wait_until(WAIT, "coordinator notices nats is gone", || async {
        match http_get(c.http_addr(), "/readyz", &[]).await {
            Ok((503, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    // Stay down past the node timeout: silence during an outage must not make the nodes
    // dead (their rooms would move), only unknown until they are heard again.
    wait_until(
        WAIT,
        "nodes' liveness unknown during the outage",
        || async {
            let s = c.snapshot();
            if s.nodes.len() == 2 && s.nodes.iter().all(|n| n.liveness == Liveness::Unknown) {
                Ok(())
            } else {
                Err(format!("{:?}", s.nodes))
            }
        },
    )
    .await?;
    nats.restart()?;
    let back = Instant::now();
    let new_room = room_name("after");
    wait_until(
        Duration::from_secs(5),
        "an allocation after the restart",
        || async { allocate_once(&client, &new_room).await.map(|_| ()) },
    )
    .await?;
    println!(
        "allocations work again {:?} after nats is back",
        back.elapsed()
    );
    let (again, _) = allocate(&client, &room).await?;
    assert_eq!(again, before, "the directory survived the restart");
    let (status, _) = http_get(c.http_addr(), "/readyz", &[]).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_lists_nodes_and_drained_nodes_get_no_rooms() -> anyhow::Result<()>
{
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu"), ("c", "eu")]).await;
    // c says so itself, in its heartbeat.
    nodes[2].set_draining(true);
    let coord = start_coordinator(&nats, "c1");
    wait_cluster(&[&coord], 3).await?;
    let addr = coord.http_addr();

    for path in ["/nodes", "/rooms", "/debug/snapshot"] {
        assert_eq!(http(addr, "GET", path, None).await?.0, 401, "{path}");
        assert_eq!(
            http(addr, "GET", path, Some("wrong")).await?.0,
            401,
            "{path}"
        );
    }
    assert_eq!(http(addr, "POST", "/nodes/a/drain", None).await?.0, 401);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http(addr, "GET", path, None).await?.0, 200, "{path}");
    }

    let listed = admin_json(addr, "/nodes").await?;
    let ids: HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["a", "b", "c"]));
    let c = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "c")
        .unwrap();
    assert_eq!(
        (c["draining"].as_bool(), c["draining_reported"].as_bool()),
        (Some(true), Some(true))
    );
    for field in [
        "region",
        "ws_url",
        "load",
        "healthy",
        "last_heartbeat_age_ms",
    ] {
        assert!(!c[field].is_null(), "{field} missing in {c}");
    }

    // The operator drains a: every coordinator marks it, and the node is told.
    let (status, body) = http(addr, "POST", "/nodes/a/drain", Some(TOKEN)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(addr, "POST", "/nodes/nope/drain", Some(TOKEN))
            .await?
            .0,
        404
    );
    wait_until(WAIT, "node a told to drain", || async {
        match nodes[0].state().drains.as_slice() {
            [true] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let listed = admin_json(addr, "/nodes").await?;
    let a = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "a")
        .unwrap();
    assert_eq!(a["draining"], true);
    assert_eq!(a["draining_requested"], true);

    let client = fake_node::connect(&nats.url()).await?;
    let mut rooms = Vec::new();
    for _ in 0..30 {
        let room = room_name("drain");
        let (a, _) = allocate(&client, &room).await?;
        assert_eq!(a.node.as_str(), "b", "a draining node got {room}");
        rooms.push(a);
    }

    // /rooms: the directory, with member counts from the nodes that answer.
    nodes[1].set_rooms(vec![RoomMembers {
        room: rooms[0].room.clone(),
        members: 3,
        links: Vec::new(),
    }]);
    let listed = admin_json(addr, "/rooms").await?;
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 30);
    let row = |r: &RoomAssignment| rows.iter().find(|x| x["room"] == r.room.as_str()).unwrap();
    assert_eq!(row(&rooms[0])["members"], 3);
    assert_eq!(row(&rooms[0])["epoch"], 1);
    assert_eq!(row(&rooms[0])["node"], "b");
    assert!(row(&rooms[1])["members"].is_null());

    // Undrain: a takes rooms again.
    assert_eq!(
        http(addr, "DELETE", "/nodes/a/drain", Some(TOKEN)).await?.0,
        200
    );
    wait_until(WAIT, "a undrained", || async {
        match nodes[0].state().drains.as_slice() {
            [true, false] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let mut to_a = 0;
    for _ in 0..10 {
        let (x, _) = allocate(&client, &room_name("undrain")).await?;
        to_a += usize::from(x.node.as_str() == "a");
    }
    assert!(to_a > 0, "an undrained, idle node took no room");

    let (_, metrics) = http(addr, "GET", "/metrics", None).await?;
    for needle in [
        "coord_allocations_total{result=\"created\"}",
        "coord_allocation_latency_seconds_bucket",
        "coord_live_nodes 3",
        "coord_node_pending_rooms{node=\"b\"",
        "coord_node_draining{node=\"c\",region=\"eu\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_coordinator_hands_over_without_failed_requests() -> anyhow::Result<()>
{
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu"), ("b", "eu")]).await;
    let c1 = start_coordinator(&nats, "c1");
    let c2 = start_coordinator(&nats, "c2");
    wait_cluster(&[&c1, &c2], nodes.len()).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let stopped = Instant::now();
    c2.stop().await;
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    // c1 still counts c2 alive for a while; its forwards find no responder and c1 decides.
    for _ in 0..50 {
        let room = room_name("handover");
        let a = allocate_once(&client, &room)
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(a.coordinator, "c1");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_started_before_nats_becomes_ready_when_it_appears() -> anyhow::Result<()> {
    tests::init_logs();
    let mut nats = NatsServer::prepare(NatsServer::free_port()?)?;
    let mut config = coordinator::Config::local(nats.coordinator_url());
    config.id = "early".into();
    let c = coordinator::spawn(config)?;
    let (status, body) = http_get(c.http_addr(), "/readyz", &[]).await?;
    assert_eq!((status, body.as_str()), (503, "not connected to nats"));
    assert_eq!(http_get(c.http_addr(), "/healthz", &[]).await?.0, 200);
    nats.start_prepared()?;
    let _nodes = fake_nodes(&nats, &[("a", "eu")]).await;
    wait_cluster(&[&c], 1).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let (a, _) = allocate(&client, &room_name("early")).await?;
    assert_eq!(a.node.as_str(), "a");
    Ok(())
}

/// Two coordinators and the fake nodes `eu-1`, `eu-2` (eu) and `us-1` (us), everyone seeing
/// everyone; and the room directory.
async fn cascade_cluster(
    nats: &NatsServer,
) -> anyhow::Result<(Vec<FakeNode>, [CoordinatorHandle; 2], RoomDirectory)> {
    let nodes = fake_nodes(nats, &[("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]).await;
    let coords = [start_coordinator(nats, "c1"), start_coordinator(nats, "c2")];
    wait_cluster(&[&coords[0], &coords[1]], nodes.len()).await?;
    let dir = RoomDirectory::open(nodes[0].client(), 1).await?;
    Ok((nodes, coords, dir))
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

fn fake<'a>(nodes: &'a [FakeNode], id: &NodeId) -> &'a FakeNode {
    nodes.iter().find(|n| n.id() == id).expect("a cluster node")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_regions_and_each_client_is_served_in_its_own() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let (nodes, coords, dir) = cascade_cluster(&nats).await?;
    let room = room_name("span");

    let (first, eu) = nodes[0].join(&room, "eu", &[]).await?;
    let origin = fake(&nodes, &eu);
    assert_eq!(origin.state().region, "eu");
    assert_eq!((&first.node, first.epoch), (&eu, 1));
    assert_eq!(first.nodes, vec![room_node(origin)]);

    let (second, us) = nodes[2].join(&room, "us", &[]).await?;
    assert_eq!(us.as_str(), "us-1", "a us client is served in us");
    assert_eq!((&second.node, second.epoch), (&eu, 1), "origin, epoch stay");
    assert_eq!(second.nodes, vec![room_node(origin), room_node(&nodes[2])]);
    let now = entry(&dir, &room).await.map_err(anyhow::Error::msg)?;
    assert_eq!(now.as_ref(), Some(&second));

    // More clients of either region: the room's node there serves them, nothing is written.
    for (region, serve) in [("eu", &eu), ("us", &us), ("eu", &eu)] {
        let (a, s) = nodes[1].join(&room, region, &[]).await?;
        assert_eq!((&a, &s), (&second, serve), "{region}");
    }
    assert_eq!(checked_history(&dir, &room).await?, vec![first, second]);
    wait_until(WAIT, "the extension counted once", || async {
        match counted(&coords, "coord_allocations_total{result=\"extended\"}").await? {
            1 => Ok(()),
            n => Err(format!("{n} extensions")),
        }
    })
    .await?;

    // GET /rooms: the origin, the epoch, and each node with what it reports.
    let report = |members, link: &NodeId| {
        vec![RoomMembers {
            room: RoomId::new(&room).unwrap(),
            members,
            links: vec![link.clone()],
        }]
    };
    fake(&nodes, &eu).set_rooms(report(2, &us));
    fake(&nodes, &us).set_rooms(report(1, &eu));
    let listed = admin_json(coords[0].http_addr(), "/rooms").await?;
    let row = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["room"] == room.as_str()))
        .expect("the room listed");
    assert_eq!(
        (&row["node"], &row["epoch"]),
        (&eu.as_str().into(), &1.into())
    );
    assert_eq!(row["members"], 3, "members over the room's nodes: {row}");
    assert_eq!(row["node_answered"], true);
    let expect = [(&eu, "eu", true, 2, &us), (&us, "us", false, 1, &eu)];
    let listed_nodes = row["nodes"].as_array().expect("nodes listed");
    assert_eq!(listed_nodes.len(), expect.len(), "{row}");
    for (n, (id, region, origin, members, link)) in listed_nodes.iter().zip(expect) {
        let want = serde_json::json!({
            "node": id, "region": region, "origin": origin, "liveness": "alive",
            "members": members, "answered": true, "links": [link],
        });
        assert_eq!(n, &want, "{row}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_node_gets_a_sibling_in_its_region() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let (nodes, _coords, dir) = cascade_cluster(&nats).await?;
    let room = room_name("full");

    let (first, eu) = nodes[0].join(&room, "eu", &[]).await?;
    let (grown, sibling) = nodes[0].join(&room, "eu", &[&eu]).await?;
    assert_ne!(sibling, eu, "the full node does not serve again");
    assert_eq!(fake(&nodes, &sibling).state().region, "eu");
    assert_eq!((&grown.node, grown.epoch), (&eu, 1));
    let pair = [fake(&nodes, &eu), fake(&nodes, &sibling)].map(room_node);
    assert_eq!(grown.nodes, pair);
    // Both eu nodes full, and no other eu node: the least-loaded node anywhere joins.
    let (widest, serve) = nodes[0].join(&room, "eu", &[&eu, &sibling]).await?;
    assert_eq!((serve.as_str(), widest.nodes.len()), ("us-1", 3));
    // Without `full`, an eu client is back on a node of its region.
    let (_, again) = nodes[0].join(&room, "eu", &[]).await?;
    assert!(again == eu || again == sibling, "{again}");
    let history = checked_history(&dir, &room).await?;
    assert_eq!(history, vec![first, grown, widest]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_leaving_shrink_the_room_move_its_origin_and_close_it_last() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let (nodes, coords, dir) = cascade_cluster(&nats).await?;
    let room = room_name("leave");
    let room_id = RoomId::new(&room)?;

    // The eu origin, then us, then the origin's eu sibling.
    let (_, origin) = nodes[0].join(&room, "eu", &[]).await?;
    nodes[2].join(&room, "us", &[]).await?;
    let (full, sibling) = nodes[0].join(&room, "eu", &[&origin]).await?;
    let us = nodes[2].id().clone();
    let all = vec![origin.clone(), us.clone(), sibling.clone()];
    assert_eq!(full.members(), all);

    // A node that is not in the room, and a message from a later epoch, change nothing.
    let stranger = RoomClosed {
        v: VERSION,
        room: room_id.clone(),
        node: NodeId::new("gone")?,
        epoch: 1,
    };
    let client = nodes[1].client();
    client
        .publish(ROOM_CLOSED, serde_json::to_vec(&stranger)?.into())
        .await?;
    fake(&nodes, &us).leave_room(&room_id, 7).await?;

    // A node that is not the origin leaves: the entry loses it, origin and epoch stay.
    fake(&nodes, &us).leave_room(&room_id, 1).await?;
    let rest = vec![origin.clone(), sibling.clone()];
    wait_entry(&dir, &room, Some((&origin, 1, rest))).await?;

    // The origin leaves: the next node becomes the origin with the next epoch.
    fake(&nodes, &origin).leave_room(&room_id, 1).await?;
    let last = vec![sibling.clone()];
    wait_entry(&dir, &room, Some((&sibling, 2, last))).await?;
    let puts = checked_history(&dir, &room).await?;
    let origins: Vec<(&str, u64)> = puts.iter().map(|a| (a.node.as_str(), a.epoch)).collect();
    let o = origin.as_str();
    let want = [(o, 1), (o, 1), (o, 1), (o, 1), (sibling.as_str(), 2)];
    assert_eq!(origins, want, "{puts:?}");

    // The last node leaves (it learnt epoch 1 when it joined): the entry is deleted.
    fake(&nodes, &sibling).leave_room(&room_id, 1).await?;
    wait_entry(&dir, &room, None).await?;
    let history = dir.history(&room_id).await?;
    assert!(history.last().is_some_and(|e| e.assignment.is_none()));

    // One coordinator took each message; between them they counted every outcome.
    let want = [
        ("unchanged", 2),
        ("removed", 1),
        ("origin_moved", 1),
        ("closed", 1),
    ];
    wait_until(WAIT, "every leave counted", || async {
        for (outcome, n) in want {
            let series = format!("coord_room_leaves_total{{outcome=\"{outcome}\"}}");
            match counted(&coords, &series).await? {
                got if got == n => {}
                got => return Err(format!("{outcome}: {got}, want {n}")),
            }
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// Fake nodes and coordinators that see each other, a client, the room directory, and a
/// subscription to `cluster.node.down` opened before anything dies.
struct Failover {
    nodes: Vec<FakeNode>,
    coords: Vec<CoordinatorHandle>,
    client: async_nats::Client,
    dir: RoomDirectory,
    downs: async_nats::Subscriber,
}

async fn failover_cluster(
    nats: &NatsServer,
    nodes: &[(&str, &str)],
    coords: &[&str],
) -> anyhow::Result<Failover> {
    let nodes = fake_nodes(nats, nodes).await;
    let coords: Vec<CoordinatorHandle> = coords
        .iter()
        .map(|id| start_coordinator(nats, id))
        .collect();
    wait_cluster(&coords.iter().collect::<Vec<_>>(), nodes.len()).await?;
    let client = fake_node::connect(&nats.url()).await?;
    let dir = RoomDirectory::open(&client, 1).await?;
    let downs = client.subscribe(NODE_DOWN).await?;
    client.flush().await?;
    Ok(Failover {
        nodes,
        coords,
        client,
        dir,
        downs,
    })
}

/// A room entry written straight into the directory: `origin` first, then `others`, at epoch
/// 1, as if a coordinator had placed and extended it.
async fn seed_room(
    dir: &RoomDirectory,
    prefix: &str,
    origin: &FakeNode,
    others: &[&FakeNode],
) -> anyhow::Result<RoomAssignment> {
    let a = RoomAssignment {
        v: VERSION,
        room: RoomId::new(room_name(prefix))?,
        node: origin.id().clone(),
        epoch: 1,
        coordinator: "seed".into(),
        assigned_ms: 1,
        nodes: std::iter::once(origin)
            .chain(others.iter().copied())
            .map(room_node)
            .collect(),
    };
    let written = dir.create(&a).await?;
    anyhow::ensure!(
        matches!(written, coordinator::directory::Write::Done(_)),
        "{} exists",
        a.room
    );
    Ok(a)
}

/// Waits until the room's entry has this origin and epoch, and `origin` as its only node.
async fn wait_moved(
    dir: &RoomDirectory,
    room: &RoomAssignment,
    origin: &FakeNode,
    epoch: u64,
) -> anyhow::Result<()> {
    let want = Some((origin.id(), epoch, vec![origin.id().clone()]));
    wait_entry(dir, room.room.as_str(), want).await
}

/// The next `NodeDown` about `node` on the subscription.
async fn next_down(sub: &mut async_nats::Subscriber, node: &NodeId) -> anyhow::Result<NodeDown> {
    loop {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .map_err(|_| anyhow::anyhow!("no node down for {node} within {WAIT:?}"))?
            .ok_or_else(|| anyhow::anyhow!("node down subscription closed"))?;
        let down: NodeDown = serde_json::from_slice(&msg.payload)?;
        if &down.node == node {
            return Ok(down);
        }
    }
}

/// Waits until the series, summed over the coordinators, have these values.
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

/// Like [`wait_counts`] for counters that late heartbeats on a busy machine may also bump
/// (a probe of a live node).
async fn wait_at_least(coords: &[CoordinatorHandle], series: &str, n: u64) -> anyhow::Result<()> {
    wait_until(WAIT, "the counter", || async {
        let got = counted(coords, series).await?;
        if got >= n {
            Ok(())
        } else {
            Err(format!("{series}: {got}, want at least {n}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_nobody_suspects_is_probed_when_its_heartbeat_is_late() -> anyhow::Result<()>
{
    let nats = NatsServer::start()?;
    let mut f = failover_cluster(&nats, &[("a", "eu"), ("b", "eu")], &["c1"]).await?;
    let (a, b, dir) = (&f.nodes[0], &f.nodes[1], &f.dir);
    let room = seed_room(dir, "alone", a, &[]).await?;
    a.kill().await?;
    // No client, no relay, no request: only its missing heartbeat says anything.
    let down = next_down(&mut f.downs, a.id()).await?;
    assert_eq!(down.cause, DeathCause::Probe, "{down:?}");
    let s = f.coords[0].snapshot();
    let seen = s.nodes.iter().find(|n| n.id == *a.id()).expect("a listed");
    let timeout = f.coords[0].config().node_timeout.as_millis() as u64;
    assert!(seen.last_heartbeat_age_ms < timeout, "{seen:?}");
    wait_moved(dir, &room, b, 2).await?;
    wait_counts(&f.coords, &[("coord_probes_total{verdict=\"dead\"}", 1)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_found_dead_by_a_probe_and_its_rooms_move_at_once() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut f = failover_cluster(&nats, &[("a", "eu"), ("b", "eu")], &["c1", "c2"]).await?;
    let (a, b, dir) = (&f.nodes[0], &f.nodes[1], &f.dir);
    // Rooms on a alone, and with b: whichever coordinator decides each room moves it.
    let mut rooms = Vec::new();
    for _ in 0..4 {
        rooms.push(seed_room(dir, "alone", a, &[]).await?);
        rooms.push(seed_room(dir, "shared", a, &[b]).await?);
    }

    a.kill().await?;
    b.suspect(a.id(), "request").await?;
    let down = next_down(&mut f.downs, a.id()).await?;
    // Found by the probe, not by silence: the node timeout has not passed since a's last
    // heartbeat.
    assert_eq!(down.cause, DeathCause::Probe, "{down:?}");
    for c in &f.coords {
        let s = c.snapshot();
        let seen = s.nodes.iter().find(|n| n.id == *a.id()).expect("a listed");
        let timeout = c.config().node_timeout.as_millis() as u64;
        assert!(seen.last_heartbeat_age_ms < timeout, "{}: {seen:?}", s.id);
    }
    // Every room moves without anyone joining it: to b, with the next epoch.
    for room in &rooms {
        wait_moved(dir, room, b, 2).await?;
        let puts = checked_history(dir, room.room.as_str()).await?;
        assert_eq!(puts.len(), 2, "{puts:?}");
        assert!(["c1", "c2"].contains(&puts[1].coordinator.as_str()));
    }
    // Both coordinators heard the suspicion and probed: each announces the death.
    let other = next_down(&mut f.downs, a.id()).await?;
    assert_eq!(other.cause, DeathCause::Probe, "{other:?}");
    assert_ne!(other.coordinator, down.coordinator);
    wait_counts(
        &f.coords,
        &[
            ("coord_node_deaths_total{cause=\"probe\"}", 2),
            ("coord_node_deaths_total{cause=\"silence\"}", 0),
            ("coord_rooms_failed_over_total{change=\"replaced\"}", 4),
            ("coord_rooms_failed_over_total{change=\"origin_moved\"}", 4),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_silence_without_a_suspicion_kills_a_node_and_moves_its_rooms(
) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut f = failover_cluster(&nats, &[("a", "eu"), ("b", "eu")], &["c1"]).await?;
    let (a, b, dir) = (&f.nodes[0], &f.nodes[1], &f.dir);
    let alone = seed_room(dir, "alone", a, &[]).await?;
    let shared = seed_room(dir, "shared", a, &[b]).await?;
    let member = seed_room(dir, "member", b, &[a]).await?;

    // Silent but connected: the probes its late heartbeats get are answered, so only
    // silence can tell.
    a.set_beating(false);
    let down = next_down(&mut f.downs, a.id()).await?;
    assert_eq!(
        (down.cause, down.coordinator.as_str()),
        (DeathCause::Silence, "c1")
    );
    assert!(a.state().pings > 0, "its late heartbeats were probed");
    wait_moved(dir, &alone, b, 2).await?;
    wait_moved(dir, &shared, b, 2).await?;
    // A member that is not the origin just leaves: origin and epoch stay.
    wait_moved(dir, &member, b, 1).await?;
    for room in [&alone, &shared, &member] {
        assert_eq!(checked_history(dir, room.room.as_str()).await?.len(), 2);
    }
    wait_counts(
        &f.coords,
        &[
            ("coord_node_deaths_total{cause=\"silence\"}", 1),
            ("coord_node_deaths_total{cause=\"probe\"}", 0),
            ("coord_rooms_failed_over_total{change=\"replaced\"}", 1),
            ("coord_rooms_failed_over_total{change=\"origin_moved\"}", 1),
            ("coord_rooms_failed_over_total{change=\"dropped\"}", 1),
        ],
    )
    .await?;

    // Back: alive again, and the rooms stay where they moved.
    a.set_beating(true);
    wait_cluster(&[&f.coords[0]], 2).await?;
    let (again, serve) = b.join(alone.room.as_str(), "eu", &[]).await?;
    assert_eq!((&again.node, again.epoch, &serve), (b.id(), 2, b.id()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_suspecting_a_dead_origin_is_served_by_a_survivor_in_one_request(
) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let f = failover_cluster(&nats, &[("a", "eu"), ("b", "eu")], &["c1", "c2"]).await?;
    let (a, b, dir) = (&f.nodes[0], &f.nodes[1], &f.dir);
    let alone = seed_room(dir, "alone", a, &[]).await?;
    let shared = seed_room(dir, "shared", a, &[b]).await?;

    // Killed, and nobody has said so: every coordinator still counts a alive.
    a.kill().await?;
    for c in &f.coords {
        let s = c.snapshot();
        let listed = s.nodes.iter().any(|n| n.id == *a.id() && n.healthy);
        assert!(listed, "{s:?}");
    }
    // b's client joins; b found a unresponsive and says so in the request. One request
    // each, no retry: the deciding coordinator probes a first.
    for room in [&alone, &shared] {
        let mut request = b.allocate_request(room.room.as_str(), "eu")?;
        request.suspects = vec![a.id().clone(), a.id().clone()];
        let (entry, serve) = fake_node::allocate(b.client(), &request)
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(
            (&entry.node, entry.epoch, entry.members(), &serve),
            (b.id(), 2, vec![b.id().clone()], b.id()),
            "{}",
            room.room
        );
        let puts = checked_history(dir, room.room.as_str()).await?;
        assert_eq!(puts.len(), 2, "{puts:?}");
    }
    let series = "coord_suspicions_total{source=\"allocation\",outcome=\"probed\"}";
    let probed = counted(&f.coords, series)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(probed >= 1, "the allocation's suspect was probed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspected_node_that_answers_or_is_only_stopped_is_not_declared_dead(
) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let specs = [("a", "eu"), ("b", "eu"), ("c", "eu")];
    let mut f = failover_cluster(&nats, &specs, &["c1"]).await?;
    let (a, b, c, dir) = (&f.nodes[0], &f.nodes[1], &f.nodes[2], &f.dir);
    let room = seed_room(dir, "kept", b, &[c]).await?;

    // b answers: alive.
    a.suspect(b.id(), "relay").await?;
    wait_at_least(&f.coords, "coord_probes_total{verdict=\"alive\"}", 1).await?;
    assert!(b.state().pings >= 1);
    // A flood of suspicions costs a few probes, not one each.
    for _ in 0..20 {
        a.suspect(b.id(), "relay").await?;
    }
    let outcomes = ["probed", "joined", "throttled"];
    wait_until(WAIT, "every suspicion of b handled", || async {
        let mut handled = 0;
        for outcome in outcomes {
            let series =
                format!("coord_suspicions_total{{source=\"suspect\",outcome=\"{outcome}\"}}");
            handled += counted(&f.coords, &series).await?;
        }
        match handled {
            21 => Ok(()),
            n => Err(format!("{n} of 21")),
        }
    })
    .await?;
    let pings = b.state().pings;
    assert!(pings < 21, "{pings} probes for 21 suspicions");

    // c is stopped (it keeps its connection but does not answer): a timeout proves nothing.
    c.set_answering(false);
    a.suspect(c.id(), "request").await?;
    wait_at_least(&f.coords, "coord_probes_total{verdict=\"timeout\"}", 1).await?;

    // Suspicions of a node nobody knows, and unreadable ones, probe nothing.
    a.suspect(&NodeId::new("ghost")?, "request").await?;
    let forged = serde_json::json!({"v": 99, "node": "b", "from": "x", "reason": "y"});
    for body in [b"not json".to_vec(), serde_json::to_vec(&forged)?] {
        f.client.publish(NODE_SUSPECT, body.into()).await?;
    }
    f.client.flush().await?;
    wait_counts(
        &f.coords,
        &[
            (
                "coord_suspicions_total{source=\"suspect\",outcome=\"not_alive\"}",
                1,
            ),
            (
                "coord_suspicions_total{source=\"suspect\",outcome=\"malformed\"}",
                2,
            ),
        ],
    )
    .await?;

    // Nobody died, nothing moved.
    let s = f.coords[0].snapshot();
    assert!(s.nodes.iter().all(|n| n.healthy), "{:?}", s.nodes);
    wait_counts(
        &f.coords,
        &[
            ("coord_node_deaths_total{cause=\"probe\"}", 0),
            ("coord_node_deaths_total{cause=\"silence\"}", 0),
        ],
    )
    .await?;
    let puts = checked_history(dir, room.room.as_str()).await?;
    assert_eq!(puts, vec![room.clone()]);

    // Stopped for good: silence is the backstop, and the room's entry loses c.
    c.set_beating(false);
    let down = next_down(&mut f.downs, c.id()).await?;
    assert_eq!(down.cause, DeathCause::Silence);
    wait_moved(dir, &room, b, 1).await
}

/// With `--tls-cert`/`--tls-key` the admin API is HTTPS: a client that trusts the
/// certificate gets `/healthz` over TLS, and plain HTTP on that port is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_served_over_https_with_a_certificate() -> anyhow::Result<()> {
    use rustls::pki_types::ServerName;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = NatsServer::start()?;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-coordinator");
    std::fs::create_dir_all(&dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem())?;
    std::fs::write(&key_file, cert.signing_key.serialize_pem())?;
    let mut config = coordinator::Config::local(nats.url());
    config.tls = Some((cert_file, key_file));
    let c = coordinator::spawn(config)?;
    let addr = c.http_addr();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let plain = http_get(addr, "/healthz", &[]).await;
    assert!(!matches!(plain, Ok((200, _))), "plain HTTP: {plain:?}");
    Ok(())
}
