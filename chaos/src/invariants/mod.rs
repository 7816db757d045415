//! The chaos runner's invariants (DESIGN.md "Invariants the chaos suite checks", plus no
//! panic and bounded memory from issue 8), each a pure function over what a run observed:
//! KV histories, timelines, node snapshots, logs, RSS samples. No IO and no clock: the
//! runner gathers, these judge, and tests feed them broken inputs directly.
//!
//! Every checker returns a [`Check`]: the invariant and its [`Verdict`], `pass` with what
//! was checked or `fail` with evidence naming revisions, nodes, users and times. A checker
//! given no observation at all fails ("nothing to check"): a run that gathered nothing
//! must not pass. Times are [`Duration`]s since the run's start unless a field says
//! otherwise; memory is in KiB.

use crate::bench::percentile_sorted;
use crate::sandbox::strip_ansi;
use protocol::cluster::RoomAssignment;
use protocol::{NodeId, RoomId, UserId};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::time::Duration;

/// Evidence lines kept per check; a last line counts the rest.
const MAX_EVIDENCE: usize = 20;
/// Matching log lines quoted per process and kind.
const QUOTED_LINES: usize = 3;

/// What the chaos suite promises, one name each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// At most one origin per room per epoch, and epochs never go back (KV history).
    SingleOrigin,
    /// A dead node leaves every room entry within the failover bound.
    LiveNodes,
    /// After a fault every participant receives every other within the recovery bound.
    EveryoneReceives,
    /// Each room's members on the nodes are exactly the clients still connected.
    ExactMembership,
    /// Bad input gets a clear error or close, and no other session is harmed.
    BadInputContained,
    /// Once everyone left: live counts zero, memory back near its baseline.
    NothingLeaks,
    /// No process logged a panic or an unexpected ERROR.
    NoPanic,
    /// RSS stays under its cap under overload: a node under pressure drops, not queues.
    MemoryBounded,
}

impl Invariant {
    /// The short name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::SingleOrigin => "single_origin",
            Invariant::LiveNodes => "live_nodes",
            Invariant::EveryoneReceives => "everyone_receives",
            Invariant::ExactMembership => "exact_membership",
            Invariant::BadInputContained => "bad_input_contained",
            Invariant::NothingLeaks => "nothing_leaks",
            Invariant::NoPanic => "no_panic",
            Invariant::MemoryBounded => "memory_bounded",
        }
    }
}

impl Serialize for Invariant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A checker's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Held; `checked` says over what, so a pass can be told from an empty one.
    Pass { checked: String },
    /// Violated; one line per finding.
    Fail { evidence: Vec<String> },
}

/// One invariant with its verdict; serializes flat for the JSON report:
/// `{"invariant": "single_origin", "verdict": "fail", "evidence": [..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub invariant: Invariant,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Check {
    pub fn passed(&self) -> bool {
        matches!(self.verdict, Verdict::Pass { .. })
    }

    /// Pass when there is no evidence against, fail with (at most [`MAX_EVIDENCE`] of) it.
    fn judge(
        invariant: Invariant,
        mut evidence: Vec<String>,
        checked: impl FnOnce() -> String,
    ) -> Self {
        let verdict = if evidence.is_empty() {
            Verdict::Pass { checked: checked() }
        } else {
            if evidence.len() > MAX_EVIDENCE {
                let more = evidence.len() - MAX_EVIDENCE;
                evidence.truncate(MAX_EVIDENCE);
                evidence.push(format!("… and {more} more"));
            }
            Verdict::Fail { evidence }
        };
        Check { invariant, verdict }
    }

    fn nothing_to_check(invariant: Invariant, what: impl Display) -> Self {
        let evidence = vec![format!("nothing to check: {what}")];
        Check::judge(invariant, evidence, String::new)
    }
}

