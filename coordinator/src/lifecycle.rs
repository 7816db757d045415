//! Rooms opening and finishing, as the room API and webhooks see them.
//!
//! - **Opening** ([`opened`]): the allocation that writes a room's first entry (or opens a
//!   closed room again) reads its stored settings; if it has none and the joining token
//!   carries some, it stores them (create-only, so settings stored through the API are never
//!   overwritten). It emits `room_started` unless the API created the room (the API emitted
//!   it then), before the allocation is answered.
//! - **Finishing**: a live room finishes when its last node leaves its entry
//!   ([`finished_live`], called by the coordinator whose delete of the entry succeeded); a
//!   room created through the API that nobody joins finishes after its empty timeout
//!   ([`sweep`], run for each room by its deciding coordinator). Either way its settings are
//!   deleted (conditional on the revision read, so a concurrent create or join wins) and
//!   `room_finished` is emitted.

use crate::decide::RoomRecord;
use crate::settings::{Created, SettingsStore, Versioned};
use crate::webhooks::{self, EventId};
use crate::Shared;
use protocol::cluster::{AllocateRequest, RoomAssignment};
use protocol::room_api::{CreatedBy, RoomSettings, StoredRoom, DEFAULT_EMPTY_TIMEOUT_SECS};
use protocol::webhook::EventKind;
use protocol::RoomId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the sweep looks for created rooms past their empty timeout.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A room the sweep found live is not looked at again for this long (a live room with
/// settings finishes through its entry's deletion anyway; this only catches leftovers).
pub const LIVE_RECHECK: Duration = Duration::from_secs(30);
/// Version of [`StoredRoom`] this coordinator writes.
pub const STORED_VERSION: u32 = 1;

/// The settings an allocation of an existing room answers with: as last heard.
pub(crate) fn cached_settings(shared: &Shared, room: &RoomId) -> Option<RoomSettings> {
    shared
        .settings
        .get()?
        .cached(room)
        .map(|v| v.stored.settings)
}

/// A join just opened `assignment`'s room (a new entry, or a closed room opened again):
/// its settings (stored, or the token's, now stored), after `room_started` was emitted.
/// `prefetched`: the room's settings as [`read_settings`] read them while the entry was
/// written (read here when `None`).
pub(crate) async fn opened(
    shared: &Shared,
    req: &AllocateRequest,
    assignment: &RoomAssignment,
    prefetched: Option<crate::Result<Option<Versioned>>>,
) -> Option<RoomSettings> {
    let room = &assignment.room;
    let mut api_created = false;
    let settings = match shared.settings.get() {
        None => None,
        Some(store) => match read_and_hold(store, room, prefetched).await {
            Ok(Some(v)) => {
                api_created = v.stored.created_by == CreatedBy::Api;
                Some(v.stored.settings)
            }
            Ok(None) => store_token_settings(shared, req, room).await,
            Err(e) => {
                tracing::warn!(%room, error = %e, "room settings not read; the room opens without them");
                None
            }
        },
    };
    if !api_created {
        let id = EventId::Started {
            room,
            at_ms: assignment.assigned_ms,
        };
        let event = webhooks::room_event(shared, EventKind::RoomStarted, room, id);
        webhooks::emit(shared, &event).await;
    }
    settings
}

/// The room's stored settings as KV has them (`None` without any, or before the settings
/// bucket is open).
pub(crate) async fn read_settings(
    shared: &Shared,
    room: &RoomId,
) -> crate::Result<Option<Versioned>> {
    match shared.settings.get() {
        Some(store) => store.read(room).await,
        None => Ok(None),
    }
}

/// The room's stored settings, written again at a new revision so that a sweep that read
/// the old one can no longer finish the room; `None` when it has none (or the sweep
/// finished it first).
async fn read_and_hold(
    store: &SettingsStore,
    room: &RoomId,
    mut prefetched: Option<crate::Result<Option<Versioned>>>,
) -> crate::Result<Option<Versioned>> {
    for _ in 0..3 {
        let read = match prefetched.take() {
            Some(read) => read,
            None => store.read(room).await,
        };
        let Some(v) = read? else {
            return Ok(None);
        };
        if store.touch(&v).await? {
            return Ok(Some(v));
        }
    }
    // Contended three times over: the settings exist, use them as read last.
    store.read(room).await
}

/// Stores the joining token's settings for a room that has none; the stored ones when
/// another writer got there first.
async fn store_token_settings(
    shared: &Shared,
    req: &AllocateRequest,
    room: &RoomId,
) -> Option<RoomSettings> {
    let store = shared.settings.get()?;
    let settings = req.settings.clone()?;
    if let Err(why) = settings.validate() {
        tracing::info!(%room, %why, "a join token's room settings ignored");
        return None;
    }
    let stored = StoredRoom {
        v: STORED_VERSION,
        room: room.clone(),
        settings,
        created_ms: crate::now_ms(),
        created_by: CreatedBy::Token,
    };
    match store.create(stored).await {
        Ok(Created::Done(v)) => Some(v.stored.settings),
        Ok(Created::Exists) => store
            .read(room)
            .await
            .ok()
            .flatten()
            .map(|v| v.stored.settings),
        Err(e) => {
            tracing::warn!(%room, error = %e, "a join token's room settings not stored");
            None
        }
    }
}

/// The last node left the room's entry (this coordinator deleted it): its settings go,
/// and `room_finished` is emitted.
pub(crate) async fn finished_live(shared: &Shared, room: &RoomId, epoch: u64, assigned_ms: u64) {
    if let Some(store) = shared.settings.get() {
        match store.read(room).await {
            Ok(Some(v)) => {
                if let Err(e) = store.delete(room, v.revision).await {
                    tracing::warn!(%room, error = %e, "settings of a finished room not deleted");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%room, error = %e, "settings of a finished room not read"),
        }
    }
    let id = EventId::Finished {
        room,
        epoch,
        at_ms: assigned_ms,
    };
    let event = webhooks::room_event(shared, EventKind::RoomFinished, room, id);
    webhooks::emit(shared, &event).await;
}

/// Finishes a created room that nobody joined (no live entry): deletes its settings at
/// the revision read and emits `room_finished`. False when someone else changed them.
pub(crate) async fn finish_unjoined(shared: &Shared, v: &Versioned) -> crate::Result<bool> {
    let Some(store) = shared.settings.get() else {
        return Ok(false);
    };
    let room = &v.stored.room;
    if !store.delete(room, v.revision).await? {
        return Ok(false);
    }
    let id = EventId::Finished {
        room,
        epoch: 0,
        at_ms: v.stored.created_ms,
    };
    let event = webhooks::room_event(shared, EventKind::RoomFinished, room, id);
    webhooks::emit(shared, &event).await;
    Ok(true)
}

/// How long a created room waits for its first participant.
pub fn empty_timeout(settings: &RoomSettings) -> Duration {
    let secs = match settings.empty_timeout_secs {
        0 => DEFAULT_EMPTY_TIMEOUT_SECS,
        s => s,
    };
    Duration::from_secs(u64::from(secs))
}

/// Whether stored settings are past their empty timeout at `now_ms`.
pub fn expired(stored: &StoredRoom, now_ms: u64) -> bool {
    let timeout = u64::try_from(empty_timeout(&stored.settings).as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(stored.created_ms) >= timeout
}

/// Every [`SWEEP_INTERVAL`]: finishes the created rooms this coordinator decides that are
/// past their empty timeout and have no live entry.
pub(crate) async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rooms found live, and when to look at them again.
    let mut live: HashMap<RoomId, Instant> = HashMap::new();
    loop {
        tick.tick().await;
        let (Some(store), Some(dir)) = (shared.settings.get(), shared.directory.get()) else {
            continue;
        };
        let now_ms = crate::now_ms();
        let due: Vec<RoomId> = {
            let now = Instant::now();
            let coords = shared.coords();
            store
                .cache()
                .rooms()
                .filter(|v| expired(&v.stored, now_ms))
                .filter(|v| coords.decider(&v.stored.room, now) == shared.config.id)
                .map(|v| v.stored.room.clone())
                .collect()
        };
        let now = Instant::now();
        let due_set: std::collections::HashSet<&RoomId> = due.iter().collect();
        live.retain(|room, until| *until > now && due_set.contains(room));
        drop(due_set);
        for room in due {
            if live.contains_key(&room) {
                continue;
            }
            // Exact from here on: the entry and the settings as KV has them now.
            match dir.read(&room).await {
                Ok(RoomRecord::Assigned { .. }) => {
                    live.insert(room, Instant::now() + LIVE_RECHECK);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%room, error = %e, "sweep: directory not read");
                    continue;
                }
            }
            let fresh = match store.read(&room).await {
                Ok(Some(v)) if expired(&v.stored, crate::now_ms()) => v,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(%room, error = %e, "sweep: settings not read");
                    continue;
                }
            };
            match finish_unjoined(&shared, &fresh).await {
                Ok(true) => {
                    tracing::info!(%room, "room nobody joined finished after its empty timeout")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(%room, error = %e, "sweep: settings not deleted"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_rooms_expire_after_their_empty_timeout_or_the_default() {
        let mut stored = StoredRoom {
            v: 1,
            room: RoomId::new("r").unwrap(),
            settings: RoomSettings::default(),
            created_ms: 1_000,
            created_by: CreatedBy::Api,
        };
        let default_ms = u64::from(DEFAULT_EMPTY_TIMEOUT_SECS) * 1000;
        assert!(!expired(&stored, 1_000 + default_ms - 1));
        assert!(expired(&stored, 1_000 + default_ms));
        stored.settings.empty_timeout_secs = 2;
        assert!(!expired(&stored, 2_999));
        assert!(expired(&stored, 3_000));
        // A clock behind the creation time never expires it.
        assert!(!expired(&stored, 0));
    }
}
