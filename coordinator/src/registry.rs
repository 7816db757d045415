//! The coordinator's view of the cluster as plain structs: which nodes and coordinators are
//! alive, what each node last reported, and the rooms this coordinator gave each node that
//! its reports cannot show yet. Time is passed in, so tests drive it without sleeping.
//!
//! A node dies in one of two ways here: a probe nobody answered proves it at once
//! ([`NodeRegistry::confirm_dead`]), and heartbeat silence for the timeout while this
//! coordinator listened is the backstop. Each death is handed out once
//! ([`NodeRegistry::confirm_dead`] or [`NodeRegistry::take_silent_deaths`]), so the caller
//! announces it and moves the node's rooms once; a later heartbeat makes the node alive again.

use protocol::cluster::NodeHeartbeat;
use protocol::placement::{self, IndexedPool, NodeView, PlacementIndex, Pool};
use protocol::{NodeId, RoomId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What the coordinator can say about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Heard from within the timeout.
    Alive,
    /// Silent, but this coordinator has not been listening for a whole timeout (it just
    /// started, or its NATS connection was down), so silence proves nothing. Such a node
    /// gets no new rooms, and keeps the rooms it has.
    Unknown,
    /// Silent for the timeout while this coordinator was listening, or a probe found nobody
    /// listening on the node's subjects.
    Dead,
}

/// A heartbeat's effect on the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The first heartbeat of a node this registry does not know.
    New,
    /// A known node, alive.
    Alive,
    /// A node this registry had handed out as dead is alive again (it was stopped and
    /// continued, cut off and reconnected, or restarted with the same id).
    Revived,
    /// Ignored: it arrived just after a probe proved the node dead, so it was sent before
    /// the node died.
    Stale,
}

/// What the registry keeps of a node beside its [`NodeView`].
#[derive(Debug)]
struct NodeEntry {
    ws_url: String,
    draining_reported: bool,
    seen: Instant,
    /// When this coordinator assigned rooms to the node that its heartbeats may not count yet.
    recent: VecDeque<Instant>,
    /// When a probe proved the node dead; it stays dead until a heartbeat comes later than
    /// [`STALE_HEARTBEAT`] after that.
    probed_dead: Option<Instant>,
    /// This death was handed out to be announced (by a probe or by
    /// [`NodeRegistry::take_silent_deaths`]); cleared by a heartbeat.
    death_reported: bool,
}

/// A heartbeat this soon after a probe proved its node dead is ignored: it was on its way
/// before the node died (the coordinator's heartbeat subscription and a probe's reply race).
/// Nodes heartbeat every second, so anything later is from a live node.
pub const STALE_HEARTBEAT: Duration = Duration::from_secs(1);

/// One node as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub region: String,
    pub ws_url: String,
    pub load: protocol::cluster::NodeLoad,
    pub load_score: f64,
    pub liveness: Liveness,
    pub healthy: bool,
    /// Draining by the node's own report or by an operator's request.
    pub draining: bool,
    pub draining_reported: bool,
    pub draining_requested: bool,
    pub pending_rooms: u32,
    pub last_heartbeat_age_ms: u64,
}

/// Nodes known from `cluster.node.heartbeat`.
///
/// Pending rooms: a node reports a room only once a client has joined it, a moment after the
/// allocation, and the report then travels up to a heartbeat period. So an assignment stays
/// counted until a heartbeat arrives `settle` after it; until then placement adds it to the
/// node's load, and a burst of new rooms spreads instead of landing on the node that looked
/// idle. Counting a room twice for a second or two errs on the side of spreading.
///
/// The placement views are kept ready (updated by heartbeats, drain requests and
/// assignments), so a decision reads them as a slice: its cost is one pass over the nodes to
/// refresh their health, and nothing is cloned.
#[derive(Debug)]
pub struct NodeRegistry {
    timeout: Duration,
    settle: Duration,
    /// Since when this coordinator has been hearing heartbeats without a gap; `None` while
    /// disconnected.
    listening_since: Option<Instant>,
    /// Sorted by id; `entries[i]` belongs to `views[i]`.
    views: Vec<NodeView>,
    entries: Vec<NodeEntry>,
    /// Operators' drain requests, kept apart so a drain can precede a node's first heartbeat.
    drain_requests: BTreeSet<NodeId>,
    /// The open views in placement order, updated with every change of a view.
    index: PlacementIndex,
    /// Each view's position by id, for the heartbeats' lookup: a binary search over 10,000
    /// views misses the cache at nearly every step (perf: most of a heartbeat's cost at that
    /// size). Stale once views were inserted or removed; rebuilt by a heartbeat at most once
    /// per [`REINDEX_EVERY`], so registering many nodes at once stays linear per node.
    slots: HashMap<NodeId, usize>,
    slots_valid: bool,
    slots_built: Option<Instant>,
}

