//! Cascade planning as pure functions (DESIGN.md "Placement and cascading"): which node of a
//! room serves a joining client, when a node of the client's region joins the room, and what
//! the room's entry becomes when a node leaves it.
//!
//! A join is served by the room's node in the client's region if one has headroom; otherwise
//! a node of that region joins the room. A node that holds its share of a big room (it says
//! so by refusing the join, see [`crate::cluster::AllocateRequest::full`]) gets a sibling in
//! the same region. A region without any eligible node is served by the room's least-loaded
//! node elsewhere, or failing that by a new node of any region. Each decision is one pass
//! over the nodes.

use crate::cluster::{RoomAssignment, RoomNode};
use crate::placement::{eligible, least_loaded, NodeView};
use crate::{NodeId, RoomId};

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

/// Plans a join of `room`, whose entry lists `members`, for a client of `region`.
///
/// `full` names room nodes that refused this join for holding their share of the room. A
/// room node missing from `views` (dead, or not heard from) serves nobody.
pub fn plan_join(
    room: &RoomId,
    members: &[RoomNode],
    region: Option<&str>,
    full: &[NodeId],
    views: &[NodeView],
) -> JoinPlan {
    let key = room.as_str();
    let in_room = |n: &NodeView| members.iter().any(|m| m.node == n.id);
    let has_headroom = |n: &NodeView| eligible(n) && !full.contains(&n.id);
    let in_region = |n: &NodeView| region.is_none_or(|r| n.region == r);
    let region_has_nodes = views.iter().any(|n| eligible(n) && in_region(n));

    // 1. A room node of the client's region with headroom.
    if let Some(n) = least_loaded(
        key,
        views
            .iter()
            .filter(|n| in_room(n) && has_headroom(n) && in_region(n)),
    ) {
        return JoinPlan::Serve(n.id.clone());
    }
    // 2. A node of the client's region joins the room (a sibling when the room's nodes there
    //    are full).
    if region_has_nodes {
        if let Some(n) = least_loaded(
            key,
            views
                .iter()
                .filter(|n| !in_room(n) && eligible(n) && in_region(n)),
        ) {
            return extend(n);
        }
    }
    // 3. The region has no node that can take the client: any room node with headroom,
    //    before widening the room to yet another region.
    if let Some(n) = least_loaded(key, views.iter().filter(|n| in_room(n) && has_headroom(n))) {
        return JoinPlan::Serve(n.id.clone());
    }
    // 4. Any node joins the room.
    match least_loaded(key, views.iter().filter(|n| !in_room(n) && eligible(n))) {
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
    if !entry.serves(node) {
        return LeavePlan::Unchanged;
    }
    let mut next = entry.clone();
    next.nodes = entry
        .nodes
        .iter()
        .filter(|n| &n.node != node)
        .cloned()
        .collect();
    if &entry.node != node {
        return LeavePlan::Update(next);
    }
    match next.nodes.first() {
        None => LeavePlan::Close,
        Some(first) => {
            next.node = first.node.clone();
            next.epoch += 1;
            LeavePlan::Update(next)
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
            plan_join(&room(), &members, Some("eu"), &[], &views),
            JoinPlan::Serve(id("eu-1"))
        );
        // A client in `us` gets a `us` node added to the room.
        assert_eq!(
            plan_join(&room(), &members, Some("us"), &[], &views),
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
            plan_join(&room(), &members, Some("eu"), &[id("eu-1")], &views),
            JoinPlan::Extend(member("eu-2", "eu"))
        );
        // Both eu nodes in the room and full: the room's other region serves.
        let members = [
            member("eu-1", "eu"),
            member("eu-2", "eu"),
            member("us-1", "us"),
        ];
        assert_eq!(
            plan_join(
                &room(),
                &members,
                Some("eu"),
                &[id("eu-1"), id("eu-2")],
                &views
            ),
            JoinPlan::Serve(id("us-1"))
        );
    }

    #[test]
    fn a_region_without_nodes_is_served_by_the_room_first() {
        let views = [view("eu-1", "eu", 0.9), view("us-1", "us", 0.0)];
        let members = [member("eu-1", "eu")];
        assert_eq!(
            plan_join(&room(), &members, Some("ap"), &[], &views),
            JoinPlan::Serve(id("eu-1"))
        );
        // A new room (no members) goes to the least-loaded node anywhere.
        assert_eq!(
            plan_join(&room(), &[], Some("ap"), &[], &views),
            JoinPlan::Extend(member("us-1", "us"))
        );
    }

    #[test]
    fn dead_draining_and_overloaded_nodes_serve_nobody() {
        let mut views = vec![view("eu-1", "eu", 0.0), view("eu-2", "eu", 1.0)];
        views[0].draining = true;
        let members = [member("eu-1", "eu"), member("gone", "eu")];
        assert_eq!(
            plan_join(&room(), &members, Some("eu"), &[], &views),
            JoinPlan::NoNode
        );
        views.push(view("us-1", "us", 0.2));
        assert_eq!(
            plan_join(&room(), &members, Some("eu"), &[], &views),
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
            let plan = plan_join(&room(), &members, region.as_deref(), &full, &views);
            // Deterministic for equal inputs.
            prop_assert_eq!(&plan, &plan_join(&room(), &members, region.as_deref(), &full, &views));
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
