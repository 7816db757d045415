//! The figures of a run, the summary table and the progress line. Pure: the run hands in
//! what it measured.

use super::config::LoadConfig;
use super::plan::Role;
use super::tally::{Counts, Rates};
use crate::stats::LatencyHistogram;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// What the run was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub rooms: u32,
    pub publishers_per_room: u32,
    pub subscribers_per_room: u32,
    /// `audio+video`, `audio`, `video` or `none`.
    pub media: String,
    pub video_kbps: u32,
    pub video_packets_per_s: u32,
    pub duration_s: f64,
    pub join_rate: f64,
    pub urls: Vec<String>,
}

/// How the joins went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Joins {
    /// Participants the run meant to start.
    pub planned: u32,
    /// Joins started (the others were not due yet when the run ended).
    pub attempted: u32,
    /// Joined (and, publishers, published).
    pub ok: u32,
    pub failed: u32,
    /// Joined, then lost their connection to the node before the end.
    pub dropped: u32,
    /// Each distinct failure with how often it happened, most frequent first.
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    pub error: String,
    pub count: u32,
}

/// Percentiles of a distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: u64,
}

impl Percentiles {
    /// From a histogram of microseconds; `None` when it is empty.
    pub fn from_micros(h: &Histogram<u64>) -> Option<Percentiles> {
        let ms = |us: u64| us as f64 / 1000.0;
        (!h.is_empty()).then(|| Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            samples: h.len(),
        })
    }

    /// From the client library's latency histogram (microseconds); `None` when empty.
    pub fn from_latency(h: &LatencyHistogram) -> Option<Percentiles> {
        let ms = |us: u64| us as f64 / 1000.0;
        (h.count() > 0).then(|| Percentiles {
            p50: ms(h.percentile(50.0)),
            p95: ms(h.percentile(95.0)),
            p99: ms(h.percentile(99.0)),
            max: ms(h.max()),
            samples: h.count(),
        })
    }
}

/// One direction of media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Flow {
    /// Participants that sent (publishers) or received (subscribers) in this direction.
    pub participants: u32,
    pub packets: u64,
    /// RTP payload bytes.
    pub bytes: u64,
    /// Sum over the participants of each one's bytes over its time in the run, in bit/s.
    pub bitrate_bps: f64,
    /// `bitrate_bps` over `participants`.
    pub bitrate_bps_per_participant: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Loss {
    pub lost: u64,
    pub duplicates: u64,
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tracks {
    pub published: u32,
    /// Tracks the subscribers received, each counted once per subscriber.
    pub subscribed: u32,
    /// What `subscribed` would be with every planned participant in: subscribers ×
    /// publishers × tracks each, per room.
    pub expected_subscribed: u32,
}

/// Everything `chaos load` reports at the end, as the table and the JSON show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub config: RunInfo,
    /// From the first join to the end of the media.
    pub elapsed_s: f64,
    /// Ended early by Ctrl-C.
    pub interrupted: bool,
    pub joins: Joins,
    /// From opening the WebSocket to `joined`.
    pub join_time_ms: Option<Percentiles>,
    /// Participants per node that served them (`joined.node`).
    pub nodes: BTreeMap<String, u32>,
    pub tracks: Tracks,
    pub sent: Flow,
    pub received: Flow,
    pub loss: Loss,
    /// Send to receive, from the timestamps in the synthetic payloads (the sender's and
    /// receiver's wall clocks: meaningful on one machine or with synchronised clocks).
    pub latency_ms: Option<Percentiles>,
}

/// One participant that joined, at the end of the run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub role: Role,
    pub node: String,
    pub counts: Counts,
    /// From its join (and publish) to the end of the media.
    pub active: Duration,
    pub tracks_published: u32,
    pub tracks_received: u32,
    pub dropped: bool,
}

/// What the run measured, for [`Summary::build`].
#[derive(Debug, Clone)]
pub struct Measured {
    pub elapsed: Duration,
    pub interrupted: bool,
    pub attempted: u32,
    /// Join times in microseconds.
    pub join_times: Histogram<u64>,
    /// Failed joins and publishes by error.
    pub errors: BTreeMap<String, u32>,
    pub outcomes: Vec<Outcome>,
    /// Every received packet's latency, every subscriber and track pooled.
    pub latency: LatencyHistogram,
}

