//! One steady window: CPU, forwarded packets, loss and latency over it.

use super::*;

/// Everything measured over one steady window.
pub(super) struct Window {
    pub(super) secs: f64,
    pub(super) sent_pps: f64,
    pub(super) forwarded_pps: f64,
    pub(super) delivered_pps: f64,
    pub(super) node_cpu_secs: f64,
    pub(super) bench_cpu_secs: f64,
    /// Non-idle share of all cores, %.
    pub(super) machine_busy: f64,
    pub(super) loss_pct: f64,
    pub(super) stalled: usize,
    pub(super) lat: LatencyHistogram,
    pub(super) rss_kib: u64,
    pub(super) dropped_congested: f64,
    pub(super) dropped_write_error: f64,
}

impl Window {
    pub(super) fn node_cpu_pct(&self) -> f64 {
        100.0 * self.node_cpu_secs / self.secs
    }

    pub(super) fn bench_cpu_pct(&self) -> f64 {
        100.0 * self.bench_cpu_secs / self.secs
    }

    /// CPU of everything else on the machine (% of one core): all cores' busy time minus
    /// the node's and the bench's.
    pub(super) fn other_cpu_pct(&self, nproc: usize) -> f64 {
        (self.machine_busy * nproc as f64 - self.node_cpu_pct() - self.bench_cpu_pct()).max(0.0)
    }

    pub(super) fn cpu_per_mpkt(&self) -> f64 {
        let forwarded = self.forwarded_pps * self.secs;
        if forwarded <= 0.0 {
            return f64::NAN;
        }
        self.node_cpu_secs / (forwarded / 1e6)
    }
}

