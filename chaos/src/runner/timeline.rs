//! A run's timeline: every participant's packet counters sampled at a fixed period while
//! the faults run ([`record`]), the packets lost in a window such as a fault's
//! ([`packets_lost`]), and a picture of each participant's received packet rate with the
//! faults marked ([`render_svg`]). Everything but [`record`] is pure.
//!
//! What is counted:
//! - received: per (receiver, publisher), the distinct synthetic packets (`received -
//!   duplicates` of [`TrackStats`]) over every track of that publisher. A participant's
//!   statistics book outlives its clients, so these counters go on across recoveries.
//! - sent: per participant, what its tracks handed to webrtc ([`SentStats::sent`]). Those
//!   counters belong to the current client and start again from 0 with each recovery
//!   (a new client, new track ids).
//!
//! Both are folded into totals that never go down ([`Totals`]): per counter key (a track
//! id), a value below the one read before is a counter that started again from 0. The
//! rates drawn are differences of those totals, and [`increase`] reads a drop the same
//! way, so a rate is never negative.
//!
//! The loss of a link in a window is what the publisher sent minus what the receiver got
//! from it, per link, never below 0. It is an estimate, honest to within:
//! - in flight at the window ends: a packet sent just before the end arrives after it
//!   (counted lost), one sent just before the start arrives inside (counted received).
//!   At a steady rate the two cancel, but not exactly, and a link's loss is clamped at 0,
//!   so each link carries noise of about latency × rate at each end (a few packets at
//!   100 packets/s over loopback).
//! - the reads of one sample are not simultaneous: the sent counters are read first
//!   (concurrently, each bounded by [`READ_BOUND`]), then the received ones.
//! - a replaced client's last packets: what a publisher's old client sent between the last
//!   sample and its replacement is never read, so up to one sample period of its sending is
//!   missing from "sent" (the loss is underestimated by at most that).
//! - media a publisher could not send at all (its own connection down, its client between
//!   two recoveries) is not counted lost: it shows as a dip in the receivers' rates.
//! - the window snaps to the samples: it runs from the last sample at or before its start
//!   to the last sample at or before its end ([`LossSummary::from_ms`] and `to_ms` say
//!   which), so consecutive windows share their boundary sample and count each packet once.

use super::observe::Room;
use super::report::FaultRecord;
use crate::{SentStats, TrackStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The sampling period `chaos run` uses.
pub const EVERY: Duration = Duration::from_millis(250);
/// Bound on reading one participant's sent counters (its publisher lock can be held by a
/// recovery): a read that takes longer keeps the previous value for this sample.
pub const READ_BOUND: Duration = Duration::from_millis(200);

/// Counters of every room, sampled at the same instants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Samples {
    pub rooms: Vec<RoomSamples>,
}

/// One room's samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSamples {
    pub room: String,
    /// The members (participant ids), in the order of every per-member vector of
    /// [`Sample`].
    pub members: Vec<String>,
    pub samples: Vec<Sample>,
}

/// The room's counters at one instant, as totals that never go down ([`Totals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Since the run's start.
    pub at: Duration,
    /// Per member: packets its tracks handed to webrtc, over all its clients.
    pub sent: Vec<u64>,
    /// `received[i][j]`: distinct packets member `i` received from member `j` (0 for
    /// `i == j`).
    pub received: Vec<Vec<u64>>,
}

impl Samples {
    /// The last sample's time.
    pub fn end(&self) -> Option<Duration> {
        self.rooms
            .iter()
            .filter_map(|r| r.samples.last().map(|s| s.at))
            .max()
    }
}

/// Folds counters that may start again from 0 (a new client, a republished track) into one
/// total that never goes down. Keys not read in an update keep their last value, so a read
/// that failed once does not count its counter twice afterwards.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    last: BTreeMap<String, u64>,
    total: u64,
}

