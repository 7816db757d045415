//! Failover (DESIGN.md "Failover, fencing, drain"): finding dead nodes within a probe's
//! round trip, and moving their rooms.
//!
//! **Detection.** A suspicion that a node is gone comes as a [`NodeSuspect`] on
//! `cluster.node.suspect` (every coordinator hears it), as another coordinator's
//! [`NodeDown`], or as `suspects` of an allocation request (heard by the deciding
//! coordinator). A suspicion of a node this coordinator knows and does not count dead is
//! checked with a probe, a request on `node.<id>.ping`:
//!
//! - "no responders": the server knows nobody listening there, so the node's NATS connection
//!   is gone (kill -9 closes it at once): the node is dead now ([`DeathCause::Probe`]);
//! - a timeout proves nothing: a stopped process keeps its connection, and heartbeat silence
//!   for the node timeout catches it ([`DeathCause::Silence`]);
//! - any reply: alive.
//!
//! Probes of one node never overlap (a suspicion meanwhile waits for the verdict of the
//! probe in flight) and start at most every [`PROBE_GAP`], so a flood of suspicions, forged
//! or not, costs at most one probe per known node per gap; a suspicion of a node this
//! coordinator does not know costs nothing.
//!
//! **Reaction.** On each death it finds (a probe's, or the tick at which silence makes a node
//! dead, see [`crate::registry::NodeRegistry::take_silent_deaths`]) a coordinator publishes
//! [`NodeDown`] (every coordinator may publish one per death; nodes tolerate duplicates),
//! then moves the rooms listing the node whose deciding coordinator it is
//! ([`crate::decide::failover`], each written by compare-and-swap on the room's key, so two
//! coordinators never install two origins for one epoch). A room it does not decide is its
//! decider's to move, and any join decides it anyway ([`crate::decide::decide`] drops dead
//! nodes). `NodeDown` goes out before the rooms move: nodes react sooner, and a client they
//! send back meets a coordinator that counts the node dead already.

use crate::decide::{self, Stamp};
use crate::directory::{Edit, Edited, RoomDirectory, FAILOVER_ROUNDS};
use crate::metrics::{cause_str, FailoverOutcome, SuspicionOutcome, SuspicionSource, Verdict};
use crate::registry::Liveness;
use crate::Shared;
use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared as Joint};
use futures::StreamExt;
use protocol::cascade::FailoverPlan;
use protocol::cluster::{
    self, DeathCause, NodeDown, NodePong, NodeSuspect, NODE_DOWN, NODE_SUSPECT, VERSION,
};
use protocol::{NodeId, RoomId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a probe waits for the node's answer. A live node answers in a millisecond or
/// two; a timeout proves nothing anyway.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Probes of one node start at least this far apart.
pub const PROBE_GAP: Duration = Duration::from_millis(200);
/// Suspects of one allocation request that are probed; a room has a few nodes, so a longer
/// list is malformed or forged.
pub const MAX_SUSPECTS: usize = 8;
/// Rooms of a dead node rewritten at once.
const FAILOVER_CONCURRENCY: usize = 16;
/// How much of a peer's free text (`from`, `reason`) reaches the logs.
const LOGGED_CHARS: usize = 64;

/// A probe in flight; every suspicion of the node meanwhile awaits the same verdict.
pub(crate) type Probe = Joint<BoxFuture<'static, Verdict>>;

/// Admission of probes as a plain struct (time passed in): at most one probe of a node in
/// flight, and probes of one node at least `gap` apart. `T` is the probe in flight.
#[derive(Debug)]
pub struct ProbeGate<T> {
    gap: Duration,
    slots: HashMap<NodeId, Slot<T>>,
}

#[derive(Debug)]
struct Slot<T> {
    started: Instant,
    running: Option<T>,
}

/// What [`ProbeGate::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<T> {
    /// A new probe, made by the caller's `start`.
    Started(T),
    /// The probe already in flight.
    Joined(T),
    /// The node was probed less than the gap ago: its verdict is in the registry.
    Throttled,
}

