//! Cascade planning as pure functions (DESIGN.md "Placement and cascading"): which node of a
//! room serves a joining client, when a node of the client's region joins the room, and what
//! the room's entry becomes when a node leaves it.
//!
//! A join is served by the room's node in the client's region if one has headroom; otherwise
//! a node of that region joins the room. A node that holds its share of a big room (it says
//! so by refusing the join, see [`crate::cluster::AllocateRequest::full`]) gets a sibling in
//! the same region. A region without any eligible node is served by the room's least-loaded
//! node elsewhere, or failing that by a new node of any region. A decision looks up the
//! room's nodes and walks a [`Pool`]'s load order a few steps, never the whole cluster.
//!
//! Failover (DESIGN.md "Failover, fencing, drain") is the same arithmetic on the entry:
//! [`survivors`] drops a room's dead nodes (a dead origin's role moving to the earliest
//! surviving node with the next epoch), which a join ([`plan_join`] after it), a node leaving
//! ([`plan_leave`]) and a coordinator reacting to a death ([`plan_failover`]) all share.

use crate::cluster::{RoomAssignment, RoomNode};
use crate::placement::{self, best, NodeView, Pool};
use crate::NodeId;

/// Which node serves a joining client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinPlan {
    /// A node already in the room.
    Serve(NodeId),
    /// A node that joins the room now (the caller adds it to the entry by CAS).
    Extend(RoomNode),
    /// No node can take the client.
    NoNode,
}

/// Plans a join of a room whose entry lists `members`, for a client of `region`.
///
/// `full` names room nodes that refused this join for holding their share of the room. A
/// room node the pool does not know (dead, or not heard from) serves nobody. The cost is a
/// lookup per member and a few ordered walks of the pool, not a pass over the cluster.
pub fn plan_join(
    members: &[RoomNode],
    region: Option<&str>,
    full: &[NodeId],
    pool: &(impl Pool + ?Sized),
) -> JoinPlan {
    let in_room = |id: &NodeId| members.iter().any(|m| &m.node == id);
    let in_region = |n: &NodeView| region.is_none_or(|r| n.region == r);
    let room_nodes = || {
        members
            .iter()
            .filter_map(|m| pool.view(&m.node))
            .filter(|n| pool.open(n) && !full.contains(&n.id))
    };

    // 1. A room node of the client's region with headroom.
    if let Some(n) = best(room_nodes().filter(|n| in_region(n))) {
        return JoinPlan::Serve(n.id.clone());
    }
    // 2. A node of the client's region joins the room (a sibling when the room's nodes there
    //    are full).
    let region_has_nodes = pool.least_loaded(region, &mut |_| true).is_some();
    if region_has_nodes {
        if let Some(n) = pool.least_loaded(region, &mut |n| !in_room(&n.id)) {
            return extend(n);
        }
    }
    // 3. The region has no node that can take the client: any room node with headroom,
    //    before widening the room to yet another region.
    if let Some(n) = best(room_nodes()) {
        return JoinPlan::Serve(n.id.clone());
    }
    // 4. Any node joins the room.
    match pool.least_loaded(None, &mut |n| !in_room(&n.id)) {
        Some(n) => extend(n),
        None => JoinPlan::NoNode,
    }
}

fn extend(n: &NodeView) -> JoinPlan {
    JoinPlan::Extend(RoomNode {
        node: n.id.clone(),
        region: n.region.clone(),
    })
}

/// What the room's entry becomes when `node` leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeavePlan {
    /// The node was not in the room (any more): nothing to write.
    Unchanged,
    /// The room's last node left: delete the entry.
    Close,
    /// The entry without the node; when the origin left, the earliest remaining node is the
    /// new origin and the epoch grows by one.
    Update(RoomAssignment),
}

