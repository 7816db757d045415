//! Each limit of `node::limits`, hit by a client: the client gets its error (or its socket
//! is refused or closed), the refusal is counted, and the room's good participants keep
//! receiving each other's media throughout.

use chaos::Client;
use protocol::signal::{ClientMessage, ServerMessage};
use protocol::ErrorCode;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tests::abuse::{expect_error, good_pair, still_flowing};
use tests::{claims, http_get, join, mint, room_name, start_node, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// `limits_hit_total{limit="<limit>"}` on the node's `/metrics` (0 when absent).
async fn hits(addr: SocketAddr, limit: &str) -> anyhow::Result<u64> {
    let (_, body) = http_get(addr, "/metrics", &[]).await?;
    let prefix = format!("limits_hit_total{{limit=\"{limit}\"}} ");
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// A WebSocket upgrade of `/ws` from source address `from`: the HTTP status, and the
/// stream, which holds the socket open while it lives.
async fn upgrade(node: SocketAddr, from: IpAddr) -> anyhow::Result<(u16, tokio::net::TcpStream)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = socket.connect(node).await?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {node}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    // Bounded: the status line fits in the first reads.
    for _ in 0..16 {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line: {line:?}"))?;
    Ok((status, stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_close_the_socket() -> anyhow::Result<()> {
    let node = start_node(|c| c.limits.auth_failures = 3);
    let room = room_name("auth");
    let good = good_pair(&node, &room).await?;
    let x = Client::connect(&node.ws_url()).await?;
    let forged = protocol::token::mint(b"not-the-secret", &claims(&room, "mallory", 600));
    let join_msg = || ClientMessage::Join {
        room: protocol::RoomId::new(room.clone()).unwrap(),
        token: forged.clone(),
        region: None,
    };
    expect_error(&x, ErrorCode::Unauthorized, x.send(&join_msg())).await?;
    expect_error(&x, ErrorCode::Unauthorized, x.send(&join_msg())).await?;
    assert!(!x.is_closed(), "two failures are tolerated");
    expect_error(&x, ErrorCode::Unauthorized, x.send(&join_msg())).await?;
    let closed = x.wait_closed(WAIT).await?;
    assert_eq!(closed.code(), Some(1008), "{closed:?}");
    assert_eq!(hits(node.http_addr(), "auth_failures").await?, 1);
    still_flowing(&good, 100).await?;
    node.stop();
    Ok(())
}

/// An offer sending `n` audio tracks (the node counts sections before applying anything).
fn offer_with_tracks(n: usize) -> String {
    let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    for i in 0..n {
        sdp.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=sendonly\r\n\
             a=ssrc:{} cname:x\r\n",
            1000 + i
        ));
    }
    sdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_past_its_track_limit_is_refused() -> anyhow::Result<()> {
    let node = start_node(|c| c.limits.tracks_per_publisher = 2);
    let room = room_name("tracks");
    // The good pair publishes two tracks each: exactly the limit.
    let good = good_pair(&node, &room).await?;
    let m = join(&node, &room, "mallory").await?;
    let publish = ClientMessage::Publish {
        sdp: offer_with_tracks(3),
    };
    expect_error(&m, ErrorCode::Forbidden, m.send(&publish)).await?;
    assert_eq!(hits(node.http_addr(), "tracks_per_publisher").await?, 1);
    assert!(!m.is_closed());
    still_flowing(&good, 100).await?;
    node.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_per_node() -> anyhow::Result<()> {
    // The good pair takes two of 127.0.0.1's three places and two of the node's five.
    let node = start_node(|c| {
        c.limits.connections_per_ip = 3;
        c.limits.connections = 5;
    });
    let addr = node.http_addr();
    let room = room_name("conns");
    let good = good_pair(&node, &room).await?;
    let local: IpAddr = "127.0.0.1".parse()?;
    let other: IpAddr = "127.0.0.2".parse()?;
    let (status, _third) = upgrade(addr, local).await?;
    assert_eq!(status, 101, "127.0.0.1's third socket");
    let (status, _) = upgrade(addr, local).await?;
    assert_eq!(status, 429, "127.0.0.1's fourth socket");
    // Another address has places of its own, until the node is full.
    let (status, _fourth) = upgrade(addr, other).await?;
    assert_eq!(status, 101);
    let (status, fifth) = upgrade(addr, other).await?;
    assert_eq!(status, 101);
    let (status, _) = upgrade(addr, other).await?;
    assert_eq!(status, 503, "the node's sixth socket");
    assert_eq!(hits(addr, "connections_per_ip").await?, 1);
    assert_eq!(hits(addr, "connections").await?, 1);
    // A socket that goes gives its place back.
    drop(fifth);
    wait_until(WAIT, "a freed place to be taken again", || async {
        match upgrade(addr, other).await {
            Ok((101, stream)) => {
                drop(stream);
                Ok(())
            }
            Ok((status, _)) => Err(format!("status {status}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    still_flowing(&good, 100).await?;
    node.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_to_one_room_is_rate_limited() -> anyhow::Result<()> {
    // One join a second with a burst of two: the good pair took the burst.
    let node = start_node(|c| c.limits.room_joins_per_sec = 1);
    let room = room_name("joins");
    let good = good_pair(&node, &room).await?;
    // Ten joins at once: at most the refilled tokens (one a second) get in.
    let attempts = (0..10).map(|i| {
        let (node, room) = (&node, room.clone());
        async move {
            let c = Client::connect(&node.ws_url()).await?;
            let token = mint(node, &claims(&room, &format!("rush{i}"), 600));
            let res = c.join(&room, &token).await;
            anyhow::Ok((c, res))
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut limited = 0;
    for r in &results {
        let (_, res) = r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        match res {
            Ok(_) => {}
            Err(chaos::Error::Server {
                code: ErrorCode::RateLimited,
                ..
            }) => limited += 1,
            Err(e) => anyhow::bail!("a join failed otherwise: {e}"),
        }
    }
    assert!(
        limited >= 1,
        "some of ten joins within a burst of two were refused"
    );
    assert_eq!(hits(node.http_addr(), "room_joins").await?, limited);
    still_flowing(&good, 100).await?;
    node.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_one_recipient_are_rate_limited() -> anyhow::Result<()> {
    let node = start_node(|c| c.limits.recipient_messages_per_sec = 5);
    let room = room_name("msgs");
    let good = good_pair(&node, &room).await?;
    let m = join(&node, &room, "mallory").await?;
    let cursor = m.message_count();
    for i in 0..40 {
        m.send_message("good1", serde_json::json!({ "n": i }))
            .await?;
    }
    m.wait_for_since(cursor, WAIT, |msg| {
        matches!(
            msg,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        )
    })
    .await?;
    assert!(hits(node.http_addr(), "recipient_messages").await? >= 1);
    // good1 got the burst's worth (10) and what refilled meanwhile, not 40; another
    // recipient is not affected.
    still_flowing(&good, 100).await?;
    m.send_message("good2", serde_json::json!({ "n": "hello" }))
        .await?;
    good[1]
        .wait_for(
            WAIT,
            |msg| matches!(msg, ServerMessage::Message { from, .. } if from.as_str() == "mallory"),
        )
        .await?;
    assert!(!m.is_closed());
    node.stop();
    Ok(())
}