/// Checks a room's KV history (oldest first, `None` a delete, revision `#i` = index `i`):
/// one origin per epoch over the whole history; epochs never go back from one put to the
/// next; a put after a delete goes past every earlier epoch (the coordinator reopens a
/// closed room at `last_epoch + 1`); the origin is among `nodes` whenever nodes are listed.
pub fn single_origin(room: &RoomId, history: &[Option<RoomAssignment>]) -> Check {
    let inv = Invariant::SingleOrigin;
    if history.is_empty() {
        return Check::nothing_to_check(inv, format_args!("{room} has no revision"));
    }
    let mut evidence = Vec::new();
    let mut origins: BTreeMap<u64, (&NodeId, usize)> = BTreeMap::new();
    // The highest epoch so far with its revision, and whether a delete came after it.
    let mut highest: Option<(u64, usize)> = None;
    let mut reopened = false;
    for (rev, entry) in history.iter().enumerate() {
        let Some(a) = entry else {
            reopened = highest.is_some();
            continue;
        };
        match origins.get(&a.epoch) {
            Some(&(first, at)) if *first != a.node => evidence.push(format!(
                "{room} epoch {}: origin {first} at #{at}, origin {} at #{rev}",
                a.epoch, a.node
            )),
            Some(_) => {}
            None => {
                origins.insert(a.epoch, (&a.node, rev));
            }
        }
        match highest {
            Some((top, at)) if reopened && a.epoch <= top => evidence.push(format!(
                "{room}#{rev}: reopened at epoch {}, not past epoch {top} of #{at}",
                a.epoch
            )),
            Some((top, at)) if a.epoch < top => evidence.push(format!(
                "{room}#{rev}: epoch went back to {} from {top} at #{at}",
                a.epoch
            )),
            _ => {}
        }
        if highest.is_none_or(|(top, _)| a.epoch > top) {
            highest = Some((a.epoch, rev));
        }
        reopened = false;
        if !a.nodes.is_empty() && !a.nodes.iter().any(|n| n.node == a.node) {
            let nodes = join(a.nodes.iter().map(|n| &n.node));
            evidence.push(format!(
                "{room}#{rev}: origin {} not among its nodes [{nodes}]",
                a.node
            ));
        }
    }
    Check::judge(inv, evidence, || {
        let deletes = history.iter().filter(|e| e.is_none()).count();
        format!(
            "{room}: {} revisions ({deletes} deletes), {} epochs, one origin each",
            history.len(),
            origins.len()
        )
    })
}

/// A node that died at `at` and, if it came back (same id), when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub node: NodeId,
    pub at: Duration,
    pub back: Option<Duration>,
}

/// Checks that a room's entries stop listing a dead node (origin or not) within `bound` of
/// its death. `timeline` holds the room's KV writes with when each was seen, oldest first;
/// each is in force until the next, the last until `until` (when the history was last
/// read). A node is dead from `at` to `back`, or to the end.
pub fn live_nodes(
    room: &RoomId,
    timeline: &[(Duration, Option<RoomAssignment>)],
    deaths: &[Death],
    until: Duration,
    bound: Duration,
) -> Check {
    let inv = Invariant::LiveNodes;
    if timeline.is_empty() {
        return Check::nothing_to_check(inv, format_args!("{room} has no revision"));
    }
    let mut evidence = Vec::new();
    let mut longest = Duration::ZERO;
    for death in deaths {
        let dead_until = death.back.unwrap_or(until).min(until);
        // The end of the last stretch in which an entry listed the node while dead.
        let mut last: Option<(Duration, usize)> = None;
        for (rev, (from, entry)) in timeline.iter().enumerate() {
            let to = timeline.get(rev + 1).map_or(until, |(t, _)| *t);
            let listed = entry
                .as_ref()
                .is_some_and(|a| a.members().contains(&death.node));
            if listed && to > death.at && *from < dead_until {
                last = Some((to.min(dead_until), rev));
            }
        }
        let Some((to, rev)) = last else { continue };
        let stayed = to.saturating_sub(death.at);
        longest = longest.max(stayed);
        if stayed > bound {
            let still = if to == until && death.back.is_none() {
                " (still listed when last read)"
            } else {
                ""
            };
            let (node, at) = (&death.node, death.at);
            evidence.push(format!(
                "{room}: {node} died at {at:.1?}, listed {stayed:.1?} after in #{rev}{still}"
            ));
        }
    }
    Check::judge(inv, evidence, || {
        format!(
            "{room}: {} deaths, a dead node listed at most {longest:.1?} (bound {bound:.1?})",
            deaths.len()
        )
    })
}

/// A receiver and a publisher of one room.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub receiver: UserId,
    pub publisher: UserId,
}

/// What one room's participants received after a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomReception {
    pub room: RoomId,
    /// Everyone expected to publish to and receive from every other.
    pub participants: Vec<UserId>,
    /// Per link, its first packet after the fault, measured from the fault. A link missing
    /// here received nothing.
    pub first_packet: BTreeMap<Link, Duration>,
}

impl Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ← {}", self.receiver, self.publisher)
    }
}

