//! The room directory: JetStream KV bucket [`ROOMS_BUCKET`], key
//! [`protocol::cluster::token`] of the room id, value a JSON [`RoomAssignment`].
//!
//! Every write is conditional on the key's last revision (`update` at 0 = "never written",
//! `update` = "still at revision r", `delete` = "still at revision r"), so the history of a
//! key is a single line: each epoch is written once, by one coordinator, and a node joins
//! or leaves a room's entry only on top of the version it was planned from.

use crate::decide::{self, RoomRecord, Stamp};
use crate::error::{Error, Result};
use async_nats::jetstream::kv::{self, Operation, Store, UpdateErrorKind};
use futures::{StreamExt, TryStreamExt};
use protocol::cascade::LeavePlan;
use protocol::cluster::{token, untoken, RoomAssignment, RoomClosed, ROOMS_BUCKET};
use protocol::RoomId;
use std::time::{Duration, Instant};

/// History kept per key: enough for tests and operators to audit recent epochs.
pub const HISTORY: i64 = 10;
/// Bound on reading a key's history or listing the bucket.
const SCAN_TIMEOUT: Duration = Duration::from_secs(5);
/// Read-plan-write rounds of a node's leaving before giving up on a contended room.
pub const LEAVE_ROUNDS: usize = 4;
/// Read-plan-write rounds of moving a room off dead nodes before giving up on it.
pub const FAILOVER_ROUNDS: usize = 5;
/// Bound on the number of rooms `list` returns.
pub const LIST_LIMIT: usize = 10_000;

/// Outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written at this revision.
    Done(u64),
    /// Someone else wrote first.
    Conflict,
}

/// What a node's leaving did to the room's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// Nothing to write: no entry, the node not in it, or a stale message.
    Unchanged,
    /// The node was the room's last: the entry is deleted. `assigned_ms`: of its last
    /// version (with the epoch, it names this ending of the room).
    Closed { epoch: u64, assigned_ms: u64 },
    /// The entry without the node, written at `revision`.
    Updated {
        assignment: RoomAssignment,
        revision: u64,
        origin_moved: bool,
    },
    /// Every round lost a race to another writer.
    Contended,
}

/// What to make of a room's entry, decided from its current value (see
/// [`RoomDirectory::edit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Keep,
    Write(RoomAssignment),
    Delete,
}

/// What [`RoomDirectory::edit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edited {
    /// No entry (missing or closed), or the plan kept it.
    Unchanged,
    Written {
        before: RoomAssignment,
        after: RoomAssignment,
        revision: u64,
    },
    Deleted {
        before: RoomAssignment,
    },
    /// Every round lost a race to another writer.
    Contended,
}

/// One entry of a key's history: an assignment, or a delete marker (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    pub revision: u64,
    pub assignment: Option<RoomAssignment>,
}

#[derive(Clone)]
pub struct RoomDirectory {
    kv: Store,
}

/// Opens a KV bucket, creating it with `config` if missing; one that exists with another
/// configuration (say, other replicas) is used as it is.
pub(crate) async fn open_bucket(client: &async_nats::Client, config: kv::Config) -> Result<Store> {
    let js = async_nats::jetstream::new(client.clone());
    let bucket = config.bucket.clone();
    match js.create_key_value(config).await {
        Ok(kv) => Ok(kv),
        Err(create) => js.get_key_value(&bucket).await.map_err(|get| {
            tracing::debug!(error = %create, %bucket, "create bucket");
            Error::directory("open", get)
        }),
    }
}

/// Pause before watching a bucket again after its watch ended or failed.
const REWATCH: Duration = Duration::from_millis(500);

