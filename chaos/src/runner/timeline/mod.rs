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

mod sampling;
mod svg;
#[cfg(test)]
mod tests;

pub use sampling::{record, sample_cap};
pub use svg::{escape, markers, render_svg, Marker};

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
