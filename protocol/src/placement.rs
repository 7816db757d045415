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

/// The tie-break between nodes of equal load: a stable hash of the node id (hrw-hash's fixed
/// hasher), the same in every process, so all coordinators order equal nodes alike and a
/// burst walks through them as each assignment raises the chosen one's estimate.
pub fn tie(id: &NodeId) -> u64 {
    rendezvous_weight("", id.as_str())
}

/// Where a node ranks for placement, least loaded first: its load in millionths (scores
/// within a millionth are equal), then [`tie`].
pub type Rank = (i64, u64);

pub fn rank(n: &NodeView) -> Rank {
    let score = (load_score(&n.load, n.pending_rooms) * 1e6).round() as i64;
    (score, tie(&n.id))
}

/// The least-loaded of `candidates` by [`rank`], in one pass.
pub fn best<'a>(candidates: impl IntoIterator<Item = &'a NodeView>) -> Option<&'a NodeView> {
    candidates.into_iter().min_by_key(|n| rank(n))
}

/// What placement and cascade planning choose from: every known node's view, and the open
/// ones (eligible, and alive by the pool's clock) in [`rank`] order.
///
/// A slice of views is a pool that scans (the reference); the coordinator's registry keeps
/// a [`PlacementIndex`] so that a choice costs a few ordered-set steps, not a pass over the
/// cluster.
pub trait Pool {
    /// The node's view, if the pool knows it.
    fn view(&self, id: &NodeId) -> Option<&NodeView>;
    /// Whether the node may take more now.
    fn open(&self, n: &NodeView) -> bool;
    /// The least-loaded open node of `region` (of any region when `None`) that `accept`
    /// takes.
    fn least_loaded(
        &self,
        region: Option<&str>,
        accept: &mut dyn FnMut(&NodeView) -> bool,
    ) -> Option<&NodeView>;
}

/// Views held any way (a slice, an array, a `Vec`) are a pool that scans: the reference.
impl<T: AsRef<[NodeView]> + ?Sized> Pool for T {
    fn view(&self, id: &NodeId) -> Option<&NodeView> {
        self.as_ref().iter().find(|n| &n.id == id)
    }

    fn open(&self, n: &NodeView) -> bool {
        eligible(n)
    }

    fn least_loaded(
        &self,
        region: Option<&str>,
        accept: &mut dyn FnMut(&NodeView) -> bool,
    ) -> Option<&NodeView> {
        best(
            self.as_ref()
                .iter()
                .filter(|n| eligible(n) && region.is_none_or(|r| n.region == r))
                .filter(|n| accept(n)),
        )
    }
}

/// Picks the node for a new room, or `None` when no node can take it: the least-loaded
/// eligible node of the client's region, else of any region.
///
/// Only *measured* load makes a node full: the estimate for rooms assigned since its last
/// heartbeat ranks nodes but never refuses one, because each coordinator counts only its own
/// assignments and an estimate must not turn a burst away from idle nodes.
pub fn place(region: Option<&str>, pool: &(impl Pool + ?Sized)) -> Option<NodeId> {
    place_among(region, pool, |_| true).map(|n| n.id.clone())
}

/// [`place`] among the nodes `allowed` admits (say, not one the caller knows is dead).
pub fn place_among<'a>(
    region: Option<&str>,
    pool: &'a (impl Pool + ?Sized),
    allowed: impl Fn(&NodeView) -> bool,
) -> Option<&'a NodeView> {
    region
        .and_then(|r| pool.least_loaded(Some(r), &mut |n| allowed(n)))
        .or_else(|| pool.least_loaded(None, &mut |n| allowed(n)))
}

/// A [`Pool`] over views sorted by id and their [`PlacementIndex`]: a choice walks the index
/// from the least-loaded node and stops at the first that `alive` (health by the caller's
/// clock) and the caller accept. `views` must hold every indexed node.
pub struct IndexedPool<'a, A> {
    pub views: &'a [NodeView],
    pub index: &'a PlacementIndex,
    pub alive: A,
}