/// Feeds `apply` with a bucket's changes for ever: every key's latest value first, then each
/// change as it happens. `caught_up` is called once those latest values have all been
/// delivered (at once for an empty bucket), the first time only. A watch that ends or fails
/// starts again from the latest values, which `apply` must take as a replay.
pub(crate) async fn follow(
    kv: Store,
    what: &'static str,
    mut apply: impl FnMut(&kv::Entry),
    caught_up: impl FnOnce(),
) {
    let mut caught_up = Some(caught_up);
    loop {
        // Asked before the watch starts: a bucket empty then has nothing to replay.
        let empty = kv
            .stream
            .clone()
            .info()
            .await
            .map(|i| i.state.messages == 0)
            .unwrap_or(false);
        match kv.watch_with_history(">").await {
            Ok(mut watch) => {
                if empty {
                    if let Some(f) = caught_up.take() {
                        f();
                    }
                }
                while let Some(next) = watch.next().await {
                    let entry = match next {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::debug!(error = %e, bucket = what, "watch");
                            break;
                        }
                    };
                    apply(&entry);
                    if entry.seen_current {
                        if let Some(f) = caught_up.take() {
                            f();
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, bucket = what, "watch not started"),
        }
        tokio::time::sleep(REWATCH).await;
    }
}

impl RoomDirectory {
    /// Opens the bucket, creating it if missing (`history` [`HISTORY`], `replicas` copies).
    pub async fn open(client: &async_nats::Client, replicas: usize) -> Result<Self> {
        let config = kv::Config {
            bucket: ROOMS_BUCKET.into(),
            description: "room -> its nodes with their regions, origin and epoch".into(),
            history: HISTORY,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = open_bucket(client, config).await?;
        Ok(Self { kv })
    }

    /// The underlying store, for tools and tests.
    pub fn store(&self) -> &Store {
        &self.kv
    }

    pub async fn read(&self, room: &RoomId) -> Result<RoomRecord> {
        let key = token(room.as_str());
        let entry = self
            .kv
            .entry(key.as_str())
            .await
            .map_err(|e| Error::directory("read", e))?;
        let Some(entry) = entry else {
            return Ok(RoomRecord::Missing);
        };
        if entry.operation == Operation::Put {
            match serde_json::from_slice::<RoomAssignment>(&entry.value) {
                Ok(assignment) => {
                    return Ok(RoomRecord::Assigned {
                        assignment,
                        revision: entry.revision,
                    })
                }
                Err(e) => tracing::warn!(%key, error = %e, "unreadable room record, replacing it"),
            }
        }
        // Closed (or unreadable): a new assignment continues after the highest epoch seen.
        let last_epoch = self
            .history(room)
            .await?
            .iter()
            .filter_map(|e| e.assignment.as_ref().map(|a| a.epoch))
            .max()
            .unwrap_or(0);
        Ok(RoomRecord::Closed {
            revision: entry.revision,
            last_epoch,
        })
    }

    /// Writes a room's first entry: [`RoomDirectory::update`] at revision 0.
    pub async fn create(&self, a: &RoomAssignment) -> Result<Write> {
        self.update(a, 0).await
    }

    /// Replaces the record at `revision` (compare-and-swap). Revision 0 creates a room's
    /// first entry: a key with any history (a live value, or a closed room's delete marker)
    /// is then a conflict, so a closed room reopens only from its record (its epochs go on).
    pub async fn update(&self, a: &RoomAssignment, revision: u64) -> Result<Write> {
        let key = token(a.room.as_str());
        match self
            .kv
            .update(key, serde_json::to_vec(a)?.into(), revision)
            .await
        {
            Ok(rev) => Ok(Write::Done(rev)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Write::Conflict),
            Err(e) => Err(Error::directory("update", e)),
        }
    }

    /// Reads the room's entry, asks `plan` what to make of it, and writes that on condition
    /// that the key is still at the revision read (update, or delete); a lost race reads and
    /// asks again, up to `rounds` times. A room without an entry (missing or closed) is left
    /// alone without asking.
    pub async fn edit(
        &self,
        room: &RoomId,
        rounds: usize,
        mut plan: impl FnMut(&RoomAssignment) -> Edit,
    ) -> Result<Edited> {
        for _ in 0..rounds {
            let RoomRecord::Assigned {
                assignment: before,
                revision,
            } = self.read(room).await?
            else {
                return Ok(Edited::Unchanged);
            };
            match plan(&before) {
                Edit::Keep => return Ok(Edited::Unchanged),
                Edit::Delete => {
                    if self.delete(room, revision).await? {
                        return Ok(Edited::Deleted { before });
                    }
                }
                Edit::Write(after) => {
                    if let Write::Done(revision) = self.update(&after, revision).await? {
                        return Ok(Edited::Written {
                            before,
                            after,
                            revision,
                        });
                    }
                }
            }
        }
        Ok(Edited::Contended)
    }

    /// Applies a node's leaving to the room's entry ([`crate::decide::leave`]): removes the
    /// node by CAS, or deletes the entry by revision when it was the last, in up to
    /// [`LEAVE_ROUNDS`] rounds.
    pub async fn leave(&self, left: &RoomClosed, coordinator: &str) -> Result<Left> {
        let edited = self
            .edit(&left.room, LEAVE_ROUNDS, |entry| {
                let stamp = Stamp {
                    coordinator,
                    now: Instant::now(),
                    now_ms: crate::now_ms(),
                };
                match decide::leave(entry, left, stamp) {
                    LeavePlan::Unchanged => Edit::Keep,
                    LeavePlan::Close => Edit::Delete,
                    LeavePlan::Update(next) => Edit::Write(next),
                }
            })
            .await?;
        Ok(match edited {
            Edited::Unchanged => Left::Unchanged,
            Edited::Deleted { before } => Left::Closed {
                epoch: before.epoch,
                assigned_ms: before.assigned_ms,
            },
            Edited::Written {
                before,
                after,
                revision,
            } => Left::Updated {
                origin_moved: after.node != before.node,
                assignment: after,
                revision,
            },
            Edited::Contended => Left::Contended,
        })
    }

    /// Deletes the room's entry if it is still at `revision`; false when it is not.
    async fn delete(&self, room: &RoomId, revision: u64) -> Result<bool> {
        let key = token(room.as_str());
        match self.kv.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(Error::directory("delete", e)),
        }
    }

    /// Every entry of the room's key still kept (up to [`HISTORY`]), oldest first.
    pub async fn history(&self, room: &RoomId) -> Result<Vec<RoomEvent>> {
        let key = token(room.as_str());
        let scan = async {
            let entries: Vec<kv::Entry> = self
                .kv
                .history(key.as_str())
                .await
                .map_err(|e| Error::directory("history", e))?
                .take(HISTORY as usize * 10)
                .try_collect()
                .await
                .map_err(|e| Error::directory("history", e))?;
            Ok(entries
                .into_iter()
                .map(|e| RoomEvent {
                    revision: e.revision,
                    assignment: match e.operation {
                        Operation::Put => serde_json::from_slice(&e.value).ok(),
                        Operation::Delete | Operation::Purge => None,
                    },
                })
                .collect())
        };
        tokio::time::timeout(SCAN_TIMEOUT, scan)
            .await
            .map_err(|e| Error::directory("history", e))?
    }

    /// Ids of the rooms with a live record (at most [`LIST_LIMIT`]).
    pub async fn rooms(&self) -> Result<Vec<RoomId>> {
        let scan = async {
            let keys: Vec<String> = self
                .kv
                .keys()
                .await
                .map_err(|e| Error::directory("keys", e))?
                .take(LIST_LIMIT)
                .try_collect()
                .await
                .map_err(|e| Error::directory("keys", e))?;
            Ok(keys
                .iter()
                .filter_map(|k| untoken(k).and_then(|id| RoomId::new(id).ok()))
                .collect())
        };
        tokio::time::timeout(SCAN_TIMEOUT, scan)
            .await
            .map_err(|e| Error::directory("keys", e))?
    }

    /// The live assignments (at most [`LIST_LIMIT`]), read with bounded concurrency.
    pub async fn list(&self) -> Result<Vec<RoomAssignment>> {
        let rooms = self.rooms().await?;
        let read = futures::stream::iter(rooms)
            .map(|room| async move { self.read(&room).await })
            .buffer_unordered(32)
            .try_filter_map(|rec| async move {
                Ok(match rec {
                    RoomRecord::Assigned { assignment, .. } => Some(assignment),
                    _ => None,
                })
            })
            .try_collect::<Vec<_>>();
        let mut list = tokio::time::timeout(SCAN_TIMEOUT, read)
            .await
            .map_err(|e| Error::directory("list", e))??;
        list.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(list)
    }
}
