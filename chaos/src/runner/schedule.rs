//! The fault schedule of a run: a pure function of the plan, the seed and the duration, so
//! the same seed replays the same faults at the same times on the same targets.
//!
//! Faults are spaced at least `spacing` apart (the recovery bound plus the longest pause,
//! chosen by the scenario), the first after `lead`, the last starting by the end of the
//! duration less one spacing, so each has the time to recover before the next and before
//! the end-of-run checks.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Serialize, Serializer};
use std::time::Duration;

/// No schedule is longer than this, whatever the duration: a soak of a day at 20 s apart
/// stays under it.
pub const MAX_FAULTS: usize = 10_000;

/// What a fault does, before a target is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL of a node, restarted once its participants recovered.
    KillNode,
    /// SIGKILL of the node serving the most participants when the fault runs (the target
    /// is the cluster's state, not the seed's), restarted once they recovered.
    KillBusiest,
    /// SIGSTOP of a node for `pause`, then SIGCONT.
    StopNode { pause: Duration },
    /// SIGKILL of nats-server, started again on the same port and store.
    RestartNats,
    /// Malformed frames, a forged token and garbage SDP sent to a node.
    Hostile,
    /// SIGKILL of a coordinator; a new room is placed while it is gone; then its restart.
    KillCoordinator,
    /// One node's NATS connection blackholed for `pause` (held open, nothing passes),
    /// then healed.
    CutNats { pause: Duration },
    /// A node pinned to one CPU with competing busy processes on it for `pause`.
    Starve { pause: Duration },
    /// Participants joining, publishing and leaving one room through a node, over and over
    /// for `pause`.
    Churn { pause: Duration },
    /// SIGKILL of one nats-server of a cluster of them; a new room is placed while it is
    /// gone; then its restart.
    KillNatsServer,
    /// The home region and the next one partitioned for `pause`, then healed.
    Partition { pause: Duration },
    /// The clients' link: 5 % loss, 40 ± 15 ms, and a 750 ms burst, for `pause`.
    ClientImpair { pause: Duration },
    /// The clients' link capped at 150 kbit/s each way for `pause`.
    SlowClient { pause: Duration },
}

impl FaultKind {
    /// How long the fault itself lasts before recovery can end.
    pub fn pause(&self) -> Duration {
        match self {
            FaultKind::StopNode { pause }
            | FaultKind::CutNats { pause }
            | FaultKind::Starve { pause }
            | FaultKind::Churn { pause }
            | FaultKind::Partition { pause }
            | FaultKind::ClientImpair { pause }
            | FaultKind::SlowClient { pause } => *pause,
            _ => Duration::ZERO,
        }
    }

    /// Whether a node is drawn as the target.
    fn targets_node(&self) -> bool {
        !matches!(
            self,
            FaultKind::RestartNats
                | FaultKind::KillBusiest
                | FaultKind::KillCoordinator
                | FaultKind::KillNatsServer
                | FaultKind::Partition { .. }
                | FaultKind::ClientImpair { .. }
                | FaultKind::SlowClient { .. }
        )
    }
}

/// One fault with its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    KillNode {
        node: String,
    },
    StopNode {
        node: String,
        #[serde(rename = "pause_ms", serialize_with = "ms")]
        pause: Duration,
    },
    KillBusiest,
    RestartNats,
    Hostile {
        node: String,
    },
    KillCoordinator {
        coordinator: String,
    },
    CutNats {
        node: String,
        #[serde(rename = "pause_ms", serialize_with = "ms")]
        pause: Duration,
    },
    Starve {
        node: String,
        #[serde(rename = "pause_ms", serialize_with = "ms")]
        pause: Duration,
    },
    Churn {
        node: String,
        #[serde(rename = "pause_ms", serialize_with = "ms")]
        pause: Duration,
    },
    KillNatsServer {
        server: String,
    },
    Partition {
        a: String,
        b: String,
        #[serde(rename = "pause_ms", serialize_with = "ms")]
        pause: Duration,
    },
    ClientImpair {
        region: String,
        #[serde(rename = "pause_ms", serialize_with = "ms")]
        pause: Duration,
    },
    SlowClient {
        region: String,
        #[serde(rename = "pause_ms", serialize_with = "ms")]
        pause: Duration,
    },
}