impl<A: Fn(&NodeView) -> bool> Pool for IndexedPool<'_, A> {
    fn view(&self, id: &NodeId) -> Option<&NodeView> {
        self.views
            .binary_search_by(|v| v.id.cmp(id))
            .ok()
            .map(|i| &self.views[i])
    }

    fn open(&self, n: &NodeView) -> bool {
        eligible(n) && (self.alive)(n)
    }

    fn least_loaded(
        &self,
        region: Option<&str>,
        accept: &mut dyn FnMut(&NodeView) -> bool,
    ) -> Option<&NodeView> {
        self.index
            .ordered(region)
            .filter_map(|id| self.view(id))
            .find(|v| self.open(v) && accept(v))
    }
}

/// The open nodes in [`rank`] order, overall and per region, kept as views change: what
/// makes a placement decision cost `O(log n)` (plus the nodes it has to skip) instead of a
/// pass over every node.
///
/// A node is indexed while it is healthy, not draining and below its measured capacity, as
/// of its last [`PlacementIndex::update`]; time-based health (a node gone silent since) is
/// for the caller's pool to check as it walks the order ([`PlacementIndex::ordered`]).
#[derive(Debug, Clone, Default)]
pub struct PlacementIndex {
    /// Each indexed node's region and key.
    keys: std::collections::HashMap<NodeId, (String, Rank)>,
    all: std::collections::BTreeSet<(Rank, NodeId)>,
    regions: std::collections::HashMap<String, std::collections::BTreeSet<(Rank, NodeId)>>,
}

impl PlacementIndex {
    /// The node's view changed (load, pending rooms, draining, health): re-rank it, or drop
    /// it when it is not open any more.
    pub fn update(&mut self, n: &NodeView) {
        let key = rank(n);
        let open = eligible(n);
        let unchanged = self
            .keys
            .get(&n.id)
            .is_some_and(|(region, k)| *k == key && *region == n.region);
        if open && unchanged {
            return;
        }
        self.remove(&n.id);
        if open {
            self.all.insert((key, n.id.clone()));
            self.regions
                .entry(n.region.clone())
                .or_default()
                .insert((key, n.id.clone()));
            self.keys.insert(n.id.clone(), (n.region.clone(), key));
        }
    }

    /// The node is gone (forgotten, or found dead).
    pub fn remove(&mut self, id: &NodeId) {
        let Some((region, key)) = self.keys.remove(id) else {
            return;
        };
        let entry = (key, id.clone());
        self.all.remove(&entry);
        if let Some(set) = self.regions.get_mut(&region) {
            set.remove(&entry);
            if set.is_empty() {
                self.regions.remove(&region);
            }
        }
    }

