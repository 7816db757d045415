//! What the runner watches for the whole run, not only at its end: every revision of every
//! room's directory entry with when it was first seen, and every process's RSS each second.
//!
//! The bucket keeps only the last 10 revisions of a key, so a soak's end-of-run history
//! would miss most of what happened; the monitor reads each room's history every
//! [`TICK`] and keeps every revision it has not seen (by revision number), which
//! `single_origin` and `live_nodes` then judge over the whole run. While NATS is away
//! (a fault) the reads fail and are counted; the revisions written meanwhile are still in
//! the bucket's history when it is back, unless more than 10 were written to one room.
//!
//! RSS is read from `/proc/<pid>/status` for the pids the runner last gave
//! ([`Monitor::set_pids`]: after each restart), so `memory_bounded` sees the peak of every
//! process under every fault.

use crate::bench;
use crate::invariants::RssSeries;
use futures::StreamExt;
use protocol::cluster::{self as wire, RoomAssignment};
use protocol::RoomId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the histories and RSS are read.
pub const TICK: Duration = Duration::from_millis(500);
/// Bound on one history read.
const READ: Duration = Duration::from_secs(2);

/// One revision of a room's entry: when the monitor first saw it (since the run's start),
/// its revision number, and the entry (`None`: deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub seen: Duration,
    pub revision: u64,
    pub entry: Option<RoomAssignment>,
}

/// Everything observed so far.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub revisions: BTreeMap<RoomId, Vec<Revision>>,
    pub rss: BTreeMap<String, Vec<(Duration, u64)>>,
    /// History reads that failed or timed out (NATS away), and the last error.
    pub failed_reads: u64,
    pub last_error: Option<String>,
    /// Ticks completed.
    pub ticks: u64,
}

impl Observed {
    /// A room's entries in the order written (by revision), each with when it was seen.
    pub fn timeline(&self, room: &RoomId) -> Vec<(Duration, Option<RoomAssignment>)> {
        self.revisions
            .get(room)
            .map(|r| r.iter().map(|r| (r.seen, r.entry.clone())).collect())
            .unwrap_or_default()
    }

    /// A room's entries in the order written.
    pub fn history(&self, room: &RoomId) -> Vec<Option<RoomAssignment>> {
        self.revisions
            .get(room)
            .map(|r| r.iter().map(|r| r.entry.clone()).collect())
            .unwrap_or_default()
    }

    /// Every process's RSS samples.
    pub fn rss_series(&self) -> Vec<RssSeries> {
        self.rss
            .iter()
            .map(|(process, samples)| RssSeries {
                process: process.clone(),
                samples: samples.clone(),
            })
            .collect()
    }

    /// Merges revisions read now; returns how many were new.
    fn merge(
        &mut self,
        room: &RoomId,
        seen: Duration,
        read: Vec<(u64, Option<RoomAssignment>)>,
    ) -> usize {
        let known = self.revisions.entry(room.clone()).or_default();
        let mut added = 0;
        for (revision, entry) in read {
            if known.iter().any(|r| r.revision == revision) {
                continue;
            }
            known.push(Revision {
                seen,
                revision,
                entry,
            });
            added += 1;
        }
        known.sort_by_key(|r| r.revision);
        added
    }
}

/// The running monitor; [`Monitor::finish`] stops it and returns what it saw.
pub struct Monitor {
    observed: Arc<Mutex<Observed>>,
    pids: Arc<Mutex<Vec<(String, u32)>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Monitor {
    /// Starts watching `rooms` on `nats_url` (a comma-separated list is fine) and the RSS of
    /// `pids`, times relative to `start`, for at most `max` (the run's length and margins).
    pub fn start(
        nats_url: &str,
        rooms: Vec<RoomId>,
        pids: Vec<(String, u32)>,
        start: Instant,
        max: Duration,
    ) -> Monitor {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let pids = Arc::new(Mutex::new(pids));
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn({
            let observed = observed.clone();
            let pids = pids.clone();
            let nats_url = nats_url.to_owned();
            async move {
                let mut store = None;
                let ticks = max.as_millis() / TICK.as_millis() + 1;
                for _ in 0..ticks {
                    sample_rss(&observed, &pids, start);
                    if store.is_none() {
                        store = open(&nats_url).await.ok();
                    }
                    if let Some(kv) = &store {
                        read_all(kv, &rooms, &observed, start).await;
                    } else {
                        let mut o = lock(&observed);
                        o.failed_reads += 1;
                        o.last_error = Some("cannot connect to NATS".into());
                    }
                    lock(&observed).ticks += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(TICK) => {}
                        _ = stopped.changed() => break,
                    }
                }
            }
        });
        Monitor {
            observed,
            pids,
            stop,
            task,
        }
    }

