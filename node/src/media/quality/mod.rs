//! Per-connection quality: packet loss, jitter, round-trip time and bitrate, measured by the
//! media engine's workers and published once a second as Prometheus histograms and as
//! views `/debug/snapshot` shows per participant.
//!
//! - **Up** (publisher → node), per published track: [`up::UpStream`] counts every received
//!   RTP packet (RFC 3550 A.3 loss, A.8 jitter, payload bitrate). It lives in the track's
//!   [`Inbound`]. The node NACKs video, so repaired video loss is not loss; audio's is raw.
//! - **Down** (node → subscriber), per outgoing stream: [`down::DownStream`] reads the
//!   subscriber's RTCP receiver reports (loss on the node's path, net of the gaps the node
//!   forwarded; jitter; the round trip from LSR/DLSR against the node's sender reports) and
//!   the payload octets the node sent.
//!
//! Every histogram is observed once per stream (RTT: once per connection) per sample, about
//! once a second, never per packet. Relay links between nodes are shown in the snapshot but
//! kept out of the histograms, which describe clients' connections.

pub mod down;
pub mod up;

use crate::media::engine::ConnSpec;
use crate::media::forward::Inbound;
use crate::media::history::SendLog;
use arc_swap::ArcSwap;
use down::DownStream;
use protocol::signal::{PcKind, TrackKind};
use protocol::{TrackId, UserId};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub const LOSS: &str = "sfu_quality_packet_loss_ratio";
pub const JITTER: &str = "sfu_quality_jitter_seconds";
pub const RTT: &str = "sfu_quality_rtt_seconds";
pub const BITRATE: &str = "sfu_quality_bitrate_bps";
pub const LOSS_BUCKETS: &[f64] = &[0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
pub const JITTER_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];
pub const RTT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6];
pub const BITRATE_BUCKETS: &[f64] = &[16e3, 32e3, 64e3, 128e3, 256e3, 512e3, 1e6, 2e6, 4e6, 8e6];

/// The outgoing streams of one connection, by SSRC.
#[derive(Default)]
pub struct ConnQuality {
    down: rustc_hash::FxHashMap<u32, Outgoing>,
}

struct Outgoing {
    track: TrackId,
    kind: TrackKind,
    stream: DownStream,
    /// Since the stream was added, on the node's path.
    sent: u64,
    lost: u64,
}

impl ConnQuality {
    /// The connection sends `track` as `ssrc` (a subscribed track was added).
    pub fn track_added(&mut self, ssrc: u32, track: TrackId, kind: TrackKind, clock_rate: u32) {
        self.down.insert(
            ssrc,
            Outgoing {
                track,
                kind,
                stream: DownStream::new(clock_rate),
                sent: 0,
                lost: 0,
            },
        );
    }

    pub fn track_removed(&mut self, ssrc: u32) {
        self.down.remove(&ssrc);
    }

    /// A sender report for `ssrc` left at `at`.
    pub fn report_sent(&mut self, ssrc: u32, ntp_time: u64, at: Instant) {
        if let Some(o) = self.down.get_mut(&ssrc) {
            o.stream.report_sent(ntp_time, at);
        }
    }

    /// RTCP from the remote, arrived at `at`: its report blocks about our streams.
    pub fn on_rtcp(
        &mut self,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        at: Instant,
        sent: &rustc_hash::FxHashMap<u32, SendLog>,
    ) {
        for p in packets {
            let any = p.as_any();
            let blocks = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                &rr.reports
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                &sr.reports
            } else {
                continue;
            };
            for block in blocks {
                if let Some(o) = self.down.get_mut(&block.ssrc) {
                    o.stream.on_report(block, at, sent.get(&block.ssrc));
                }
            }
        }
    }
}

/// One connection's quality at its latest sample.
#[derive(Debug, Clone, Serialize)]
pub struct ConnView {
    pub room: String,
    pub user: UserId,
    pub pc: PcKind,
    pub relay: bool,
    /// Published tracks arriving on the connection.
    pub up: Vec<UpView>,
    /// The streams it sends, together; `None` for a connection that sends nothing.
    pub down: Option<DownView>,
}