    /// The indexed nodes of `region` (every region when `None`), least loaded first.
    pub fn ordered<'a>(
        &'a self,
        region: Option<&str>,
    ) -> Box<dyn Iterator<Item = &'a NodeId> + 'a> {
        match region {
            None => Box::new(self.all.iter().map(|(_, id)| id)),
            Some(r) => match self.regions.get(r) {
                Some(set) => Box::new(set.iter().map(|(_, id)| id)),
                None => Box::new(std::iter::empty()),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
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
        for _ in 0..n {
            let chosen = place(None, &*nodes).expect("a node");
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
        assert_eq!(place(Some("eu"), &nodes).unwrap().as_str(), "b");
        assert_eq!(place(None, &nodes).unwrap().as_str(), "c");
        assert_eq!(place(Some("ap"), &nodes).unwrap().as_str(), "c");
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
        assert_eq!(place(None, &nodes), None);
        nodes[1].draining = false;
        assert_eq!(place(None, &nodes).unwrap().as_str(), "b");
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
        ) {
            let nodes: Vec<NodeView> = cpus.iter().enumerate().map(|(i, cpu)| {
                let mut n = node(&format!("n{i}"), &format!("r{}", regions[i]), *cpu, 0);
                n.draining = draining[i];
                n.healthy = healthy[i];
                n
            }).collect();
            let region = ask.map(|a| format!("r{a}"));
            let first = place(region.as_deref(), &nodes);
            prop_assert_eq!(&first, &place(region.as_deref(), &nodes));
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

    fn views_from(spec: &[(u8, f64, u32, bool, bool)]) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = spec
            .iter()
            .enumerate()
            .map(|(i, (region, cpu, rooms, healthy, draining))| {
                let mut n = node(&format!("n{i:03}"), &format!("r{region}"), *cpu, *rooms);
                n.healthy = *healthy;
                n.draining = *draining;
                n
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn indexed(views: &[NodeView]) -> PlacementIndex {
        let mut index = PlacementIndex::default();
        for v in views {
            index.update(v);
        }
        index
    }

    proptest! {
        /// The index answers exactly what a scan of every node answers, for placement and
        /// for a join's plan, also after loads, health and pending rooms changed under it.
        #[test]
        fn the_index_agrees_with_a_scan(
            spec in proptest::collection::vec((0u8..3, 0.0f64..1.2, 0u32..1100, any::<bool>(), any::<bool>()), 1..40),
            changes in proptest::collection::vec((0usize..40, 0.0f64..1.2, 0u32..5, any::<bool>()), 0..30),
            members in proptest::collection::vec(0usize..40, 0..4),
            full in proptest::collection::vec(0usize..40, 0..2),
            ask in proptest::option::of(0u8..4),
        ) {
            let mut views = views_from(&spec);
            let mut index = indexed(&views);
            for (i, cpu, pending, healthy) in changes {
                let i = i % views.len();
                views[i].load.cpu = cpu;
                views[i].pending_rooms = pending;
                views[i].healthy = healthy;
                index.update(&views[i]);
            }
            let pool = IndexedPool { views: &views, index: &index, alive: |_: &NodeView| true };
            let region = ask.map(|a| format!("r{a}"));
            prop_assert_eq!(place(region.as_deref(), &views), place(region.as_deref(), &pool));
            let members: Vec<crate::cluster::RoomNode> = members
                .iter()
                .map(|i| {
                    let v = &views[i % views.len()];
                    crate::cluster::RoomNode { node: v.id.clone(), region: v.region.clone() }
                })
                .collect();
            let full: Vec<NodeId> = full.iter().map(|i| views[i % views.len()].id.clone()).collect();
            prop_assert_eq!(
                crate::cascade::plan_join(&members, region.as_deref(), &full, &views),
                crate::cascade::plan_join(&members, region.as_deref(), &full, &pool)
            );
        }

        /// Health by the caller's clock: a node the pool finds dead is passed over, as a scan
        /// of views marked unhealthy would.
        #[test]
        fn the_index_passes_over_nodes_dead_by_the_clock(
            spec in proptest::collection::vec((0u8..2, 0.0f64..0.9, 0u32..500, Just(true), Just(false)), 1..30),
            dead in proptest::collection::vec(any::<bool>(), 30),
            ask in proptest::option::of(0u8..2),
        ) {
            let views = views_from(&spec);
            let index = indexed(&views);
            let is_dead = |v: &NodeView| dead[v.id.as_str()[1..].parse::<usize>().unwrap_or(0) % 30];
            let pool = IndexedPool { views: &views, index: &index, alive: |v: &NodeView| !is_dead(v) };
            let scanned: Vec<NodeView> = views
                .iter()
                .cloned()
                .map(|mut v| {
                    v.healthy = !is_dead(&v);
                    v
                })
                .collect();
            let region = ask.map(|a| format!("r{a}"));
            prop_assert_eq!(place(region.as_deref(), &scanned), place(region.as_deref(), &pool));
        }
    }

    /// 300 rooms placed one after another over 10 equal nodes, each assignment raising the
    /// chosen node's estimate: the index spreads them evenly (max/mean ≤ 1.25, here exactly
    /// 30 each).
    #[test]
    fn a_burst_through_the_index_spreads_evenly() {
        let mut views = views_from(&[(0, 0.01, 0, true, false); 10]);
        let mut index = indexed(&views);
        for _ in 0..300 {
            let pool = IndexedPool {
                views: &views,
                index: &index,
                alive: |_: &NodeView| true,
            };
            let chosen = place(None, &pool).expect("a node");
            let i = views.iter().position(|v| v.id == chosen).unwrap();
            views[i].pending_rooms += 1;
            index.update(&views[i]);
        }
        let counts: Vec<u32> = views.iter().map(|v| v.pending_rooms).collect();
        assert!(counts.iter().all(|c| *c == 30), "{counts:?}");
    }
}
