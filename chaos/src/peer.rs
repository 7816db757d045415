//! One webrtc-rs 0.21 peer connection with the events a client waits on.
//!
//! webrtc 0.21 delivers events through an async handler; this turns the ones we need into
//! `watch` channels so callers can wait on a condition with a timeout instead of racing a
//! callback. The remote tracks go to an optional [`TrackSink`].

use crate::error::{Error, Result};
use protocol::keyframe::KeyframeRequestForwarder;
use protocol::signal::{IceCandidate, IceServer};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Slot;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionState, Registry, SettingEngineBuilder,
};

/// Receives the remote tracks of a peer connection.
pub(crate) trait TrackSink: Send + Sync + 'static {
    fn on_track(&self, track: Arc<dyn TrackRemote>);
}

struct Handler {
    gathering: watch::Sender<RTCIceGatheringState>,
    state: watch::Sender<RTCPeerConnectionState>,
    tracks: Option<Arc<dyn TrackSink>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(sink) = &self.tracks {
            sink.on_track(track);
        }
    }
}

/// A peer connection plus watches of its gathering and connection states.
#[derive(Clone)]
pub(crate) struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    gathering: watch::Receiver<RTCIceGatheringState>,
    state: watch::Receiver<RTCPeerConnectionState>,
    /// `(bound, announced)` when the candidates we send name another address than the
    /// socket's (see [`LocalAddr::announce`]).
    announce: Option<(IpAddr, IpAddr)>,
}

/// Where a peer connection's UDP socket binds, and the address its candidates name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalAddr {
    pub bind: IpAddr,
    /// Announced instead of `bind` in the host candidates (and connection lines) of every
    /// SDP this connection sends: the remote peer never learns the bound address, so the
    /// only path it finds to us is the one our own checks open (it learns that one as a
    /// peer-reflexive candidate). `None` announces the bound address.
    ///
    /// webrtc-rs 0.21.1 stores `SettingEngineBuilder::with_nat_1to1_ips` but never applies
    /// it (its gatherer makes host candidates straight from the socket addresses), so the
    /// SDP text is rewritten instead; the client never trickles candidates, so its SDP is
    /// the only place they appear.
    pub announce: Option<IpAddr>,
}

impl From<IpAddr> for LocalAddr {
    fn from(bind: IpAddr) -> Self {
        LocalAddr {
            bind,
            announce: None,
        }
    }
}

/// Builds a peer connection bound to `local`'s address (an ephemeral UDP port), with the
/// default codecs (Opus 111, VP8 96, ...) and interceptors (NACK, RTCP reports, TWCC
/// receiver). `ice_check_interval` paces ICE connectivity checks (`None`: webrtc's default,
/// 200 ms).
pub(crate) async fn build_peer(
    local: impl Into<LocalAddr>,
    ice_servers: &[IceServer],
    tracks: Option<Arc<dyn TrackSink>>,
    ice_check_interval: Option<Duration>,
) -> Result<Peer> {
    build_peer_with_codecs(local, ice_servers, tracks, ice_check_interval, None).await
}

/// [`build_peer`] registering `codecs` instead of the default codecs when given. Keyframe
/// requests (PLI, FIR) reach the local tracks they name ([`KeyframeRequestForwarder`]).
pub(crate) async fn build_peer_with_codecs(
    local: impl Into<LocalAddr>,
    ice_servers: &[IceServer],
    tracks: Option<Arc<dyn TrackSink>>,
    ice_check_interval: Option<Duration>,
    codecs: Option<Vec<(RTCRtpCodecParameters, RtpCodecKind)>>,
) -> Result<Peer> {
    let local = local.into();
    let mut media_engine = MediaEngine::default();
    match codecs {
        None => media_engine.register_default_codecs()?,
        Some(codecs) => {
            for (codec, kind) in codecs {
                media_engine.register_codec(codec, kind)?;
            }
        }
    }
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?
        .with(Slot::from(14_000), KeyframeRequestForwarder::default());
    // Query-only mDNS (the default) opens a multicast socket on port 5353 per connection;
    // a synthetic client on loopback never needs it.
    let mut settings =
        SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled);
    if ice_check_interval.is_some() {
        settings = settings.with_ice_connection_attempts(ice_check_interval, None);
    }
    let settings = settings.build();
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers.iter().map(to_rtc_ice_server).collect())
        .build();
    let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let handler = Arc::new(Handler {
        gathering: gathering_tx,
        state: state_tx,
        tracks,
    });
    // A wildcard address would skip loopback, so bind the configured IP explicitly.
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(handler)
        .with_udp_addrs(vec![SocketAddr::new(local.bind, 0).to_string()])
        .build()
        .await?;
    Ok(Peer {
        pc: Arc::new(pc),
        gathering,
        state,
        announce: local
            .announce
            .filter(|a| *a != local.bind)
            .map(|a| (local.bind, a)),
    })
}

