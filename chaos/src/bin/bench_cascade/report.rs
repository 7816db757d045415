//! Tables, the verdict against the targets, and the BENCHMARKS.md section.

use crate::hop::{
    BytesResult, CpuResult, LatencyResult, FORWARDED, PACKETS_IN, PUBLISHED_BYTES, RELAY_BYTES,
    RELAY_PACKETS,
};
use crate::joins::{JoinCase, JoinResult, JoinSample};
use crate::{Args, Report, Window, NODES, PUBLISHER_NODE, REMOTE_NODE};
use chaos::bench::{self, ms, percentile_sorted, MachineFacts};
use chaos::stats::LatencyHistogram;
use std::fmt::Write as _;
use std::time::Duration;

pub const SECTION_BEGIN: &str = "<!-- bench_cascade:begin -->";
pub const SECTION_END: &str = "<!-- bench_cascade:end -->";
/// Targets of the cascading issue.
const TARGET_ADDED_P50_MS: f64 = 1.0;
const TARGET_ADDED_P99_MS: f64 = 5.0;
const TARGET_GEO_FIRST_PACKET_P99_MS: f64 = 600.0;
/// "Flat": every step's relay/published ratio within this of 1.0.
const FLAT_TOLERANCE: f64 = 0.05;

fn f(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "–".into()
    }
}

fn hist_ms(h: &LatencyHistogram, p: f64) -> f64 {
    h.percentile(p) as f64 / 1000.0
}

