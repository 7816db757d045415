//! The allocation decision as a pure function: given what the room directory (KV) holds for
//! a room and the node registry, say which node serves the joining client and what to write.
//! The caller performs the write as a compare-and-swap and, on a conflict, reads again and
//! decides again, so two coordinators can never both install an origin for one epoch.
//!
//! Which node serves a join is [`protocol::cascade::plan_join`]'s decision; this module
//! applies it to the entry: a room's dead nodes are dropped first (the origin role moving to
//! the earliest surviving node with the next epoch), then the join is served by a node of the
//! room or by a node that joins the room now. [`leave`] is the other half: what the entry
//! becomes when a node leaves the room, and [`failover`] what it becomes when this
//! coordinator finds nodes of it dead, before anyone joins. All three drop nodes with
//! [`protocol::cascade::survivors`], so a dead origin moves the same way whoever notices.

use crate::registry::{Liveness, NodeRegistry};
use protocol::cascade::{
    plan_failover, plan_join, plan_leave, survivors, with_node, FailoverPlan, JoinPlan, LeavePlan,
    Survivors,
};
use protocol::cluster::{RoomAssignment, RoomClosed, RoomNode, VERSION};
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

/// Why an existing record is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A closed room opens again.
    Reopen,
    /// Nodes of the room are dead: they leave the entry (a dead origin's role moves on with
    /// the next epoch), and a node may join it to serve the client.
    Failover,
    /// A node joins the room to serve the client.
    Extend,
}

/// What to do about an allocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The entry stands as read: answer with it.
    Keep {
        assignment: RoomAssignment,
        serve: NodeId,
    },
    /// `kv.create`: the room is new; its origin serves the client.
    Create(RoomAssignment),
    /// `kv.update(.., revision)`.
    Update {
        assignment: RoomAssignment,
        revision: u64,
        serve: NodeId,
        why: Change,
        /// The node that joined the room with this write (counted as pending there).
        added: Option<NodeId>,
    },
    /// No node can take the client.
    NoNode,
}

impl Decision {
    /// The node this decision counts as a new pending room, if any.
    pub fn new_node(&self) -> Option<&NodeId> {
        match self {
            Decision::Create(a) => Some(&a.node),
            Decision::Update { added, .. } => added.as_ref(),
            Decision::Keep { .. } | Decision::NoNode => None,
        }
    }

    /// The node that serves the client, if any.
    pub fn serve(&self) -> Option<&NodeId> {
        match self {
            Decision::Create(a) => Some(&a.node),
            Decision::Keep { serve, .. } | Decision::Update { serve, .. } => Some(serve),
            Decision::NoNode => None,
        }
    }
}

/// Who decides and when (stamped into entries whose epoch changes).
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub coordinator: &'a str,
    pub now: Instant,
    pub now_ms: u64,
}

/// A join to decide for: the room, the client's region, and the room's nodes that refused
/// the client for holding their share of the room already.
#[derive(Debug, Clone, Copy)]
pub struct Join<'a> {
    pub room: &'a RoomId,
    pub region: Option<&'a str>,
    pub full: &'a [NodeId],
}

