//! The publisher side: one sendonly peer connection with synthetic Opus and VP8 (or H264)
//! tracks.

use crate::error::{Error, Result};
use crate::events::TaskSet;
use crate::payload::{unix_now_us, Generator, MediaKind};
use crate::peer::Peer;
use protocol::keyframe::is_keyframe_request;
use protocol::signal::TrackKind;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::RTCPeerConnectionState;
use webrtc::rtp_transceiver::RtpTransceiver;

/// The codec a synthetic video track is declared with. The payloads are the same synthetic
/// bytes either way (a node forwards RTP without decoding it); the codec decides what the SDP
/// offers and which payload type the packets carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum VideoCodec {
    #[default]
    Vp8,
    /// H.264 Constrained Baseline, `packetization-mode=1;profile-level-id=42e01f`, which every
    /// WebRTC browser offers.
    H264,
}

impl VideoCodec {
    /// The codec as the track and the media engine declare it.
    pub fn rtp_codec(self) -> RTCRtpCodec {
        match self {
            // Exactly what `register_default_codecs` registers, so the track matches a codec
            // of the media engine.
            VideoCodec::Vp8 => RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            VideoCodec::H264 => RTCRtpCodec {
                mime_type: MIME_TYPE_H264.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line:
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
                        .to_owned(),
                rtcp_feedback: vec![],
            },
        }
    }

    /// The payload type `register_default_codecs` gives it.
    pub fn default_payload_type(self) -> u8 {
        match self {
            VideoCodec::Vp8 => 96,
            VideoCodec::H264 => 125,
        }
    }
}

/// Whether `a` and `b` name the same media format: same MIME type and, for H264, the same
/// profile (profile-level-id without its level) and packetization mode (RFC 6184 8.2.2).
pub fn same_format(a: &RTCRtpCodec, b: &RTCRtpCodec) -> bool {
    if !a.mime_type.eq_ignore_ascii_case(&b.mime_type) {
        return false;
    }
    if !a.mime_type.eq_ignore_ascii_case(MIME_TYPE_H264) {
        return true;
    }
    let param = |c: &RTCRtpCodec, key: &str| {
        c.sdp_fmtp_line
            .split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    // packetization-mode defaults to 0 (RFC 6184 8.1).
    let mode = |c: &RTCRtpCodec| param(c, "packetization-mode").unwrap_or_else(|| "0".into());
    let profile = |c: &RTCRtpCodec| {
        param(c, "profile-level-id").map(|p| p.chars().take(4).collect::<String>())
    };
    mode(a) == mode(b) && profile(a) == profile(b)
}

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
    /// The video track's codec.
    pub video_codec: VideoCodec,
    /// The payload type the publisher connection gives `video_codec`, as a browser numbers
    /// codecs its own way: the connection then offers Opus and this one video codec only.
    /// `None`: webrtc-rs's default codecs and numbering (VP8 96, H264 42e01f mode 1 at 125,
    /// ...). Only the `publish` that creates the publisher connection sets its codecs.
    pub video_payload_type: Option<u8>,
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
            video_codec: VideoCodec::Vp8,
            video_payload_type: None,
        }
    }
}