impl Fault {
    /// How long the fault itself lasts (a stopped node's pause), before recovery can end.
    pub fn lasts(&self) -> Duration {
        match self {
            Fault::StopNode { pause, .. }
            | Fault::CutNats { pause, .. }
            | Fault::Starve { pause, .. }
            | Fault::Churn { pause, .. }
            | Fault::Partition { pause, .. }
            | Fault::ClientImpair { pause, .. }
            | Fault::SlowClient { pause, .. } => *pause,
            _ => Duration::ZERO,
        }
    }

    /// The short name of the fault's kind, as in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillNode { .. } => "kill_node",
            Fault::StopNode { .. } => "stop_node",
            Fault::KillBusiest => "kill_busiest",
            Fault::RestartNats => "restart_nats",
            Fault::Hostile { .. } => "hostile",
            Fault::KillCoordinator { .. } => "kill_coordinator",
            Fault::CutNats { .. } => "cut_nats",
            Fault::Starve { .. } => "starve",
            Fault::Churn { .. } => "churn",
            Fault::KillNatsServer { .. } => "kill_nats_server",
            Fault::Partition { .. } => "partition",
            Fault::ClientImpair { .. } => "client_impair",
            Fault::SlowClient { .. } => "slow_client",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillNode { node } => write!(f, "kill -9 {node}, then restart it"),
            Fault::KillBusiest => write!(f, "kill -9 the busiest node, then restart it"),
            Fault::StopNode { node, pause } => write!(f, "SIGSTOP {node} for {pause:?}"),
            Fault::RestartNats => write!(f, "kill -9 nats-server, then restart it"),
            Fault::Hostile { node } => write!(f, "hostile client on {node}"),
            Fault::KillCoordinator { coordinator } => {
                write!(f, "kill -9 {coordinator}, place a new room, restart it")
            }
            Fault::CutNats { node, pause } => write!(f, "cut {node} from NATS for {pause:?}"),
            Fault::Starve { node, pause } => {
                write!(f, "starve {node} of CPU for {pause:?}")
            }
            Fault::Churn { node, pause } => {
                write!(f, "join/leave churn through {node} for {pause:?}")
            }
            Fault::KillNatsServer { server } => {
                write!(
                    f,
                    "kill -9 {server} (of the NATS cluster), place a new room, restart it"
                )
            }
            Fault::Partition { a, b, pause } => write!(f, "partition {a} | {b} for {pause:?}"),
            Fault::ClientImpair { region, pause } => write!(
                f,
                "{region} clients' link: 5 % loss, 40 ± 15 ms, a 750 ms burst, for {pause:?}"
            ),
            Fault::SlowClient { region, pause } => {
                write!(
                    f,
                    "{region} clients' link capped at 150 kbit/s for {pause:?}"
                )
            }
        }
    }
}

/// Who a fault can be aimed at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub nodes: Vec<String>,
    pub coordinators: Vec<String>,
    /// The nats-server ids (`nats`, `nats2`, …).
    pub nats_servers: Vec<String>,
    /// The regions with nodes, home first (a partition cuts the first two apart).
    pub regions: Vec<String>,
    /// The region of impaired clients (no node), for the client faults.
    pub client_region: Option<String>,
}

/// A fault at its time since the start of the fault phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    #[serde(rename = "at_ms", serialize_with = "ms")]
    pub at: Duration,
    #[serde(flatten)]
    pub fault: Fault,
}

/// Which faults a scenario injects: each of `exact` once, then draws from `fill` (by
/// weight) for as many more as the duration holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub exact: Vec<FaultKind>,
    pub fill: Vec<(FaultKind, u32)>,
}

