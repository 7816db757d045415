//! One node, synthetic WebRTC clients: every participant receives every other participant's
//! audio and video, late joiners get existing tracks, departures are announced, and the node
//! releases everything once the room empties.

use chaos::PublishOpts;
use protocol::signal::ServerMessage;
use tests::{
    assert_delivery, join, room_name, start_node, wait_media, wait_node_idle,
    wait_numbered_messages, wait_until, MEDIA_WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_publishers_late_joiner_and_departures() -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let room = room_name("media");
    let names = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for name in names {
        let c = join(&node, &room, name).await?;
        c.publish(PublishOpts::default()).await?;
        clients.push(c);
    }
    // Each receives both tracks of the other two (2 s of video at 100 packets/s).
    for (i, c) in clients.iter().enumerate() {
        let others: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| *n)
            .collect();
        wait_media(c, &others, 200).await?;
    }
    for (c, name) in clients.iter().zip(names) {
        assert_delivery(name, c);
    }

    // A late joiner receives every existing track, and is announced to the others.
    let cursor = clients[0].message_count();
    let dave = join(&node, &room, "dave").await?;
    let joined = dave.joined().expect("joined");
    let listed: Vec<String> = joined
        .participants
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(listed, names, "joined lists the participants in join order");
    assert!(
        joined.participants.iter().all(|p| p.tracks.len() == 2),
        "{joined:?}"
    );
    wait_media(&dave, &names, 100).await?;
    assert_delivery("dave", &dave);
    clients[0]
        .wait_for_since(cursor, MEDIA_WAIT, |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.id.as_str() == "dave")
        })
        .await?;

    // `leave` and an abrupt disconnect are both announced with the departed tracks.
    let cursor: Vec<usize> = clients.iter().map(|c| c.message_count()).collect();
    let bob_tracks: Vec<String> = joined.participants[1]
        .tracks
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    clients[1].leave().await?;
    for (i, c) in [(0, &clients[0]), (2, &clients[2])] {
        c.wait_for_since(
            cursor[i],
            MEDIA_WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { id } if id.as_str() == "bob"),
        )
        .await?;
        for t in &bob_tracks {
            c.wait_for_since(cursor[i], MEDIA_WAIT, |m| {
                matches!(m, ServerMessage::TrackUnpublished { participant, track_id } if participant.as_str() == "bob" && track_id.as_str() == t)
            })
            .await?;
        }
    }
    let cursor = clients[0].message_count();
    clients[2].close_abruptly().await;
    clients[0]
        .wait_for_since(
            cursor,
            MEDIA_WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { id } if id.as_str() == "carol"),
        )
        .await?;
    clients[0]
        .wait_for_since(cursor, MEDIA_WAIT, |m| matches!(m, ServerMessage::TrackUnpublished { participant, .. } if participant.as_str() == "carol"))
        .await?;

    // The room's snapshot agrees: two members left, each with its two tracks.
    wait_until(MEDIA_WAIT, "snapshot with alice and dave", || async {
        let snap = node.snapshot().await;
        let members: Vec<String> = snap["rooms"][0]["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["id"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if members == ["alice", "dave"] {
            Ok(())
        } else {
            Err(format!("{snap}"))
        }
    })
    .await?;

    clients[0].leave().await?;
    dave.leave().await?;
    wait_node_idle(&node, MEDIA_WAIT).await?;
    let c = node.counters();
    assert!(c.packets_forwarded > 1000, "{c:?}");
    // New subscribers asked the video publishers for keyframes.
    assert!(c.keyframe_requests >= 3, "{c:?}");
    node.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_messages_reach_the_user_in_order() -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let room = room_name("msg");
    let a = join(&node, &room, "a").await?;
    let b = join(&node, &room, "b").await?;
    for i in 0..20 {
        a.send_message("b", serde_json::json!({ "n": i })).await?;
    }
    wait_numbered_messages(&b, "a", 20, MEDIA_WAIT).await?;
    // A user who is not in the room is `not_found`.
    let cursor = a.message_count();
    a.send_message("nobody", serde_json::json!(1)).await?;
    a.wait_for_since(cursor, MEDIA_WAIT, |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: protocol::ErrorCode::NotFound,
                ..
            }
        )
    })
    .await?;
    a.leave().await?;
    b.leave().await?;
    wait_node_idle(&node, MEDIA_WAIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublishing_and_replacing_the_publisher_connection() -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let room = room_name("unpub");
    let a = join(&node, &room, "a").await?;
    let b = join(&node, &room, "b").await?;
    a.publish(PublishOpts::default()).await?;
    b.wait_received_from("a", 100, MEDIA_WAIT).await?;

    // Renegotiating with the transceivers inactive unpublishes both tracks.
    let cursor = b.message_count();
    a.unpublish().await?;
    for kind in ["audio", "video"] {
        b.wait_for_since(cursor, MEDIA_WAIT, |m| {
            matches!(m, ServerMessage::TrackUnpublished { participant, .. } if participant.as_str() == "a")
        })
        .await
        .map_err(|e| anyhow::anyhow!("{kind}: {e}"))?;
    }
    wait_until(MEDIA_WAIT, "room without a's tracks", || async {
        let snap = node.snapshot().await;
        match snap["rooms"][0]["tracks"].as_array().map(Vec::len) {
            Some(0) => Ok(()),
            _ => Err(snap.to_string()),
        }
    })
    .await?;

    // A brand-new publisher connection (new ICE credentials) replaces the old one.
    a.close_publisher().await?;
    let before = b.received_from("a");
    a.publish(PublishOpts::default()).await?;
    b.wait_received_from("a", before + 100, MEDIA_WAIT).await?;
    assert!(!b
        .messages()
        .iter()
        .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })));
    a.leave().await?;
    b.leave().await?;
    wait_node_idle(&node, MEDIA_WAIT).await?;
    Ok(())
}
