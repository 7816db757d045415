//! Webhook events of this node's own participants and tracks (`protocol::webhook`):
//! `participant_joined`, `participant_left`, `track_published`, `track_unpublished`.
//!
//! The room hands each event to [`Webhooks`] (no IO on the actor); one task publishes them
//! in order to JetStream on `webhook.<room>`, with `Nats-Msg-Id` = the event id so that a
//! retried publish is stored once, and waits for the stream's acknowledgement. A failed
//! publish is tried again a few times with backoff, then dropped. When nobody stores the
//! events (no coordinator configured webhooks, so the `WEBHOOKS` stream does not exist, and
//! NATS answers "no responders"), the event is dropped quietly and counted. A standalone
//! node publishes nothing.

use crate::cluster::Cluster;
use base64::Engine;
use protocol::signal::{ParticipantInfo, TrackInfo};
use protocol::webhook::{EventKind, EventParticipant, WebhookEvent};
use protocol::RoomId;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events waiting for the publishing task; beyond this an event is dropped (NATS is away
/// or far behind) rather than blocking a room.
const QUEUE: usize = 8 * 1024;
/// Publishes of one event before it is dropped.
const ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// How long one publish waits for the stream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A cheap, cloneable handle the rooms publish events through.
#[derive(Clone, Default)]
pub struct Webhooks {
    /// `None`: a standalone node, nothing is published.
    tx: Option<mpsc::Sender<WebhookEvent>>,
    /// The node id, every event's `source`.
    source: String,
}

impl Webhooks {
    /// Publishes nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts the publishing task on the cluster's runtime.
    pub fn start(cluster: &Cluster) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut js = async_nats::jetstream::new(cluster.client.clone());
        js.set_timeout(ACK_TIMEOUT);
        cluster.rt.spawn(publish_loop(js, rx));
        Webhooks {
            tx: Some(tx),
            source: cluster.node.to_string(),
        }
    }

    /// A participant of this node joined (`ParticipantJoined`) or left for good
    /// (`ParticipantLeft`).
    pub fn participant(&self, kind: EventKind, room: &RoomId, who: &ParticipantInfo) {
        self.emit(kind, room, who, None);
    }

    /// A track of this node's participant was published or unpublished.
    pub fn track(&self, kind: EventKind, room: &RoomId, who: &ParticipantInfo, track: TrackInfo) {
        self.emit(kind, room, who, Some(track));
    }

    fn emit(
        &self,
        kind: EventKind,
        room: &RoomId,
        who: &ParticipantInfo,
        track: Option<TrackInfo>,
    ) {
        let Some(tx) = &self.tx else {
            return;
        };
        let mut event = WebhookEvent::new(
            event_id(),
            kind,
            room.clone(),
            self.source.clone(),
            crate::unix_ms(),
        );
        event.participant = Some(EventParticipant {
            id: who.id.clone(),
            name: who.name.clone(),
        });
        event.track = track;
        if tx.try_send(event).is_err() {
            dropped("queue_full");
        }
    }
}

/// 16 random bytes, base64url: unique per event.
fn event_id() -> String {
    let mut raw = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn dropped(reason: &'static str) {
    metrics::counter!("webhook_events_dropped_total", "reason" => reason).increment(1);
}

/// What to do after a failed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFailure {
    /// Nobody stores webhook events: drop this one, quietly.
    NoStream,
    /// Try again after a pause.
    Retry,
    /// Tried often enough: drop it.
    GiveUp,
}

fn after_failure(no_stream: bool, attempts: u32) -> AfterFailure {
    if no_stream {
        AfterFailure::NoStream
    } else if attempts >= ATTEMPTS {
        AfterFailure::GiveUp
    } else {
        AfterFailure::Retry
    }
}

async fn publish_loop(js: async_nats::jetstream::Context, mut rx: mpsc::Receiver<WebhookEvent>) {
    while let Some(event) = rx.recv().await {
        let Ok(body) = serde_json::to_vec(&event) else {
            dropped("unserializable");
            continue;
        };
        let subject = protocol::webhook::subject(&event.room);
        let mut pauses = protocol::backoff::delays(FIRST_PAUSE, MAX_PAUSE);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(body.clone().into())
                .message_id(&event.id);
            let outcome = match js.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            let error = match outcome {
                Ok(_) => {
                    metrics::counter!("webhook_events_published_total", "event" => event.event.as_str())
                        .increment(1);
                    break;
                }
                Err(e) => e,
            };
            let no_stream = matches!(
                error.kind(),
                async_nats::jetstream::context::PublishErrorKind::StreamNotFound
            );
            match after_failure(no_stream, attempts) {
                AfterFailure::NoStream => {
                    tracing::trace!(
                        event = event.event.as_str(),
                        "no webhook stream; event dropped"
                    );
                    dropped("no_stream");
                    break;
                }
                AfterFailure::GiveUp => {
                    tracing::warn!(event = event.event.as_str(), room = %event.room, error = %error, "webhook event not published; dropped");
                    dropped("publish_failed");
                    break;
                }
                AfterFailure::Retry => {
                    let pause = pauses.next().unwrap_or(MAX_PAUSE);
                    tracing::debug!(event = event.event.as_str(), error = %error, ?pause, "webhook publish failed; trying again");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_stream_drops_at_once_other_failures_retry_a_bounded_number_of_times() {
        assert_eq!(after_failure(true, 1), AfterFailure::NoStream);
        assert_eq!(after_failure(false, 1), AfterFailure::Retry);
        assert_eq!(after_failure(false, ATTEMPTS - 1), AfterFailure::Retry);
        assert_eq!(after_failure(false, ATTEMPTS), AfterFailure::GiveUp);
    }

    #[test]
    fn event_ids_are_unique_and_url_safe() {
        let a = event_id();
        assert_eq!(a.len(), 22);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, event_id());
    }

    #[test]
    fn a_disabled_handle_publishes_nothing_and_does_not_panic() {
        let w = Webhooks::disabled();
        let who = ParticipantInfo {
            id: protocol::UserId::new("u").unwrap(),
            name: "u".into(),
        };
        w.participant(
            EventKind::ParticipantJoined,
            &RoomId::new("r").unwrap(),
            &who,
        );
    }
}
