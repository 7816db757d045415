//! Interest in the directory entries of the rooms hosted here (DESIGN "Failover, fencing,
//! drain"). Each hosted room holds a [`RoomWatch`]: a core NATS subscription to its key's
//! subject `$KV.rooms.<key>`, on which every write to the key is published. A node hears of
//! its own rooms only, not of every room in the cluster, and replays nothing when it starts.
//!
//! A message on the subject is a hint, not the truth: core subscribers also see writes the
//! stream refused (a coordinator's compare-and-swap that lost), and may see a write before
//! the stream has stored it. A hint that would change something is confirmed by reading the
//! key from the bucket, and the registry acts on the entry as stored. The entry is read too
//! right after subscribing (a write between the allocation's reply and the subscription
//! would be missed otherwise) and whenever the NATS connection comes back (the subject is
//! not replayed).

use crate::cluster::Cluster;
use crate::counters::{Counters, Kind, Live};
use actix::prelude::*;
use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use protocol::cluster::{self as wire, RoomAssignment};
use protocol::{NodeId, RoomId};
use std::sync::Arc;
use std::time::Duration;

/// Directory reads in flight at once, over every room hosted here.
const READS: usize = 16;
/// Bound on one read: opening the bucket and reading the key.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of one read that fails (NATS away, a timeout) before it is left to the next
/// message or reconnection.
const READ_ATTEMPTS: usize = 3;
/// Pauses before each read that confirms a hint: a write can reach subscribers before the
/// stream has stored it (or a replica's direct get lags), so a hint the entry does not
/// settle is read again, a bounded number of times.
const CONFIRM_PAUSES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
];
const KV_OPERATION: &str = "KV-Operation";
const EXPECTED_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// What a room's watch tells the registry.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub enum WatchReport {
    /// A write heard on the key's subject, perhaps refused by the stream. Answered whether
    /// it would change something; if so, the watch reads the entry as stored.
    Heard(RoomAssignment),
    /// The entry as stored in the bucket. Answered `false`.
    Stored(RoomAssignment),
}

impl WatchReport {
    pub fn assignment(&self) -> &RoomAssignment {
        match self {
            WatchReport::Heard(a) | WatchReport::Stored(a) => a,
        }
    }
}

/// What a report about a room means to this node (`me`), which hosts it at `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changes.
    Nothing,
    /// A newer epoch heard: read the entry before believing it.
    Confirm,
    /// A newer epoch stored that still lists this node.
    Adopt(u64),
    /// A newer epoch stored that leaves this node out: the room moved on without it.
    Fence,
}

/// An entry of an epoch this node was told about (or an older one) may be a write from
/// before this node joined the room, read late; only a newer stored epoch that leaves this
/// node out proves the room moved on without it.
pub fn judge(me: &NodeId, epoch: u64, report: &WatchReport) -> Verdict {
    let a = report.assignment();
    if a.epoch <= epoch {
        return Verdict::Nothing;
    }
    match report {
        WatchReport::Heard(_) => Verdict::Confirm,
        WatchReport::Stored(a) if a.serves(me) => Verdict::Adopt(a.epoch),
        WatchReport::Stored(_) => Verdict::Fence,
    }
}

/// A write heard on a key's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hint {
    assignment: RoomAssignment,
    /// The revision the writer expected the key at (a compare-and-swap), if it said.
    expected: Option<u64>,
}

/// A key as read from the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    /// 0 when the key has no entry.
    revision: u64,
    /// `None`: deleted, never written, or unreadable.
    assignment: Option<RoomAssignment>,
}

/// How a read of the key settled a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The entry holds the hint's epoch or a newer one.
    Stored,
    /// The key moved past the revision the hint's writer expected, without its epoch: the
    /// stream refused the write (or it was overwritten since).
    Refused,
}

impl Settled {
    fn label(self) -> &'static str {
        match self {
            Settled::Stored => "stored",
            Settled::Refused => "refused",
        }
    }
}