impl Totals {
    /// Takes the counters read now, by key, and returns the total: a new key adds its
    /// value, a known one what it grew by, or its whole value when it went down (started
    /// again from 0).
    pub fn update<K: Into<String>>(&mut self, readings: impl IntoIterator<Item = (K, u64)>) -> u64 {
        for (key, value) in readings {
            let key = key.into();
            let grew = match self.last.get(&key) {
                Some(&before) if value >= before => value - before,
                _ => value,
            };
            self.total = self.total.saturating_add(grew);
            self.last.insert(key, value);
        }
        self.total
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// How much a counter grew over a series of readings, a drop being a restart from 0.
pub fn increase(values: impl IntoIterator<Item = u64>) -> u64 {
    let mut values = values.into_iter();
    let Some(mut before) = values.next() else {
        return 0;
    };
    let mut sum = 0u64;
    for v in values {
        sum = sum.saturating_add(if v >= before { v - before } else { v });
        before = v;
    }
    sum
}

/// Per interval between two readings: its end and the counter's rate over it (per
/// second), a drop being a restart from 0. Intervals of zero length are left out.
pub fn rates(points: &[(Duration, u64)]) -> Vec<(Duration, f64)> {
    points
        .windows(2)
        .filter_map(|w| {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            let dt = t1.checked_sub(t0)?.as_secs_f64();
            (dt > 0.0).then(|| (t1, increase([v0, v1]) as f64 / dt))
        })
        .collect()
}

impl RoomSamples {
    /// Member `i`'s received packets per second from every other member, per interval.
    pub fn received_rates(&self, i: usize) -> Vec<(Duration, f64)> {
        // Each link's own increases, summed: a drop on one link does not hide the others.
        let n = self.members.len();
        let mut out = Vec::new();
        for w in self.samples.windows(2) {
            let Some(dt) = w[1].at.checked_sub(w[0].at) else {
                continue;
            };
            if dt.is_zero() {
                continue;
            }
            let got: u64 = (0..n)
                .filter(|&j| j != i)
                .map(|j| increase([cell(&w[0].received, i, j), cell(&w[1].received, i, j)]))
                .sum();
            out.push((w[1].at, got as f64 / dt.as_secs_f64()));
        }
        out
    }

    /// Per interval: the mean over the members of what the others sent, per second: what
    /// each receiver's line would show with nothing lost.
    pub fn expected_rates(&self) -> Vec<(Duration, f64)> {
        let n = self.members.len();
        let mut out = Vec::new();
        if n < 2 {
            return out;
        }
        for w in self.samples.windows(2) {
            let Some(dt) = w[1].at.checked_sub(w[0].at) else {
                continue;
            };
            if dt.is_zero() {
                continue;
            }
            let sent: Vec<u64> = (0..n)
                .map(|j| increase([get(&w[0].sent, j), get(&w[1].sent, j)]))
                .collect();
            let all: u64 = sent.iter().sum();
            let others: u64 = sent.iter().map(|s| all - s).sum();
            out.push((w[1].at, others as f64 / n as f64 / dt.as_secs_f64()));
        }
        out
    }
}

fn get(v: &[u64], i: usize) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

fn cell(m: &[Vec<u64>], i: usize, j: usize) -> u64 {
    m.get(i).map_or(0, |row| get(row, j))
}

// ---------------------------------------------------------------------------------------
// Sampling.

/// The sampling clock: a tick every `every` until `stop` completes (then one last tick, so
/// the samples reach the stop) or `max` ticks were given.
struct Ticks<S: Future<Output = ()>> {
    interval: Interval,
    stop: Pin<Box<S>>,
    stopped: bool,
    given: usize,
    max: usize,
}

impl<S: Future<Output = ()>> Ticks<S> {
    fn new(every: Duration, max: usize, stop: S) -> Self {
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticks {
            interval,
            stop: Box::pin(stop),
            stopped: false,
            given: 0,
            max,
        }
    }

    /// Waits for the next tick; `false` when sampling is over.
    async fn next(&mut self) -> bool {
        if self.stopped || self.given >= self.max {
            return false;
        }
        tokio::select! {
            biased;
            () = self.stop.as_mut() => self.stopped = true,
            _ = self.interval.tick() => {}
        }
        self.given += 1;
        true
    }
}

/// Reads every participant's counters every `every` (the first at once) until `stop`
/// completes — then once more — or `max_samples` samples were taken; times are since
/// `start`. Each sample is bounded by [`READ_BOUND`] plus the cost of copying the
/// statistics, so the whole is bounded by about `max_samples × (every + READ_BOUND)`.
pub async fn record(
    rooms: &[Room],
    start: Instant,
    every: Duration,
    max_samples: usize,
    stop: impl Future<Output = ()>,
) -> Samples {
    let mut out = Samples {
        rooms: rooms
            .iter()
            .map(|r| RoomSamples {
                room: r.id.to_string(),
                members: r.ids.iter().map(|id| id.to_string()).collect(),
                samples: Vec::new(),
            })
            .collect(),
    };
    // Per room: per member its sent totals, per (receiver, publisher) the received ones.
    let mut sent: Vec<Vec<Totals>> = rooms
        .iter()
        .map(|r| vec![Totals::default(); r.members.len()])
        .collect();
    let mut received: Vec<Vec<Vec<Totals>>> = rooms
        .iter()
        .map(|r| vec![vec![Totals::default(); r.members.len()]; r.members.len()])
        .collect();
    let mut ticks = Ticks::new(every, max_samples, stop);
    while ticks.next().await {
        let reads = rooms.iter().map(|r| {
            futures::future::join_all(r.members.iter().map(|p| async move {
                tokio::time::timeout(READ_BOUND, p.sent_stats()).await.ok()
            }))
        });
        let reads: Vec<Vec<Option<Vec<SentStats>>>> = futures::future::join_all(reads).await;
        let at = start.elapsed();
        for (r, room) in rooms.iter().enumerate() {
            let sent_now: Vec<u64> = reads[r]
                .iter()
                .zip(sent[r].iter_mut())
                .map(|(read, totals)| match read {
                    Some(tracks) => {
                        totals.update(tracks.iter().map(|t| (t.local_track_id.as_str(), t.sent)))
                    }
                    None => totals.total(),
                })
                .collect();
            let received_now: Vec<Vec<u64>> = room
                .members
                .iter()
                .zip(received[r].iter_mut())
                .enumerate()
                .map(|(i, (p, row))| {
                    let stats = p.track_stats();
                    room.ids
                        .iter()
                        .zip(row.iter_mut())
                        .enumerate()
                        .map(|(j, (publisher, totals))| {
                            if i == j {
                                return 0;
                            }
                            totals.update(received_by_track(&stats, publisher.as_str()))
                        })
                        .collect()
                })
                .collect();
            out.rooms[r].samples.push(Sample {
                at,
                sent: sent_now,
                received: received_now,
            });
        }
    }
    out
}

/// A sample cap for a fault phase of `phase` sampled every `every`: twice the phase plus
/// 10 minutes (repairs can run over the schedule).
pub fn sample_cap(phase: Duration, every: Duration) -> usize {
    let span = phase.saturating_mul(2) + Duration::from_secs(600);
    (span.as_secs_f64() / every.max(Duration::from_millis(1)).as_secs_f64()).ceil() as usize
}

/// Per track of `publisher`: its distinct packets.
fn received_by_track<'a>(
    stats: &'a [TrackStats],
    publisher: &'a str,
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    stats
        .iter()
        .filter(move |t| t.publisher == publisher)
        .map(|t| (t.track_id.as_str(), t.received.saturating_sub(t.duplicates)))
}

// ---------------------------------------------------------------------------------------
// Loss per window.

/// One (receiver, publisher) link over a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkLoss {
    pub room: String,
    pub receiver: String,
    pub publisher: String,
    /// Packets the publisher sent in the window.
    pub expected: u64,
    /// Packets the receiver got from it in the window.
    pub received: u64,
    /// `expected - received`, never below 0.
    pub lost: u64,
}

