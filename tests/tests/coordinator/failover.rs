//! Node failure detection: probes, heartbeat silence and suspicion.

use super::*;

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
