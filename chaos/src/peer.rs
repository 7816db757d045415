//! One webrtc-rs 0.21 peer connection with the events a client waits on.
//!
//! webrtc 0.21 delivers events through an async handler; this turns the ones we need into
//! `watch` channels so callers can wait on a condition with a timeout instead of racing a
//! callback. The remote tracks go to an optional [`TrackSink`].

use crate::error::{Error, Result};
use protocol::signal::{IceCandidate, IceServer};
use rtc::ice::mdns::MulticastDnsMode;
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
}

/// Builds a peer connection bound to `bind_ip` (an ephemeral UDP port), with the default
/// codecs (Opus 111, VP8 96, ...) and interceptors (NACK, RTCP reports, TWCC receiver).
/// `ice_check_interval` paces ICE connectivity checks (`None`: webrtc's default, 200 ms).
pub(crate) async fn build_peer(
    bind_ip: IpAddr,
    ice_servers: &[IceServer],
    tracks: Option<Arc<dyn TrackSink>>,
    ice_check_interval: Option<Duration>,
) -> Result<Peer> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
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
        .with_udp_addrs(vec![SocketAddr::new(bind_ip, 0).to_string()])
        .build()
        .await?;
    Ok(Peer {
        pc: Arc::new(pc),
        gathering,
        state,
    })
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
    /// were gathered so far are used) and returns the local SDP with its candidates.
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
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| Error::Usage("no local description".into()))
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
