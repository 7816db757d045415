//! Room placement and coordinator sharding as pure functions (DESIGN.md "Placement").
//!
//! A room goes to the least-loaded healthy, non-draining node, the client's region first.
//! Load is the highest of CPU, rooms, peers and egress against capacity, plus an estimate
//! for the rooms the deciding coordinator assigned since the node's last heartbeat, so that a
//! burst spreads instead of landing on whichever node looked idle a second ago. A stable
//! rendezvous hash of the room id breaks ties, and also picks each room's deciding
//! coordinator among the live ones.

use crate::cluster::NodeLoad;
use crate::ids::{NodeId, RoomId};
use hrw_hash::{HrwNode, HrwNodes};

/// What the placement sees of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub region: String,
    pub load: NodeLoad,
    pub healthy: bool,
    pub draining: bool,
    /// Rooms this coordinator gave the node since its last heartbeat.
    pub pending_rooms: u32,
}

/// The least a new room is estimated to cost, so that a burst spreads even over nodes whose
/// declared capacity is huge (a thousand rooms move a node by one whole unit).
pub const MIN_ROOM_COST: f64 = 0.001;

/// Estimated cost of one new room, as a fraction of a node: two participants' worth, and at
/// least one room slot.
pub fn room_cost(load: &NodeLoad) -> f64 {
    let by_rooms = if load.max_rooms > 0 {
        1.0 / f64::from(load.max_rooms)
    } else {
        0.0
    };
    let by_peers = if load.max_peers > 0 {
        2.0 / f64::from(load.max_peers)
    } else {
        0.0
    };
    by_rooms.max(by_peers).max(MIN_ROOM_COST)
}

fn ratio(used: f64, cap: f64) -> f64 {
    if cap > 0.0 {
        used / cap
    } else {
        0.0
    }
}

/// The node's load in [0, ∞): 1.0 is full in some dimension.
pub fn load_score(load: &NodeLoad, pending_rooms: u32) -> f64 {
    let measured = load
        .cpu
        .max(ratio(f64::from(load.rooms), f64::from(load.max_rooms)))
        .max(ratio(f64::from(load.peers), f64::from(load.max_peers)))
        .max(ratio(load.egress_bps as f64, load.max_egress_bps as f64));
    measured + f64::from(pending_rooms) * room_cost(load)
}

#[derive(Hash, PartialEq, Eq)]
struct Member<'a>(&'a str);
impl HrwNode for Member<'_> {}

/// `members` ordered by rendezvous weight for `key`, highest first. Stable across processes
/// and builds (hrw-hash uses its own fixed hasher).
pub fn rendezvous<'a>(key: &str, members: &[&'a str]) -> Vec<&'a str> {
    let hrw = HrwNodes::new(members.iter().map(|m| Member(m)));
    hrw.sorted(&key).map(|m| m.0).collect()
}

/// The coordinator that decides for `room` among the live ones.
pub fn deciding_coordinator<'a>(room: &RoomId, live: &[&'a str]) -> Option<&'a str> {
    rendezvous(room.as_str(), live).first().copied()
}

/// A stable weight of `member` for `key` (rendezvous hashing: the highest weight wins a
/// tie). The same in every process and build: hrw-hash's fixed hasher.
pub fn rendezvous_weight(key: &str, member: &str) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<hrw_hash::DefaultHasher>::default().hash_one((key, member))
}

/// Whether a node may take more of anything: healthy, not draining, and below capacity by
/// its *measured* load.
pub fn eligible(n: &NodeView) -> bool {
    n.healthy && !n.draining && load_score(&n.load, 0) < 1.0
}

/// The least-loaded of `candidates` for `key`, in one pass: scores within a millionth are a
/// tie and the rendezvous weight decides, so equal nodes share a burst.
pub fn least_loaded<'a>(
    key: &str,
    candidates: impl IntoIterator<Item = &'a NodeView>,
) -> Option<&'a NodeView> {
    candidates
        .into_iter()
        .map(|n| {
            let score = (load_score(&n.load, n.pending_rooms) * 1e6).round() as i64;
            (
                score,
                std::cmp::Reverse(rendezvous_weight(key, n.id.as_str())),
                n,
            )
        })
        .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
        .map(|(_, _, n)| n)
}

