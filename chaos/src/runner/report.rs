//! A run's report: JSON (serde) and Markdown, written as `report.json` and `report.md`,
//! with the timeline picture as `timeline.svg` when the run drew one.

use super::schedule::Step;
use super::timeline::LossSummary;
use crate::invariants::{Check, RecoveryTimes, Verdict};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_ms: u64,
    pub recovery_bound_ms: u64,
    /// The replay command's arguments.
    pub command: String,
    pub schedule: Vec<Step>,
    pub faults: Vec<FaultRecord>,
    /// End-of-run invariants, then each fault's `everyone_receives`.
    pub invariants: Vec<Check>,
    /// What stopped the run or a repair (a restart that failed, say).
    pub errors: Vec<String>,
    /// The run directory with every process's log.
    pub logs: String,
    pub passed: bool,
    /// The timeline picture ([`super::timeline::render_svg`]), written as `timeline.svg`
    /// and linked from the Markdown; not in the JSON.
    #[serde(skip)]
    pub timeline_svg: Option<String>,
}

/// One executed fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub step: Step,
    /// When it was injected, since the start of the fault phase (late when a repair ran
    /// over the schedule).
    pub injected_ms: u64,
    /// Fault → first packet per (receiver, publisher) link.
    pub recovery: RecoveryTimes,
    pub everyone_receives: Check,
    /// Participant recoveries noticed after the fault.
    pub participant_recoveries: usize,
    /// What the fault's execution and repair noted (hostile answers, restart times).
    pub notes: Vec<String>,
    /// Packets lost over every link from this fault's injection to the next fault's (the
    /// last: to the end of the sampling), [`super::timeline::fill_packets_lost`]; `None`
    /// when not sampled.
    pub packets_lost: Option<LossSummary>,
}

impl Report {
    /// Whether every invariant held and nothing broke the run.
    pub fn compute_passed(&mut self) {
        self.passed = self.errors.is_empty()
            && self.invariants.iter().all(Check::passed)
            && self.faults.iter().all(|f| f.everyone_receives.passed());
    }

    /// Writes `report.json`, `report.md` and, when there is one, `timeline.svg` into `dir`
    /// (created when missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("report.json"), json + "\n")?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        if let Some(svg) = &self.timeline_svg {
            std::fs::write(dir.join(TIMELINE_FILE), svg)?;
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(s, "# chaos run {}: {verdict}\n", self.scenario);
        let _ = writeln!(
            s,
            "- seed {}, fault phase {} s, recovery bound {} s",
            self.seed,
            self.duration_ms / 1000,
            self.recovery_bound_ms / 1000
        );
        let _ = writeln!(s, "- replay: `{}`", self.command);
        let _ = writeln!(s, "- logs: `{}`\n", self.logs);
        if self.timeline_svg.is_some() {
            let _ = writeln!(s, "![timeline]({TIMELINE_FILE})\n");
        }
        let _ = writeln!(s, "## Schedule\n");
        let _ = writeln!(s, "{}", schedule_table(&self.schedule));
        let _ = writeln!(s, "## Faults\n");
        let _ = writeln!(
            s,
            "| at (planned) | injected | fault | links | never | p50 ms | p99 ms | max ms | recoveries | packets lost | everyone receives |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for f in &self.faults {
            let r = &f.recovery;
            let ms = |d: Option<std::time::Duration>| {
                d.map_or("-".to_owned(), |d| {
                    format!("{:.0}", d.as_secs_f64() * 1000.0)
                })
            };
            let _ = writeln!(
                s,
                "| {:.1} s | {:.1} s | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.step.at.as_secs_f64(),
                f.injected_ms as f64 / 1000.0,
                f.step.fault,
                r.links,
                r.never,
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                f.participant_recoveries,
                lost_cell(f.packets_lost.as_ref()),
                if f.everyone_receives.passed() {
                    "pass"
                } else {
                    "FAIL"
                }
            );
        }
        let sampled: Vec<&LossSummary> = self
            .faults
            .iter()
            .filter_map(|f| f.packets_lost.as_ref())
            .collect();
        if !sampled.is_empty() {
            let lost: u64 = sampled.iter().map(|l| l.lost).sum();
            let expected: u64 = sampled.iter().map(|l| l.expected).sum();
            let share = if expected == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / expected as f64
            };
            let _ = writeln!(
                s,
                "\nPackets lost over all links in the fault windows: {lost} of {expected} sent \
                 ({share:.2} %); each link may be off by the packets in flight at its window's \
                 ends (about latency × rate)."
            );
        }
        for f in &self.faults {
            if f.notes.is_empty() && f.everyone_receives.passed() {
                continue;
            }
            let _ = writeln!(s, "\n{}:", f.step.fault);
            for n in &f.notes {
                let _ = writeln!(s, "- {n}");
            }
            if let Verdict::Fail { evidence } = &f.everyone_receives.verdict {
                for e in evidence {
                    let _ = writeln!(s, "- everyone_receives: {e}");
                }
            }
        }
        let _ = writeln!(s, "\n## Invariants\n");
        for c in &self.invariants {
            match &c.verdict {
                Verdict::Pass { checked } => {
                    let _ = writeln!(s, "- **{}**: pass ({checked})", c.invariant.name());
                }
                Verdict::Fail { evidence } => {
                    let _ = writeln!(s, "- **{}**: FAIL", c.invariant.name());
                    for e in evidence {
                        let _ = writeln!(s, "  - {e}");
                    }
                }
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\n## Errors\n");
            for e in &self.errors {
                let _ = writeln!(s, "- {e}");
            }
        }
        s
    }
}