/// The packets lost over every link in a window (see the module documentation for what
/// the numbers can and cannot say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LossSummary {
    /// The window measured: the samples at or before the window's ends, since the start.
    pub from_ms: u64,
    pub to_ms: u64,
    pub links: usize,
    /// Links that lost nothing.
    pub lossless_links: usize,
    /// Summed over the links.
    pub expected: u64,
    pub lost: u64,
    /// The link that lost the most (the first in room and member order on a tie); `None`
    /// when nothing was lost.
    pub worst: Option<LinkLoss>,
}

/// Index of the last sample at or before `t` (the first sample when all are later).
fn snap(samples: &[Sample], t: Duration) -> usize {
    samples.partition_point(|s| s.at <= t).saturating_sub(1)
}

/// Per link of every room, what was sent and received in `[from, to)` snapped to the
/// samples (see [`LossSummary::from_ms`]); empty when the window holds no two samples.
pub fn link_losses(samples: &Samples, from: Duration, to: Duration) -> Vec<LinkLoss> {
    let mut out = Vec::new();
    for room in &samples.rooms {
        if room.samples.is_empty() {
            continue;
        }
        let (a, b) = (snap(&room.samples, from), snap(&room.samples, to));
        if b <= a {
            continue;
        }
        let window = &room.samples[a..=b];
        let n = room.members.len();
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                let expected = increase(window.iter().map(|s| get(&s.sent, j)));
                let received = increase(window.iter().map(|s| cell(&s.received, i, j)));
                out.push(LinkLoss {
                    room: room.room.clone(),
                    receiver: room.members[i].clone(),
                    publisher: room.members[j].clone(),
                    expected,
                    received,
                    lost: expected.saturating_sub(received),
                });
            }
        }
    }
    out
}

/// The packets lost over every link in `[from, to)`: the total and the worst link.
/// `None` when no room has two samples in the window.
pub fn packets_lost(samples: &Samples, from: Duration, to: Duration) -> Option<LossSummary> {
    let links = link_losses(samples, from, to);
    if links.is_empty() {
        return None;
    }
    // Every room is sampled at the same instants: the first room's snapping says it.
    let room = samples.rooms.iter().find(|r| {
        let (a, b) = (snap(&r.samples, from), snap(&r.samples, to));
        !r.samples.is_empty() && b > a
    })?;
    let ms = |t: Duration| room.samples[snap(&room.samples, t)].at.as_millis() as u64;
    let mut worst: Option<&LinkLoss> = None;
    for l in links.iter().filter(|l| l.lost > 0) {
        if worst.is_none_or(|w| l.lost > w.lost) {
            worst = Some(l);
        }
    }
    Some(LossSummary {
        from_ms: ms(from),
        to_ms: ms(to),
        links: links.len(),
        lossless_links: links.iter().filter(|l| l.lost == 0).count(),
        expected: links.iter().map(|l| l.expected).sum(),
        lost: links.iter().map(|l| l.lost).sum(),
        worst: worst.cloned(),
    })
}

