//! Prometheus exposition with a recorder of the coordinator's own.
//!
//! The `metrics` facade has one global recorder per process, and the node installs one too;
//! whichever installs first would win, and several coordinators in one test process would
//! mix their counts. So each coordinator builds a private recorder (never installed), records
//! through [`metrics::with_local_recorder`], and renders its own handle. Per-node gauges are
//! rendered at scrape time straight from the registry, so a node that is gone leaves no stale
//! series behind.

use crate::registry::NodeStatus;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::fmt::Write as _;
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
    /// Answered by the room's deciding coordinator, relayed.
    Forwarded,
    /// No live node could take the room.
    NoNode,
    BadRequest,
    /// The directory could not be read or written.
    Error,
}

impl AllocResult {
    pub const ALL: [AllocResult; 9] = [
        AllocResult::Existing,
        AllocResult::Created,
        AllocResult::Reopened,
        AllocResult::Reassigned,
        AllocResult::Extended,
        AllocResult::Forwarded,
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
            AllocResult::Forwarded => "forwarded",
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

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

const LATENCY: &str = "coord_allocation_latency_seconds";

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
        let builder = PrometheusBuilder::new();
        let recorder = match builder.set_buckets_for_metric(Matcher::Full(LATENCY.into()), &buckets)
        {
            Ok(b) => b.build_recorder(),
            // Only fails on an empty bucket list; fall back to summaries.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        let m = Self { recorder, handle };
        m.with(|| {
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
                "coord_forwards_total",
                "requests forwarded to the room's deciding coordinator, by outcome"
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
            // Series exist from the start, at zero, so rates and alerts see them.
            for r in AllocResult::ALL {
                metrics::counter!("coord_allocations_total", "result" => r.as_str()).increment(0);
            }
            for outcome in ["relayed", "failed"] {
                metrics::counter!("coord_forwards_total", "outcome" => outcome).increment(0);
            }
            metrics::counter!("coord_directory_conflicts_total").increment(0);
            metrics::counter!("coord_rooms_closed_total").increment(0);
            for o in LeaveOutcome::ALL {
                metrics::counter!("coord_room_leaves_total", "outcome" => o.as_str()).increment(0);
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

    /// `outcome`: `relayed` or `failed` (the forwarder then decided itself).
    pub fn forward(&self, outcome: &'static str) {
        self.with(|| metrics::counter!("coord_forwards_total", "outcome" => outcome).increment(1));
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

    /// The exposition text: recorded metrics, then gauges of the cluster as seen now.
    pub fn render(&self, nodes: &[NodeStatus], live_coordinators: usize, ready: bool) -> String {
        self.handle.run_upkeep();
        let mut out = self.handle.render();
        let live = nodes.iter().filter(|n| n.healthy).count();
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        gauge(
            &mut out,
            "coord_ready",
            "1 when connected to NATS with the directory open",
        );
        let _ = writeln!(out, "coord_ready {}", u8::from(ready));
        gauge(
            &mut out,
            "coord_live_nodes",
            "nodes heard from within the timeout",
        );
        let _ = writeln!(out, "coord_live_nodes {live}");
        gauge(
            &mut out,
            "coord_live_coordinators",
            "coordinators alive, this one included",
        );
        let _ = writeln!(out, "coord_live_coordinators {live_coordinators}");
        type Field = fn(&NodeStatus) -> f64;
        let per_node: [(&str, &str, Field); 5] = [
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
        for (name, help, field) in per_node {
            gauge(&mut out, name, help);
            for n in nodes {
                // Node ids are [A-Za-z0-9._~@:-]: nothing to escape in a label value.
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{}\",region=\"{}\"}} {}",
                    n.id,
                    n.region.escape_default(),
                    field(n)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_coordinator_renders_its_own_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.allocation(AllocResult::Created, Duration::from_millis(2));
        a.forward("relayed");
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
            other.contains("coord_forwards_total{outcome=\"failed\"} 0"),
            "{other}"
        );
    }
}
