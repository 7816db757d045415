//! A room's own series: its participants on this node, the tracks it forwards and the
//! packets it forwarded, labelled by room. The room publishes them once a second while it
//! lives; the per-room recorder drops them once a closed room stops updating them
//! (`crate::metrics::room_series`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const PARTICIPANTS: &str = "sfu_room_participants";
pub const TRACKS: &str = "sfu_room_tracks";
pub const FORWARDED: &str = "sfu_room_packets_forwarded_total";

/// The room's forwarded-packet total, from its tracks' counters.
#[derive(Default)]
pub struct RoomTally {
    /// Every track counter followed, with how much of it is counted already.
    seen: Vec<(Arc<AtomicU64>, u64)>,
    forwarded: u64,
}

impl RoomTally {
    /// Adds what each track forwarded since the last call. A track the room dropped since is
    /// counted to its last batch, then forgotten; a new one counts from its start.
    pub fn update<'a>(&mut self, tracks: impl Iterator<Item = &'a Arc<AtomicU64>>) -> u64 {
        for (counter, counted) in &mut self.seen {
            let now = counter.load(Ordering::Relaxed);
            self.forwarded += now.saturating_sub(*counted);
            *counted = now;
        }
        let mut next = Vec::with_capacity(self.seen.len());
        for counter in tracks {
            match self.seen.iter().position(|(c, _)| Arc::ptr_eq(c, counter)) {
                Some(i) => next.push(self.seen.swap_remove(i)),
                None => {
                    let now = counter.load(Ordering::Relaxed);
                    self.forwarded += now;
                    next.push((counter.clone(), now));
                }
            }
        }
        self.seen = next;
        self.forwarded
    }

    /// Publishes the room's series.
    pub fn publish(&self, room: &str, participants: usize, tracks: usize) {
        let forwarded = self.forwarded;
        crate::metrics::room_series(|| {
            let room = room.to_owned();
            metrics::gauge!(PARTICIPANTS, "room" => room.clone()).set(participants as f64);
            metrics::gauge!(TRACKS, "room" => room.clone()).set(tracks as f64);
            metrics::counter!(FORWARDED, "room" => room).absolute(forwarded);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_track_to_its_end_and_never_goes_back() {
        let mut t = RoomTally::default();
        let (a, b) = (Arc::new(AtomicU64::new(5)), Arc::new(AtomicU64::new(0)));
        assert_eq!(t.update([&a].into_iter()), 5);
        a.fetch_add(10, Ordering::Relaxed);
        assert_eq!(t.update([&a, &b].into_iter()), 15);
        // `a` leaves the room after one more batch: the batch is counted once.
        a.fetch_add(64, Ordering::Relaxed);
        b.fetch_add(3, Ordering::Relaxed);
        assert_eq!(t.update([&b].into_iter()), 82);
        a.fetch_add(64, Ordering::Relaxed);
        assert_eq!(t.update([&b].into_iter()), 82, "a gone track adds nothing");
        assert_eq!(t.update(std::iter::empty()), 82);
    }
}