/// Decides for `join` and, when a node joins the room (or a new room), counts it as pending
/// in `nodes`.
///
/// Only a node the registry says is [`Liveness::Dead`] leaves the entry. A node whose
/// liveness is unknown (this coordinator has not listened long enough to tell) stays, and
/// while it is in the room no sibling is added in its region: reassigning on ignorance would
/// duplicate a healthy node. A draining node keeps its rooms; moving them is the drain
/// process's job, not the allocation's. `coordinator` and `assigned_ms` are restamped when
/// the epoch changes (a new origin), not when a node joins or leaves.
pub fn decide(
    join: Join<'_>,
    record: RoomRecord,
    nodes: &mut NodeRegistry,
    stamp: Stamp<'_>,
) -> Decision {
    let (entry, revision) = match record {
        RoomRecord::Assigned {
            assignment,
            revision,
        } => (assignment, revision),
        RoomRecord::Closed {
            revision,
            last_epoch,
        } => {
            return fresh(
                join,
                last_epoch + 1,
                Some((revision, Change::Reopen)),
                nodes,
                stamp,
            )
        }
        RoomRecord::Missing => return fresh(join, 1, None, nodes, stamp),
    };
    let now = stamp.now;
    // The room's live and unknown nodes, the origin listed even in an entry from before
    // cascading (or a malformed one).
    let origin_region = nodes.region(&entry.node).unwrap_or_default().to_owned();
    let is_dead = |n: &NodeId| nodes.liveness(n, now) == Liveness::Dead;
    let (next, dropped) = match survivors(&entry, &origin_region, is_dead) {
        Survivors::Intact(next) => (next, false),
        Survivors::Shrunk(next) => (restamp(&entry, next, stamp), true),
        Survivors::Orphaned => {
            // Every node of the room is dead: place it afresh.
            return fresh(
                join,
                entry.epoch + 1,
                Some((revision, Change::Failover)),
                nodes,
                stamp,
            );
        }
    };
    let members: Vec<(RoomNode, Liveness)> = next
        .nodes
        .iter()
        .map(|m| (m.clone(), nodes.liveness(&m.node, now)))
        .collect();
    // Only the room's own nodes can be full: that bounds the planning cost whatever a
    // request lists.
    let full: Vec<NodeId> = join
        .full
        .iter()
        .filter(|f| next.nodes.iter().any(|m| &m.node == *f))
        .cloned()
        .collect();
    let join = Join {
        full: &full,
        ..join
    };
    let plan = plan_join(
        join.room,
        &next.nodes,
        join.region,
        join.full,
        nodes.views(now),
    );
    let plan = match plan {
        JoinPlan::Serve(n) => JoinPlan::Serve(n),
        // Not around a node whose state this coordinator cannot judge yet.
        JoinPlan::Extend(n) => match unknown_in_region(&members, join.full, &n.region) {
            Some(m) => JoinPlan::Serve(m),
            None => JoinPlan::Extend(n),
        },
        // Nobody can take the client by the registry's measure; a room node that did not
        // refuse it may still (today's load may be stale, its liveness unknown).
        JoinPlan::NoNode => match any_member(&members, join) {
            Some(m) => JoinPlan::Serve(m),
            None => JoinPlan::NoNode,
        },
    };
    let why = if dropped {
        Change::Failover
    } else {
        Change::Extend
    };
    match plan {
        JoinPlan::Serve(serve) if !dropped => Decision::Keep {
            assignment: entry,
            serve,
        },
        JoinPlan::Serve(serve) => Decision::Update {
            assignment: next,
            revision,
            serve,
            why,
            added: None,
        },
        JoinPlan::Extend(n) => {
            nodes.assigned(&n.node, now);
            Decision::Update {
                serve: n.node.clone(),
                added: Some(n.node.clone()),
                assignment: with_node(&next, n),
                revision,
                why,
            }
        }
        JoinPlan::NoNode => Decision::NoNode,
    }
}

/// A room that has no live node yet: the node the plan picks becomes its origin and only
/// node. `rewrite` is the revision and reason when a record exists (closed, or all dead).
fn fresh(
    join: Join<'_>,
    epoch: u64,
    rewrite: Option<(u64, Change)>,
    nodes: &mut NodeRegistry,
    stamp: Stamp<'_>,
) -> Decision {
    // Nobody is in the room yet, so nobody can be full.
    let JoinPlan::Extend(origin) =
        plan_join(join.room, &[], join.region, &[], nodes.views(stamp.now))
    else {
        return Decision::NoNode;
    };
    nodes.assigned(&origin.node, stamp.now);
    let assignment = RoomAssignment {
        v: VERSION,
        room: join.room.clone(),
        node: origin.node.clone(),
        epoch,
        coordinator: stamp.coordinator.to_owned(),
        assigned_ms: stamp.now_ms,
        nodes: vec![origin],
    };
    match rewrite {
        None => Decision::Create(assignment),
        Some((revision, why)) => Decision::Update {
            serve: assignment.node.clone(),
            added: Some(assignment.node.clone()),
            assignment,
            revision,
            why,
        },
    }
}

/// What the room's entry becomes when a node says it left the room: [`plan_leave`], except
/// that a message from a later epoch than the entry's changes nothing (the entry cannot be
/// older than what a node was told, so the message is from before the key was purged, or
/// forged). A node's epoch may lag the entry's (it learnt it when it joined), so an older
/// epoch still counts. When the origin role moves, the entry is restamped.
pub fn leave(entry: &RoomAssignment, left: &RoomClosed, stamp: Stamp<'_>) -> LeavePlan {
    if left.epoch > entry.epoch {
        return LeavePlan::Unchanged;
    }
    match plan_leave(entry, &left.node) {
        LeavePlan::Update(next) => LeavePlan::Update(restamp(entry, next, stamp)),
        plan => plan,
    }
}

