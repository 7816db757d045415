//! The media cluster on a JetStream cluster of three nats-servers (`chaos::sandbox` with
//! `nats_servers(3)`), and `kill -9` of the server a media node is connected to, made leader
//! of the room directory's stream first (the worst case for the directory). Its clients
//! (nodes, coordinators) reconnect to the other servers well within the death timeout, so
//! nobody is declared dead, told to reconnect or told that someone left; media flows on;
//! a new member joins an existing room at once (placement reads the directory, which any
//! replica answers). A new room waits for the directory's write: until the two remaining
//! servers elect a new stream leader (nats-server's raft election timeout, 4–9 s) the
//! coordinators answer `unavailable`, then it is placed (three replicas, two keep a
//! quorum). Back, the server rejoins the stream and carries the quorum when another server
//! is killed the same way.

use anyhow::{bail, ensure, Context, Result};
use chaos::bench;
use chaos::sandbox::{Cluster, ClusterSpec, NodeSpec};
use chaos::{Client, PublishOpts, TrackStats};
use futures::StreamExt;
use protocol::cluster::{self as wire, RoomAssignment};
use protocol::signal::ServerMessage;
use protocol::RoomId;
use std::time::{Duration, Instant};
use tests::{room_name, wait_media, wait_until};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const WAIT: Duration = Duration::from_secs(30);
/// The coordinators' (and the nodes') death timeout, `--node-timeout-ms` left at its default.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// After a kill, how long nobody may be declared dead: twice the death timeout, counted from
/// when every client of the killed server is connected again.
const WATCH: Duration = Duration::from_secs(2 * NODE_TIMEOUT.as_secs());
/// The directory's stream (`KV_` + bucket).
const ROOMS_STREAM: &str = "KV_rooms";
/// Video and audio packets per second of each publisher.
const VIDEO_PPS: u32 = 50;
const AUDIO_PPS: u32 = 25;

/// Two UDP ranges of 100 ports for the two nodes, in 14000–19999: below the blocks of
/// `tests::procs` (20000–31999) and of the chaos tools, and below the ephemeral range. The
/// block is random so that two runs of this test on one machine hardly meet.
fn udp_ranges() -> [(u16, u16); 2] {
    let lo = 14000 + 200 * rand::Rng::gen_range(&mut rand::thread_rng(), 0..30u16);
    [(lo, lo + 99), (lo + 100, lo + 199)]
}

/// Three nats-servers (monitoring on), two coordinators, `n1` in `eu` and `n2` in `us`.
async fn start(dir: &std::path::Path) -> Result<Cluster> {
    tests::init_logs();
    let [r1, r2] = udp_ranges();
    let node = |id: &str, region: &str, ports| {
        NodeSpec::new(id, region, ports)
            .flag("--resume-grace-secs=20")
            .flag("--room-empty-grace-secs=1")
    };
    let mut spec = ClusterSpec::new(dir)
        .nats_servers(3)
        .coordinator("c1")
        .coordinator("c2")
        .node(node("n1", "eu", r1))
        .node(node("n2", "us", r2));
    spec.nats.monitor = true;
    spec.node_bin = NODE.into();
    spec.coordinator_bin = COORDINATOR.into();
    spec.child_log = "info,node=debug".into();
    spec.ready_timeout = Duration::from_secs(60);
    Cluster::start(spec).await
}

fn token(cluster: &Cluster, room: &str, user: &str) -> String {
    protocol::token::mint(
        cluster.api_secret().as_bytes(),
        &tests::claims(room, user, 600),
    )
}

fn light() -> PublishOpts {
    PublishOpts {
        video_pps: VIDEO_PPS,
        audio_pps: AUDIO_PPS,
        ..PublishOpts::default()
    }
}

/// Joins `room` as `user` through `node`, from `region`, and publishes audio and video.
async fn publisher(
    cluster: &Cluster,
    node: &str,
    region: &str,
    room: &str,
    user: &str,
) -> Result<Client> {
    let c = Client::connect(&cluster.node(node)?.ws_url()).await?;
    c.join_in_region(room, &token(cluster, room, user), region)
        .await?;
    c.publish(light()).await?;
    Ok(c)
}

