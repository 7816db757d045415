//! `chaos run <scenario>`: starts a cluster ([`crate::sandbox`]), puts publishing
//! participants in several rooms, injects the faults of a seeded schedule
//! ([`schedule::schedule`]) and judges the invariants ([`crate::invariants`]).
//!
//! The calling contract:
//! - [`plan`] is pure: the same scenario, seed and duration give the same schedule, which
//!   `--dry-run` prints without starting anything.
//! - [`run`] returns the [`Report`] whether or not the invariants held; it fails only when
//!   the run cannot start (the cluster, the first media). Every wait in it is bounded; the
//!   cluster is stopped on every path (dropping it kills what still runs).
//! - After each fault: per (receiver, publisher) link, the first packet after the fault
//!   over settled connections ([`observe`]), judged by `everyone_receives` against the
//!   scenario's recovery bound. At the end: single origin per epoch on every room's KV
//!   history, exact membership, bad input contained (when a hostile client ran), nothing
//!   leaks once everyone left, no panic in any log.

mod checks;
pub mod faults;
pub mod hostile;
pub mod monitor;
mod observe;
pub mod regions;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod suite;
pub mod timeline;

use crate::bench;
use crate::invariants::{
    bad_input_contained, everyone_receives, live_nodes, memory_bounded, recovery_times,
    single_origin, Bystander, Death, HostileOutcome, Invariant,
};
use crate::sandbox::{Cluster, ClusterSpec, NodeSpec};
use crate::{mint_tokens, ClientConfig, Participant, ParticipantConfig, PublishOpts};
use anyhow::{bail, Context, Result};
use faults::NatsCuts;
use monitor::Monitor;
use observe::Room;
use protocol::token::Claims;
use protocol::{NodeId, RoomId, UserId};
use regions::Regions;
use report::{FaultRecord, Report};
use scenario::Scenario;
use schedule::{Fault, Step};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// Bound on the first media, a restart, and the coordinators seeing every node again.
const SETTLE: Duration = Duration::from_secs(30);
/// Bound on membership converging, and on counters reaching zero once everyone left.
const CONVERGE: Duration = Duration::from_secs(30);
const PORTS_PER_NODE: u16 = 200;
/// One-way delay between regions.
const REGION_DELAY: Duration = Duration::from_millis(20);
/// Rooms gone 1 s after emptying, so the end-of-run leak check sees them go.
const ROOM_GRACE: &str = "--room-empty-grace-secs=1";

/// What `chaos run` was asked.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub seed: u64,
    /// The fault phase; the scenario's default when `None`.
    pub duration: Option<Duration>,
    pub bins: bench::Binaries,
    /// Run directory for the logs; a fresh one under the temp dir when `None`.
    pub dir: Option<PathBuf>,
    /// First UDP port of n1's media range; the next nodes follow, 200 ports each.
    pub udp_base: u16,
    /// The `--cluster` file the scenario's shape came from, for the replay command.
    pub cluster_file: Option<PathBuf>,
}

impl RunConfig {
    /// The command that replays this run's schedule.
    pub fn replay(&self) -> String {
        let t = self.scenario.timing(self.duration);
        let file = self
            .cluster_file
            .as_ref()
            .map(|f| format!(" --cluster {}", f.display()))
            .unwrap_or_default();
        format!(
            "chaos run {} --seed {} --duration {}s{file}",
            self.scenario.name,
            self.seed,
            t.duration.as_secs()
        )
    }
}

/// The run's schedule.
pub fn plan(cfg: &RunConfig) -> Result<Vec<Step>> {
    let s = &cfg.scenario;
    schedule::schedule(&s.plan, &s.targets(), cfg.seed, s.timing(cfg.duration))
}

