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
    let plan = plan_join(&next.nodes, join.region, join.full, &nodes.pool(now));
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
    let JoinPlan::Extend(origin) = plan_join(&[], join.region, &[], &nodes.pool(stamp.now)) else {
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
    let plan = plan_failover(entry, |n| dead.contains(n), &nodes.pool(now));
    match plan {
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
mod tests;