/// Least time between two rebuilds of [`NodeRegistry`]'s positions by id.
const REINDEX_EVERY: Duration = Duration::from_secs(1);

impl NodeRegistry {
    pub fn new(timeout: Duration, settle: Duration) -> Self {
        Self {
            timeout,
            settle,
            listening_since: None,
            views: Vec::new(),
            entries: Vec::new(),
            drain_requests: BTreeSet::new(),
            index: PlacementIndex::default(),
            slots: HashMap::new(),
            slots_valid: true,
            slots_built: None,
        }
    }

    /// The NATS connection is up (again): silence counts from `now`.
    pub fn listening(&mut self, now: Instant) {
        self.listening_since = Some(now);
    }

    /// The NATS connection is down: silence proves nothing until it is back.
    pub fn deaf(&mut self) {
        self.listening_since = None;
    }

    pub fn is_listening(&self) -> bool {
        self.listening_since.is_some()
    }

    fn find(&self, id: &NodeId) -> Result<usize, usize> {
        self.views.binary_search_by(|v| v.id.cmp(id))
    }

    /// [`NodeRegistry::find`] through the positions by id when they are current (rebuilt
    /// here when stale and not rebuilt within [`REINDEX_EVERY`]).
    fn position(&mut self, id: &NodeId, now: Instant) -> Result<usize, usize> {
        if !self.slots_valid
            && self
                .slots_built
                .is_none_or(|t| now.saturating_duration_since(t) >= REINDEX_EVERY)
        {
            self.slots.clear();
            self.slots.extend(
                self.views
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.id.clone(), i)),
            );
            self.slots_valid = true;
            self.slots_built = Some(now);
        }
        match self.slots_valid.then(|| self.slots.get(id)).flatten() {
            Some(&i) => Ok(i),
            None => self.find(id),
        }
    }

    pub fn heartbeat(&mut self, hb: NodeHeartbeat, now: Instant) -> Heard {
        let (i, mut heard) = match self.position(&hb.node, now) {
            Ok(i) => (i, Heard::Alive),
            Err(i) => {
                self.slots_valid = false;
                self.views.insert(
                    i,
                    NodeView {
                        id: hb.node.clone(),
                        region: String::new(),
                        load: Default::default(),
                        healthy: false,
                        draining: false,
                        pending_rooms: 0,
                    },
                );
                self.entries.insert(
                    i,
                    NodeEntry {
                        ws_url: String::new(),
                        draining_reported: false,
                        seen: now,
                        recent: VecDeque::new(),
                        probed_dead: None,
                        death_reported: false,
                    },
                );
                (i, Heard::New)
            }
        };
        let entry = &mut self.entries[i];
        if let Some(died) = entry.probed_dead {
            if now.saturating_duration_since(died) < STALE_HEARTBEAT {
                return Heard::Stale;
            }
            entry.probed_dead = None;
        }
        if std::mem::take(&mut entry.death_reported) {
            heard = Heard::Revived;
        }
        entry.seen = now;
        entry.draining_reported = hb.draining;
        entry.ws_url = hb.ws_url;
        if let Some(cutoff) = now.checked_sub(self.settle) {
            while entry.recent.front().is_some_and(|t| *t <= cutoff) {
                entry.recent.pop_front();
            }
        }
        let pending_rooms = pending(entry);
        let view = &mut self.views[i];
        view.region = hb.region;
        view.load = hb.load;
        view.draining = hb.draining || self.drain_requests.contains(&view.id);
        view.pending_rooms = pending_rooms;
        // Heard from: healthy until a probe proves otherwise or it falls silent (which
        // placement checks by the clock).
        view.healthy = true;
        self.index.update(view);
        heard
    }

    /// A probe of the node found nobody listening: it is dead from `now`, whatever its last
    /// heartbeat. Returns whether this is news to be announced (a known node whose death was
    /// not handed out yet); an unknown node is not recorded.
    pub fn confirm_dead(&mut self, id: &NodeId, now: Instant) -> bool {
        let Ok(i) = self.find(id) else {
            return false;
        };
        let entry = &mut self.entries[i];
        entry.probed_dead.get_or_insert(now);
        self.views[i].healthy = false;
        self.index.remove(&self.views[i].id);
        !std::mem::replace(&mut entry.death_reported, true)
    }

    /// Nodes that turned [`Liveness::Dead`] by silence and were not handed out yet; each is
    /// handed out once per death. Call it periodically.
    pub fn take_silent_deaths(&mut self, now: Instant) -> Vec<NodeId> {
        let mut dead = Vec::new();
        for i in 0..self.entries.len() {
            if self.entries[i].death_reported
                || self.liveness_of(Some(&self.entries[i]), now) != Liveness::Dead
            {
                continue;
            }
            self.entries[i].death_reported = true;
            self.index.remove(&self.views[i].id);
            dead.push(self.views[i].id.clone());
        }
        dead
    }

    /// Alive nodes whose last heartbeat is older than `late` while this coordinator was
    /// listening: a heartbeat is overdue, worth a probe (a killed node answers "no
    /// responders" at once, so its death is known a fraction of a second after the heartbeat
    /// it missed).
    pub fn overdue(&self, now: Instant, late: Duration) -> Vec<NodeId> {
        let Some(since) = self.listening_since else {
            return Vec::new();
        };
        if now.saturating_duration_since(since) < late {
            return Vec::new();
        }
        self.entries
            .iter()
            .zip(&self.views)
            .filter(|(e, _)| {
                e.probed_dead.is_none() && now.saturating_duration_since(e.seen) >= late
            })
            .filter(|(e, _)| self.liveness_of(Some(e), now) == Liveness::Alive)
            .map(|(_, v)| v.id.clone())
            .collect()
    }

    fn liveness_of(&self, entry: Option<&NodeEntry>, now: Instant) -> Liveness {
        if entry.is_some_and(|e| e.probed_dead.is_some()) {
            return Liveness::Dead;
        }
        let seen = entry.map(|e| e.seen);
        if seen.is_some_and(|seen| now.saturating_duration_since(seen) < self.timeout) {
            return Liveness::Alive;
        }
        match self.listening_since {
            Some(since) if now.saturating_duration_since(since) >= self.timeout => Liveness::Dead,
            _ => Liveness::Unknown,
        }
    }

    pub fn liveness(&self, id: &NodeId, now: Instant) -> Liveness {
        let entry = self.find(id).ok().map(|i| &self.entries[i]);
        self.liveness_of(entry, now)
    }

    pub fn is_draining(&self, id: &NodeId) -> bool {
        self.find(id).map_or_else(
            |_| self.drain_requests.contains(id),
            |i| self.views[i].draining,
        )
    }

    pub fn knows(&self, id: &NodeId) -> bool {
        self.find(id).is_ok()
    }

    /// The region the node last reported, if it is known.
    pub fn region(&self, id: &NodeId) -> Option<&str> {
        self.find(id).ok().map(|i| self.views[i].region.as_str())
    }

    /// Records an operator's drain (or undrain) request; returns whether the node is known.
    pub fn request_drain(&mut self, id: &NodeId, draining: bool) -> bool {
        if draining {
            self.drain_requests.insert(id.clone());
        } else {
            self.drain_requests.remove(id);
        }
        match self.find(id) {
            Ok(i) => {
                self.views[i].draining = draining || self.entries[i].draining_reported;
                self.index.update(&self.views[i]);
                true
            }
            Err(_) => false,
        }
    }

    /// This coordinator gave `id` a room at `now`.
    pub fn assigned(&mut self, id: &NodeId, now: Instant) {
        if let Ok(i) = self.find(id) {
            self.entries[i].recent.push_back(now);
            self.views[i].pending_rooms = pending(&self.entries[i]);
            self.index.update(&self.views[i]);
        }
    }

    /// An assignment recorded with [`Self::assigned`] did not happen (another won the race).
    pub fn unassigned(&mut self, id: &NodeId) {
        if let Ok(i) = self.find(id) {
            self.entries[i].recent.pop_back();
            self.views[i].pending_rooms = pending(&self.entries[i]);
            self.index.update(&self.views[i]);
        }
    }

    /// What placement sees, sorted by id: only live nodes are healthy. One pass to refresh
    /// health as of `now`; nothing is allocated.
    pub fn views(&mut self, now: Instant) -> &[NodeView] {
        for i in 0..self.views.len() {
            let alive = self.liveness_of(Some(&self.entries[i]), now) == Liveness::Alive;
            self.views[i].healthy = alive;
        }
        &self.views
    }

    /// What placement chooses from at `now`: the views in load order ([`PlacementIndex`]),
    /// a node counting as healthy while it is [`Liveness::Alive`]. A choice costs a few
    /// ordered-set steps and lookups, whatever the number of nodes.
    pub fn pool(&self, now: Instant) -> impl Pool + '_ {
        IndexedPool {
            views: &self.views,
            index: &self.index,
            alive: move |v: &NodeView| self.liveness(&v.id, now) == Liveness::Alive,
        }
    }

    /// Picks a node for a new room and counts it as pending there.
    pub fn place(&mut self, region: Option<&str>, now: Instant) -> Option<NodeId> {
        let chosen = placement::place(region, &self.pool(now))?;
        self.assigned(&chosen, now);
        Some(chosen)
    }

    fn live_ids(&self, now: Instant) -> impl Iterator<Item = &NodeId> {
        self.views
            .iter()
            .zip(&self.entries)
            .filter(move |(_, e)| self.liveness_of(Some(e), now) == Liveness::Alive)
            .map(|(v, _)| &v.id)
    }

    pub fn live_count(&self, now: Instant) -> usize {
        self.live_ids(now).count()
    }

    pub fn live_nodes(&self, now: Instant) -> Vec<NodeId> {
        self.live_ids(now).cloned().collect()
    }

    pub fn statuses(&self, now: Instant) -> Vec<NodeStatus> {
        self.views
            .iter()
            .zip(&self.entries)
            .map(|(v, e)| {
                let liveness = self.liveness_of(Some(e), now);
                NodeStatus {
                    id: v.id.clone(),
                    region: v.region.clone(),
                    ws_url: e.ws_url.clone(),
                    load: v.load.clone(),
                    load_score: placement::load_score(&v.load, pending(e)),
                    liveness,
                    healthy: liveness == Liveness::Alive,
                    draining: v.draining,
                    draining_reported: e.draining_reported,
                    draining_requested: self.drain_requests.contains(&v.id),
                    pending_rooms: pending(e),
                    last_heartbeat_age_ms: now.saturating_duration_since(e.seen).as_millis() as u64,
                }
            })
            .collect()
    }

    /// Forgets nodes silent for longer than `keep` (they stay listed as dead until then).
    pub fn prune(&mut self, now: Instant, keep: Duration) {
        let kept: Vec<bool> = self
            .entries
            .iter()
            .map(|e| now.saturating_duration_since(e.seen) < keep)
            .collect();
        for (v, keep) in self.views.iter().zip(&kept) {
            if !keep {
                self.index.remove(&v.id);
            }
        }
        if kept.iter().any(|k| !k) {
            self.slots_valid = false;
        }
        let mut keep_view = kept.iter();
        self.views
            .retain(|_| keep_view.next().copied().unwrap_or(true));
        let mut keep_entry = kept.iter();
        self.entries
            .retain(|_| keep_entry.next().copied().unwrap_or(true));
    }
}