/// How the stored entry settles the hint; `None` while the hint's write may not be stored
/// yet (or the read lags).
fn settle(stored: &Stored, hint: &Hint) -> Option<Settled> {
    let epoch = hint.assignment.epoch;
    if stored.assignment.as_ref().is_some_and(|a| a.epoch >= epoch) {
        Some(Settled::Stored)
    } else if hint.expected.is_some_and(|n| stored.revision > n) {
        Some(Settled::Refused)
    } else {
        None
    }
}

/// What a message on `room`'s key subject says; `None` for a delete, a purge, or a body
/// that is not an entry of that room (logged, ignored).
fn hint(room: &RoomId, msg: &async_nats::Message) -> Option<Hint> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    if header(KV_OPERATION).is_some_and(|op| op == "DEL" || op == "PURGE") {
        return None;
    }
    let assignment = match serde_json::from_slice::<RoomAssignment>(&msg.payload) {
        Ok(a) if &a.room == room => a,
        Ok(a) => {
            tracing::debug!(%room, named = %a.room, "directory message names another room");
            return None;
        }
        Err(e) => {
            tracing::debug!(%room, error = %e, "unreadable directory message");
            return None;
        }
    };
    let expected = header(EXPECTED_SEQUENCE).and_then(|v| v.trim().parse().ok());
    Some(Hint {
        assignment,
        expected,
    })
}

/// Starts the watches of the rooms hosted here; one per node, held by the registry.
pub struct Watches {
    reader: Reader,
    rt: tokio::runtime::Handle,
    reconnects: tokio::sync::watch::Receiver<u64>,
    counters: Arc<Counters>,
}

impl Watches {
    pub fn new(cluster: &Cluster, counters: Arc<Counters>) -> Self {
        Watches {
            reader: Reader {
                client: cluster.client.clone(),
                shared: Arc::new(Shared {
                    store: tokio::sync::OnceCell::new(),
                    reads: tokio::sync::Semaphore::new(READS),
                }),
            },
            rt: cluster.rt.clone(),
            reconnects: cluster.reconnects(),
            counters,
        }
    }

    /// Watches `room`'s entry, reporting to `registry`, until the handle is dropped.
    pub fn watch(&self, room: RoomId, registry: Recipient<WatchReport>) -> RoomWatch {
        let task = self.rt.spawn(run(
            self.reader.clone(),
            room,
            registry,
            self.reconnects.clone(),
            self.counters.clone(),
        ));
        RoomWatch {
            task: task.abort_handle(),
        }
    }
}

/// A hosted room's watch. Dropping it ends the task, and with it the subscription and its
/// `room_watches` count.
pub struct RoomWatch {
    task: tokio::task::AbortHandle,
}

impl Drop for RoomWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watch of `room`, for as long as the room is hosted (it is aborted then). It counts
/// in `room_watches` once subscribed and read once: from then on the server has the
/// subscription.
async fn run(
    reader: Reader,
    room: RoomId,
    registry: Recipient<WatchReport>,
    mut reconnects: tokio::sync::watch::Receiver<u64>,
    counters: Arc<Counters>,
) {
    let subject = format!("$KV.{}.{}", wire::ROOMS_BUCKET, wire::token(room.as_str()));
    let mut sub = match reader.client.subscribe(subject).await {
        Ok(sub) => sub,
        Err(e) => return tracing::warn!(%room, error = %e, "cannot watch the room's entry"),
    };
    // The subscription goes out before the read on the same connection, so a write the
    // read does not show reaches the subscription.
    reconnects.mark_unchanged();
    if !reader.report_stored(&room, &registry).await {
        return;
    }
    let _live = Live::new(&counters, Kind::RoomWatch);
    let mut reconnects = Some(reconnects);
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else {
                    return tracing::debug!(%room, "room watch subscription ended");
                };
                let Some(hint) = hint(&room, &msg) else {
                    continue;
                };
                match registry.send(WatchReport::Heard(hint.assignment.clone())).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return,
                }
                if !reader.confirm(&room, &hint, &registry).await {
                    return;
                }
            }
            changed = async {
                match reconnects.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    // The connection is gone for good: nothing more to re-read.
                    reconnects = None;
                    continue;
                }
                tracing::debug!(%room, "reconnected: reading the room's entry again");
                if !reader.report_stored(&room, &registry).await {
                    return;
                }
            }
        }
    }
}

