//! `Transport`: one actor per WebRTC peer connection (client ↔ node, and node ↔ node relay
//! links). The connection itself lives on a media engine worker; the actor names it and runs
//! each operation there, one at a time, and its `Peer` hears the connection's events.

use crate::counters::{Kind, Live};
use crate::media::engine::worker::Conn;
use crate::media::engine::{ConnRef, ConnSpec, EngineError};
use crate::media::forward::TrackSource;
use crate::media::MediaContext;
use actix::prelude::*;
use protocol::signal::{IceCandidate, PcKind, TrackKind};
use protocol::{NodeId, TrackId, UserId};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

impl From<EngineError> for TransportError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Busy => TransportError::Webrtc(e.to_string()),
            EngineError::Stopped => TransportError::Gone,
        }
    }
}

/// What a transport tells its peer.
#[derive(Message)]
#[rtype(result = "()")]
pub enum TransportEvent {
    /// The publisher connection delivered a track; its packets are already forwarded.
    TrackArrived(Arc<TrackSource>),
    /// A published track ended.
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
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    /// The subscriber connection the slot's packets are written to.
    pub conn: ConnRef,
}

pub struct Transport {
    kind: PcKind,
    conn: ConnRef,
    _live: Live,
}

impl Transport {
    /// Creates the connection on the engine worker of `shard` (the room: one room's
    /// connections share a worker). Start the actor with the result.
    /// `relay`: a link between two nodes (faster ICE pacing and failure detection, both ends
    /// being ours); `relayed_from`: its receiving end, whose tracks keep their msid.
    pub async fn connect(
        kind: PcKind,
        owner: UserId,
        relay: bool,
        relayed_from: Option<NodeId>,
        peer: Recipient<TransportEvent>,
        media: Arc<MediaContext>,
        shard: &str,
    ) -> Result<Transport, TransportError> {
        let worker = media.engine.worker_for(shard).clone();
        let spec = ConnSpec {
            kind,
            owner,
            room: shard.to_owned(),
            relay,
            relayed_from,
            events: peer,
        };
        let id = tokio::time::timeout(OP_TIMEOUT, worker.call(move |w| w.create(spec)))
            .await
            .map_err(|_| TransportError::Webrtc("creating a peer connection timed out".into()))??
            .map_err(TransportError::Webrtc)?;
        Ok(Transport {
            kind,
            conn: ConnRef { worker, conn: id },
            _live: Live::new(&media.counters, Kind::Transport),
        })
    }

    /// Runs `f` with the connection on its worker; the actor handles nothing else
    /// meanwhile (`AtomicResponse`), so operations on one connection never interleave.
    fn run<T, F>(&self, op: &'static str, f: F) -> AtomicResponse<Self, Result<T, TransportError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, TransportError> + Send + 'static,
    {
        let (worker, id, kind) = (self.conn.worker.clone(), self.conn.conn, self.kind);
        let fut = async move {
            let call = worker.call(move |w| {
                let res = w.conn(id).map(f);
                w.touch(id);
                res.unwrap_or(Err(TransportError::Gone))
            });
            match tokio::time::timeout(OP_TIMEOUT, call).await {
                Ok(res) => {
                    let res = res.map_err(TransportError::from).and_then(|r| r);
                    tracing::debug!(pc = ?kind, op, ok = res.is_ok(), "transport op");
                    res
                }
                Err(_) => {
                    tracing::warn!(pc = ?kind, op, "transport operation timed out");
                    Err(TransportError::Webrtc(format!("{op} timed out")))
                }
            }
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self)))
    }
}

impl Actor for Transport {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        let id = self.conn.conn;
        if let Err(e) = self.conn.worker.post(move |w| w.close(id)) {
            tracing::warn!(pc = ?self.kind, error = %e, "connection not closed");
        }
    }
}

fn webrtc_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Webrtc(e.to_string())
}

/// The local description with every candidate (the node's are known from the start), so a
/// client that does no trickle ICE can connect.
fn local_sdp(pc: &mut RTCPeerConnection) -> Result<String, TransportError> {
    // An empty candidate ends gathering: the description says end-of-candidates.
    pc.add_local_candidate(RTCIceCandidateInit::default())
        .map_err(webrtc_err)?;
    pc.local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| TransportError::Webrtc("no local description".into()))
}

/// The client's offer on the publisher connection; answers it.
#[derive(Message)]
#[rtype(result = "Result<String, TransportError>")]
pub struct ApplyOffer(pub String);

impl Handler<ApplyOffer> for Transport {
    type Result = AtomicResponse<Self, Result<String, TransportError>>;
    fn handle(&mut self, msg: ApplyOffer, _: &mut Context<Self>) -> Self::Result {
        self.run("apply_offer", move |c| {
            let pc = &mut c.pc;
            let offer = RTCSessionDescription::offer(msg.0)
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            pc.set_remote_description(Instant::now(), offer)
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            let answer = pc.create_answer(None).map_err(webrtc_err)?;
            pc.set_local_description(Instant::now(), answer)
                .map_err(webrtc_err)?;
            local_sdp(pc)
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
        self.run("create_offer", move |c| {
            let pc = &mut c.pc;
            let offer = pc.create_offer(None).map_err(webrtc_err)?;
            pc.set_local_description(Instant::now(), offer)
                .map_err(webrtc_err)?;
            local_sdp(pc)
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
        self.run("apply_answer", move |c| {
            let pc = &mut c.pc;
            let answer = RTCSessionDescription::answer(msg.sdp)
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            pc.set_remote_description(Instant::now(), answer)
                .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
            Ok(msg
                .slots
                .iter()
                .map(|slot| {
                    pc.rtp_sender(slot.sender).and_then(|mut sender| {
                        payload_type_for(
                            &slot.source.codec,
                            &sender.get_parameters().rtp_parameters.codecs,
                        )
                    })
                })
                .collect())
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
        let conn = self.conn.clone();
        self.run("add_track", move |c| {
            let source = msg.0;
            let ssrc = rand::random::<u32>();
            let kind = match source.kind {
                TrackKind::Audio => RtpCodecKind::Audio,
                TrackKind::Video => RtpCodecKind::Video,
            };
            // msid = "<publisher participant id> <track id>" (PROTOCOL.md subscribe_offer).
            let track = MediaStreamTrack::new(
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
            );
            let sender = c.pc.add_track(track).map_err(webrtc_err)?;
            c.outbound.insert(source.id.to_string(), source.clone());
            c.quality.track_added(
                ssrc,
                source.id.clone(),
                source.kind,
                source.codec.clock_rate,
            );
            Ok(SubSlot {
                source,
                sender,
                ssrc,
                conn,
            })
        })
    }
}

/// Removes a subscriber-side track; the next offer stops its transceiver.
#[derive(Message)]
#[rtype(result = "Result<(), TransportError>")]
pub struct RemoveTrack(pub SubSlot);

impl Handler<RemoveTrack> for Transport {
    type Result = AtomicResponse<Self, Result<(), TransportError>>;
    fn handle(&mut self, msg: RemoveTrack, _: &mut Context<Self>) -> Self::Result {
        self.run("remove_track", move |c| {
            c.outbound.remove(msg.0.source.id.as_str());
            c.quality.track_removed(msg.0.ssrc);
            c.pc.remove_track(msg.0.sender).map_err(webrtc_err)
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
        self.run("add_candidate", move |c| {
            let pc = &mut c.pc;
            let c = msg.0;
            let init = RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                username_fragment: c.username_fragment,
                ..Default::default()
            };
            pc.add_remote_candidate(init).map_err(webrtc_err)
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
