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
        draining: false,
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