struct Shared {
    /// The `rooms` bucket, opened on the first read.
    store: tokio::sync::OnceCell<Store>,
    reads: tokio::sync::Semaphore,
}

/// Reads keys of the `rooms` bucket, [`READS`] at once over the whole node.
#[derive(Clone)]
struct Reader {
    client: async_nats::Client,
    shared: Arc<Shared>,
}

impl Reader {
    /// Reads the room's entry and reports it as stored; false once the registry is gone.
    async fn report_stored(&self, room: &RoomId, registry: &Recipient<WatchReport>) -> bool {
        match self.read(room).await.and_then(|s| s.assignment) {
            Some(a) => registry.send(WatchReport::Stored(a)).await.is_ok(),
            None => true,
        }
    }

    /// Reads the entry until it settles `hint` (a bounded number of times), reporting each
    /// read; false once the registry is gone. Counts the outcome in
    /// `node_room_watch_hints_total{outcome}`.
    async fn confirm(&self, room: &RoomId, hint: &Hint, registry: &Recipient<WatchReport>) -> bool {
        let epoch = hint.assignment.epoch;
        for pause in CONFIRM_PAUSES {
            tokio::time::sleep(pause).await;
            let Some(stored) = self.read(room).await else {
                continue;
            };
            if let Some(a) = stored.assignment.clone() {
                if registry.send(WatchReport::Stored(a)).await.is_err() {
                    return false;
                }
            }
            if let Some(settled) = settle(&stored, hint) {
                tracing::debug!(%room, epoch, revision = stored.revision, outcome = settled.label(), "write heard, entry read");
                metrics::counter!("node_room_watch_hints_total", "outcome" => settled.label())
                    .increment(1);
                return true;
            }
        }
        tracing::debug!(%room, epoch, expected = ?hint.expected, "write heard but not found stored: ignored");
        metrics::counter!("node_room_watch_hints_total", "outcome" => "unsettled").increment(1);
        true
    }

    /// The room's key as stored; `None` when it cannot be read now.
    async fn read(&self, room: &RoomId) -> Option<Stored> {
        let key = wire::token(room.as_str());
        for attempt in 1..=READ_ATTEMPTS {
            match self.read_once(&key).await {
                Ok(stored) => return Some(stored),
                Err(e) => tracing::debug!(%room, attempt, error = %e, "directory read failed"),
            }
            if attempt < READ_ATTEMPTS {
                let first = Duration::from_millis(100);
                let pause = protocol::backoff::delay(attempt, first, Duration::from_secs(1));
                tokio::time::sleep(pause).await;
            }
        }
        tracing::warn!(%room, "cannot read the room's directory entry; waiting for its next change or a reconnection");
        metrics::counter!("node_room_watch_read_failures_total").increment(1);
        None
    }

