//! One round: rooms of participants, a fault, each affected participant watched until media
//! from every other one is back, then a clean cluster for the next round.

use crate::{Args, NODES};
use anyhow::{anyhow, bail, Context, Result};
use async_nats::Subscriber;
use chaos::payload::unix_now_us;
use chaos::sandbox::{Cluster, Proc};
use chaos::{
    mint_tokens, Cause, ClientConfig, Participant, ParticipantConfig, PublishOpts, Rejoin,
};
use futures::{FutureExt, StreamExt};
use protocol::cluster::{DeathCause, NodeDown, NODE_DOWN};
use protocol::token::Claims;
use protocol::{RoomId, UserId};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How often the participants' counters are read while they recover: the resolution of the
/// media figures (as of `Recovery::media_at`).
const POLL: Duration = Duration::from_millis(10);
/// Bound on a round's first media, on a restart and on the coordinators seeing the node.
const SETTLE: Duration = Duration::from_secs(30);
/// Bound on a drained node's exit: its drain deadline (60 s by default) and then some.
const DRAIN_EXIT: Duration = Duration::from_secs(70);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the node hosting most rooms.
    Kill,
    /// SIGTERM of n1, which hosts every room.
    Drain,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Drain => "drain",
        }
    }
}

/// The recovery of a participant whose room was on the node that failed, on the fault's
/// clock.
#[derive(Debug, Clone)]
pub struct Sample {
    /// How its first recovery after the fault began.
    pub noticed_by: String,
    /// Fault → the recovery that moved it off the node (its last) noticed.
    pub noticed: Duration,
    /// Noticed → `joined` of that recovery.
    pub joined: Duration,
    /// `joined` → a packet from every other participant.
    pub media: Duration,
    pub fresh_join: bool,
    /// More than one recovery after the fault: an earlier one failed, or rejoined on the
    /// very node (a drained node that did not know where to send it).
    pub again: bool,
    /// `Recovery::media_at` held every other participant.
    pub media_at_complete: bool,
}

impl Sample {
    /// Fault → media back.
    pub fn total(&self) -> Duration {
        self.noticed + self.joined + self.media
    }

    /// Noticed → media back: the media gap of a participant told to move.
    pub fn gap(&self) -> Duration {
        self.joined + self.media
    }
}

/// An affected participant without media from every other one in time.
pub struct Failure {
    pub round: usize,
    pub who: String,
    pub why: String,
}

pub struct Round {
    /// Rooms on the node that failed.
    pub rooms_on_node: usize,
    /// How long `kill` took to run (the clock starts before it).
    pub signal_cmd: Duration,
    /// Kill → the first `cluster.node.down` naming the victim, and its cause.
    pub detection: Option<(Duration, DeathCause)>,
    /// SIGTERM → exit of a drained node, and whether with status 0.
    pub exit: Option<(Duration, bool)>,
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
}

/// The rounds of a part, and why it stopped early if it did.
pub struct Part {
    pub rounds: Vec<Round>,
    pub error: Option<String>,
}

pub async fn run(args: &Args, cluster: &mut Cluster, run_id: &str, fault: Fault) -> Part {
    let mut rounds = Vec::new();
    let error = match all_rounds(args, cluster, run_id, fault, &mut rounds).await {
        Ok(()) => None,
        Err(e) => {
            eprintln!("== {} FAILED: {e:#}", fault.name());
            Some(format!("{e:#}"))
        }
    };
    Part { rounds, error }
}

