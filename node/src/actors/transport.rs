//! `Transport`: one actor per WebRTC peer connection (client ↔ node now; node ↔ node relay
//! links later). It owns the connection and its UDP port, runs every operation on the media
//! runtime, one at a time, and reports connection events to its `Peer`.

use crate::counters::{Kind, Live};
use crate::media::forward::{run_read_loop, TrackSource};
use crate::media::ports::PortLease;
use crate::media::MediaContext;
use actix::prelude::*;
use async_trait::async_trait;
use protocol::signal::{IceCandidate, PcKind, TrackKind};
use protocol::{NodeId, TrackId, UserId};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RtpSender;

/// How long a local description may wait for ICE gathering before it is sent as it is.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// No operation on a connection may hold its actor longer than this.
const OP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("invalid sdp: {0}")]
    InvalidSdp(String),
    #[error("webrtc: {0}")]
    Webrtc(String),
    #[error("transport closed")]
    Gone,
}

/// What a transport tells its peer.
#[derive(Message)]
#[rtype(result = "()")]
pub enum TransportEvent {
    /// The publisher connection delivered a track; its read loop is already running.
    TrackArrived(Arc<TrackSource>),
    /// A published track's read loop ended.
    TrackEnded(TrackId),
    /// ICE and DTLS are up: media written from now on arrives.
    Connected(PcKind),
    /// ICE or DTLS failed for good.
    Failed(PcKind),
}

/// A subscriber-side track added to the connection, not yet negotiated.
#[derive(Clone)]
pub struct SubSlot {
    pub source: Arc<TrackSource>,
    pub track: Arc<TrackLocalStaticRTP>,
    pub sender: Arc<dyn RtpSender>,
    pub ssrc: u32,
}

pub struct Transport {
    kind: PcKind,
    pc: Arc<dyn PeerConnection>,
    media: Arc<MediaContext>,
    gathered: watch::Receiver<bool>,
    lease: Option<PortLease>,
    _live: Live,
}

/// Receives webrtc's callbacks on the media runtime and turns them into messages.
struct Events {
    kind: PcKind,
    owner: UserId,
    /// A relay link's receiving end: tracks keep the publisher and track id their `a=msid`
    /// names on the sending node.
    relayed_from: Option<NodeId>,
    peer: Recipient<TransportEvent>,
    media: Arc<MediaContext>,
    gathered: watch::Sender<bool>,
}

#[async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(user = %self.owner, pc = ?self.kind, %state, "connection state");
        match state {
            RTCPeerConnectionState::Failed => self.peer.do_send(TransportEvent::Failed(self.kind)),
            RTCPeerConnectionState::Connected => {
                self.peer.do_send(TransportEvent::Connected(self.kind))
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if self.kind != PcKind::Publisher {
            return;
        }
        let Some(ssrc) = track.ssrcs().await.first().copied() else {
            tracing::warn!(user = %self.owner, "remote track without ssrc ignored");
            return;
        };
        let Some(codec) = track.codec(ssrc).await else {
            tracing::warn!(user = %self.owner, ssrc, "remote track without codec ignored");
            return;
        };
        let kind = match track.kind().await {
            RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let (id, owner) = match &self.relayed_from {
            None => (
                TrackId::new(format!("TR_{:016x}", rand::random::<u64>()))
                    .expect("generated ids are valid"),
                self.owner.clone(),
            ),
            Some(from) => {
                let (stream, track_id) = (track.stream_id().await, track.track_id().await);
                match (
                    UserId::new(stream.as_str()),
                    TrackId::new(track_id.as_str()),
                ) {
                    (Ok(owner), Ok(id)) => (id, owner),
                    _ => {
                        tracing::warn!(%from, %stream, %track_id, "relayed track without a valid msid ignored");
                        return;
                    }
                }
            }
        };
        let source = TrackSource::new(
            id.clone(),
            owner,
            self.relayed_from.clone(),
            kind,
            codec,
            track,
            ssrc,
            &self.media.counters,
        );
        let peer = self.peer.clone();
        let reader = source.clone();
        self.media.rt.spawn(async move {
            run_read_loop(reader).await;
            peer.do_send(TransportEvent::TrackEnded(id));
        });
        self.peer.do_send(TransportEvent::TrackArrived(source));
    }
}

impl Transport {
    /// Builds the peer connection on the media runtime. Start the actor with the result on
    /// the arbiter that should own it.
    /// `relay`: a link between two nodes (faster ICE pacing and failure detection, both ends
    /// being ours); `relayed_from`: its receiving end, whose tracks keep their msid.
    pub async fn connect(
        kind: PcKind,
        owner: UserId,
        relay: bool,
        relayed_from: Option<NodeId>,
        peer: Recipient<TransportEvent>,
        media: Arc<MediaContext>,
    ) -> Result<Transport, TransportError> {
        let (tx, rx) = watch::channel(false);
        let events = Arc::new(Events {
            kind,
            owner,
            relayed_from,
            peer,
            media: media.clone(),
            gathered: tx,
        });
        let m = media.clone();
        let built = media
            .rt
            .spawn(async move {
                tokio::time::timeout(OP_TIMEOUT, m.new_peer_connection(kind, relay, events))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("creating a peer connection timed out"))
                    })
            })
            .await
            .map_err(|e| TransportError::Webrtc(e.to_string()))?
            .map_err(|e| TransportError::Webrtc(e.to_string()))?;
        let (pc, lease) = built;
        Ok(Transport {
            kind,
            pc,
            gathered: rx,
            lease: Some(lease),
            _live: Live::new(&media.counters, Kind::Transport),
            media,
        })
    }

    /// Runs `f` with the connection on the media runtime; the actor handles nothing else
    /// meanwhile (`AtomicResponse`), so operations on one connection never interleave.
    fn run<T, F, Fut>(
        &self,
        op: &'static str,
        f: F,
    ) -> AtomicResponse<Self, Result<T, TransportError>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn PeerConnection>, watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = Result<T, TransportError>> + Send + 'static,
    {
        let fut = f(self.pc.clone(), self.gathered.clone());
        let kind = self.kind;
        let task = self.media.rt.spawn(async move {
            let started = std::time::Instant::now();
            let res = tokio::time::timeout(OP_TIMEOUT, fut).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::debug!(pc = ?kind, op, elapsed_ms, ok = matches!(res, Ok(Ok(_))), "transport op");
            res.unwrap_or_else(|_| {
                tracing::warn!(pc = ?kind, op, "transport operation timed out");
                Err(TransportError::Webrtc(format!("{op} timed out")))
            })
        });
        AtomicResponse::new(Box::pin(
            async move { task.await.map_err(|_| TransportError::Gone)? }.into_actor(self),
        ))
    }
}