/// What the room's entry becomes when this coordinator finds nodes of it dead, with nobody
/// joining: [`plan_failover`] with the registry's liveness and placement views. Only a node
/// the registry says is [`Liveness::Dead`] leaves the entry (as in [`decide`]). When the
/// whole room moves to a new node, that node counts the room as pending; a caller whose
/// write then fails calls [`NodeRegistry::unassigned`]. The entry is restamped when its epoch
/// changes.
pub fn failover(
    entry: &RoomAssignment,
    nodes: &mut NodeRegistry,
    stamp: Stamp<'_>,
) -> FailoverPlan {
    let now = stamp.now;
    let dead: Vec<NodeId> = entry
        .members()
        .into_iter()
        .filter(|n| nodes.liveness(n, now) == Liveness::Dead)
        .collect();
    if dead.is_empty() {
        return FailoverPlan::Unchanged;
    }
    match plan_failover(entry, |n| dead.contains(n), nodes.views(now)) {
        FailoverPlan::Shrunk(next) => FailoverPlan::Shrunk(restamp(entry, next, stamp)),
        FailoverPlan::Replaced(next) => {
            nodes.assigned(&next.node, now);
            FailoverPlan::Replaced(restamp(entry, next, stamp))
        }
        plan => plan,
    }
}

/// `next`, planned from `entry`, stamped with who decided and when if its epoch changed (a
/// new origin); an entry whose origin stays keeps the stamp of the epoch's start.
fn restamp(entry: &RoomAssignment, mut next: RoomAssignment, stamp: Stamp<'_>) -> RoomAssignment {
    if next.epoch != entry.epoch {
        next.coordinator = stamp.coordinator.to_owned();
        next.assigned_ms = stamp.now_ms;
    }
    next
}

/// A room node of unknown liveness in `region` (or of an unknown region) that did not refuse
/// the client.
fn unknown_in_region(
    members: &[(RoomNode, Liveness)],
    full: &[NodeId],
    region: &str,
) -> Option<NodeId> {
    members
        .iter()
        .find(|(m, l)| {
            *l == Liveness::Unknown
                && !full.contains(&m.node)
                && (m.region == region || m.region.is_empty())
        })
        .map(|(m, _)| m.node.clone())
}