async fn all_rounds(
    args: &Args,
    cluster: &mut Cluster,
    run_id: &str,
    fault: Fault,
    out: &mut Vec<Round>,
) -> Result<()> {
    // Subscribed before any kill; the client lives as long as the subscription.
    let (n, mut downs) = match fault {
        Fault::Kill => {
            let client = chaos::sandbox::nats_connect(cluster.nats_url()).await?;
            let sub = client.subscribe(NODE_DOWN).await?;
            client
                .flush()
                .await
                .map_err(|e| anyhow!("NATS flush: {e}"))?;
            (args.kills, Some((client, sub)))
        }
        Fault::Drain => (args.drains, None),
    };
    for r in 0..n {
        let tag = format!("{}{run_id}x{r}", fault.name());
        let sub = downs.as_mut().map(|d| &mut d.1);
        let x = round(args, cluster, sub, fault, &tag, r)
            .await
            .with_context(|| format!("round {r}"))?;
        let worst = x.samples.iter().map(|s| s.total().as_millis()).max();
        eprintln!(
            "   {} {r}: detection {:?}, exit {:?}, slowest media back {worst:?} ms, {} not back",
            fault.name(),
            x.detection.map(|d| d.0),
            x.exit.map(|e| e.0),
            x.failures.len()
        );
        out.push(x);
    }
    Ok(())
}

async fn round(
    args: &Args,
    cluster: &mut Cluster,
    mut downs: Option<&mut Subscriber>,
    fault: Fault,
    tag: &str,
    r: usize,
) -> Result<Round> {
    let kill = fault == Fault::Kill;
    // A room's sockets on three nodes, or all on n1 to drain it.
    let n = if kill { args.rooms } else { args.drain_rooms };
    let via = |i: usize, j: usize| {
        if kill {
            NODES[(i + j + r) % 3]
        } else {
            NODES[0]
        }
    };
    let rooms = open_rooms(args, cluster, tag, n, via).await?;
    let mut hosted = BTreeMap::<String, usize>::new();
    for room in &rooms {
        *hosted
            .entry(room.members[0].joined().node.to_string())
            .or_default() += 1;
    }
    let most = hosted.values().copied().max().unwrap_or(0);
    let top: Vec<&String> = hosted.keys().filter(|n| hosted[*n] == most).collect();
    let node = top[r % top.len()].clone();
    if !kill && (node != NODES[0] || most != n) {
        bail!("rooms not all on {}: {hosted:?}", NODES[0]);
    }
    let mut watch = watches(&rooms, &node);
    // Messages of earlier kills (a second coordinator's, say) are not this one's.
    while let Some(d) = downs.as_deref_mut() {
        if d.next().now_or_never().flatten().is_none() {
            break;
        }
    }
    let at = Instant::now();
    let proc = cluster.proc_mut(&node)?;
    proc.signal(if kill { "KILL" } else { "TERM" })?;
    let signal_cmd = at.elapsed();
    proc.expect_exit();
    let exited = async {
        match kill {
            true => None,
            false => wait_exit(proc, at).await,
        }
    };
    let detected = async {
        match downs {
            Some(d) => detect(d, &node, at).await,
            None => None,
        }
    };
    let observed = observe(&mut watch, at, args.recovery());
    let (_, exit, detection) = tokio::join!(observed, exited, detected);
    if !kill && exit.is_none() {
        cluster.proc_mut(&node)?.signal("KILL")?;
    }
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for w in watch {
        match w.outcome {
            Some(Ok(s)) => samples.push(s),
            why => failures.push(Failure {
                round: r,
                who: w.id,
                why: why.and_then(Result::err).unwrap_or_default(),
            }),
        }
    }
    leave_all(&rooms).await;
    cluster.restart(&node, SETTLE).await?;
    chaos::wait_until(SETTLE, "every coordinator to count every node", || async {
        let waiting = cluster.not_ready().await;
        waiting
            .is_empty()
            .then_some(())
            .ok_or_else(|| waiting.join("; "))
    })
    .await?;
    Ok(Round {
        rooms_on_node: most,
        signal_cmd,
        detection,
        exit,
        samples,
        failures,
    })
}

/// Fault → the first `cluster.node.down` naming `node`, bounded by [`SETTLE`].
async fn detect(sub: &mut Subscriber, node: &str, from: Instant) -> Option<(Duration, DeathCause)> {
    while let Ok(Some(m)) = tokio::time::timeout_at(from + SETTLE, sub.next()).await {
        match serde_json::from_slice::<NodeDown>(&m.payload) {
            Ok(d) if d.node.as_str() == node => return Some((from.elapsed(), d.cause)),
            _ => {}
        }
    }
    None
}

