//! A short path for media a server forwards (added by the media cluster's vendored copy).
//!
//! [`RTCPeerConnection::handle_write`] sends an RTP packet through every handler of the
//! pipeline (endpoint, interceptors, SRTP, data channel, SCTP, DTLS, ICE, demuxer), each
//! queueing it by value, and [`poll_write`](sansio::Protocol::poll_write) walks all of them
//! again. A forwarded packet needs two of those steps, SRTP and the selected candidate pair,
//! when the caller answers NACKs and writes sender reports itself (a media server keeps a
//! send history anyway). [`RTCPeerConnection::protect_rtp`] takes exactly those steps and hands
//! the datagram back to the caller, who sends it.

use super::RTCPeerConnection;
use bytes::BytesMut;
use shared::error::{Error, Result};
use shared::marshal::{Marshal, MarshalSize};
use shared::{TaggedBytesMut, TransportContext};
use std::time::Instant;

impl RTCPeerConnection {
    /// Protects an RTP packet with the connection's SRTP context and addresses it to the
    /// selected candidate pair, without any interceptor seeing it. The caller sends the
    /// datagram, and keeps its own counts: the packet is not in `get_stats`' outbound
    /// statistics.
    pub fn protect_rtp(&mut self, now: Instant, packet: &rtp::Packet) -> Result<TaggedBytesMut> {
        let Some((local, remote)) = self
            .pipeline_context
            .ice_handler_context
            .ice_transport
            .agent
            .get_selected_candidate_pair()
        else {
            return Err(Error::Other("no selected candidate pair".to_owned()));
        };
        let transport = TransportContext {
            local_addr: local.base_addr(),
            peer_addr: remote.addr(),
            transport_protocol: local.network_type().to_protocol(),
            ..Default::default()
        };
        let Some(context) = self
            .pipeline_context
            .srtp_handler_context
            .local_srtp_context
            .as_mut()
        else {
            return Err(Error::Other("no local SRTP context yet".to_owned()));
        };
        let mut plain = BytesMut::zeroed(packet.marshal_size());
        let n = packet.marshal_to(&mut plain)?;
        plain.truncate(n);
        let message = context.encrypt_rtp_with_header(&plain, &packet.header)?;

        Ok(TaggedBytesMut {
            now,
            transport,
            message,
        })
    }
}