impl<T: Clone> ProbeGate<T> {
    pub fn new(gap: Duration) -> Self {
        Self {
            gap,
            slots: HashMap::new(),
        }
    }

    /// The probe of `node` to wait for: the one in flight, or a new one that `start` makes
    /// now, unless the last one started less than the gap ago.
    pub fn admit(
        &mut self,
        node: &NodeId,
        now: Instant,
        start: impl FnOnce() -> T,
    ) -> Admission<T> {
        if let Some(slot) = self.slots.get(node) {
            if let Some(running) = &slot.running {
                return Admission::Joined(running.clone());
            }
            if now.saturating_duration_since(slot.started) < self.gap {
                return Admission::Throttled;
            }
        }
        let probe = start();
        self.slots.insert(
            node.clone(),
            Slot {
                started: now,
                running: Some(probe.clone()),
            },
        );
        Admission::Started(probe)
    }

    /// The probe of `node` has its verdict.
    pub fn finished(&mut self, node: &NodeId) {
        if let Some(slot) = self.slots.get_mut(node) {
            slot.running = None;
        }
    }

    /// Forgets the nodes whose last probe is over and older than the gap.
    pub fn prune(&mut self, now: Instant) {
        let gap = self.gap;
        self.slots
            .retain(|_, s| s.running.is_some() || now.saturating_duration_since(s.started) < gap);
    }
}

/// `cluster.node.suspect` and other coordinators' `cluster.node.down`: each a suspicion, the
/// probe running on its own.
pub(crate) async fn suspicions(shared: Arc<Shared>, client: Client) {
    let (suspects, downs) = match (
        client.subscribe(NODE_SUSPECT).await,
        client.subscribe(NODE_DOWN).await,
    ) {
        (Ok(s), Ok(d)) => (s, d),
        (s, d) => {
            tracing::error!(
                suspect = s.is_ok(),
                down = d.is_ok(),
                "subscribe node suspicions"
            );
            return;
        }
    };
    let mut heard = futures::stream::select(
        suspects.map(|m| (SuspicionSource::Suspect, m.payload)),
        downs.map(|m| (SuspicionSource::NodeDown, m.payload)),
    );
    while let Some((source, payload)) = heard.next().await {
        if let Some(node) = suspected(&shared, source, &payload) {
            // The probe is a task of its own and applies its verdict there.
            drop(suspect(&shared, &client, &node, source));
        }
    }
}

/// The node a suspicion names; `None` for our own `NodeDown` coming back, and for a
/// malformed message (counted).
fn suspected(shared: &Shared, source: SuspicionSource, payload: &[u8]) -> Option<NodeId> {
    let node = match source {
        SuspicionSource::NodeDown => match serde_json::from_slice::<NodeDown>(payload) {
            Ok(down) if down.v == VERSION => {
                if down.coordinator == shared.config.id {
                    return None;
                }
                tracing::debug!(
                    node = %down.node,
                    coordinator = ?clip(&down.coordinator),
                    cause = cause_str(down.cause),
                    "another coordinator found a node dead"
                );
                Some(down.node)
            }
            _ => None,
        },
        SuspicionSource::Suspect | SuspicionSource::Allocation | SuspicionSource::LateHeartbeat => {
            match serde_json::from_slice::<NodeSuspect>(payload) {
                Ok(s) if s.v == VERSION => {
                    tracing::debug!(
                        node = %s.node,
                        from = ?clip(&s.from),
                        reason = ?clip(&s.reason),
                        "node suspected"
                    );
                    Some(s.node)
                }
                _ => None,
            }
        }
    };
    if node.is_none() {
        tracing::debug!(source = source.as_str(), "unusable suspicion ignored");
        shared
            .metrics
            .suspicion(source, SuspicionOutcome::Malformed);
    }
    node
}