impl RoomReception {
    /// Every ordered pair of distinct participants with its first packet, if any.
    pub fn links(&self) -> impl Iterator<Item = (Link, Option<Duration>)> + '_ {
        self.participants.iter().flat_map(move |receiver| {
            self.participants
                .iter()
                .filter(move |p| *p != receiver)
                .map(move |publisher| {
                    let link = Link {
                        receiver: receiver.clone(),
                        publisher: publisher.clone(),
                    };
                    let first = self.first_packet.get(&link).copied();
                    (link, first)
                })
        })
    }
}

/// Checks that every participant received every other's media within `bound` of the fault.
pub fn everyone_receives(rooms: &[RoomReception], bound: Duration) -> Check {
    let inv = Invariant::EveryoneReceives;
    let mut evidence = Vec::new();
    let mut links = 0usize;
    for r in rooms {
        for (link, first) in r.links() {
            links += 1;
            match first {
                None => evidence.push(format!("{}: {link} never", r.room)),
                Some(t) if t > bound => evidence.push(format!(
                    "{}: {link} after {t:.1?}, {:.1?} late",
                    r.room,
                    t - bound
                )),
                Some(_) => {}
            }
        }
    }
    if links == 0 {
        return Check::nothing_to_check(inv, "no room with two participants");
    }
    Check::judge(inv, evidence, || {
        let max = recovery_times(rooms).max.unwrap_or_default();
        format!(
            "{} rooms, {links} links, all within {max:.1?} (bound {bound:.1?})",
            rooms.len()
        )
    })
}

/// Recovery times over every link of every room: the first packet after the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecoveryTimes {
    pub links: usize,
    /// Links that received nothing (not in the percentiles).
    pub never: usize,
    #[serde(rename = "p50_ms", serialize_with = "opt_ms")]
    pub p50: Option<Duration>,
    #[serde(rename = "p99_ms", serialize_with = "opt_ms")]
    pub p99: Option<Duration>,
    #[serde(rename = "max_ms", serialize_with = "opt_ms")]
    pub max: Option<Duration>,
}

/// p50/p99/max (nearest rank) of the recovery times of the links that recovered.
pub fn recovery_times(rooms: &[RoomReception]) -> RecoveryTimes {
    let all: Vec<Option<Duration>> = rooms
        .iter()
        .flat_map(|r| r.links().map(|(_, t)| t))
        .collect();
    let mut times: Vec<Duration> = all.iter().flatten().copied().collect();
    times.sort();
    RecoveryTimes {
        links: all.len(),
        never: all.len() - times.len(),
        p50: percentile_sorted(&times, 50.0),
        p99: percentile_sorted(&times, 99.0),
        max: times.last().copied(),
    }
}

fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| d.as_secs_f64() * 1000.0).serialize(s)
}

/// The live object counts of a node's `counters` (`node::counters::CountersSnapshot`);
/// the totals beside them are not read.
pub const LIVE_COUNTS: [&str; 8] = [
    "rooms",
    "room_watches",
    "peers",
    "transports",
    "tracks",
    "downtracks",
    "forwarding_tasks",
    "sessions",
];

/// The part of a node's `/debug/snapshot` the checkers read; other fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeSnapshot {
    pub node: NodeId,
    pub counters: BTreeMap<String, serde_json::Value>,
    pub rooms: Vec<SnapshotRoom>,
}

impl NodeSnapshot {
    pub fn parse(json: &serde_json::Value) -> serde_json::Result<Self> {
        Self::deserialize(json)
    }

    /// The [`LIVE_COUNTS`] that are not zero, as `name count`; a missing one is `name
    /// missing`, so a renamed counter cannot pass as zero.
    pub fn live_left(&self) -> Vec<String> {
        let count = |name: &str| self.counters.get(name).and_then(serde_json::Value::as_i64);
        LIVE_COUNTS
            .iter()
            .filter_map(|name| match count(name) {
                Some(0) => None,
                Some(n) => Some(format!("{name} {n}")),
                None => Some(format!("{name} missing")),
            })
            .collect()
    }
}

/// A room as a node reports it; `members` are its local participants.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnapshotRoom {
    pub id: RoomId,
    pub members: Vec<SnapshotMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnapshotMember {
    pub id: UserId,
}

