//! Codecs through one node: H264 video published by a client reaches every subscriber under
//! the payload type that subscriber negotiated (which need not be the publisher's), and the
//! keyframe requests the node sends for new subscribers reach the publisher.

use chaos::{Client, PublishOpts, ReceivedCodec, TrackStats, VideoCodec};
use protocol::signal::{ServerMessage, TrackKind};
use std::sync::atomic::{AtomicU64, Ordering};
use tests::{
    assert_delivery, join, room_name, start_node, wait_media, wait_node_idle, wait_until,
    NodeHandle, MEDIA_WAIT,
};

/// The codec the subscribers must see: what alice publishes.
const WANT_VIDEO: &str = "video/H264";

/// webrtc-rs numbers codecs as the node does: H264 42e01f mode 1 is 125 on both legs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_with_the_default_numbering() -> anyhow::Result<()> {
    h264_through_a_node(None).await
}

/// Firefox offers H264 42e01f mode 1 as 126, which is HEVC in the node's own numbering: the
/// node takes alice's 126 and sends each subscriber the payload type it offered that
/// subscriber (125).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_numbered_as_firefox_does() -> anyhow::Result<()> {
    h264_through_a_node(Some(126)).await
}

async fn h264_through_a_node(publisher_pt: Option<u8>) -> anyhow::Result<()> {
    let node = start_node(|_| {});
    let room = room_name("h264");
    let alice = join(&node, &room, "alice").await?;
    let bob = join(&node, &room, "bob").await?;
    let carol = join(&node, &room, "carol").await?;
    alice
        .publish(PublishOpts {
            video_codec: VideoCodec::H264,
            video_payload_type: publisher_pt,
            ..PublishOpts::default()
        })
        .await?;

    // What alice sends: H264 under the payload type her offer gave it.
    let sent = alice.sent_stats().await;
    let alice_video = sent
        .iter()
        .find(|s| s.kind == TrackKind::Video)
        .ok_or_else(|| anyhow::anyhow!("alice publishes no video: {sent:?}"))?;
    let alice_pt = alice_video.payload_type;
    assert_eq!(
        alice_pt,
        publisher_pt.unwrap_or(VideoCodec::H264.default_payload_type()),
        "{sent:?}"
    );

    // Both subscribers get alice's video (≥ 100 packets, ≤ 1 % loss) as H264, under the
    // payload type their own SDP gives H264 42e01f mode 1.
    for (name, sub) in [("bob", &bob), ("carol", &carol)] {
        wait_media(sub, &["alice"], 100).await?;
        assert_delivery(name, sub);
        let video = received_track(sub, TrackKind::Video)?;
        let codec = received_codec(sub, &video)?;
        let offered = offered_h264_payload_types(sub, &video.track_id);
        println!(
            "{name}: alice sends video as {alice_pt}, {name}'s SDP offers it as {offered:?}, \
             {name} received {:?} ({} {})",
            codec.payload_types, codec.mime_type, codec.sdp_fmtp_line
        );
        assert!(
            codec.mime_type.eq_ignore_ascii_case(WANT_VIDEO),
            "{name} receives alice's video as {codec:?}, not {WANT_VIDEO}"
        );
        assert!(
            is_h264_42e01f_mode_1(&codec.sdp_fmtp_line),
            "{name}: {codec:?}"
        );
        assert_eq!(
            offered.len(),
            1,
            "{name}'s subscribe_offer should map exactly one payload type to H264 42e01f \
             mode 1: {offered:?}"
        );
        assert_eq!(
            codec.payload_types, offered,
            "{name} receives alice's video under its negotiated H264 payload type"
        );
        let audio = received_track(sub, TrackKind::Audio)?;
        let audio_codec = received_codec(sub, &audio)?;
        assert!(
            audio_codec.mime_type.eq_ignore_ascii_case("audio/opus"),
            "{name}: {audio_codec:?}"
        );
    }

    // Bob's and carol's down tracks asked alice for a keyframe, and every request the node
    // sent reached her video track.
    let before = wait_keyframe_requests_delivered(&node, &alice, 0).await?;
    println!("keyframe requests before dave: node sent {before}, alice saw {before}");

    // A new subscriber asks for one more.
    let dave = join(&node, &room, "dave").await?;
    wait_media(&dave, &["alice"], 100).await?;
    assert_delivery("dave", &dave);
    let dave_codec = received_codec(&dave, &received_track(&dave, TrackKind::Video)?)?;
    assert!(
        dave_codec.mime_type.eq_ignore_ascii_case(WANT_VIDEO),
        "dave: {dave_codec:?}"
    );
    let after = wait_keyframe_requests_delivered(&node, &alice, before).await?;
    println!("keyframe requests after dave: node sent {after}, alice saw {after}");

    for c in [&alice, &bob, &carol, &dave] {
        c.leave().await?;
    }
    wait_node_idle(&node, MEDIA_WAIT).await?;
    node.stop();
    Ok(())
}