impl Actor for Transport {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        let pc = self.pc.clone();
        let lease = self.lease.take();
        let kind = self.kind;
        self.media.rt.spawn(async move {
            if let Err(e) = pc.close().await {
                tracing::debug!(pc = ?kind, error = %e, "close");
            }
            // The port goes back to the pool only once its socket is closed.
            drop(lease);
        });
    }
}

fn webrtc_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Webrtc(e.to_string())
}

/// The local description once ICE gathering finished, so it carries every candidate and a
/// client that does no trickle ICE can connect.
async fn local_sdp(
    pc: &Arc<dyn PeerConnection>,
    mut gathered: watch::Receiver<bool>,
    media: &MediaContext,
) -> Result<String, TransportError> {
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|done| *done)).await;
    pc.local_description()
        .await
        .map(|d| media.announced(d.sdp))
        .ok_or_else(|| TransportError::Webrtc("no local description".into()))
}

/// The client's offer on the publisher connection; answers it.
#[derive(Message)]
#[rtype(result = "Result<String, TransportError>")]
pub struct ApplyOffer(pub String);

impl Handler<ApplyOffer> for Transport {
    type Result = AtomicResponse<Self, Result<String, TransportError>>;
    fn handle(&mut self, msg: ApplyOffer, _: &mut Context<Self>) -> Self::Result {
        let media = self.media.clone();
        self.run("apply_offer", move |pc, gathered| async move {
            let offer = RTCSessionDescription::offer(msg.0)
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            pc.set_remote_description(offer)
                .await
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            let answer = pc.create_answer(None).await.map_err(webrtc_err)?;
            pc.set_local_description(answer).await.map_err(webrtc_err)?;
            local_sdp(&pc, gathered, &media).await
        })
    }
}

/// A new offer on the subscriber connection, covering the tracks added and removed so far.
#[derive(Message)]
#[rtype(result = "Result<String, TransportError>")]
pub struct CreateOffer;

impl Handler<CreateOffer> for Transport {
    type Result = AtomicResponse<Self, Result<String, TransportError>>;
    fn handle(&mut self, _: CreateOffer, _: &mut Context<Self>) -> Self::Result {
        let media = self.media.clone();
        self.run("create_offer", move |pc, gathered| async move {
            let offer = pc.create_offer(None).await.map_err(webrtc_err)?;
            pc.set_local_description(offer).await.map_err(webrtc_err)?;
            local_sdp(&pc, gathered, &media).await
        })
    }
}

/// The client's answer to the subscriber offer. On success returns, for each slot, the
/// payload type the client accepted for the slot's codec (`None`: codec refused).
#[derive(Message)]
#[rtype(result = "Result<Vec<Option<u8>>, TransportError>")]
pub struct ApplyAnswer {
    pub sdp: String,
    pub slots: Vec<SubSlot>,
}

