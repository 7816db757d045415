//! The room directory as this coordinator last heard it: every live entry of the `rooms`
//! bucket, kept in memory by a watch, with the rooms of each node.
//!
//! Once synced, the mirror is the directory as of one revision (the watch applies changes
//! in order, and nothing else writes to it), so reading it is reading KV a moment ago (a
//! watch that restarts replays the latest values over it: entries stay newest-wins). It serves
//! where such a read is safe:
//!
//! - an allocation for a room it holds no live entry for skips the read and creates the
//!   entry on condition that the key was never written, so a stale view costs a lost race
//!   and a real read, never a wrong write (a room it holds is read from KV: answers about
//!   existing rooms stay exact);
//! - failover finds a dead node's rooms in it instead of listing the bucket, then edits each
//!   from KV;
//! - listings of every room read it once it holds every write made before they were asked.
//!
//! Only live entries are held: a closed room's key is forgotten (its delete marker stays in
//! KV, where an allocation that reopens it reads it). Memory is bounded by the live rooms.

use crate::Shared;
use async_nats::jetstream::kv::{self, Operation, Store};
use protocol::cluster::{untoken, RoomAssignment, ROOMS_BUCKET};
use protocol::{NodeId, RoomId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A live entry and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub assignment: RoomAssignment,
    pub revision: u64,
}

/// The live entries of the `rooms` bucket as of [`DirectoryMirror::revision`].
#[derive(Debug, Default)]
pub struct DirectoryMirror {
    rooms: HashMap<RoomId, Held>,
    by_node: HashMap<NodeId, HashSet<RoomId>>,
    /// The highest revision applied.
    revision: u64,
    /// Whether the watch has delivered everything the bucket held when it started.
    synced: bool,
}

impl DirectoryMirror {
    /// The room's live entry, or `None` when the mirror holds none (the room is new or
    /// closed, or the mirror has not heard of it yet).
    pub fn get(&self, room: &RoomId) -> Option<&Held> {
        self.rooms.get(room)
    }