/// Waits until the node has sent more than `above` keyframe requests and alice's video track
/// has received every one of them; returns that count.
async fn wait_keyframe_requests_delivered(
    node: &NodeHandle,
    publisher: &Client,
    above: u64,
) -> anyhow::Result<u64> {
    let seen = AtomicU64::new(0);
    wait_until(
        MEDIA_WAIT,
        "the node's keyframe requests at the publisher",
        || async {
            let sent = node.counters().keyframe_requests;
            let stats = publisher.sent_stats().await;
            let got: u64 = stats
                .iter()
                .filter(|s| s.kind == TrackKind::Video)
                .map(|s| s.keyframe_requests)
                .sum();
            seen.store(got, Ordering::Relaxed);
            if sent > above && got == sent {
                Ok(())
            } else {
                Err(format!(
                    "node sent {sent} (need > {above}), publisher saw {got}: {stats:?}"
                ))
            }
        },
    )
    .await?;
    Ok(seen.load(Ordering::Relaxed))
}

/// The one track of `kind` `sub` receives from alice.
fn received_track(sub: &Client, kind: TrackKind) -> anyhow::Result<TrackStats> {
    let stats = sub.track_stats();
    let mut tracks = stats
        .iter()
        .filter(|t| t.publisher == "alice" && t.kind == kind);
    match (tracks.next(), tracks.next()) {
        (Some(t), None) => Ok(t.clone()),
        _ => anyhow::bail!("not exactly one {kind:?} track from alice: {stats:?}"),
    }
}

fn received_codec(sub: &Client, track: &TrackStats) -> anyhow::Result<ReceivedCodec> {
    let codecs = sub.received_codecs();
    codecs
        .iter()
        .find(|c| c.publisher == track.publisher && c.track_id == track.track_id)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no codec recorded for {track:?}: {codecs:?}"))
}

fn is_h264_42e01f_mode_1(fmtp: &str) -> bool {
    let param = |key: &str| {
        fmtp.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    param("packetization-mode").as_deref() == Some("1")
        && param("profile-level-id").is_some_and(|p| p.starts_with("42e0"))
}

/// The payload types the latest `subscribe_offer` carrying alice's track `track_id` maps to
/// H264 42e01f mode 1, in that track's media section: what the subscriber's answer
/// negotiated (an answer keeps the offer's payload types).
fn offered_h264_payload_types(sub: &Client, track_id: &str) -> Vec<u8> {
    let msid = format!("a=msid:alice {track_id}");
    let Some(sdp) = sub.messages().into_iter().rev().find_map(|m| match m {
        ServerMessage::SubscribeOffer { sdp } if sdp.contains(&msid) => Some(sdp),
        _ => None,
    }) else {
        return Vec::new();
    };
    let Some(section) = sdp
        .split("\nm=")
        .find(|s| s.lines().any(|l| l.trim_end() == msid))
    else {
        return Vec::new();
    };
    let attr = |prefix: &str| -> Vec<(u8, String)> {
        section
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix(prefix))
            .filter_map(|rest| rest.split_once(' '))
            .filter_map(|(pt, value)| Some((pt.parse().ok()?, value.to_owned())))
            .collect()
    };
    let fmtp = attr("a=fmtp:");
    attr("a=rtpmap:")
        .into_iter()
        .filter(|(_, codec)| codec.eq_ignore_ascii_case("H264/90000"))
        .map(|(pt, _)| pt)
        .filter(|pt| {
            fmtp.iter()
                .any(|(p, line)| p == pt && is_h264_42e01f_mode_1(line))
        })
        .collect()
}
