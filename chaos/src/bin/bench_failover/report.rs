//! Tables, the verdict against the targets, and the BENCHMARKS.md section.

use crate::rounds::{Failure, Part, Sample};
use crate::{Args, Report, COORDINATORS, NODES};
use chaos::bench::{self, ms, percentile_sorted, MachineFacts};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Nearest-rank percentile, ms (NaN when empty).
fn pct(v: &[Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    percentile_sorted(&v, p).map_or(f64::NAN, ms)
}

fn f(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".into()
    }
}

/// "p50 / p99 / max", ms.
fn spread(v: &[Duration]) -> String {
    let p = |q| f(pct(v, q));
    format!("{} / {} / {}", p(50.0), p(99.0), p(100.0))
}

fn of(samples: &[&Sample], g: impl Fn(&Sample) -> Duration) -> Vec<Duration> {
    samples.iter().map(|s| g(s)).collect()
}

fn samples(part: &Part) -> Vec<&Sample> {
    part.rounds.iter().flat_map(|r| &r.samples).collect()
}

fn failures(part: &Part) -> Vec<&Failure> {
    part.rounds.iter().flat_map(|r| &r.failures).collect()
}

fn detections(part: &Part) -> Vec<Duration> {
    part.rounds
        .iter()
        .filter_map(|r| Some(r.detection?.0))
        .collect()
}

/// A part's fault, headline figure and target (the failover issue's, on loopback).
struct Kind {
    target_name: &'static str,
    /// p99 of the headline figure, ms.
    target: f64,
    /// What a participant without media back is called.
    lost: &'static str,
    who: &'static str,
    fault: &'static str,
    headline: &'static str,
    figure: fn(&Sample) -> Duration,
}

const KILL: Kind = Kind {
    target_name: "kill → media back, participants of the victim's rooms,",
    target: 2000.0,
    lost: "not back",
    who: "Per participant of a room on the victim (those whose socket alone was on it recover too, and are not counted)",
    fault: "kill",
    headline: "**kill → media back**",
    figure: Sample::total,
};

const DRAIN: Kind = Kind {
    target_name: "drain gap",
    target: 500.0,
    lost: "dropped",
    who: "Per participant",
    fault: "SIGTERM",
    headline: "**gap**: noticed → media back",
    figure: Sample::gap,
};

pub fn tables(args: &Args, r: &Report) -> String {
    let mut t = String::new();
    let load = format!(
        "3 publishing participants (each video {} pkt/s × 1200 B + audio {} pkt/s × 160 B)",
        args.video_pps, args.audio_pps
    );
    if let Some(k) = &r.kill {
        let hosted: Vec<usize> = k.rounds.iter().map(|x| x.rooms_on_node).collect();
        let cmd: Vec<Duration> = k.rounds.iter().map(|x| x.signal_cmd).collect();
        let _ = writeln!(
            t,
            "### 1. SIGKILL of the node hosting most rooms\n\nRounds: {}, each {} rooms of {load}, a room's sockets on n1, n2 and n3; the victim hosted {}–{} rooms. The clock starts just before `kill -KILL` runs (which took {} ms, p50). ms, p50 / p99 / max (nearest rank).\n",
            k.rounds.len(),
            args.rooms,
            hosted.iter().min().unwrap_or(&0),
            hosted.iter().max().unwrap_or(&0),
            f(pct(&cmd, 50.0)),
        );
        let mut causes = BTreeMap::<String, usize>::new();
        for (_, cause) in k.rounds.iter().filter_map(|x| x.detection) {
            *causes
                .entry(format!("{cause:?}").to_lowercase())
                .or_default() += 1;
        }
        let causes: Vec<String> = causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let det = detections(k);
        let _ = writeln!(
            t,
            "| measure | rounds | not seen | p50 / p99 / max | found by |\n|---|---:|---:|---:|---|\n| **detection**: kill → first `cluster.node.down` | {} | {} | {} | {} |\n",
            det.len(),
            k.rounds.len() - det.len(),
            spread(&det),
            causes.join(", ")
        );
        participants(&mut t, &KILL, k);
    }
    if let Some(d) = &r.drain {
        let exits: Vec<Duration> = d.rounds.iter().filter_map(|x| Some(x.exit?.0)).collect();
        let clean = d
            .rounds
            .iter()
            .filter(|x| x.exit.is_some_and(|e| e.1))
            .count();
        let _ = writeln!(
            t,
            "### 2. Drain (SIGTERM) of the node holding every room\n\nRounds: {}, each {} rooms of {load}, every socket and room on n1 (alone in region `eu`; n2 and n3 in `us` take the rooms over). ms, p50 / p99 / max (nearest rank).\n",
            d.rounds.len(),
            args.drain_rooms
        );
        participants(&mut t, &DRAIN, d);
        let _ = writeln!(
            t,
            "Participants moved: {}; **dropped** (no media back within {} s): **{}**. n1 exited {} ms after SIGTERM (p50 / p99 / max), with status 0 in {clean} of {} rounds.\n",
            samples(d).len() + failures(d).len(),
            args.recovery_secs,
            failures(d).len(),
            spread(&exits),
            d.rounds.len()
        );
    }
    t
}