/// Checks that each room's members, unioned over the nodes, are exactly the users still
/// connected to it (`connected`, per room), and that no user is a member on two nodes.
pub fn exact_membership(
    connected: &BTreeMap<RoomId, BTreeSet<UserId>>,
    nodes: &[NodeSnapshot],
) -> Check {
    let inv = Invariant::ExactMembership;
    if nodes.is_empty() {
        return Check::nothing_to_check(inv, "no node snapshot");
    }
    let mut reported: BTreeMap<&RoomId, BTreeMap<&UserId, Vec<&NodeId>>> = BTreeMap::new();
    for n in nodes {
        for r in &n.rooms {
            let room = reported.entry(&r.id).or_default();
            for m in &r.members {
                room.entry(&m.id).or_default().push(&n.node);
            }
        }
    }
    let none = BTreeSet::new();
    let rooms: BTreeSet<&RoomId> = connected.keys().chain(reported.keys().copied()).collect();
    let mut evidence = Vec::new();
    for room in rooms {
        let want = connected.get(room).unwrap_or(&none);
        let have = reported.remove(room).unwrap_or_default();
        let missing = join(want.iter().filter(|u| !have.contains_key(u)));
        if !missing.is_empty() {
            evidence.push(format!("{room}: missing {missing} (connected, on no node)"));
        }
        for (user, on) in have {
            if !want.contains(user) {
                evidence.push(format!(
                    "{room}: extra {user} on {} (not connected)",
                    join(&on)
                ));
            } else if on.len() > 1 {
                evidence.push(format!("{room}: {user} duplicated on {}", join(&on)));
            }
        }
    }
    Check::judge(inv, evidence, || {
        let members: usize = connected.values().map(BTreeSet::len).sum();
        format!(
            "{} rooms, {members} members over {} nodes, each on one node",
            connected.len(),
            nodes.len()
        )
    })
}

/// How a hostile client was answered: error messages received and the close code, if the
/// node closed with one. `client` is a label: a hostile client's id may be forged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostileOutcome {
    pub client: String,
    pub errors: usize,
    pub close_code: Option<u16>,
}

/// Whether a well-behaved client kept its WebSocket and its media through the hostile run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bystander {
    pub client: UserId,
    pub kept_socket: bool,
    pub kept_media: bool,
}

/// Close codes that tell a client its input was at fault: protocol error, unsupported
/// data, invalid payload, policy violation (what the node sends), message too big.
pub const CLEAR_CLOSE_CODES: [u16; 5] = [1002, 1003, 1007, 1008, 1009];

/// Checks that every hostile client got an error message or a clear close
/// ([`CLEAR_CLOSE_CODES`]), and that every bystander kept its socket and media.
pub fn bad_input_contained(hostile: &[HostileOutcome], bystanders: &[Bystander]) -> Check {
    let inv = Invariant::BadInputContained;
    if hostile.is_empty() || bystanders.is_empty() {
        return Check::nothing_to_check(inv, "a hostile client and a bystander are both needed");
    }
    let mut evidence = Vec::new();
    for h in hostile {
        if h.errors == 0 && !h.close_code.is_some_and(|c| CLEAR_CLOSE_CODES.contains(&c)) {
            let close = h
                .close_code
                .map_or("no close code".to_owned(), |c| format!("close {c}"));
            evidence.push(format!(
                "hostile {}: no error message and {close}",
                h.client
            ));
        }
    }
    for b in bystanders {
        if !b.kept_socket {
            evidence.push(format!("{} lost its socket", b.client));
        }
        if !b.kept_media {
            evidence.push(format!("{} lost media", b.client));
        }
    }
    Check::judge(inv, evidence, || {
        format!(
            "{} hostile clients answered, {} bystanders untouched",
            hostile.len(),
            bystanders.len()
        )
    })
}

/// One process's RSS before the load and after everyone left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryReturn {
    pub process: String,
    pub baseline_kib: u64,
    pub after_kib: u64,
}

/// How near its baseline RSS must come back: `after ≤ baseline × factor + slack`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryTolerance {
    pub factor: f64,
    pub slack_kib: u64,
}

impl Default for MemoryTolerance {
    /// ×1.5 + 32 MiB: the allocator keeps some freed pages and the media runtime its
    /// buffers; a leak of a participant's worth per join exceeds it after a few hundred.
    fn default() -> Self {
        MemoryTolerance {
            factor: 1.5,
            slack_kib: 32 * 1024,
        }
    }
}