/// Picks the node for a new room, or `None` when no node can take it: the least-loaded
/// eligible node of the client's region, else of any region. One pass over the nodes, no
/// allocation.
///
/// Only *measured* load makes a node full: the estimate for rooms assigned since its last
/// heartbeat ranks nodes but never refuses one, because each coordinator counts only its own
/// assignments and an estimate must not turn a burst away from idle nodes.
pub fn place(room: &RoomId, region: Option<&str>, nodes: &[NodeView]) -> Option<NodeId> {
    place_among(room, region, nodes, |_| true).map(|n| n.id.clone())
}

/// [`place`] among the nodes `allowed` admits (say, not one the caller knows is dead).
pub fn place_among<'a>(
    room: &RoomId,
    region: Option<&str>,
    nodes: &'a [NodeView],
    allowed: impl Fn(&NodeView) -> bool,
) -> Option<&'a NodeView> {
    let key = room.as_str();
    let open = |n: &&NodeView| eligible(n) && allowed(n);
    let local =
        region.and_then(|r| least_loaded(key, nodes.iter().filter(open).filter(|n| n.region == r)));
    local.or_else(|| least_loaded(key, nodes.iter().filter(open)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(id: &str, region: &str, cpu: f64, rooms: u32) -> NodeView {
        NodeView {
            id: NodeId::new(id).unwrap(),
            region: region.into(),
            load: NodeLoad {
                cpu,
                rooms,
                peers: rooms * 2,
                tracks: 0,
                egress_bps: 0,
                max_rooms: 1000,
                max_peers: 2000,
                max_egress_bps: 1_000_000_000,
            },
            healthy: true,
            draining: false,
            pending_rooms: 0,
        }
    }

    fn room(i: usize) -> RoomId {
        RoomId::new(format!("room-{i}")).unwrap()
    }

    /// Places `n` rooms one after another the way a coordinator does between heartbeats.
    fn burst(nodes: &mut [NodeView], n: usize) -> Vec<u32> {
        for i in 0..n {
            let chosen = place(&room(i), None, nodes).expect("a node");
            nodes
                .iter_mut()
                .find(|v| v.id == chosen)
                .unwrap()
                .pending_rooms += 1;
        }
        nodes.iter().map(|v| v.pending_rooms).collect()
    }

    #[test]
    fn least_loaded_wins_and_region_comes_first() {
        let nodes = vec![
            node("a", "eu", 0.5, 0),
            node("b", "eu", 0.2, 0),
            node("c", "us", 0.0, 0),
        ];
        assert_eq!(place(&room(1), Some("eu"), &nodes).unwrap().as_str(), "b");
        assert_eq!(place(&room(1), None, &nodes).unwrap().as_str(), "c");
        assert_eq!(place(&room(1), Some("ap"), &nodes).unwrap().as_str(), "c");
    }

    #[test]
    fn unhealthy_draining_and_full_nodes_are_never_chosen() {
        let mut nodes = vec![
            node("a", "eu", 0.0, 0),
            node("b", "eu", 0.0, 0),
            node("c", "eu", 1.0, 0),
        ];
        nodes[0].healthy = false;
        nodes[1].draining = true;
        assert_eq!(place(&room(1), None, &nodes), None);
        nodes[1].draining = false;
        assert_eq!(place(&room(1), None, &nodes).unwrap().as_str(), "b");
    }

    #[test]
    fn a_burst_spreads_over_equal_nodes() {
        let mut nodes = vec![
            node("a", "eu", 0.01, 0),
            node("b", "eu", 0.01, 0),
            node("c", "eu", 0.01, 0),
        ];
        let counts = burst(&mut nodes, 300);
        assert_eq!(counts.iter().sum::<u32>(), 300);
        assert!(counts.iter().all(|c| (99..=101).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_burst_does_not_all_land_on_the_idle_node() {
        let mut nodes = vec![node("idle", "eu", 0.0, 0), node("busy", "eu", 0.3, 0)];
        let counts = burst(&mut nodes, 1000);
        // The idle node takes rooms until its estimate reaches the busy one's, then they share.
        assert!(counts[1] > 200, "{counts:?}");
        assert!(counts[0] > counts[1], "{counts:?}");
    }

    #[test]
    fn estimates_rank_but_never_refuse() {
        // A huge burst on small idle nodes: all placed, still spread.
        let mut nodes = vec![node("a", "eu", 0.0, 0), node("b", "eu", 0.0, 0)];
        for n in &mut nodes {
            n.load.max_peers = 100;
        }
        let counts = burst(&mut nodes, 2000);
        assert_eq!(counts.iter().sum::<u32>(), 2000);
        assert!(
            counts.iter().all(|c| (999..=1001).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn huge_capacities_still_spread_a_burst() {
        let mut nodes = vec![node("idle", "eu", 0.0, 0), node("busy", "eu", 0.05, 0)];
        for n in &mut nodes {
            n.load.max_peers = 1_000_000;
            n.load.max_rooms = 1_000_000;
        }
        let counts = burst(&mut nodes, 1000);
        // The idle node takes about 50 rooms of head start, then they share.
        assert!((500..=560).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn rendezvous_moves_only_the_departed_members_share() {
        let all = ["c1", "c2", "c3"];
        let rooms: Vec<RoomId> = (0..600).map(room).collect();
        let before: Vec<&str> = rooms
            .iter()
            .map(|r| deciding_coordinator(r, &all).unwrap())
            .collect();
        let after: Vec<&str> = rooms
            .iter()
            .map(|r| deciding_coordinator(r, &["c1", "c3"]).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != "c2" {
                assert_eq!(b, a, "a room of a live coordinator moved");
            }
        }
        let share = before.iter().filter(|c| **c == "c2").count();
        assert!((150..250).contains(&share), "c2 owned {share} of 600");
    }

    proptest! {
        #[test]
        fn placement_is_deterministic_and_respects_eligibility(
            cpus in proptest::collection::vec(0.0f64..1.2, 1..6),
            draining in proptest::collection::vec(any::<bool>(), 6),
            healthy in proptest::collection::vec(any::<bool>(), 6),
            regions in proptest::collection::vec(0u8..3, 6),
            ask in proptest::option::of(0u8..3),
            r in 0usize..1000,
        ) {
            let nodes: Vec<NodeView> = cpus.iter().enumerate().map(|(i, cpu)| {
                let mut n = node(&format!("n{i}"), &format!("r{}", regions[i]), *cpu, 0);
                n.draining = draining[i];
                n.healthy = healthy[i];
                n
            }).collect();
            let region = ask.map(|a| format!("r{a}"));
            let first = place(&room(r), region.as_deref(), &nodes);
            prop_assert_eq!(&first, &place(&room(r), region.as_deref(), &nodes));
            let eligible = |n: &NodeView| n.healthy && !n.draining && load_score(&n.load, 0) < 1.0;
            match &first {
                None => prop_assert!(!nodes.iter().any(eligible)),
                Some(id) => {
                    let chosen = nodes.iter().find(|n| &n.id == id).unwrap();
                    prop_assert!(eligible(chosen));
                    if let Some(reg) = &region {
                        let local_exists = nodes.iter().any(|n| eligible(n) && &n.region == reg);
                        prop_assert_eq!(local_exists, &chosen.region == reg);
                    }
                    let best = nodes.iter().filter(|n| eligible(n) && (region.is_none() || !nodes.iter().any(|m| eligible(m) && Some(&m.region) == region.as_ref()) || Some(&n.region) == region.as_ref()))
                        .map(|n| load_score(&n.load, 0)).fold(f64::INFINITY, f64::min);
                    prop_assert!(load_score(&chosen.load, 0) <= best + 1e-6);
                }
            }
        }
    }
}