/// Fills each fault's `packets_lost` over its window: from its injection to the next
/// fault's injection, the last one to the last sample. Times are since the same start as
/// the samples'.
pub fn fill_packets_lost(faults: &mut [FaultRecord], samples: &Samples) {
    let end = samples.end().unwrap_or_default();
    let starts: Vec<Duration> = faults
        .iter()
        .map(|f| Duration::from_millis(f.injected_ms))
        .collect();
    for (k, f) in faults.iter_mut().enumerate() {
        let to = starts.get(k + 1).copied().unwrap_or(end);
        f.packets_lost = packets_lost(samples, starts[k], to);
    }
}

// ---------------------------------------------------------------------------------------
// The picture.

/// A fault on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// When it was injected, since the start.
    pub at: Duration,
    pub label: String,
    /// When its recovery ended, for a shaded span from `at`.
    pub until: Option<Duration>,
}

/// One marker per executed fault: at its injection, shaded until its slowest link's first
/// packet (`recovery.max`), none when no link recovered.
pub fn markers(faults: &[FaultRecord]) -> Vec<Marker> {
    faults
        .iter()
        .map(|f| {
            let at = Duration::from_millis(f.injected_ms);
            let mut label = f.step.fault.to_string();
            if f.recovery.never > 0 {
                let _ = write!(label, " ({} links never recovered)", f.recovery.never);
            }
            Marker {
                at,
                label,
                until: f.recovery.max.map(|m| at + m),
            }
        })
        .collect()
}

const WIDTH: f64 = 1000.0;
/// Left of the plots: the y tick labels and the axis title.
const LEFT: f64 = 70.0;
/// Right of the plots: the legend.
const RIGHT: f64 = 220.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const TITLE_H: f64 = 56.0;
/// A panel: its heading, the plot, the x tick labels.
const HEAD_H: f64 = 20.0;
const PLOT_H: f64 = 160.0;
const FOOT_H: f64 = 38.0;
const LINE_H: f64 = 16.0;
const LEGEND_ROWS: usize = 9;
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f", "#393b79",
];
const FAULT: &str = "#d62728";

/// Text for an XML text node or a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// `s` cut to `n` characters, an ellipsis marking the cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A 1-2-5 step giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let k = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    k * mag
}

/// A tick label: as many decimals as the step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{v:.decimals$}")
}

/// The x axis: seconds from 0 to the last sample or fault, whichever is later.
fn x_max(samples: &Samples, faults: &[Marker]) -> f64 {
    let mut t = samples.end().unwrap_or_default();
    for m in faults {
        t = t.max(m.at).max(m.until.unwrap_or_default());
    }
    t.as_secs_f64().max(1.0)
}

/// The x coordinate of `t` on an axis ending at `x_max` seconds.
fn x_at(t: Duration, x_max: f64) -> f64 {
    LEFT + (t.as_secs_f64() / x_max).min(1.0) * PLOT_W
}