/// µs of CPU per packet from a process's % of one core and a packet rate.
fn us_per(pct: f64, rate: f64) -> f64 {
    if rate > 0.0 {
        pct / 100.0 / rate * 1e6
    } else {
        f64::NAN
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ").replace('|', "/")
}

fn failed<T>(t: &mut String, r: &anyhow::Result<T>) -> bool {
    if let Err(e) = r {
        let _ = writeln!(t, "failed: {}\n", one_line(e));
        return true;
    }
    false
}

pub fn tables(args: &Args, r: &Report) -> String {
    let mut t = String::new();
    if let Some(l) = &r.latency {
        t.push_str("### 1. Added latency per relay hop (no injected delay)\n\n");
        if let Ok(l) = l {
            latency_table(&mut t, args, l);
        } else {
            failed(&mut t, l);
        }
    }
    if let Some(c) = &r.cpu {
        t.push_str("### 2. Node CPU per relayed packet\n\n");
        if let Ok(c) = c {
            cpu_table(&mut t, args, c);
        } else {
            failed(&mut t, c);
        }
    }
    if let Some(b) = &r.bytes {
        t.push_str("### 3. Relay bytes against subscribers behind the link\n\n");
        if let Ok(b) = b {
            bytes_table(&mut t, b);
        } else {
            failed(&mut t, b);
        }
    }
    let joins: Vec<&anyhow::Result<JoinResult>> =
        [&r.join, &r.geo_join].into_iter().flatten().collect();
    if !joins.is_empty() {
        t.push_str("### 4. Join → first remote packet (joiner in `us`, publisher on eu-1)\n\n");
        join_tables(&mut t, args, &joins);
    }
    t
}

fn latency_table(t: &mut String, args: &Args, l: &LatencyResult) {
    let _ = writeln!(
        t,
        "One publisher on {PUBLISHER_NODE} (video only, 100 pkt/s × 1200 B); latency = receive time − send time in the payload, over a {} s window.\n",
        args.window_secs
    );
    t.push_str("| subscriber | packets | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n");
    for (label, h) in [
        (format!("direct (on {PUBLISHER_NODE})"), &l.direct),
        (
            format!("one relay hop (on {REMOTE_NODE}, via {PUBLISHER_NODE})"),
            &l.relayed,
        ),
    ] {
        let _ = writeln!(
            t,
            "| {label} | {} | {} | {} | {} |",
            h.count(),
            f(hist_ms(h, 50.0), 2),
            f(hist_ms(h, 99.0), 2),
            f(h.max() as f64 / 1000.0, 2)
        );
    }
    let (d50, d99) = added(l);
    let _ = writeln!(
        t,
        "| **added by the hop** | | **{}** | **{}** | |\n",
        f(d50, 2),
        f(d99, 2)
    );
    let w = &l.window;
    let _ = writeln!(
        t,
        "In the window {PUBLISHER_NODE} relayed {} pkt/s and forwarded {} pkt/s (relay included) at {} % CPU; {REMOTE_NODE} received {} pkt/s and forwarded {} pkt/s at {} % CPU; machine busy {} %, other processes {} % of a core.\n",
        f(w.rate(PUBLISHER_NODE, RELAY_PACKETS), 0),
        f(w.rate(PUBLISHER_NODE, FORWARDED), 0),
        f(w.cpu.of(PUBLISHER_NODE), 1),
        f(w.rate(REMOTE_NODE, PACKETS_IN), 0),
        f(w.rate(REMOTE_NODE, FORWARDED), 0),
        f(w.cpu.of(REMOTE_NODE), 1),
        f(w.cpu.machine_busy, 0),
        f(w.cpu.other, 0),
    );
}

/// Added p50 and p99 of the hop, ms.
fn added(l: &LatencyResult) -> (f64, f64) {
    (
        hist_ms(&l.relayed, 50.0) - hist_ms(&l.direct, 50.0),
        hist_ms(&l.relayed, 99.0) - hist_ms(&l.direct, 99.0),
    )
}

fn cpu_table(t: &mut String, args: &Args, c: &CpuResult) {
    let _ = writeln!(
        t,
        "{} rooms, each one publisher on {PUBLISHER_NODE} (video only, {} pkt/s × 1200 B) and one subscriber; {} s window per configuration, after the nodes have closed every earlier room. µs = the process's CPU-seconds / packets; *net* first takes off its CPU in the idle window.\n",
        c.rooms, c.pps, args.window_secs
    );
    t.push_str("| configuration | node | CPU % | relayed pkt/s (eu-1 → us-1) | received pkt/s | forwarded pkt/s | µs per relayed pkt, gross (net) | µs per forwarded pkt, gross (net) | bench CPU % | other CPU % |\n");
    t.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let idle = |node: &str| c.idle.cpu.of(node);
    let cell = |pct: f64, node: &str, rate: f64| {
        if rate > 1.0 {
            format!(
                "{} ({})",
                f(us_per(pct, rate), 1),
                f(us_per(pct - idle(node), rate), 1)
            )
        } else {
            "–".into()
        }
    };
    let rows: [(&str, &Window); 3] = [
        ("idle (no rooms)", &c.idle),
        ("one hop: subscribers on us-1", &c.relayed),
        ("no hop: subscribers on eu-1", &c.direct),
    ];
    for (label, w) in rows {
        let relayed = w.rate(PUBLISHER_NODE, RELAY_PACKETS);
        for node in [PUBLISHER_NODE, REMOTE_NODE] {
            let pct = w.cpu.of(node);
            let _ = writeln!(
                t,
                "| {label} | {node} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f(pct, 1),
                f(relayed, 0),
                f(w.rate(node, PACKETS_IN), 0),
                f(w.rate(node, FORWARDED), 0),
                cell(pct, node, relayed),
                cell(pct, node, w.rate(node, FORWARDED)),
                f(w.cpu.bench, 0),
                f(w.cpu.other, 0),
            );
        }
    }
    let _ = writeln!(
        t,
        "\nBoth nodes together per packet delivered to a subscriber, gross (net): one hop {}, no hop {} µs.\n",
        both(c, &c.relayed),
        both(c, &c.direct)
    );
}

/// Both nodes' CPU per delivered packet of one configuration: "gross (net)".
fn both(c: &CpuResult, w: &Window) -> String {
    let pct = w.cpu.of(PUBLISHER_NODE) + w.cpu.of(REMOTE_NODE);
    let idle = c.idle.cpu.of(PUBLISHER_NODE) + c.idle.cpu.of(REMOTE_NODE);
    let d = delivered(w);
    format!("{} ({})", f(us_per(pct, d), 1), f(us_per(pct - idle, d), 1))
}

/// Packets handed to subscribers (not to relay links) per second, over both nodes.
fn delivered(w: &Window) -> f64 {
    w.rate(PUBLISHER_NODE, FORWARDED) - w.rate(PUBLISHER_NODE, RELAY_PACKETS)
        + w.rate(REMOTE_NODE, FORWARDED)
        - w.rate(REMOTE_NODE, RELAY_PACKETS)
}

fn bytes_table(t: &mut String, b: &BytesResult) {
    let _ = writeln!(
        t,
        "One publisher on {PUBLISHER_NODE} (audio 50 pkt/s × 160 B + video 100 pkt/s × 1200 B), every subscriber on {REMOTE_NODE}, nobody else in the room. Bytes are RTP payload bytes.\n"
    );
    t.push_str("| subscribers on us-1 | published B/s into eu-1 | relay B/s out of eu-1 | relay / published | relay pkt/s | us-1 forwarded pkt/s | eu-1 CPU % | us-1 CPU % |\n");
    t.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in &b.steps {
        let w = &s.window;
        let _ = writeln!(
            t,
            "| {} | {} | {} | **{}** | {} | {} | {} | {} |",
            s.subscribers,
            f(w.rate(PUBLISHER_NODE, PUBLISHED_BYTES), 0),
            f(w.rate(PUBLISHER_NODE, RELAY_BYTES), 0),
            f(ratio(w), 3),
            f(w.rate(PUBLISHER_NODE, RELAY_PACKETS), 0),
            f(w.rate(REMOTE_NODE, FORWARDED), 0),
            f(w.cpu.of(PUBLISHER_NODE), 1),
            f(w.cpu.of(REMOTE_NODE), 1),
        );
    }
    t.push('\n');
}

fn ratio(w: &Window) -> f64 {
    w.rate(PUBLISHER_NODE, RELAY_BYTES) / w.rate(PUBLISHER_NODE, PUBLISHED_BYTES)
}

fn network(delay_ms: u64) -> String {
    if delay_ms == 0 {
        "no injected delay".into()
    } else {
        format!("{delay_ms} ms one way ({} ms RTT)", 2 * delay_ms)
    }
}

fn sorted(c: &JoinCase, f: impl Fn(&JoinSample) -> Duration) -> Vec<Duration> {
    let mut v: Vec<Duration> = c.samples.iter().map(f).collect();
    v.sort();
    v
}

fn pct(c: &JoinCase, p: f64, f: impl Fn(&JoinSample) -> Duration) -> f64 {
    percentile_sorted(&sorted(c, f), p).map_or(f64::NAN, ms)
}

fn pct_of(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, p).unwrap_or(f64::NAN)
}

