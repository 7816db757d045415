//! Webhooks (README "Webhooks"): the coordinator's own events, and their delivery.
//!
//! **Events.** A coordinator publishes `room_started`, `room_finished` and `room_moved`
//! ([`protocol::webhook::WebhookEvent`]) right after the KV write that makes them true
//! succeeded, so each happens once however many coordinators run; the nodes publish the
//! participant and track events. Each goes to JetStream on `webhook.<room>` with
//! `Nats-Msg-Id` = its id, and ids of coordinator events are deterministic
//! ([`EventId`]): a publish repeated within the stream's duplicate window is dropped. The
//! publisher awaits the stream's acknowledgement (bounded by [`EMIT_TIMEOUT`]), so a
//! `room_started` is in the stream before the allocation that opened the room is answered,
//! and thus before any of its `participant_joined`. Without the stream (no coordinator has a
//! webhook URL) the publish fails at once and the event is dropped: nobody listens. A
//! coordinator without webhook URLs that met the missing stream stops publishing until it
//! sees the stream again ([`stream_presence`], every [`STREAM_RECHECK`]): a publish that
//! fails costs a NATS round trip, a sixth of an allocation's CPU (BENCHMARKS.md
//! `bench_scale`).
//!
//! **Delivery** ([`delivery`]): see there.

pub(crate) mod delivery;

use crate::Shared;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use protocol::cluster::RoomAssignment;
use protocol::webhook::{self, EventKind, MoveReason, RoomMoved, WebhookEvent};
use protocol::{NodeId, RoomId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Bound on waiting for the stream's acknowledgement of one event.
pub const EMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a coordinator that found no webhook stream looks for it again.
pub const STREAM_RECHECK: Duration = Duration::from_secs(5);

/// Deterministic ids of the coordinator's events: the same fact gives the same id, so the
/// stream drops a repeated publish.
pub enum EventId<'a> {
    /// A room opened: by the API (`created_ms` of its settings) or by a join (the
    /// `assigned_ms` of its first entry).
    Started { room: &'a RoomId, at_ms: u64 },
    /// A room ended: a live room's last entry (its epoch and `assigned_ms`), or a created
    /// room that nobody joined (`created_ms`, epoch 0).
    Finished {
        room: &'a RoomId,
        epoch: u64,
        at_ms: u64,
    },
    /// A node left a room's entry, written at `revision`.
    Moved {
        room: &'a RoomId,
        revision: u64,
        from: &'a NodeId,
    },
}

impl EventId<'_> {
    pub fn render(&self) -> String {
        match self {
            EventId::Started { room, at_ms } => format!("room_started:{room}:{at_ms}"),
            EventId::Finished { room, epoch, at_ms } => {
                format!("room_finished:{room}:{epoch}:{at_ms}")
            }
            EventId::Moved {
                room,
                revision,
                from,
            } => format!("room_moved:{room}:{revision}:{from}"),
        }
    }
}

/// `source` of this coordinator's events.
pub fn source(shared: &Shared) -> String {
    format!("coordinator:{}", shared.config.id)
}

/// A `room_started` or `room_finished` event.
pub(crate) fn room_event(
    shared: &Shared,
    kind: EventKind,
    room: &RoomId,
    id: EventId,
) -> WebhookEvent {
    WebhookEvent::new(
        id.render(),
        kind,
        room.clone(),
        source(shared),
        crate::now_ms(),
    )
}

/// `room_moved`: `from` left the room, whose entry is `after`, written at `revision`.
pub(crate) fn moved_event(
    shared: &Shared,
    reason: MoveReason,
    from: &NodeId,
    after: &RoomAssignment,
    revision: u64,
) -> WebhookEvent {
    let id = EventId::Moved {
        room: &after.room,
        revision,
        from,
    };
    let mut e = room_event(shared, EventKind::RoomMoved, &after.room, id);
    e.moved = Some(RoomMoved {
        reason,
        from: from.clone(),
        to: Some(after.node.clone()),
        epoch: after.epoch,
    });
    e
}

/// One `room_moved` per node that left between `before` and `after`, written at `revision`.
pub(crate) fn moved_events(
    shared: &Shared,
    reason: MoveReason,
    before: &RoomAssignment,
    after: &RoomAssignment,
    revision: u64,
) -> Vec<WebhookEvent> {
    let remaining = after.members();
    before
        .members()
        .into_iter()
        .filter(|n| !remaining.contains(n))
        .map(|from| moved_event(shared, reason, &from, after, revision))
        .collect()
}

/// Publishes `event` to the webhook stream and awaits its acknowledgement; false when it did
/// not get there (logged: loudly only when this coordinator delivers webhooks).
pub(crate) async fn emit(shared: &Shared, event: &WebhookEvent) -> bool {
    let Some(client) = shared.client.get() else {
        return false;
    };
    let delivers = !shared.config.webhook_urls.is_empty();
    if !delivers && !shared.webhook_stream.load(Ordering::Relaxed) {
        tracing::debug!(id = %event.id, "no webhook stream: event not kept");
        return false;
    }
    let body = match serde_json::to_vec(event) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "encode webhook event");
            return false;
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    let publish = PublishMessage::build()
        .payload(body.into())
        .message_id(&event.id);
    let acked = async {
        js.send_publish(webhook::subject(&event.room), publish)
            .await?
            .await
    };
    let kind = event.event.as_str();
    match tokio::time::timeout(EMIT_TIMEOUT, acked).await {
        Ok(Ok(ack)) => {
            shared.metrics.webhook_emitted(kind);
            tracing::debug!(id = %event.id, duplicate = ack.duplicate, "webhook event published");
            true
        }
        Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound && !delivers => {
            shared.webhook_stream.store(false, Ordering::Relaxed);
            tracing::debug!(id = %event.id, "no webhook stream: event not kept");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(id = %event.id, error = %e, "webhook event not published");
            false
        }
        Err(_) => {
            tracing::warn!(id = %event.id, "webhook event not acknowledged in time");
            false
        }
    }
}

/// For a coordinator without webhook URLs: while its events meet no stream, looks for the
/// stream every [`STREAM_RECHECK`], and publishes again once it is there.
pub(crate) async fn stream_presence(shared: Arc<Shared>, client: async_nats::Client) {
    let js = async_nats::jetstream::new(client);
    let mut tick = tokio::time::interval(STREAM_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.webhook_stream.load(Ordering::Relaxed) {
            continue;
        }
        if js.get_stream(webhook::STREAM).await.is_ok() {
            tracing::info!("webhook stream found: publishing events again");
            shared.webhook_stream.store(true, Ordering::Relaxed);
        }
    }
}

/// Publishes each event in turn (their order is kept).
pub(crate) async fn emit_all(shared: &Shared, events: &[WebhookEvent]) {
    for e in events {
        emit(shared, e).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic() {
        let room = RoomId::new("r").unwrap();
        let n1 = NodeId::new("n1").unwrap();
        assert_eq!(
            EventId::Started {
                room: &room,
                at_ms: 5
            }
            .render(),
            "room_started:r:5"
        );
        assert_eq!(
            EventId::Finished {
                room: &room,
                epoch: 2,
                at_ms: 9
            }
            .render(),
            "room_finished:r:2:9"
        );
        assert_eq!(
            EventId::Moved {
                room: &room,
                revision: 7,
                from: &n1
            }
            .render(),
            "room_moved:r:7:n1"
        );
    }
}