/// The nats-server (other than the `down` ones) whose `/connz` lists a connection named
/// `name` (`node n1`), if one does.
async fn server_of(cluster: &Cluster, name: &str, down: &[&str]) -> Result<Option<String>> {
    for s in cluster.nats_servers().filter(|s| !down.contains(&s.id())) {
        if clients_of(cluster, s.id()).await?.iter().any(|c| c == name) {
            return Ok(Some(s.id().to_owned()));
        }
    }
    Ok(None)
}

/// The client URL of a server that is none of `avoid`.
fn url_avoiding(cluster: &Cluster, avoid: &[&str]) -> Result<String> {
    cluster
        .nats_servers()
        .find(|s| !avoid.contains(&s.id()))
        .and_then(|s| {
            // The cluster's URL of that server, with the credentials in it.
            let port = format!(":{}", s.port());
            cluster.nats_url().split(',').find(|u| u.ends_with(&port))
        })
        .map(str::to_owned)
        .context("a server to avoid none of them")
}

/// Leader and replicas of the directory's stream, asked of the JetStream cluster.
async fn rooms_stream(
    js: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::stream::ClusterInfo> {
    let ask = async {
        let mut stream = js.get_stream(ROOMS_STREAM).await?;
        anyhow::Ok(stream.info().await?.cluster.clone())
    };
    tokio::time::timeout(Duration::from_secs(3), ask)
        .await
        .context("stream info within 3 s")??
        .context("the rooms stream has no cluster info")
}

/// Moves the directory stream's leadership to `server` (a leader stepdown naming it as
/// preferred; a server that picks another is asked again), bounded by [`WAIT`].
async fn make_leader(
    js: &async_nats::jetstream::Context,
    client: &async_nats::Client,
    server: &str,
) -> Result<()> {
    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{ROOMS_STREAM}");
    let body = serde_json::json!({ "placement": { "preferred": server } }).to_string();
    let stepdowns = std::sync::atomic::AtomicUsize::new(0);
    let (stepdowns, subject, body) = (&stepdowns, subject.as_str(), body.as_str());
    wait_until(
        WAIT,
        "the rooms stream led by the chosen server",
        move || async move {
            let info = rooms_stream(js).await.map_err(|e| format!("{e:#}"))?;
            let leader = info.leader.clone().unwrap_or_default();
            if leader == server {
                return Ok(());
            }
            // A stepdown right after another one is refused while the group settles: only ask
            // while the stream has a leader and every replica is current.
            if !leader.is_empty() && info.replicas.iter().all(|r| r.current && !r.offline) {
                let n = stepdowns.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let reply = client
                    .request(subject.to_owned(), body.to_owned().into())
                    .await
                    .map_err(|e| format!("stepdown: {e}"))?;
                let reply = String::from_utf8_lossy(&reply.payload).into_owned();
                if !reply.contains("\"success\":true") {
                    return Err(format!("stepdown {n} refused: {reply}"));
                }
            }
            let n = stepdowns.load(std::sync::atomic::Ordering::Relaxed);
            Err(format!("led by {leader:?} after {n} stepdowns"))
        },
    )
    .await
}

/// Waits until the rooms stream has a leader and three current replicas, none offline: the
/// restarted `server` is back in its group and caught up.
async fn wait_rejoined(js: &async_nats::jetstream::Context, server: &str) -> Result<()> {
    wait_until(
        WAIT,
        "every replica of the rooms stream current",
        || async {
            let info = rooms_stream(js).await.map_err(|e| format!("{e:#}"))?;
            let mut peers: Vec<&str> = info.replicas.iter().map(|r| r.name.as_str()).collect();
            peers.extend(info.leader.as_deref());
            let current = info.replicas.iter().all(|r| r.current && !r.offline);
            if info.leader.is_some() && peers.len() == 3 && peers.contains(&server) && current {
                Ok(())
            } else {
                Err(format!("{info:?}"))
            }
        },
    )
    .await
}

/// The room's directory entry, read through `js`.
async fn assignment(
    js: &async_nats::jetstream::Context,
    room: &str,
) -> Result<Option<RoomAssignment>> {
    let read = async {
        let kv = js.get_key_value(wire::ROOMS_BUCKET).await?;
        let key = wire::token(RoomId::new(room)?.as_str());
        let entry = kv.get(key).await?;
        anyhow::Ok(match entry {
            Some(v) => Some(serde_json::from_slice(&v)?),
            None => None,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .context("directory read within 5 s")?
}

/// Joins `room` as `user` through `node` as soon as the cluster lets it, retrying (a new
/// socket each time) for up to `within`; returns the client, the time it took and the
/// refusals before.
async fn join_when_possible(
    cluster: &Cluster,
    (node, region): (&str, &str),
    room: &str,
    user: &str,
    within: Duration,
) -> Result<(Client, Duration, Vec<String>)> {
    let t = Instant::now();
    let mut refusals = Vec::new();
    loop {
        let c = Client::connect(&cluster.node(node)?.ws_url()).await?;
        match c
            .join_in_region(room, &token(cluster, room, user), region)
            .await
        {
            Ok(_) => return Ok((c, t.elapsed(), refusals)),
            Err(e) => {
                refusals.push(format!("{:.1?}: {e}", t.elapsed()));
                c.close_abruptly().await;
                if t.elapsed() >= within {
                    bail!("{user} could not join {room} through {node} within {within:?}: {refusals:?}");
                }
                // The node answered at once (not connected to NATS, or the directory
                // without a stream leader): again a little later, not in a busy loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The names of the connections to `server` (`node n1`, `coordinator c2`).
async fn clients_of(cluster: &Cluster, server: &str) -> Result<Vec<String>> {
    let s = cluster
        .nats_servers()
        .find(|s| s.id() == server)
        .context("no such server")?;
    let port = s.monitor_port().context("monitoring is on")?;
    let connz: serde_json::Value =
        serde_json::from_str(&bench::http_get(port, "/connz?limit=1024").await?)?;
    Ok(connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| n.starts_with("node ") || n.starts_with("coordinator "))
        .map(str::to_owned)
        .collect())
}

/// Every message to `c` that would say the cluster failed someone over: any `reconnect`,
/// and `participant_left` of a member who did not leave (one of `members`).
fn failover_messages(c: &Client, members: &[&str]) -> Vec<ServerMessage> {
    c.messages()
        .into_iter()
        .filter(|m| match m {
            ServerMessage::ParticipantLeft { id } => members.contains(&id.as_str()),
            ServerMessage::Reconnect { .. } => true,
            _ => false,
        })
        .collect()
}

/// The sum of a counter over all its label sets (0 when absent).
fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Evidence of a failover anywhere: node deaths counted by a coordinator, a coordinator
/// not counting both nodes, rooms fenced or reconnects sent by a node.
async fn failover_evidence(cluster: &Cluster) -> Vec<String> {
    let mut seen = Vec::new();
    for c in cluster.coordinators() {
        match c.http_get("/metrics").await {
            Ok(m) => {
                let deaths = counter_sum(&m, "coord_node_deaths_total");
                let live = bench::metric(&m, "coord_live_nodes", None).unwrap_or(0.0);
                if deaths > 0.0 || live < 2.0 {
                    seen.push(format!(
                        "{}: {deaths} node deaths, {live} live nodes",
                        c.id()
                    ));
                }
            }
            Err(e) => seen.push(format!("{}: /metrics {e:#}", c.id())),
        }
    }
    for n in cluster.nodes() {
        match n.http_get("/metrics").await {
            Ok(m) => {
                let fenced = counter_sum(&m, "node_fenced_total");
                let sent = counter_sum(&m, "signaling_reconnects_sent_total");
                if fenced > 0.0 || sent > 0.0 {
                    seen.push(format!(
                        "{}: {fenced} rooms fenced, {sent} reconnects sent",
                        n.id()
                    ));
                }
            }
            Err(e) => seen.push(format!("{}: /metrics {e:#}", n.id())),
        }
    }
    seen
}

/// Snapshot of what `c` received from `publisher`, per track.
fn tracks_from(c: &Client, publisher: &str) -> Vec<TrackStats> {
    c.track_stats()
        .into_iter()
        .filter(|t| t.publisher == publisher)
        .collect()
}

/// Since `before` (taken `elapsed` ago): every track from `publisher` delivered at least
/// 98 % of what settled, and its video arrived at about the rate it is sent (a stall would
/// show as loss, or as missing packets at the end).
fn media_went_on(
    who: &str,
    c: &Client,
    publisher: &str,
    before: &[TrackStats],
    elapsed: Duration,
) -> Result<String> {
    let now = tracks_from(c, publisher);
    let mut out = Vec::new();
    for t in &now {
        let earlier = before.iter().find(|b| b.track_id == t.track_id);
        let delivered = t.settled_delivery_since(earlier);
        let got = t.received - earlier.map_or(0, |b| b.received);
        ensure!(
            delivered >= 0.98,
            "{who} got {:.1} % of {:?} from {publisher} during the fault: {t:?} (before: {earlier:?})",
            delivered * 100.0,
            t.kind
        );
        if t.kind == protocol::signal::TrackKind::Video {
            let sent = f64::from(VIDEO_PPS) * elapsed.as_secs_f64();
            ensure!(
                got as f64 >= 0.9 * sent,
                "{who} got {got} video packets from {publisher} in {elapsed:.1?}, {sent:.0} sent"
            );
        }
        out.push(format!(
            "{:?} {got} packets, {:.2} % delivered",
            t.kind,
            delivered * 100.0
        ));
    }
    ensure!(
        now.len() == 2,
        "{who} receives {} tracks from {publisher}",
        now.len()
    );
    Ok(format!("{who} from {publisher}: {}", out.join(", ")))
}

/// Bound on a join into an existing room after a kill: its members' node serves it, so
/// the coordinator only reads the directory (any replica answers); the node and the
/// coordinators have to be connected again, nothing more.
const EXISTING_ROOM_WITHIN: Duration = Duration::from_secs(3);
/// Bound on placing a new room after a kill: a directory write, which needs a stream
/// leader. nats-server elects a new one after its raft election timeout (4–9 s, a second
/// round if a vote splits), and a new meta leader too when the killed server was that.
const NEW_ROOM_WITHIN: Duration = Duration::from_secs(20);

/// Kills `victim` with SIGKILL and proves the cluster rides it out: its clients move to
/// other servers within the death timeout, media between `a` and `b` flows on, a new
/// member joins their room and a new room is placed and served, and nobody is failed over
/// (no `cluster.node.down` as heard on `watch_url`, a server that stays up; no death, fence
/// or `reconnect` counted; no `participant_left` or `reconnect` to anyone). `round` names
/// the users and rooms it makes. Returns what it measured.
async fn kill_and_ride_out(
    cluster: &mut Cluster,
    victim: &str,
    watch_url: &str,
    (room, a, b): (&str, &Client, &Client),
    round: u32,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let watcher = tests::nats::connect(watch_url).await?;
    let mut downs = watcher.subscribe(wire::NODE_DOWN).await?;
    watcher.flush().await?;
    let js = async_nats::jetstream::new(watcher.clone());
    let on_victim = clients_of(cluster, victim).await?;
    // Joins go through a node that loses its server (n1 in `eu` or n2 in `us`); a second
    // member of the new room comes through the other one.
    let (via, other) = if on_victim.iter().any(|c| c == "node n1") {
        (("n1", "eu"), ("n2", "us"))
    } else if on_victim.iter().any(|c| c == "node n2") {
        (("n2", "us"), ("n1", "eu"))
    } else {
        bail!("no node is on {victim}: {on_victim:?}");
    };
    let (a_before, b_before) = (tracks_from(a, "b"), tracks_from(b, "a"));

    let killed_at = Instant::now();
    eprintln!("   kill -9 {victim}; on it: {on_victim:?}");
    cluster.proc_mut(victim)?.signal("KILL")?;
    let cluster = &*cluster;

    // From the kill on, at once: the killed server's clients move to the other servers, a
    // new member joins the existing room, a new room is placed.
    let new_room = room_name(&format!("natsha-new{round}"));
    let (joiner, creator) = (format!("e{round}"), format!("c{round}"));
    let on_victim = &on_victim;
    let moved = async {
        wait_until(
            WAIT,
            "the killed server's clients on other servers",
            || async move {
                let mut missing = Vec::new();
                for name in on_victim {
                    let now_on = server_of(cluster, name, &[victim])
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    if now_on.is_none() {
                        missing.push(name.as_str());
                    }
                }
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{missing:?} not back yet"))
                }
            },
        )
        .await?;
        anyhow::Ok(killed_at.elapsed())
    };
    let existing = join_when_possible(cluster, via, room, &joiner, EXISTING_ROOM_WITHIN);
    let created = join_when_possible(cluster, via, &new_room, &creator, NEW_ROOM_WITHIN);
    let (moved, existing, created) = tokio::join!(moved, existing, created);
    let moved = moved?;
    let (e, e_took, e_refusals) = existing?;
    let (c, c_took, c_refusals) = created?;
    ensure!(
        moved < NODE_TIMEOUT,
        "the clients of {victim} took {moved:?} to move: longer than the death timeout"
    );
    let summary = |refusals: &[String]| match refusals {
        [] => "none".to_owned(),
        [first, ..] => format!("{} ({first} …)", refusals.len()),
    };
    notes.push(format!(
        "{on_victim:?} connected to other servers {moved:.2?} after the kill"
    ));
    notes.push(format!(
        "through {}: a new member joined the existing room {e_took:.2?} after the kill; refusals: {}",
        via.0,
        summary(&e_refusals)
    ));
    notes.push(format!(
        "a new room was placed {c_took:.2?} after the kill; refusals: {}",
        summary(&c_refusals)
    ));
    let served_by = c.joined().context("joined")?.node;
    let placed = assignment(&js, &new_room)
        .await?
        .context("the new room is in the directory")?;
    ensure!(
        placed.serves(&served_by),
        "{new_room} is served by {served_by} but the directory says {placed:?}"
    );

    // Nobody failed over, for twice the death timeout after everyone is connected again.
    wait_until(WAIT, "every process ready again", || async {
        let waiting = cluster.not_ready().await;
        waiting
            .is_empty()
            .then_some(())
            .ok_or_else(|| waiting.join("; "))
    })
    .await?;
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        let evidence = failover_evidence(cluster).await;
        ensure!(
            evidence.is_empty(),
            "spurious failover {:.1?} after killing {victim}: {evidence:?}",
            killed_at.elapsed()
        );
        for (who, cl) in [
            ("a", a),
            ("b", b),
            (joiner.as_str(), &e),
            (creator.as_str(), &c),
        ] {
            let spurious = failover_messages(cl, &["a", "b", &joiner, &creator]);
            ensure!(
                spurious.is_empty(),
                "{who} was told {spurious:?} after {victim} was killed"
            );
            ensure!(
                !cl.is_closed(),
                "{who}'s socket closed: {:?}",
                cl.close_info()
            );
        }
        if let Ok(Some(down)) = tokio::time::timeout(Duration::from_millis(200), downs.next()).await
        {
            bail!(
                "cluster.node.down {:.1?} after killing {victim}: {}",
                killed_at.elapsed(),
                String::from_utf8_lossy(&down.payload)
            );
        }
    }

    // Media went on the whole time, a to b and b to a.
    let elapsed = killed_at.elapsed();
    notes.push(media_went_on("a", a, "b", &a_before, elapsed)?);
    notes.push(media_went_on("b", b, "a", &b_before, elapsed)?);

    // The newcomer of the old room receives both; the new room carries media: its creator
    // publishes, a second member (from the other region, so the room gets a second node)
    // receives it.
    wait_media(&e, &["a", "b"], 20).await?;
    c.publish(light()).await?;
    let d = Client::connect(&cluster.node(other.0)?.ws_url()).await?;
    let viewer = format!("d{round}");
    d.join_in_region(&new_room, &token(cluster, &new_room, &viewer), other.1)
        .await?;
    wait_media(&d, &[&creator], 20).await?;
    for cl in [&e, &c, &d] {
        cl.leave().await?;
    }
    Ok(notes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_rides_out_the_kill_of_a_nats_server_and_its_return() -> Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("nats-cluster-{:016x}", rand::random::<u64>()));
    let _dir = tests::RunDir(dir.clone());
    let mut cluster = start(&dir).await?;
    let servers: Vec<String> = cluster.nats_servers().map(|s| s.id().to_owned()).collect();
    assert_eq!(servers, ["nats", "nats2", "nats3"]);
    assert_eq!(cluster.nats_url().split(',').count(), 3);
    let client = cluster.nats_client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let info = rooms_stream(&js).await?;
    assert_eq!(
        info.replicas.len() + 1,
        3,
        "the directory has a replica on every server: {info:?}"
    );
    eprintln!("   cluster ready in {:.1?}", started.elapsed());

    // a in eu through n1, b in us through n2: the room spans both nodes.
    let room = room_name("natsha");
    let a = publisher(&cluster, "n1", "eu", &room, "a").await?;
    let b = publisher(&cluster, "n2", "us", &room, "b").await?;
    wait_media(&a, &["b"], 20).await?;
    wait_media(&b, &["a"], 20).await?;
    let before = assignment(&js, &room).await?.context("room placed")?;
    ensure!(
        before.nodes.len() == 2,
        "the room spans both nodes: {before:?}"
    );

    // Round 1: the server n1 is connected to, made leader of the directory's stream.
    let victim = server_of(&cluster, "node n1", &[])
        .await?
        .context("n1 is connected to a server")?;
    make_leader(&js, &client, &victim).await?;
    let watch = url_avoiding(&cluster, &[&victim])?;
    // Our own client may sit on the victim: use one on the watched survivor from here on.
    drop(client);
    let client = tests::nats::connect(&watch).await?;
    let js = async_nats::jetstream::new(client.clone());
    let notes = kill_and_ride_out(&mut cluster, &victim, &watch, (&room, &a, &b), 1).await?;
    for n in &notes {
        eprintln!("   {n}");
    }

    // The killed server comes back on its ports and store, and catches the directory up.
    let t = Instant::now();
    cluster.restart_nats_server(&victim, WAIT).await?;
    wait_rejoined(&js, &victim).await?;
    eprintln!(
        "   {victim} restarted and current in the rooms stream after {:.1?}",
        t.elapsed()
    );

    // Round 2: another server a node is on (both left the first one) made the stream's
    // leader and killed: the quorum now needs the server that came back.
    let second = match server_of(&cluster, "node n2", &[&victim]).await? {
        Some(s) => s,
        None => server_of(&cluster, "node n1", &[&victim])
            .await?
            .context("n1 is connected to a server")?,
    };
    make_leader(&js, &client, &second).await?;
    let watch2 = url_avoiding(&cluster, &[&second])?;
    let client = tests::nats::connect(&watch2).await?;
    let js = async_nats::jetstream::new(client.clone());
    let notes = kill_and_ride_out(&mut cluster, &second, &watch2, (&room, &a, &b), 2).await?;
    for n in &notes {
        eprintln!("   {n}");
    }
    cluster.restart_nats_server(&second, WAIT).await?;
    wait_rejoined(&js, &second).await?;

    // The first room never moved: same nodes, same epoch.
    let after = assignment(&js, &room).await?.context("room still placed")?;
    assert_eq!(
        (&after.nodes, after.epoch),
        (&before.nodes, before.epoch),
        "the room was never failed over"
    );
    for (who, c) in [("a", &a), ("b", &b)] {
        let spurious = failover_messages(c, &["a", "b"]);
        assert!(spurious.is_empty(), "{who}: {spurious:?}");
    }
    cluster.stop();
    let crashed: Vec<String> = cluster
        .health()
        .into_iter()
        .filter(|l| l.contains("exited on its own"))
        .collect();
    assert!(crashed.is_empty(), "{crashed:?}");
    let violations = cluster.nats_violations();
    assert!(violations.is_empty(), "{violations:#?}");
    eprintln!("   whole test {:.1?}", started.elapsed());
    Ok(())
}