    /// The rooms whose entries list `node`.
    pub fn rooms_of(&self, node: &NodeId) -> Vec<RoomId> {
        self.by_node
            .get(node)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every live entry, in no order.
    pub fn entries(&self) -> impl Iterator<Item = &Held> {
        self.rooms.values()
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether the mirror has caught up with the bucket since it started; before that it
    /// must not be read as the directory.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn mark_synced(&mut self) {
        self.synced = true;
    }

    /// Applies one change of the bucket: the room's new entry, or `None` when it was
    /// deleted (or is unreadable). A revision older than the room's held one is ignored (a
    /// watch that restarts may deliver it again).
    pub fn apply(&mut self, room: RoomId, entry: Option<RoomAssignment>, revision: u64) {
        self.revision = self.revision.max(revision);
        if self
            .rooms
            .get(&room)
            .is_some_and(|held| held.revision >= revision)
        {
            return;
        }
        if let Some(old) = self.rooms.remove(&room) {
            self.unindex(&room, &old.assignment);
        }
        if let Some(assignment) = entry {
            for node in assignment.members() {
                self.by_node.entry(node).or_default().insert(room.clone());
            }
            self.rooms.insert(
                room,
                Held {
                    assignment,
                    revision,
                },
            );
        }
    }

    fn unindex(&mut self, room: &RoomId, a: &RoomAssignment) {
        for node in a.members() {
            if let Some(rooms) = self.by_node.get_mut(&node) {
                rooms.remove(room);
                if rooms.is_empty() {
                    self.by_node.remove(&node);
                }
            }
        }
    }
}

/// Keeps `shared`'s mirror in step with the directory `kv`, for ever.
pub(crate) async fn run(shared: Arc<Shared>, kv: Store) {
    let started = Instant::now();
    let on_entry = shared.clone();
    let apply = move |entry: &kv::Entry| {
        let Some(room) = untoken(&entry.key).and_then(|k| RoomId::new(k).ok()) else {
            tracing::debug!(key = %entry.key, "room directory key that names no room");
            return;
        };
        let value = match entry.operation {
            Operation::Put => match serde_json::from_slice::<RoomAssignment>(&entry.value) {
                Ok(a) => Some(a),
                Err(e) => {
                    // Held as absent: an allocation then reads KV, which replaces it.
                    tracing::warn!(key = %entry.key, error = %e, "unreadable room entry");
                    None
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        let revision = {
            let mut m = on_entry.mirror();
            m.apply(room, value, entry.revision);
            m.revision()
        };
        on_entry.mirror_revision.send_replace(revision);
    };
    let caught_up = move || {
        let took = started.elapsed();
        let rooms = {
            let mut m = shared.mirror();
            m.mark_synced();
            m.len()
        };
        shared.metrics.directory_synced(took);
        tracing::info!(
            rooms,
            took_ms = took.as_millis() as u64,
            "room directory mirrored"
        );
    };
    crate::directory::follow(kv, ROOMS_BUCKET, apply, caught_up).await;
}

/// The mirror's live entries once it holds every write the bucket had when this was called
/// (so a write that finished before is in them), sorted by room; `None` when the mirror has
/// not caught up within `within` (or the bucket could not be asked).
pub(crate) async fn entries_caught_up(
    shared: &Shared,
    kv: &Store,
    within: Duration,
) -> Option<Vec<RoomAssignment>> {
    let last = kv.stream.clone().info().await.ok()?.state.last_sequence;
    let mut revision = shared.mirror_revision.subscribe();
    tokio::time::timeout(within, revision.wait_for(|r| *r >= last))
        .await
        .ok()?
        .ok()?;
    let m = shared.mirror();
    if !m.synced() {
        return None;
    }
    let mut out: Vec<RoomAssignment> = m.entries().map(|h| h.assignment.clone()).collect();
    out.sort_by(|a, b| a.room.cmp(&b.room));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(i: u8) -> NodeId {
        NodeId::new(format!("n{i}")).unwrap()
    }

    fn entry(room: &str, nodes: &[u8], epoch: u64) -> RoomAssignment {
        let ids: Vec<NodeId> = nodes.iter().map(|i| node(*i)).collect();
        RoomAssignment::on_nodes(RoomId::new(room).unwrap(), epoch, &ids[0], &ids, "eu")
    }

    #[test]
    fn a_node_index_follows_the_entries() {
        let r = RoomId::new("r").unwrap();
        let mut m = DirectoryMirror::default();
        m.apply(r.clone(), Some(entry("r", &[1, 2], 1)), 5);
        assert_eq!(m.rooms_of(&node(2)), vec![r.clone()]);
        m.apply(r.clone(), Some(entry("r", &[1, 3], 1)), 6);
        assert!(m.rooms_of(&node(2)).is_empty());
        assert_eq!(m.rooms_of(&node(3)), vec![r.clone()]);
        // Older than held: ignored.
        m.apply(r.clone(), Some(entry("r", &[2], 1)), 4);
        assert_eq!(m.get(&r).unwrap().revision, 6);
        m.apply(r.clone(), None, 7);
        assert!(m.get(&r).is_none());
        assert!(m.rooms_of(&node(1)).is_empty() && m.by_node.is_empty());
        assert_eq!(m.revision(), 7);
    }

    proptest! {
        /// Whatever the order of changes (a restarted watch replays some), the mirror holds
        /// each room's newest live entry, and the node index is exactly the entries' nodes.
        #[test]
        fn the_mirror_is_the_newest_entries_and_the_index_agrees(
            changes in prop::collection::vec(
                (0u8..6, prop::option::of(prop::collection::vec(0u8..5, 1..4)), 1u64..60),
                0..80,
            )
        ) {
            let mut m = DirectoryMirror::default();
            let mut newest: HashMap<RoomId, (u64, Option<RoomAssignment>)> = HashMap::new();
            for (room, nodes, revision) in &changes {
                let id = format!("r{room}");
                let a = nodes.as_ref().map(|n| entry(&id, n, 1));
                let room = RoomId::new(&id).unwrap();
                m.apply(room.clone(), a.clone(), *revision);
                let e = newest.entry(room).or_insert((0, None));
                // A revision once seen for a live entry is only replaced by a newer one; a
                // deletion forgets the room (so a replayed older entry comes back, as KV's
                // watch would only replay the newest).
                if e.1.is_none() || *revision > e.0 {
                    *e = (*revision, a);
                }
            }
            for (room, (revision, a)) in &newest {
                match a {
                    Some(a) => {
                        let held = m.get(room).expect("held");
                        prop_assert_eq!(&held.assignment, a);
                        prop_assert_eq!(held.revision, *revision);
                    }
                    None => prop_assert!(m.get(room).is_none()),
                }
            }
            let mut index: Vec<(NodeId, RoomId)> = m
                .by_node
                .iter()
                .flat_map(|(n, rs)| rs.iter().map(move |r| (n.clone(), r.clone())))
                .collect();
            index.sort();
            let mut expected: Vec<(NodeId, RoomId)> = m
                .entries()
                .flat_map(|h| {
                    h.assignment
                        .members()
                        .into_iter()
                        .map(move |n| (n, h.assignment.room.clone()))
                })
                .collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(index, expected);
        }
    }
}