    /// The processes whose RSS is sampled, after a restart changed a pid.
    pub fn set_pids(&self, pids: Vec<(String, u32)>) {
        *lock(&self.pids) = pids;
    }

    /// What was observed so far.
    pub fn observed(&self) -> Observed {
        lock(&self.observed).clone()
    }

    /// Stops after one last read of the histories (so the final writes are in), returns
    /// everything observed.
    pub async fn finish(self, nats_url: &str, start: Instant) -> Observed {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let rooms: Vec<RoomId> = lock(&self.observed).revisions.keys().cloned().collect();
        if let Ok(kv) = open(nats_url).await {
            read_all(&kv, &rooms, &self.observed, start).await;
        }
        let out = lock(&self.observed).clone();
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn open(nats_url: &str) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    // async-nats takes one URL per `&str`: a comma-separated list is split first.
    let servers = nats_url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = tokio::time::timeout(
        READ,
        crate::sandbox::nats_options(nats_url).connect(servers),
    )
    .await
    .map_err(|_| anyhow::anyhow!("NATS connect timed out"))??;
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(READ, js.get_key_value(wire::ROOMS_BUCKET))
        .await
        .map_err(|_| anyhow::anyhow!("bucket lookup timed out"))?
        .map_err(|e| anyhow::anyhow!("bucket {}: {e}", wire::ROOMS_BUCKET))
}

async fn history(
    kv: &async_nats::jetstream::kv::Store,
    room: &RoomId,
) -> anyhow::Result<Vec<(u64, Option<RoomAssignment>)>> {
    let mut entries = kv
        .history(wire::token(room.as_str()))
        .await
        .map_err(|e| anyhow::anyhow!("history: {e}"))?;
    let mut out = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| anyhow::anyhow!("history entry: {e}"))?;
        let value = match entry.operation {
            async_nats::jetstream::kv::Operation::Put => {
                Some(serde_json::from_slice(&entry.value)?)
            }
            _ => None,
        };
        out.push((entry.revision, value));
    }
    Ok(out)
}

async fn read_all(
    kv: &async_nats::jetstream::kv::Store,
    rooms: &[RoomId],
    observed: &Mutex<Observed>,
    start: Instant,
) {
    for room in rooms {
        let read = tokio::time::timeout(READ, history(kv, room)).await;
        let seen = start.elapsed();
        let mut o = lock(observed);
        match read {
            Ok(Ok(revisions)) => {
                o.merge(room, seen, revisions);
            }
            // A room not written yet has no history: not an error.
            Ok(Err(e)) if e.to_string().contains("not found") => {
                o.revisions.entry(room.clone()).or_default();
            }
            Ok(Err(e)) => {
                o.failed_reads += 1;
                o.last_error = Some(format!("{room}: {e:#}"));
            }
            Err(_) => {
                o.failed_reads += 1;
                o.last_error = Some(format!("{room}: history not read within {READ:?}"));
            }
        }
    }
}

fn sample_rss(observed: &Mutex<Observed>, pids: &Mutex<Vec<(String, u32)>>, start: Instant) {
    let pids = lock(pids).clone();
    let at = start.elapsed();
    let mut o = lock(observed);
    for (process, pid) in pids {
        // A process between its kill and its restart has no RSS: no sample.
        if let Ok(kib) = bench::vm_rss_kib(pid) {
            o.rss.entry(process).or_default().push((at, kib));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::NodeId;

    fn entry(node: &str, epoch: u64) -> Option<RoomAssignment> {
        Some(RoomAssignment {
            v: 1,
            room: RoomId::new("r").unwrap(),
            node: NodeId::new(node).unwrap(),
            epoch,
            coordinator: "c1".into(),
            assigned_ms: 0,
            nodes: Vec::new(),
        })
    }

    #[test]
    fn revisions_are_kept_once_in_revision_order_with_their_first_sighting() {
        let room = RoomId::new("r").unwrap();
        let mut o = Observed::default();
        let s = Duration::from_secs;
        assert_eq!(o.merge(&room, s(1), vec![(3, entry("n1", 1))]), 1);
        // Read again later with one more, and the first one again: kept once, first seen.
        assert_eq!(
            o.merge(&room, s(2), vec![(3, entry("n1", 1)), (5, entry("n2", 2))]),
            1
        );
        // A revision the bucket has since dropped stays known; an older one found late sorts in.
        assert_eq!(
            o.merge(&room, s(3), vec![(2, None), (5, entry("n2", 2))]),
            1
        );
        let revs: Vec<(u64, Duration)> = o.revisions[&room]
            .iter()
            .map(|r| (r.revision, r.seen))
            .collect();
        assert_eq!(revs, vec![(2, s(3)), (3, s(1)), (5, s(2))]);
        assert_eq!(o.history(&room), vec![None, entry("n1", 1), entry("n2", 2)]);
        assert_eq!(o.timeline(&room)[2].0, s(2));
    }
}
