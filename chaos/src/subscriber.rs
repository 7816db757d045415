//! The subscriber side: answers the node's `subscribe_offer`s on one recvonly peer
//! connection and measures every remote track it delivers.

use crate::error::Result;
use crate::events::{EventLog, TaskSet};
use crate::payload::unix_now_us;
use crate::peer::{build_peer, to_rtc_candidate, LocalAddr, Peer, TrackSink};
use crate::stats::{LatencyHistogram, TrackAccumulator, TrackStats};
use crate::ws::WsWriter;
use protocol::signal::{ClientMessage, IceCandidate, IceServer, TrackKind};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSessionDescription};

type Key = (String, String);

/// The codec of a received track: what the payload type of its packets maps to in this
/// subscriber's negotiated SDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivedCodec {
    /// The publisher's participant id (the track's msid stream id).
    pub publisher: String,
    /// The track id the node assigned (the track's msid track id).
    pub track_id: String,
    /// E.g. `video/H264`; empty when the payload type mapped to no negotiated codec.
    pub mime_type: String,
    pub sdp_fmtp_line: String,
    /// The payload types the received packets carried, in the order first seen.
    pub payload_types: Vec<u8>,
}

/// Per-track accumulators, keyed by (publisher, track id).
#[derive(Default)]
pub(crate) struct StatsBook {
    tracks: Mutex<BTreeMap<Key, Arc<Mutex<TrackAccumulator>>>>,
    codecs: Mutex<BTreeMap<Key, ReceivedCodec>>,
}

impl StatsBook {
    /// Notes that a packet of `key` carried `payload_type`, which `codec` is for.
    fn record_codec(&self, key: &Key, payload_type: u8, codec: Option<&RTCRtpCodec>) {
        let mut codecs = self.codecs.lock().unwrap_or_else(|p| p.into_inner());
        let entry = codecs.entry(key.clone()).or_insert_with(|| ReceivedCodec {
            publisher: key.0.clone(),
            track_id: key.1.clone(),
            mime_type: String::new(),
            sdp_fmtp_line: String::new(),
            payload_types: Vec::new(),
        });
        if let Some(c) = codec {
            entry.mime_type.clone_from(&c.mime_type);
            entry.sdp_fmtp_line.clone_from(&c.sdp_fmtp_line);
        }
        if !entry.payload_types.contains(&payload_type) {
            entry.payload_types.push(payload_type);
        }
    }

    /// The codec of every track received so far.
    pub fn codecs(&self) -> Vec<ReceivedCodec> {
        let codecs = self.codecs.lock().unwrap_or_else(|p| p.into_inner());
        codecs.values().cloned().collect()
    }

    fn entry(&self, key: Key, kind: TrackKind) -> Arc<Mutex<TrackAccumulator>> {
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        tracks
            .entry(key)
            .or_insert_with(|| Arc::new(Mutex::new(TrackAccumulator::new(kind))))
            .clone()
    }

    /// A copy of each track's latency histogram.
    pub fn latency_histograms(&self) -> Vec<(String, String, LatencyHistogram)> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        tracks
            .iter()
            .map(|((publisher, track), acc)| {
                let acc = acc.lock().unwrap_or_else(|p| p.into_inner());
                (publisher.clone(), track.clone(), acc.latency().clone())
            })
            .collect()
    }

    pub fn snapshot(&self) -> Vec<TrackStats> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        tracks
            .iter()
            .map(|((publisher, track), acc)| {
                acc.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .snapshot(publisher, track)
            })
            .collect()
    }
}

/// Starts a reader task per remote track.
pub(crate) struct TrackReaders {
    pub stats: Arc<StatsBook>,
    pub tasks: Arc<TaskSet>,
}