fn clip(text: &str) -> String {
    text.chars().take(LOGGED_CHARS).collect()
}

/// Checks a suspicion of `node`: the probe to await for its verdict, if one runs (see the
/// module docs). A node this coordinator does not know or counts dead already is not probed.
pub(crate) fn suspect(
    shared: &Arc<Shared>,
    client: &Client,
    node: &NodeId,
    source: SuspicionSource,
) -> Option<Probe> {
    let now = Instant::now();
    let alive = {
        let nodes = shared.nodes();
        nodes.knows(node) && nodes.liveness(node, now) != Liveness::Dead
    };
    if !alive {
        shared.metrics.suspicion(source, SuspicionOutcome::NotAlive);
        return None;
    }
    let admission = shared.probes().admit(node, now, || {
        tokio::spawn(probe(shared.clone(), client.clone(), node.clone()))
            .map(|done| done.unwrap_or(Verdict::Error))
            .boxed()
            .shared()
    });
    let (outcome, probe) = match admission {
        Admission::Started(p) => (SuspicionOutcome::Probed, Some(p)),
        Admission::Joined(p) => (SuspicionOutcome::Joined, Some(p)),
        Admission::Throttled => (SuspicionOutcome::Throttled, None),
    };
    tracing::debug!(%node, source = source.as_str(), outcome = outcome.as_str(), "suspicion");
    shared.metrics.suspicion(source, outcome);
    probe
}

/// Probes the suspects of an allocation request concurrently and returns once each has its
/// verdict, so that a dead one leaves the room's entry in the decision that follows.
pub(crate) async fn probe_suspects(shared: &Arc<Shared>, client: &Client, suspects: &[NodeId]) {
    let mut distinct: Vec<&NodeId> = Vec::new();
    for node in suspects {
        if distinct.len() == MAX_SUSPECTS {
            break;
        }
        if !distinct.contains(&node) {
            distinct.push(node);
        }
    }
    let probes: Vec<Probe> = distinct
        .into_iter()
        .filter_map(|node| suspect(shared, client, node, SuspicionSource::Allocation))
        .collect();
    futures::future::join_all(probes).await;
}

/// Clears the node's probe slot however the probe ends.
struct Finished {
    shared: Arc<Shared>,
    node: NodeId,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.shared.probes().finished(&self.node);
    }
}

/// One probe: ask the node, and if nobody listens, record its death and react to it.
async fn probe(shared: Arc<Shared>, client: Client, node: NodeId) -> Verdict {
    let _finished = Finished {
        shared: shared.clone(),
        node: node.clone(),
    };
    let started = Instant::now();
    let request = async_nats::Request::new()
        .payload(Bytes::from_static(b"{}"))
        .timeout(Some(PROBE_TIMEOUT));
    let verdict = match client
        .send_request(cluster::node_ping(&node), request)
        .await
    {
        Ok(reply) => {
            let pong = serde_json::from_slice::<NodePong>(&reply.payload).ok();
            tracing::debug!(%node, draining = ?pong.map(|p| p.draining), "probe answered");
            Verdict::Alive
        }
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Verdict::Dead,
        Err(e) if e.kind() == RequestErrorKind::TimedOut => Verdict::Timeout,
        Err(e) => {
            tracing::debug!(%node, error = %e, "probe failed");
            Verdict::Error
        }
    };
    let took = started.elapsed();
    shared.metrics.probe(verdict, took);
    tracing::info!(%node, verdict = verdict.as_str(), took_ms = took.as_millis() as u64, "node probed");
    if verdict == Verdict::Dead && shared.nodes().confirm_dead(&node, Instant::now()) {
        tokio::spawn(on_death(shared.clone(), client, node, DeathCause::Probe));
    }
    verdict
}

/// How often heartbeats are checked for being overdue.
pub const OVERDUE_CHECK: Duration = Duration::from_millis(250);

