//! Room settings: the JetStream KV bucket [`SETTINGS_BUCKET`] (room token → JSON
//! [`StoredRoom`]), written when the room API creates a room or when a join whose token
//! carries `room_settings` opens one, and deleted when the room finishes.
//!
//! Every coordinator watches the bucket into memory ([`SettingsCache`]), so an allocation
//! answers with the room's settings without reading KV. A decision that must be exact reads
//! the key itself: the opening of a room (was it created through the API?), the API's own
//! reads, and the sweep, whose deletes are conditional on the revision read.

use crate::error::{Error, Result};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, Store, UpdateErrorKind};
use protocol::cluster::{token, untoken};
use protocol::room_api::{StoredRoom, SETTINGS_BUCKET};
use protocol::RoomId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// History kept per key (a room's settings are written once and deleted once).
const HISTORY: i64 = 2;

/// A stored room and the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub stored: StoredRoom,
    pub revision: u64,
}

/// The bucket as this coordinator last heard it.
#[derive(Debug, Default)]
pub struct SettingsCache {
    rooms: HashMap<RoomId, Versioned>,
}

impl SettingsCache {
    pub fn get(&self, room: &RoomId) -> Option<&Versioned> {
        self.rooms.get(room)
    }

    pub fn rooms(&self) -> impl Iterator<Item = &Versioned> {
        self.rooms.values()
    }

    /// Applies one change; an older revision than the one held is ignored (a watch that
    /// restarts replays the latest values).
    pub fn apply(&mut self, room: RoomId, change: Option<Versioned>, revision: u64) {
        if self
            .rooms
            .get(&room)
            .is_some_and(|held| held.revision > revision)
        {
            return;
        }
        match change {
            Some(v) => {
                self.rooms.insert(room, v);
            }
            None => {
                self.rooms.remove(&room);
            }
        }
    }
}

/// The settings bucket and this coordinator's view of it.
#[derive(Clone)]
pub struct SettingsStore {
    kv: Store,
    cache: Arc<Mutex<SettingsCache>>,
}

/// Outcome of a create-only write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Done(Versioned),
    /// The room has settings already.
    Exists,
}

impl SettingsStore {
    /// Opens the bucket, creating it if missing (`replicas` copies, like `rooms`).
    pub async fn open(client: &async_nats::Client, replicas: usize) -> Result<Self> {
        let config = kv::Config {
            bucket: SETTINGS_BUCKET.into(),
            description: "room -> settings stored through the room API or a join token".into(),
            history: HISTORY,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = crate::directory::open_bucket(client, config).await?;
        Ok(Self {
            kv,
            cache: Arc::default(),
        })
    }

    pub fn cache(&self) -> MutexGuard<'_, SettingsCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings as last heard (no KV read).
    pub fn cached(&self, room: &RoomId) -> Option<Versioned> {
        self.cache().get(room).cloned()
    }

    /// Reads the room's settings from KV (and refreshes the cache with them).
    pub async fn read(&self, room: &RoomId) -> Result<Option<Versioned>> {
        let entry = self
            .kv
            .entry(token(room.as_str()))
            .await
            .map_err(|e| Error::directory("read settings", e))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let found = decode(&entry);
        self.cache()
            .apply(room.clone(), found.clone(), entry.revision);
        Ok(found)
    }

    /// Stores `stored` unless the room has settings.
    pub async fn create(&self, stored: StoredRoom) -> Result<Created> {
        let body = serde_json::to_vec(&stored)?;
        match self
            .kv
            .create(token(stored.room.as_str()), body.into())
            .await
        {
            Ok(revision) => {
                let v = Versioned { stored, revision };
                self.cache()
                    .apply(v.stored.room.clone(), Some(v.clone()), revision);
                Ok(Created::Done(v))
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Created::Exists),
            Err(e) => Err(Error::directory("create settings", e)),
        }
    }

    /// Writes the same settings again at a new revision unless they changed since `v` was
    /// read: a join opening the room thereby makes the sweep's delete (conditional on the
    /// revision it read) fail. False when they changed.
    pub async fn touch(&self, v: &Versioned) -> Result<bool> {
        let body = serde_json::to_vec(&v.stored)?;
        match self
            .kv
            .update(token(v.stored.room.as_str()), body.into(), v.revision)
            .await
        {
            Ok(revision) => {
                let room = v.stored.room.clone();
                let touched = Versioned {
                    stored: v.stored.clone(),
                    revision,
                };
                self.cache().apply(room, Some(touched), revision);
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(Error::directory("touch settings", e)),
        }
    }

    /// Deletes the room's settings if they are still at `revision`; false when they are not.
    pub async fn delete(&self, room: &RoomId, revision: u64) -> Result<bool> {
        match self
            .kv
            .delete_expect_revision(token(room.as_str()), Some(revision))
            .await
        {
            Ok(()) => {
                self.cache().apply(room.clone(), None, revision + 1);
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(Error::directory("delete settings", e)),
        }
    }

    /// Keeps the cache in step with the bucket, for ever (restarting a watch that ends).
    pub async fn watch(self) {
        let cache = self.cache.clone();
        let apply = move |entry: &kv::Entry| {
            let Some(room) = untoken(&entry.key).and_then(|k| RoomId::new(k).ok()) else {
                return;
            };
            let found = decode(entry);
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply(room, found, entry.revision);
        };
        crate::directory::follow(self.kv.clone(), SETTINGS_BUCKET, apply, || {}).await;
    }
}

fn decode(entry: &kv::Entry) -> Option<Versioned> {
    if entry.operation != Operation::Put {
        return None;
    }
    match serde_json::from_slice::<StoredRoom>(&entry.value) {
        Ok(stored) => Some(Versioned {
            stored,
            revision: entry.revision,
        }),
        Err(e) => {
            tracing::warn!(key = %entry.key, error = %e, "unreadable room settings ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::room_api::{CreatedBy, RoomSettings};

    fn stored(room: &str, max: u32) -> StoredRoom {
        StoredRoom {
            v: 1,
            room: RoomId::new(room).unwrap(),
            settings: RoomSettings {
                max_participants: max,
                ..RoomSettings::default()
            },
            created_ms: 1,
            created_by: CreatedBy::Api,
        }
    }

    #[test]
    fn the_cache_keeps_the_newest_revision() {
        let r = RoomId::new("r").unwrap();
        let mut c = SettingsCache::default();
        let v = |max, revision| Versioned {
            stored: stored("r", max),
            revision,
        };
        c.apply(r.clone(), Some(v(1, 5)), 5);
        c.apply(r.clone(), Some(v(2, 3)), 3);
        assert_eq!(c.get(&r).unwrap().stored.settings.max_participants, 1);
        c.apply(r.clone(), None, 6);
        assert!(c.get(&r).is_none());
        c.apply(r.clone(), Some(v(3, 7)), 7);
        assert_eq!(c.get(&r).unwrap().revision, 7);
    }
}