/// The timeline picture: a title, then one panel per room with each member's received
/// packets per second (one colour each, legend on the right, the dashed line what they
/// would receive with nothing lost), the faults as red vertical lines `F1`, `F2`, … with
/// their recovery shaded, and the list of faults below.
pub fn render_svg(title: &str, samples: &Samples, faults: &[Marker]) -> String {
    let x_max = x_max(samples, faults);
    let x_step = nice_step(x_max, 10.0);
    let panel_h = HEAD_H + PLOT_H + FOOT_H;
    let panels = samples.rooms.len().max(1);
    // The x axis title just under the last panel's tick labels, then the list of faults.
    let panels_end = TITLE_H + panels as f64 * panel_h;
    let list_top = panels_end + 8.0;
    let height = list_top + (faults.len() as f64 + 1.0) * LINE_H + 8.0;
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(title));
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="40" fill="#444">received packets/s per participant (all publishers); dashed: what the others sent; red: faults, shaded until the slowest link's first packet</text>"##
    );
    if samples.rooms.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{}" fill="#444">no samples</text>"##,
            TITLE_H + HEAD_H + PLOT_H / 2.0
        );
    }
    for (r, room) in samples.rooms.iter().enumerate() {
        let top = TITLE_H + r as f64 * panel_h;
        panel(&mut s, room, faults, top, x_max, x_step);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the fault phase began</text>"#,
        LEFT + PLOT_W / 2.0,
        panels_end - 2.0
    );
    for (k, m) in faults.iter().enumerate() {
        let until = m
            .until
            .map(|u| format!(", shaded until {:.1} s", u.as_secs_f64()))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}"><tspan fill="{FAULT}" font-weight="bold">F{}</tspan> at {:.1} s: {}{}</text>"#,
            list_top + (k as f64 + 1.0) * LINE_H,
            k + 1,
            m.at.as_secs_f64(),
            escape(&m.label),
            escape(&until)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, room: &RoomSamples, faults: &[Marker], top: f64, x_max: f64, x_step: f64) {
    let plot_top = top + HEAD_H;
    let bottom = plot_top + PLOT_H;
    let lines: Vec<Vec<(Duration, f64)>> = (0..room.members.len())
        .map(|i| room.received_rates(i))
        .collect();
    let expected = room.expected_rates();
    let peak = lines
        .iter()
        .chain(std::iter::once(&expected))
        .flatten()
        .map(|(_, v)| *v)
        .fold(0.0, f64::max);
    let y_step = nice_step(peak.max(1.0) * 1.05, 4.0);
    let y_max = ((peak.max(1.0) * 1.05) / y_step).ceil() * y_step;
    let y_at = |v: f64| bottom - (v / y_max).clamp(0.0, 1.0) * PLOT_H;
    let _ = writeln!(s, "<g>");
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">room {}</text>"#,
        top + 14.0,
        escape(&room.room)
    );
    // Recovery spans, under everything else.
    for m in faults {
        if let Some(until) = m.until {
            let (x0, x1) = (x_at(m.at, x_max), x_at(until, x_max));
            let _ = writeln!(
                s,
                r#"<rect class="recovery" x="{x0:.1}" y="{plot_top}" width="{:.1}" height="{PLOT_H}" fill="{FAULT}" fill-opacity="0.12"/>"#,
                (x1 - x0).max(1.0)
            );
        }
    }
    // Grid and ticks.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let y = y_at(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            LEFT + PLOT_W
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v, y_step)
        );
        v += y_step;
    }
    let mut t = 0.0;
    while t <= x_max + x_step / 1000.0 {
        let x = LEFT + t / x_max * PLOT_W;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#444"/>"##,
            bottom + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            tick_label(t, x_step)
        );
        t += x_step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{plot_top}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#444"/>"##
    );
    let mid = plot_top + PLOT_H / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="18" y="{mid}" text-anchor="middle" transform="rotate(-90 18 {mid})">packets/s</text>"#
    );
    // The lines.
    let polyline = |s: &mut String, points: &[(Duration, f64)], attrs: &str| {
        if points.is_empty() {
            return;
        }
        let pts: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x_at(*t, x_max), y_at(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" {attrs}/>"#,
            pts.join(" ")
        );
    };
    polyline(
        s,
        &expected,
        r##"stroke="#000" stroke-opacity="0.55" stroke-width="1" stroke-dasharray="5 3""##,
    );
    for (i, points) in lines.iter().enumerate() {
        polyline(s, points, &stroke(i));
    }
    // The faults, over the lines; labels alternate between two rows.
    for (k, m) in faults.iter().enumerate() {
        let x = x_at(m.at, x_max);
        let _ = writeln!(
            s,
            r#"<line class="fault" x1="{x:.1}" y1="{plot_top}" x2="{x:.1}" y2="{bottom}" stroke="{FAULT}" stroke-width="1.5"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" fill="{FAULT}" font-weight="bold">F{}</text>"#,
            x + 3.0,
            plot_top + 12.0 + (k % 2) as f64 * 12.0,
            k + 1
        );
    }
    // The legend.
    let lx = LEFT + PLOT_W + 14.0;
    let mut row = 0.0;
    let mut entry = |s: &mut String, attrs: &str, label: &str| {
        let y = plot_top + 8.0 + row * LINE_H;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" {attrs}/>"#,
            lx + 22.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 28.0,
            y + 4.0,
            escape(&clip(label, 28))
        );
        row += 1.0;
    };
    let shown = room.members.len().min(LEGEND_ROWS);
    for (i, member) in room.members.iter().take(shown).enumerate() {
        entry(s, &stroke(i), member);
    }
    if room.members.len() > shown {
        let more = format!("+{} more", room.members.len() - shown);
        entry(s, r#"stroke="none""#, &more);
    }
    entry(
        s,
        r##"stroke="#000" stroke-opacity="0.55" stroke-dasharray="5 3""##,
        "sent by the others (mean)",
    );
    let _ = writeln!(s, "</g>");
}

