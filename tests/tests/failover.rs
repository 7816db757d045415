//! Failover with real processes: nodes killed with SIGKILL, stopped with SIGSTOP, cut off
//! from NATS, drained with SIGTERM; clients recover as PROTOCOL.md says, and the directory
//! never shows two nodes owning a room at one epoch.

use chaos::impair::{Impairment, Link, TcpProxy};
use chaos::{mint_tokens, Client, Participant, ParticipantConfig, PublishOpts};
use protocol::cluster::RoomAssignment;
use protocol::signal::ServerMessage;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::procs::{ProcSpec, Procs};
use tests::{room_name, wait_media, wait_until};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const WAIT: Duration = Duration::from_secs(30);

fn spec(nodes: &[(&str, &str)]) -> ProcSpec {
    ProcSpec::new(NODE, COORDINATOR, nodes)
        .node_flag("--resume-grace-secs=20")
        .node_flag("--room-empty-grace-secs=1")
}

/// Joins `room` as `user` through `node`, from `region`, and publishes audio and video.
async fn publisher_in(
    p: &Procs,
    node: &str,
    room: &str,
    user: &str,
    region: &str,
) -> anyhow::Result<Client> {
    let c = Client::connect(&p.ws_url(node)).await?;
    c.join_in_region(room, &p.token(room, user), region).await?;
    c.publish(PublishOpts::default()).await?;
    Ok(c)
}

/// Waits for the node's `reconnect` and follows it: a new socket to its URL (or the same
/// one), `resume`, publish again.
async fn follow_reconnect(c: &Client) -> anyhow::Result<(String, Client)> {
    let msg = c
        .wait_for(WAIT, |m| matches!(m, ServerMessage::Reconnect { .. }))
        .await?;
    let ServerMessage::Reconnect { reason, url } = msg else {
        unreachable!()
    };
    Ok((reason, c.reconnect(url.as_deref()).await?))
}

/// Invariant 1 on a room's directory history (`chaos::invariants`): one origin per epoch,
/// epochs never going back.
fn one_origin_per_epoch(room: &str, history: &[Option<RoomAssignment>]) {
    let room = protocol::RoomId::new(room).expect("room id");
    let check = chaos::invariants::single_origin(&room, history);
    assert!(check.passed(), "{check:?}");
}

/// Audio and video at a fifth of the usual rate: rooms of ten stay light on two cores.
fn light() -> PublishOpts {
    PublishOpts {
        video_pps: 20,
        audio_pps: 10,
        ..PublishOpts::default()
    }
}

