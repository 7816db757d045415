//! Two webrtc-rs peer connections on loopback, no node in between: proves that webrtc 0.21
//! accepts the synthetic RTP (SSRC and payload type match the negotiated sender) and that
//! the subscriber side maps msids and counts packets correctly.

use crate::events::TaskSet;
use crate::peer::{build_peer, Peer, TrackSink};
use crate::publisher::{self, LocalTrack, PublishOpts, VideoCodec};
use crate::stats::TrackStats;
use crate::subscriber::{StatsBook, TrackReaders};
use protocol::signal::TrackKind;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use webrtc::peer_connection::RTCSessionDescription;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(20);

/// Offer from `a`, answer from `b`, both after complete gathering (no trickle).
async fn negotiate(a: &Peer, b: &Peer) -> crate::Result<()> {
    let offer = a.pc.create_offer(None).await?;
    a.pc.set_local_description(offer).await?;
    let offer = a.local_sdp_after_gathering(WAIT).await?;
    assert!(offer.contains("a=candidate:"), "offer carries candidates");
    b.pc.set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let answer = b.pc.create_answer(None).await?;
    b.pc.set_local_description(answer).await?;
    let answer = b.local_sdp_after_gathering(WAIT).await?;
    a.pc.set_remote_description(RTCSessionDescription::answer(answer)?)
        .await?;
    Ok(())
}

/// Polls the stats until `done` accepts them (media flows continuously, so polling the
/// counters is the wait), failing with the last snapshot after [`WAIT`].
async fn wait_stats(
    book: &StatsBook,
    done: impl Fn(&[TrackStats]) -> bool,
) -> Result<Vec<TrackStats>, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = book.snapshot();
        if done(&s) {
            return Ok(s);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("stats never satisfied the condition: {s:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn received(stats: &[TrackStats], kind: TrackKind) -> u64 {
    stats
        .iter()
        .filter(|t| t.kind == kind)
        .map(|t| t.received)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_rtp_crosses_a_loopback_pair() {
    let tasks = Arc::new(TaskSet::default());
    let book = Arc::new(StatsBook::default());
    let sink: Arc<dyn TrackSink> = Arc::new(TrackReaders {
        stats: book.clone(),
        tasks: tasks.clone(),
    });
    let sender = build_peer(LOOPBACK, &[], None, None).await.unwrap();
    let receiver = build_peer(LOOPBACK, &[], Some(sink), None).await.unwrap();

    let mut audio = publisher::add_track(&sender, TrackKind::Audio, VideoCodec::Vp8, "alice")
        .await
        .unwrap();
    let mut video = publisher::add_track(&sender, TrackKind::Video, VideoCodec::Vp8, "alice")
        .await
        .unwrap();
    negotiate(&sender, &receiver).await.unwrap();

    let opts = PublishOpts::default();
    for t in [&mut audio, &mut video] {
        publisher::start_sending(t, &opts, sender.state_watch(), &tasks)
            .await
            .unwrap();
    }
    let tracks: [&LocalTrack; 2] = [&audio, &video];
    sender.wait_connected(WAIT).await.unwrap();
    receiver.wait_connected(WAIT).await.unwrap();

    // One second of media: 100 video and 50 audio packets.
    let stats = wait_stats(&book, |s| {
        received(s, TrackKind::Video) >= 100 && received(s, TrackKind::Audio) >= 50
    })
    .await
    .unwrap();

    let sent: Vec<_> = tracks.iter().map(|t| t.stats()).collect();
    assert_eq!(
        (sent[0].payload_type, sent[1].payload_type),
        (111, 96),
        "{sent:?}"
    );
    assert_eq!(stats.len(), 2, "{stats:?}");
    for t in &stats {
        let local = sent.iter().find(|s| s.kind == t.kind).unwrap();
        assert_eq!(t.publisher, "alice", "msid stream id is the publisher");
        assert_eq!(t.track_id, local.local_track_id, "msid track id");
        assert_eq!((t.lost, t.duplicates, t.foreign), (0, 0, 0), "{t:?}");
        assert!(t.received <= local.sent, "{t:?} vs {local:?}");
        assert!(
            t.latency_p99_us < 500_000 && t.latency_p50_us <= t.latency_p99_us,
            "{t:?}"
        );
        assert!(t.last_packet_unix_us > 0 && !t.ended);
    }

    tasks.abort_all();
    sender.close().await;
    receiver.close().await;
}