/// The participants of the rooms on the node that failed: a row for all and, when they
/// noticed the fault in several ways, one per way; then the failures and the part's error.
fn participants(t: &mut String, k: &Kind, part: &Part) {
    let _ = writeln!(
        t,
        "{}:\n\n| noticed by | samples | not back | {} → noticed | noticed → `joined` | `joined` → media back | {} | fresh join / > 1 recovery |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        k.who, k.fault, k.headline
    );
    let (all, failed) = (samples(part), failures(part));
    row(t, k, "all", &all, &failed.len().to_string());
    let mut causes: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in &all {
        causes.entry(&s.noticed_by).or_default().push(s);
    }
    for (cause, s) in causes.iter().filter(|_| causes.len() > 1) {
        row(t, k, cause, s, "");
    }
    if !failed.is_empty() || part.error.is_some() {
        t.push('\n');
    }
    for x in failed.iter().take(10) {
        let _ = writeln!(t, "- not back: round {}, `{}`: {}", x.round, x.who, x.why);
    }
    if failed.len() > 10 {
        let _ = writeln!(t, "- … and {} more", failed.len() - 10);
    }
    if let Some(e) = &part.error {
        let _ = writeln!(t, "- **the part stopped early**: {}", e.replace('\n', " "));
    }
    let partial = all.iter().filter(|s| !s.media_at_complete).count();
    let _ = writeln!(
        t,
        "\n`Recovery::media_at` lacked another participant in {partial} of {} samples (see below).\n",
        all.len()
    );
}

fn row(t: &mut String, k: &Kind, cause: &str, s: &[&Sample], not_back: &str) {
    let _ = writeln!(
        t,
        "| {cause} | {} | {not_back} | {} | {} | {} | {} | {} / {} |",
        s.len(),
        spread(&of(s, |x| x.noticed)),
        spread(&of(s, |x| x.joined)),
        spread(&of(s, |x| x.media)),
        spread(&of(s, k.figure)),
        s.iter().filter(|x| x.fresh_join).count(),
        s.iter().filter(|x| x.again).count(),
    );
}

/// One line against the part's target, with where the median and the slowest sample spent
/// their time.
fn against(v: &mut String, k: &Kind, part: &Part) {
    let mut all = samples(part);
    all.sort_by_key(|x| (k.figure)(x));
    // Participants without media back count as never: the p99 is theirs once they are more
    // than 1 % of all.
    let (lost, n) = (failures(part).len(), all.len() + failures(part).len());
    let rank = ((0.99 * n as f64).ceil() as usize).max(1);
    let p99 = all
        .get(rank - 1)
        .map_or(f64::INFINITY, |x| ms((k.figure)(x)));
    let (shown, verdict) = if p99 <= k.target {
        (format!("{} ms", f(p99)), "meets".to_string())
    } else if p99.is_finite() {
        let by = format!("**misses** by {} ms", f(p99 - k.target));
        (format!("{} ms", f(p99)), by)
    } else {
        let never = format!("never ({lost} of {n} without media back)");
        (never, "**misses**".to_string())
    };
    let show = |x: Option<&&Sample>| {
        x.map_or("–".into(), |x| {
            let (n, j, m) = (ms(x.noticed), ms(x.joined), ms(x.media));
            format!("{} + {} + {} ms", f(n), f(j), f(m))
        })
    };
    let _ = writeln!(
        v,
        "- {} p99: {shown} vs ≤ {} ms: {verdict}; the median sample took {}, the slowest {} (to noticed + to `joined` + to media); {lost} {}",
        k.target_name,
        k.target,
        show(percentile_sorted(&all, 50.0).as_ref()),
        show(all.last()),
        k.lost
    );
}