/// A published track, publisher → node.
#[derive(Debug, Clone, Serialize)]
pub struct UpView {
    pub track: TrackId,
    pub kind: TrackKind,
    /// Over the last sample interval (about a second).
    pub loss: f64,
    pub jitter_ms: f64,
    pub bitrate_bps: f64,
    /// Since the track started: received and lost (expected − received).
    pub packets: u64,
    pub lost: u64,
}

/// Node → subscriber, all of a connection's streams.
#[derive(Debug, Clone, Serialize)]
pub struct DownView {
    /// Lost / sent on the node's path over the last interval, when a report covered any.
    pub loss: Option<f64>,
    /// The highest of the streams' latest reported jitter.
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub bitrate_bps: f64,
    /// Since the streams started, as their receiver reports covered them: sent by the node,
    /// and of those lost.
    pub packets: u64,
    pub lost: u64,
    /// Each stream (a subscribed track) alone.
    pub streams: Vec<DownStreamView>,
}

/// One stream a subscriber connection sends.
#[derive(Debug, Clone, Serialize)]
pub struct DownStreamView {
    pub track: TrackId,
    pub kind: TrackKind,
    pub loss: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub bitrate_bps: f64,
    pub packets: u64,
    pub lost: u64,
}

/// Samples one connection: observes the histograms (client connections only) and returns
/// its view. Called about once a second.
pub fn sample(
    owner: &ConnSpec,
    inbound: &mut HashMap<String, Inbound>,
    quality: &mut ConnQuality,
    sent: &rustc_hash::FxHashMap<u32, SendLog>,
    now: Instant,
) -> ConnView {
    let observe = !owner.relay;
    let mut up = Vec::with_capacity(inbound.len());
    for track in inbound.values_mut() {
        let kind = track.source.kind;
        let stats = &mut track.quality;
        let s = stats.sample(now);
        if let (Some(s), true) = (&s, observe) {
            let k = kind.as_str();
            metrics::histogram!(LOSS, "direction" => "up", "kind" => k).record(s.loss);
            metrics::histogram!(JITTER, "direction" => "up", "kind" => k).record(s.jitter);
            metrics::histogram!(BITRATE, "direction" => "up", "kind" => k).record(s.bitrate_bps);
        }
        let s = s.unwrap_or(up::UpSample {
            loss: 0.0,
            jitter: 0.0,
            bitrate_bps: 0.0,
            packets: 0,
        });
        up.push(UpView {
            track: track.source.id.clone(),
            kind,
            loss: s.loss,
            jitter_ms: s.jitter * 1e3,
            bitrate_bps: s.bitrate_bps,
            packets: stats.received(),
            lost: stats.lost(),
        });
    }
    up.sort_by(|a, b| a.track.cmp(&b.track));
    let down = (!quality.down.is_empty()).then(|| sample_down(quality, sent, now, observe));
    tracing::trace!(
        room = owner.room,
        user = %owner.owner,
        pc = ?owner.kind,
        up = ?up.iter().map(|t| (t.kind, t.loss, t.bitrate_bps)).collect::<Vec<_>>(),
        down_loss = ?down.as_ref().and_then(|d| d.loss),
        rtt_ms = ?down.as_ref().and_then(|d| d.rtt_ms),
        "quality sample"
    );
    ConnView {
        room: owner.room.clone(),
        user: owner.owner.clone(),
        pc: owner.kind,
        relay: owner.relay,
        up,
        down,
    }
}

