//! A run's report: JSON (serde) and Markdown, written as `report.json` and `report.md`.

use super::schedule::Step;
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
}

impl Report {
    /// Whether every invariant held and nothing broke the run.
    pub fn compute_passed(&mut self) {
        self.passed = self.errors.is_empty()
            && self.invariants.iter().all(Check::passed)
            && self.faults.iter().all(|f| f.everyone_receives.passed());
    }

    /// Writes `report.json` and `report.md` into `dir` (created when missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("report.json"), json + "\n")?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
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
        let _ = writeln!(s, "## Schedule\n");
        let _ = writeln!(s, "{}", schedule_table(&self.schedule));
        let _ = writeln!(s, "## Faults\n");
        let _ = writeln!(
            s,
            "| at (planned) | injected | fault | links | never | p50 ms | p99 ms | max ms | recoveries | everyone receives |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for f in &self.faults {
            let r = &f.recovery;
            let ms = |d: Option<std::time::Duration>| {
                d.map_or("-".to_owned(), |d| {
                    format!("{:.0}", d.as_secs_f64() * 1000.0)
                })
            };
            let _ = writeln!(
                s,
                "| {:.1} s | {:.1} s | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.step.at.as_secs_f64(),
                f.injected_ms as f64 / 1000.0,
                f.step.fault,
                r.links,
                r.never,
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                f.participant_recoveries,
                if f.everyone_receives.passed() {
                    "pass"
                } else {
                    "FAIL"
                }
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
            }],
            invariants: Vec::new(),
            errors: Vec::new(),
            logs: "/tmp/x".into(),
            passed: false,
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
    }
}