impl Summary {
    pub fn build(c: &LoadConfig, m: Measured) -> Summary {
        let flow = |role: Role, pick: fn(&Counts) -> (u64, u64)| {
            let mut f = Flow::default();
            for o in m.outcomes.iter().filter(|o| o.role == role) {
                let (packets, bytes) = pick(&o.counts);
                f.participants += 1;
                f.packets += packets;
                f.bytes += bytes;
                let secs = o.active.as_secs_f64();
                if secs > 0.0 {
                    f.bitrate_bps += bytes as f64 * 8.0 / secs;
                }
            }
            if f.participants > 0 {
                f.bitrate_bps_per_participant = f.bitrate_bps / f64::from(f.participants);
            }
            f
        };
        let mut total = Counts::default();
        let mut nodes = BTreeMap::new();
        for o in &m.outcomes {
            total.add(&o.counts);
            *nodes.entry(o.node.clone()).or_insert(0) += 1;
        }
        let mut errors: Vec<ErrorCount> = m
            .errors
            .iter()
            .map(|(e, n)| ErrorCount {
                error: e.clone(),
                count: *n,
            })
            .collect();
        errors.sort_by(|a, b| b.count.cmp(&a.count).then(a.error.cmp(&b.error)));
        let failed = m.errors.values().sum();
        Summary {
            config: RunInfo {
                rooms: c.rooms,
                publishers_per_room: c.publishers,
                subscribers_per_room: c.subscribers,
                media: c.media().to_owned(),
                video_kbps: c.video_kbps,
                video_packets_per_s: c.video_pps,
                duration_s: c.duration.as_secs_f64(),
                join_rate: c.join_rate,
                urls: c.urls.clone(),
            },
            elapsed_s: m.elapsed.as_secs_f64(),
            interrupted: m.interrupted,
            joins: Joins {
                planned: c.participants(),
                attempted: m.attempted,
                ok: m.outcomes.len() as u32,
                failed,
                dropped: m.outcomes.iter().filter(|o| o.dropped).count() as u32,
                errors,
            },
            join_time_ms: Percentiles::from_micros(&m.join_times),
            nodes,
            tracks: Tracks {
                published: m.outcomes.iter().map(|o| o.tracks_published).sum(),
                subscribed: m.outcomes.iter().map(|o| o.tracks_received).sum(),
                expected_subscribed: c.rooms * c.subscribers * c.publishers * c.kinds(),
            },
            sent: flow(Role::Publisher, |c| (c.sent_packets, c.sent_bytes)),
            received: flow(Role::Subscriber, |c| (c.received_packets, c.received_bytes)),
            loss: Loss {
                lost: total.lost,
                duplicates: total.duplicates,
                percent: total.loss() * 100.0,
            },
            latency_ms: Percentiles::from_latency(&m.latency),
        }
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let c = &self.config;
        let j = &self.joins;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chaos load: {} room(s) × ({} publishers + {} subscribers), {}{}, {:.1} s{} over {} URL(s)",
            c.rooms,
            c.publishers_per_room,
            c.subscribers_per_room,
            c.media,
            if c.media.contains("video") {
                format!(" (video {} kbit/s)", c.video_kbps)
            } else {
                String::new()
            },
            self.elapsed_s,
            if self.interrupted { " (interrupted)" } else { "" },
            c.urls.len(),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<12} {} ok, {} failed, {} dropped later ({} planned, {} started)",
            "joins", j.ok, j.failed, j.dropped, j.planned, j.attempted
        );
        let _ = writeln!(
            out,
            "{:<12} {}",
            "join time",
            percentiles(self.join_time_ms.as_ref())
        );
        let nodes: Vec<String> = self.nodes.iter().map(|(n, k)| format!("{n} {k}")).collect();
        let _ = writeln!(out, "{:<12} {}", "nodes", none_if_empty(&nodes.join(", ")));
        let t = &self.tracks;
        let _ = writeln!(
            out,
            "{:<12} {} published, {} subscribed ({} expected)",
            "tracks", t.published, t.subscribed, t.expected_subscribed
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>12} {:>14} {:>16}",
            "", "participants", "packets", "bitrate", "per participant"
        );
        for (name, f) in [("sent", &self.sent), ("received", &self.received)] {
            let _ = writeln!(
                out,
                "{:<12} {:>12} {:>12} {:>14} {:>16}",
                name,
                f.participants,
                f.packets,
                bitrate(f.bitrate_bps),
                bitrate(f.bitrate_bps_per_participant)
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<12} {:.3} % ({} lost, {} duplicates)",
            "loss", self.loss.percent, self.loss.lost, self.loss.duplicates
        );
        let _ = writeln!(
            out,
            "{:<12} {}",
            "latency",
            percentiles(self.latency_ms.as_ref())
        );
        for e in &j.errors {
            let _ = writeln!(out, "{:<12} {}× {}", "error", e.count, e.error);
        }
        out.trim_end().to_owned()
    }
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn percentiles(p: Option<&Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
            p.p50, p.p95, p.p99, p.max, p.samples
        ),
        None => "-".to_owned(),
    }
}

/// `850.0 kbit/s`, `4.20 Mbit/s`.
pub fn bitrate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.2} Mbit/s", bps / 1e6)
    } else {
        format!("{:.1} kbit/s", bps / 1e3)
    }
}

/// The state of the run once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    pub planned: u32,
    pub joined: u32,
    pub failed: u32,
    pub dropped: u32,
    pub publishers: u32,
    pub subscribers: u32,
    pub rates: Rates,
}

impl Progress {
    /// The progress line: on a terminal it rewrites itself (carriage return, erase to the end
    /// of the line, no newline); elsewhere it is a line of its own.
    pub fn render(&self, tty: bool) -> String {
        let line = format!(
            "{:>6.1}s  joined {}/{}  failed {}  dropped {}  publishers {}  subscribers {}  \
             send {}  recv {}  loss {:.2} %",
            self.elapsed.as_secs_f64(),
            self.joined,
            self.planned,
            self.failed,
            self.dropped,
            self.publishers,
            self.subscribers,
            bitrate(self.rates.send_bps),
            bitrate(self.rates.receive_bps),
            self.rates.loss * 100.0
        );
        if tty {
            format!("\r{line}\x1b[K")
        } else {
            format!("{line}\n")
        }
    }
}

#[cfg(test)]
mod tests;
