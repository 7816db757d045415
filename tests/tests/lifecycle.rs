//! Resume after a dropped socket, and the node's HTTP surface (health, metrics, dev tokens,
//! snapshots) reporting the truth before and after a room's life.

use chaos::{Client, PublishOpts};
use protocol::signal::ServerMessage;
use std::time::Duration;
use tests::{http_get, join, room_name, start_node, wait_node_idle, wait_until};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_within_the_grace_period() -> anyhow::Result<()> {
    let node = start_node(|c| c.resume_grace = Duration::from_secs(20));
    let room = room_name("resume");
    let a = join(&node, &room, "a").await?;
    let b = join(&node, &room, "b").await?;
    a.publish(PublishOpts::default()).await?;
    b.publish(PublishOpts::default()).await?;
    a.wait_received_from("b", 100, WAIT).await?;
    let token = a.joined().expect("joined").resume_token;

    let cursor = b.message_count();
    a.close_abruptly().await;
    let a2 = Client::connect(&node.ws_url()).await?;
    let joined = a2.resume(&token).await?;
    assert_eq!(joined.participant.id.as_str(), "a");
    assert_eq!(joined.participants.len(), 1, "{joined:?}");
    // Media comes back both ways once the client publishes again.
    a2.publish(PublishOpts::default()).await?;
    a2.wait_received_from("b", 100, WAIT).await?;
    wait_until(WAIT, "b receives a's new tracks", || async {
        let fresh: u64 = b
            .track_stats()
            .iter()
            .filter(|t| t.publisher == "a")
            .map(|t| t.received)
            .max()
            .unwrap_or(0);
        // The old tracks stopped; some track of a's must be new and flowing.
        let n_tracks = b
            .track_stats()
            .iter()
            .filter(|t| t.publisher == "a")
            .count();
        if n_tracks >= 4 && fresh > 0 {
            Ok(())
        } else {
            Err(format!("{:?}", b.track_stats()))
        }
    })
    .await?;
    // b never saw a leave.
    assert!(
        !b.messages()[cursor..]
            .iter()
            .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })),
        "{:?}",
        &b.messages()[cursor..]
    );
    // A made-up token is refused.
    let bogus = Client::connect(&node.ws_url()).await?;
    assert!(bogus.resume("not-a-token").await.is_err());
    a2.leave().await?;
    b.leave().await?;
    wait_node_idle(&node, WAIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_surface_reports_health_metrics_and_snapshots() -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let addr = node.http_addr();
    assert_eq!(http_get(addr, "/healthz", &[]).await?.0, 200);
    let (status, page) = http_get(addr, "/", &[]).await?;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    let (status, body) = http_get(addr, "/dev/token?room=r&user=u", &[]).await?;
    assert_eq!(status, 200);
    assert!(body.contains("\"token\""));

    let room = room_name("http");
    let a = join(&node, &room, "a").await?;
    let b = join(&node, &room, "b").await?;
    a.publish(PublishOpts::default()).await?;
    b.wait_received_from("a", 50, WAIT).await?;
    let (_, metrics) = http_get(addr, "/metrics", &[]).await?;
    for name in [
        "sfu_rooms",
        "sfu_peers",
        "sfu_packets_forwarded_total",
        "sfu_bytes_forwarded_total",
        "sfu_packets_dropped_total",
        "join_latency_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let (status, snap) = http_get(addr, "/debug/snapshot", &[]).await?;
    assert_eq!(status, 200);
    let snap: serde_json::Value = serde_json::from_str(&snap)?;
    assert_eq!(
        snap["rooms"][0]["tracks"].as_array().map(Vec::len),
        Some(2),
        "{snap}"
    );
    a.leave().await?;
    b.leave().await?;
    wait_node_idle(&node, WAIT).await?;
    node.stop();

    // Production shape: no dev tokens, the operators' endpoints behind the admin token,
    // which is not the API secret.
    const SECRET: &str = "prod-secret-0123456789abcdef0123456789";
    const ADMIN: &str = "prod-admin-0123456789abcdef0123456789";
    let node = start_node(|c| {
        c.dev_tokens = false;
        c.api_secret = SECRET.into();
        c.admin_token = Some(ADMIN.into());
    });
    let addr = node.http_addr();
    assert_eq!(
        http_get(addr, "/dev/token?room=r&user=u", &[]).await?.0,
        404
    );
    assert_eq!(http_get(addr, "/debug/snapshot", &[]).await?.0, 401);
    let bearer = |t: &str| format!("Bearer {t}");
    for wrong in [SECRET, &ADMIN[..ADMIN.len() - 1], "prod-admin"] {
        let auth = bearer(wrong);
        let status = http_get(addr, "/debug/snapshot", &[("Authorization", &auth)]).await?;
        assert_eq!(status.0, 401, "{wrong}");
    }
    let auth = bearer(ADMIN);
    let status = http_get(addr, "/debug/snapshot", &[("Authorization", &auth)]).await?;
    assert_eq!(status.0, 200);
    node.stop();

    // Without an admin token the operators' endpoints are off.
    let node = start_node(|c| {
        c.dev_tokens = false;
        c.api_secret = SECRET.into();
    });
    let auth = bearer(SECRET);
    let status = http_get(
        node.http_addr(),
        "/debug/snapshot",
        &[("Authorization", &auth)],
    )
    .await?;
    assert_eq!(status.0, 403);
    node.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_carries_time_limited_turn_credentials() -> anyhow::Result<()> {
    let node = start_node(|c| {
        c.ice_servers = vec![
            protocol::signal::IceServer {
                urls: vec!["stun:127.0.0.1:3478".into()],
                ..Default::default()
            },
            protocol::signal::IceServer {
                urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                ..Default::default()
            },
        ];
        c.turn_secret = Some("north".into());
        c.turn_ttl = Duration::from_secs(600);
    });
    let room = room_name("turn");
    let client = chaos::Client::connect_with(
        &node.ws_url(),
        chaos::ClientConfig {
            use_ice_servers: false,
            ..Default::default()
        },
    )
    .await?;
    let joined = client
        .join(&room, &tests::mint(&node, &tests::claims(&room, "ann", 60)))
        .await?;
    let stun = &joined.ice_servers[0];
    assert!(
        stun.username.is_none() && stun.credential.is_none(),
        "{stun:?}"
    );
    let turn = &joined.ice_servers[1];
    let username = turn.username.clone().expect("turn username");
    let (expiry, user) = username.split_once(':').expect("expiry:user");
    assert_eq!(user, "ann");
    let expiry: u64 = expiry.parse()?;
    let now = tests::now_unix();
    assert!(
        expiry > now + 500 && expiry <= now + 601,
        "{expiry} vs {now}"
    );
    let expected = protocol::turn::credentials(b"north", "ann", expiry - 600, 600);
    assert_eq!(turn.credential.as_deref(), Some(expected.password.as_str()));
    client.leave().await?;
    Ok(())
}
