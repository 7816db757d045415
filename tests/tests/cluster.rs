//! The cluster end to end: a real nats-server, two coordinators and three nodes in two
//! regions, synthetic WebRTC clients connecting to any node.

use chaos::{Client, PublishOpts};
use coordinator::CoordinatorHandle;
use protocol::signal::ServerMessage;
use std::time::Duration;
use tests::nats::NatsServer;
use tests::{http_get, join, room_name, wait_numbered_messages, wait_until, Config, NodeHandle};

const WAIT: Duration = Duration::from_secs(30);

struct Sandbox {
    nats: NatsServer,
    coordinators: Vec<CoordinatorHandle>,
    nodes: Vec<NodeHandle>,
}

fn node_config(nats: &str, id: &str, region: &str) -> Config {
    let mut c = Config::local_dev();
    c.node_id = protocol::NodeId::new(id).unwrap();
    c.region = region.into();
    c.nats_url = Some(nats.into());
    c.resume_grace = Duration::ZERO;
    c.room_empty_grace = Duration::from_secs(1);
    c
}

impl Sandbox {
    /// NATS, two coordinators, nodes n1, n2 (region eu) and n3 (region us); returns once
    /// every coordinator sees every node.
    async fn start() -> anyhow::Result<Sandbox> {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl Fn(&mut Config)) -> anyhow::Result<Sandbox> {
        tests::init_logs();
        let nats = NatsServer::start()?;
        let coordinators = (0..2)
            .map(|_| coordinator::spawn(coordinator::Config::local(nats.coordinator_url())))
            .collect::<Result<Vec<_>, _>>()?;
        let nodes = [("n1", "eu"), ("n2", "eu"), ("n3", "us")]
            .iter()
            .map(|(id, region)| {
                let mut c = node_config(&nats.node_url(id)?, id, region);
                tweak(&mut c);
                node::spawn(c)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sb = Sandbox {
            nats,
            coordinators,
            nodes,
        };
        sb.wait_cluster_up().await?;
        Ok(sb)
    }

    async fn wait_cluster_up(&self) -> anyhow::Result<()> {
        wait_until(WAIT, "coordinators to see all three nodes", || async {
            for c in &self.coordinators {
                let snap = c.snapshot();
                let healthy = snap.nodes.iter().filter(|n| n.healthy).count();
                if !snap.ready
                    || healthy < self.nodes.len()
                    || snap.live_coordinators.len() < self.coordinators.len()
                {
                    return Err(format!("{snap:?}"));
                }
            }
            Ok(())
        })
        .await
    }

    fn rooms_per_node(&self) -> Vec<i64> {
        self.nodes.iter().map(|n| n.counters().rooms).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_created_at_once_spread_over_the_nodes() -> anyhow::Result<()> {
    let sb = Sandbox::start().await?;
    let joins = (0..300).map(|i| {
        let node = &sb.nodes[i % 3];
        async move { join(node, &format!("spread-{i}"), &format!("u{i}")).await }
    });
    let clients: Vec<Client> = futures::future::try_join_all(joins).await?;
    let per_node = sb.rooms_per_node();
    let total: i64 = per_node.iter().sum();
    assert_eq!(total, 300, "every room hosted exactly once: {per_node:?}");
    let max = *per_node.iter().max().unwrap() as f64;
    assert!(
        max / 100.0 <= 1.25,
        "max/mean = {:.2}: {per_node:?}",
        max / 100.0
    );
    // A client is served in its socket node's region: the eu sockets (n1, n2) share the two
    // eu nodes, so about half of them reach a room on the other one; us sockets stay on n3.
    let remote = clients
        .iter()
        .zip((0..300).map(|i| i % 3))
        .filter(|(c, i)| {
            c.joined().unwrap().node.as_str() != sb.nodes[*i].config().node_id.as_str()
        })
        .count();
    eprintln!("rooms per node {per_node:?}; {remote} of 300 joins were routed to another node");
    assert!(remote >= 70, "joins reach rooms on other nodes: {remote}");
    for (c, i) in clients.iter().zip((0..300).map(|i| i % 3)) {
        let served = c.joined().unwrap().node;
        let region = if served.as_str() == "n3" { "us" } else { "eu" };
        let socket_region = if i == 2 { "us" } else { "eu" };
        assert_eq!(region, socket_region, "served in the socket's region");
    }
    for c in &clients {
        c.leave().await?;
    }
    wait_until(WAIT, "every room to close", || async {
        let r = sb.rooms_per_node();
        if r.iter().all(|n| *n == 0) {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_through_three_nodes_are_served_by_one_node_per_region() -> anyhow::Result<()>
{
    let sb = Sandbox::start().await?;
    let room = room_name("crowd");
    let joins = (0..50).map(|i| {
        let node = &sb.nodes[i % 3];
        let room = room.clone();
        async move { join(node, &room, &format!("p{i}")).await }
    });
    let clients: Vec<Client> = futures::future::try_join_all(joins).await?;
    let per_node = sb.rooms_per_node();
    // One eu node serves the 34 clients of n1 and n2, the us node n3 its own 16.
    assert_eq!(per_node.iter().sum::<i64>(), 2, "{per_node:?}");
    assert_eq!(per_node[2], 1, "{per_node:?}");
    let eu = sb.nodes[..2]
        .iter()
        .find(|n| n.counters().rooms == 1)
        .unwrap();
    for (node, want) in [(eu, 34), (&sb.nodes[2], 16)] {
        wait_until(WAIT, "each node to see the whole room", || async {
            let snap = node.snapshot().await;
            let room = &snap["rooms"][0];
            let members = room["members"].as_array().map(Vec::len);
            let remote = room["remote"].as_array().map(Vec::len);
            if (members, remote) == (Some(want), Some(50 - want)) {
                Ok(())
            } else {
                Err(format!("{members:?} local, {remote:?} remote: {snap}"))
            }
        })
        .await?;
    }

    clients[0]
        .publish(PublishOpts {
            video_pps: 50,
            ..Default::default()
        })
        .await?;
    for (i, c) in clients.iter().enumerate().skip(1) {
        c.wait_received_from("p0", 25, WAIT)
            .await
            .map_err(|e| anyhow::anyhow!("client p{i}: {e}"))?;
    }
    for c in &clients {
        c.leave().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_in_order() -> anyhow::Result<()> {
    let sb = Sandbox::start().await?;
    let room = room_name("chat");
    let a = join(&sb.nodes[0], &room, "alice").await?;
    let b = join(&sb.nodes[1], &room, "bob").await?;
    let c = join(&sb.nodes[2], &room, "carol").await?;
    for i in 0..50 {
        a.send_message("bob", serde_json::json!({ "n": i })).await?;
        a.send_message("carol", serde_json::json!({ "n": i }))
            .await?;
    }
    for client in [&b, &c] {
        wait_numbered_messages(client, "alice", 50, WAIT).await?;
    }
    let cursor = a.message_count();
    a.send_message("nobody", serde_json::json!(1)).await?;
    a.wait_for_since(cursor, WAIT, |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: protocol::ErrorCode::NotFound,
                ..
            }
        )
    })
    .await?;
    // Membership crosses nodes too: carol leaves, alice and bob hear of it.
    let cursors = (a.message_count(), b.message_count());
    c.leave().await?;
    for (client, cursor) in [(&a, cursors.0), (&b, cursors.1)] {
        client
            .wait_for_since(
                cursor,
                WAIT,
                |m| matches!(m, ServerMessage::ParticipantLeft { id } if id.as_str() == "carol"),
            )
            .await?;
    }
    a.leave().await?;
    b.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_survives_a_nats_restart_and_joins_resume() -> anyhow::Result<()> {
    let mut sb = Sandbox::start().await?;
    let room = room_name("restart");
    let a = join(&sb.nodes[0], &room, "a").await?;
    let b = join(&sb.nodes[1], &room, "b").await?;
    a.publish(PublishOpts::default()).await?;
    b.wait_received_from("a", 100, WAIT).await?;

    sb.nats.stop();
    let during = b.received_from("a");
    b.wait_received_from("a", during + 100, WAIT).await?;
    sb.nats.restart()?;
    let back = std::time::Instant::now();
    wait_until(
        Duration::from_secs(5),
        "nodes ready after the restart",
        || async {
            for n in &sb.nodes {
                let (status, _) = http_get(n.http_addr(), "/readyz", &[])
                    .await
                    .map_err(|e| e.to_string())?;
                if status != 200 {
                    return Err(format!("{} not ready", n.config().node_id));
                }
            }
            Ok(())
        },
    )
    .await?;
    // A new join through another node succeeds within 5 s of NATS being back.
    let mut joined = None;
    while back.elapsed() < Duration::from_secs(5) && joined.is_none() {
        match join(&sb.nodes[2], &room, "c").await {
            Ok(c) => joined = Some(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = joined.ok_or_else(|| anyhow::anyhow!("no join within 5 s of NATS being back"))?;
    eprintln!("join after restart took {:?}", back.elapsed());
    c.wait_received_from("a", 50, WAIT).await?;
    let before = b.received_from("a");
    b.wait_received_from("a", before + 50, WAIT).await?;
    for x in [&a, &b, &c] {
        x.leave().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_ready_once_nats_and_a_coordinator_can_place_its_joins() -> anyhow::Result<()> {
    tests::init_logs();
    let mut nats = NatsServer::prepare(NatsServer::free_port()?)?;
    let node = node::spawn(node_config(&nats.node_url("early")?, "early", "eu"))?;
    let readyz = || async {
        http_get(node.http_addr(), "/readyz", &[])
            .await
            .map_err(|e| e.to_string())
    };
    let (status, _) = readyz().await.map_err(anyhow::Error::msg)?;
    assert_eq!(status, 503);
    nats.start_prepared()?;
    // NATS alone is not enough: nobody would place a join.
    wait_until(
        WAIT,
        "node connected to NATS, waiting for a coordinator",
        || async {
            match readyz().await? {
                (503, body) if body.contains("coordinator") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    let _coordinator = coordinator::spawn(coordinator::Config::local(nats.coordinator_url()))?;
    wait_until(WAIT, "node ready once a coordinator counts it", || async {
        match readyz().await? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    // Ready means a join succeeds, at once.
    join(&node, &room_name("first"), "first")
        .await?
        .leave()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_closes_and_leaves_the_directory() -> anyhow::Result<()> {
    let sb = Sandbox::start().await?;
    let room = room_name("short");
    let a = join(&sb.nodes[0], &room, "a").await?;
    let host = a.joined().unwrap().node;
    let coord = &sb.coordinators[0];
    let auth = [("Authorization", "Bearer dev-admin-token")];
    let listed = || async {
        let (_, body) = http_get(coord.http_addr(), "/rooms", &auth)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<bool, String>(body.contains(&format!("\"{room}\"")))
    };
    assert!(
        listed().await.map_err(anyhow::Error::msg)?,
        "room listed while in use"
    );
    a.leave().await?;
    wait_until(
        WAIT,
        "room gone from the directory and its node",
        || async {
            let hosted: i64 = sb.rooms_per_node().iter().sum();
            if !listed().await? && hosted == 0 {
                Ok(())
            } else {
                Err(format!("hosted {hosted} on {host}"))
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_resumes_through_another_node() -> anyhow::Result<()> {
    let sb = Sandbox::start_with(|c| c.resume_grace = Duration::from_secs(20)).await?;
    let room = room_name("move");
    let a = join(&sb.nodes[0], &room, "a").await?;
    let b = join(&sb.nodes[1], &room, "b").await?;
    b.publish(PublishOpts::default()).await?;
    a.wait_received_from("b", 50, WAIT).await?;
    let token = a.joined().unwrap().resume_token;
    let cursor = b.message_count();
    a.close_abruptly().await;

    // The same participant comes back through the third node.
    let a2 = Client::connect(&sb.nodes[2].ws_url()).await?;
    let joined = a2.resume(&token).await?;
    assert_eq!(joined.participant.id.as_str(), "a");
    assert_eq!(
        joined
            .participants
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    a2.wait_received_from("b", 50, WAIT).await?;
    a2.publish(PublishOpts::default()).await?;
    b.wait_received_from("a", 50, WAIT).await?;
    assert!(
        !b.messages()[cursor..]
            .iter()
            .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })),
        "b saw a leave"
    );
    // Tokens of unknown rooms, or forged for a known room, are refused.
    let c = Client::connect(&sb.nodes[1].ws_url()).await?;
    assert!(c.resume("nope.nope").await.is_err());
    // The real participant's claims, signed with another secret: refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims =
        protocol::token::verify_resume(sb.nodes[0].config().api_secret.as_bytes(), &token, now)?;
    let forged = protocol::token::mint_resume(b"not the cluster's secret", &claims);
    assert!(c.resume(&forged).await.is_err());
    a2.leave().await?;
    b.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_keep_succeeding_when_a_coordinator_dies_mid_burst() -> anyhow::Result<()> {
    let mut sb = Sandbox::start().await?;
    let victim = sb.coordinators.remove(0);
    let sb = sb;
    let rooms: Vec<String> = (0..120)
        .map(|i| format!("{}-{i}", room_name("kill")))
        .collect();
    let nodes = &sb.nodes;
    let joins = rooms.iter().enumerate().map(|(i, room)| async move {
        // Arrivals spread over ~1.5 s, so the kill below lands inside the burst.
        tokio::time::sleep(Duration::from_millis(12 * i as u64)).await;
        let node = &nodes[i % 3];
        // A join whose allocation was in flight at the dying coordinator is retried by the
        // node once; the client retries on top of that, as a real client would.
        let mut last = None;
        for _ in 0..3 {
            match join(node, room, &format!("k{i}")).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap())
    });
    let burst = futures::future::join_all(joins);
    let killer = async {
        // Kill once the burst is under way, while allocations are in flight.
        let ready = wait_until(WAIT, "a third of the rooms hosted", || async {
            let hosted: i64 = sb.rooms_per_node().iter().sum();
            if hosted >= 40 {
                Ok(())
            } else {
                Err(format!("{hosted}"))
            }
        })
        .await;
        let hosted_at_kill: i64 = sb.rooms_per_node().iter().sum();
        victim.kill();
        ready.map(|_| hosted_at_kill)
    };
    let (results, hosted_at_kill) = tokio::join!(burst, killer);
    let hosted_at_kill = hosted_at_kill?;
    eprintln!("coordinator killed with {hosted_at_kill} of 120 rooms hosted");
    assert!(hosted_at_kill < 120, "the kill came after the burst");
    let clients: Vec<Client> = results.into_iter().collect::<anyhow::Result<_>>()?;
    assert_eq!(sb.rooms_per_node().iter().sum::<i64>(), 120);

    // After the kill, new joins go through the surviving coordinator.
    let late = join(&sb.nodes[0], &room_name("after"), "late").await?;

    // No room ever had two primaries: every key's history holds exactly one assignment.
    let nats = tests::fake_node::connect(&sb.nats.url()).await?;
    let dir = coordinator::RoomDirectory::open(&nats, 1).await?;
    for room in &rooms {
        let id = protocol::RoomId::new(room.clone()).unwrap();
        let history = dir.history(&id).await?;
        let assignments: Vec<_> = history
            .iter()
            .filter_map(|e| e.assignment.as_ref())
            .collect();
        assert_eq!(assignments.len(), 1, "{room}: {history:?}");
        let c = clients
            .iter()
            .find(|c| c.joined().unwrap().room.as_str() == room)
            .unwrap();
        assert_eq!(c.joined().unwrap().node, assignments[0].node, "{room}");
    }
    for c in clients.iter().chain([&late]) {
        c.leave().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_remote_join_is_refused_by_the_rooms_node() -> anyhow::Result<()> {
    use protocol::cluster::{self as wire, JoinProof, RemoteJoin, RemoteJoinReply};
    use protocol::token::{self, Claims, ResumeClaims};
    let sb = Sandbox::start().await?;
    let room = room_name("forged");
    let alice = join(&sb.nodes[0], &room, "alice").await?;
    // The room's node: the one that counts the room.
    wait_until(WAIT, "one node to host the room", || async {
        let per_node = sb.rooms_per_node();
        if per_node.contains(&1) {
            Ok(())
        } else {
            Err(format!("{per_node:?}"))
        }
    })
    .await?;
    let host = sb.rooms_per_node().iter().position(|n| *n == 1).unwrap();
    let host = &sb.nodes[host];
    let secret = host.config().api_secret.clone();
    let room_id = protocol::RoomId::new(&room)?;
    let mallory = |room: &str| tests::claims(room, "mallory", 600);
    let nats = tests::nats::connect(&sb.nats.url()).await?;
    let ask = |proof: JoinProof| RemoteJoin {
        v: wire::VERSION,
        room: room_id.clone(),
        proof,
        session_node: protocol::NodeId::new("n-forger").unwrap(),
        epoch: 0,
        nodes: Vec::new(),
        settings: None,
    };
    let now = tests::now_unix();
    let resume_for_other_room = ResumeClaims::new(
        &mallory("elsewhere"),
        host.config().node_id.clone(),
        "x".into(),
        now,
        600,
    );
    let forged: [(&str, JoinProof, protocol::ErrorCode); 4] = [
        (
            "signed with another secret",
            JoinProof::Join(token::mint(b"not-the-cluster-secret", &mallory(&room))),
            protocol::ErrorCode::Unauthorized,
        ),
        (
            "a token for another room",
            JoinProof::Join(token::mint(secret.as_bytes(), &mallory("elsewhere"))),
            protocol::ErrorCode::Forbidden,
        ),
        (
            "a join token passed as a resume token",
            JoinProof::Resume(token::mint(secret.as_bytes(), &mallory(&room))),
            protocol::ErrorCode::Unauthorized,
        ),
        (
            "a resume token for another room",
            JoinProof::Resume(token::mint_resume(
                secret.as_bytes(),
                &resume_for_other_room,
            )),
            protocol::ErrorCode::Forbidden,
        ),
    ];
    for (what, proof, want) in forged {
        let payload = serde_json::to_vec(&ask(proof))?;
        let msg = nats
            .request(wire::node_join(&host.config().node_id), payload.into())
            .await?;
        match serde_json::from_slice::<RemoteJoinReply>(&msg.payload)? {
            RemoteJoinReply::Error { code, .. } if code == want => {}
            other => anyhow::bail!("{what}: expected {want:?}, got {other:?}"),
        }
    }
    // An old-style request with bare claims and no token is not even understood.
    let bare = serde_json::json!({
        "v": wire::VERSION, "room": room, "session_node": "n-forger",
        "claims": Claims::new(room_id.clone(), protocol::UserId::new("mallory")?, now, 600),
    });
    let msg = nats
        .request(
            wire::node_join(&host.config().node_id),
            serde_json::to_vec(&bare)?.into(),
        )
        .await?;
    match serde_json::from_slice::<RemoteJoinReply>(&msg.payload)? {
        RemoteJoinReply::Error {
            code: protocol::ErrorCode::BadRequest,
            ..
        } => {}
        other => anyhow::bail!("bare claims: expected bad_request, got {other:?}"),
    }
    // A real join through another node still works, and mallory never appeared.
    let other = sb
        .nodes
        .iter()
        .find(|n| n.config().node_id != host.config().node_id);
    let cursor = alice.message_count();
    let bob = join(other.unwrap(), &room, "bob").await?;
    alice
        .wait_for_since(cursor, WAIT, |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.id.as_str() == "bob")
        })
        .await?;
    let seen: Vec<String> = alice
        .participants()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(seen, ["bob"], "only bob joined alice's room");
    bob.leave().await?;
    alice.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_bounded_number_of_cluster_requests_at_once() -> anyhow::Result<()> {
    use protocol::cluster::{self as wire, JoinProof, RemoteJoin, RemoteJoinReply};
    let sb = Sandbox::start_with(|c| c.limits.cluster_requests = 1).await?;
    let room = room_name("busy");
    let host = &sb.nodes[0];
    let secret = host.config().api_secret.clone();
    let nats = tests::nats::connect(&sb.nats.url()).await?;
    // Fifty remote joins at once, each with a valid token: the node serves one at a time
    // and answers the others at once that it is busy.
    let asks = (0..50).map(|i| {
        let claims = tests::claims(&room, &format!("u{i}"), 600);
        let ask = RemoteJoin {
            v: wire::VERSION,
            room: protocol::RoomId::new(&room).unwrap(),
            proof: JoinProof::Join(protocol::token::mint(secret.as_bytes(), &claims)),
            session_node: protocol::NodeId::new("n-elsewhere").unwrap(),
            epoch: 0,
            nodes: Vec::new(),
            settings: None,
        };
        let (nats, subject) = (nats.clone(), wire::node_join(&host.config().node_id));
        async move {
            let msg = nats
                .request(subject, serde_json::to_vec(&ask)?.into())
                .await?;
            anyhow::Ok(serde_json::from_slice::<RemoteJoinReply>(&msg.payload)?)
        }
    });
    let mut busy = 0;
    for reply in futures::future::join_all(asks).await {
        match reply? {
            RemoteJoinReply::Error {
                code: protocol::ErrorCode::Unavailable,
                message,
            } if message.contains("busy") => busy += 1,
            _ => {}
        }
    }
    assert!(
        busy > 0,
        "fifty requests at once, one permit: some were refused"
    );
    let (_, metrics) = http_get(host.http_addr(), "/metrics", &[]).await?;
    assert!(
        metrics.contains("limits_hit_total{limit=\"cluster_requests\"}"),
        "{metrics}"
    );
    // Clients still join through it.
    let alice = join(host, &room_name("after"), "alice").await?;
    alice.leave().await?;
    Ok(())
}
