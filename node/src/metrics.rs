//! Prometheus exposition. The recorder is process-wide (the `metrics` facade has one global
//! recorder), so nodes started in one test process share it; per-node truth for tests comes
//! from [`crate::counters`] snapshots instead.
//!
//! Per-room series (`sfu_room_*{room}`) live in a second recorder of their own, rendered
//! after the global one, whose series are dropped once idle for the room-series TTL: a
//! room updates its series every second while it lives ([`room_series`]), so only a
//! closed room's go. The global recorder has no idle timeout, so a counter that is merely
//! quiet on a live node never disappears and resets (which `rate()` would misread).

use crate::counters::Counters;
use crate::media::quality;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static ROOMS: OnceLock<PrometheusRecorder> = OnceLock::new();

/// Installs the recorders once per process; `room_series_ttl`: how long a closed room's
/// series stay.
pub fn install(room_series_ttl: Duration) {
    ROOMS.get_or_init(|| {
        PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::ALL, Some(room_series_ttl))
            .build_recorder()
    });
    HANDLE.get_or_init(|| {
        let buckets = [
            (quality::LOSS, quality::LOSS_BUCKETS),
            (quality::JITTER, quality::JITTER_BUCKETS),
            (quality::RTT, quality::RTT_BUCKETS),
            (quality::BITRATE, quality::BITRATE_BUCKETS),
        ];
        let handle = buckets
            .into_iter()
            .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                b.set_buckets_for_metric(Matcher::Full(name.into()), buckets)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("latency_seconds".into()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                )
            })
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
    let mut out = match HANDLE.get() {
        Some(Some(h)) => {
            crate::process_metrics::collect();
            h.run_upkeep();
            h.render()
        }
        _ => String::new(),
    };
    if let Some(rooms) = ROOMS.get() {
        let h = rooms.handle();
        h.run_upkeep();
        out.push('\n');
        out.push_str(&h.render());
    }
    out
}

/// Runs `f` with the per-room recorder: the `metrics` macros called in it record series that
/// disappear once not updated for the room-series TTL.
pub fn room_series(f: impl FnOnce()) {
    if let Some(rooms) = ROOMS.get() {
        metrics::with_local_recorder(rooms, f);
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
    metrics::gauge!("node_room_watches").set(s.room_watches as f64);
    metrics::counter!("sfu_packets_received_total").absolute(s.packets_in);
    metrics::counter!("sfu_packets_forwarded_total").absolute(s.packets_forwarded);
    metrics::counter!("sfu_bytes_forwarded_total").absolute(s.bytes_forwarded);
    metrics::counter!("sfu_published_bytes_received_total").absolute(s.published_bytes_in);
    metrics::counter!("sfu_relay_packets_sent_total").absolute(s.relay_packets_out);
    metrics::counter!("sfu_relay_bytes_sent_total").absolute(s.relay_bytes_out);
    metrics::counter!("sfu_relay_link_failures_total").absolute(s.relay_link_failures);
    metrics::counter!("media_setup_timeouts_total").absolute(s.setup_timeouts);
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
