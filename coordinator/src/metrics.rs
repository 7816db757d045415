//! Prometheus exposition with a recorder of the coordinator's own.
//!
//! The `metrics` facade has one global recorder per process, and the node installs one too;
//! whichever installs first would win, and several coordinators in one test process would
//! mix their counts. So each coordinator builds a private recorder (never installed), records
//! through [`metrics::with_local_recorder`], and renders its own handle. Per-node gauges are
//! recorded at scrape time, from the registry, into a recorder of that scrape alone, so a node
//! that is gone leaves no stale series behind.

use crate::registry::NodeStatus;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use protocol::cluster::DeathCause;
use std::time::Duration;

/// How an allocation request ended, for `coord_allocations_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocResult {
    /// A node of the room serves the client; the entry stands as it was.
    Existing,
    /// A new room, epoch 1.
    Created,
    /// A closed room opened again.
    Reopened,
    /// Nodes of the room were dead and left its entry (a dead origin's role moved on with
    /// the next epoch, or the room was placed afresh).
    Reassigned,
    /// A node joined the room to serve the client (another region, or a full node's
    /// sibling).
    Extended,
    /// No live node could take the room.
    NoNode,
    BadRequest,
    /// The directory could not be read or written.
    Error,
}

impl AllocResult {
    pub const ALL: [AllocResult; 8] = [
        AllocResult::Existing,
        AllocResult::Created,
        AllocResult::Reopened,
        AllocResult::Reassigned,
        AllocResult::Extended,
        AllocResult::NoNode,
        AllocResult::BadRequest,
        AllocResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AllocResult::Existing => "existing",
            AllocResult::Created => "created",
            AllocResult::Reopened => "reopened",
            AllocResult::Reassigned => "reassigned",
            AllocResult::Extended => "extended",
            AllocResult::NoNode => "no_node",
            AllocResult::BadRequest => "bad_request",
            AllocResult::Error => "error",
        }
    }
}

/// What a node's leaving a room did, for `coord_room_leaves_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// The node was not in the room's entry (or the message was stale).
    Unchanged,
    /// The node left the entry; the origin stayed.
    Removed,
    /// The origin left: the role moved to another node with the next epoch.
    OriginMoved,
    /// The last node left: the entry is deleted.
    Closed,
    /// Not recorded: the directory failed or stayed contended.
    Error,
}

impl LeaveOutcome {
    pub const ALL: [LeaveOutcome; 5] = [
        LeaveOutcome::Unchanged,
        LeaveOutcome::Removed,
        LeaveOutcome::OriginMoved,
        LeaveOutcome::Closed,
        LeaveOutcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaveOutcome::Unchanged => "unchanged",
            LeaveOutcome::Removed => "removed",
            LeaveOutcome::OriginMoved => "origin_moved",
            LeaveOutcome::Closed => "closed",
            LeaveOutcome::Error => "error",
        }
    }
}

/// Where a suspicion of a node came from, for `coord_suspicions_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspicionSource {
    /// A [`protocol::cluster::NodeSuspect`] on `cluster.node.suspect`.
    Suspect,
    /// Another coordinator's [`protocol::cluster::NodeDown`].
    NodeDown,
    /// `suspects` of an allocation request this coordinator decides.
    Allocation,
    /// A heartbeat of the node is overdue.
    LateHeartbeat,
}

impl SuspicionSource {
    pub const ALL: [SuspicionSource; 4] = [
        SuspicionSource::Suspect,
        SuspicionSource::NodeDown,
        SuspicionSource::Allocation,
        SuspicionSource::LateHeartbeat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuspicionSource::Suspect => "suspect",
            SuspicionSource::NodeDown => "node_down",
            SuspicionSource::Allocation => "allocation",
            SuspicionSource::LateHeartbeat => "late_heartbeat",
        }
    }
}

/// What became of a suspicion, for `coord_suspicions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspicionOutcome {
    /// A probe of the node started.
    Probed,
    /// A probe of the node was in flight already: the suspicion waits for its verdict.
    Joined,
    /// The node was probed less than the probe gap ago.
    Throttled,
    /// A node this coordinator does not know, or counts dead already.
    NotAlive,
    /// Unreadable, or of another version.
    Malformed,
}