/// Joins `room` as `user` through `node` and publishes audio and video.
async fn publisher(p: &Procs, node: &str, room: &str, user: &str) -> anyhow::Result<Client> {
    let c = Client::connect(&p.ws_url(node)).await?;
    c.join(room, &p.token(room, user)).await?;
    c.publish(PublishOpts::default()).await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_of_a_killed_node_resume_elsewhere() -> anyhow::Result<()> {
    let mut p = Procs::start(spec(&[("n1", "eu"), ("n2", "eu"), ("n3", "eu")])).await?;
    let room = room_name("kill");
    // a's socket is on n1, b's on n2; the room lives on one of them (or on n3).
    let a = publisher(&p, "n1", &room, "a").await?;
    let b = publisher(&p, "n2", &room, "b").await?;
    wait_media(&a, &["b"], 20).await?;
    wait_media(&b, &["a"], 20).await?;
    let host = a.joined().expect("joined").node.to_string();
    let before = p.assignment(&room).await?.expect("room assigned");
    p.signal(&host, "KILL")?;

    // Whoever's socket was on the dead node lost it; whoever's socket survived is told to
    // reconnect. Either way the client resumes (here by hand; the participant type of
    // chaos does it by itself) through a live node, and media flows again.
    let mut back = Vec::new();
    for (user, c) in [("a", &a), ("b", &b)] {
        let socket_node = if user == "a" { "n1" } else { "n2" };
        let url = if socket_node == host {
            let fallback = c.joined().expect("joined").fallback_urls;
            fallback.first().cloned().expect("a fallback url")
        } else {
            c.wait_for(WAIT, |m| matches!(m, ServerMessage::Reconnect { .. }))
                .await?;
            p.ws_url(socket_node)
        };
        back.push(c.reconnect(Some(&url)).await?);
    }
    let (a2, b2) = (&back[0], &back[1]);
    wait_media(a2, &["b"], 20).await?;
    wait_media(b2, &["a"], 20).await?;
    let after = p.assignment(&room).await?.expect("room still assigned");
    assert!(!after.serves(&before.node), "{after:?}");
    assert!(after.epoch > before.epoch, "{before:?} -> {after:?}");
    assert_eq!(a2.joined().unwrap().node, after.node);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_loses_its_rooms_and_serves_none_when_it_continues() -> anyhow::Result<()> {
    // n1 is the only node in `eu`: clients from `eu` are served there, through sockets on n2
    // and n3 in `us`.
    let mut p = Procs::start(spec(&[("n1", "eu"), ("n2", "us"), ("n3", "us")])).await?;
    let room = room_name("stop");
    let a = publisher_in(&p, "n2", &room, "a", "eu").await?;
    let b = publisher_in(&p, "n3", &room, "b", "eu").await?;
    // c's socket is on n1 itself: frozen with it.
    let c = publisher_in(&p, "n1", &room, "c", "eu").await?;
    assert_eq!(a.joined().unwrap().node.as_str(), "n1");
    wait_media(&a, &["b", "c"], 20).await?;
    wait_media(&b, &["a", "c"], 20).await?;
    let before = p.assignment(&room).await?.expect("assigned");
    p.signal("n1", "STOP")?;
    // Heartbeat silence: the coordinators declare n1 dead and move the room; the sessions
    // on n2 and n3 tell their clients to reconnect.
    let (why_a, a2) = follow_reconnect(&a).await?;
    let (why_b, b2) = follow_reconnect(&b).await?;
    assert_eq!(
        (why_a.as_str(), why_b.as_str()),
        ("node_failed", "node_failed")
    );
    wait_media(&a2, &["b"], 20).await?;
    wait_media(&b2, &["a"], 20).await?;
    let moved = p.assignment(&room).await?.expect("assigned");
    assert!(
        !moved.serves(&before.node) && moved.epoch > before.epoch,
        "{moved:?}"
    );
    assert_eq!(a2.joined().unwrap().node, moved.node);
    assert_eq!(b2.joined().unwrap().node, moved.node);

    p.signal("n1", "CONT")?;
    // Back, n1 learns it was declared dead (and sees the newer epoch): it stops serving
    // the room and sends c, still connected to it, to another node.
    let (why_c, c2) = follow_reconnect(&c).await?;
    assert_eq!(why_c, "fenced");
    wait_until(WAIT, "n1 fenced its room", || async {
        match p.rooms_on("n1").await {
            Ok(rooms) if rooms.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    // The room carries on where it moved, all three in it.
    wait_media(&c2, &["a", "b"], 20).await?;
    wait_media(&a2, &["b", "c"], 20).await?;
    assert_eq!(c2.joined().unwrap().node, moved.node);
    one_origin_per_epoch(&room, &p.kv_history(&room).await?);
    let rooms = p.rooms_on(moved.node.as_str()).await?;
    assert!(
        rooms.iter().any(|(r, m)| *r == room && m.len() == 3),
        "{rooms:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_fences_itself_and_its_clients_move() -> anyhow::Result<()> {
    let nats_port = chaos::bench::free_port()?;
    let link = Link::new(Impairment::default());
    let proxy = TcpProxy::start(
        "127.0.0.1:0".parse()?,
        ([127, 0, 0, 1], nats_port).into(),
        link.clone(),
    )
    .await?;
    let mut s = spec(&[("n1", "eu"), ("n2", "us"), ("n3", "us")]);
    s.nats_port = Some(nats_port);
    s.node_nats = vec![("n1".into(), format!("nats://{}", proxy.local_addr()))];
    let p = Procs::start(s).await?;
    let room = room_name("cut");
    // a's socket and media are on n1; b's socket is on n2, its media on n1.
    let a = publisher_in(&p, "n1", &room, "a", "eu").await?;
    let b = publisher_in(&p, "n2", &room, "b", "eu").await?;
    assert_eq!(b.joined().unwrap().node.as_str(), "n1");
    wait_media(&a, &["b"], 20).await?;
    wait_media(&b, &["a"], 20).await?;
    link.partition(true);
    // n1 stops hearing NATS while the other nodes do: it fences itself and sends its
    // clients to another node; the coordinators declare it dead and b is told to move.
    let (why_a, a2) = follow_reconnect(&a).await?;
    let (why_b, b2) = follow_reconnect(&b).await?;
    assert_eq!((why_a.as_str(), why_b.as_str()), ("fenced", "node_failed"));
    assert_ne!(a2.url(), p.ws_url("n1"), "sent to another node");
    wait_media(&a2, &["b"], 20).await?;
    wait_media(&b2, &["a"], 20).await?;
    assert!(p.rooms_on("n1").await?.is_empty(), "n1 still serves a room");
    let moved = p.assignment(&room).await?.expect("assigned");
    assert!(!moved.serves(&protocol::NodeId::new("n1")?), "{moved:?}");
    link.partition(false);
    one_origin_per_epoch(&room, &p.kv_history(&room).await?);
    drop(proxy);
    Ok(())
}

/// The publishers of drain room `r` that `c` receives (all but itself).
fn publishers_for(c: &Client, r: usize) -> Vec<&'static str> {
    const PUBLISHERS: [[&str; 2]; 3] = [["r0u0", "r0u1"], ["r1u0", "r1u1"], ["r2u0", "r2u1"]];
    let me = c
        .participant_id()
        .map(|u| u.to_string())
        .unwrap_or_default();
    PUBLISHERS[r].into_iter().filter(|p| *p != me).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_moves_every_participant_and_exits() -> anyhow::Result<()> {
    let mut p = Procs::start(
        spec(&[("n1", "eu"), ("n2", "us"), ("n3", "us")]).node_flag("--drain-batch=5"),
    )
    .await?;
    // Three rooms of ten on n1, the only node in `eu`; two publishers in each.
    let mut rooms = Vec::new();
    for r in 0..3 {
        let room = room_name(&format!("drain{r}"));
        let mut members = Vec::new();
        for i in 0..10 {
            let user = format!("r{r}u{i}");
            let c = Client::connect(&p.ws_url("n1")).await?;
            c.join_in_region(&room, &p.token(&room, &user), "eu")
                .await?;
            assert_eq!(c.joined().unwrap().node.as_str(), "n1");
            if i < 2 {
                c.publish(light()).await?;
            }
            members.push(c);
        }
        rooms.push((room, members));
    }
    for (r, (_, members)) in rooms.iter().enumerate() {
        for c in members {
            wait_media(c, &publishers_for(c, r), 10).await?;
        }
    }
    p.signal("n1", "TERM")?;
    // Everyone is told to move, follows, and gets the media again.
    let moved = futures::future::try_join_all(
        rooms
            .iter()
            .flat_map(|(_, members)| members.iter().map(follow_reconnect)),
    )
    .await?;
    for (reason, c) in &moved {
        assert_eq!(reason, "drain");
        assert_ne!(c.joined().unwrap().node.as_str(), "n1");
    }
    for (i, (_, c)) in moved.iter().enumerate() {
        wait_media(c, &publishers_for(c, i / 10), 10).await?;
    }
    wait_until(WAIT, "n1 exits", || {
        let gone = p.exited("n1");
        async move {
            if gone {
                Ok(())
            } else {
                Err("still running".to_string())
            }
        }
    })
    .await?;
    let status = p.cluster.proc_mut("n1")?.exited().expect("exited");
    assert!(status.success(), "n1 exited with {status}");
    // n1 closed its rooms before exiting (`room_closed`, flushed to NATS): the coordinators
    // take it out of every room's entry, which they do a moment later, not at once.
    let n1 = protocol::NodeId::new("n1")?;
    wait_until(WAIT, "the directory to drop n1 from every room", || async {
        for (room, _) in &rooms {
            let a = p.assignment(room).await.map_err(|e| e.to_string())?;
            match a {
                Some(a) if a.serves(&n1) => return Err(format!("{a:?}")),
                None => return Err(format!("{room} unassigned")),
                Some(_) => {}
            }
        }
        Ok(())
    })
    .await?;
    for (room, _) in &rooms {
        one_origin_per_epoch(room, &p.kv_history(room).await?);
    }
    // ... through n1's own leave: a drained node's rooms are not failed over as a dead one's
    // (its `room_closed` lost with the process would show here).
    let mut failed_over = 0.0;
    for c in p.cluster.coordinators() {
        let text = c.http_get("/metrics").await?;
        failed_over += chaos::bench::metric_sum(&text, "coord_rooms_failed_over_total");
    }
    assert_eq!(failed_over, 0.0, "rooms failed over after a drain");
    Ok(())
}

/// A participant that recovers by itself, joined through `node` (region `eu`).
async fn participant(p: &Procs, node: &str, room: &str, user: &str) -> anyhow::Result<Participant> {
    participant_in(p, node, room, user, "eu").await
}

async fn participant_in(
    p: &Procs,
    node: &str,
    room: &str,
    user: &str,
    region: &str,
) -> anyhow::Result<Participant> {
    let tokens = mint_tokens(
        p.secret(),
        tests::claims(room, user, 600),
        Duration::from_secs(600),
    );
    let config = ParticipantConfig {
        region: Some(region.into()),
        ..ParticipantConfig::default()
    };
    let who = Participant::join(&p.ws_url(node), room, tokens, config).await?;
    who.publish(light()).await?;
    Ok(who)
}

/// Waits until every participant of each room got packets from each other one after
/// `since`.
async fn everyone_receives_everyone(
    rooms: &[(String, Vec<Participant>)],
    since: tokio::time::Instant,
) -> anyhow::Result<()> {
    for (_, members) in rooms {
        each_receives_each(members.iter(), since).await?;
    }
    Ok(())
}

/// Waits until each of `members` got packets from each other one after `since`.
async fn each_receives_each<'a>(
    members: impl Iterator<Item = &'a Participant> + Clone,
    since: tokio::time::Instant,
) -> anyhow::Result<()> {
    for m in members.clone() {
        let me = m.participant_id().to_string();
        for other in members.clone() {
            let them = other.participant_id().to_string();
            if them != me {
                m.wait_media_since(&them, since, WAIT).await?;
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rooms_of_three_publishers_recover_from_a_kill_by_themselves() -> anyhow::Result<()> {
    let mut p = Procs::start(spec(&[("n1", "eu"), ("n2", "eu"), ("n3", "eu")])).await?;
    let nodes = ["n1", "n2", "n3"];
    let mut rooms = Vec::new();
    for r in 0..10 {
        let room = room_name(&format!("ten{r}"));
        let mut members = Vec::new();
        for i in 0..3 {
            // Sockets spread over the nodes: some on the victim, some elsewhere.
            let via = nodes[(r + i) % 3];
            members.push(participant(&p, via, &room, &format!("r{r}p{i}")).await?);
        }
        rooms.push((room, members));
    }
    everyone_receives_everyone(
        &rooms,
        tokio::time::Instant::now() - Duration::from_secs(60),
    )
    .await?;
    // The node hosting the most rooms dies.
    let mut hosted = BTreeMap::<String, usize>::new();
    for (_, members) in &rooms {
        *hosted
            .entry(members[0].joined().node.to_string())
            .or_default() += 1;
    }
    let victim = hosted
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| id.clone())
        .expect("rooms");
    eprintln!("   rooms per node {hosted:?}; killing {victim}");
    let killed_at = tokio::time::Instant::now();
    p.signal(&victim, "KILL")?;
    // Nobody does anything: every participant receives every other one again.
    everyone_receives_everyone(&rooms, killed_at).await?;
    for (room, members) in &rooms {
        for m in members {
            assert_ne!(m.joined().node.as_str(), victim, "{room}");
        }
        one_origin_per_epoch(room, &p.kv_history(room).await?);
        let a = p.assignment(room).await?.expect("assigned");
        assert!(!a.serves(&protocol::NodeId::new(&victim)?), "{a:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascaded_room_survives_the_death_of_its_origin_and_of_another_node() -> anyhow::Result<()>
{
    let mut p = Procs::start(spec(&[
        ("eu-1", "eu"),
        ("us-1", "us"),
        ("ap-1", "ap"),
        ("eu-2", "eu"),
    ]))
    .await?;
    let room = room_name("cascade");
    // One participant per region, each through its region's node: the room spans three
    // nodes, its origin in `eu` where it was opened.
    let a = participant_in(&p, "eu-1", &room, "a", "eu").await?;
    let b = participant_in(&p, "us-1", &room, "b", "us").await?;
    let c = participant_in(&p, "ap-1", &room, "c", "ap").await?;
    let all = [&a, &b, &c];
    for m in all {
        m.wait_media_from_others(WAIT).await?;
    }
    let before = p.assignment(&room).await?.expect("assigned");
    let origin = before.node.to_string();
    assert_eq!(
        a.joined().node.as_str(),
        origin,
        "a is served by the origin"
    );
    assert_eq!(before.nodes.len(), 3, "{before:?}");

    // The origin dies. b and c, on other nodes, keep receiving each other throughout; a
    // comes back through a live node; the origin role moves with the next epoch.
    let killed = tokio::time::Instant::now();
    p.signal(&origin, "KILL")?;
    a.wait_recoveries(1, WAIT).await?;
    each_receives_each(all.into_iter(), killed).await?;
    assert!(
        b.recoveries().is_empty() && c.recoveries().is_empty(),
        "b and c were untouched"
    );
    // Nobody saw a leave: a was away for less than the grace period.
    for m in [&b, &c] {
        let left: Vec<ServerMessage> = m
            .client()
            .messages()
            .into_iter()
            .filter(|msg| matches!(msg, ServerMessage::ParticipantLeft { .. }))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    let after = p.assignment(&room).await?.expect("assigned");
    assert!(
        after.epoch > before.epoch && after.node.as_str() != origin,
        "{after:?}"
    );

    // Another node of the room dies: its participants come back elsewhere too.
    let victim = b.joined().node.to_string();
    let killed = tokio::time::Instant::now();
    p.signal(&victim, "KILL")?;
    b.wait_recoveries(1, WAIT).await?;
    each_receives_each(all.into_iter(), killed).await?;
    for m in all {
        assert_ne!(m.joined().node.as_str(), victim);
        assert_ne!(m.joined().node.as_str(), origin);
    }
    let last = p.assignment(&room).await?.expect("assigned");
    assert!(!last.serves(&protocol::NodeId::new(&victim)?), "{last:?}");
    one_origin_per_epoch(&room, &p.kv_history(&room).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_join_of_a_burst_cut_by_a_kill_ends_joined_or_refused() -> anyhow::Result<()> {
    let mut p = Procs::start(spec(&[("n1", "eu"), ("n2", "eu"), ("n3", "eu")])).await?;
    let urls: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| p.ws_url(n)).collect();
    let rooms: Vec<String> = (0..8).map(|r| room_name(&format!("burst{r}"))).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let joins: Vec<_> = (0..48)
        .map(|i| {
            let url = urls[i % 3].clone();
            let room = rooms[i % rooms.len()].clone();
            let token = p.token(&room, &format!("u{i}"));
            let done = done.clone();
            tokio::spawn(async move {
                // Joins trickle in, so that the kill lands in the middle of them.
                tokio::time::sleep(Duration::from_millis(15 * i as u64)).await;
                // Bounded: a join that hangs is the failure this test looks for.
                tokio::time::timeout(Duration::from_secs(20), async move {
                    let c = Client::connect(&url).await?;
                    c.join(&room, &token).await?;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok::<Client, chaos::Error>(c)
                })
                .await
            })
        })
        .collect();
    // The burst is under way, every room opened: one node dies in the middle of it.
    wait_until(WAIT, "a third of the joins", || {
        let n = done.load(std::sync::atomic::Ordering::Relaxed);
        async move {
            if n >= 16 {
                Ok(())
            } else {
                Err(format!("{n} joined"))
            }
        }
    })
    .await?;
    // The node hosting the most rooms.
    let mut hosted = BTreeMap::<String, usize>::new();
    for room in &rooms {
        if let Some(a) = p.assignment(room).await? {
            *hosted.entry(a.node.to_string()).or_default() += 1;
        }
    }
    let victim = hosted
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| id.clone())
        .expect("rooms");
    let v = ["n1", "n2", "n3"]
        .iter()
        .position(|n| *n == victim)
        .expect("a node");
    p.signal(&victim, "KILL")?;
    let (mut joined, mut refused) = (0, Vec::new());
    for (i, j) in joins.into_iter().enumerate() {
        let through_victim = i % 3 == v;
        match j.await? {
            Ok(Ok(_)) => joined += 1,
            // Through the dead node a join may fail any way a dead server fails a client.
            Ok(Err(_)) if through_victim => {}
            // Through a live node it succeeds: a room on the dead node moves first.
            Ok(Err(e)) => refused.push(e.to_string()),
            Err(_) => anyhow::bail!("join {i} hung for 20 s"),
        }
    }
    eprintln!("   {joined} of 48 joined; {victim} killed, rooms per node {hosted:?}");
    assert!(
        refused.is_empty(),
        "joins through live nodes refused: {refused:?}"
    );
    // Joins after the kill succeed through the live nodes.
    for (i, room) in rooms.iter().enumerate() {
        let c = Client::connect(&urls[(v + 1 + i % 2) % 3]).await?;
        c.join(room, &p.token(room, &format!("late{i}"))).await?;
        assert_ne!(c.joined().unwrap().node.as_str(), victim);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_of_a_dead_node_who_does_not_come_back_leaves_after_the_grace(
) -> anyhow::Result<()> {
    let mut p = Procs::start(
        ProcSpec::new(NODE, COORDINATOR, &[("eu-1", "eu"), ("us-1", "us")])
            .node_flag("--resume-grace-secs=3"),
    )
    .await?;
    let room = room_name("gone");
    let a = publisher_in(&p, "eu-1", &room, "a", "eu").await?;
    let b = publisher_in(&p, "us-1", &room, "b", "us").await?;
    wait_media(&b, &["a"], 20).await?;
    let cursor = b.message_count();
    p.signal("eu-1", "KILL")?;
    drop(a);
    // a's tracks end at once; a itself stays for the grace period, then leaves.
    b.wait_for_since(cursor, WAIT, |m| {
        matches!(m, ServerMessage::TrackUnpublished { participant, .. } if participant.as_str() == "a")
    })
    .await?;
    let left_at = b
        .wait_for_since(
            cursor,
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { id } if id.as_str() == "a"),
        )
        .await?;
    let msgs = b.messages()[cursor..].to_vec();
    let unpublished = msgs
        .iter()
        .position(|m| matches!(m, ServerMessage::TrackUnpublished { .. }))
        .expect("unpublished");
    let left = msgs.iter().position(|m| *m == left_at).expect("left");
    assert!(unpublished < left, "{msgs:?}");
    assert!(b.participants().iter().all(|p| p.id.as_str() != "a"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_socket_node_freezes_moves_by_itself() -> anyhow::Result<()> {
    let mut p = Procs::start(spec(&[("n1", "eu"), ("n2", "us")])).await?;
    let room = room_name("frozen");
    // a's socket is on n1, its media on n2 (it joins from `us`).
    let tokens = mint_tokens(
        p.secret(),
        tests::claims(&room, "a", 600),
        Duration::from_secs(600),
    );
    let mut config = ParticipantConfig {
        region: Some("us".into()),
        ..ParticipantConfig::default()
    };
    config.recovery.silence = Some(Duration::from_secs(3));
    let a = Participant::join(&p.ws_url("n1"), &room, tokens, config).await?;
    a.publish(light()).await?;
    let b = participant_in(&p, "n2", &room, "b", "us").await?;
    assert_eq!(a.joined().node.as_str(), "n2");
    a.wait_media_from_others(WAIT).await?;
    b.wait_media_from_others(WAIT).await?;
    p.signal("n1", "STOP")?;
    // n1 answers nothing, its socket stays open: a notices the silence and resumes through
    // n2, the fallback its `joined` named.
    let r = a.wait_recoveries(1, WAIT).await?;
    assert!(
        matches!(r[0].cause, chaos::Cause::Silent(_)),
        "{:?}",
        r[0].cause
    );
    a.wait_media_from_others(WAIT).await?;
    let since = r[0].rejoined.as_ref().expect("rejoined").at;
    b.wait_media_since("a", since, WAIT).await?;
    assert_eq!(a.url(), p.ws_url("n2"));
    p.signal("n1", "CONT")?;
    Ok(())
}
