//! The scenario catalogue: what cluster to start, how many participants, which faults and
//! how long to recover from each.

use super::schedule::{FaultKind, Plan, Targets, Timing};
use anyhow::{bail, Result};
use std::time::Duration;

/// One named scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub coordinators: usize,
    /// nats-servers: 1, or a cluster of 3.
    pub nats_servers: usize,
    /// Nodes `n1`..`nN`, all in region `eu` (when `regions` is empty).
    pub nodes: usize,
    /// Regions on loopback subnets with 20 ms between them ([`super::regions`]), each with
    /// its count of nodes `<region>-<k>`; a region of 0 nodes holds clients only. Empty:
    /// `nodes` nodes on 127.0.0.1.
    pub regions: &'static [(&'static str, usize)],
    /// The client-only region: member 0 of every room sits there, behind its link.
    pub client_region: Option<&'static str>,
    pub rooms: usize,
    /// Publishing participants per room; each publishes video only.
    pub per_room: usize,
    pub video_pps: u32,
    pub plan: Plan,
    /// The fault phase when `--duration` is not given.
    pub default_duration: Duration,
    /// Fault → every participant receiving every other again.
    pub recovery_bound: Duration,
    /// A dead node out of every room entry (KV), from its death.
    pub failover_bound: Duration,
    /// No process's RSS above this.
    pub memory_cap_mib: u64,
    /// Substrings of ERROR log lines the scenario provokes on purpose.
    pub allowed_errors: &'static [&'static str],
}

/// The cluster and load of a run as a file gives them (`chaos run <scenario> --cluster
/// FILE`, TOML); what it leaves out keeps the scenario's value. Example:
///
/// ```toml
/// coordinators = 3
/// nats_servers = 3
/// nodes = 4                 # n1..n4 on 127.0.0.1, or regions:
/// # regions = [["eu", 2], ["us", 2]]
/// rooms = 6
/// per_room = 4
/// video_pps = 60
/// recovery_bound_secs = 20
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub coordinators: Option<usize>,
    pub nats_servers: Option<usize>,
    pub nodes: Option<usize>,
    pub regions: Option<Vec<(String, usize)>>,
    pub client_region: Option<String>,
    pub rooms: Option<usize>,
    pub per_room: Option<usize>,
    pub video_pps: Option<u32>,
    pub recovery_bound_secs: Option<u64>,
}

impl ClusterFile {
    pub fn parse(text: &str) -> Result<ClusterFile> {
        let f: ClusterFile = toml::from_str(text)?;
        if f.coordinators == Some(0) || f.rooms == Some(0) || f.per_room.is_some_and(|n| n < 2) {
            bail!("a run needs a coordinator, a room and two participants per room");
        }
        if f.nodes.is_some() && f.regions.is_some() {
            bail!("give nodes or regions, not both");
        }
        Ok(f)
    }

    /// `scenario` with this file's cluster and load. The strings a file gives live as long
    /// as the process (a run reads one file once).
    pub fn apply(&self, mut s: Scenario) -> Scenario {
        fn keep(v: String) -> &'static str {
            Box::leak(v.into_boxed_str())
        }
        s.coordinators = self.coordinators.unwrap_or(s.coordinators);
        s.nats_servers = self.nats_servers.unwrap_or(s.nats_servers);
        if let Some(n) = self.nodes {
            s.nodes = n;
            s.regions = &[];
        }
        if let Some(r) = &self.regions {
            let r: Vec<(&'static str, usize)> =
                r.iter().map(|(name, n)| (keep(name.clone()), *n)).collect();
            s.regions = Box::leak(r.into_boxed_slice());
        }
        if let Some(c) = &self.client_region {
            s.client_region = Some(keep(c.clone()));
        }
        s.rooms = self.rooms.unwrap_or(s.rooms);
        s.per_room = self.per_room.unwrap_or(s.per_room);
        s.video_pps = self.video_pps.unwrap_or(s.video_pps);
        if let Some(b) = self.recovery_bound_secs {
            s.recovery_bound = Duration::from_secs(b);
        }
        s
    }
}

/// Time before the first fault of every scenario.
pub const LEAD: Duration = Duration::from_secs(5);
/// Added to the recovery bound between two faults: the repair (a restart) and a margin.
pub const REPAIR: Duration = Duration::from_secs(10);
const PAUSE: Duration = Duration::from_secs(5);
/// A NATS cut long enough for the node to be found dead (3 s of heartbeat silence) and to
/// fence itself (`--node-timeout-ms`, 3 s) while its participants move.
const CUT: Duration = Duration::from_secs(8);
/// CPU starvation and churn last this long.
const STRESS: Duration = Duration::from_secs(15);

/// The names `chaos run` accepts.
pub const NAMES: [&str; 13] = [
    "smoke",
    "soak",
    "kill",
    "stop",
    "nats",
    "hostile",
    "coordinator",
    "cut",
    "starve",
    "churn",
    "nats3",
    "partition",
    "client",
];