impl SuspicionOutcome {
    pub const ALL: [SuspicionOutcome; 5] = [
        SuspicionOutcome::Probed,
        SuspicionOutcome::Joined,
        SuspicionOutcome::Throttled,
        SuspicionOutcome::NotAlive,
        SuspicionOutcome::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuspicionOutcome::Probed => "probed",
            SuspicionOutcome::Joined => "joined",
            SuspicionOutcome::Throttled => "throttled",
            SuspicionOutcome::NotAlive => "not_alive",
            SuspicionOutcome::Malformed => "malformed",
        }
    }
}

/// What a probe of a node found, for `coord_probes_total{verdict}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The node answered.
    Alive,
    /// Nobody listens on the node's subjects: its connection is gone.
    Dead,
    /// No answer in time: proves nothing (a stopped process; heartbeat silence decides).
    Timeout,
    /// The request failed on this side (say, this coordinator is disconnected).
    Error,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Alive,
        Verdict::Dead,
        Verdict::Timeout,
        Verdict::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Alive => "alive",
            Verdict::Dead => "dead",
            Verdict::Timeout => "timeout",
            Verdict::Error => "error",
        }
    }
}

pub fn cause_str(cause: DeathCause) -> &'static str {
    match cause {
        DeathCause::Probe => "probe",
        DeathCause::Silence => "silence",
    }
}

/// What moving one room off dead nodes did, for `coord_rooms_failed_over_total{change}` and
/// `coord_failover_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverOutcome {
    /// Nothing to do (the room changed meanwhile, or no node of it is dead any more).
    Unchanged,
    /// Dead nodes left the entry; the origin stayed.
    Dropped,
    /// The origin died: the role moved to a surviving node with the next epoch.
    OriginMoved,
    /// Every node died: the room moved whole to a new node with the next epoch.
    Replaced,
    /// Every node died and no live node can take the room: left for the next join.
    NoNode,
    /// Every round lost a race.
    Contended,
    /// The directory failed.
    Error,
}

impl FailoverOutcome {
    const MOVED: [FailoverOutcome; 3] = [
        FailoverOutcome::Dropped,
        FailoverOutcome::OriginMoved,
        FailoverOutcome::Replaced,
    ];
    const FAILED: [FailoverOutcome; 3] = [
        FailoverOutcome::NoNode,
        FailoverOutcome::Contended,
        FailoverOutcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailoverOutcome::Unchanged => "unchanged",
            FailoverOutcome::Dropped => "dropped",
            FailoverOutcome::OriginMoved => "origin_moved",
            FailoverOutcome::Replaced => "replaced",
            FailoverOutcome::NoNode => "no_node",
            FailoverOutcome::Contended => "contended",
            FailoverOutcome::Error => "error",
        }
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The process's CPU, memory, threads and descriptors (`process_*`), read at each render.
    process: metrics_process::Collector,
}