impl PublishOpts {
    /// The codecs the publisher connection registers instead of webrtc-rs's defaults, when
    /// [`PublishOpts::video_payload_type`] asks for a numbering of its own.
    pub(crate) fn media_codecs(&self) -> Option<Vec<(RTCRtpCodecParameters, RtpCodecKind)>> {
        let payload_type = self.video_payload_type?;
        Some(vec![
            (
                RTCRtpCodecParameters {
                    rtp_codec: codec(TrackKind::Audio, self.video_codec),
                    payload_type: default_payload_type(TrackKind::Audio, self.video_codec),
                },
                RtpCodecKind::Audio,
            ),
            (
                RTCRtpCodecParameters {
                    rtp_codec: self.video_codec.rtp_codec(),
                    payload_type,
                },
                RtpCodecKind::Video,
            ),
        ])
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
    /// Keyframe requests (PLI, FIR) the remote sent about this track.
    pub keyframe_requests: u64,
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
    keyframe_requests: Arc<AtomicU64>,
    codec: RTCRtpCodec,
    payload_type: u8,
    sender_task: Option<AbortHandle>,
    feedback_task: Option<AbortHandle>,
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
            keyframe_requests: self.keyframe_requests.load(Ordering::Relaxed),
            active: self.active,
        }
    }

    /// Stops the sender task and removes the track from the connection (its transceiver
    /// stops sending); the caller renegotiates.
    pub async fn remove(&mut self, peer: &Peer) -> Result<()> {
        for task in [self.sender_task.take(), self.feedback_task.take()]
            .into_iter()
            .flatten()
        {
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
fn codec(kind: TrackKind, video: VideoCodec) -> RTCRtpCodec {
    match kind {
        TrackKind::Audio => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        TrackKind::Video => video.rtp_codec(),
    }
}

/// The payload types `register_default_codecs` assigns, used until negotiation says otherwise.
fn default_payload_type(kind: TrackKind, video: VideoCodec) -> u8 {
    match kind {
        TrackKind::Audio => 111,
        TrackKind::Video => video.default_payload_type(),
    }
}

/// Adds a sendonly transceiver carrying a synthetic track (video in `video`'s codec). The msid
/// stream id is our participant id.
pub(crate) async fn add_track(
    peer: &Peer,
    kind: TrackKind,
    video: VideoCodec,
    stream_id: &str,
) -> Result<LocalTrack> {
    let ssrc = rand::random::<u32>();
    let name = kind.as_str();
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
            codec: codec(kind, video),
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
        keyframe_requests: Arc::new(AtomicU64::new(0)),
        codec: codec(kind, video),
        payload_type: default_payload_type(kind, video),
        sender_task: None,
        feedback_task: None,
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
    params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| same_format(&c.rtp_codec, &t.codec))
        .map(|c| c.payload_type)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "answer did not accept {} {}",
                t.codec.mime_type, t.codec.sdp_fmtp_line
            ))
        })
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
    t.sender_task = Some(tasks.spawn(send_loop(
        t.track.clone(),
        generator,
        state.clone(),
        t.sent.clone(),
    )));
    t.feedback_task = Some(tasks.spawn(read_feedback(
        t.track.clone(),
        state,
        t.keyframe_requests.clone(),
    )));
    Ok(())
}

/// Counts the keyframe requests the remote sends about a track ([`protocol::keyframe::KeyframeRequestForwarder`]
/// hands them to the track), from when the connection is up until the track is unbound.
async fn read_feedback(
    track: Arc<TrackLocalStaticRTP>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    keyframe_requests: Arc<AtomicU64>,
) {
    // The track is bound (its events readable) by the time the connection is up.
    if !connected(&mut state).await {
        return;
    }
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            let n = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .count();
            keyframe_requests.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Waits until the connection is up (true) or has failed or closed (false).
async fn connected(state: &mut watch::Receiver<RTCPeerConnectionState>) -> bool {
    state
        .wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        })
        .await
        .is_ok_and(|s| *s == RTCPeerConnectionState::Connected)
}

async fn send_loop(
    track: Arc<TrackLocalStaticRTP>,
    mut generator: Generator,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    sent: Arc<AtomicU64>,
) {
    // Packets written before DTLS is up are dropped by webrtc; start counting when connected.
    if !connected(&mut state).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h264(fmtp: &str) -> RTCRtpCodec {
        RTCRtpCodec {
            sdp_fmtp_line: fmtp.to_owned(),
            ..VideoCodec::H264.rtp_codec()
        }
    }

    #[test]
    fn h264_formats_differ_by_profile_and_packetization_mode_only() {
        let ours = VideoCodec::H264.rtp_codec();
        assert!(same_format(
            &ours,
            &h264("profile-level-id=42E01F;packetization-mode=1")
        ));
        // The level is not part of the format.
        assert!(same_format(
            &ours,
            &h264("packetization-mode=1;profile-level-id=42e034")
        ));
        assert!(!same_format(
            &ours,
            &h264("packetization-mode=1;profile-level-id=42001f")
        ));
        assert!(!same_format(
            &ours,
            &h264("packetization-mode=0;profile-level-id=42e01f")
        ));
        // An absent packetization-mode is mode 0.
        assert!(!same_format(&ours, &h264("profile-level-id=42e01f")));
        assert!(!same_format(&ours, &VideoCodec::Vp8.rtp_codec()));
        assert!(same_format(
            &VideoCodec::Vp8.rtp_codec(),
            &RTCRtpCodec {
                mime_type: "video/vp8".into(),
                ..VideoCodec::Vp8.rtp_codec()
            }
        ));
    }

    #[test]
    fn default_opts_publish_vp8_with_the_default_codecs() {
        let opts = PublishOpts::default();
        assert_eq!(opts.video_codec, VideoCodec::Vp8);
        assert_eq!(opts.media_codecs(), None);
        let own = PublishOpts {
            video_codec: VideoCodec::H264,
            video_payload_type: Some(126),
            ..PublishOpts::default()
        }
        .media_codecs()
        .expect("codecs of its own");
        let pts: Vec<(u8, &str)> = own
            .iter()
            .map(|(c, _)| (c.payload_type, c.rtp_codec.mime_type.as_str()))
            .collect();
        assert_eq!(pts, [(111, MIME_TYPE_OPUS), (126, MIME_TYPE_H264)]);
    }
}