impl Handler<ApplyAnswer> for Transport {
    type Result = AtomicResponse<Self, Result<Vec<Option<u8>>, TransportError>>;
    fn handle(&mut self, msg: ApplyAnswer, _: &mut Context<Self>) -> Self::Result {
        self.run("apply_answer", move |pc, _| async move {
            let answer = RTCSessionDescription::answer(msg.sdp)
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            pc.set_remote_description(answer)
                .await
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            let mut pts = Vec::with_capacity(msg.slots.len());
            for slot in &msg.slots {
                let pt = match slot.sender.get_parameters().await {
                    Ok(params) => {
                        payload_type_for(&slot.source.codec, &params.rtp_parameters.codecs)
                    }
                    Err(_) => None,
                };
                pts.push(pt);
            }
            Ok(pts)
        })
    }
}

/// The payload type negotiated for `codec`: same MIME type, and for H264 the same profile and
/// packetization mode.
pub fn payload_type_for(
    codec: &RTCRtpCodec,
    negotiated: &[rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters],
) -> Option<u8> {
    let fmtp_key = |line: &str, key: &str| {
        line.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let same_mime: Vec<_> = negotiated
        .iter()
        .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type))
        .collect();
    let exact = same_mime.iter().find(|c| {
        ["profile-level-id", "packetization-mode", "profile-id"]
            .iter()
            .all(|k| fmtp_key(&c.rtp_codec.sdp_fmtp_line, k) == fmtp_key(&codec.sdp_fmtp_line, k))
    });
    exact.or(same_mime.first()).map(|c| c.payload_type)
}

/// Adds an outgoing track carrying `source` to the subscriber connection.
#[derive(Message)]
#[rtype(result = "Result<SubSlot, TransportError>")]
pub struct AddTrack(pub Arc<TrackSource>);

impl Handler<AddTrack> for Transport {
    type Result = AtomicResponse<Self, Result<SubSlot, TransportError>>;
    fn handle(&mut self, msg: AddTrack, _: &mut Context<Self>) -> Self::Result {
        self.run("add_track", move |pc, _| async move {
            let source = msg.0;
            let ssrc = rand::random::<u32>();
            let kind = match source.kind {
                TrackKind::Audio => RtpCodecKind::Audio,
                TrackKind::Video => RtpCodecKind::Video,
            };
            // msid = "<publisher participant id> <track id>" (PROTOCOL.md subscribe_offer).
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                source.owner.to_string(),
                source.id.to_string(),
                source.id.to_string(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    active: true,
                    codec: source.codec.clone(),
                    ..Default::default()
                }],
            )));
            let sender = pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(webrtc_err)?;
            Ok(SubSlot {
                source,
                track,
                sender,
                ssrc,
            })
        })
    }
}

/// Removes a subscriber-side track; the next offer stops its transceiver.
#[derive(Message)]
#[rtype(result = "Result<(), TransportError>")]
pub struct RemoveTrack(pub Arc<dyn RtpSender>);

impl Handler<RemoveTrack> for Transport {
    type Result = AtomicResponse<Self, Result<(), TransportError>>;
    fn handle(&mut self, msg: RemoveTrack, _: &mut Context<Self>) -> Self::Result {
        self.run("remove_track", move |pc, _| async move {
            pc.remove_track(&msg.0).await.map_err(webrtc_err)
        })
    }
}

/// A trickled remote candidate.
#[derive(Message)]
#[rtype(result = "Result<(), TransportError>")]
pub struct AddCandidate(pub IceCandidate);

impl Handler<AddCandidate> for Transport {
    type Result = AtomicResponse<Self, Result<(), TransportError>>;
    fn handle(&mut self, msg: AddCandidate, _: &mut Context<Self>) -> Self::Result {
        self.run("add_candidate", move |pc, _| async move {
            let c = msg.0;
            let init = RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                username_fragment: c.username_fragment,
                ..Default::default()
            };
            pc.add_ice_candidate(init).await.map_err(webrtc_err)
        })
    }
}

/// Closes the connection and stops the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for Transport {
    type Result = ();
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;

    fn codec(mime: &str, fmtp: &str) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: vec![],
        }
    }

    #[test]
    fn payload_type_matches_h264_profile_and_mode() {
        let negotiated = vec![
            RTCRtpCodecParameters {
                rtp_codec: codec("video/VP8", ""),
                payload_type: 96,
            },
            RTCRtpCodecParameters {
                rtp_codec: codec(
                    "video/H264",
                    "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
                ),
                payload_type: 100,
            },
            RTCRtpCodecParameters {
                rtp_codec: codec(
                    "video/H264",
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                ),
                payload_type: 102,
            },
        ];
        let h264 = codec("video/h264", "profile-level-id=42E01F;packetization-mode=1");
        assert_eq!(payload_type_for(&h264, &negotiated), Some(102));
        assert_eq!(
            payload_type_for(&codec("video/vp8", ""), &negotiated),
            Some(96)
        );
        assert_eq!(payload_type_for(&codec("video/AV1", ""), &negotiated), None);
    }
}