const LATENCY: &str = "coord_allocation_latency_seconds";
const PROBE_LATENCY: &str = "coord_probe_latency_seconds";
const WEBHOOK_LATENCY: &str = "webhook_delivery_seconds";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(LATENCY.into()), &buckets)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PROBE_LATENCY.into()), &buckets))
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(WEBHOOK_LATENCY.into()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                )
            });
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // Only fails on an empty bucket list; fall back to summaries.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        let process = metrics_process::Collector::default();
        let m = Self {
            recorder,
            handle,
            process,
        };
        m.with(|| {
            m.process.describe();
            metrics::describe_gauge!(
                "nats_connected",
                "1 while the coordinator's NATS client is connected"
            );
            metrics::gauge!("nats_connected").set(0.0);
            metrics::describe_counter!(
                "coord_allocations_total",
                "allocation requests answered, by result"
            );
            metrics::describe_histogram!(
                LATENCY,
                metrics::Unit::Seconds,
                "time from an allocation request to its reply"
            );
            metrics::describe_counter!(
                "coord_directory_reads_total",
                "room entries read to decide an allocation, by source (mirror: memory, kv: a JetStream read)"
            );
            metrics::describe_gauge!(
                "coord_directory_rooms",
                "live room entries in this coordinator's mirror of the directory"
            );
            metrics::describe_gauge!(
                "coord_directory_synced",
                "1 once the directory's mirror has caught up with the bucket"
            );
            metrics::describe_gauge!(
                "coord_directory_replay_seconds",
                "time from starting the directory's watch to having every live entry"
            );
            metrics::describe_counter!(
                "coord_directory_conflicts_total",
                "directory writes that lost a compare-and-swap"
            );
            metrics::describe_counter!(
                "coord_rooms_closed_total",
                "room records deleted when their last node left"
            );
            metrics::describe_counter!(
                "coord_room_leaves_total",
                "cluster.room.closed messages (a node left a room), by outcome"
            );
            metrics::describe_counter!(
                "coord_suspicions_total",
                "suspicions that a node is gone, by source and outcome"
            );
            metrics::describe_counter!(
                "coord_probes_total",
                "probes of suspected nodes (node.<id>.ping), by verdict"
            );
            metrics::describe_histogram!(
                PROBE_LATENCY,
                metrics::Unit::Seconds,
                "time from a probe to its verdict"
            );
            metrics::describe_counter!(
                "coord_node_deaths_total",
                "node deaths this coordinator found, by cause (probe or silence)"
            );
            metrics::describe_counter!(
                "coord_stale_heartbeats_total",
                "heartbeats ignored for arriving just after a probe proved their node dead"
            );
            metrics::describe_counter!(
                "coord_rooms_failed_over_total",
                "room entries rewritten off dead nodes, by change"
            );
            metrics::describe_counter!(
                "coord_failover_failures_total",
                "rooms of dead nodes left as they were, by reason"
            );
            metrics::describe_counter!(
                "webhook_deliveries_total",
                "webhook POST attempts, by result (ok, retry, dropped)"
            );
            metrics::describe_histogram!(
                WEBHOOK_LATENCY,
                metrics::Unit::Seconds,
                "time of one webhook POST, whatever its answer"
            );
            metrics::describe_counter!(
                "webhook_events_emitted_total",
                "webhook events this coordinator published to the stream, by event"
            );
            metrics::describe_counter!(
                "api_requests_total",
                "room API requests, by route and status"
            );
            // Series exist from the start, at zero, so rates and alerts see them.
            for d in crate::webhooks::delivery::Delivery::ALL {
                metrics::counter!("webhook_deliveries_total", "result" => d.as_str()).increment(0);
            }
            for e in ["room_started", "room_finished", "room_moved"] {
                metrics::counter!("webhook_events_emitted_total", "event" => e).increment(0);
            }
            for r in AllocResult::ALL {
                metrics::counter!("coord_allocations_total", "result" => r.as_str()).increment(0);
            }
            metrics::counter!("coord_directory_conflicts_total").increment(0);
            for source in ["mirror", "kv"] {
                metrics::counter!("coord_directory_reads_total", "source" => source).increment(0);
            }
            metrics::gauge!("coord_directory_synced").set(0.0);
            metrics::counter!("coord_rooms_closed_total").increment(0);
            for o in LeaveOutcome::ALL {
                metrics::counter!("coord_room_leaves_total", "outcome" => o.as_str()).increment(0);
            }
            for source in SuspicionSource::ALL {
                for outcome in SuspicionOutcome::ALL {
                    metrics::counter!("coord_suspicions_total", "source" => source.as_str(), "outcome" => outcome.as_str()).increment(0);
                }
            }
            for v in Verdict::ALL {
                metrics::counter!("coord_probes_total", "verdict" => v.as_str()).increment(0);
            }
            for cause in [DeathCause::Probe, DeathCause::Silence] {
                metrics::counter!("coord_node_deaths_total", "cause" => cause_str(cause))
                    .increment(0);
            }
            metrics::counter!("coord_stale_heartbeats_total").increment(0);
            for o in FailoverOutcome::MOVED {
                metrics::counter!("coord_rooms_failed_over_total", "change" => o.as_str())
                    .increment(0);
            }
            for o in FailoverOutcome::FAILED {
                metrics::counter!("coord_failover_failures_total", "reason" => o.as_str())
                    .increment(0);
            }
        });
        m
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    pub fn allocation(&self, result: AllocResult, elapsed: Duration) {
        self.with(|| {
            metrics::counter!("coord_allocations_total", "result" => result.as_str()).increment(1);
            metrics::histogram!(LATENCY).record(elapsed.as_secs_f64());
        });
    }

    /// `source`: `mirror` or `kv`.
    pub fn directory_read(&self, source: &'static str) {
        self.with(|| {
            metrics::counter!("coord_directory_reads_total", "source" => source).increment(1)
        });
    }

    /// The mirror caught up with the bucket, `took` after its watch started.
    pub fn directory_synced(&self, took: Duration) {
        self.with(|| {
            metrics::gauge!("coord_directory_synced").set(1.0);
            metrics::gauge!("coord_directory_replay_seconds").set(took.as_secs_f64());
        });
    }

    /// The mirror's size now (set at scrape time).
    pub fn directory_rooms(&self, rooms: usize) {
        self.with(|| metrics::gauge!("coord_directory_rooms").set(rooms as f64));
    }

    pub fn conflict(&self) {
        self.with(|| metrics::counter!("coord_directory_conflicts_total").increment(1));
    }

    pub fn room_closed(&self) {
        self.with(|| metrics::counter!("coord_rooms_closed_total").increment(1));
    }

    pub fn node_left(&self, outcome: LeaveOutcome) {
        self.with(|| {
            metrics::counter!("coord_room_leaves_total", "outcome" => outcome.as_str()).increment(1)
        });
    }

    pub fn suspicion(&self, source: SuspicionSource, outcome: SuspicionOutcome) {
        self.with(|| {
            metrics::counter!("coord_suspicions_total", "source" => source.as_str(), "outcome" => outcome.as_str())
                .increment(1)
        });
    }

    pub fn probe(&self, verdict: Verdict, elapsed: Duration) {
        self.with(|| {
            metrics::counter!("coord_probes_total", "verdict" => verdict.as_str()).increment(1);
            metrics::histogram!(PROBE_LATENCY).record(elapsed.as_secs_f64());
        });
    }

    pub fn node_death(&self, cause: DeathCause) {
        self.with(|| {
            metrics::counter!("coord_node_deaths_total", "cause" => cause_str(cause)).increment(1)
        });
    }

    pub fn stale_heartbeat(&self) {
        self.with(|| metrics::counter!("coord_stale_heartbeats_total").increment(1));
    }

    /// One room's failover: a rewrite by its change, a failure by its reason, `Unchanged`
    /// not at all.
    pub fn failover(&self, outcome: FailoverOutcome) {
        self.with(|| {
            if FailoverOutcome::MOVED.contains(&outcome) {
                metrics::counter!("coord_rooms_failed_over_total", "change" => outcome.as_str())
                    .increment(1);
            } else if FailoverOutcome::FAILED.contains(&outcome) {
                metrics::counter!("coord_failover_failures_total", "reason" => outcome.as_str())
                    .increment(1);
            }
        });
    }

    /// One webhook event published (`event`: its kind).
    pub fn webhook_emitted(&self, event: &'static str) {
        self.with(|| {
            metrics::counter!("webhook_events_emitted_total", "event" => event).increment(1)
        });
    }

    /// One webhook POST and what became of its event.
    pub fn webhook_delivery(&self, result: crate::webhooks::delivery::Delivery, took: Duration) {
        self.with(|| {
            metrics::counter!("webhook_deliveries_total", "result" => result.as_str()).increment(1);
            metrics::histogram!(WEBHOOK_LATENCY).record(took.as_secs_f64());
        });
    }

    /// One room API request: `route` is its pattern (`GET /v1/rooms/{room}`).
    pub fn api_request(&self, route: String, status: u16) {
        self.with(|| {
            metrics::counter!("api_requests_total", "route" => route, "status" => status.to_string())
                .increment(1)
        });
    }

    /// `nats_connected`: 1 while the NATS client is connected, 0 otherwise.
    pub fn nats_connected(&self, up: bool) {
        self.with(|| metrics::gauge!("nats_connected").set(f64::from(u8::from(up))));
    }

    /// The exposition text: recorded metrics, then gauges of the cluster as seen now.
    pub fn render(&self, nodes: &[NodeStatus], live_coordinators: usize, ready: bool) -> String {
        self.with(|| {
            self.process.collect();
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            metrics::gauge!("process_cpus_available").set(cpus as f64);
        });
        self.handle.run_upkeep();
        let mut out = self.handle.render();
        out.push_str(&render_cluster_gauges(nodes, live_coordinators, ready));
        out
    }
}