impl Scenario {
    /// The scenario called `name`.
    pub fn named(name: &str) -> Result<Scenario> {
        let base = Scenario {
            name: "",
            about: "",
            coordinators: 2,
            nats_servers: 1,
            nodes: 3,
            regions: &[],
            client_region: None,
            rooms: 3,
            per_room: 3,
            video_pps: 30,
            plan: Plan::default(),
            default_duration: Duration::from_secs(60),
            recovery_bound: Duration::from_secs(15),
            failover_bound: Duration::from_secs(5),
            memory_cap_mib: 512,
            allowed_errors: &[],
        };
        let one = |kind: FaultKind| Plan {
            exact: vec![kind],
            fill: Vec::new(),
        };
        Ok(match name {
            "smoke" => Scenario {
                name: "smoke",
                about: "kill -9 of the busiest node and its restart, nats-server kill -9 \
                        and restart, a hostile client",
                plan: Plan {
                    exact: vec![
                        FaultKind::KillBusiest,
                        FaultKind::RestartNats,
                        FaultKind::Hostile,
                    ],
                    fill: Vec::new(),
                },
                default_duration: Duration::from_secs(90),
                ..base
            },
            "soak" => Scenario {
                name: "soak",
                about: "every implemented fault, drawn by weight for as long as asked",
                plan: Plan {
                    exact: Vec::new(),
                    fill: vec![
                        (FaultKind::KillNode, 2),
                        (FaultKind::KillBusiest, 2),
                        (FaultKind::StopNode { pause: PAUSE }, 2),
                        (FaultKind::RestartNats, 1),
                        (FaultKind::Hostile, 2),
                        (FaultKind::KillCoordinator, 1),
                        (FaultKind::CutNats { pause: CUT }, 1),
                        (FaultKind::Starve { pause: STRESS }, 1),
                        (FaultKind::Churn { pause: STRESS }, 1),
                    ],
                },
                default_duration: Duration::from_secs(600),
                ..base
            },
            "kill" => Scenario {
                name: "kill",
                about: "one node kill -9, then its restart",
                plan: one(FaultKind::KillNode),
                ..base
            },
            "stop" => Scenario {
                name: "stop",
                about: "one node SIGSTOP for 5 s, then SIGCONT",
                plan: one(FaultKind::StopNode { pause: PAUSE }),
                ..base
            },
            "nats" => Scenario {
                name: "nats",
                about: "nats-server kill -9, then its restart",
                plan: one(FaultKind::RestartNats),
                ..base
            },
            "hostile" => Scenario {
                name: "hostile",
                about: "a hostile client: malformed frames, a forged token, garbage SDP",
                plan: one(FaultKind::Hostile),
                ..base
            },
            "coordinator" => Scenario {
                name: "coordinator",
                about: "one coordinator kill -9; a new room is placed by the other; restart",
                plan: one(FaultKind::KillCoordinator),
                ..base
            },
            "cut" => Scenario {
                name: "cut",
                about: "one node cut from NATS for 8 s (connection held, nothing passes)",
                plan: one(FaultKind::CutNats { pause: CUT }),
                ..base
            },
            "starve" => Scenario {
                name: "starve",
                about: "one node pinned to a CPU shared with 4 busy processes for 15 s",
                plan: one(FaultKind::Starve { pause: STRESS }),
                ..base
            },
            "churn" => Scenario {
                name: "churn",
                about: "participants joining, publishing and leaving a room for 15 s",
                plan: one(FaultKind::Churn { pause: STRESS }),
                ..base
            },
            "nats3" => Scenario {
                name: "nats3",
                about: "kill -9 of one of three clustered nats-servers; a new room is placed \
                        while it is gone; restart",
                nats_servers: 3,
                plan: one(FaultKind::KillNatsServer),
                ..base
            },
            "partition" => Scenario {
                name: "partition",
                about: "regions eu and us (2 nodes each) partitioned for 8 s, then healed",
                regions: &[("eu", 2), ("us", 2)],
                plan: one(FaultKind::Partition { pause: CUT }),
                ..base
            },
            "client" => Scenario {
                name: "client",
                about: "one participant per room behind its own link: 5 % loss, 40 ± 15 ms and a \
                        750 ms burst, then capped at 150 kbit/s",
                regions: &[("eu", 3), ("eu-client", 0)],
                client_region: Some("eu-client"),
                plan: Plan {
                    exact: vec![
                        FaultKind::ClientImpair { pause: STRESS },
                        FaultKind::SlowClient { pause: STRESS },
                    ],
                    fill: Vec::new(),
                },
                default_duration: Duration::from_secs(90),
                ..base
            },
            other => bail!("unknown scenario `{other}` (known: {})", NAMES.join(", ")),
        })
    }

    /// The node ids: `n1`..`nN`, or `<region>-<k>` per region.
    pub fn node_ids(&self) -> Vec<String> {
        if self.regions.is_empty() {
            return (1..=self.nodes).map(|i| format!("n{i}")).collect();
        }
        self.regions
            .iter()
            .flat_map(|(r, n)| (1..=*n).map(move |k| format!("{r}-{k}")))
            .collect()
    }

