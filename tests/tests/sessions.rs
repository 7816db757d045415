//! The signaling socket's life: keepalive both ways (a WebSocket Ping gets its Pong, before
//! and after `join`; a client that answers nothing is closed after the idle timeout, one that
//! only pings is not) and one participant per user, cluster-wide (a second `join` of the
//! same user, through the same node, another node of the region or another region, closes
//! the first socket with `error unauthorized` and 1008, and the second one takes over).

use chaos::{CloseInfo, PublishOpts};
use coordinator::CoordinatorHandle;
use protocol::signal::{ServerMessage, TrackKind};
use protocol::ErrorCode;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::nats::NatsServer;
use tests::{
    claims, join, mint, room_name, start_node, wait_numbered_messages, wait_until, Config,
    NodeHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
/// How long a Ping may wait for its Pong: a behaviour check, not a speed one (a node that
/// never answers fails it; real clients give up after about 20 s).
const PONG_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Keepalive

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

#[derive(Debug)]
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    /// The close code of a Close frame.
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    fn json(&self) -> Option<serde_json::Value> {
        (self.opcode == TEXT)
            .then(|| serde_json::from_slice(&self.payload).ok())
            .flatten()
    }
}

/// A WebSocket client written out by hand, so the test decides every frame: it answers a
/// Ping only when told to (tungstenite, like browsers, answers them on its own).
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(addr: SocketAddr) -> anyhow::Result<RawWs> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            tokio::time::timeout(Duration::from_secs(5), ws.fill())
                .await
                .map_err(|_| anyhow::anyhow!("no handshake answer"))??;
        };
        let head = String::from_utf8_lossy(&ws.buf[..head_end]).into_owned();
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        ws.buf.drain(..head_end);
        Ok(ws)
    }

    /// Reads what the socket has into the buffer.
    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tcp.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection ended without a close frame");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Sends one unfragmented, masked frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mask: [u8; 4] = rand::random();
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await?;
        Ok(())
    }

    async fn send_json(&mut self, msg: serde_json::Value) -> anyhow::Result<()> {
        self.send(TEXT, msg.to_string().as_bytes()).await
    }

    /// The next frame from the node, within `within`.
    async fn recv(&mut self, within: Duration) -> anyhow::Result<Frame> {
        tokio::time::timeout(within, async {
            loop {
                if let Some(frame) = self.parse()? {
                    return Ok(frame);
                }
                // Cancel-safe: a read that times out has taken nothing from the socket.
                self.fill().await?;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no frame within {within:?}"))?
    }

    /// Takes one whole frame off the buffer (the node sends them unfragmented, unmasked).
    fn parse(&mut self) -> anyhow::Result<Option<Frame>> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        anyhow::ensure!(b[0] & 0x80 != 0, "a fragmented frame: {:#04x}", b[0]);
        anyhow::ensure!(b[1] & 0x80 == 0, "a masked frame from the node");
        let (len, head) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into()?) as usize, 10),
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        if b.len() < head + len {
            return Ok(None);
        }
        let frame = Frame {
            opcode: b[0] & 0x0F,
            payload: b[head..head + len].to_vec(),
        };
        self.buf.drain(..head + len);
        Ok(Some(frame))
    }

    /// Sends `join` and reads up to `joined`.
    async fn join(&mut self, node: &NodeHandle, room: &str, user: &str) -> anyhow::Result<()> {
        let token = mint(node, &claims(room, user, 600));
        self.send_json(serde_json::json!({ "type": "join", "room": room, "token": token }))
            .await?;
        loop {
            let frame = self.recv(WAIT).await?;
            match frame.json() {
                Some(m) if m["type"] == "joined" => return Ok(()),
                Some(m) if m["type"] == "error" => anyhow::bail!("join refused: {m}"),
                _ => {}
            }
        }
    }

    /// Sends a Ping with `payload` and reads until its Pong, which must come `within` and
    /// carry the same payload. The node's own Pings on the way go unanswered; their number
    /// is returned.
    async fn ping(&mut self, payload: &[u8], within: Duration) -> anyhow::Result<u64> {
        self.send(PING, payload).await?;
        let deadline = tokio::time::Instant::now() + within;
        let mut node_pings = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .recv(left)
                .await
                .map_err(|e| anyhow::anyhow!("pong for {payload:?}: {e}"))?;
            match frame.opcode {
                PONG => {
                    anyhow::ensure!(frame.payload == payload, "pong {frame:?} for {payload:?}");
                    return Ok(node_pings);
                }
                PING => node_pings += 1,
                CLOSE => anyhow::bail!("closed while pinging: {:?}", frame.close_code()),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_ping_gets_its_pong_before_and_after_join() -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let mut ws = RawWs::connect(node.http_addr()).await?;
    ws.ping(b"before join", PONG_WITHIN).await?;
    ws.ping(b"", PONG_WITHIN).await?;
    ws.join(&node, &room_name("keepalive"), "pinger").await?;
    for i in 0..5 {
        ws.ping(format!("after join {i}").as_bytes(), PONG_WITHIN)
            .await?;
    }
    // The largest control frame RFC 6455 allows.
    ws.ping(&[0x5a; 125], PONG_WITHIN).await?;
    // Protocol-level `ping` still answers `pong`, in order with the frames around it.
    ws.send_json(serde_json::json!({ "type": "ping" })).await?;
    let frame = ws.recv(PONG_WITHIN).await?;
    assert_eq!(frame.json().map(|m| m["type"].clone()), Some("pong".into()));
    ws.ping(b"last", PONG_WITHIN).await?;
    assert_eq!(node.counters().sessions, 1);
    Ok(())
}

/// A client that answers the node's Pings and sends nothing else, until `stop`.
async fn answer_pings(
    mut ws: RawWs,
    answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<RawWs> {
    while !stop.load(Ordering::Relaxed) {
        // A bounded read, so `stop` is seen; a read that times out loses nothing.
        let Ok(frame) = ws.recv(Duration::from_millis(200)).await else {
            continue;
        };
        match frame.opcode {
            PING => {
                ws.send(PONG, &frame.payload).await?;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            CLOSE => anyhow::bail!("the answering client was closed: {frame:?}"),
            _ => {}
        }
    }
    Ok(ws)
}

/// A client that sends a Ping every 250 ms (each answered within `within`) and never
/// answers the node's, until `stop`.
async fn only_ping(
    mut ws: RawWs,
    within: Duration,
    pongs: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<RawWs> {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        every.tick().await;
        ws.ping(format!("keepalive {n}").as_bytes(), within)
            .await
            .map_err(|e| anyhow::anyhow!("the pinging client: {e}"))?;
        pongs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_closes_after_the_idle_timeout_a_pinging_one_stays() -> anyhow::Result<()> {
    let idle = Duration::from_secs(2);
    let node = start_node(|c| c.ws_idle_timeout = idle);
    let room = room_name("idle");
    let mut silent = RawWs::connect(node.http_addr()).await?;
    // Before the join frame goes out: the node's idle clock starts at its last frame (the
    // join), never earlier than this.
    let silent_since = Instant::now();
    silent.join(&node, &room, "silent").await?;
    let mut answering = RawWs::connect(node.http_addr()).await?;
    answering.join(&node, &room, "answering").await?;
    let mut pinging = RawWs::connect(node.http_addr()).await?;
    pinging.join(&node, &room, "pinging").await?;
    let (answered, pongs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let answering = tokio::spawn(answer_pings(answering, answered.clone(), stop.clone()));
    // Pongs at all are the first test's business; here only staying matters.
    let pinging = tokio::spawn(only_ping(pinging, idle, pongs.clone(), stop.clone()));

    // Reading sends nothing, so the silent client stays silent: it sees the node's pings,
    // then the close once the idle timeout has passed.
    let mut node_pings = 0;
    let close = loop {
        let frame = silent.recv(idle * 3).await?;
        match frame.opcode {
            PING => node_pings += 1,
            CLOSE => break frame,
            _ => {}
        }
    };
    let closed_after = silent_since.elapsed();
    assert!(closed_after >= idle, "closed after {closed_after:?}");
    assert!(
        node_pings >= 2,
        "the node pinged the silent client {node_pings} times"
    );
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
    assert!(String::from_utf8_lossy(&close.payload).contains("idle timeout"));

    // The other two keep going for three idle timeouts (a ping every 250 ms; a node ping
    // every third of the idle timeout), and neither is closed.
    wait_until(WAIT, "three idle timeouts of keepalive", || async {
        let (p, a) = (
            pongs.load(Ordering::Relaxed),
            answered.load(Ordering::Relaxed),
        );
        if answering.is_finished() || pinging.is_finished() {
            Err("a client ended early".to_owned())
        } else if p * 250 >= 3 * idle.as_millis() as u64 && a >= 9 {
            Ok(())
        } else {
            Err(format!("{p} pongs, {a} node pings answered"))
        }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let (mut answering, mut pinging) = (answering.await??, pinging.await??);
    assert_eq!(node.counters().sessions, 2);
    // Both are still served.
    pinging.ping(b"still here", PONG_WITHIN).await?;
    answering
        .send_json(serde_json::json!({ "type": "ping" }))
        .await?;
    loop {
        let frame = answering.recv(PONG_WITHIN).await?;
        if frame.json().is_some_and(|m| m["type"] == "pong") {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// One participant per user

/// NATS, a coordinator and one node per `(id, region)`.
struct Cluster {
    _nats: NatsServer,
    _coordinator: CoordinatorHandle,
    nodes: Vec<NodeHandle>,
}

impl Cluster {
    async fn start(nodes: &[(&str, &str)]) -> anyhow::Result<Cluster> {
        tests::init_logs();
        let nats = NatsServer::start()?;
        let coordinator = coordinator::spawn(coordinator::Config::local(nats.coordinator_url()))?;
        let nodes = nodes
            .iter()
            .map(|(id, region)| {
                let mut c = Config::local_dev();
                c.node_id = protocol::NodeId::new(*id).expect("node id");
                c.region = (*region).into();
                c.nats_url = Some(nats.node_url(id)?);
                c.resume_grace = Duration::ZERO;
                c.room_empty_grace = Duration::from_millis(300);
                node::spawn(c)
            })
            .collect::<Result<Vec<_>, _>>()?;
        wait_until(WAIT, "the coordinator to see every node", || async {
            let snap = coordinator.snapshot();
            let healthy = snap.nodes.iter().filter(|n| n.healthy).count();
            if snap.ready && healthy == nodes.len() {
                Ok(())
            } else {
                Err(format!("{snap:?}"))
            }
        })
        .await?;
        Ok(Cluster {
            _nats: nats,
            _coordinator: coordinator,
            nodes,
        })
    }

    /// Routes (sessions registered in the routers) and sessions replaced, over every node.
    async fn routes_and_replaced(&self) -> (u64, u64) {
        let mut totals = (0, 0);
        for n in &self.nodes {
            let router = &n.snapshot().await["router"];
            totals.0 += router["routes"].as_u64().unwrap_or(0);
            totals.1 += router["superseded"].as_u64().unwrap_or(0);
        }
        totals
    }
}

/// Video packets `client` received from `publisher` on tracks outside `old`.
fn video_from_new_tracks(client: &chaos::Client, publisher: &str, old: &BTreeSet<String>) -> u64 {
    client
        .track_stats()
        .iter()
        .filter(|t| t.publisher == publisher && t.kind == TrackKind::Video)
        .filter(|t| !old.contains(&t.track_id))
        .map(|t| t.received)
        .sum()
}

/// alice joins through node `vias[0]` and publishes; bob (through node 0) receives her; then
/// alice joins again through each node of `vias[1..]` in turn. Each time the previous socket
/// gets `error unauthorized` and 1008, the new one publishes, bob receives its new tracks,
/// and a message to alice reaches the new socket.
async fn each_join_replaces_the_last(cluster: &Cluster, vias: &[usize]) -> anyhow::Result<()> {
    let room = room_name("twice");
    let publish = || PublishOpts {
        video_pps: 50,
        ..Default::default()
    };
    let mut alice = join(&cluster.nodes[vias[0]], &room, "alice").await?;
    alice.publish(publish()).await?;
    let bob = join(&cluster.nodes[0], &room, "bob").await?;
    bob.wait_received_from("alice", 25, WAIT).await?;
    assert_eq!(cluster.routes_and_replaced().await, (2, 0));
    // Which node serves the room varies (placement hashes the room name); going back and
    // forth puts the old and the new socket on the room's node in turn.
    eprintln!("room {room} served by {:?}", alice.joined().map(|j| j.node));

    for (replaced, &via) in (1..).zip(&vias[1..]) {
        let old: BTreeSet<String> = bob
            .track_stats()
            .into_iter()
            .filter(|t| t.publisher == "alice")
            .map(|t| t.track_id)
            .collect();
        let again = join(&cluster.nodes[via], &room, "alice").await?;
        let kicked = alice
            .wait_for(WAIT, |m| matches!(m, ServerMessage::Error { .. }))
            .await?;
        assert!(
            matches!(
                kicked,
                ServerMessage::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            ),
            "{kicked:?}"
        );
        let closed = alice.wait_closed(WAIT).await?;
        assert!(
            matches!(closed, CloseInfo::Remote { code: 1008, .. }),
            "{closed:?}"
        );
        assert!(!again.is_closed(), "{:?}", again.close_info());
        let heard = alice.message_count();

        again.publish(publish()).await?;
        wait_until(WAIT, "bob to receive the new alice's video", || async {
            match video_from_new_tracks(&bob, "alice", &old) {
                n if n >= 50 => Ok(()),
                n => Err(format!("{n} packets; {:?}", bob.track_stats())),
            }
        })
        .await?;
        // One route to alice in the whole cluster: the old node let go of her subject.
        wait_until(WAIT, "one route per user", || async {
            match cluster.routes_and_replaced().await {
                (2, r) if r == replaced => Ok(()),
                other => Err(format!("(routes, replaced) {other:?}")),
            }
        })
        .await?;

        let cursor = bob.message_count();
        bob.send_message("alice", serde_json::json!({ "n": 0 }))
            .await?;
        wait_numbered_messages(&again, "bob", 1, WAIT).await?;
        let after = &bob.messages()[cursor..];
        assert!(
            !after
                .iter()
                .any(|m| matches!(m, ServerMessage::Error { .. })),
            "bob heard an error: {after:?}"
        );
        assert_eq!(alice.message_count(), heard, "the old socket heard more");
        assert!(!again.is_closed() && !bob.is_closed());
        alice = again;
    }
    alice.leave().await?;
    bob.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_join_through_the_same_node_replaces_the_first() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[("n1", "eu"), ("n2", "eu")]).await?;
    each_join_replaces_the_last(&cluster, &[0, 0]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_another_node_of_the_region_replaces_the_last() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[("n1", "eu"), ("n2", "eu")]).await?;
    each_join_replaces_the_last(&cluster, &[0, 1, 0]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_another_region_replaces_the_last() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[("n1", "eu"), ("n2", "us")]).await?;
    each_join_replaces_the_last(&cluster, &[0, 1, 0]).await
}