/// Runs the scenario; see the module documentation.
pub async fn run(cfg: &RunConfig) -> Result<Report> {
    let steps = plan(cfg)?;
    let s = &cfg.scenario;
    let timing = s.timing(cfg.duration);
    let dir = bench::run_dir(&format!("chaos-{}", s.name), cfg.dir.as_deref())?;
    let mut spec = cluster_spec(cfg, dir.join("cluster"))?;
    // Each node reaches NATS through a proxy of its own when a step cuts one off.
    let cuts = if steps
        .iter()
        .any(|st| matches!(st.fault, Fault::CutNats { .. }))
    {
        let port = bench::free_port()?;
        spec.nats.port = Some(port);
        let cuts = NatsCuts::start(&s.node_ids(), ([127, 0, 0, 1], port).into()).await?;
        for n in &mut spec.nodes {
            n.nats_url = cuts.url(&n.id);
        }
        Some(cuts)
    } else {
        None
    };
    // Regions: the nodes on their subnets behind gateways (kept until the end of the run).
    let regions = if s.regions.is_empty() {
        None
    } else {
        Some(
            regions::lay_out(
                &mut spec,
                s.regions,
                cfg.udp_base,
                PORTS_PER_NODE,
                REGION_DELAY,
                cfg.seed,
                &[ROOM_GRACE.to_owned()],
            )
            .await?,
        )
    };
    let mut cluster = Cluster::start(spec).await?;
    eprintln!("== cluster is up; {} faults scheduled", steps.len());
    let mut report = Report {
        scenario: s.name.to_owned(),
        seed: cfg.seed,
        duration_ms: timing.duration.as_millis() as u64,
        recovery_bound_ms: s.recovery_bound.as_millis() as u64,
        command: cfg.replay(),
        schedule: steps.clone(),
        faults: Vec::new(),
        invariants: Vec::new(),
        errors: Vec::new(),
        logs: dir.join("cluster").display().to_string(),
        passed: false,
        timeline_svg: None,
    };
    let baseline = checks::rss(&cluster);
    let t0 = Instant::now();
    let rooms = match open_rooms(s, &cluster, regions.as_ref()).await {
        Ok(r) => r,
        Err(e) => {
            cluster.stop();
            return Err(e.context(format!("logs in {}", report.logs)));
        }
    };
    eprintln!("== {} rooms: everyone receives everyone", rooms.len());
    let monitor = Monitor::start(
        cluster.nats_url(),
        rooms.iter().map(|r| r.id.clone()).collect(),
        cluster.pids(),
        t0,
        timing.duration + Duration::from_secs(600),
    );
    let mut hostile = Vec::new();
    let mut bystanders = Vec::new();
    let mut deaths = Vec::new();
    let start = Instant::now();
    let (stop_sampling, sampling_stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = timeline::record(
        &rooms,
        start,
        timeline::EVERY,
        timeline::sample_cap(timing.duration, timeline::EVERY),
        async {
            let _ = sampling_stopped.await;
        },
    );
    let fault_phase = async {
        for (i, step) in steps.iter().enumerate() {
            tokio::time::sleep_until(start + step.at).await;
            let injected = start.elapsed();
            eprintln!("== {:.1?}: {}", injected, step.fault);
            let tag = format!("{}x{i}", cfg.seed);
            let env = Env {
                rooms: &rooms,
                scenario: s,
                tag: &tag,
                t0,
                cuts: cuts.as_ref(),
                regions: regions.as_ref(),
            };
            let injected_result = inject(&mut cluster, &env, step).await;
            monitor.set_pids(cluster.pids());
            match injected_result {
                Ok(done) => {
                    let recovery = recovery_times(&done.receptions);
                    eprintln!(
                        "   {} links, never {}, p50 {:?} p99 {:?} max {:?}",
                        recovery.links, recovery.never, recovery.p50, recovery.p99, recovery.max
                    );
                    hostile.extend(done.hostile);
                    bystanders.extend(done.bystanders);
                    deaths.extend(done.deaths);
                    report.faults.push(FaultRecord {
                        step: step.clone(),
                        injected_ms: injected.as_millis() as u64,
                        recovery,
                        everyone_receives: everyone_receives(
                            &done.receptions,
                            s.bound_for(&step.fault),
                        ),
                        participant_recoveries: done.recoveries,
                        notes: done.notes,
                        packets_lost: None,
                    });
                }
                Err(e) => {
                    eprintln!("   failed: {e:#}");
                    report
                        .errors
                        .push(format!("fault {} ({}): {e:#}", i + 1, step.fault));
                }
            }
        }
        // The phase lasts as long as asked, also after the last fault.
        tokio::time::sleep_until(start + timing.duration).await;
        let _ = stop_sampling.send(());
    };
    let (samples, ()) = tokio::join!(sampler, fault_phase);
    timeline::fill_packets_lost(&mut report.faults, &samples);
    report.timeline_svg = Some(timeline::render_svg(
        &format!("chaos run {} (seed {})", s.name, cfg.seed),
        &samples,
        &timeline::markers(&report.faults),
    ));
    eprintln!("== checking the invariants");
    let observed = monitor.finish(cluster.nats_url(), t0).await;
    report.invariants.push(checks::merge(
        Invariant::SingleOrigin,
        rooms
            .iter()
            .map(|r| single_origin(&r.id, &observed.history(&r.id)))
            .collect(),
    ));
    let until = t0.elapsed();
    report.invariants.push(checks::merge(
        Invariant::LiveNodes,
        rooms
            .iter()
            .map(|r| {
                live_nodes(
                    &r.id,
                    &observed.timeline(&r.id),
                    &deaths,
                    until,
                    s.failover_bound,
                )
            })
            .collect(),
    ));
    report.invariants.push(memory_bounded(
        &observed.rss_series(),
        s.memory_cap_mib * 1024,
    ));
    if observed.failed_reads > 0 {
        eprintln!(
            "   {} KV reads failed during the run (last: {})",
            observed.failed_reads,
            observed.last_error.as_deref().unwrap_or("-")
        );
    }
    report
        .invariants
        .push(checks::membership(&cluster, &rooms, CONVERGE).await);
    if !hostile.is_empty() {
        report
            .invariants
            .push(bad_input_contained(&hostile, &bystanders));
    }
    leave_all(&rooms).await;
    report
        .invariants
        .push(checks::leaks(&cluster, &baseline, CONVERGE).await);
    let exited: Vec<String> = cluster.first_exited().into_iter().collect();
    cluster.stop();
    report
        .invariants
        .push(checks::logs(&cluster, s.allowed_errors, &exited));
    report.compute_passed();
    Ok(report)
}

/// 2 coordinators and the scenario's nodes, all in `eu`, rooms gone 1 s after emptying.
fn cluster_spec(cfg: &RunConfig, dir: PathBuf) -> Result<ClusterSpec> {
    let s = &cfg.scenario;
    let mut spec = cfg
        .bins
        .apply(ClusterSpec::new(dir))
        .nats_servers(s.nats_servers);
    spec.child_log = "info,webrtc=warn,rtc=error,rtc_ice=warn,rtc_dtls=error,rtc_srtp=error".into();
    for c in s.coordinator_ids() {
        spec = spec.coordinator(&c);
    }
    // With regions, `regions::lay_out` adds the nodes.
    let plain = if s.regions.is_empty() {
        s.node_ids()
    } else {
        Vec::new()
    };
    for (i, id) in plain.iter().enumerate() {
        let lo = u32::from(cfg.udp_base) + i as u32 * u32::from(PORTS_PER_NODE);
        let hi = lo + u32::from(PORTS_PER_NODE) - 1;
        let (lo, hi) = (
            u16::try_from(lo)?,
            u16::try_from(hi).context("--udp-base too high")?,
        );
        spec = spec.node(NodeSpec::new(id, "eu", (lo, hi)).flag(ROOM_GRACE));
    }
    if s.regions.is_empty() {
        spec.validate()?;
    }
    Ok(spec)
}

/// The scenario's rooms, member `j` of room `i` joining through node `(i + j) % nodes`;
/// returns once everyone receives everyone (bounded by [`SETTLE`]).
async fn open_rooms(
    s: &Scenario,
    cluster: &Cluster,
    regions: Option<&Regions>,
) -> Result<Vec<Room>> {
    let started = Instant::now();
    let nodes = s.node_ids();
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let open = (0..s.rooms).map(|i| {
        let nodes = &nodes;
        let tag = &tag;
        async move {
            let id = RoomId::new(format!("chaos{tag}r{i}"))?;
            let mut room = Room {
                id: id.clone(),
                members: Vec::new(),
                ids: Vec::new(),
            };
            for j in 0..s.per_room {
                // The user id carries the room: a node keeps one session per user id.
                let user = UserId::new(format!("p{j}@{id}"))?;
                let claims = Claims::new(id.clone(), user.clone(), 0, 0);
                let tokens =
                    mint_tokens(cluster.api_secret(), claims, Duration::from_secs(24 * 3600));
                let node = &nodes[(i + j) % nodes.len()];
                let region = s.region_of(node);
                // Under regions: a client of the node's region (member 0 of a room behind
                // the client-only region's link when the scenario has one).
                let n = u8::try_from(i * s.per_room + j).context("too many participants")?;
                let placed = match (regions, s.client_region) {
                    (Some(r), Some(c)) if j == 0 => r.placed_client_config(c, n),
                    (Some(r), _) => r.client_config(&region, n),
                    (None, _) => None,
                };
                let config = ParticipantConfig {
                    client: placed.unwrap_or(ClientConfig {
                        ice_check_interval: Some(Duration::from_millis(50)),
                        ..ClientConfig::default()
                    }),
                    region: Some(region),
                    ..ParticipantConfig::default()
                };
                let ws = cluster.node(node)?.ws_url();
                let p = Participant::join(&ws, id.as_str(), tokens, config).await?;
                p.publish(PublishOpts {
                    audio: false,
                    video: true,
                    video_pps: s.video_pps,
                    ..PublishOpts::default()
                })
                .await?;
                room.members.push(p);
                room.ids.push(user);
            }
            anyhow::Ok(room)
        }
    });
    let rooms = futures::future::try_join_all(open).await?;
    for room in &rooms {
        for (p, id) in room.members.iter().zip(&room.ids) {
            for other in room.ids.iter().filter(|o| *o != id) {
                p.wait_media_since(other.as_str(), started, SETTLE)
                    .await
                    .with_context(|| format!("{id} before the first fault"))?;
            }
        }
    }
    Ok(rooms)
}

/// Everyone leaves, each bounded by 5 s.
async fn leave_all(rooms: &[Room]) {
    Participant::leave_all(rooms.iter().flat_map(|r| &r.members)).await;
}

/// What one injected fault produced.
struct Injected {
    receptions: Vec<crate::invariants::RoomReception>,
    recoveries: usize,
    notes: Vec<String>,
    hostile: Vec<HostileOutcome>,
    bystanders: Vec<Bystander>,
    /// Nodes the cluster had to find dead (killed, stopped, cut from NATS), and when they
    /// were back, since the run's start.
    deaths: Vec<Death>,
}

/// What every fault is injected into.
struct Env<'a> {
    rooms: &'a [Room],
    scenario: &'a Scenario,
    /// Unique per fault, for the names of what a fault creates.
    tag: &'a str,
    /// The run's start: times in [`Death`] count from it.
    t0: Instant,
    cuts: Option<&'a NatsCuts>,
    regions: Option<&'a Regions>,
}

