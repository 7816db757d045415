//! The media plane: webrtc-rs 0.21 peer connections, the UDP port pool, and the forwarding
//! path (publisher read loops writing to subscriber tracks through a forwarding table).
//!
//! Everything here runs on the node's multi-thread tokio runtime, never on actix arbiters:
//! webrtc-rs spawns its drivers with `tokio::spawn`, and a connection created inside an
//! arbiter would die with it (TOOLS.md).

pub mod forward;
pub mod interceptor;
pub mod ports;
pub mod sdp;

use crate::counters::Counters;
use ports::{PortLease, PortPool};
use protocol::signal::PcKind;
use rtc::peer_connection::transport::RTCIceCandidateType;
use std::net::IpAddr;
use std::sync::Arc;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    SettingEngineBuilder,
};
use webrtc::runtime::{Runtime, TokioRuntime};

/// What every peer connection of a node shares.
pub struct MediaContext {
    pub rt: tokio::runtime::Handle,
    pub counters: Arc<Counters>,
    ports: PortPool,
    udp_ip: IpAddr,
    public_ip: Option<String>,
    runtime: Arc<dyn Runtime>,
}

const RELAY_ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
const RELAY_ICE_DISCONNECTED: std::time::Duration = std::time::Duration::from_secs(2);
const RELAY_ICE_FAILED: std::time::Duration = std::time::Duration::from_secs(5);
const RELAY_ICE_KEEPALIVE: std::time::Duration = std::time::Duration::from_millis(500);

impl MediaContext {
    pub fn new(
        rt: tokio::runtime::Handle,
        counters: Arc<Counters>,
        udp_ip: IpAddr,
        udp_ports: (u16, u16),
        public_ip: Option<String>,
    ) -> Self {
        MediaContext {
            rt,
            counters,
            ports: PortPool::new(udp_ports),
            udp_ip,
            public_ip,
            runtime: Arc::new(TokioRuntime),
        }
    }

    /// The node's own SDP as clients must see it: with `--public-ip`, candidates announce
    /// that address instead of the bound one (see [`sdp::announce_address`]).
    pub fn announced(&self, sdp: String) -> String {
        match &self.public_ip {
            Some(public) => sdp::announce_address(&sdp, &self.udp_ip.to_string(), public),
            None => sdp,
        }
    }

    /// Builds a peer connection bound to one port of the node's range. Must run on the
    /// media runtime. The lease returns the port when dropped.
    pub async fn new_peer_connection(
        &self,
        kind: PcKind,
        relay: bool,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> anyhow::Result<(Arc<dyn PeerConnection>, PortLease)> {
        // A port may be taken by another process; try a few before giving up.
        let mut last_err = None;
        for _ in 0..8 {
            let lease = self.ports.lease()?;
            let (engine, registry) = interceptor::chain(kind)?;
            let mut settings = SettingEngineBuilder::new()
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
            if let Some(ip) = &self.public_ip {
                settings = settings.with_nat_1to1_ips(vec![ip.clone()], RTCIceCandidateType::Host);
            }
            if self.udp_ip.is_loopback() {
                settings = settings.with_include_loopback_candidate(true);
            }
            if relay {
                // Both ends are nodes: pace checks like a browser does, and notice a dead
                // path within seconds so the link is opened again (webrtc's defaults: 200 ms
                // checks, failed after 25 s).
                settings = settings
                    .with_ice_connection_attempts(Some(RELAY_ICE_CHECK_INTERVAL), None)
                    .with_ice_timeouts(
                        Some(RELAY_ICE_DISCONNECTED),
                        Some(RELAY_ICE_FAILED),
                        Some(RELAY_ICE_KEEPALIVE),
                    );
            }
            let built = PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(engine)
                .with_setting_engine(settings.build())
                .with_interceptor_registry(registry)
                .with_handler(handler.clone())
                .with_runtime(self.runtime.clone())
                .with_udp_addrs(vec![std::net::SocketAddr::new(self.udp_ip, lease.port())])
                .build()
                .await;
            match built {
                Ok(pc) => return Ok((Arc::new(pc), lease)),
                Err(e) => last_err = Some(e),
            }
        }
        Err(anyhow::anyhow!(
            "no usable udp port: {}",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        ))
    }
}