pub fn verdict(r: &Report) -> String {
    let mut v = String::from("Against the targets:\n\n");
    if let Some(k) = &r.kill {
        let det = detections(k);
        let (spread, n) = (spread(&det), det.len());
        let _ = writeln!(v, "- detection (no target): {spread} ms over {n} kills");
        against(&mut v, &KILL, k);
    }
    if let Some(d) = &r.drain {
        against(&mut v, &DRAIN, d);
    }
    v
}

/// The section: `[begin marker, tables, verdict, end marker]` around the run's facts.
pub fn section(
    args: &Args,
    facts: &MachineFacts,
    r: &Report,
    [begin, tables, verdict, end]: [&str; 4],
    note: Option<&str>,
) -> String {
    let title = "Failover: node death detection, kill → media back, drain gap (`bench_failover`)";
    let build = "cargo build --release -p node -p coordinator -p chaos";
    let mut s = bench::section_head(begin, title, build, facts);
    let nats = bench::command_output(&args.bins.nats_bin.to_string_lossy(), &["--version"])
        .unwrap_or_else(|| "nats-server (version unknown)".into());
    let busy: Vec<String> = r
        .busy_during
        .iter()
        .map(|(p, b)| format!("{p} {b:.0} %"))
        .collect();
    let ice = args
        .client_ice()
        .map_or("200 ms".into(), |d| format!("{} ms", d.as_millis()));
    let _ = writeln!(
        s,
        "- cluster from `chaos::sandbox`, every process and client on this machine's loopback: {nats}; coordinators {}; nodes {} with default settings (drain batch 10, drain deadline 60 s, 3 s node timeout) but `--room-empty-grace-secs=1`\n\
- participants: `chaos::Participant` from region `eu`, recovering by themselves on PROTOCOL.md's schedule (at once, then 0.25, 0.5, 1, 2, 5 s, each stretched by up to 50 %), ICE checks every {ice}\n\
- machine busy before the start: {:.0} % of all cores; during the parts (this program and its cluster included): {}; process logs were kept in `{}`\n",
        COORDINATORS.join(", "),
        NODES.join(", "),
        r.busy_before,
        busy.join(", "),
        r.dir.display()
    );
    s.push_str(tables);
    s.push_str("How each figure is computed:\n\n\
- *detection*: from just before `kill -KILL` runs to this program receiving the first `cluster.node.down` naming the victim, on a NATS subscription made before the first kill. *found by*: its `cause`: `probe` when a coordinator's ping of the node had no responders after something suspected it (a client resuming elsewhere, a join without an answer), `silence` after 3 s without heartbeats.\n\
- *noticed by*: how the participant's first recovery after the fault began: its socket closed (it was on the dead node), a `reconnect` from the node its socket is on (`node_failed`, `drain`), or a failed peer connection. *noticed* and *joined*: `Recovery::noticed_at` and `Rejoined::at` of the recovery that took it off the node (its last, rejoined on another node, by `resume` or, when the new node refuses the resume token, a fresh `join`; it then publishes again). *> 1 recovery*: participants with an earlier recovery after the fault, which failed or rejoined on the failing node itself (its own media gap is not in the figures). *media back*: the latest over the room's other participants of the first sighting of one of their packets after that `joined` (so over the new connections). This program reads each participant's counters every 10 ms and takes `Recovery::media_at` (stamped by the participant at the same pace) when that is earlier: `media_at` alone falls short, as the participant stops stamping once everyone it sees has sent, and the first one back in a room that moved sees nobody.\n\
- *kill → media back* = the three segments' sum, per participant. The drain *gap* leaves out SIGTERM → noticed (the node tells at most 10 participants at a time, a batch per 100 ms tick) and is what a participant lives through.\n\
- *not back* / *dropped*: affected participants without a packet from every other one within `--recovery-secs`, each listed under its table. Percentiles are nearest rank over every sample of every round; a segment's percentiles do not add up to the total's. The tables' percentiles are over the participants that got media back; the verdict's p99 counts those that did not as never.\n\n");
    s.push_str(&bench::section_tail(verdict, note, &r.health, end));
    s
}