/// `sdp` with `announced` instead of `bound` as the address of its candidates (the related
/// address of a reflexive one included) and of its connection lines. Every other byte,
/// line endings included, is kept.
pub(crate) fn announce_address(sdp: &str, bound: IpAddr, announced: IpAddr) -> String {
    let (bound, announced) = (bound.to_string(), announced.to_string());
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let end = &line[body.len()..];
        if body.starts_with("a=candidate:") {
            // foundation component transport priority address port typ type [raddr a rport p] ...
            let mut fields: Vec<&str> = body.split(' ').collect();
            if fields.get(4) == Some(&bound.as_str()) {
                fields[4] = &announced;
            }
            if let Some(raddr) = fields.iter().position(|f| *f == "raddr").map(|i| i + 1) {
                if fields.get(raddr) == Some(&bound.as_str()) {
                    fields[raddr] = &announced;
                }
            }
            out.push_str(&fields.join(" "));
        } else if let Some(prefix) = body
            .strip_prefix("c=IN ")
            .and_then(|rest| rest.strip_suffix(bound.as_str()))
            .filter(|p| p.ends_with(' '))
        {
            out.push_str("c=IN ");
            out.push_str(prefix);
            out.push_str(&announced);
        } else {
            out.push_str(body);
        }
        out.push_str(end);
    }
    out
}

fn to_rtc_ice_server(s: &IceServer) -> RTCIceServer {
    RTCIceServer {
        urls: s.urls.clone(),
        username: s.username.clone().unwrap_or_default(),
        credential: s.credential.clone().unwrap_or_default(),
    }
}

/// The protocol's `RTCIceCandidateInit` in webrtc's form.
pub(crate) fn to_rtc_candidate(c: IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment,
        ..Default::default()
    }
}

impl Peer {
    /// The current connection state.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Waits until ICE gathering completes (or `timeout` passes: then whatever candidates
    /// were gathered so far are used) and returns the local SDP with its candidates, naming
    /// the announced address instead of the bound one when the connection has one.
    pub async fn local_sdp_after_gathering(&self, timeout: Duration) -> Result<String> {
        let mut rx = self.gathering.clone();
        let complete = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| *s == RTCIceGatheringState::Complete),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !complete {
            tracing::warn!(
                ?timeout,
                "ice gathering incomplete, sending the candidates so far"
            );
        }
        let sdp = self
            .pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| Error::Usage("no local description".into()))?;
        Ok(match self.announce {
            Some((bound, announced)) => announce_address(&sdp, bound, announced),
            None => sdp,
        })
    }

    /// Waits for `connected`; fails at once on `failed` or `closed`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.state.clone();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await
        .map(|r| r.map(|s| *s));
        match waited {
            Err(_) => Err(Error::timeout(
                format!("peer connection to connect (state {})", self.state()),
                timeout,
            )),
            Ok(Err(_)) => Err(Error::PeerConnection("handler dropped".into())),
            Ok(Ok(RTCPeerConnectionState::Connected)) => Ok(()),
            Ok(Ok(s)) => Err(Error::PeerConnection(s.to_string())),
        }
    }

    /// A receiver of connection-state changes, for tasks that start when connected.
    pub fn state_watch(&self) -> watch::Receiver<RTCPeerConnectionState> {
        self.state.clone()
    }

    /// Closes the connection. Dropping a webrtc 0.21 connection without `close()` leaves its
    /// driver task running, so every path out of a client ends here.
    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "peer connection close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn candidates_and_connection_lines_announce_the_other_address() {
        let sdp = "v=0\r\n\
c=IN IP4 127.0.11.100\r\n\
a=candidate:1 1 udp 2130706431 127.0.11.100 40000 typ host\r\n\
a=candidate:2 1 udp 1694498815 203.0.113.9 40001 typ srflx raddr 127.0.11.100 rport 40000\r\n\
a=candidate:3 1 udp 2130706431 127.0.11.1000 40002 typ host\r\n\
a=mid:0\r\n";
        let out = announce_address(sdp, ip("127.0.11.100"), ip("127.0.11.99"));
        assert_eq!(
            out,
            "v=0\r\n\
c=IN IP4 127.0.11.99\r\n\
a=candidate:1 1 udp 2130706431 127.0.11.99 40000 typ host\r\n\
a=candidate:2 1 udp 1694498815 203.0.113.9 40001 typ srflx raddr 127.0.11.99 rport 40000\r\n\
a=candidate:3 1 udp 2130706431 127.0.11.1000 40002 typ host\r\n\
a=mid:0\r\n"
        );
    }

    #[test]
    fn other_lines_and_line_endings_are_kept() {
        let (bound, announced) = (ip("127.0.0.1"), ip("127.0.0.2"));
        for sdp in [
            "a=mid:0\nx",
            "c=IN IP4 127.0.0.10\r\n",
            "c=IN IP4 0.0.0.0\n",
            "a=candidate:1 1 udp 1 127.0.0.10 9 typ host",
            "",
        ] {
            assert_eq!(announce_address(sdp, bound, announced), sdp);
        }
        assert_eq!(
            announce_address("c=IN IP4 127.0.0.1", bound, announced),
            "c=IN IP4 127.0.0.2"
        );
        let v6 = announce_address(
            "a=candidate:1 1 udp 1 ::1 9 typ host\n",
            ip("::1"),
            ip("fd00::1"),
        );
        assert_eq!(v6, "a=candidate:1 1 udp 1 fd00::1 9 typ host\n");
    }
}