fn sample_down(
    quality: &mut ConnQuality,
    sent: &rustc_hash::FxHashMap<u32, SendLog>,
    now: Instant,
    observe: bool,
) -> DownView {
    let (mut interval_sent, mut interval_lost, mut covered) = (0u64, 0u64, false);
    let (mut jitter, mut bitrate) = (None::<f64>, 0.0);
    let (mut rtt_sum, mut rtts) = (0.0, 0u32);
    let mut streams = Vec::with_capacity(quality.down.len());
    for (ssrc, o) in quality.down.iter_mut() {
        let log = sent.get(ssrc);
        let s = o.stream.sample(log.map(|l| l.counts().1), now);
        let (ds, dl) = (s.sent, s.lost);
        o.sent += ds;
        o.lost += dl;
        let k = o.kind.as_str();
        if let Some(loss) = s.loss {
            covered = true;
            interval_sent += ds;
            interval_lost += dl;
            if observe {
                metrics::histogram!(LOSS, "direction" => "down", "kind" => k).record(loss);
            }
        }
        if let Some(j) = s.jitter {
            jitter = Some(jitter.map_or(j, |m: f64| m.max(j)));
            if observe {
                metrics::histogram!(JITTER, "direction" => "down", "kind" => k).record(j);
            }
        }
        if let Some(rtt) = s.rtt {
            rtt_sum += rtt.as_secs_f64();
            rtts += 1;
        }
        if s.bitrate_bps > 0.0 {
            bitrate += s.bitrate_bps;
            if observe {
                metrics::histogram!(BITRATE, "direction" => "down", "kind" => k)
                    .record(s.bitrate_bps);
            }
        }
        streams.push(DownStreamView {
            track: o.track.clone(),
            kind: o.kind,
            loss: s.loss,
            jitter_ms: s.jitter.map(|j| j * 1e3),
            rtt_ms: s.rtt.map(|r| r.as_secs_f64() * 1e3),
            bitrate_bps: s.bitrate_bps,
            packets: o.sent,
            lost: o.lost,
        });
    }
    streams.sort_by(|a, b| a.track.cmp(&b.track));
    let rtt = (rtts > 0).then(|| rtt_sum / f64::from(rtts));
    if let (Some(rtt), true) = (rtt, observe) {
        metrics::histogram!(RTT, "direction" => "down").record(rtt);
    }
    DownView {
        loss: covered.then(|| up::ratio(interval_lost, interval_sent)),
        jitter_ms: jitter.map(|j| j * 1e3),
        rtt_ms: rtt.map(|r| r * 1e3),
        bitrate_bps: bitrate,
        packets: streams.iter().map(|s| s.packets).sum(),
        lost: streams.iter().map(|s| s.lost).sum(),
        streams,
    }
}

/// The latest views of every worker's connections, for `/debug/snapshot`. Each worker
/// replaces its own slot once a second; readers never block it.
pub struct Board {
    slots: Vec<ArcSwap<Vec<ConnView>>>,
}

impl Board {
    pub fn new(workers: usize) -> Self {
        Board {
            slots: (0..workers)
                .map(|_| ArcSwap::from_pointee(Vec::new()))
                .collect(),
        }
    }

    pub fn publish(&self, worker: u8, views: Vec<ConnView>) {
        if let Some(slot) = self.slots.get(usize::from(worker)) {
            slot.store(Arc::new(views));
        }
    }

    fn views(&self) -> impl Iterator<Item = Arc<Vec<ConnView>>> + '_ {
        self.slots.iter().map(|s| s.load_full())
    }

    /// Adds `quality` to each member of each room of a snapshot's `rooms` array — `up`
    /// (the publisher connection's tracks) and `down` (the subscriber connection) — and
    /// `links_quality` (its relay links' connections) to each room.
    pub fn annotate(&self, rooms: &mut serde_json::Value) {
        let views: Vec<Arc<Vec<ConnView>>> = self.views().collect();
        let Some(rooms) = rooms.as_array_mut() else {
            return;
        };
        for room in rooms {
            let Some(id) = room.get("id").and_then(|v| v.as_str()).map(str::to_owned) else {
                continue;
            };
            let in_room = || views.iter().flat_map(|v| v.iter()).filter(|c| c.room == id);
            if let Some(members) = room.get_mut("members").and_then(|m| m.as_array_mut()) {
                for member in members {
                    let Some(user) = member.get("id").and_then(|v| v.as_str()) else {
                        continue;
                    };
                    let mine = || in_room().filter(|c| !c.relay && c.user.as_str() == user);
                    let up: Vec<&UpView> = mine()
                        .filter(|c| c.pc == PcKind::Publisher)
                        .flat_map(|c| c.up.iter())
                        .collect();
                    let down = mine()
                        .filter(|c| c.pc == PcKind::Subscriber)
                        .find_map(|c| c.down.as_ref());
                    member["quality"] = serde_json::json!({ "up": up, "down": down });
                }
            }
            let links: Vec<&ConnView> = in_room().filter(|c| c.relay).collect();
            room["links_quality"] = serde_json::json!(links);
        }
    }
}
