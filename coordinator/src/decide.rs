//! The allocation decision as a pure function: given what the room directory (KV) holds for
//! a room and the node registry, say what to write. The caller performs the write as a
//! compare-and-swap and, on a conflict, reads again and decides again, so two coordinators
//! can never both install a primary for one epoch.

use crate::registry::{Liveness, NodeRegistry};
use protocol::cluster::{RoomAssignment, VERSION};
use protocol::{NodeId, RoomId};
use std::time::Instant;

/// What the directory holds for a room, with the KV revision to compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRecord {
    /// The key was never written (or its history was purged).
    Missing,
    /// The room was closed: the latest entry is a delete marker. `last_epoch` is the highest
    /// epoch in the key's history, so a reopened room continues the epoch sequence.
    Closed { revision: u64, last_epoch: u64 },
    Assigned {
        assignment: RoomAssignment,
        revision: u64,
    },
}

/// Why a record is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// A closed room opens again.
    Reopen,
    /// The room's node is dead.
    Failover,
}

/// What to do about an allocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The room has a primary that may still be alive: answer with it.
    Keep(RoomAssignment),
    /// `kv.create`: the room is new.
    Create(RoomAssignment),
    /// `kv.update(.., revision)`: a new epoch on another node.
    Update {
        assignment: RoomAssignment,
        revision: u64,
        why: Replace,
    },
    /// No node can take the room.
    NoNode,
}

impl Decision {
    /// The node this decision counts as a new pending room, if any.
    pub fn new_node(&self) -> Option<&NodeId> {
        match self {
            Decision::Create(a) | Decision::Update { assignment: a, .. } => Some(&a.node),
            Decision::Keep(_) | Decision::NoNode => None,
        }
    }
}

/// Who decides and when (stamped into new assignments).
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub coordinator: &'a str,
    pub now: Instant,
    pub now_ms: u64,
}

/// Decides for `room` and, when a node is chosen, counts it as pending in `nodes`.
///
/// An assignment whose node is alive, or whose liveness is unknown (this coordinator has not
/// listened long enough to tell), is kept: reassigning on ignorance would create a second
/// primary for a healthy node. A draining node keeps its rooms; moving them is the drain
/// process's job, not the allocation's.
pub fn decide(
    room: &RoomId,
    region: Option<&str>,
    record: RoomRecord,
    nodes: &mut NodeRegistry,
    stamp: Stamp<'_>,
) -> Decision {
    let (epoch, revision, why) = match record {
        RoomRecord::Assigned {
            assignment,
            revision,
        } => {
            if nodes.liveness(&assignment.node, stamp.now) != Liveness::Dead {
                return Decision::Keep(assignment);
            }
            (assignment.epoch + 1, Some(revision), Replace::Failover)
        }
        RoomRecord::Closed {
            revision,
            last_epoch,
        } => (last_epoch + 1, Some(revision), Replace::Reopen),
        RoomRecord::Missing => (1, None, Replace::Reopen),
    };
    let Some(node) = nodes.place(room, region, stamp.now) else {
        return Decision::NoNode;
    };
    let assignment = RoomAssignment {
        v: VERSION,
        room: room.clone(),
        node,
        epoch,
        coordinator: stamp.coordinator.to_owned(),
        assigned_ms: stamp.now_ms,
    };
    match revision {
        None => Decision::Create(assignment),
        Some(revision) => Decision::Update {
            assignment,
            revision,
            why,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::hb;
    use std::time::Duration;

    const T: Duration = Duration::from_secs(3);

    fn room() -> RoomId {
        RoomId::new("room.1").unwrap()
    }

    fn assignment(node: &str, epoch: u64) -> RoomAssignment {
        RoomAssignment {
            v: VERSION,
            room: room(),
            node: NodeId::new(node).unwrap(),
            epoch,
            coordinator: "c0".into(),
            assigned_ms: 1,
        }
    }

    fn stamp(now: Instant) -> Stamp<'static> {
        Stamp {
            coordinator: "c1",
            now,
            now_ms: 42,
        }
    }

    fn registry(t0: Instant) -> NodeRegistry {
        let mut r = NodeRegistry::new(T, Duration::from_secs(2));
        r.listening(t0);
        r.heartbeat(hb("a", "eu"), t0);
        r.heartbeat(hb("b", "us"), t0 + T);
        r
    }

    #[test]
    fn a_new_room_is_created_at_epoch_one_on_a_live_node() {
        let t0 = Instant::now();
        let mut r = registry(t0);
        let d = decide(
            &room(),
            Some("eu"),
            RoomRecord::Missing,
            &mut r,
            stamp(t0 + T),
        );
        let Decision::Create(a) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (a.node.as_str(), a.epoch, a.coordinator.as_str()),
            ("b", 1, "c1")
        );
        assert_eq!(a.assigned_ms, 42);
        assert_eq!(d.new_node().unwrap().as_str(), "b");
        assert_eq!(r.views(t0 + T)[1].pending_rooms, 1);
    }

    #[test]
    fn a_live_or_unknown_primary_is_kept() {
        let t0 = Instant::now();
        let mut r = registry(t0);
        let rec = |node| RoomRecord::Assigned {
            assignment: assignment(node, 4),
            revision: 9,
        };
        let d = decide(&room(), None, rec("b"), &mut r, stamp(t0 + T));
        assert_eq!(d, Decision::Keep(assignment("b", 4)));
        assert_eq!(d.new_node(), None);
        // Just reconnected: "a" is silent but that proves nothing yet.
        r.listening(t0 + T);
        let d = decide(&room(), None, rec("a"), &mut r, stamp(t0 + T));
        assert_eq!(d, Decision::Keep(assignment("a", 4)));
    }

    #[test]
    fn a_dead_primary_is_replaced_with_the_next_epoch_by_cas() {
        let t0 = Instant::now();
        let mut r = registry(t0);
        let rec = RoomRecord::Assigned {
            assignment: assignment("a", 4),
            revision: 9,
        };
        let d = decide(&room(), Some("eu"), rec.clone(), &mut r, stamp(t0 + T));
        let Decision::Update {
            assignment: a,
            revision: 9,
            why: Replace::Failover,
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!((a.node.as_str(), a.epoch), ("b", 5));
        // Nobody left: no node, and nothing counted.
        let mut empty = NodeRegistry::new(T, Duration::from_secs(2));
        empty.listening(t0);
        assert_eq!(
            decide(&room(), None, rec, &mut empty, stamp(t0 + T)),
            Decision::NoNode
        );
    }

    #[test]
    fn a_closed_room_reopens_past_its_last_epoch() {
        let t0 = Instant::now();
        let mut r = registry(t0);
        let rec = RoomRecord::Closed {
            revision: 12,
            last_epoch: 3,
        };
        let d = decide(&room(), None, rec, &mut r, stamp(t0 + T));
        let Decision::Update {
            assignment: a,
            revision: 12,
            why: Replace::Reopen,
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!(a.epoch, 4);
    }
}