/// Timing of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The fault phase: the last fault starts at most `duration - spacing` in.
    pub duration: Duration,
    /// Least time between two faults' starts (a paused fault's pause counts in addition).
    pub spacing: Duration,
    /// Time before the first fault.
    pub lead: Duration,
}

/// Draws the schedule: the faults in an order shuffled by `seed`, targets drawn from
/// `nodes`, times spread at random over the slack the spacing leaves. Fails when the exact
/// faults do not fit the duration, or a node fault has no node to target.
pub fn schedule(plan: &Plan, targets: &Targets, seed: u64, timing: Timing) -> Result<Vec<Step>> {
    let (nodes, coordinators) = (&targets.nodes, &targets.coordinators);
    let mut rng = StdRng::seed_from_u64(seed);
    let Timing {
        duration,
        spacing,
        lead,
    } = timing;
    if spacing.is_zero() {
        bail!("spacing must be positive");
    }
    // Room each fault takes: the spacing and, for a pause, the pause too.
    let room = |k: &FaultKind| spacing + k.pause();
    let window = duration.saturating_sub(lead);
    let mut kinds = plan.exact.clone();
    let needed: Duration = kinds.iter().map(room).sum();
    if needed > window {
        bail!(
            "{} faults need {needed:?} after a lead of {lead:?}; the duration {duration:?} is too short",
            kinds.len()
        );
    }
    let total_weight: u64 = plan.fill.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut used = needed;
    while total_weight > 0 && kinds.len() < MAX_FAULTS {
        let mut pick = rng.gen_range(0..total_weight);
        let Some(kind) = plan.fill.iter().find_map(|(k, w)| {
            let w = u64::from(*w);
            if pick < w {
                Some(*k)
            } else {
                pick -= w;
                None
            }
        }) else {
            break;
        };
        if used + room(&kind) > window {
            break;
        }
        used += room(&kind);
        kinds.push(kind);
    }
    kinds.truncate(MAX_FAULTS);
    kinds.shuffle(&mut rng);
    if nodes.is_empty() && kinds.iter().any(FaultKind::targets_node) {
        bail!("node faults need at least one node");
    }
    if coordinators.is_empty() && kinds.contains(&FaultKind::KillCoordinator) {
        bail!("a coordinator kill needs a coordinator");
    }
    if targets.nats_servers.len() < 2 && kinds.contains(&FaultKind::KillNatsServer) {
        bail!("killing one NATS server of several needs a NATS cluster");
    }
    if targets.regions.len() < 2
        && kinds
            .iter()
            .any(|k| matches!(k, FaultKind::Partition { .. }))
    {
        bail!("a partition needs two regions with nodes");
    }
    let client_fault = |k: &FaultKind| {
        matches!(
            k,
            FaultKind::ClientImpair { .. } | FaultKind::SlowClient { .. }
        )
    };
    if targets.client_region.is_none() && kinds.iter().any(client_fault) {
        bail!("a client fault needs a region of clients");
    }
    let client_region = targets.client_region.clone().unwrap_or_default();
    // Spread the slack: sorted uniform draws added to the back-to-back times.
    let slack = window - used;
    let mut extra: Vec<Duration> = (0..kinds.len())
        .map(|_| slack.mul_f64(rng.gen::<f64>()))
        .collect();
    extra.sort();
    let mut at = lead;
    let mut steps = Vec::with_capacity(kinds.len());
    for (kind, extra) in kinds.iter().zip(extra) {
        let mut pick = |from: &[String]| from[rng.gen_range(0..from.len())].clone();
        let mut node = || pick(nodes);
        let fault = match *kind {
            FaultKind::KillNode => Fault::KillNode { node: node() },
            FaultKind::StopNode { pause } => Fault::StopNode {
                node: node(),
                pause,
            },
            FaultKind::KillBusiest => Fault::KillBusiest,
            FaultKind::RestartNats => Fault::RestartNats,
            FaultKind::Hostile => Fault::Hostile { node: node() },
            FaultKind::KillCoordinator => Fault::KillCoordinator {
                coordinator: pick(coordinators),
            },
            FaultKind::CutNats { pause } => Fault::CutNats {
                node: node(),
                pause,
            },
            FaultKind::Starve { pause } => Fault::Starve {
                node: node(),
                pause,
            },
            FaultKind::Churn { pause } => Fault::Churn {
                node: node(),
                pause,
            },
            FaultKind::KillNatsServer => Fault::KillNatsServer {
                server: pick(&targets.nats_servers),
            },
            FaultKind::Partition { pause } => Fault::Partition {
                a: targets.regions[0].clone(),
                b: targets.regions[1].clone(),
                pause,
            },
            FaultKind::ClientImpair { pause } => Fault::ClientImpair {
                region: client_region.clone(),
                pause,
            },
            FaultKind::SlowClient { pause } => Fault::SlowClient {
                region: client_region.clone(),
                pause,
            },
        };
        steps.push(Step {
            at: at + extra,
            fault,
        });
        at += room(kind);
    }
    Ok(steps)
}

