//! The interceptor the node and the chaos client put last in their chains: it marks inbound
//! keyframe requests (PLI, FIR) — and, for a sender that answers NACKs itself, NACKs — for the
//! application. webrtc-rs 0.21 stops inbound RTCP at the
//! end of the interceptor chain unless an interceptor vouches for it. Adapted from webrtc-rs's
//! `rtcp-processing` example. Sans-IO, like everything in this crate.

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::time::Instant;

pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Delivers inbound PLI/FIR (and NACKs and reception reports, if asked) to the
/// application; other RTCP ends here.
#[derive(Default)]
pub struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    nacks: bool,
    reports: bool,
}

impl KeyframeRequestForwarder {
    /// Delivers NACKs too: for an application that keeps its own send history (the node),
    /// with no NACK responder in the chain.
    pub fn with_nacks() -> Self {
        KeyframeRequestForwarder {
            nacks: true,
            ..Default::default()
        }
    }

    /// Delivers receiver reports (and sender reports, for their reception report blocks)
    /// too: for an application that measures its sending quality itself (the node).
    pub fn with_reports(mut self) -> Self {
        self.reports = true;
        self
    }
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
                .filter(|p| {
                    let any = p.as_any();
                    is_keyframe_request(p.as_ref())
                        || (self.nacks && any.is::<TransportLayerNack>())
                        || (self.reports
                            && (any.is::<ReceiverReport>() || any.is::<SenderReport>()))
                })
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