/// Probes every node whose heartbeat is overdue (half an interval late): a killed node is
/// then found dead within about 1.5 heartbeat intervals of its last heartbeat even when
/// nothing else suspects it, well before the silence timeout.
pub(crate) async fn overdue_heartbeats(shared: Arc<Shared>, client: Client) {
    let late = shared.config.heartbeat_interval.mul_f64(1.5);
    let mut tick = tokio::time::interval(OVERDUE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let overdue = shared.nodes().overdue(Instant::now(), late);
        for node in overdue {
            // The probe runs on its own; its verdict acts by itself.
            let _ = suspect(&shared, &client, &node, SuspicionSource::LateHeartbeat);
        }
    }
}

/// Reacts to the nodes that heartbeat silence made dead since the last call.
pub(crate) fn silent_deaths(shared: &Arc<Shared>, client: &Client, now: Instant) {
    let dead = shared.nodes().take_silent_deaths(now);
    for node in dead {
        tokio::spawn(on_death(
            shared.clone(),
            client.clone(),
            node,
            DeathCause::Silence,
        ));
    }
}

/// A death this coordinator found: announce it, then move the rooms it decides.
async fn on_death(shared: Arc<Shared>, client: Client, node: NodeId, cause: DeathCause) {
    tracing::warn!(coordinator = %shared.config.id, %node, cause = cause_str(cause), "node dead");
    shared.metrics.node_death(cause);
    let down = NodeDown {
        v: VERSION,
        node: node.clone(),
        coordinator: shared.config.id.clone(),
        cause,
    };
    match serde_json::to_vec(&down) {
        Ok(body) => {
            if let Err(e) = client.publish(NODE_DOWN, body.into()).await {
                tracing::warn!(%node, error = %e, "node down not published");
            }
        }
        Err(e) => tracing::error!(error = %e, "encode node down"),
    }
    move_rooms(&shared, &node).await;
}

/// Rewrites every room that lists `node` and that this coordinator decides.
async fn move_rooms(shared: &Shared, node: &NodeId) {
    let Some(dir) = shared.directory.get() else {
        tracing::warn!(%node, "room directory not open: the dead node's rooms move on their next join");
        return;
    };
    // The node's rooms from the mirror (each is then edited from KV); before the mirror has
    // caught up, from a listing of the bucket (bounded by `directory::LIST_LIMIT`).
    let mirrored = {
        let m = shared.mirror();
        m.synced().then(|| m.rooms_of(node))
    };
    let candidates = match mirrored {
        Some(rooms) => rooms,
        None => match dir.list().await {
            Ok(list) => list
                .into_iter()
                .filter(|a| a.serves(node))
                .map(|a| a.room)
                .collect(),
            Err(e) => {
                tracing::warn!(%node, error = %e, "rooms of a dead node not listed");
                shared.metrics.failover(FailoverOutcome::Error);
                return;
            }
        },
    };
    let now = Instant::now();
    let rooms: Vec<RoomId> = {
        let coords = shared.coords();
        candidates
            .into_iter()
            .filter(|room| coords.decider(room, now) == shared.config.id)
            .collect()
    };
    let outcomes: Vec<FailoverOutcome> = futures::stream::iter(rooms)
        .map(|room| fail_over(shared, dir, room))
        .buffer_unordered(FAILOVER_CONCURRENCY)
        .collect()
        .await;
    let moved = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                FailoverOutcome::Dropped | FailoverOutcome::OriginMoved | FailoverOutcome::Replaced
            )
        })
        .count();
    tracing::info!(%node, rooms = outcomes.len(), moved, "rooms of a dead node moved");
}