/// The timeline picture's file name, next to `report.md`.
pub const TIMELINE_FILE: &str = "timeline.svg";

/// A fault's packets-lost cell: lost of sent, and the worst link.
fn lost_cell(l: Option<&LossSummary>) -> String {
    let Some(l) = l else {
        return "-".to_owned();
    };
    match &l.worst {
        Some(w) => format!(
            "{} of {} (worst {} ← {}: {} of {})",
            l.lost, l.expected, w.receiver, w.publisher, w.lost, w.expected
        ),
        None => format!("{} of {}", l.lost, l.expected),
    }
}

/// The schedule as a Markdown table, for `--dry-run` too.
pub fn schedule_table(steps: &[Step]) -> String {
    let mut s = String::from("| # | at | fault |\n|---|---|---|\n");
    for (i, step) in steps.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.1} s | {} |",
            i + 1,
            step.at.as_secs_f64(),
            step.fault
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::{everyone_receives, recovery_times, Link, RoomReception};
    use crate::runner::schedule::Fault;
    use protocol::{RoomId, UserId};
    use std::time::Duration;

    #[test]
    fn a_failed_fault_fails_the_report_and_both_renderings_say_so() {
        let room = RoomId::new("r").unwrap();
        let (a, b) = (UserId::new("a").unwrap(), UserId::new("b").unwrap());
        let mut first = std::collections::BTreeMap::new();
        first.insert(
            Link {
                receiver: a.clone(),
                publisher: b.clone(),
            },
            Duration::from_millis(300),
        );
        let rooms = vec![RoomReception {
            room,
            participants: vec![a, b],
            first_packet: first,
        }];
        let step = Step {
            at: Duration::from_secs(5),
            fault: Fault::KillNode { node: "n1".into() },
        };
        let mut report = Report {
            scenario: "kill".into(),
            seed: 1,
            duration_ms: 60_000,
            recovery_bound_ms: 15_000,
            command: "chaos run kill --seed 1".into(),
            schedule: vec![step.clone()],
            faults: vec![FaultRecord {
                step,
                injected_ms: 5_000,
                recovery: recovery_times(&rooms),
                everyone_receives: everyone_receives(&rooms, Duration::from_secs(15)),
                participant_recoveries: 1,
                notes: Vec::new(),
                packets_lost: None,
            }],
            invariants: Vec::new(),
            errors: Vec::new(),
            logs: "/tmp/x".into(),
            passed: false,
            timeline_svg: None,
        };
        report.compute_passed();
        // b never received a: the link is missing.
        assert!(!report.passed);
        let md = report.markdown();
        assert!(md.contains("FAIL"), "{md}");
        assert!(md.contains("b ← a never"), "{md}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["schedule"][0]["fault"], "kill_node");
        assert_eq!(json["schedule"][0]["at_ms"], 5000);
        assert_eq!(json["faults"][0]["everyone_receives"]["verdict"], "fail");
        assert_eq!(json["passed"], false);
        assert!(json["faults"][0]["packets_lost"].is_null());
        assert!(!md.contains("timeline.svg"), "{md}");
    }

    #[test]
    fn packets_lost_and_the_timeline_show_in_the_markdown_not_the_svg_in_the_json() {
        use crate::runner::timeline::{LinkLoss, LossSummary};
        let step = Step {
            at: Duration::from_secs(5),
            fault: Fault::RestartNats,
        };
        let lost = |lost, worst: Option<LinkLoss>| LossSummary {
            from_ms: 5_000,
            to_ms: 20_000,
            links: 2,
            lossless_links: if worst.is_some() { 1 } else { 2 },
            expected: 3_000,
            lost,
            worst,
        };
        let record = |packets_lost| FaultRecord {
            step: step.clone(),
            injected_ms: 5_000,
            recovery: recovery_times(&[]),
            everyone_receives: everyone_receives(&[], Duration::from_secs(15)),
            participant_recoveries: 0,
            notes: Vec::new(),
            packets_lost,
        };
        let worst = LinkLoss {
            room: "r".into(),
            receiver: "b".into(),
            publisher: "a".into(),
            expected: 1_500,
            received: 1_100,
            lost: 400,
        };
        let report = Report {
            scenario: "nats".into(),
            seed: 2,
            duration_ms: 60_000,
            recovery_bound_ms: 15_000,
            command: "chaos run nats --seed 2".into(),
            schedule: vec![step.clone()],
            faults: vec![
                record(Some(lost(400, Some(worst)))),
                record(Some(lost(0, None))),
            ],
            invariants: Vec::new(),
            errors: Vec::new(),
            logs: "/tmp/x".into(),
            passed: false,
            timeline_svg: Some("<svg/>".into()),
        };
        let md = report.markdown();
        assert!(md.contains("![timeline](timeline.svg)"), "{md}");
        assert!(
            md.contains("| 400 of 3000 (worst b ← a: 400 of 1500) |"),
            "{md}"
        );
        assert!(md.contains("| 0 of 3000 |"), "{md}");
        assert!(md.contains("400 of 6000 sent (6.67 %)"), "{md}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["faults"][0]["packets_lost"]["lost"], 400);
        assert_eq!(json["faults"][0]["packets_lost"]["worst"]["receiver"], "b");
        assert!(json["faults"][1]["packets_lost"]["worst"].is_null());
        assert!(json.get("timeline_svg").is_none());
    }
}
