//! Output: the table, the headline and the section written with `--write`.

use super::*;

/// The µs-per-packet column's header: CPU-seconds per million forwarded packets is the same
/// number as CPU-microseconds per forwarded packet.
pub(super) const CPU_PER_PKT: &str = "node CPU µs per fwd pkt (= CPU-s per M fwd)";

pub(super) fn render_table(outcomes: &[Outcome], nproc: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| subscribers | load | setup s | sent pkt/s | forwarded pkt/s | delivered pkt/s | node CPU % | {CPU_PER_PKT} | bench CPU % | other CPU % | loss % | stalled | p50 ms | p99 ms | max ms | node RSS MiB | dropped congested / write err |"
    );
    t.push_str(
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        let (n, load) = (o.n, o.load.name());
        match &o.result {
            Ok(r) => {
                let w = &r.window;
                let _ = writeln!(
                    t,
                    "| {n} | {load} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.3} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} / {:.0} |",
                    r.setup_secs,
                    w.sent_pps,
                    w.forwarded_pps,
                    w.delivered_pps,
                    w.node_cpu_pct(),
                    w.cpu_per_mpkt(),
                    w.bench_cpu_pct(),
                    w.other_cpu_pct(nproc),
                    w.loss_pct,
                    w.stalled,
                    ms(w.lat.percentile(50.0)),
                    ms(w.lat.percentile(99.0)),
                    ms(w.lat.max()),
                    w.rss_kib as f64 / 1024.0,
                    w.dropped_congested,
                    w.dropped_write_error,
                );
            }
            Err(e) => {
                let msg = format!("{e:#}").replace('|', "/").replace('\n', " ");
                let _ = writeln!(
                    t,
                    "| {n} | {load} | failed: {msg} | | | | | | | | | | | | | | |"
                );
            }
        }
    }
    t
}

/// The headline: node CPU per forwarded packet, one line per N with every load measured.
pub(super) fn render_headline(outcomes: &[Outcome]) -> String {
    let mut h = String::from("Node CPU per forwarded packet (µs; = CPU-s per M fwd):\n");
    let mut ns: Vec<usize> = Vec::new();
    for o in outcomes {
        if !ns.contains(&o.n) {
            ns.push(o.n);
        }
    }
    for n in ns {
        let per_load: Vec<String> = outcomes
            .iter()
            .filter(|o| o.n == n)
            .map(|o| match &o.result {
                Ok(r) => format!(
                    "{} {:.2} µs (loss {:.3} %)",
                    o.load.name(),
                    r.window.cpu_per_mpkt(),
                    r.window.loss_pct
                ),
                Err(_) => format!("{} failed", o.load.name()),
            })
            .collect();
        let _ = writeln!(h, "- N = {n}: {}", per_load.join(", "));
    }
    h
}

/// The section's "load:" line.
pub(super) fn load_line(args: &Args) -> String {
    let loads: Vec<String> = args.load.loads().iter().map(|l| l.describe(args)).collect();
    let per_n = if args.load.loads().len() > 1 {
        "a row per N and load, each run on a fresh node"
    } else {
        "a row per N, each run on a fresh node"
    };
    format!(
        "- load ({per_n}): one publisher; {}; N subscribe-only clients set up {} at a time; window {} s after {} s of settling (up to {} windows while other processes took more than {} % of a core; the least disturbed is reported); node with default settings (`--dev-tokens --udp-ports 0`, 2 media threads); clients and node on the same machine",
        loads.join("; "),
        args.concurrency,
        args.seconds,
        args.settle,
        args.attempts.max(1),
        args.max_other
    )
}

