//! Allocation: spreading rooms, surviving a killed coordinator, a dead node or a NATS outage.

use super::*;

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
        draining: false,
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

/// A coordinator mirrors the directory in memory. One started after rooms were written
/// mirrors them all. A join to a room it holds is read from KV and answered as stored; a
/// new room is created without a read. A room whose key has only history (closed behind the
/// mirror's back) is not created afresh: the create conflicts, KV is read, and the room
/// reopens at the next epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_mirrors_the_directory_and_a_closed_room_still_reopens_from_kv(
) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let nodes = fake_nodes(&nats, &[("a", "eu")]).await;
    let client = fake_node::connect(&nats.url()).await?;
    let dir = RoomDirectory::open(&client, 1).await?;
    let written = |room: &str| RoomAssignment {
        v: VERSION,
        room: RoomId::new(room).unwrap(),
        node: nodes[0].id().clone(),
        epoch: 3,
        coordinator: "elsewhere".into(),
        assigned_ms: 1,
        nodes: vec![room_node(&nodes[0])],
    };
    let rooms: Vec<String> = (0..20).map(|i| room_name(&format!("mirror{i}"))).collect();
    for room in &rooms {
        let w = dir.create(&written(room)).await?;
        anyhow::ensure!(
            w != coordinator::directory::Write::Conflict,
            "{room} exists"
        );
    }
    let c = start_coordinator(&nats, "c1");
    wait_cluster(&[&c], 1).await?;
    let coords = [c];
    wait_counts(
        &coords,
        &[("coord_directory_synced", 1), ("coord_directory_rooms", 20)],
    )
    .await?;

    let (served, _) = allocate(&client, &rooms[7]).await?;
    assert_eq!(served, written(&rooms[7]), "answered as stored");
    assert_eq!(checked_history(&dir, &rooms[7]).await?.len(), 1, "no write");
    let fresh = room_name("mirror-new");
    let (created, _) = allocate(&client, &fresh).await?;
    assert_eq!(created.epoch, 1);
    wait_counts(
        &coords,
        &[
            ("coord_directory_reads_total{source=\"mirror\"}", 1),
            ("coord_directory_reads_total{source=\"kv\"}", 1),
            ("coord_directory_conflicts_total", 0),
            ("coord_directory_rooms", 21),
        ],
    )
    .await?;

    // Closed behind the mirror's back: only a delete marker is left of it.
    let closed = RoomId::new(&rooms[3])?;
    dir.store()
        .delete(protocol::cluster::token(closed.as_str()))
        .await?;
    wait_counts(&coords, &[("coord_directory_rooms", 20)]).await?;
    let (reopened, _) = allocate(&client, &rooms[3]).await?;
    assert_eq!(reopened.epoch, 4, "the epochs go on: {reopened:?}");
    wait_counts(
        &coords,
        &[
            ("coord_directory_reads_total{source=\"mirror\"}", 2),
            ("coord_directory_reads_total{source=\"kv\"}", 2),
            ("coord_directory_conflicts_total", 1),
            ("coord_directory_rooms", 21),
        ],
    )
    .await?;
    Ok(())
}