/// Checks, once everyone left, that every node's live counts are zero and that every
/// process's RSS came back within `tolerance` of its baseline.
pub fn nothing_leaks(
    nodes: &[NodeSnapshot],
    memory: &[MemoryReturn],
    tolerance: MemoryTolerance,
) -> Check {
    let inv = Invariant::NothingLeaks;
    if nodes.is_empty() || memory.is_empty() {
        return Check::nothing_to_check(inv, "node snapshots and RSS samples are both needed");
    }
    let mut evidence = Vec::new();
    for n in nodes {
        let left = n.live_left();
        if !left.is_empty() {
            evidence.push(format!("{}: {} after everyone left", n.node, join(left)));
        }
    }
    for m in memory {
        let limit = (m.baseline_kib as f64 * tolerance.factor) as u64 + tolerance.slack_kib;
        if m.after_kib > limit {
            evidence.push(format!(
                "{}: RSS {} after, baseline {} (limit {})",
                m.process,
                mib(m.after_kib),
                mib(m.baseline_kib),
                mib(limit)
            ));
        }
    }
    Check::judge(inv, evidence, || {
        format!(
            "{} nodes at zero, {} processes back near their RSS baseline",
            nodes.len(),
            memory.len()
        )
    })
}

/// One process's log text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub process: String,
    pub text: String,
}

/// Checks that no log has a `panicked at` line, nor an ERROR line (text or JSON format)
/// other than those containing one of `allowed` (errors a scenario provokes on purpose).
pub fn no_panic(logs: &[Log], allowed: &[&str]) -> Check {
    let inv = Invariant::NoPanic;
    if logs.is_empty() {
        return Check::nothing_to_check(inv, "no log");
    }
    let mut evidence = Vec::new();
    let mut lines = 0usize;
    for log in logs {
        let mut panics = Vec::new();
        let mut errors = Vec::new();
        for line in log.text.lines().map(strip_ansi) {
            lines += 1;
            if line.contains("panicked at") {
                panics.push(line);
            } else if (line.contains(" ERROR ") || line.contains("\"level\":\"ERROR\""))
                && !allowed.iter().any(|a| line.contains(a))
            {
                errors.push(line);
            }
        }
        quote(&mut evidence, &log.process, "panic", &panics);
        quote(&mut evidence, &log.process, "ERROR", &errors);
    }
    Check::judge(inv, evidence, || {
        format!(
            "{} logs, {lines} lines, no panic or unexpected ERROR",
            logs.len()
        )
    })
}

/// The first [`QUOTED_LINES`] of `lines` as evidence, and how many more there were.
fn quote(evidence: &mut Vec<String>, process: &str, kind: &str, lines: &[String]) {
    for l in lines.iter().take(QUOTED_LINES) {
        let l: String = l.chars().take(300).collect();
        evidence.push(format!("{process}: {kind}: {l}"));
    }
    if lines.len() > QUOTED_LINES {
        evidence.push(format!(
            "{process}: {} more {kind} lines",
            lines.len() - QUOTED_LINES
        ));
    }
}

/// One process's RSS samples, (time, KiB), oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssSeries {
    pub process: String,
    pub samples: Vec<(Duration, u64)>,
}

/// Checks that no process's RSS went over `cap_kib`.
pub fn memory_bounded(series: &[RssSeries], cap_kib: u64) -> Check {
    let inv = Invariant::MemoryBounded;
    let peaks: Vec<(&str, Duration, u64)> = series
        .iter()
        .filter_map(|s| {
            let &(at, peak) = s.samples.iter().max_by_key(|(_, kib)| *kib)?;
            Some((s.process.as_str(), at, peak))
        })
        .collect();
    if peaks.len() < series.len() || series.is_empty() {
        return Check::nothing_to_check(inv, "a process without RSS samples");
    }
    let mut evidence = Vec::new();
    for (s, &(process, at, peak)) in series.iter().zip(&peaks) {
        if peak > cap_kib {
            let first = s
                .samples
                .iter()
                .find(|(_, kib)| *kib > cap_kib)
                .map_or(at, |(t, _)| *t);
            evidence.push(format!(
                "{process}: peak {} at {at:.1?} over the cap {} (first over at {first:.1?})",
                mib(peak),
                mib(cap_kib)
            ));
        }
    }
    Check::judge(inv, evidence, || {
        let (process, _, peak) = peaks
            .iter()
            .max_by_key(|p| p.2)
            .copied()
            .unwrap_or_default();
        format!(
            "{} processes, peak {} ({process}) under the cap {}",
            series.len(),
            mib(peak),
            mib(cap_kib)
        )
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn join<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