/// Member `i`'s line: a palette colour, dashed once the palette has gone round.
fn stroke(i: usize) -> String {
    let colour = PALETTE[i % PALETTE.len()];
    let dash = if i >= PALETTE.len() {
        r#" stroke-dasharray="2 2""#
    } else {
        ""
    };
    format!(r#"stroke="{colour}" stroke-width="1.5"{dash}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::{Check, Invariant, RecoveryTimes, Verdict};
    use crate::runner::schedule::{Fault, Step};

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn totals_read_a_drop_as_a_restart_from_zero_and_new_keys_whole() {
        let mut t = Totals::default();
        assert_eq!(t.update([("a", 10)]), 10);
        assert_eq!(t.update([("a", 25)]), 25);
        // A new client: `a` started again, `b` is new.
        assert_eq!(t.update([("a", 5), ("b", 7)]), 25 + 5 + 7);
        // A failed read keeps the last values: nothing is counted twice afterwards.
        assert_eq!(t.update(std::iter::empty::<(&str, u64)>()), 37);
        assert_eq!(t.update([("a", 6), ("b", 7)]), 38);
    }

    #[test]
    fn rates_from_counters_never_go_negative_across_a_reset() {
        let points: Vec<(Duration, u64)> =
            [(0.0, 0), (1.0, 100), (2.0, 200), (2.5, 50), (3.5, 150)]
                .iter()
                .map(|&(t, v)| (secs(t), v))
                .collect();
        let r = rates(&points);
        let values: Vec<f64> = r.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, vec![100.0, 100.0, 100.0, 100.0]);
        assert_eq!(r[2].0, secs(2.5));
        assert!(r.iter().all(|(_, v)| *v >= 0.0));
        assert_eq!(increase([0, 100, 200, 50, 150]), 350);
        assert_eq!(increase([]), 0);
    }

    /// Three members sending 100 packets/s from 0 to 10 s, sampled every second. Member 1
    /// gets everything from 0; member 2 gets nothing from 0 between 4 s and 6 s; member 0's
    /// sender restarts at 5 s (a recovery: its totals still grow). The rest is lossless.
    fn three() -> Samples {
        let samples = (0..=10u64)
            .map(|k| {
                let sent = vec![100 * k, 100 * k, 100 * k];
                let from0_at_2 = if k <= 4 {
                    100 * k
                } else if k <= 6 {
                    400
                } else {
                    400 + 100 * (k - 6)
                };
                Sample {
                    at: Duration::from_secs(k),
                    sent,
                    received: vec![
                        vec![0, 100 * k, 100 * k],
                        vec![100 * k, 0, 100 * k],
                        vec![from0_at_2, 100 * k, 0],
                    ],
                }
            })
            .collect();
        Samples {
            rooms: vec![RoomSamples {
                room: "r".into(),
                members: vec!["a".into(), "b".into(), "c".into()],
                samples,
            }],
        }
    }

    #[test]
    fn loss_per_window_finds_the_link_that_lost_everything() {
        let s = three();
        let links = link_losses(&s, secs(4.0), secs(6.0));
        assert_eq!(links.len(), 6);
        let link = |r: &str, p: &str| {
            links
                .iter()
                .find(|l| l.receiver == r && l.publisher == p)
                .unwrap()
                .clone()
        };
        let dead = link("c", "a");
        assert_eq!((dead.expected, dead.received, dead.lost), (200, 0, 200));
        let fine = link("b", "a");
        assert_eq!((fine.expected, fine.received, fine.lost), (200, 200, 0));
        let sum = packets_lost(&s, secs(4.0), secs(6.0)).unwrap();
        assert_eq!(sum.lost, 200);
        assert_eq!(sum.expected, 6 * 200);
        assert_eq!(sum.links, 6);
        assert_eq!(sum.lossless_links, 5);
        assert_eq!((sum.from_ms, sum.to_ms), (4000, 6000));
        assert_eq!(sum.worst.unwrap(), dead);
    }

    #[test]
    fn windows_snap_to_samples_and_tile() {
        let s = three();
        // 4.6 s snaps to 4 s, 7.9 s to 7 s; the loss from 4 s to 6 s is all inside.
        let a = packets_lost(&s, secs(4.6), secs(7.9)).unwrap();
        assert_eq!((a.from_ms, a.to_ms), (4000, 7000));
        assert_eq!(a.lost, 200);
        // Two adjacent windows count what the whole one counts.
        let whole = packets_lost(&s, secs(0.0), secs(10.0)).unwrap();
        let first = packets_lost(&s, secs(0.0), secs(5.0)).unwrap();
        let second = packets_lost(&s, secs(5.0), secs(10.0)).unwrap();
        assert_eq!(first.expected + second.expected, whole.expected);
        assert_eq!(first.lost + second.lost, whole.lost);
        assert_eq!((first.lost, second.lost), (100, 100));
        // Nothing lost: no worst link.
        let calm = packets_lost(&s, secs(7.0), secs(10.0)).unwrap();
        assert_eq!((calm.lost, calm.worst), (0, None));
        // A window inside one sample interval measures nothing.
        assert_eq!(packets_lost(&s, secs(4.2), secs(4.8)), None);
    }

    #[test]
    fn a_sender_restart_inside_a_window_is_not_counted_as_loss_or_gain() {
        let mut s = three();
        // Raw counters (not folded) of a sender whose new client had sent 50 by 5 s.
        for (k, sample) in s.rooms[0].samples.iter_mut().enumerate().skip(5) {
            sample.sent[1] = 100 * (k as u64 - 5) + 50;
        }
        // From 4 s to 6 s: 400 → 50 (a restart: 50) → 150 (100). What the old client sent
        // after 4 s is unknown, so less is expected than arrived: no loss, no wrap-around.
        let l = link_losses(&s, secs(4.0), secs(6.0));
        let from_b = l
            .iter()
            .find(|l| l.receiver == "a" && l.publisher == "b")
            .unwrap();
        assert_eq!(
            (from_b.expected, from_b.received, from_b.lost),
            (150, 200, 0)
        );
    }

    #[test]
    fn rates_per_member_show_the_dip() {
        let s = three();
        let room = &s.rooms[0];
        let c: Vec<f64> = room.received_rates(2).iter().map(|(_, v)| *v).collect();
        assert_eq!(
            c,
            vec![200.0, 200.0, 200.0, 200.0, 100.0, 100.0, 200.0, 200.0, 200.0, 200.0]
        );
        let e: Vec<f64> = room.expected_rates().iter().map(|(_, v)| *v).collect();
        assert_eq!(e, vec![200.0; 10]);
    }

    /// A minimal XML well-formedness check: tags balance, attributes are quoted, text and
    /// attribute values hold no raw `<` and only the predefined or numeric entities.
    fn well_formed(xml: &str) -> Result<usize, String> {
        fn entities_ok(text: &str) -> Result<(), String> {
            let mut rest = text;
            while let Some(i) = rest.find('&') {
                let tail = &rest[i + 1..];
                let end = tail.find(';').ok_or(format!("bare & in {text:?}"))?;
                let name = &tail[..end];
                let numeric = name
                    .strip_prefix('#')
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
                if !numeric && !matches!(name, "amp" | "lt" | "gt" | "quot" | "apos") {
                    return Err(format!("unknown entity &{name}; in {text:?}"));
                }
                rest = &tail[end + 1..];
            }
            Ok(())
        }
        let mut stack: Vec<String> = Vec::new();
        let mut elements = 0;
        let mut roots = 0;
        let mut rest = xml;
        while !rest.is_empty() {
            let Some(lt) = rest.find('<') else {
                if !stack.is_empty() {
                    return Err("text after the last tag inside an element".into());
                }
                if !rest.trim().is_empty() {
                    return Err(format!("text outside the root: {rest:?}"));
                }
                break;
            };
            let text = &rest[..lt];
            if stack.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root: {text:?}"));
            }
            entities_ok(text)?;
            rest = &rest[lt..];
            if let Some(r) = rest.strip_prefix("<?") {
                let end = r.find("?>").ok_or("unclosed <?")?;
                rest = &r[end + 2..];
                continue;
            }
            if let Some(r) = rest.strip_prefix("<!--") {
                let end = r.find("-->").ok_or("unclosed comment")?;
                rest = &r[end + 3..];
                continue;
            }
            let gt = rest.find('>').ok_or("unclosed tag")?;
            let tag = &rest[1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            let (body, empty) = match tag.strip_suffix('/') {
                Some(b) => (b, true),
                None => (tag, false),
            };
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let name = &body[..name_end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
                return Err(format!("bad element name in <{tag}>"));
            }
            // Attributes: name="value" pairs, values without < and with valid entities.
            let mut attrs = body[name_end..].trim_start();
            while !attrs.is_empty() {
                let eq = attrs
                    .find('=')
                    .ok_or(format!("attribute without = in <{tag}>"))?;
                let aname = attrs[..eq].trim();
                if aname.is_empty()
                    || !aname
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '_'))
                {
                    return Err(format!("bad attribute name {aname:?} in <{tag}>"));
                }
                let after = attrs[eq + 1..].trim_start();
                let quote = after.chars().next().ok_or("attribute without value")?;
                if quote != '"' && quote != '\'' {
                    return Err(format!("unquoted attribute {aname} in <{tag}>"));
                }
                let close = after[1..]
                    .find(quote)
                    .ok_or(format!("unclosed attribute {aname}"))?;
                let value = &after[1..1 + close];
                if value.contains('<') {
                    return Err(format!("< in attribute {aname}"));
                }
                entities_ok(value)?;
                attrs = after[close + 2..].trim_start();
            }
            elements += 1;
            if stack.is_empty() {
                roots += 1;
            }
            if !empty {
                stack.push(name.to_owned());
            }
        }
        if let Some(open) = stack.pop() {
            return Err(format!("<{open}> never closed"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(elements)
    }

    #[test]
    fn the_checker_rejects_what_it_must() {
        assert!(well_formed("<a><b/></a>").is_ok());
        assert!(well_formed("<a>x < y</a>").is_err());
        assert!(well_formed("<a>R&D</a>").is_err());
        assert!(well_formed(r#"<a t="<"/>"#).is_err());
        assert!(well_formed("<a><b></a>").is_err());
        assert!(well_formed("<a/><b/>").is_err());
        assert!(well_formed("<a x=1/>").is_err());
    }

    #[test]
    fn the_svg_is_well_formed_and_escapes_labels() {
        let s = three();
        let faults = vec![
            Marker {
                at: secs(4.0),
                label: r#"kill <n1> & "friends" 'now'"#.into(),
                until: Some(secs(6.0)),
            },
            Marker {
                at: secs(8.0),
                label: "restart nats".into(),
                until: None,
            },
        ];
        let svg = render_svg("chaos <run> & co", &s, &faults);
        let elements = well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(elements > 20, "{elements} elements");
        assert!(svg.contains("kill &lt;n1&gt; &amp; &quot;friends&quot; &apos;now&apos;"));
        assert!(svg.contains("chaos &lt;run&gt; &amp; co"));
        // One line per member plus the expected one, in the one panel.
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches(r#"class="recovery""#).count(), 1);
        // Also with no samples at all.
        let empty = render_svg("empty", &Samples::default(), &[]);
        well_formed(&empty).unwrap_or_else(|e| panic!("{e}\n{empty}"));
        assert!(empty.contains("no samples"));
    }

    /// The x1 of every `<line class="fault" …>`.
    fn fault_xs(svg: &str) -> Vec<f64> {
        svg.match_indices(r#"<line class="fault" x1=""#)
            .map(|(i, m)| {
                let rest = &svg[i + m.len()..];
                rest[..rest.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn markers_sit_at_their_time_on_the_x_axis() {
        // The axis ends at the last sample, 10 s: 2.5 s is a quarter, 5 s half way.
        let s = three();
        let faults = vec![
            Marker {
                at: secs(2.5),
                label: "a".into(),
                until: None,
            },
            Marker {
                at: secs(5.0),
                label: "b".into(),
                until: Some(secs(7.0)),
            },
        ];
        let svg = render_svg("t", &s, &faults);
        let xs = fault_xs(&svg);
        let want = [LEFT + PLOT_W / 4.0, LEFT + PLOT_W / 2.0];
        assert_eq!(xs.len(), 2, "{svg}");
        for (x, w) in xs.iter().zip(want) {
            assert!((x - w).abs() < 0.11, "{x} != {w}");
        }
        // A fault after the last sample stretches the axis to it.
        let late = vec![Marker {
            at: secs(20.0),
            label: "late".into(),
            until: None,
        }];
        let xs = fault_xs(&render_svg("t", &s, &late));
        assert!((xs[0] - (LEFT + PLOT_W)).abs() < 0.11, "{xs:?}");
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(60.0, 10.0), 10.0);
        assert_eq!(nice_step(12.0, 10.0), 2.0);
        assert_eq!(nice_step(300.0, 4.0), 100.0);
        assert_eq!(nice_step(0.9, 4.0), 0.5);
        assert_eq!(tick_label(0.5, 0.5), "0.5");
        assert_eq!(tick_label(20.0, 10.0), "20");
    }

    fn record_with(injected_ms: u64, max: Option<Duration>, never: usize) -> FaultRecord {
        FaultRecord {
            step: Step {
                at: Duration::from_millis(injected_ms),
                fault: Fault::KillNode { node: "n1".into() },
            },
            injected_ms,
            recovery: RecoveryTimes {
                links: 6,
                never,
                p50: max,
                p99: max,
                max,
            },
            everyone_receives: Check {
                invariant: Invariant::EveryoneReceives,
                verdict: Verdict::Pass {
                    checked: "6 links".into(),
                },
            },
            participant_recoveries: 0,
            notes: Vec::new(),
            packets_lost: None,
        }
    }

    #[test]
    fn faults_get_their_window_and_markers() {
        let s = three();
        let mut faults = vec![
            record_with(4_000, Some(Duration::from_millis(1_500)), 0),
            record_with(6_000, None, 2),
        ];
        fill_packets_lost(&mut faults, &s);
        let first = faults[0].packets_lost.as_ref().unwrap();
        assert_eq!((first.from_ms, first.to_ms, first.lost), (4000, 6000, 200));
        let second = faults[1].packets_lost.as_ref().unwrap();
        assert_eq!(
            (second.from_ms, second.to_ms, second.lost),
            (6000, 10000, 0)
        );
        let m = markers(&faults);
        assert_eq!(m[0].at, secs(4.0));
        assert_eq!(m[0].until, Some(secs(5.5)));
        assert_eq!(m[1].until, None);
        assert!(
            m[1].label.contains("2 links never recovered"),
            "{}",
            m[1].label
        );
    }

    #[tokio::test]
    async fn sampling_stops_at_the_cap_and_at_the_stop_with_one_last_tick() {
        let mut ticks = Ticks::new(Duration::from_millis(5), 3, std::future::pending::<()>());
        let mut n = 0;
        while ticks.next().await {
            n += 1;
        }
        assert_eq!(n, 3);
        let stop = tokio::time::sleep(Duration::from_millis(60));
        let mut ticks = Ticks::new(Duration::from_millis(25), 1000, stop);
        let mut n = 0;
        let t = Instant::now();
        while ticks.next().await {
            n += 1;
        }
        // Ticks at 0, 25 and 50 ms, then the stop's own at 60 ms (fewer on a slow machine:
        // the stop wins over late ticks, but the first and the last are always there).
        assert!((2..=5).contains(&n), "{n} ticks");
        assert!(t.elapsed() < Duration::from_secs(2));
        // An empty run samples nothing and returns at the stop.
        let samples = record(&[], Instant::now(), Duration::from_millis(5), 10, async {}).await;
        assert_eq!(samples, Samples::default());
    }
}