fn pending(e: &NodeEntry) -> u32 {
    u32::try_from(e.recent.len()).unwrap_or(u32::MAX)
}

/// Live coordinators from `cluster.coord.heartbeat`, this one included.
#[derive(Debug)]
pub struct CoordRegistry {
    me: String,
    timeout: Duration,
    seen: BTreeMap<String, Instant>,
}

impl CoordRegistry {
    pub fn new(me: impl Into<String>, timeout: Duration) -> Self {
        Self {
            me: me.into(),
            timeout,
            seen: BTreeMap::new(),
        }
    }

    pub fn heartbeat(&mut self, id: &str, now: Instant) {
        if id != self.me {
            self.seen.insert(id.to_owned(), now);
        }
    }

    /// Live coordinators, sorted, this one always among them.
    pub fn live(&self, now: Instant) -> Vec<String> {
        let mut live: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) < self.timeout)
            .map(|(id, _)| id.clone())
            .collect();
        live.push(self.me.clone());
        live.sort();
        live
    }

    /// The coordinator that decides for `room` (rendezvous over the live ones).
    pub fn decider(&self, room: &RoomId, now: Instant) -> String {
        let live = self.live(now);
        let refs: Vec<&str> = live.iter().map(String::as_str).collect();
        placement::deciding_coordinator(room, &refs)
            .unwrap_or(&self.me)
            .to_owned()
    }

    pub fn prune(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.seen
            .retain(|_, t| now.saturating_duration_since(*t) < timeout);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use protocol::cluster::{NodeLoad, VERSION};

    /// Heartbeats land on their own node whether the positions by id are current, stale
    /// (many nodes registered at once), rebuilt, or stale again after a prune.
    #[test]
    fn heartbeats_find_their_node_through_every_state_of_the_positions() {
        let t0 = Instant::now();
        let mut r = NodeRegistry::new(Duration::from_secs(3), Duration::from_secs(2));
        let rooms_of = |r: &NodeRegistry, now| -> Vec<(String, u32)> {
            r.statuses(now)
                .into_iter()
                .map(|s| (s.id.to_string(), s.load.rooms))
                .collect()
        };
        let beat = |r: &mut NodeRegistry, i: u32, rooms: u32, now| {
            let mut h = hb(&format!("n{i:03}"), "eu");
            h.load.rooms = rooms;
            r.heartbeat(h, now);
        };
        // Registered in reverse order at one instant: each insert shifts the others.
        for i in (0..60).rev() {
            beat(&mut r, i, i, t0);
        }
        let want = |k: u32| -> Vec<(String, u32)> {
            (0..60).map(|i| (format!("n{i:03}"), i * k)).collect()
        };
        assert_eq!(rooms_of(&r, t0), want(1));
        for (step, k) in [(1, 2), (2, 3)] {
            let now = t0 + REINDEX_EVERY * step;
            for i in 0..60 {
                beat(&mut r, i, i * k, now);
            }
            assert!(r.slots_valid, "rebuilt");
            assert_eq!(rooms_of(&r, now), want(k));
        }
        // Half fall silent and are forgotten; the rest keep beating.
        let later = t0 + REINDEX_EVERY * 20;
        for i in (0..60).step_by(2) {
            beat(&mut r, i, i * 5, later);
        }
        r.prune(later, Duration::from_secs(5));
        for i in (0..60).step_by(2) {
            beat(&mut r, i, i * 7, later);
        }
        let left: Vec<(String, u32)> = (0..60)
            .step_by(2)
            .map(|i| (format!("n{i:03}"), i * 7))
            .collect();
        assert_eq!(rooms_of(&r, later), left);
    }

    pub(crate) fn hb(id: &str, region: &str) -> NodeHeartbeat {
        NodeHeartbeat {
            v: VERSION,
            node: NodeId::new(id).unwrap(),
            region: region.into(),
            ws_url: format!("ws://{id}/ws"),
            draining: false,
            load: NodeLoad {
                max_rooms: 1000,
                max_peers: 2000,
                max_egress_bps: 1_000_000_000,
                ..NodeLoad::default()
            },
            sent_ms: 0,
        }
    }

    pub(crate) fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    const T: Duration = Duration::from_secs(3);

    /// A registry listening from `t0`, timeout [`T`].
    fn listening_from(t0: Instant) -> NodeRegistry {
        let mut r = NodeRegistry::new(T, Duration::from_secs(2));
        r.listening(t0);
        r
    }

    #[test]
    fn an_overdue_heartbeat_is_worth_a_probe() {
        let t0 = Instant::now();
        let late = Duration::from_millis(1500);
        let mut r = NodeRegistry::new(Duration::from_secs(3), Duration::from_secs(2));
        r.listening(t0);
        r.heartbeat(hb("n1", "eu"), t0);
        r.heartbeat(hb("n2", "eu"), t0);
        // Not listening for long enough yet: nothing is overdue.
        assert!(r.overdue(t0 + Duration::from_millis(1000), late).is_empty());
        r.heartbeat(hb("n1", "eu"), t0 + Duration::from_millis(1400));
        r.heartbeat(hb("n2", "eu"), t0 + Duration::from_millis(1400));
        r.heartbeat(hb("n2", "eu"), t0 + Duration::from_millis(2400));
        let at = t0 + Duration::from_millis(3000);
        assert_eq!(r.overdue(at, late), vec![NodeId::new("n1").unwrap()]);
        // Dead nodes are no longer probed for being late.
        assert!(r.confirm_dead(&NodeId::new("n1").unwrap(), at));
        assert!(r.overdue(at, late).is_empty());
    }

    #[test]
    fn silence_means_dead_only_after_a_full_timeout_of_listening() {
        let t0 = Instant::now();
        let mut r = NodeRegistry::new(T, Duration::from_secs(2));
        assert_eq!(r.liveness(&id("a"), t0), Liveness::Unknown);
        r.listening(t0);
        r.heartbeat(hb("a", "eu"), t0);
        assert_eq!(
            r.liveness(&id("a"), t0 + Duration::from_secs(2)),
            Liveness::Alive
        );
        // Silent for the timeout, but we only listened for that long from t0: dead.
        assert_eq!(r.liveness(&id("a"), t0 + T), Liveness::Dead);
        assert_eq!(r.liveness(&id("never"), t0 + T), Liveness::Dead);
        assert_eq!(r.liveness(&id("never"), t0 + T / 2), Liveness::Unknown);
        // A reconnect restarts the clock: silence during an outage proves nothing.
        r.deaf();
        assert_eq!(r.liveness(&id("a"), t0 + T * 2), Liveness::Unknown);
        r.listening(t0 + T * 2);
        assert_eq!(r.liveness(&id("a"), t0 + T * 2 + T / 2), Liveness::Unknown);
        assert_eq!(r.liveness(&id("a"), t0 + T * 3), Liveness::Dead);
        r.heartbeat(hb("a", "eu"), t0 + T * 3);
        assert_eq!(r.liveness(&id("a"), t0 + T * 3), Liveness::Alive);
        assert_eq!(r.live_count(t0 + T * 3), 1);
    }

    #[test]
    fn a_probe_proves_death_at_once_and_only_a_later_heartbeat_revives() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = listening_from(t0);
        assert_eq!(r.heartbeat(hb("a", "eu"), t0), Heard::New);
        assert_eq!(r.heartbeat(hb("b", "eu"), t0), Heard::New);
        assert_eq!(r.heartbeat(hb("b", "eu"), t0 + ms(500)), Heard::Alive);
        let died = t0 + ms(600);
        assert!(r.confirm_dead(&id("a"), died), "news the first time");
        assert!(!r.confirm_dead(&id("a"), died + ms(10)), "and only then");
        assert!(!r.confirm_dead(&id("stranger"), died), "an unknown node");
        assert!(!r.knows(&id("stranger")));
        // Dead at once, though its last heartbeat is well within the timeout.
        assert_eq!(r.liveness(&id("a"), died), Liveness::Dead);
        assert_eq!(r.statuses(died)[0].liveness, Liveness::Dead);
        assert!(!r.views(died)[0].healthy);
        assert_eq!(r.live_nodes(died), vec![id("b")]);
        assert_eq!(r.place(None, died), Some(id("b")));
        // A heartbeat sent before the kill that arrives after the probe changes nothing.
        let late = died + STALE_HEARTBEAT - ms(1);
        assert_eq!(r.heartbeat(hb("a", "eu"), late), Heard::Stale);
        assert_eq!(r.liveness(&id("a"), late), Liveness::Dead);
        // Its silence later is the same death, not a second one.
        r.heartbeat(hb("b", "eu"), died + T);
        assert!(r.take_silent_deaths(died + T).is_empty());
        // A heartbeat after that is a live node (continued, reconnected, restarted).
        let back = died + T;
        assert_eq!(r.heartbeat(hb("a", "eu"), back), Heard::Revived);
        assert_eq!(r.liveness(&id("a"), back), Liveness::Alive);
        assert_eq!(r.heartbeat(hb("a", "eu"), back), Heard::Alive);
        // And it can die again.
        assert!(r.confirm_dead(&id("a"), back + ms(1)));
    }

    #[test]
    fn each_silent_death_is_handed_out_once_and_only_while_listening() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = listening_from(t0);
        r.heartbeat(hb("a", "eu"), t0);
        r.heartbeat(hb("b", "eu"), t0);
        assert!(r.take_silent_deaths(t0 + T - ms(1)).is_empty());
        r.heartbeat(hb("b", "eu"), t0 + T - ms(1));
        assert_eq!(r.take_silent_deaths(t0 + T), vec![id("a")]);
        assert!(r.take_silent_deaths(t0 + T + ms(1)).is_empty());
        assert!(
            !r.confirm_dead(&id("a"), t0 + T),
            "a probe after that is no news"
        );
        // Deaf: silence proves nothing, b is unknown rather than dead.
        r.deaf();
        assert!(r.take_silent_deaths(t0 + T * 3).is_empty());
        r.listening(t0 + T * 3);
        assert!(r.take_silent_deaths(t0 + T * 4 - ms(1)).is_empty());
        assert_eq!(r.take_silent_deaths(t0 + T * 4), vec![id("b")]);
        // Back and silent again: a new death.
        assert_eq!(r.heartbeat(hb("a", "eu"), t0 + T * 4), Heard::Revived);
        assert!(r.take_silent_deaths(t0 + T * 5 - ms(1)).is_empty());
        assert_eq!(r.take_silent_deaths(t0 + T * 5), vec![id("a")]);
    }

    #[test]
    fn pending_rooms_last_until_a_heartbeat_settles_them() {
        let t0 = Instant::now();
        let settle = Duration::from_secs(2);
        let mut r = NodeRegistry::new(T, settle);
        r.listening(t0);
        r.heartbeat(hb("a", "eu"), t0);
        r.assigned(&id("a"), t0);
        r.assigned(&id("a"), t0 + Duration::from_millis(1500));
        r.heartbeat(hb("a", "eu"), t0 + Duration::from_secs(1));
        assert_eq!(
            r.views(t0)[0].pending_rooms,
            2,
            "too early to settle either"
        );
        r.heartbeat(hb("a", "eu"), t0 + settle);
        assert_eq!(r.views(t0)[0].pending_rooms, 1);
        r.unassigned(&id("a"));
        assert_eq!(r.views(t0)[0].pending_rooms, 0);
        r.unassigned(&id("a"));
        r.assigned(&id("unknown"), t0);
        assert_eq!(r.statuses(t0).len(), 1);
    }

    #[test]
    fn a_burst_spreads_over_equal_nodes_between_heartbeats() {
        let t0 = Instant::now();
        let mut r = NodeRegistry::new(T, Duration::from_secs(2));
        r.listening(t0);
        for n in ["a", "b", "c"] {
            r.heartbeat(hb(n, "eu"), t0);
        }
        let mut counts = BTreeMap::<NodeId, u32>::new();
        for i in 0..300 {
            let now = t0 + Duration::from_millis(i);
            if i % 100 == 50 {
                // Heartbeats during the burst settle nothing younger than `settle`.
                r.heartbeat(hb("b", "eu"), now);
            }
            *counts.entry(r.place(None, now).unwrap()).or_default() += 1;
        }
        assert!(
            counts.values().all(|c| (99..=101).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn dead_and_draining_nodes_get_no_rooms() {
        let t0 = Instant::now();
        let mut r = NodeRegistry::new(T, Duration::from_secs(2));
        r.listening(t0);
        r.heartbeat(hb("a", "eu"), t0);
        let mut b = hb("b", "eu");
        b.draining = true;
        r.heartbeat(b, t0 + T);
        r.heartbeat(hb("c", "eu"), t0 + T);
        assert!(r.request_drain(&id("c"), true));
        assert!(!r.request_drain(&id("later"), true));
        assert_eq!(r.place(None, t0 + T), None);
        let s = r.statuses(t0 + T);
        assert!(!s[0].healthy && s[0].liveness == Liveness::Dead);
        assert!(s[1].draining && s[1].draining_reported && !s[1].draining_requested);
        assert!(s[2].draining && s[2].draining_requested && !s[2].draining_reported);
        r.request_drain(&id("c"), false);
        assert_eq!(r.place(None, t0 + T).unwrap().as_str(), "c");
        r.prune(t0 + T + Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(r.statuses(t0 + T).len(), 2);
    }

    #[test]
    fn views_stay_sorted_and_follow_heartbeats_drains_and_assignments() {
        let t0 = Instant::now();
        let mut r = NodeRegistry::new(T, Duration::from_secs(2));
        r.listening(t0);
        for n in ["c", "a", "b"] {
            r.heartbeat(hb(n, "eu"), t0);
        }
        r.heartbeat(hb("b", "us"), t0);
        r.request_drain(&id("c"), true);
        r.assigned(&id("a"), t0);
        let views = r.views(t0 + T / 2);
        let ids: Vec<&str> = views.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(views[0].pending_rooms, 1);
        assert_eq!(views[1].region, "us");
        assert!(views[2].draining && views.iter().all(|v| v.healthy));
        assert_eq!(r.region(&id("b")), Some("us"));
        assert!(r.views(t0 + T).iter().all(|v| !v.healthy));
        r.prune(t0 + T, T / 2);
        assert!(r.views(t0 + T).is_empty() && !r.knows(&id("a")));
    }

    #[test]
    fn live_coordinators_include_self_and_expire() {
        let t0 = Instant::now();
        let mut c = CoordRegistry::new("c1", T);
        assert_eq!(c.live(t0), vec!["c1"]);
        c.heartbeat("c2", t0);
        c.heartbeat("c1", t0);
        assert_eq!(c.live(t0 + T / 2), vec!["c1", "c2"]);
        assert_eq!(c.live(t0 + T), vec!["c1"]);
        let rooms: Vec<RoomId> = (0..100)
            .map(|i| RoomId::new(format!("r{i}")).unwrap())
            .collect();
        let by_c2 = rooms.iter().filter(|r| c.decider(r, t0) == "c2").count();
        assert!((25..75).contains(&by_c2), "{by_c2}");
        assert!(rooms.iter().all(|r| c.decider(r, t0 + T) == "c1"));
        c.prune(t0 + T);
        assert!(c.seen.is_empty());
    }
}