fn join_tables(t: &mut String, args: &Args, joins: &[&anyhow::Result<JoinResult>]) {
    let _ = writeln!(
        t,
        "ms from sending `join` on {REMOTE_NODE}'s socket (region `us`); one sample of each case per round, alternating; {} measured per case after {} unmeasured; joiners check ICE every {}.\n",
        args.joins,
        args.join_warmup,
        if args.client_ice_ms == 0 {
            "200 ms (webrtc-rs default)".to_string()
        } else {
            format!("{} ms", args.client_ice_ms)
        }
    );
    t.push_str("| network | region `us` | joins ok / failed | → `joined` p50 | → `joined` p99 | → `subscribe_offer` p50 | → first packet p50 | → first packet p99 | → first packet max |\n");
    t.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for j in joins {
        match j {
            Ok(j) => {
                for (label, c) in [
                    ("not reached (fresh room)", &j.not_reached),
                    ("reached (link up)", &j.reached),
                ] {
                    let _ = writeln!(
                        t,
                        "| {} | {label} | {} / {} | {} | {} | {} | {} | {} | {} |",
                        network(j.delay_ms),
                        c.samples.len(),
                        c.failures.len(),
                        f(pct(c, 50.0, |s| s.joined), 1),
                        f(pct(c, 99.0, |s| s.joined), 1),
                        f(pct(c, 50.0, |s| s.offer), 1),
                        f(pct(c, 50.0, |s| s.media), 1),
                        f(pct(c, 99.0, |s| s.media), 1),
                        f(pct(c, 100.0, |s| s.media), 1),
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(t, "| | failed: {} | | | | | | | |", one_line(e));
            }
        }
    }
    t.push_str("\nWhere a not-reached join's time goes (from us-1's log lines `relay link opens` and `relayed track arrived`, same clock; p50 / p99, ms):\n\n");
    t.push_str("| network | samples | `join` sent → us-1 opens the room's link | link opens → first relayed track at us-1 | relayed track → joiner's first packet |\n");
    t.push_str("|---|---:|---:|---:|---:|\n");
    for j in joins.iter().filter_map(|j| j.as_ref().ok()) {
        let l = &j.not_reached.links;
        let seg = |g: &dyn Fn(&crate::joins::LinkTimes) -> f64| {
            let v: Vec<f64> = l.iter().map(|x| g(x) / 1000.0).collect();
            format!(
                "{} / {}",
                f(pct_of(v.clone(), 50.0), 1),
                f(pct_of(v, 99.0), 1)
            )
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            network(j.delay_ms),
            l.len(),
            seg(&|x| x.opened),
            seg(&|x| x.arrived - x.opened),
            seg(&|x| x.media - x.arrived),
        );
    }
    t.push('\n');
    for j in joins.iter().filter_map(|j| j.as_ref().ok()) {
        for c in [&j.not_reached, &j.reached] {
            for e in c.failures.iter().take(3) {
                let _ = writeln!(
                    t,
                    "- failed join ({}): {}",
                    network(j.delay_ms),
                    e.replace('\n', " ")
                );
            }
        }
    }
}

/// Measured figures against the targets, one line each, and the link decision's evidence.
pub fn verdict(r: &Report) -> String {
    let mut v = String::from("Against the targets:\n\n");
    let meets = |ok: bool| if ok { "meets" } else { "misses" };
    if let Some(Ok(l)) = &r.latency {
        let (d50, d99) = added(l);
        let _ = writeln!(
            v,
            "- latency added by one relay hop: p50 {} ms vs ≤ {TARGET_ADDED_P50_MS} ms: {}; p99 {} ms vs ≤ {TARGET_ADDED_P99_MS} ms: {}",
            f(d50, 2),
            meets(d50 <= TARGET_ADDED_P50_MS),
            f(d99, 2),
            meets(d99 <= TARGET_ADDED_P99_MS)
        );
    }
    if let Some(Ok(c)) = &r.cpu {
        let w = &c.relayed;
        let relayed = w.rate(PUBLISHER_NODE, RELAY_PACKETS);
        let net = |node: &str| us_per(w.cpu.of(node) - c.idle.cpu.of(node), relayed);
        let _ = writeln!(
            v,
            "- CPU per relayed packet (no target), net of idle: sender {PUBLISHER_NODE} {} µs, receiver {REMOTE_NODE} {} µs; a packet delivered through the hop costs both nodes {} µs, delivered on the publisher's node {} µs, gross (net) (one subscriber per publisher, so the publisher's ingest is not shared)",
            f(net(PUBLISHER_NODE), 1),
            f(net(REMOTE_NODE), 1),
            both(c, &c.relayed),
            both(c, &c.direct),
        );
    }
    if let Some(Ok(b)) = &r.bytes {
        let ratios: Vec<String> = b
            .steps
            .iter()
            .map(|s| format!("{} at {}", f(ratio(&s.window), 3), s.subscribers))
            .collect();
        let flat = b
            .steps
            .iter()
            .all(|s| (ratio(&s.window) - 1.0).abs() <= FLAT_TOLERANCE);
        let _ = writeln!(
            v,
            "- relay bytes out of {PUBLISHER_NODE} / published bytes, one remote node: {} subscribers vs flat at 1.0 (± {FLAT_TOLERANCE}): {}",
            ratios.join(", "),
            meets(flat)
        );
    }
    for j in [&r.join, &r.geo_join].into_iter().flatten() {
        let Ok(j) = j else { continue };
        let (n, re) = (&j.not_reached, &j.reached);
        let n99 = pct(n, 99.0, |s| s.media);
        if j.delay_ms > 0 {
            let _ = writeln!(
                v,
                "- join → first remote packet p99, region not reached, {}: {} ms vs ≤ {TARGET_GEO_FIRST_PACKET_P99_MS:.0} ms{}: {}",
                network(j.delay_ms),
                f(n99, 0),
                if j.delay_ms == 40 { "" } else { " (the target is for 40 ms one way)" },
                meets(n99 <= TARGET_GEO_FIRST_PACKET_P99_MS)
            );
        }
        let seg = |g: &dyn Fn(&crate::joins::LinkTimes) -> f64| {
            pct_of(n.links.iter().map(|x| g(x) / 1000.0).collect(), 50.0)
        };
        let _ = writeln!(
            v,
            "- link per room vs per node pair, {}: a join into a region the room had not reached waited {} ms (p50) / {} ms (p99) for its first packet, a join into a reached region {} / {} ms. Of the not-reached join's p50, {} ms went to the room's own relay link (us-1 opening it → first relayed track at us-1): that is what a link per node pair, already up for another room, would save. {} ms went to placement and membership before the link opened, and {} ms to the joiner's own connection, which starts only once the relayed track has arrived.",
            network(j.delay_ms),
            f(pct(n, 50.0, |s| s.media), 0),
            f(n99, 0),
            f(pct(re, 50.0, |s| s.media), 0),
            f(pct(re, 99.0, |s| s.media), 0),
            f(seg(&|x| x.arrived - x.opened), 0),
            f(seg(&|x| x.opened), 0),
            f(seg(&|x| x.media - x.arrived), 0),
        );
    }
    if r.geo_join.is_none() && r.join.is_some() {
        let _ = writeln!(
            v,
            "- the join part ran without injected delay only (geo-join not asked for)"
        );
    }
    v
}

pub fn section(
    args: &Args,
    facts: &MachineFacts,
    r: &Report,
    tables: &str,
    verdict: &str,
    note: Option<&str>,
) -> String {
    let mut s = bench::section_head(
        SECTION_BEGIN,
        "Cascading: relay hop latency and CPU, relay bytes, join into a new region (`bench_cascade`)",
        "cargo build --release -p node -p coordinator -p chaos",
        facts,
    );
    let nats_version = bench::command_output(&args.nats_bin.to_string_lossy(), &["--version"])
        .unwrap_or_else(|| "unknown".into());
    let nodes: Vec<String> = NODES.iter().map(|(id, r)| format!("{id} ({r})")).collect();
    let _ = writeln!(
        s,
        "- cluster from `chaos::sandbox`, every process and the clients on this one machine: {nats_version} (JetStream); {} coordinator(s); nodes {} with default settings (2 media threads); parts 1–4 on 127.0.0.1 with no injected delay; part 4 again under `chaos::geo::GeoNet` ({}): regions on their own loopback subnets, nodes behind per-port gateways (`--udp-ip`/`--public-ip`), NATS in eu and a delayed proxy for us and ap, clients bound in their region's subnet",
        args.coordinators,
        nodes.join(", "),
        network(args.geo_delay_ms)
    );
    let _ = writeln!(
        s,
        "- machine busy before the start: {:.0} % of all cores (see the *other CPU* column); process logs were kept in `{}`\n",
        r.busy_before,
        r.dir.display()
    );
    s.push_str(tables);
    s.push_str("How each figure is computed:\n\n\
- *latency*: each subscriber's latency histogram of the publisher's packets (receive time − send time written into the payload, one clock; log-linear buckets, ≤ 1.6 % error) copied at the start and end of the window and subtracted; *added* = relayed − direct percentile. Both subscribers see the same packets, so the publisher's own path cancels out.\n\
- *rates*: the nodes' `/metrics` counters sampled every 250 ms through the window, least-squares slope (the node adds to its counters in batches of 64 packets per track, so a two-point delta would be off by up to a batch). *relayed* = `sfu_relay_packets_sent_total` of eu-1; *received* = `sfu_packets_received_total` of us-1 (the relayed packets); *forwarded* = `sfu_packets_forwarded_total` (relay sends included); *delivered* = forwarded − relayed over both nodes.\n\
- *CPU*: utime + stime of each node process (all threads, `/proc/<pid>/stat`) over the window; 100 % = one core. *bench CPU*: this process (publishers and subscribers); *other CPU*: all cores' busy time (`/proc/stat`) minus the cluster's processes and this one — well above 0 means the window was disturbed.\n\
- *relay bytes*: `sfu_relay_bytes_sent_total` of eu-1 against `sfu_published_bytes_received_total` of eu-1 (payload bytes its own publisher sent in); with one remote node the ratio is 1.0 when each track crosses the link once whatever the subscribers behind it.\n\
- *join*: from just before `join` is sent (socket already open) to `joined`, to the first `subscribe_offer`, and to the first synthetic packet of the publisher counted by the joiner (polled every 1 ms). Exact nearest-rank percentiles. A not-reached sample's publisher joins a fresh room on eu-1 300 ms before the joiner. The breakdown places us-1's log timestamps against the joiner's wall clock.\n\n");
    s.push_str(&bench::section_tail(verdict, note, &r.health, SECTION_END));
    s
}