    /// The region of node `node` (`eu` without regions).
    pub fn region_of(&self, node: &str) -> String {
        self.regions
            .iter()
            .map(|(r, _)| *r)
            .find(|r| node.strip_prefix(r).is_some_and(|k| k.starts_with('-')))
            .unwrap_or("eu")
            .to_owned()
    }

    /// The recovery bound of `fault`, from its injection: the scenario's bound, plus the
    /// fault's length for a partition (nothing can cross until it heals).
    pub fn bound_for(&self, fault: &super::schedule::Fault) -> Duration {
        match fault {
            super::schedule::Fault::Partition { pause, .. } => self.recovery_bound + *pause,
            _ => self.recovery_bound,
        }
    }

    /// Who the faults can be aimed at.
    pub fn targets(&self) -> Targets {
        Targets {
            nodes: self.node_ids(),
            coordinators: self.coordinator_ids(),
            nats_servers: (0..self.nats_servers)
                .map(|i| match i {
                    0 => "nats".to_owned(),
                    i => format!("nats{}", i + 1),
                })
                .collect(),
            regions: self
                .regions
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, _)| r.to_string())
                .collect(),
            client_region: self.client_region.map(str::to_owned),
        }
    }

    /// The coordinator ids, `c1`..`cN`.
    pub fn coordinator_ids(&self) -> Vec<String> {
        (1..=self.coordinators).map(|i| format!("c{i}")).collect()
    }

    /// The schedule's timing for a fault phase of `duration` (the default when `None`).
    pub fn timing(&self, duration: Option<Duration>) -> Timing {
        Timing {
            duration: duration.unwrap_or(self.default_duration),
            spacing: self.recovery_bound + REPAIR,
            lead: LEAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::schedule::schedule;

    #[test]
    fn every_named_scenario_schedules_with_its_default_duration() {
        for name in NAMES {
            let s = Scenario::named(name).unwrap();
            assert_eq!(s.name, name);
            let steps = schedule(&s.plan, &s.targets(), 1, s.timing(None)).unwrap();
            assert!(!steps.is_empty(), "{name}");
        }
        assert!(Scenario::named("nope").is_err());
    }

    #[test]
    fn a_cluster_file_overrides_the_scenarios_shape_and_load() {
        let f = ClusterFile::parse(
            "coordinators = 3\nnats_servers = 3\nregions = [[\"eu\", 2], [\"us\", 1]]\n\
             rooms = 6\nper_room = 4\nvideo_pps = 60\nrecovery_bound_secs = 20\n",
        )
        .unwrap();
        let s = f.apply(Scenario::named("kill").unwrap());
        assert_eq!((s.coordinators, s.nats_servers), (3, 3));
        assert_eq!(s.node_ids(), ["eu-1", "eu-2", "us-1"]);
        assert_eq!((s.rooms, s.per_room, s.video_pps), (6, 4, 60));
        assert_eq!(s.recovery_bound, Duration::from_secs(20));
        assert_eq!(s.targets().nodes, ["eu-1", "eu-2", "us-1"]);
        // Left out: the scenario's own.
        let s = ClusterFile::parse("nodes = 5")
            .unwrap()
            .apply(Scenario::named("stop").unwrap());
        assert_eq!((s.nodes, s.coordinators, s.rooms), (5, 2, 3));
        assert!(ClusterFile::parse("nodes = 2\nregions = [[\"eu\", 1]]").is_err());
        assert!(ClusterFile::parse("per_room = 1").is_err());
        assert!(
            ClusterFile::parse("nodez = 2").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn regional_scenarios_name_their_nodes_by_region() {
        let s = Scenario::named("partition").unwrap();
        assert_eq!(s.node_ids(), ["eu-1", "eu-2", "us-1", "us-2"]);
        assert_eq!(s.region_of("us-2"), "us");
        assert_eq!(s.targets().regions, ["eu", "us"]);
        let c = Scenario::named("client").unwrap();
        assert_eq!(c.node_ids(), ["eu-1", "eu-2", "eu-3"]);
        assert_eq!(
            c.targets().regions,
            ["eu"],
            "a region without nodes is no target"
        );
        assert_eq!(c.targets().client_region.as_deref(), Some("eu-client"));
        assert_eq!(Scenario::named("kill").unwrap().region_of("n1"), "eu");
    }

    #[test]
    fn smoke_has_a_node_kill_a_nats_restart_and_a_hostile_client() {
        use crate::runner::schedule::Fault;
        let s = Scenario::named("smoke").unwrap();
        let steps = schedule(&s.plan, &s.targets(), 42, s.timing(None)).unwrap();
        assert_eq!(steps.len(), 3);
        assert!(steps.iter().any(|s| s.fault == Fault::KillBusiest));
        assert!(steps.iter().any(|s| s.fault == Fault::RestartNats));
        assert!(steps
            .iter()
            .any(|s| matches!(s.fault, Fault::Hostile { .. })));
    }
}