/// A room node that did not refuse the client, of its region first.
fn any_member(members: &[(RoomNode, Liveness)], join: Join<'_>) -> Option<NodeId> {
    let open = || members.iter().filter(|(m, _)| !join.full.contains(&m.node));
    open()
        .find(|(m, _)| join.region.is_some_and(|r| m.region == r))
        .or_else(|| open().next())
        .map(|(m, _)| m.node.clone())
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

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn member(node: &str, region: &str) -> RoomNode {
        RoomNode {
            node: id(node),
            region: region.into(),
        }
    }

    /// An entry at `epoch` with origin `origin` and nodes `nodes` (all listed in `eu` unless
    /// their name says `us`).
    fn entry(origin: &str, epoch: u64, nodes: &[&str]) -> RoomAssignment {
        RoomAssignment {
            v: VERSION,
            room: room(),
            node: id(origin),
            epoch,
            coordinator: "c0".into(),
            assigned_ms: 1,
            nodes: nodes
                .iter()
                .map(|n| member(n, if n.starts_with("us") { "us" } else { "eu" }))
                .collect(),
        }
    }

    fn assigned(a: RoomAssignment) -> RoomRecord {
        RoomRecord::Assigned {
            assignment: a,
            revision: 9,
        }
    }

    fn stamp(now: Instant) -> Stamp<'static> {
        Stamp {
            coordinator: "c1",
            now,
            now_ms: 42,
        }
    }

    static ROOM: std::sync::LazyLock<RoomId> = std::sync::LazyLock::new(room);

    fn join<'a>(region: Option<&'a str>, full: &'a [NodeId]) -> Join<'a> {
        Join {
            room: &ROOM,
            region,
            full,
        }
    }

    /// Listening from `t0`; `alive` heartbeat at `t0 + T` (alive then), `dead` only at `t0`
    /// (dead at `t0 + T`).
    fn registry(t0: Instant, alive: &[(&str, &str)], dead: &[(&str, &str)]) -> NodeRegistry {
        let mut r = NodeRegistry::new(T, Duration::from_secs(2));
        r.listening(t0);
        for (n, region) in dead {
            r.heartbeat(hb(n, region), t0);
        }
        for (n, region) in alive {
            r.heartbeat(hb(n, region), t0 + T);
        }
        r
    }

    const CLUSTER: [(&str, &str); 3] = [("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")];

    fn pending(r: &mut NodeRegistry, node: &str, now: Instant) -> u32 {
        r.views(now)
            .iter()
            .find(|v| v.id.as_str() == node)
            .map_or(0, |v| v.pending_rooms)
    }

    #[test]
    fn a_new_room_is_created_at_epoch_one_on_a_live_node_of_the_region() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &[("b", "us")], &[("a", "eu")]);
        let d = decide(
            join(Some("eu"), &[]),
            RoomRecord::Missing,
            &mut r,
            stamp(now),
        );
        let Decision::Create(a) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (a.node.as_str(), a.epoch, a.coordinator.as_str()),
            ("b", 1, "c1")
        );
        assert_eq!(
            (a.assigned_ms, a.nodes.clone()),
            (42, vec![member("b", "us")])
        );
        assert_eq!(d.new_node(), Some(&id("b")));
        assert_eq!(d.serve(), Some(&id("b")));
        assert_eq!(pending(&mut r, "b", now), 1);

        let mut r = registry(t0, &CLUSTER, &[]);
        let d = decide(
            join(Some("us"), &[]),
            RoomRecord::Missing,
            &mut r,
            stamp(now),
        );
        assert_eq!(d.serve(), Some(&id("us-1")));
    }

    #[test]
    fn a_client_of_the_rooms_region_is_served_by_its_node_without_a_write() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &CLUSTER, &[]);
        let e = entry("eu-1", 4, &["eu-1", "us-1"]);
        for (region, serve) in [(Some("eu"), "eu-1"), (Some("us"), "us-1")] {
            let d = decide(join(region, &[]), assigned(e.clone()), &mut r, stamp(now));
            assert_eq!(
                d,
                Decision::Keep {
                    assignment: e.clone(),
                    serve: id(serve)
                }
            );
            assert_eq!(d.new_node(), None);
        }
        assert_eq!(pending(&mut r, "eu-2", now), 0);
    }

    #[test]
    fn a_second_region_extends_the_room_keeping_origin_and_epoch() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &CLUSTER, &[]);
        let d = decide(
            join(Some("us"), &[]),
            assigned(entry("eu-1", 4, &["eu-1"])),
            &mut r,
            stamp(now),
        );
        let Decision::Update {
            assignment: a,
            revision: 9,
            serve,
            why: Change::Extend,
            added: Some(added),
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!((serve.as_str(), added.as_str()), ("us-1", "us-1"));
        assert_eq!(
            (a.node.as_str(), a.epoch, a.coordinator.as_str()),
            ("eu-1", 4, "c0")
        );
        assert_eq!(a.nodes, vec![member("eu-1", "eu"), member("us-1", "us")]);
        assert_eq!(pending(&mut r, "us-1", now), 1);
    }

    #[test]
    fn a_full_room_node_gets_a_sibling_in_its_region() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &CLUSTER, &[]);
        let full = [id("eu-1")];
        let d = decide(
            join(Some("eu"), &full),
            assigned(entry("eu-1", 2, &["eu-1", "us-1"])),
            &mut r,
            stamp(now),
        );
        let Decision::Update {
            assignment: a,
            serve,
            why: Change::Extend,
            ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!(serve.as_str(), "eu-2");
        assert_eq!(a.members(), vec![id("eu-1"), id("us-1"), id("eu-2")]);
        assert_eq!(a.node.as_str(), "eu-1");
    }

    #[test]
    fn a_dead_member_leaves_the_entry() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &[("eu-1", "eu"), ("eu-2", "eu")], &[("us-1", "us")]);
        let d = decide(
            join(Some("eu"), &[]),
            assigned(entry("eu-1", 4, &["eu-1", "us-1"])),
            &mut r,
            stamp(now),
        );
        assert_eq!(
            d,
            Decision::Update {
                assignment: entry("eu-1", 4, &["eu-1"]),
                revision: 9,
                serve: id("eu-1"),
                why: Change::Failover,
                added: None,
            }
        );
    }

    #[test]
    fn a_dead_origin_moves_to_the_earliest_live_node_with_the_next_epoch() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &[("eu-2", "eu"), ("us-1", "us")], &[("eu-1", "eu")]);
        let d = decide(
            join(Some("us"), &[]),
            assigned(entry("eu-1", 4, &["eu-1", "us-1", "eu-2"])),
            &mut r,
            stamp(now),
        );
        let Decision::Update {
            assignment: a,
            serve,
            why: Change::Failover,
            added: None,
            ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!(serve.as_str(), "us-1");
        assert_eq!((a.node.as_str(), a.epoch), ("us-1", 5));
        assert_eq!((a.coordinator.as_str(), a.assigned_ms), ("c1", 42));
        assert_eq!(a.members(), vec![id("us-1"), id("eu-2")]);
    }

    #[test]
    fn a_room_whose_nodes_all_died_is_placed_afresh_with_the_next_epoch() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &[("b", "us")], &[("a", "eu")]);
        // An entry from before cascading: its origin alone serves it.
        let rec = assigned(entry("a", 4, &[]));
        let d = decide(join(Some("eu"), &[]), rec.clone(), &mut r, stamp(now));
        let Decision::Update {
            assignment: a,
            revision: 9,
            why: Change::Failover,
            added: Some(added),
            ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!((a.node.as_str(), a.epoch, added.as_str()), ("b", 5, "b"));
        assert_eq!(a.nodes, vec![member("b", "us")]);
        // Nobody left: no node, and nothing counted.
        let mut empty = NodeRegistry::new(T, Duration::from_secs(2));
        empty.listening(t0);
        assert_eq!(
            decide(join(None, &[]), rec, &mut empty, stamp(now)),
            Decision::NoNode
        );
    }

    #[test]
    fn a_live_or_unknown_origin_is_kept_and_gets_no_sibling() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &[("b", "us")], &[("a", "us")]);
        let e = entry("b", 4, &[]);
        let d = decide(join(None, &[]), assigned(e.clone()), &mut r, stamp(now));
        assert_eq!(
            d,
            Decision::Keep {
                assignment: e,
                serve: id("b")
            }
        );
        // Just reconnected: "a" is silent but that proves nothing yet, and "b" is alive.
        r.listening(now);
        let e = entry("a", 4, &[]);
        let d = decide(
            join(Some("us"), &[]),
            assigned(e.clone()),
            &mut r,
            stamp(now),
        );
        assert_eq!(
            d,
            Decision::Keep {
                assignment: e,
                serve: id("a")
            }
        );
    }

    #[test]
    fn a_legacy_entry_learns_its_origins_region_when_extended() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &CLUSTER, &[]);
        let d = decide(
            join(Some("us"), &[]),
            assigned(entry("eu-1", 1, &[])),
            &mut r,
            stamp(now),
        );
        let Decision::Update { assignment: a, .. } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(a.nodes, vec![member("eu-1", "eu"), member("us-1", "us")]);
    }

    #[test]
    fn a_closed_room_reopens_past_its_last_epoch() {
        let t0 = Instant::now();
        let mut r = registry(t0, &CLUSTER, &[]);
        let rec = RoomRecord::Closed {
            revision: 12,
            last_epoch: 3,
        };
        let d = decide(join(Some("us"), &[]), rec, &mut r, stamp(t0 + T));
        let Decision::Update {
            assignment: a,
            revision: 12,
            why: Change::Reopen,
            ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!((a.node.as_str(), a.epoch), ("us-1", 4));
        assert_eq!(a.nodes, vec![member("us-1", "us")]);
    }

    #[test]
    fn no_node_when_every_room_node_refused_and_none_is_free() {
        let t0 = Instant::now();
        let mut r = registry(t0, &[("eu-1", "eu")], &[]);
        let full = [id("eu-1")];
        let d = decide(
            join(Some("eu"), &full),
            assigned(entry("eu-1", 1, &["eu-1"])),
            &mut r,
            stamp(t0 + T),
        );
        assert_eq!(d, Decision::NoNode);
    }

    #[test]
    fn failover_drops_dead_nodes_and_moves_a_dead_origin_without_a_join() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &[("eu-2", "eu"), ("us-1", "us")], &[("eu-1", "eu")]);
        // A dead member leaves; origin, epoch and stamp stay.
        let e = entry("us-1", 4, &["us-1", "eu-1"]);
        assert_eq!(
            failover(&e, &mut r, stamp(now)),
            FailoverPlan::Shrunk(entry("us-1", 4, &["us-1"]))
        );
        // A dead origin's role moves to the earliest survivor, restamped.
        let e = entry("eu-1", 4, &["eu-1", "us-1", "eu-2"]);
        let FailoverPlan::Shrunk(a) = failover(&e, &mut r, stamp(now)) else {
            panic!()
        };
        assert_eq!((a.node.as_str(), a.epoch), ("us-1", 5));
        assert_eq!((a.coordinator.as_str(), a.assigned_ms), ("c1", 42));
        assert_eq!(a.members(), vec![id("us-1"), id("eu-2")]);
        // Nothing dead: nothing to write, and nothing counted.
        let e = entry("eu-2", 4, &["eu-2"]);
        assert_eq!(failover(&e, &mut r, stamp(now)), FailoverPlan::Unchanged);
        assert_eq!(pending(&mut r, "eu-2", now), 0);
    }

    #[test]
    fn failover_moves_an_orphaned_room_to_its_region_and_counts_it_pending() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &CLUSTER, &[("eu-0", "eu"), ("us-0", "us")]);
        let e = entry("eu-0", 4, &["eu-0", "us-0"]);
        let FailoverPlan::Replaced(a) = failover(&e, &mut r, stamp(now)) else {
            panic!()
        };
        assert_eq!(a.epoch, 5);
        assert_eq!(a.nodes.len(), 1);
        assert_eq!(a.nodes[0].region, "eu", "the dead origin's region first");
        assert_eq!(a.coordinator, "c1");
        assert_eq!(pending(&mut r, a.node.as_str(), now), 1);
        // A second orphan goes to the other eu node: the first counts as pending.
        let FailoverPlan::Replaced(b) = failover(&e, &mut r, stamp(now)) else {
            panic!()
        };
        assert_ne!(a.node, b.node);
        assert_eq!(b.nodes[0].region, "eu");
    }

    #[test]
    fn failover_waits_while_liveness_is_unknown_or_nobody_can_take_the_room() {
        let t0 = Instant::now();
        let now = t0 + T;
        let mut r = registry(t0, &[("b", "us")], &[("a", "eu")]);
        let e = entry("a", 4, &["a"]);
        // Just reconnected: a's silence proves nothing yet.
        r.listening(now);
        assert_eq!(failover(&e, &mut r, stamp(now)), FailoverPlan::Unchanged);
        // A probe proves it dead at once; b takes the room.
        assert!(r.confirm_dead(&id("a"), now));
        let FailoverPlan::Replaced(moved) = failover(&e, &mut r, stamp(now)) else {
            panic!()
        };
        assert_eq!((moved.node.as_str(), moved.epoch), ("b", 5));
        // Only a draining node left: the entry stays for the next join.
        r.request_drain(&id("b"), true);
        assert_eq!(failover(&e, &mut r, stamp(now)), FailoverPlan::Stranded);
    }

    #[test]
    fn a_leaving_node_leaves_the_entry_and_a_later_epoch_is_ignored() {
        let now = Instant::now();
        let e = entry("eu-1", 4, &["eu-1", "us-1"]);
        let left = |node: &str, epoch| RoomClosed {
            v: VERSION,
            room: room(),
            node: id(node),
            epoch,
        };
        // A node that learnt an older epoch still leaves.
        assert_eq!(
            leave(&e, &left("us-1", 2), stamp(now)),
            LeavePlan::Update(entry("eu-1", 4, &["eu-1"]))
        );
        let LeavePlan::Update(next) = leave(&e, &left("eu-1", 4), stamp(now)) else {
            panic!()
        };
        assert_eq!((next.node.as_str(), next.epoch), ("us-1", 5));
        assert_eq!((next.coordinator.as_str(), next.assigned_ms), ("c1", 42));
        assert_eq!(
            leave(&e, &left("eu-1", 5), stamp(now)),
            LeavePlan::Unchanged
        );
        assert_eq!(
            leave(&e, &left("eu-2", 4), stamp(now)),
            LeavePlan::Unchanged
        );
        let last = entry("us-1", 5, &["us-1"]);
        assert_eq!(leave(&last, &left("us-1", 5), stamp(now)), LeavePlan::Close);
    }
}
