//! The interceptor chains of the node's connections, and the one interceptor of our own.
//!
//! Every interceptor handles every packet of its connection, so each kind of connection gets
//! only what it uses. A subscriber connection only sends media: it answers NACKs, sends sender
//! reports, and passes keyframe requests up. A publisher connection only receives: it sends
//! NACKs, receiver reports and transport-wide congestion feedback (the browser's send-side
//! bandwidth estimate runs on it).
//!
//! [`KeyframeRequestForwarder`] marks inbound keyframe requests (PLI, FIR) for the application. webrtc 0.21 stops inbound
//! RTCP at the end of the interceptor chain unless an interceptor vouches for it, so without
//! this a subscriber's PLI would never reach the publisher. Adapted from webrtc-rs's
//! `rtcp-processing` example; placed last so every other interceptor saw the RTCP first.

use protocol::signal::PcKind;
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, NackResponderBuilder, Packet,
    ReceiverReportBuilder, Registry, SenderReportBuilder, Slot, StreamInfo, TaggedPacket,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RtpCodecKind};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::time::Instant;

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
        PcKind::Subscriber => Registry::new()
            .with(Slot::NackResponder, NackResponderBuilder::new().build())
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            .with(Slot::from(14_000), KeyframeRequestForwarder::default()),
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

#[derive(Default)]
pub struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
