//! `chaos run all`: every scenario but the soak, one after the other, and the summary the
//! repository keeps (`CHAOS.md`, like `BENCHMARKS.md`): per scenario its verdict, recovery
//! times, packets lost, the invariants that failed with their evidence, and its timeline
//! picture.

use super::report::Report;
use crate::invariants::Verdict;
use std::fmt::Write as _;
use std::time::Duration;

/// The scenarios of the full suite, in the order run.
pub const SUITE: [&str; 11] = [
    "kill",
    "stop",
    "nats",
    "hostile",
    "coordinator",
    "cut",
    "starve",
    "churn",
    "nats3",
    "partition",
    "client",
];

/// One scenario's outcome in the suite: its report, or why it could not run.
pub struct Entry {
    pub scenario: String,
    pub outcome: Result<Report, String>,
    /// The timeline picture's path, relative to the summary file.
    pub timeline: Option<String>,
    pub took: Duration,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{}", d.as_millis()))
}

/// The Markdown summary of a suite run, for `command`.
pub fn markdown(entries: &[Entry], command: &str, machine: &str) -> String {
    let mut s = String::new();
    let passed = entries
        .iter()
        .filter(|e| e.outcome.as_ref().is_ok_and(|r| r.passed))
        .count();
    let total: Duration = entries.iter().map(|e| e.took).sum();
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(s, "Machine: {machine}\n");
    let _ = writeln!(
        s,
        "{passed} of {} scenarios passed; the suite took {:.0} s.\n",
        entries.len(),
        total.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| scenario | seed | verdict | took s | faults | recovery p50 / p99 / max ms | \
         links never back | packets lost (of expected) | failed |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for e in entries {
        let r = match &e.outcome {
            Ok(r) => r,
            Err(why) => {
                let why: String = why.chars().take(200).collect();
                let _ = writeln!(
                    s,
                    "| {} | - | could not run | {:.0} | - | - | - | - | {} |",
                    e.scenario,
                    e.took.as_secs_f64(),
                    why.replace('|', "/").replace('\n', " ")
                );
                continue;
            }
        };
        let p50 = r.faults.iter().filter_map(|f| f.recovery.p50).max();
        let p99 = r.faults.iter().filter_map(|f| f.recovery.p99).max();
        let max = r.faults.iter().filter_map(|f| f.recovery.max).max();
        let never: usize = r.faults.iter().map(|f| f.recovery.never).sum();
        let (lost, expected) = r
            .faults
            .iter()
            .filter_map(|f| f.packets_lost.as_ref())
            .fold((0, 0), |(l, x), p| (l + p.lost, x + p.expected));
        let failed: Vec<&str> = r
            .invariants
            .iter()
            .chain(r.faults.iter().map(|f| &f.everyone_receives))
            .filter(|c| !c.passed())
            .map(|c| c.invariant.name())
            .collect();
        let mut failed = failed.join(", ");
        if !r.errors.is_empty() {
            failed = format!("{failed} {} errors", r.errors.len());
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} / {} / {} | {never} | {lost} ({expected}) | {} |",
            r.scenario,
            r.seed,
            if r.passed { "pass" } else { "FAIL" },
            e.took.as_secs_f64(),
            r.faults.len(),
            ms(p50),
            ms(p99),
            ms(max),
            if failed.trim().is_empty() {
                "-"
            } else {
                failed.trim()
            }
        );
    }
    for e in entries {
        let Ok(r) = &e.outcome else { continue };
        let _ = writeln!(s, "\n### {}\n", r.scenario);
        let _ = writeln!(s, "Replay: `{}`\n", r.command);
        for f in &r.faults {
            let _ = writeln!(
                s,
                "- {} at {} ms: {}",
                f.step.fault,
                f.injected_ms,
                f.notes.join("; ")
            );
        }
        for c in r.invariants.iter().filter(|c| !c.passed()) {
            if let Verdict::Fail { evidence } = &c.verdict {
                let _ = writeln!(s, "- **{} failed**:", c.invariant.name());
                for line in evidence.iter().take(8) {
                    let _ = writeln!(s, "  - {line}");
                }
            }
        }
        for err in &r.errors {
            let _ = writeln!(s, "- **error**: {err}");
        }
        if let Some(t) = &e.timeline {
            let _ = writeln!(s, "\n![{} timeline]({t})", r.scenario);
        }
    }
    s
}