impl TrackSink for TrackReaders {
    fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let stats = self.stats.clone();
        self.tasks.spawn(read_track(track, stats));
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, stats: Arc<StatsBook>) {
    // The node's msid is `<publisher participant id> <track id>`.
    let publisher = track.stream_id().await;
    let track_id = track.track_id().await;
    let kind = match track.kind().await {
        RtpCodecKind::Audio => TrackKind::Audio,
        _ => TrackKind::Video,
    };
    tracing::debug!(%publisher, %track_id, ?kind, "remote track");
    let key = (publisher, track_id);
    let acc = stats.entry(key.clone(), kind);
    // (ssrc, payload type) of the last packet: the codec is looked up when it changes.
    let mut last: Option<(u32, u8)> = None;
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                let now = unix_now_us();
                let format = (pkt.header.ssrc, pkt.header.payload_type);
                if last != Some(format) {
                    last = Some(format);
                    let codec = track.codec(format.0).await;
                    stats.record_codec(&key, format.1, codec.as_ref());
                }
                acc.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record_payload(&pkt.payload, now);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    acc.lock().unwrap_or_else(|p| p.into_inner()).mark_ended();
}

/// Work for the subscriber task, in the order the node sent it.
pub(crate) enum SubscriberCmd {
    Offer(String),
    Candidate(Option<IceCandidate>),
}

/// What the subscriber task needs from its client.
pub(crate) struct SubscriberCtx {
    pub bind_ip: IpAddr,
    /// `ClientConfig::announce_ip`.
    pub announce_ip: Option<IpAddr>,
    pub ice_servers: Vec<IceServer>,
    pub gather_timeout: Duration,
    pub ice_check_interval: Option<Duration>,
    pub writer: Arc<WsWriter>,
    pub events: Arc<EventLog>,
    pub readers: Arc<TrackReaders>,
    /// The client's registry of connections to close on the way out.
    pub peers: Arc<Mutex<Vec<Peer>>>,
}

/// Handles offers and candidates one at a time until the channel closes.
pub(crate) async fn run(ctx: SubscriberCtx, mut rx: mpsc::Receiver<SubscriberCmd>) {
    let mut peer: Option<Peer> = None;
    // Candidates that arrived before a remote description could take them.
    let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            SubscriberCmd::Offer(sdp) => match answer(&ctx, &mut peer, sdp).await {
                Ok(()) => {
                    if let Some(p) = &peer {
                        for c in pending.drain(..) {
                            add_candidate(&ctx, p, c).await;
                        }
                    }
                }
                Err(e) => ctx.events.push_local_error(format!("subscribe offer: {e}")),
            },
            // End of candidates: nothing to do, gathering on our side is independent.
            SubscriberCmd::Candidate(None) => {}
            SubscriberCmd::Candidate(Some(c)) => {
                let c = to_rtc_candidate(c);
                match &peer {
                    Some(p) if p.pc.remote_description().await.is_some() => {
                        add_candidate(&ctx, p, c).await
                    }
                    _ => pending.push(c),
                }
            }
        }
    }
}

async fn add_candidate(ctx: &SubscriberCtx, peer: &Peer, c: RTCIceCandidateInit) {
    if let Err(e) = peer.pc.add_ice_candidate(c).await {
        ctx.events
            .push_local_error(format!("subscriber add_ice_candidate: {e}"));
    }
}

async fn answer(ctx: &SubscriberCtx, peer: &mut Option<Peer>, sdp: String) -> Result<()> {
    let p = match peer {
        Some(p) => p.clone(),
        None => {
            let sink: Arc<dyn TrackSink> = ctx.readers.clone();
            let local = LocalAddr {
                bind: ctx.bind_ip,
                announce: ctx.announce_ip,
            };
            let p = build_peer(local, &ctx.ice_servers, Some(sink), ctx.ice_check_interval).await?;
            ctx.peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(p.clone());
            *peer = Some(p.clone());
            p
        }
    };
    p.pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
        .await?;
    let answer = p.pc.create_answer(None).await?;
    p.pc.set_local_description(answer).await?;
    let sdp = p.local_sdp_after_gathering(ctx.gather_timeout).await?;
    ctx.writer
        .send(&ClientMessage::SubscribeAnswer { sdp })
        .await
}
