//! The publisher side: one sendonly peer connection with synthetic Opus and VP8 tracks.

use crate::error::{Error, Result};
use crate::events::TaskSet;
use crate::payload::{unix_now_us, Generator, MediaKind};
use crate::peer::Peer;
use protocol::signal::TrackKind;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::RTCPeerConnectionState;
use webrtc::rtp_transceiver::RtpTransceiver;

/// What to publish and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOpts {
    pub audio: bool,
    pub video: bool,
    /// Video packets per second (100 × 1200 bytes ≈ 1 Mbps).
    pub video_pps: u32,
    /// Audio packets per second (50 = 20 ms frames).
    pub audio_pps: u32,
    /// Video RTP payload size in bytes.
    pub video_payload: usize,
    /// Audio RTP payload size in bytes.
    pub audio_payload: usize,
}

impl Default for PublishOpts {
    fn default() -> Self {
        PublishOpts {
            audio: true,
            video: true,
            video_pps: 100,
            audio_pps: 50,
            video_payload: 1200,
            audio_payload: 160,
        }
    }
}

/// Counters of one published track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentStats {
    /// Our local track id (the node names the published track itself).
    pub local_track_id: String,
    pub kind: TrackKind,
    pub ssrc: u32,
    pub payload_type: u8,
    /// Packets handed to webrtc (`write_rtp` returned Ok).
    pub sent: u64,
    /// Still published (not removed by `unpublish`).
    pub active: bool,
}

pub(crate) struct LocalTrack {
    track: Arc<TrackLocalStaticRTP>,
    transceiver: Arc<dyn RtpTransceiver>,
    pub kind: TrackKind,
    local_id: String,
    ssrc: u32,
    sent: Arc<AtomicU64>,
    payload_type: u8,
    sender_task: Option<AbortHandle>,
    pub active: bool,
}

impl LocalTrack {
    pub fn stats(&self) -> SentStats {
        SentStats {
            local_track_id: self.local_id.clone(),
            kind: self.kind,
            ssrc: self.ssrc,
            payload_type: self.payload_type,
            sent: self.sent.load(Ordering::Relaxed),
            active: self.active,
        }
    }

    /// Stops the sender task and removes the track from the connection (its transceiver
    /// stops sending); the caller renegotiates.
    pub async fn remove(&mut self, peer: &Peer) -> Result<()> {
        if let Some(task) = self.sender_task.take() {
            task.abort();
        }
        self.active = false;
        if let Some(sender) = self.transceiver.sender().await? {
            peer.pc.remove_track(&sender).await?;
        }
        Ok(())
    }
}

/// The codec a synthetic track is declared with: exactly what `register_default_codecs`
/// registers, so the track matches a codec of the media engine.
fn codec(kind: TrackKind) -> RTCRtpCodec {
    match kind {
        TrackKind::Audio => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        TrackKind::Video => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
    }
}

/// The payload types `register_default_codecs` assigns, used until negotiation says otherwise.
fn default_payload_type(kind: TrackKind) -> u8 {
    match kind {
        TrackKind::Audio => 111,
        TrackKind::Video => 96,
    }
}

/// Adds a sendonly transceiver carrying a synthetic track. The msid stream id is our
/// participant id.
pub(crate) async fn add_track(peer: &Peer, kind: TrackKind, stream_id: &str) -> Result<LocalTrack> {
    let ssrc = rand::random::<u32>();
    let name = match kind {
        TrackKind::Audio => "audio",
        TrackKind::Video => "video",
    };
    let local_id = format!("{name}-{:08x}", rand::random::<u32>());
    let rtp_kind = match kind {
        TrackKind::Audio => RtpCodecKind::Audio,
        TrackKind::Video => RtpCodecKind::Video,
    };
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        local_id.clone(),
        format!("chaos-{name}"),
        rtp_kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec(kind),
            ..Default::default()
        }],
    )));
    let transceiver = peer
        .pc
        .add_transceiver_from_track(
            track.clone(),
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![stream_id.to_owned()],
                send_encodings: vec![],
            }),
        )
        .await?;
    Ok(LocalTrack {
        track,
        transceiver,
        kind,
        local_id,
        ssrc,
        sent: Arc::new(AtomicU64::new(0)),
        payload_type: default_payload_type(kind),
        sender_task: None,
        active: true,
    })
}

/// The payload type negotiated for the track's codec. `write_rtp` silently drops packets
/// whose payload type is not among the sender's negotiated codecs, so read it back.
async fn negotiated_payload_type(t: &LocalTrack) -> Result<u8> {
    let sender = t
        .transceiver
        .sender()
        .await?
        .ok_or_else(|| Error::Usage("transceiver has no sender".into()))?;
    let params = sender.get_parameters().await?;
    let want = codec(t.kind).mime_type;
    params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&want))
        .map(|c| c.payload_type)
        .ok_or_else(|| Error::Invalid(format!("answer did not accept {want}")))
}

/// Starts the sender task of a negotiated track: it waits for the connection, then writes
/// synthetic RTP at the requested rate until the connection or the client goes away.
pub(crate) async fn start_sending(
    t: &mut LocalTrack,
    opts: &PublishOpts,
    state: watch::Receiver<RTCPeerConnectionState>,
    tasks: &TaskSet,
) -> Result<()> {
    let pt = negotiated_payload_type(t).await?;
    t.payload_type = pt;
    let (kind, pps, len) = match t.kind {
        TrackKind::Audio => (MediaKind::Audio, opts.audio_pps, opts.audio_payload),
        TrackKind::Video => (MediaKind::Video, opts.video_pps, opts.video_payload),
    };
    let generator = Generator::new(kind, t.ssrc, pt, pps, len);
    t.sender_task = Some(tasks.spawn(send_loop(t.track.clone(), generator, state, t.sent.clone())));
    Ok(())
}

async fn send_loop(
    track: Arc<TrackLocalStaticRTP>,
    mut generator: Generator,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    sent: Arc<AtomicU64>,
) {
    // Packets written before DTLS is up are dropped by webrtc; start counting when connected.
    let connected = state
        .wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        })
        .await
        .is_ok_and(|s| *s == RTCPeerConnectionState::Connected);
    if !connected {
        return;
    }
    let mut ticker = tokio::time::interval(generator.tick_interval());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if matches!(
            *state.borrow(),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            return;
        }
        for pkt in generator.next_tick(unix_now_us()) {
            if let Err(e) = track.write_rtp(pkt).await {
                tracing::debug!(error = %e, "write_rtp failed, sender stops");
                return;
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