    async fn read_once(&self, key: &str) -> Result<Stored, String> {
        let _permit = self
            .shared
            .reads
            .acquire()
            .await
            .map_err(|e| e.to_string())?;
        let read = async {
            let store = self
                .shared
                .store
                .get_or_try_init(|| async {
                    let js = async_nats::jetstream::new(self.client.clone());
                    js.get_key_value(wire::ROOMS_BUCKET).await
                })
                .await
                .map_err(|e| e.to_string())?;
            store.entry(key).await.map_err(|e| e.to_string())
        };
        let entry = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| "timed out".to_owned())??;
        let Some(entry) = entry else {
            return Ok(Stored {
                revision: 0,
                assignment: None,
            });
        };
        let assignment = match entry.operation {
            Operation::Put => serde_json::from_slice::<RoomAssignment>(&entry.value)
                .inspect_err(|e| tracing::debug!(%key, error = %e, "unreadable room entry"))
                .ok(),
            Operation::Delete | Operation::Purge => None,
        };
        Ok(Stored {
            revision: entry.revision,
            assignment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    fn entry(room: &str, epoch: u64, nodes: &[&str]) -> RoomAssignment {
        let nodes: Vec<NodeId> = nodes.iter().map(|n| node(n)).collect();
        RoomAssignment::on_nodes(RoomId::new(room).unwrap(), epoch, &nodes[0], &nodes, "eu")
    }
    #[test]
    fn a_heard_write_is_read_only_when_its_epoch_is_newer() {
        let me = node("n1");
        let newer = WatchReport::Heard(entry("r", 3, &["n2"]));
        assert_eq!(judge(&me, 2, &newer), Verdict::Confirm);
        for epoch in [3, 4] {
            assert_eq!(judge(&me, epoch, &newer), Verdict::Nothing);
        }
        let mine = WatchReport::Heard(entry("r", 3, &["n1"]));
        assert_eq!(judge(&me, 2, &mine), Verdict::Confirm, "not adopted unread");
    }

    #[test]
    fn a_stored_newer_epoch_fences_only_without_this_node() {
        let me = node("n1");
        let moved = WatchReport::Stored(entry("r", 3, &["n2", "n3"]));
        assert_eq!(judge(&me, 2, &moved), Verdict::Fence);
        assert_eq!(judge(&me, 3, &moved), Verdict::Nothing, "an epoch known");
        let cascaded = WatchReport::Stored(entry("r", 3, &["n2", "n1"]));
        assert_eq!(judge(&me, 2, &cascaded), Verdict::Adopt(3));
    }

    #[test]
    fn a_hint_is_settled_once_the_key_moved_past_it_or_holds_its_epoch() {
        let hint = Hint {
            assignment: entry("r", 5, &["n2"]),
            expected: Some(7),
        };
        let at = |revision, epoch| Stored {
            revision,
            assignment: Some(entry("r", epoch, &["n1"])),
        };
        assert_eq!(settle(&at(7, 4), &hint), None, "not stored yet, or refused");
        assert_eq!(settle(&at(6, 4), &hint), None, "a lagging read");
        assert_eq!(settle(&at(8, 4), &hint), Some(Settled::Refused));
        assert_eq!(settle(&at(8, 5), &hint), Some(Settled::Stored));
        assert_eq!(settle(&at(7, 6), &hint), Some(Settled::Stored));
        let plain = Hint {
            expected: None,
            ..hint
        };
        assert_eq!(settle(&at(9, 4), &plain), None);
        assert_eq!(settle(&at(9, 6), &plain), Some(Settled::Stored));
        let gone = Stored {
            revision: 9,
            assignment: None,
        };
        assert_eq!(settle(&gone, &plain), None);
        let closed = Hint {
            expected: Some(8),
            ..plain
        };
        assert_eq!(settle(&gone, &closed), Some(Settled::Refused));
    }

    fn message(headers: &[(&str, &str)], body: &[u8]) -> async_nats::Message {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        async_nats::Message {
            subject: "$KV.rooms.r".into(),
            reply: None,
            payload: bytes::Bytes::copy_from_slice(body),
            headers: (!headers.is_empty()).then_some(h),
            status: None,
            description: None,
            length: body.len(),
        }
    }

    #[test]
    fn deletes_bad_bodies_and_other_rooms_are_no_hints() {
        let room = RoomId::new("r").unwrap();
        let body = serde_json::to_vec(&entry("r", 2, &["n2"])).unwrap();
        let got = hint(&room, &message(&[(EXPECTED_SEQUENCE, "12")], &body));
        assert_eq!(got.map(|h| h.expected), Some(Some(12)));
        assert_eq!(
            hint(&room, &message(&[], &body)).map(|h| h.expected),
            Some(None)
        );
        assert!(hint(&room, &message(&[(KV_OPERATION, "DEL")], b"")).is_none());
        assert!(hint(&room, &message(&[(KV_OPERATION, "PURGE")], b"")).is_none());
        assert!(hint(&room, &message(&[], b"{not json")).is_none());
        assert!(hint(&room, &message(&[], &[0xff, 0x00])).is_none());
        let other = serde_json::to_vec(&entry("other", 2, &["n2"])).unwrap();
        assert!(hint(&room, &message(&[], &other)).is_none());
    }
}
