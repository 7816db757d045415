//! The interceptor chains of the node's connections, and the one interceptor of our own.
//!
//! Every interceptor handles every packet of its connection, so each kind of connection gets
//! only what it uses. A subscriber connection only sends media, and its media skips the chain
//! (`RTCPeerConnection::protect_rtp`): the node answers its NACKs and sends its sender reports
//! (`media::history`); the chain only passes keyframe requests, NACKs and receiver reports
//! (for `media::quality`) up. A publisher connection only receives: it sends
//! NACKs, receiver reports and transport-wide congestion feedback (the browser's send-side
//! bandwidth estimate runs on it).
//!
//! [`KeyframeRequestForwarder`] (in `protocol::keyframe`, shared with the chaos client) marks
//! inbound keyframe requests (PLI, FIR) for the application; without it a subscriber's PLI
//! would never reach the publisher. Placed last so every other interceptor saw the RTCP first.

pub use protocol::keyframe::{is_keyframe_request, KeyframeRequestForwarder};
use protocol::signal::PcKind;
use rtc::interceptor::{NackGeneratorBuilder, ReceiverReportBuilder, Registry, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RtpCodecKind};

/// Codecs, feedback and interceptors for a connection of `kind`.
pub fn chain(kind: PcKind) -> rtc::shared::error::Result<(MediaEngine, Registry)> {
    let mut engine = MediaEngine::default();
    engine.register_default_codecs()?;
    for parameter in ["", "pli"] {
        engine.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = match kind {
        // The node answers NACKs and sends sender reports itself (`media::history`): its
        // forwarded media does not pass through the chain.
        PcKind::Subscriber => Registry::new().with(
            Slot::from(14_000),
            KeyframeRequestForwarder::with_nacks().with_reports(),
        ),
        PcKind::Publisher => {
            configure_simulcast_extension_headers(&mut engine)?;
            let registry = Registry::new()
                .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
                .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
            configure_twcc_receiver_only(registry, &mut engine)?
        }
    };
    Ok((engine, registry))
}
