//! Output: the tables, the verdict and the section written with `--write`.

use super::*;

pub(super) fn f1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}

pub(super) fn f0(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".into()
    }
}

pub(super) fn us_ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

pub(super) fn cpu_cells(c: &CpuUse) -> String {
    let mut s = String::new();
    for id in ["nats", "c1", "c2", "n1", "n2", "n3"] {
        let _ = write!(s, " {} |", f0(c.of(id)));
    }
    let _ = write!(
        s,
        " {} | {} | {} |",
        f0(c.bench),
        f0(c.other),
        f0(c.machine_busy)
    );
    s
}

pub(super) fn render_tables(r: &Report) -> String {
    let mut t = String::new();
    let mut cpu_rows: Vec<(String, CpuUse)> = Vec::new();
    if let Some(j) = &r.join {
        t.push_str("### Join latency (ms from the start of the WebSocket connect)\n\n");
        match j {
            Ok(j) => {
                let _ = writeln!(
                    t,
                    "Room hosted on {}; its publisher connected through {} (audio 50 pkt/s + video 100 pkt/s).\n",
                    j.host, j.publisher_via
                );
                t.push_str("| joiner | case | joins ok / failed | WS open p50 | → `joined` p50 | → `joined` p99 | → `subscribe_offer` p50 | → first packet p50 | → first packet p99 | → first packet max |\n");
                t.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
                for run in &j.runs {
                    for (label, c) in [
                        (format!("same node (via {})", j.host), &run.same),
                        (
                            format!(
                                "other node (via {})",
                                c_via(&run.other.via).unwrap_or_else(|| "–".into())
                            ),
                            &run.other,
                        ),
                    ] {
                        let _ = writeln!(
                            t,
                            "| {} | {label} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
                            run.client_label(),
                            c.samples.len(),
                            c.failures.len(),
                            f1(c.pct(50.0, |s| s.open)),
                            f1(c.pct(50.0, |s| s.joined)),
                            f1(c.pct(99.0, |s| s.joined)),
                            f1(c.pct(50.0, |s| s.offer)),
                            f1(c.pct(50.0, |s| s.media)),
                            f1(c.pct(99.0, |s| s.media)),
                            f1(c.pct(100.0, |s| s.media)),
                        );
                    }
                }
                t.push_str("\nWhere the time goes (p50 / p99 of each segment, ms):\n\n");
                t.push_str("| joiner | case | connect → WS open | WS open → `joined` | `joined` → `subscribe_offer` | `subscribe_offer` → first packet |\n");
                t.push_str("|---|---|---:|---:|---:|---:|\n");
                for run in &j.runs {
                    for (label, c) in [("same node", &run.same), ("other node", &run.other)] {
                        let seg = |f: &dyn Fn(&JoinSample) -> Duration| {
                            format!("{} / {}", f1(c.pct(50.0, f)), f1(c.pct(99.0, f)))
                        };
                        let _ = writeln!(
                            t,
                            "| {} | {label} | {} | {} | {} | {} |",
                            run.client_label(),
                            seg(&|s| s.open),
                            seg(&|s| s.joined - s.open),
                            seg(&|s| s.offer - s.joined),
                            seg(&|s| s.media - s.offer),
                        );
                    }
                }
                t.push('\n');
                for run in &j.runs {
                    for c in [&run.same, &run.other] {
                        for f in c.failures.iter().take(3) {
                            let _ = writeln!(t, "- failed join: {}", f.replace('\n', " "));
                        }
                    }
                    cpu_rows.push((
                        format!(
                            "joins, client ICE {}",
                            if run.ice_ms == 0 {
                                "200 ms (default)".to_string()
                            } else {
                                format!("{} ms", run.ice_ms)
                            }
                        ),
                        run.cpu.clone(),
                    ));
                }
            }
            Err(e) => {
                let _ = writeln!(t, "failed: {}\n", one_line(e));
            }
        }
    }
    if let Some(m) = &r.msg {
        t.push_str("### Cross-node `message`\n\n");
        match m {
            Ok(m) => {
                let _ = writeln!(
                    t,
                    "{} pairs, each in its own room (rooms hosted on {}); every sender's socket on {}, every receiver's on {}, so {} routes every message to {} over NATS. Latency = arrival at the receiving client − send time in the message.\n",
                    m.pairs,
                    m.hosts
                        .iter()
                        .map(|(k, v)| format!("{k} ×{v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.from,
                    m.to,
                    m.from,
                    m.to
                );
                let _ = writeln!(t, "| offered msg/s | sent msg/s | delivered msg/s | lost | out of order | p50 ms | p99 ms | max ms | errors to senders | {} CPU % (busiest thread) | {} CPU % (busiest thread) | nats CPU % | bench CPU % | machine busy % |", m.from, m.to);
                t.push_str(
                    "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
                );
                for s in &m.steps {
                    let mut errs: Vec<String> =
                        s.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
                    if !s.send_failures.is_empty() {
                        errs.push(format!(
                            "send failed ×{}: {}",
                            s.send_failures.len(),
                            s.send_failures[0].replace('|', "/")
                        ));
                    }
                    let _ = writeln!(
                        t,
                        "| {}{} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} |",
                        s.offered,
                        if s.saturated { " (saturated)" } else { "" },
                        s.sent as f64 / s.secs,
                        s.delivered_rate(),
                        s.lost(),
                        s.out_of_order,
                        us_ms(s.lat.percentile(50.0)),
                        us_ms(s.lat.percentile(99.0)),
                        us_ms(s.lat.max()),
                        if errs.is_empty() {
                            "none".into()
                        } else {
                            errs.join(", ")
                        },
                        f0(s.cpu.of(&m.from)),
                        f0_busiest(&s.cpu, &m.from),
                        f0(s.cpu.of(&m.to)),
                        f0_busiest(&s.cpu, &m.to),
                        f0(s.cpu.of("nats")),
                        f0(s.cpu.bench),
                        f0(s.cpu.machine_busy),
                    );
                    cpu_rows.push((format!("msg step {}/s", s.offered), s.cpu.clone()));
                }
                if !m.skipped.is_empty() {
                    let _ = writeln!(
                        t,
                        "\nNot run (an earlier step saturated or time ran out): {:?} msg/s.",
                        m.skipped
                    );
                }
                t.push('\n');
            }
            Err(e) => {
                let _ = writeln!(t, "failed: {}\n", one_line(e));
            }
        }
    }
    if let Some(a) = &r.alloc {
        t.push_str("### Allocations (`coord.allocate` over NATS, fresh rooms)\n\n");
        match a {
            Ok(a) => {
                t.push_str("| requests | in flight | ok | errors | allocations/s | p50 ms | p99 ms | max ms | rooms per node | decided from the mirror | CAS conflicts |\n");
                t.push_str("|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|\n");
                let p = |q: f64| percentile_sorted(&a.lat, q).map_or(f64::NAN, ms);
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} ({:.0} %) | {:.0} |",
                    a.requests,
                    a.inflight,
                    a.ok,
                    if a.errors.is_empty() {
                        "none".into()
                    } else {
                        a.errors
                            .iter()
                            .map(|(k, v)| format!("{k} ×{v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    a.ok as f64 / a.secs,
                    p(50.0),
                    p(99.0),
                    p(100.0),
                    a.per_node
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    a.coord.mirror_reads,
                    100.0 * a.coord.mirror_reads
                        / (a.coord.mirror_reads + a.coord.kv_reads).max(1.0),
                    a.coord.conflicts,
                );
                t.push('\n');
                cpu_rows.push(("allocations".into(), a.cpu.clone()));
            }
            Err(e) => {
                let _ = writeln!(t, "failed: {}\n", one_line(e));
            }
        }
    }
    if !cpu_rows.is_empty() {
        t.push_str("### CPU while measuring (% of one core; the machine has nproc × 100 %)\n\n");
        t.push_str("| interval | s | nats | c1 | c2 | n1 | n2 | n3 | bench | other processes | machine busy % |\n");
        t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (label, c) in &cpu_rows {
            let _ = writeln!(t, "| {label} | {:.1} |{}", c.secs, cpu_cells(c));
        }
    }
    t
}

pub(super) fn c_via(via: &BTreeMap<String, usize>) -> Option<String> {
    if via.is_empty() {
        return None;
    }
    Some(
        via.iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

pub(super) fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ").replace('|', "/")
}

/// Measured figures against the targets, one line each.
pub(super) fn render_verdict(r: &Report) -> String {
    let mut v = String::new();
    v.push_str("Against the targets:\n\n");
    if let Some(Ok(j)) = &r.join {
        for run in &j.runs {
            for (label, c) in [("same node", &run.same), ("other node", &run.other)] {
                let p99 = c.pct(99.0, |s| s.media);
                let _ = writeln!(
                v,
                "- join → first remote packet p99, {label}, {}: {} ms vs ≤ {TARGET_FIRST_PACKET_P99_MS:.0} ms: {}",
                run.client_label(),
                f1(p99),
                if p99 <= TARGET_FIRST_PACKET_P99_MS {
                    "meets"
                } else {
                    "misses"
                }
            );
            }
        }
    }
    if let Some(Ok(m)) = &r.msg {
        let ok: Vec<&MsgStep> = m
            .steps
            .iter()
            .filter(|s| !s.saturated && s.lat.percentile(99.0) as f64 / 1000.0 < TARGET_MSG_P99_MS)
            .collect();
        let best_any = m
            .steps
            .iter()
            .map(|s| s.delivered_rate())
            .fold(0.0, f64::max);
        match ok
            .iter()
            .max_by(|a, b| a.delivered_rate().total_cmp(&b.delivered_rate()))
        {
            Some(s) => {
                let _ = writeln!(
                    v,
                    "- cross-node messages: highest rate delivered in full with p99 < {TARGET_MSG_P99_MS:.0} ms: {:.0} msg/s (p99 {} ms) through {} vs ≥ {TARGET_MSG_RATE:.0} msg/s per node: {}; the most delivered in any step: {:.0} msg/s",
                    s.delivered_rate(),
                    us_ms(s.lat.percentile(99.0)),
                    m.from,
                    if s.delivered_rate() >= TARGET_MSG_RATE { "meets" } else { "misses" },
                    best_any
                );
            }
            None => {
                let _ = writeln!(
                    v,
                    "- cross-node messages: no step delivered everything with p99 < {TARGET_MSG_P99_MS:.0} ms (target ≥ {TARGET_MSG_RATE:.0} msg/s per node); the most delivered in any step: {:.0} msg/s: misses",
                    best_any
                );
            }
        }
        // CPU per message at the busiest step that still delivered everything.
        if let Some(s) = m
            .steps
            .iter()
            .filter(|s| !s.saturated)
            .max_by(|a, b| a.delivered_rate().total_cmp(&b.delivered_rate()))
        {
            let per = |pct: f64| pct / 100.0 / s.delivered_rate() * 1e6;
            let _ = writeln!(
                v,
                "- CPU per delivered message at {:.0} msg/s (the busiest step delivered in full): {} {:.1} µs, {} {:.1} µs, nats-server {:.1} µs, this program's clients {:.1} µs; machine {:.0} % busy; busiest thread (% of a core): {}",
                s.delivered_rate(),
                m.from,
                per(s.cpu.of(&m.from)),
                m.to,
                per(s.cpu.of(&m.to)),
                per(s.cpu.of("nats")),
                per(s.cpu.bench),
                s.cpu.machine_busy,
                [m.from.as_str(), m.to.as_str()]
                    .iter()
                    .filter_map(|id| s.cpu.busiest_thread.iter().find(|(p, _, _)| p == id))
                    .map(|(p, name, v)| format!("{p} `{name}` {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if let Some(Ok(a)) = &r.alloc {
        let _ = writeln!(
            v,
            "- allocations (no target): {:.0}/s with {} in flight, p99 {} ms",
            a.ok as f64 / a.secs,
            a.inflight,
            f1(percentile_sorted(&a.lat, 99.0).map_or(f64::NAN, ms))
        );
    }
    v
}

pub(super) fn render_section(
    args: &Args,
    facts: &MachineFacts,
    r: &Report,
    tables: &str,
    verdict: &str,
    note: Option<&str>,
) -> String {
    let mut s = bench::section_head(
        SECTION_BEGIN,
        "Cluster: join latency, allocations, cross-node messages (`bench_cluster`)",
        "cargo build --release -p node -p coordinator -p chaos",
        facts,
    );
    let nats_version = bench::command_output(&args.nats_bin.to_string_lossy(), &["--version"])
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(
        s,
        "- cluster, all on 127.0.0.1 of this one machine together with the clients: {nats_version} (JetStream, store in a temporary directory); coordinators c1, c2; nodes n1, n2 (region eu) and n3 (region us) with `--dev-tokens --msg-rate {}` (raised from the default 50/s per socket so the message part is not capped by the per-socket rate limit){} and otherwise default settings (1 HTTP worker, 2 media threads)",
        args.node_msg_rate,
        if args.node_capacity > 0 {
            format!(", `--max-rooms {0} --max-peers {0}`", args.node_capacity)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "- machine busy before the start: {:.0} % of all cores (other processes share them; see the CPU table's *other* column); process logs were kept in `{}`\n",
        r.busy_before,
        r.dir.display()
    );
    s.push_str(tables);
    s.push('\n');
    s.push_str("How each figure is computed:\n\n\
- *join*: one joiner at a time, alternating same node / other node, each leaving before the next connects; \
one round per joiner ICE pacing (`--join-client-ice-ms`: the joiner answers the node's offer, so it is the controlled ICE agent \
and media waits for its own next connectivity check; webrtc-rs checks every 200 ms by default, browsers about every 50 ms); \
times run from just before the WebSocket connect (TCP + upgrade included) to `joined`, to the first \
`subscribe_offer`, and to the first synthetic packet of the publisher counted by the client (counters polled every 1 ms, so up to ~1 ms late). \
Exact nearest-rank percentiles of the measured joins (warm-up joins excluded).\n\
- *allocations*: requests for fresh room names sent to `coord.allocate` (the coordinators' queue group) as node n1 would, \
a fixed number in flight; allocations/s = successful replies / wall time of the whole batch; latency from request to reply \
in this process; *decided from the mirror* = records the receiving coordinator took from its in-memory mirror of the \
directory rather than reading KV, from the coordinators' `coord_directory_reads_total` (the share is of all records read).\n\
- *messages*: open loop; every sender paces its share of the offered rate (catching up in bursts when its socket blocks); \
*sent* and *delivered* are per second of the sending window; *lost* = sent − received after up to 10 s of draining; \
latency = arrival at the receiving client's reader − the send time written into the message just before the WebSocket write (one clock), \
log-linear histogram (≤ 1.6 % bucket error). A step is *saturated* when delivery fell below 90 % of the offered rate, \
p99 exceeded 1 s, anything was lost, or a sender got an error; later steps are then skipped.\n\
- *CPU*: utime + stime from `/proc/<pid>/stat` of each process over the interval; *other processes* = all cores' busy time \
(`/proc/stat`) minus ours; well above 0 means the figures were disturbed.\n\n");
    s.push_str(&bench::section_tail(verdict, note, &r.health, SECTION_END));
    s
}