/// Moves one room off its dead nodes ([`decide::failover`], by compare-and-swap).
async fn fail_over(shared: &Shared, dir: &RoomDirectory, room: RoomId) -> FailoverOutcome {
    let mut planned = FailoverPlan::Unchanged;
    let edited = dir
        .edit(&room, FAILOVER_ROUNDS, |entry| {
            // The round before lost its race: its new node did not get the room.
            unassign(shared, &planned);
            let stamp = Stamp {
                coordinator: &shared.config.id,
                now: Instant::now(),
                now_ms: crate::now_ms(),
            };
            planned = decide::failover(entry, &mut shared.nodes(), stamp);
            match &planned {
                FailoverPlan::Shrunk(next) | FailoverPlan::Replaced(next) => {
                    Edit::Write(next.clone())
                }
                FailoverPlan::Unchanged | FailoverPlan::Stranded => Edit::Keep,
            }
        })
        .await;
    let outcome = match edited {
        Ok(Edited::Written {
            before,
            after,
            revision,
        }) => {
            let outcome = if matches!(planned, FailoverPlan::Replaced(_)) {
                FailoverOutcome::Replaced
            } else if after.node != before.node {
                FailoverOutcome::OriginMoved
            } else {
                FailoverOutcome::Dropped
            };
            tracing::info!(
                %room,
                origin = %after.node,
                epoch = after.epoch,
                nodes = after.nodes.len(),
                revision,
                change = outcome.as_str(),
                "room failed over"
            );
            shared.metrics.failover(outcome);
            let moved = crate::webhooks::moved_events(
                shared,
                protocol::webhook::MoveReason::Failover,
                &before,
                &after,
                revision,
            );
            crate::webhooks::emit_all(shared, &moved).await;
            return outcome;
        }
        Ok(Edited::Unchanged) if matches!(planned, FailoverPlan::Stranded) => {
            tracing::warn!(%room, "room of dead nodes stays: no live node can take it");
            FailoverOutcome::NoNode
        }
        Ok(Edited::Unchanged | Edited::Deleted { .. }) => FailoverOutcome::Unchanged,
        Ok(Edited::Contended) => {
            tracing::warn!(%room, "room of a dead node not moved: directory contended");
            FailoverOutcome::Contended
        }
        Err(e) => {
            tracing::warn!(%room, error = %e, "room of a dead node not moved");
            FailoverOutcome::Error
        }
    };
    unassign(shared, &planned);
    shared.metrics.failover(outcome);
    outcome
}

/// Undoes the pending room a plan counted on its new node.
fn unassign(shared: &Shared, plan: &FailoverPlan) {
    if let FailoverPlan::Replaced(next) = plan {
        shared.nodes().unassigned(&next.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::id;

    #[test]
    fn probes_of_a_node_never_overlap_and_keep_their_distance() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut gate = ProbeGate::new(PROBE_GAP);
        let mut made = 0;
        let mut start = |n| {
            made += 1;
            n
        };
        assert_eq!(gate.admit(&id("a"), t0, || start(1)), Admission::Started(1));
        // In flight: later suspicions wait for the same probe, however long it takes.
        assert_eq!(
            gate.admit(&id("a"), t0 + ms(400), || start(2)),
            Admission::Joined(1)
        );
        // Another node is probed on its own.
        assert_eq!(gate.admit(&id("b"), t0, || start(3)), Admission::Started(3));
        gate.finished(&id("a"));
        // Over, but started less than the gap ago.
        assert_eq!(
            gate.admit(&id("a"), t0 + ms(150), || start(4)),
            Admission::Throttled
        );
        assert_eq!(
            gate.admit(&id("a"), t0 + PROBE_GAP, || start(5)),
            Admission::Started(5)
        );
        assert_eq!(made, 3);
        gate.finished(&id("a"));
        gate.finished(&id("never"));
        // Pruning keeps probes in flight and recent ones.
        gate.prune(t0 + PROBE_GAP + ms(1));
        assert_eq!(gate.slots.len(), 2);
        gate.prune(t0 + PROBE_GAP * 2);
        assert_eq!(gate.slots.len(), 1, "b still in flight");
        gate.finished(&id("b"));
        gate.prune(t0 + PROBE_GAP * 2);
        assert!(gate.slots.is_empty());
    }
}