/// Signal → exit of `proc`, polled every [`POLL`], bounded by [`DRAIN_EXIT`].
async fn wait_exit(proc: &mut Proc, from: Instant) -> Option<(Duration, bool)> {
    while from.elapsed() < DRAIN_EXIT {
        if let Some(status) = proc.exited() {
            return Some((from.elapsed(), status.success()));
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Three publishing participants in a room.
struct Room {
    members: Vec<Participant>,
    ids: Vec<String>,
}

/// `n` rooms, member `j` of room `i` joining through node `via(i, j)` from region `eu`;
/// returns once everyone receives everyone.
async fn open_rooms(
    args: &Args,
    cluster: &Cluster,
    tag: &str,
    n: usize,
    via: impl Fn(usize, usize) -> &'static str,
) -> Result<Vec<Room>> {
    let started = Instant::now();
    let via = &via;
    let open = (0..n).map(|i| async move {
        let name = format!("{tag}r{i}");
        let mut room = Room {
            members: Vec::new(),
            ids: Vec::new(),
        };
        for j in 0..3 {
            // The user id carries the room: a node keeps one session per user id.
            let user = format!("p{j}@{name}");
            let claims = Claims::new(RoomId::new(&name)?, UserId::new(&user)?, 0, 0);
            let tokens = mint_tokens(cluster.api_secret(), claims, Duration::from_secs(3600));
            let config = ParticipantConfig {
                client: ClientConfig {
                    ice_check_interval: args.client_ice(),
                    ..ClientConfig::default()
                },
                region: Some("eu".into()),
                ..ParticipantConfig::default()
            };
            let ws = cluster.node(via(i, j))?.ws_url();
            let p = Participant::join(&ws, &name, tokens, config).await?;
            let (video_pps, audio_pps) = (args.video_pps, args.audio_pps);
            p.publish(PublishOpts {
                video_pps,
                audio_pps,
                ..PublishOpts::default()
            })
            .await?;
            room.members.push(p);
            room.ids.push(user);
        }
        anyhow::Ok(room)
    });
    let rooms = futures::future::try_join_all(open).await?;
    for room in &rooms {
        for (p, id) in room.members.iter().zip(&room.ids) {
            for other in room.ids.iter().filter(|o| *o != id) {
                p.wait_media_since(other, started, SETTLE)
                    .await
                    .with_context(|| format!("{id} before the fault"))?;
            }
        }
    }
    Ok(rooms)
}

/// Everyone leaves, each bounded by 5 s.
async fn leave_all(rooms: &[Room]) {
    Participant::leave_all(rooms.iter().flat_map(|r| &r.members)).await;
}

/// What watching one participant after a fault has found.
struct Watch<'a> {
    p: &'a Participant,
    id: String,
    /// The node that failed: a recovery that rejoined there did not move the participant.
    failed: String,
    others: Vec<String>,
    /// The recovery looked at (index into `recoveries()`), its `joined` on the Unix clock
    /// (µs), and per other participant when a packet after that was first seen.
    current: Option<(usize, u64, BTreeMap<String, Instant>)>,
    outcome: Option<Result<Sample, String>>,
}

/// A watch of each participant served by `node`: its room was there. (Those whose socket
/// alone was there recover too, and are not counted.)
fn watches<'a>(rooms: &'a [Room], node: &str) -> Vec<Watch<'a>> {
    let mut out = Vec::new();
    for room in rooms {
        for (p, id) in room.members.iter().zip(&room.ids) {
            if p.joined().node.as_str() == node {
                out.push(Watch {
                    p,
                    id: id.clone(),
                    failed: node.to_owned(),
                    others: room.ids.iter().filter(|o| *o != id).cloned().collect(),
                    current: None,
                    outcome: None,
                });
            }
        }
    }
    out
}