pub(super) fn render_section(
    args: &Args,
    facts: &MachineFacts,
    table: &str,
    outcomes: &[Outcome],
    note: Option<&str>,
) -> String {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_else(|| format!("unix {}", unix_secs()));
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]).map(|c| {
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c} (working tree had uncommitted changes)")
        } else {
            c
        }
    });
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_BEGIN}");
    let _ = writeln!(
        s,
        "## Forwarding: one publisher, N subscribers, one node (`bench_forward`)\n"
    );
    let _ = writeln!(
        s,
        "```\ncargo build --release -p node -p chaos\n{}\n```\n",
        command_line()
    );
    let _ = writeln!(s, "- date: {date}");
    if let Some(c) = commit {
        let _ = writeln!(s, "- commit: {c}");
    }
    let _ = writeln!(
        s,
        "- machine: {} CPUs (nproc), {}, Linux {}; CLK_TCK {} ({})",
        facts.nproc, facts.cpu_model, facts.kernel, facts.clk_tck, facts.clk_tck_note
    );
    let _ = writeln!(s, "{}\n", load_line(args));
    s.push_str(table);
    s.push('\n');
    s.push_str(&render_headline(outcomes));
    s.push('\n');
    s.push_str(
        "How each figure is computed:\n\n\
- *load*: *video* publishes one video track and no audio track, so every forwarded packet is \
video-size; *mixed* adds the audio track, whose small packets lower the average cost per packet. \
Every figure below covers exactly the tracks published in that row.\n\
- *forwarded pkt/s*: least-squares slope of the node's `sfu_packets_forwarded_total`, sampled \
from `/metrics` every 250 ms through the window (the node adds to the counter in batches of 64 \
received packets per track, so a two-point delta would be off by up to ±8 %). *delivered pkt/s*: \
packets the subscribers' applications received in the window (their own counters). *sent pkt/s*: \
packets the publisher handed to webrtc.\n\
- *node CPU*: utime + stime of the node process (all threads, `/proc/<pid>/stat`) over the \
window; 100 % = one core, so the machine has nproc × 100 %. *node CPU µs per fwd pkt* = node \
CPU-seconds / (forwarded pkt/s × window / 10⁶), i.e. CPU-seconds per million forwarded packets, \
which is the same number as CPU-microseconds per forwarded packet. \
*bench CPU*: the same for this process (publisher + all subscribers, which compete with the node \
for the same cores). *other CPU*: everything else on the machine in the window (all cores' non-idle time from \
`/proc/stat`, minus node and bench); well above 0 means the figures were disturbed.\n\
- *loss*: from statistics snapshots of every subscriber at the start and end of the window, \
Σ growth of missing sequence numbers / Σ growth of (highest − first + 1), over all subscribers and \
every published track. *stalled*: subscribers missing a published track, or with a track whose \
highest sequence number advanced less than half of what the publisher sent in the window (loss by \
sequence alone cannot see a stream that stopped).\n\
- *latency*: receive time − send time embedded in the payload (one clock), of every non-duplicate \
packet received in the window, pooled over all subscribers and every published track: each \
subscriber's latency histograms (≤ 1.6 % bucket error) are copied at the start and end of the \
window and subtracted. *max* is the top of the highest non-empty bucket.\n\
- *node RSS*: `VmRSS` at the end of the window. *dropped*: growth of \
`sfu_packets_dropped_total{reason=congested|write_error}` in the window.\n\n",
    );
    let leaks: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let r = o.result.as_ref().ok()?;
            let label = o.label();
            match r.peers_after_leave {
                Some(0.0) => None,
                Some(p) => Some(format!("{label}: sfu_peers = {p} 10 s after everyone left")),
                None => Some(format!("{label}: sfu_peers unreadable after everyone left")),
            }
        })
        .collect();
    if !leaks.is_empty() {
        let _ = writeln!(s, "Teardown: {}.\n", leaks.join("; "));
    }
    s.push_str("### What dominates\n\n");
    match note {
        Some(n) => {
            s.push_str(n.trim());
            s.push_str("\n\n");
        }
        None if outcomes
            .iter()
            .any(|o| o.result.as_ref().is_ok_and(|r| r.profile.is_some())) =>
        {
            s.push_str("No summary was given (`--note`); the profiles are below.\n\n")
        }
        None => s.push_str("Not measured (no profile was taken for this run).\n\n"),
    }
    for o in outcomes {
        if let Some(p) = o.result.as_ref().ok().and_then(|r| r.profile.as_deref()) {
            let _ = writeln!(
                s,
                "<details><summary>perf profile of the node at N = {}, {} load (taken after the window)</summary>\n\n```\n{}```\n</details>\n",
                o.n,
                o.load.name(),
                p
            );
        }
    }
    let _ = writeln!(s, "{SECTION_END}");
    s
}