pub fn plan_leave(entry: &RoomAssignment, node: &NodeId) -> LeavePlan {
    // Leaving is dying politely: the entry loses the node the same way.
    match survivors(entry, "", |n| n == node) {
        Survivors::Intact(_) => LeavePlan::Unchanged,
        Survivors::Shrunk(next) => LeavePlan::Update(next),
        Survivors::Orphaned => LeavePlan::Close,
    }
}

/// A room's entry without its dead nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Survivors {
    /// No node of the room is dead: the entry as it was, its origin listed among its nodes.
    Intact(RoomAssignment),
    /// The entry without its dead nodes, in the order they joined; when the origin died, the
    /// earliest surviving node is the new origin and the epoch grows by one.
    Shrunk(RoomAssignment),
    /// Every node of the room is dead.
    Orphaned,
}

/// Drops the nodes `is_dead` names from the room's entry. The origin counts as one of the
/// room's nodes even in an entry that does not list it (one from before cascading), listed
/// first with `origin_region`. The epoch grows exactly when the origin changes, so a room
/// never has two origins in one epoch; `coordinator` and `assigned_ms` are left for the
/// caller to stamp.
pub fn survivors(
    entry: &RoomAssignment,
    origin_region: &str,
    is_dead: impl Fn(&NodeId) -> bool,
) -> Survivors {
    let mut next = entry.clone();
    if !next.nodes.iter().any(|n| n.node == entry.node) {
        next.nodes.insert(
            0,
            RoomNode {
                node: entry.node.clone(),
                region: origin_region.to_owned(),
            },
        );
    }
    let listed = next.nodes.len();
    next.nodes.retain(|n| !is_dead(&n.node));
    let Some(first) = next.nodes.first() else {
        return Survivors::Orphaned;
    };
    if next.nodes.len() == listed {
        return Survivors::Intact(next);
    }
    if is_dead(&entry.node) {
        next.node = first.node.clone();
        next.epoch += 1;
    }
    Survivors::Shrunk(next)
}

/// What a room's entry becomes when a coordinator finds nodes of it dead, before anyone
/// joins it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverPlan {
    /// No node of the room is dead: nothing to write.
    Unchanged,
    /// Some nodes survive: the entry without the dead ones ([`survivors`]).
    Shrunk(RoomAssignment),
    /// Every node died: the room moves whole to the least-loaded eligible node, of the dead
    /// origin's region first, as its origin and only node, with the next epoch.
    Replaced(RoomAssignment),
    /// Every node died and no node can take the room: leave the entry as it is (the next
    /// join places the room afresh).
    Stranded,
}

/// Plans a room's failover from its entry, which nodes are dead, and the nodes placement
/// may choose from (only eligible ones are: healthy, not draining, below capacity).
pub fn plan_failover(
    entry: &RoomAssignment,
    is_dead: impl Fn(&NodeId) -> bool,
    pool: &(impl Pool + ?Sized),
) -> FailoverPlan {
    let origin_region = entry
        .nodes
        .iter()
        .find(|n| n.node == entry.node)
        .map(|n| n.region.as_str())
        .or_else(|| pool.view(&entry.node).map(|v| v.region.as_str()))
        .unwrap_or_default();
    match survivors(entry, origin_region, &is_dead) {
        Survivors::Intact(_) => FailoverPlan::Unchanged,
        Survivors::Shrunk(next) => FailoverPlan::Shrunk(next),
        Survivors::Orphaned => {
            let region = Some(origin_region).filter(|r| !r.is_empty());
            let chosen = placement::place_among(region, pool, |v| !is_dead(&v.id));
            let Some(origin) = chosen else {
                return FailoverPlan::Stranded;
            };
            let mut next = entry.clone();
            next.node = origin.id.clone();
            next.epoch += 1;
            next.nodes = vec![RoomNode {
                node: origin.id.clone(),
                region: origin.region.clone(),
            }];
            FailoverPlan::Replaced(next)
        }
    }
}