/// Reads every watched participant every [`POLL`] until each has media from every other
/// one after its last recovery, or `timeout` after the fault.
async fn observe(watch: &mut [Watch<'_>], fault_at: Instant, timeout: Duration) {
    loop {
        for w in watch.iter_mut().filter(|w| w.outcome.is_none()) {
            w.outcome = w.step(fault_at);
            if fault_at.elapsed() >= timeout && w.outcome.is_none() {
                w.outcome = Some(Err(w.pending(fault_at)));
            }
        }
        if watch.iter().all(|w| w.outcome.is_some()) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Watch<'_> {
    fn step(&mut self, fault_at: Instant) -> Option<Result<Sample, String>> {
        let all = self.p.recoveries();
        let first = all.iter().position(|r| r.noticed_at >= fault_at)?;
        let last = all.last()?;
        if let Some(e) = &last.gave_up {
            return Some(Err(format!("gave up: {e}")));
        }
        let rejoined = last
            .rejoined
            .as_ref()
            .filter(|j| j.node.as_str() != self.failed)?;
        if self.current.as_ref().map(|c| c.0) != Some(all.len() - 1) {
            self.current = Some((all.len() - 1, unix_us_at(rejoined.at), BTreeMap::new()));
        }
        let (_, since_us, seen) = self.current.as_mut()?;
        // Packets after `joined` came over the new connections: a recovery closes the old
        // ones before it connects anew.
        let stats = self.p.track_stats();
        let now = Instant::now();
        for o in &self.others {
            if stats
                .iter()
                .any(|t| &t.publisher == o && t.last_packet_unix_us > *since_us)
            {
                seen.entry(o.clone()).or_insert(now);
            }
        }
        if seen.len() < self.others.len() {
            return None;
        }
        // The participant stamps the same at the same pace but stops once everyone it sees
        // has sent: the earlier of the two sightings counts.
        let back = self
            .others
            .iter()
            .map(|o| last.media_at.get(o).map_or(seen[o], |t| (*t).min(seen[o])));
        let back = back.max()?;
        let noticed_at = last.noticed_at;
        Some(Ok(Sample {
            noticed_by: match &all[first].cause {
                Cause::SocketClosed(_) => "socket closed".into(),
                Cause::Reconnect { reason, .. } => format!("`reconnect` {reason}"),
                Cause::PeerFailed(_) => "peer connection failed".into(),
                Cause::Silent(_) => "silent node".into(),
            },
            noticed: noticed_at - fault_at,
            joined: rejoined.at.saturating_duration_since(noticed_at),
            media: back.saturating_duration_since(rejoined.at),
            fresh_join: rejoined.by == Rejoin::FreshJoin,
            again: all.len() - first > 1,
            media_at_complete: self.others.iter().all(|o| last.media_at.contains_key(o)),
        }))
    }

    /// Why the watch has no sample yet.
    fn pending(&self, fault_at: Instant) -> String {
        match self
            .p
            .recoveries()
            .pop()
            .filter(|r| r.noticed_at >= fault_at)
        {
            None => "no fault noticed".into(),
            Some(r) => match (&r.rejoined, &self.current) {
                (None, _) => format!(
                    "{}; not rejoined after {} attempt(s), with {} fallback URL(s) from `joined`",
                    r.cause,
                    r.attempts,
                    self.p.joined().fallback_urls.len()
                ),
                (Some(j), Some((_, _, seen))) => {
                    let missing = self.others.iter().filter(|o| !seen.contains_key(*o));
                    let missing: Vec<&String> = missing.collect();
                    format!("rejoined on {}; no media from {missing:?}", j.node)
                }
                (Some(j), None) => format!("rejoined on {}; no media or not moved", j.node),
            },
        }
    }
}

/// `at` on the Unix clock, µs.
fn unix_us_at(at: Instant) -> u64 {
    let ago = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
    unix_now_us().saturating_sub(ago)
}