impl Env<'_> {
    /// `node` dead from `at` until `back` (restarted, continued, healed).
    fn death(&self, node: &str, at: Instant, back: Instant) -> Result<Death> {
        Ok(Death {
            node: NodeId::new(node)?,
            at: at - self.t0,
            back: Some(back - self.t0),
        })
    }
}

/// Injects `step`'s fault, watches the rooms recover, repairs what the fault broke.
async fn inject(cluster: &mut Cluster, env: &Env<'_>, step: &Step) -> Result<Injected> {
    let rooms = env.rooms;
    let bound = env.scenario.bound_for(&step.fault);
    let tag = env.tag;
    let mut notes = Vec::new();
    let mut hostile = Vec::new();
    let mut bystanders = Vec::new();
    let mut deaths = Vec::new();
    let fault_at = Instant::now();
    let (receptions, recoveries) = match &step.fault {
        Fault::KillNode { .. } | Fault::KillBusiest => {
            let node = match &step.fault {
                Fault::KillNode { node } => node.clone(),
                _ => busiest(rooms).context("no participant to find the busiest node by")?,
            };
            let node = &node;
            notes.push(format!("killed {node}"));
            cluster.proc_mut(node)?.signal("KILL")?;
            let seen = observe::watch(rooms, fault_at, bound).await;
            let t = Instant::now();
            cluster.restart(node, SETTLE).await?;
            deaths.push(env.death(node, fault_at, Instant::now())?);
            all_ready(cluster).await?;
            notes.push(format!(
                "{node} restarted and seen by every coordinator in {:.1?}",
                t.elapsed()
            ));
            seen
        }
        Fault::StopNode { node, pause } => {
            cluster.proc_mut(node)?.signal("STOP")?;
            let cont = async {
                tokio::time::sleep(*pause).await;
                cluster.proc_mut(node)?.signal("CONT")?;
                anyhow::Ok(Instant::now())
            };
            let (seen, cont) = tokio::join!(observe::watch(rooms, fault_at, bound), cont);
            deaths.push(env.death(node, fault_at, cont?)?);
            all_ready(cluster).await?;
            seen
        }
        // A control-plane process dies: a new room must still be placed meanwhile.
        Fault::KillCoordinator {
            coordinator: victim,
        }
        | Fault::KillNatsServer { server: victim } => {
            let ws = first_node_ws(cluster)?;
            cluster.proc_mut(victim)?.signal("KILL")?;
            notes.push(format!("killed {victim}"));
            let place = faults::place_new_room(&ws, cluster.api_secret(), tag);
            let (seen, placed) = tokio::join!(observe::watch(rooms, fault_at, bound), place);
            let t = Instant::now();
            // `restart` waits for /readyz, or for a nats-server's greeting.
            cluster.restart(victim, SETTLE).await?;
            all_ready(cluster).await?;
            notes.push(format!(
                "{victim} restarted and ready in {:.1?}",
                t.elapsed()
            ));
            let took = placed.with_context(|| format!("a new room with {victim} dead"))?;
            notes.push(format!(
                "a new room was placed in {took:.1?} with {victim} dead"
            ));
            seen
        }
        Fault::Partition { a, b, pause } => {
            let r = env.regions.context("the scenario has no regions")?;
            let dropped = |r: &Regions| {
                r.pair_stats(a, b).map_or(0, |p| {
                    p.link.forward.dropped_partition + p.link.reverse.dropped_partition
                })
            };
            let before = dropped(r);
            r.partition(a, b, true)?;
            let heal = async {
                tokio::time::sleep(*pause).await;
                r.partition(a, b, false)?;
                anyhow::Ok(Instant::now())
            };
            let (seen, healed) = tokio::join!(observe::watch(rooms, fault_at, bound), heal);
            let healed = healed?;
            notes.push(format!(
                "{a} | {b} for {pause:?}: {} packets dropped",
                dropped(r) - before
            ));
            all_ready(cluster).await?;
            // The region cut off from the home region lost NATS: its nodes were found dead.
            let cut_off = if r.regions().first() == Some(a) { b } else { a };
            for node in r.nodes_in(cut_off) {
                deaths.push(env.death(&node, fault_at, healed)?);
            }
            seen
        }
        Fault::ClientImpair { region, pause } | Fault::SlowClient { region, pause } => {
            let r = env.regions.context("the scenario has no regions")?;
            let home = r.regions().first().context("no region")?.clone();
            let link = r.geo().link(&home, region).context("no client link")?;
            let base = link.impairment();
            let before = link.stats();
            let slow = matches!(step.fault, Fault::SlowClient { .. });
            r.geo().update_link(&home, region, |i| {
                if slow {
                    i.rate_bps = Some(150_000);
                } else {
                    i.loss = 0.05;
                    i.delay = Duration::from_millis(40);
                    i.jitter = Duration::from_millis(15);
                }
            });
            let run = async {
                if !slow {
                    // A burst: everything lost for 750 ms in the middle.
                    tokio::time::sleep(*pause / 2).await;
                    r.geo().partition(&home, region, true);
                    tokio::time::sleep(Duration::from_millis(750)).await;
                    r.geo().partition(&home, region, false);
                    tokio::time::sleep((*pause / 2).saturating_sub(Duration::from_millis(750)))
                        .await;
                } else {
                    tokio::time::sleep(*pause).await;
                }
                r.geo().update_link(&home, region, |i| *i = base);
            };
            let (seen, ()) = tokio::join!(observe::watch(rooms, fault_at, bound), run);
            let after = link.stats();
            let d = |f: fn(&crate::impair::DirectionStats) -> u64| {
                f(&after.forward) + f(&after.reverse) - f(&before.forward) - f(&before.reverse)
            };
            notes.push(format!(
                "{region} link: {} packets passed, {} lost, {} in the burst, {} over the rate cap",
                d(|s| s.packets),
                d(|s| s.dropped_loss),
                d(|s| s.dropped_partition),
                d(|s| s.dropped_overflow)
            ));
            all_ready(cluster).await?;
            seen
        }
        Fault::CutNats { node, pause } => {
            let cuts = env.cuts.context("the cluster has no NATS proxies")?;
            cuts.cut(node, true)?;
            let heal = async {
                tokio::time::sleep(*pause).await;
                cuts.cut(node, false)?;
                anyhow::Ok(Instant::now())
            };
            let (seen, healed) = tokio::join!(observe::watch(rooms, fault_at, bound), heal);
            let healed = healed?;
            notes.push(format!(
                "{node}'s NATS link held {} connections while cut",
                cuts.connections(node)
            ));
            deaths.push(env.death(node, fault_at, healed)?);
            all_ready(cluster).await?;
            seen
        }
        Fault::Starve { node, pause } => {
            let starved = faults::Starvation::begin(cluster.node(node)?.pid())?;
            let (seen, ()) = tokio::join!(
                observe::watch(rooms, fault_at, bound),
                tokio::time::sleep(*pause)
            );
            let share = starved.end()?;
            notes.push(format!(
                "{node} shared a CPU with {} busy processes: it got {:.0} % of a CPU",
                faults::HOGS,
                share * 100.0
            ));
            all_ready(cluster).await?;
            seen
        }
        Fault::Churn { node, pause } => {
            let ws = cluster.node(node)?.ws_url();
            let room = &rooms[0];
            let churn = faults::churn(
                &ws,
                &room.id,
                &room.ids[0],
                cluster.api_secret(),
                tag,
                *pause,
            );
            let (seen, churned) = tokio::join!(observe::watch(rooms, fault_at, bound), churn);
            notes.push(format!(
                "{} churn cycles in {}, {} failed",
                churned.cycles, room.id, churned.failed
            ));
            if churned.failed > 0 {
                bail!(
                    "{} of {} churn cycles failed: {}",
                    churned.failed,
                    churned.cycles,
                    churned.failures.join("; ")
                );
            }
            seen
        }
        Fault::RestartNats => {
            cluster.proc_mut("nats")?.signal("KILL")?;
            // Watched from the kill on: media may well flow on while NATS is away.
            let restart = async {
                let r = cluster.restart("nats", SETTLE).await;
                (r, fault_at.elapsed())
            };
            let (seen, (restarted, took)) =
                tokio::join!(observe::watch(rooms, fault_at, bound), restart);
            restarted?;
            notes.push(format!(
                "nats-server answered again {took:.1?} after its kill"
            ));
            all_ready(cluster).await?;
            seen
        }
        Fault::Hostile { node } => {
            let ws = cluster.node(node)?.ws_url();
            let attack = hostile::run(&ws, rooms[0].id.as_str(), cluster.api_secret(), tag);
            let (seen, (outcomes, n)) =
                tokio::join!(observe::watch(rooms, fault_at, bound), attack);
            notes.extend(n);
            hostile = outcomes;
            for room in rooms {
                let reception = seen.0.iter().find(|r| r.room == room.id);
                for (p, id) in room.members.iter().zip(&room.ids) {
                    let kept_socket = !p.recoveries().iter().any(|r| r.noticed_at >= fault_at);
                    let kept_media = reception.is_some_and(|r| {
                        room.ids.iter().filter(|o| *o != id).all(|o| {
                            r.links().any(|(l, t)| {
                                &l.receiver == id
                                    && &l.publisher == o
                                    && t.is_some_and(|t| t <= bound)
                            })
                        })
                    });
                    bystanders.push(Bystander {
                        client: id.clone(),
                        kept_socket,
                        kept_media,
                    });
                }
            }
            seen
        }
    };
    Ok(Injected {
        receptions,
        recoveries,
        notes,
        hostile,
        bystanders,
        deaths,
    })
}

/// The first node's WebSocket URL.
fn first_node_ws(cluster: &Cluster) -> Result<String> {
    Ok(cluster
        .nodes()
        .next()
        .context("the cluster has no node")?
        .ws_url())
}

/// The node serving the most participants (`joined.node`), the first by id on a tie.
fn busiest(rooms: &[Room]) -> Option<String> {
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for p in rooms.iter().flat_map(|r| &r.members) {
        *served.entry(p.joined().node.to_string()).or_default() += 1;
    }
    let most = served.values().copied().max()?;
    served
        .into_iter()
        .find(|(_, n)| *n == most)
        .map(|(node, _)| node)
}

/// Every process ready and every coordinator seeing every node, bounded by [`SETTLE`].
async fn all_ready(cluster: &mut Cluster) -> Result<()> {
    if let Some(dead) = cluster.first_exited() {
        bail!("{dead} has exited");
    }
    let cluster = &*cluster;
    crate::wait_until(SETTLE, "every coordinator to count every node", || async {
        let waiting = cluster.not_ready().await;
        waiting
            .is_empty()
            .then_some(())
            .ok_or_else(|| waiting.join("; "))
    })
    .await
}
