//! Watching the rooms after a fault: per (receiver, publisher) link, when its first packet
//! after the fault arrived, over connections both ends have settled on.
//!
//! A link's time is the first poll at which the receiver holds a packet from the publisher
//! that arrived after the fault and after both ends' latest recovery rejoined. A recovery
//! that begins later (a participant noticing a stopped node late) clears the links of that
//! participant, both ways, so a packet in flight at the fault cannot stand for recovery.
//! The watch lasts at least [`MIN_WATCH`] (to let late-noticed faults show) and at most the
//! bound.

use crate::invariants::{Link, RoomReception};
use crate::payload::unix_now_us;
use crate::Participant;
use protocol::{RoomId, UserId};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How often the participants' counters are read: the resolution of the times.
const POLL: Duration = Duration::from_millis(20);
/// Least time a fault is watched, even when every link is back at once.
pub const MIN_WATCH: Duration = Duration::from_secs(5);

/// The participants of one room.
pub struct Room {
    pub id: RoomId,
    pub members: Vec<Participant>,
    pub ids: Vec<UserId>,
}

/// What a participant's recoveries after the fault say.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Recoveries begun after the fault, and when the last rejoined (`None`: under way or
    /// given up).
    Settled {
        generation: usize,
        since: Instant,
    },
    Recovering {
        generation: usize,
    },
}

fn phase(p: &Participant, fault_at: Instant) -> Phase {
    let after: Vec<_> = p
        .recoveries()
        .into_iter()
        .filter(|r| r.noticed_at >= fault_at)
        .collect();
    let generation = after.len();
    match after.last() {
        None => Phase::Settled {
            generation,
            since: fault_at,
        },
        Some(r) => match &r.rejoined {
            Some(j) => Phase::Settled {
                generation,
                since: j.at.max(fault_at),
            },
            None => Phase::Recovering { generation },
        },
    }
}

fn generation(p: Phase) -> usize {
    match p {
        Phase::Settled { generation, .. } | Phase::Recovering { generation } => generation,
    }
}

/// Watches every room from `fault_at` until every link has a packet (and [`MIN_WATCH`] has
/// passed) or `bound` after the fault, whichever comes first; returns each room's first
/// packets and how many participant recoveries began after the fault.
pub async fn watch(
    rooms: &[Room],
    fault_at: Instant,
    bound: Duration,
) -> (Vec<RoomReception>, usize) {
    let deadline = fault_at + bound;
    // Per link: the first packet time and the two generations it was seen under.
    let mut seen: Vec<BTreeMap<Link, (Duration, usize, usize)>> =
        vec![BTreeMap::new(); rooms.len()];
    loop {
        let now = Instant::now();
        let mut complete = true;
        for (room, seen) in rooms.iter().zip(seen.iter_mut()) {
            let phases: Vec<Phase> = room.members.iter().map(|p| phase(p, fault_at)).collect();
            for (i, receiver) in room.members.iter().enumerate() {
                let stats = receiver.track_stats();
                for (j, publisher) in room.ids.iter().enumerate().filter(|(j, _)| *j != i) {
                    let link = Link {
                        receiver: room.ids[i].clone(),
                        publisher: publisher.clone(),
                    };
                    let (gi, gj) = (generation(phases[i]), generation(phases[j]));
                    if let Some(&(_, si, sj)) = seen.get(&link) {
                        if (si, sj) == (gi, gj) {
                            continue;
                        }
                        seen.remove(&link);
                    }
                    let since = match (phases[i], phases[j]) {
                        (Phase::Settled { since: a, .. }, Phase::Settled { since: b, .. }) => {
                            a.max(b)
                        }
                        _ => {
                            complete = false;
                            continue;
                        }
                    };
                    let since_us = unix_us_at(since, now);
                    let fresh = stats.iter().any(|t| {
                        t.publisher == publisher.as_str() && t.last_packet_unix_us > since_us
                    });
                    if fresh {
                        seen.insert(link, (now - fault_at, gi, gj));
                    } else {
                        complete = false;
                    }
                }
            }
        }
        if (complete && now >= fault_at + MIN_WATCH) || now >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let recoveries = rooms
        .iter()
        .flat_map(|r| &r.members)
        .map(|p| generation(phase(p, fault_at)))
        .sum();
    let receptions = rooms
        .iter()
        .zip(seen)
        .map(|(room, seen)| RoomReception {
            room: room.id.clone(),
            participants: room.ids.clone(),
            first_packet: seen.into_iter().map(|(l, (t, _, _))| (l, t)).collect(),
        })
        .collect();
    (receptions, recoveries)
}

/// `at` (not later than `now`) on the Unix clock, µs.
fn unix_us_at(at: Instant, now: Instant) -> u64 {
    let ago = u64::try_from(now.saturating_duration_since(at).as_micros()).unwrap_or(u64::MAX);
    unix_now_us().saturating_sub(ago)
}