/// The entry with `node` added (a no-op when it is there already).
pub fn with_node(entry: &RoomAssignment, node: RoomNode) -> RoomAssignment {
    let mut next = entry.clone();
    if next.nodes.is_empty() {
        // An entry from before cascading: its origin is its one node; its region is unknown
        // here and learnt from the origin's next write.
        next.nodes.push(RoomNode {
            node: entry.node.clone(),
            region: String::new(),
        });
    }
    if !next.nodes.iter().any(|n| n.node == node.node) {
        next.nodes.push(node);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeLoad, VERSION};
    use crate::placement::eligible;
    use crate::RoomId;
    use proptest::prelude::*;

    fn view(id: &str, region: &str, cpu: f64) -> NodeView {
        NodeView {
            id: NodeId::new(id).unwrap(),
            region: region.into(),
            load: NodeLoad {
                cpu,
                max_rooms: 1000,
                max_peers: 1000,
                max_egress_bps: 1_000_000_000,
                ..NodeLoad::default()
            },
            healthy: true,
            draining: false,
            pending_rooms: 0,
        }
    }

    fn member(id: &str, region: &str) -> RoomNode {
        RoomNode {
            node: NodeId::new(id).unwrap(),
            region: region.into(),
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn room() -> RoomId {
        RoomId::new("r1").unwrap()
    }

    fn entry(origin: &str, nodes: &[&str]) -> RoomAssignment {
        RoomAssignment {
            v: VERSION,
            room: room(),
            node: id(origin),
            epoch: 3,
            coordinator: "c1".into(),
            assigned_ms: 1,
            nodes: nodes.iter().map(|n| member(n, "eu")).collect(),
        }
    }

    #[test]
    fn the_regions_room_node_serves_before_any_other() {
        let views = [
            view("eu-1", "eu", 0.5),
            view("eu-2", "eu", 0.0),
            view("us-1", "us", 0.0),
        ];
        let members = [member("eu-1", "eu")];
        assert_eq!(
            plan_join(&members, Some("eu"), &[], &views),
            JoinPlan::Serve(id("eu-1"))
        );
        // A client in `us` gets a `us` node added to the room.
        assert_eq!(
            plan_join(&members, Some("us"), &[], &views),
            JoinPlan::Extend(member("us-1", "us"))
        );
    }

    #[test]
    fn a_full_room_node_gets_a_sibling_in_its_region() {
        let views = [
            view("eu-1", "eu", 0.1),
            view("eu-2", "eu", 0.3),
            view("us-1", "us", 0.0),
        ];
        let members = [member("eu-1", "eu")];
        assert_eq!(
            plan_join(&members, Some("eu"), &[id("eu-1")], &views),
            JoinPlan::Extend(member("eu-2", "eu"))
        );
        // Both eu nodes in the room and full: the room's other region serves.
        let members = [
            member("eu-1", "eu"),
            member("eu-2", "eu"),
            member("us-1", "us"),
        ];
        assert_eq!(
            plan_join(&members, Some("eu"), &[id("eu-1"), id("eu-2")], &views),
            JoinPlan::Serve(id("us-1"))
        );
    }

    #[test]
    fn a_region_without_nodes_is_served_by_the_room_first() {
        let views = [view("eu-1", "eu", 0.9), view("us-1", "us", 0.0)];
        let members = [member("eu-1", "eu")];
        assert_eq!(
            plan_join(&members, Some("ap"), &[], &views),
            JoinPlan::Serve(id("eu-1"))
        );
        // A new room (no members) goes to the least-loaded node anywhere.
        assert_eq!(
            plan_join(&[], Some("ap"), &[], &views),
            JoinPlan::Extend(member("us-1", "us"))
        );
    }

    #[test]
    fn dead_draining_and_overloaded_nodes_serve_nobody() {
        let mut views = vec![view("eu-1", "eu", 0.0), view("eu-2", "eu", 1.0)];
        views[0].draining = true;
        let members = [member("eu-1", "eu"), member("gone", "eu")];
        assert_eq!(
            plan_join(&members, Some("eu"), &[], &views),
            JoinPlan::NoNode
        );
        views.push(view("us-1", "us", 0.2));
        assert_eq!(
            plan_join(&members, Some("eu"), &[], &views),
            JoinPlan::Extend(member("us-1", "us"))
        );
    }

    #[test]
    fn leaving_removes_the_node_and_moves_the_origin() {
        let e = entry("a", &["a", "b", "c"]);
        let LeavePlan::Update(next) = plan_leave(&e, &id("b")) else {
            panic!()
        };
        assert_eq!((next.node.as_str(), next.epoch), ("a", 3));
        assert_eq!(next.members(), vec![id("a"), id("c")]);
        let LeavePlan::Update(next) = plan_leave(&e, &id("a")) else {
            panic!()
        };
        assert_eq!((next.node.as_str(), next.epoch), ("b", 4));
        assert_eq!(next.members(), vec![id("b"), id("c")]);
        assert_eq!(plan_leave(&e, &id("x")), LeavePlan::Unchanged);
        assert_eq!(plan_leave(&entry("a", &["a"]), &id("a")), LeavePlan::Close);
        // An entry from before cascading lists no nodes: its origin is its one node.
        assert_eq!(plan_leave(&entry("a", &[]), &id("a")), LeavePlan::Close);
    }

    #[test]
    fn adding_a_node_keeps_the_origin_listed() {
        let e = with_node(&entry("a", &[]), member("b", "us"));
        assert_eq!(e.members(), vec![id("a"), id("b")]);
        assert_eq!(with_node(&e, member("b", "us")), e);
    }

    #[test]
    fn dead_nodes_leave_and_a_dead_origins_role_moves_on() {
        let e = entry("a", &["a", "b", "c"]);
        let dead = |names: &'static [&'static str]| move |n: &NodeId| names.contains(&n.as_str());
        assert_eq!(
            survivors(&e, "eu", dead(&["x"])),
            Survivors::Intact(e.clone())
        );
        let Survivors::Shrunk(next) = survivors(&e, "eu", dead(&["b"])) else {
            panic!()
        };
        assert_eq!((next.node.as_str(), next.epoch), ("a", 3));
        assert_eq!(next.members(), vec![id("a"), id("c")]);
        let Survivors::Shrunk(next) = survivors(&e, "eu", dead(&["a", "b"])) else {
            panic!()
        };
        assert_eq!((next.node.as_str(), next.epoch), ("c", 4));
        assert_eq!(next.nodes, vec![member("c", "eu")]);
        assert_eq!(
            survivors(&e, "eu", dead(&["a", "b", "c"])),
            Survivors::Orphaned
        );
        // An entry from before cascading lists no nodes: its origin is its one node, listed
        // with the region the caller knows.
        let legacy = entry("a", &[]);
        let Survivors::Intact(listed) = survivors(&legacy, "us", dead(&[])) else {
            panic!()
        };
        assert_eq!(listed.nodes, vec![member("a", "us")]);
        assert_eq!(survivors(&legacy, "us", dead(&["a"])), Survivors::Orphaned);
    }

    #[test]
    fn a_room_whose_nodes_all_died_moves_whole_to_its_origins_region_first() {
        let mut e = entry("a", &["a", "b"]);
        e.nodes[0].region = "us".into();
        let views = [
            view("eu-1", "eu", 0.0),
            view("us-1", "us", 0.5),
            view("us-2", "us", 0.2),
        ];
        let all = |n: &NodeId| e.serves(n);
        let FailoverPlan::Replaced(next) = plan_failover(&e, all, &views) else {
            panic!()
        };
        assert_eq!((next.node.as_str(), next.epoch), ("us-2", 4));
        assert_eq!(next.nodes, vec![member("us-2", "us")]);
        // No node of that region can take it: the least-loaded anywhere.
        let FailoverPlan::Replaced(next) = plan_failover(&e, all, &views[..1]) else {
            panic!()
        };
        assert_eq!(next.node.as_str(), "eu-1");
        // Nobody can: the entry stays for the next join.
        let mut busy = views[..1].to_vec();
        busy[0].draining = true;
        assert_eq!(plan_failover(&e, all, &busy), FailoverPlan::Stranded);
        assert_eq!(
            plan_failover(&e, |_| false, &views),
            FailoverPlan::Unchanged
        );
        let FailoverPlan::Shrunk(next) = plan_failover(&e, |n| n.as_str() == "a", &views) else {
            panic!()
        };
        assert_eq!((next.node.as_str(), next.epoch), ("b", 4));
    }

    fn arb_views() -> impl Strategy<Value = Vec<NodeView>> {
        proptest::collection::vec((0u8..3, 0.0f64..1.3, any::<bool>(), any::<bool>()), 1..12)
            .prop_map(|specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (r, cpu, healthy, draining))| {
                        let mut v = view(&format!("n{i}"), &format!("r{r}"), cpu);
                        v.healthy = healthy || i % 3 == 0;
                        v.draining = draining && i % 2 == 0;
                        v
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn planning_keeps_its_guarantees(
            views in arb_views(),
            in_room in proptest::collection::vec(any::<bool>(), 12),
            full in proptest::collection::vec(any::<bool>(), 12),
            ask in proptest::option::of(0u8..4),
        ) {
            let members: Vec<RoomNode> = views.iter().enumerate()
                .filter(|(i, _)| in_room[*i])
                .map(|(_, v)| RoomNode { node: v.id.clone(), region: v.region.clone() })
                .collect();
            let full: Vec<NodeId> = views.iter().enumerate()
                .filter(|(i, _)| full[*i])
                .map(|(_, v)| v.id.clone())
                .collect();
            let region = ask.map(|a| format!("r{a}"));
            let plan = plan_join(&members, region.as_deref(), &full, &views);
            // Deterministic for equal inputs.
            prop_assert_eq!(&plan, &plan_join(&members, region.as_deref(), &full, &views));
            let is_member = |v: &NodeView| members.iter().any(|m| m.node == v.id);
            let headroom = |v: &NodeView| eligible(v) && !full.contains(&v.id);
            let in_region = |v: &NodeView| region.as_deref().is_none_or(|r| v.region == r);
            match &plan {
                JoinPlan::NoNode => {
                    let takes = |v: &NodeView| if is_member(v) { headroom(v) } else { eligible(v) };
                    prop_assert!(!views.iter().any(takes));
                }
                JoinPlan::Serve(id) => {
                    let v = views.iter().find(|v| &v.id == id).unwrap();
                    prop_assert!(is_member(v) && headroom(v), "serves a member with headroom");
                }
                JoinPlan::Extend(n) => {
                    let v = views.iter().find(|v| v.id == n.node).unwrap();
                    prop_assert!(!is_member(v) && eligible(v), "extends with an eligible new node");
                    prop_assert_eq!(&n.region, &v.region);
                    // Never a second node in a region while one there has headroom.
                    prop_assert!(!views.iter().any(|m| is_member(m) && headroom(m) && in_region(m)));
                    // Never another region while the client's region has a node to add.
                    let region_free = views.iter().any(|m| !is_member(m) && eligible(m) && in_region(m));
                    if region_free {
                        prop_assert!(in_region(v));
                    } else {
                        // The room first, before another region joins it.
                        prop_assert!(!views.iter().any(|m| is_member(m) && headroom(m)));
                    }
                }
            }
        }

        #[test]
        fn failover_keeps_one_origin_per_epoch_and_no_dead_node(
            views in arb_views(),
            in_room in proptest::collection::vec(any::<bool>(), 12),
            dead in proptest::collection::vec(any::<bool>(), 12),
            origin in 0usize..12,
            legacy in any::<bool>(),
        ) {
            // The room: some of the views' nodes plus a node no view knows ("gone"), its
            // origin among them; or an entry from before cascading that lists none.
            let mut nodes: Vec<RoomNode> = views.iter().enumerate()
                .filter(|(i, _)| in_room[*i])
                .map(|(_, v)| RoomNode { node: v.id.clone(), region: v.region.clone() })
                .collect();
            nodes.push(member("gone", "r0"));
            let mut e = entry("x", &[]);
            e.node = nodes[origin % nodes.len()].node.clone();
            e.nodes = if legacy { Vec::new() } else { nodes };
            let is_dead = |n: &NodeId| {
                n.as_str() == "gone"
                    || views.iter().position(|v| &v.id == n).is_some_and(|i| dead[i])
            };
            let members = e.members();
            let plan = plan_failover(&e, is_dead, &views);
            prop_assert_eq!(&plan, &plan_failover(&e, is_dead, &views), "deterministic");
            match &plan {
                FailoverPlan::Unchanged => prop_assert!(!members.iter().any(is_dead)),
                FailoverPlan::Shrunk(next) => {
                    let kept: Vec<NodeId> = members.iter().filter(|n| !is_dead(n)).cloned().collect();
                    prop_assert!(!kept.is_empty() && kept.len() < members.len());
                    prop_assert_eq!(next.members(), kept.clone(), "survivors kept, in order");
                    prop_assert!(next.nodes.iter().any(|m| m.node == next.node), "origin listed");
                    if is_dead(&e.node) {
                        prop_assert_eq!((&next.node, next.epoch), (&kept[0], e.epoch + 1));
                    } else {
                        prop_assert_eq!((&next.node, next.epoch), (&e.node, e.epoch));
                    }
                }
                FailoverPlan::Replaced(next) => {
                    prop_assert!(members.iter().all(is_dead));
                    let v = views.iter().find(|v| v.id == next.node).unwrap();
                    prop_assert!(eligible(v) && !is_dead(&v.id), "an eligible live node");
                    prop_assert_eq!(next.epoch, e.epoch + 1);
                    prop_assert_eq!(next.members(), vec![v.id.clone()]);
                    prop_assert_eq!(&next.nodes[0].region, &v.region);
                    // The dead origin's region first, when it has an eligible node.
                    let region = e.nodes.iter().find(|m| m.node == e.node).map(|m| m.region.clone())
                        .or_else(|| views.iter().find(|w| w.id == e.node).map(|w| w.region.clone()));
                    if let Some(r) = region {
                        if views.iter().any(|w| eligible(w) && !is_dead(&w.id) && w.region == r) {
                            prop_assert_eq!(&v.region, &r);
                        }
                    }
                }
                FailoverPlan::Stranded => {
                    prop_assert!(members.iter().all(is_dead));
                    prop_assert!(!views.iter().any(|v| eligible(v) && !is_dead(&v.id)));
                }
            }
        }

        #[test]
        fn leaving_never_leaves_an_origin_outside_the_room(
            n in 1usize..6, origin in 0usize..6, leaver in 0usize..7,
        ) {
            let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let origin = &names[origin % n];
            let e = entry(origin, &refs);
            let leaver = id(&format!("n{leaver}"));
            match plan_leave(&e, &leaver) {
                LeavePlan::Unchanged => prop_assert!(!e.serves(&leaver)),
                LeavePlan::Close => prop_assert!(e.members() == vec![leaver.clone()]),
                LeavePlan::Update(next) => {
                    prop_assert!(!next.serves(&leaver));
                    prop_assert!(next.nodes.iter().any(|m| m.node == next.node), "origin listed");
                    prop_assert_eq!(next.epoch, e.epoch + u64::from(leaver == e.node));
                    prop_assert_eq!(next.nodes.len(), e.nodes.len() - 1);
                }
            }
        }
    }
}