pub(super) async fn measure_window(
    args: &Args,
    facts: &MachineFacts,
    node: &NodeProc,
    publisher: &Client,
    publisher_id: &str,
    subs: &[Client],
    kinds: &[TrackKind],
) -> Result<Window> {
    let (port, pid) = (node.port, node.pid());
    let m0 = Metrics::fetch(port).await?;
    let sent0 = publisher.sent_stats().await;
    let subs0: Vec<SubSnap> = subs
        .iter()
        .map(|c| SubSnap::take(c, publisher_id))
        .collect();
    let cpu0 = (
        proc_cpu_ticks(&pid.to_string())?,
        proc_cpu_ticks("self")?,
        machine_ticks()?,
    );
    let t0 = Instant::now();
    let mut samples = vec![(0.0, m0.forwarded)];
    let window = Duration::from_secs(args.seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.tick().await;
    while t0.elapsed() < window {
        tick.tick().await;
        let m = Metrics::fetch(port).await?;
        samples.push((t0.elapsed().as_secs_f64(), m.forwarded));
    }
    let cpu1 = (
        proc_cpu_ticks(&pid.to_string())?,
        proc_cpu_ticks("self")?,
        machine_ticks()?,
    );
    let secs = t0.elapsed().as_secs_f64();
    let subs1: Vec<SubSnap> = subs
        .iter()
        .map(|c| SubSnap::take(c, publisher_id))
        .collect();
    let sent1 = publisher.sent_stats().await;
    let m1 = Metrics::fetch(port).await?;
    let rss_kib = vm_rss_kib(pid)?;

    let clk = facts.clk_tck as f64;
    let node_cpu_secs = (cpu1.0 - cpu0.0) as f64 / clk;
    let bench_cpu_secs = (cpu1.1 - cpu0.1) as f64 / clk;
    let (busy, total) = (cpu1.2 .0 - cpu0.2 .0, cpu1.2 .1 - cpu0.2 .1);
    let machine_busy = if total > 0 {
        100.0 * busy as f64 / total as f64
    } else {
        f64::NAN
    };
    let sent_by_kind = |s: &[chaos::SentStats], k: TrackKind| -> u64 {
        s.iter().filter(|t| t.kind == k).map(|t| t.sent).sum()
    };
    let sent_video =
        sent_by_kind(&sent1, TrackKind::Video) - sent_by_kind(&sent0, TrackKind::Video);
    let sent_audio =
        sent_by_kind(&sent1, TrackKind::Audio) - sent_by_kind(&sent0, TrackKind::Audio);

    let mut lost = 0i64;
    let mut expected = 0i64;
    let mut delivered = 0i64;
    let mut stalled = 0usize;
    let mut lat = LatencyHistogram::default();
    for (a, b) in subs0.iter().zip(&subs1) {
        // A subscriber missing a published track has stalled; tracks of kinds not
        // published cannot be there (checked before the window).
        let mut sub_stalled = !kinds.iter().all(|k| b.stats.values().any(|t| t.kind == *k));
        for (key, tb) in &b.stats {
            let Some(ta) = a.stats.get(key) else {
                sub_stalled = true;
                continue;
            };
            let unique = |t: &TrackStats| (t.received - t.duplicates) as i64;
            let d_unique = unique(tb) - unique(ta);
            let d_lost = tb.lost as i64 - ta.lost as i64;
            lost += d_lost;
            expected += d_unique + d_lost;
            delivered += (tb.received - ta.received) as i64;
            let sent = match tb.kind {
                TrackKind::Video => sent_video,
                TrackKind::Audio => sent_audio,
            };
            if ((d_unique + d_lost) as f64) < 0.5 * sent as f64 {
                sub_stalled = true;
            }
            if let (Some(ha), Some(hb)) = (a.latency.get(key), b.latency.get(key)) {
                lat.merge(&hb.since(ha));
            }
        }
        if sub_stalled {
            stalled += 1;
        }
    }
    let loss_pct = if expected > 0 {
        100.0 * lost as f64 / expected as f64
    } else {
        f64::NAN
    };
    Ok(Window {
        secs,
        sent_pps: (sent_video + sent_audio) as f64 / secs,
        forwarded_pps: slope(&samples),
        delivered_pps: delivered as f64 / secs,
        node_cpu_secs,
        bench_cpu_secs,
        machine_busy,
        loss_pct,
        stalled,
        lat,
        rss_kib,
        dropped_congested: m1.dropped_congested - m0.dropped_congested,
        dropped_write_error: m1.dropped_write_error - m0.dropped_write_error,
    })
}

/// One subscriber's statistics of the publisher's tracks, keyed by track id.
pub(super) struct SubSnap {
    pub(super) stats: HashMap<String, TrackStats>,
    pub(super) latency: HashMap<String, LatencyHistogram>,
}

impl SubSnap {
    pub(super) fn take(c: &Client, publisher: &str) -> SubSnap {
        let latency = c
            .latency_histograms()
            .into_iter()
            .filter(|(p, _, _)| p == publisher)
            .map(|(_, t, h)| (t, h))
            .collect();
        let stats = tracks_of(c, publisher)
            .into_iter()
            .map(|t| (t.track_id.clone(), t))
            .collect();
        SubSnap { stats, latency }
    }
}

/// Least-squares slope of (seconds, counter) samples.
pub(super) fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return f64::NAN;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx) * (s.0 - mx)).sum();
    sxy / sxx
}

/// The node counters the bench reads.
pub(super) struct Metrics {
    pub(super) forwarded: f64,
    pub(super) dropped_congested: f64,
    pub(super) dropped_write_error: f64,
    pub(super) peers: f64,
}

impl Metrics {
    pub(super) async fn fetch(port: u16) -> Result<Metrics> {
        let text = http_get(port, "/metrics").await.context("GET /metrics")?;
        let get = |name: &str, label: Option<&str>| -> Result<f64> {
            metric(&text, name, label).ok_or_else(|| anyhow!("/metrics has no {name} {label:?}"))
        };
        Ok(Metrics {
            forwarded: get("sfu_packets_forwarded_total", None)?,
            dropped_congested: get("sfu_packets_dropped_total", Some("reason=\"congested\""))?,
            dropped_write_error: get("sfu_packets_dropped_total", Some("reason=\"write_error\""))?,
            peers: get("sfu_peers", None)?,
        })
    }
}