/// The gauges of the cluster as seen now, through a recorder made for this scrape alone: a
/// node that is gone leaves no stale series behind, and the exporter escapes label values.
fn render_cluster_gauges(nodes: &[NodeStatus], live_coordinators: usize, ready: bool) -> String {
    type Field = fn(&NodeStatus) -> f64;
    let per_node: [(&'static str, &'static str, Field); 5] = [
        ("coord_node_up", "1 while the node heartbeats", |n| {
            f64::from(u8::from(n.healthy))
        }),
        ("coord_node_draining", "1 while the node drains", |n| {
            f64::from(u8::from(n.draining))
        }),
        ("coord_node_rooms", "rooms the node reports hosting", |n| {
            f64::from(n.load.rooms)
        }),
        (
            "coord_node_pending_rooms",
            "rooms assigned here that the node has not reported yet",
            |n| f64::from(n.pending_rooms),
        ),
        (
            "coord_node_load",
            "placement load score (1.0 = full)",
            |n| n.load_score,
        ),
    ];
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        let live = nodes.iter().filter(|n| n.healthy).count();
        let cluster: [(&'static str, &'static str, f64); 3] = [
            (
                "coord_ready",
                "1 when connected to NATS with the directory open",
                f64::from(u8::from(ready)),
            ),
            (
                "coord_live_nodes",
                "nodes heard from within the timeout",
                live as f64,
            ),
            (
                "coord_live_coordinators",
                "coordinators alive, this one included",
                live_coordinators as f64,
            ),
        ];
        for (name, help, value) in cluster {
            metrics::describe_gauge!(name, help);
            metrics::gauge!(name).set(value);
        }
        for (name, help, field) in per_node {
            metrics::describe_gauge!(name, help);
            for n in nodes {
                let labels = [("node", n.id.to_string()), ("region", n.region.clone())];
                metrics::gauge!(name, &labels).set(field(n));
            }
        }
    });
    recorder.handle().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_coordinator_renders_its_own_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.allocation(AllocResult::Created, Duration::from_millis(2));
        a.directory_read("mirror");
        let text = a.render(&[], 1, true);
        assert!(
            text.contains("coord_allocations_total{result=\"created\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("coord_allocation_latency_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("coord_live_coordinators 1"), "{text}");
        let other = b.render(&[], 1, false);
        assert!(
            other.contains("coord_allocations_total{result=\"created\"} 0"),
            "{other}"
        );
        assert!(
            other.contains("coord_directory_reads_total{source=\"kv\"} 0"),
            "{other}"
        );
    }

    #[test]
    fn cluster_gauges_escape_label_values_as_prometheus_does() {
        let node = NodeStatus {
            id: protocol::NodeId::new("n1").unwrap(),
            region: "eu \"west\" \\ é".into(),
            ws_url: String::new(),
            load: Default::default(),
            load_score: 0.5,
            liveness: crate::registry::Liveness::Alive,
            healthy: true,
            draining: false,
            draining_reported: false,
            draining_requested: false,
            pending_rooms: 0,
            last_heartbeat_age_ms: 0,
        };
        let text = render_cluster_gauges(&[node], 2, true);
        assert!(
            text.contains("coord_node_load{node=\"n1\",region=\"eu \\\"west\\\" \\\\ é\"} 0.5"),
            "{text}"
        );
        assert!(text.contains("# TYPE coord_live_nodes gauge"), "{text}");
        assert!(text.contains("coord_live_coordinators 2"), "{text}");
        assert!(text.contains("coord_ready 1"), "{text}");
    }
}
