//! Webhooks: what happened in the cluster's rooms, POSTed as JSON to the application.
//!
//! Whichever process sees an event (a node for participants and tracks, a coordinator for a
//! room's start, end and moves) publishes a [`WebhookEvent`] on [`subject`], which the
//! JetStream stream [`STREAM`] keeps (deduplicated by `Nats-Msg-Id` = the event's id). The
//! coordinators deliver the stream in order through one durable consumer, retrying with
//! backoff until the receiver answers 2xx: at least once, each event with its `id`.
//!
//! Every POST carries `Webhook-Id: <id>` and `Webhook-Signature: t=<unix secs>,v1=<hex>`,
//! where `<hex>` is HMAC-SHA256 with the API secret over `<t>.<body>`; [`verify`] checks it
//! (and that `t` is recent) as a receiver should.

use crate::cluster::token;
use crate::ids::{NodeId, RoomId, UserId};
use crate::signal::TrackInfo;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The JetStream stream that holds events until they are delivered.
pub const STREAM: &str = "WEBHOOKS";
/// Every subject of [`STREAM`].
pub const SUBJECTS: &str = "webhook.>";
/// The durable consumer the coordinators share.
pub const CONSUMER: &str = "webhook-delivery";
/// The header with the event's id.
pub const ID_HEADER: &str = "Webhook-Id";
/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "Webhook-Signature";

/// Where a room's events are published.
pub fn subject(room: &RoomId) -> String {
    format!("webhook.{}", token(room.as_str()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RoomStarted,
    RoomFinished,
    ParticipantJoined,
    ParticipantLeft,
    TrackPublished,
    TrackUnpublished,
    RoomMoved,
}

impl EventKind {
    /// Every kind, in the order above.
    pub const ALL: [EventKind; 7] = [
        EventKind::RoomStarted,
        EventKind::RoomFinished,
        EventKind::ParticipantJoined,
        EventKind::ParticipantLeft,
        EventKind::TrackPublished,
        EventKind::TrackUnpublished,
        EventKind::RoomMoved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RoomStarted => "room_started",
            EventKind::RoomFinished => "room_finished",
            EventKind::ParticipantJoined => "participant_joined",
            EventKind::ParticipantLeft => "participant_left",
            EventKind::TrackPublished => "track_published",
            EventKind::TrackUnpublished => "track_unpublished",
            EventKind::RoomMoved => "room_moved",
        }
    }
}

/// A participant in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventParticipant {
    pub id: UserId,
    pub name: String,
}

/// Why a room moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// A node of the room died.
    Failover,
    /// A node of the room drained.
    Drain,
}

/// `room_moved`: a node left the room other than by emptying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMoved {
    pub reason: MoveReason,
    /// The node that left.
    pub from: NodeId,
    /// The origin afterwards, when the room lives on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NodeId>,
    /// The room's epoch afterwards.
    pub epoch: u64,
}

/// One event, as POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event: a receiver that sees an id again has seen the event.
    pub id: String,
    pub event: EventKind,
    /// When the event happened, milliseconds since the Unix epoch by the clock of the
    /// process that saw it.
    pub created_ms: u64,
    pub room: RoomId,
    /// The process that saw it: a node id, or `coordinator:<id>`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<EventParticipant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<RoomMoved>,
}

impl WebhookEvent {
    /// An event of `kind` in `room` seen by `source` now, without details.
    pub fn new(
        id: String,
        kind: EventKind,
        room: RoomId,
        source: impl Into<String>,
        now_ms: u64,
    ) -> Self {
        WebhookEvent {
            id,
            event: kind,
            created_ms: now_ms,
            room,
            source: source.into(),
            participant: None,
            track: None,
            moved: None,
        }
    }
}

/// The `Webhook-Signature` value for `body` sent at `t` (unix seconds).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed Webhook-Signature header")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
    #[error("signature is older than the tolerance (a replay?)")]
    Stale,
}

/// Checks a `Webhook-Signature` header against `body`: the HMAC (in constant time) and
/// that `t` is within `tolerance_secs` of `now_unix`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_unix: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    let want = decode_hex(v1).ok_or(SignatureError::Malformed)?;
    let mut mac = mac(secret);
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&want)
        .map_err(|_| SignatureError::Mismatch)?;
    if t.abs_diff(now_unix) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let body = br#"{"id":"x","event":"room_started"}"#;
        let h = sign(b"secret", 1000, body);
        assert!(h.starts_with("t=1000,v1="));
        assert_eq!(verify(b"secret", &h, body, 1000, 300), Ok(()));
        assert_eq!(
            verify(b"other", &h, body, 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &h, b"{}", 1000, 300),
            Err(SignatureError::Mismatch)
        );
        let moved = h.replace("t=1000", "t=1001");
        assert_eq!(
            verify(b"secret", &moved, body, 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &h, body, 1301, 300),
            Err(SignatureError::Stale)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "t=1,v1=0"] {
            assert_eq!(
                verify(b"secret", bad, body, 1, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_have_their_wire_shape() {
        let mut e = WebhookEvent::new(
            "id1".into(),
            EventKind::ParticipantJoined,
            RoomId::new("r").unwrap(),
            "n1",
            5,
        );
        e.participant = Some(EventParticipant {
            id: UserId::new("u").unwrap(),
            name: "U".into(),
        });
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"id":"id1","event":"participant_joined","created_ms":5,"room":"r","source":"n1","participant":{"id":"u","name":"U"}}"#
        );
        assert_eq!(serde_json::from_str::<WebhookEvent>(&text).unwrap(), e);
        for k in EventKind::ALL {
            assert_eq!(serde_json::json!(k), serde_json::json!(k.as_str()));
        }
        assert_eq!(subject(&RoomId::new("a.b").unwrap()), "webhook.a=2Eb");
    }
}
