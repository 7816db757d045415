//! What an operator watches besides the media: the process's CPU, memory, threads and file
//! descriptors (`process_*`, from `metrics-process`, read at each scrape), the CPUs it may
//! use (`process_cpus_available`, so an alert can compare CPU time with capacity), and
//! whether its NATS connection is up (`nats_connected`, 1 or 0, from the client's
//! connection events; absent on a standalone node).

use std::sync::OnceLock;

static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Reads the process's figures into the recorder; called before each render.
pub fn collect() {
    let collector = COLLECTOR.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    });
    collector.collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    metrics::gauge!("process_cpus_available").set(cpus as f64);
}

/// `nats_connected`: 1 while the NATS client is connected, 0 otherwise.
pub fn nats_connected(up: bool) {
    metrics::gauge!("nats_connected").set(f64::from(u8::from(up)));
}
