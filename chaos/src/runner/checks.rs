//! The end-of-run observations the invariants judge: KV histories, node snapshots, RSS,
//! logs. Every read is bounded.

use super::observe::Room;
use crate::bench;
use crate::invariants::{
    exact_membership, no_panic, nothing_leaks, Check, Invariant, Log, MemoryReturn,
    MemoryTolerance, NodeSnapshot, Verdict,
};
use crate::sandbox::Cluster;
use crate::Status;
use anyhow::{Context, Result};
use protocol::{RoomId, UserId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// How often a converging check (membership, leaks) is tried again.
const RETRY: Duration = Duration::from_millis(250);

/// One check of several inputs: pass with every `checked` when all pass, else fail with
/// every failure's evidence.
pub fn merge(invariant: Invariant, checks: Vec<Check>) -> Check {
    if checks.is_empty() {
        return Check {
            invariant,
            verdict: Verdict::Fail {
                evidence: vec!["nothing to check".into()],
            },
        };
    }
    let mut checked = Vec::new();
    let mut evidence = Vec::new();
    for c in checks {
        match c.verdict {
            Verdict::Pass { checked: c } => checked.push(c),
            Verdict::Fail { evidence: e } => evidence.extend(e),
        }
    }
    let verdict = if evidence.is_empty() {
        Verdict::Pass {
            checked: checked.join("; "),
        }
    } else {
        Verdict::Fail { evidence }
    };
    Check { invariant, verdict }
}

fn fail(invariant: Invariant, evidence: String) -> Check {
    Check {
        invariant,
        verdict: Verdict::Fail {
            evidence: vec![evidence],
        },
    }
}

/// `GET <path>` on a node's HTTP port with the API secret as bearer token: the body of a
/// 200 answer (bounded by 5 s).
async fn get_with_bearer(port: u16, path: &str, secret: &str) -> Result<String> {
    crate::bench::http_get_as(port, path, Some(secret)).await
}

/// Every node's `/debug/snapshot`.
pub async fn snapshots(cluster: &Cluster) -> Result<Vec<NodeSnapshot>> {
    let mut out = Vec::new();
    for n in cluster.nodes() {
        let body = get_with_bearer(n.port(), "/debug/snapshot", &cluster.node_admin_token())
            .await
            .with_context(|| format!("snapshot of {}", n.id()))?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        out.push(NodeSnapshot::parse(&json).with_context(|| format!("snapshot of {}", n.id()))?);
    }
    Ok(out)
}

/// The participants still connected (or recovering), per room.
pub fn connected(rooms: &[Room]) -> BTreeMap<RoomId, BTreeSet<UserId>> {
    rooms
        .iter()
        .map(|r| {
            let ids = r
                .members
                .iter()
                .zip(&r.ids)
                .filter(|(p, _)| !matches!(p.status(), Status::Ended(_)))
                .map(|(_, id)| id.clone())
                .collect();
            (r.id.clone(), ids)
        })
        .collect()
}

/// Tries `check` on fresh snapshots every [`RETRY`] until it passes or `within` passed;
/// returns the last verdict (a snapshot that cannot be read is evidence).
pub async fn converging(
    cluster: &Cluster,
    invariant: Invariant,
    within: Duration,
    check: impl Fn(&[NodeSnapshot]) -> Check,
) -> Check {
    let deadline = Instant::now() + within;
    loop {
        let last = match snapshots(cluster).await {
            Ok(s) => check(&s),
            Err(e) => fail(invariant, format!("{e:#}")),
        };
        if last.passed() || Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Exact membership, given `within` to converge after the last fault.
pub async fn membership(cluster: &Cluster, rooms: &[Room], within: Duration) -> Check {
    let want = connected(rooms);
    converging(cluster, Invariant::ExactMembership, within, |s| {
        exact_membership(&want, s)
    })
    .await
}

/// RSS of every node now, KiB.
pub fn rss(cluster: &Cluster) -> BTreeMap<String, u64> {
    cluster
        .nodes()
        .filter_map(|n| Some((n.id().to_owned(), bench::vm_rss_kib(n.pid()).ok()?)))
        .collect()
}

/// Once everyone left: counters at zero and RSS near `baseline`, given `within` to get there.
pub async fn leaks(cluster: &Cluster, baseline: &BTreeMap<String, u64>, within: Duration) -> Check {
    converging(cluster, Invariant::NothingLeaks, within, |s| {
        let now = rss(cluster);
        let memory: Vec<MemoryReturn> = baseline
            .iter()
            .filter_map(|(id, b)| {
                Some(MemoryReturn {
                    process: id.clone(),
                    baseline_kib: *b,
                    after_kib: *now.get(id)?,
                })
            })
            .collect();
        nothing_leaks(s, &memory, MemoryTolerance::default())
    })
    .await
}

/// No panic nor unexpected ERROR in any log; `exited` lists processes found dead that no
/// fault killed, as further evidence.
pub fn logs(cluster: &Cluster, allowed: &[&str], exited: &[String]) -> Check {
    let logs: Vec<Log> = cluster
        .procs()
        .iter()
        .map(|p| Log {
            process: p.id().to_owned(),
            text: std::fs::read_to_string(p.log_path()).unwrap_or_default(),
        })
        .collect();
    let mut check = no_panic(&logs, allowed);
    if !exited.is_empty() {
        let extra = exited.iter().map(|e| format!("{e} exited on its own"));
        check = match check.verdict {
            Verdict::Fail { mut evidence } => {
                evidence.extend(extra);
                fail_with(Invariant::NoPanic, evidence)
            }
            Verdict::Pass { .. } => fail_with(Invariant::NoPanic, extra.collect()),
        };
    }
    check
}

fn fail_with(invariant: Invariant, evidence: Vec<String>) -> Check {
    Check {
        invariant,
        verdict: Verdict::Fail { evidence },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_passes_only_when_every_part_passes() {
        let pass = |c: &str| Check {
            invariant: Invariant::SingleOrigin,
            verdict: Verdict::Pass { checked: c.into() },
        };
        let m = merge(Invariant::SingleOrigin, vec![pass("a"), pass("b")]);
        assert_eq!(
            m.verdict,
            Verdict::Pass {
                checked: "a; b".into()
            }
        );
        let m = merge(
            Invariant::SingleOrigin,
            vec![
                pass("a"),
                fail(Invariant::SingleOrigin, "r: two origins".into()),
            ],
        );
        assert!(!m.passed());
        assert!(!merge(Invariant::SingleOrigin, Vec::new()).passed());
    }
}
