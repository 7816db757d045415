//! Prometheus exposition. The recorder is process-wide (the `metrics` facade has one global
//! recorder), so nodes started in one test process share it; per-node truth for tests comes
//! from [`crate::counters`] snapshots instead.

use crate::counters::Counters;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process.
pub fn install() {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("latency_seconds".into()),
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )
            .and_then(|b| b.install_recorder());
        match handle {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        }
    });
}

pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => {
            crate::process_metrics::collect();
            h.run_upkeep();
            h.render()
        }
        _ => String::new(),
    }
}

/// Copies the node's live counts and totals into the recorder.
pub fn publish(c: &Counters) {
    let s = c.snapshot();
    metrics::gauge!("sfu_rooms").set(s.rooms as f64);
    metrics::gauge!("sfu_peers").set(s.peers as f64);
    metrics::gauge!("sfu_transports").set(s.transports as f64);
    metrics::gauge!("sfu_tracks").set(s.tracks as f64);
    metrics::gauge!("sfu_downtracks").set(s.downtracks as f64);
    metrics::gauge!("sfu_forwarding_tasks").set(s.forwarding_tasks as f64);
    metrics::gauge!("signaling_sessions").set(s.sessions as f64);
    metrics::counter!("sfu_packets_received_total").absolute(s.packets_in);
    metrics::counter!("sfu_packets_forwarded_total").absolute(s.packets_forwarded);
    metrics::counter!("sfu_bytes_forwarded_total").absolute(s.bytes_forwarded);
    metrics::counter!("sfu_published_bytes_received_total").absolute(s.published_bytes_in);
    metrics::counter!("sfu_relay_packets_sent_total").absolute(s.relay_packets_out);
    metrics::counter!("sfu_relay_bytes_sent_total").absolute(s.relay_bytes_out);
    metrics::counter!("sfu_relay_link_failures_total").absolute(s.relay_link_failures);
    metrics::counter!("sfu_packets_dropped_total", "reason" => "congested")
        .absolute(s.dropped_congested);
    metrics::counter!("sfu_packets_dropped_total", "reason" => "duplicate")
        .absolute(s.dropped_duplicate);
    metrics::counter!("sfu_packets_dropped_total", "reason" => "write_error")
        .absolute(s.dropped_write_error);
    metrics::counter!("sfu_packets_retransmitted_total").absolute(s.packets_retransmitted);
    metrics::counter!("sfu_keyframe_requests_total").absolute(s.keyframe_requests);
    metrics::counter!("media_datagrams_received_total").absolute(s.engine_datagrams_in);
    metrics::counter!("media_datagrams_sent_total").absolute(s.engine_datagrams_out);
    metrics::counter!("media_datagrams_dropped_total", "reason" => "queue_full")
        .absolute(s.engine_queue_full);
    metrics::counter!("media_datagrams_dropped_total", "reason" => "unroutable")
        .absolute(s.engine_unroutable);
    metrics::counter!("media_datagrams_dropped_total", "reason" => "send")
        .absolute(s.engine_send_dropped);
    metrics::gauge!("media_ice_tcp_streams").set(s.engine_tcp_streams as f64);
}
