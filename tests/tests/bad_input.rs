//! Bad input from one client gets a clear error (or a closed socket) and never disturbs the
//! other sessions of the room, which keep receiving media throughout.

use chaos::Client;
use protocol::signal::{ClientMessage, ServerMessage};
use protocol::token::Claims;
use protocol::ErrorCode;
use std::time::Duration;
use tests::abuse::{expect_error, good_pair, still_flowing};
use tests::{claims, join, mint, room_name, start_node, wait_until};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_bad_tokens_get_errors() -> anyhow::Result<()> {
    // Four failed token checks on one socket: more than the default limit (tests/limits.rs).
    let node = start_node(|c| c.limits.auth_failures = 10);
    let room = room_name("bad");
    let good = good_pair(&node, &room).await?;

    let x = Client::connect(&node.ws_url()).await?;
    expect_error(
        &x,
        ErrorCode::BadRequest,
        x.send_raw_text("{not json".into()),
    )
    .await?;
    expect_error(
        &x,
        ErrorCode::BadRequest,
        x.send_raw_text(r#"{"type":"dance"}"#.into()),
    )
    .await?;
    expect_error(&x, ErrorCode::BadRequest, x.send_raw_binary(vec![1, 2, 3])).await?;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(1024 * 1024));
    expect_error(&x, ErrorCode::BadRequest, x.send_raw_text(big)).await?;
    expect_error(
        &x,
        ErrorCode::BadRequest,
        x.send(&ClientMessage::Publish { sdp: "v=0".into() }),
    )
    .await?;
    expect_error(&x, ErrorCode::BadRequest, x.send(&ClientMessage::Leave)).await?;

    // Tokens: forged, expired, for another room.
    let forged = protocol::token::mint(b"not-the-secret", &claims(&room, "mallory", 600));
    let join_msg = |token: String| ClientMessage::Join {
        room: protocol::RoomId::new(room.clone()).unwrap(),
        token,
        region: None,
    };
    expect_error(&x, ErrorCode::Unauthorized, x.send(&join_msg(forged))).await?;
    let mut expired: Claims = claims(&room, "mallory", 600);
    expired.exp = tests::now_unix() - 60;
    expect_error(
        &x,
        ErrorCode::Unauthorized,
        x.send(&join_msg(mint(&node, &expired))),
    )
    .await?;
    let other_room = mint(&node, &claims("elsewhere", "mallory", 600));
    expect_error(&x, ErrorCode::Forbidden, x.send(&join_msg(other_room))).await?;
    expect_error(
        &x,
        ErrorCode::Unauthorized,
        x.send(&join_msg("a.b.c".into())),
    )
    .await?;
    // After all that the socket still works.
    x.ping().await?;
    assert!(!x.is_closed());

    // Joined, but without `can_publish`; then garbage SDP from a publisher.
    let mut viewer = claims(&room, "viewer", 600);
    viewer.can_publish = false;
    let v = Client::connect(&node.ws_url()).await?;
    v.join(&room, &mint(&node, &viewer)).await?;
    expect_error(
        &v,
        ErrorCode::Forbidden,
        v.send(&ClientMessage::Publish {
            sdp: "v=0\r\n".into(),
        }),
    )
    .await?;
    let m = join(&node, &room, "mallory").await?;
    expect_error(
        &m,
        ErrorCode::BadRequest,
        m.send(&ClientMessage::Publish {
            sdp: "this is not sdp".into(),
        }),
    )
    .await?;
    expect_error(
        &m,
        ErrorCode::BadRequest,
        m.send(&ClientMessage::SubscribeAnswer { sdp: "nope".into() }),
    )
    .await?;
    expect_error(
        &m,
        ErrorCode::BadRequest,
        m.send_raw_text(r#"{"type":"join","room":"x","token":"y"}"#.into()),
    )
    .await?;

    still_flowing(&good, 100).await?;
    // The viewer (can_subscribe) receives the good clients' media although it cannot publish.
    wait_until(WAIT, "viewer receives media", || async {
        if v.received_from("good1") > 50 {
            Ok(())
        } else {
            Err(format!("{:?}", v.track_stats()))
        }
    })
    .await?;
    node.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_and_closed_without_harming_others() -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let room = room_name("flood");
    let good = good_pair(&node, &room).await?;
    let f = join(&node, &room, "flooder").await?;
    let start = std::time::Instant::now();
    for _ in 0..10_000 {
        if f.send_raw_text(r#"{"type":"ping"}"#.into()).await.is_err() {
            break; // the node closed the socket
        }
    }
    let sent_in = start.elapsed();
    f.wait_for(WAIT, |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        )
    })
    .await?;
    let closed = f.wait_closed(WAIT).await?;
    assert_eq!(
        closed.code(),
        Some(1008),
        "closed with policy violation: {closed:?}"
    );
    still_flowing(&good, 100).await?;
    // The flooder left the room; the good clients saw it go.
    good[0]
        .wait_for(
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { id } if id.as_str() == "flooder"),
        )
        .await?;
    eprintln!("10000 messages sent in {sent_in:?}");
    node.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_beyond_the_read_limit_closes_only_its_socket() -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let room = room_name("huge");
    let good = good_pair(&node, &room).await?;
    let x = join(&node, &room, "hoarder").await?;
    let huge = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    x.send_raw_text(huge).await?;
    x.wait_for(WAIT, |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        )
    })
    .await?;
    let closed = x.wait_closed(WAIT).await?;
    assert_eq!(closed.code(), Some(1009), "message too big: {closed:?}");
    still_flowing(&good, 100).await?;
    node.stop();
    Ok(())
}