fn ms<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        ["n1", "n2", "n3"].map(String::from).to_vec()
    }

    fn targets() -> Targets {
        Targets {
            nodes: nodes(),
            coordinators: vec!["c1".into(), "c2".into()],
            nats_servers: vec!["nats".into(), "nats2".into(), "nats3".into()],
            regions: vec!["eu".into(), "us".into()],
            client_region: Some("eu-client".into()),
        }
    }

    fn soak() -> Plan {
        Plan {
            exact: vec![FaultKind::KillNode, FaultKind::RestartNats],
            fill: vec![
                (FaultKind::KillNode, 3),
                (FaultKind::KillBusiest, 1),
                (
                    FaultKind::StopNode {
                        pause: Duration::from_secs(5),
                    },
                    2,
                ),
                (FaultKind::RestartNats, 1),
                (FaultKind::Hostile, 2),
                (FaultKind::KillCoordinator, 1),
                (
                    FaultKind::CutNats {
                        pause: Duration::from_secs(8),
                    },
                    1,
                ),
                (
                    FaultKind::Starve {
                        pause: Duration::from_secs(10),
                    },
                    1,
                ),
                (
                    FaultKind::Churn {
                        pause: Duration::from_secs(10),
                    },
                    1,
                ),
                (FaultKind::KillNatsServer, 1),
                (
                    FaultKind::Partition {
                        pause: Duration::from_secs(8),
                    },
                    1,
                ),
                (
                    FaultKind::ClientImpair {
                        pause: Duration::from_secs(10),
                    },
                    1,
                ),
                (
                    FaultKind::SlowClient {
                        pause: Duration::from_secs(10),
                    },
                    1,
                ),
            ],
        }
    }

    #[test]
    fn every_kind_is_drawn_with_a_target_of_its_own_sort() {
        let steps = schedule(&soak(), &targets(), 11, timing(3000)).unwrap();
        let kinds: std::collections::BTreeSet<&str> =
            steps.iter().map(|s| s.fault.kind()).collect();
        assert_eq!(kinds.len(), 13, "{kinds:?}");
        for s in &steps {
            match &s.fault {
                Fault::KillCoordinator { coordinator } => {
                    assert!(targets().coordinators.contains(coordinator))
                }
                Fault::KillNode { node }
                | Fault::Hostile { node }
                | Fault::StopNode { node, .. }
                | Fault::CutNats { node, .. }
                | Fault::Starve { node, .. }
                | Fault::Churn { node, .. } => assert!(nodes().contains(node)),
                Fault::KillNatsServer { server } => {
                    assert!(targets().nats_servers.contains(server))
                }
                Fault::Partition { a, b, .. } => assert_eq!((a.as_str(), b.as_str()), ("eu", "us")),
                Fault::ClientImpair { region, .. } | Fault::SlowClient { region, .. } => {
                    assert_eq!(region, "eu-client")
                }
                Fault::KillBusiest | Fault::RestartNats => {}
            }
        }
        let no_coordinator = Targets {
            nodes: nodes(),
            ..Targets::default()
        };
        let plan = Plan {
            exact: vec![FaultKind::KillCoordinator],
            fill: Vec::new(),
        };
        assert!(schedule(&plan, &no_coordinator, 1, timing(600)).is_err());
        for kind in [
            FaultKind::Partition {
                pause: Duration::from_secs(1),
            },
            FaultKind::SlowClient {
                pause: Duration::from_secs(1),
            },
        ] {
            let plan = Plan {
                exact: vec![kind],
                fill: Vec::new(),
            };
            assert!(
                schedule(&plan, &no_coordinator, 1, timing(600)).is_err(),
                "{kind:?}"
            );
        }
    }

    fn timing(secs: u64) -> Timing {
        Timing {
            duration: Duration::from_secs(secs),
            spacing: Duration::from_secs(20),
            lead: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = schedule(&soak(), &targets(), 7, timing(600)).unwrap();
        let b = schedule(&soak(), &targets(), 7, timing(600)).unwrap();
        assert_eq!(a, b);
        assert!(a.len() > 5);
    }

    #[test]
    fn different_seeds_give_different_schedules() {
        let a = schedule(&soak(), &targets(), 1, timing(600)).unwrap();
        let distinct = (2..12)
            .filter(|s| schedule(&soak(), &targets(), *s, timing(600)).unwrap() != a)
            .count();
        assert_eq!(distinct, 10);
    }

    #[test]
    fn faults_are_spaced_and_within_the_duration() {
        for seed in 0..50 {
            let t = timing(400);
            let steps = schedule(&soak(), &targets(), seed, t).unwrap();
            assert!(steps[0].at >= t.lead);
            for w in steps.windows(2) {
                let gap = w[1].at - w[0].at;
                assert!(
                    gap >= t.spacing + w[0].fault.lasts(),
                    "seed {seed}: {gap:?}"
                );
            }
            let last = steps.last().unwrap();
            assert!(last.at + t.spacing + last.fault.lasts() <= t.duration);
            // Exact faults are always there.
            assert!(steps.iter().any(|s| s.fault == Fault::RestartNats));
            assert!(steps
                .iter()
                .any(|s| matches!(s.fault, Fault::KillNode { .. })));
        }
    }

    #[test]
    fn the_count_is_bounded_by_the_duration_and_the_cap() {
        let steps = schedule(&soak(), &targets(), 3, timing(205)).unwrap();
        assert!(steps.len() <= 10);
        let t = Timing {
            duration: Duration::from_secs(1_000_000),
            spacing: Duration::from_millis(1),
            lead: Duration::ZERO,
        };
        let steps = schedule(&soak(), &targets(), 3, t).unwrap();
        assert_eq!(steps.len(), MAX_FAULTS);
    }

    #[test]
    fn exact_faults_only_when_there_is_no_fill() {
        let plan = Plan {
            exact: vec![
                FaultKind::KillNode,
                FaultKind::RestartNats,
                FaultKind::Hostile,
            ],
            fill: Vec::new(),
        };
        let steps = schedule(&plan, &targets(), 9, timing(600)).unwrap();
        assert_eq!(steps.len(), 3);
        assert!(steps.iter().all(|s| match &s.fault {
            Fault::KillNode { node } | Fault::Hostile { node } => nodes().contains(node),
            _ => true,
        }));
    }

    #[test]
    fn a_duration_too_short_for_the_exact_faults_is_refused() {
        let plan = Plan {
            exact: vec![FaultKind::KillNode; 3],
            fill: Vec::new(),
        };
        assert!(schedule(&plan, &targets(), 1, timing(60)).is_err());
        assert!(schedule(&plan, &Targets::default(), 1, timing(600)).is_err());
    }
}
