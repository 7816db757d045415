//! Client signaling messages, PROTOCOL.md v1: one JSON object per WebSocket text frame,
//! tagged by `type`. Unknown fields are ignored; unknown types are an error the node reports.

use crate::error::ErrorCode;
use crate::ids::{RoomId, TrackId, UserId};
use serde::{Deserialize, Serialize};

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcKind {
    /// The client offers, sendonly.
    Publisher,
    /// The node offers, recvonly.
    Subscriber,
}

/// `RTCIceCandidateInit` as browsers serialize it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// `RTCIceServer` as browsers take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Client → node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Join {
        room: RoomId,
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    Resume {
        resume_token: String,
    },
    Publish {
        sdp: String,
    },
    SubscribeAnswer {
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        candidate: Option<IceCandidate>,
    },
    Message {
        to: UserId,
        data: serde_json::Value,
    },
    Leave,
    Ping,
}

/// The `type` values [`ClientMessage`] knows, in protocol order.
pub const CLIENT_TYPES: &[&str] = &[
    "join",
    "resume",
    "publish",
    "subscribe_answer",
    "candidate",
    "message",
    "leave",
    "ping",
];

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: UserId,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

impl TrackKind {
    /// Its wire name (as serialized): `audio` or `video`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: TrackKind,
    /// The application muted it (room API): the node forwards none of its media. Absent
    /// when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

/// A participant with what it publishes, in `joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantState {
    pub id: UserId,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

/// Node → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        room: RoomId,
        participant: ParticipantInfo,
        node: crate::ids::NodeId,
        resume_token: String,
        ice_servers: Vec<IceServer>,
        participants: Vec<ParticipantState>,
        /// Other nodes' WebSocket URLs, nearest first: where to reconnect if this node is
        /// gone and the client's URL is this node's own (PROTOCOL.md, an extension of v1).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fallback_urls: Vec<String>,
    },
    PublishAnswer {
        sdp: String,
    },
    SubscribeOffer {
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        candidate: Option<IceCandidate>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        id: UserId,
    },
    TrackPublished {
        participant: UserId,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant: UserId,
        track_id: TrackId,
    },
    Message {
        from: UserId,
        data: serde_json::Value,
    },
    /// The application muted or unmuted a track (room API); sent to everyone in the room,
    /// its publisher included. A muted track stays published but carries no media.
    TrackMuted {
        participant: UserId,
        track_id: TrackId,
        muted: bool,
    },
    /// The application changed this participant's grants (room API). Losing
    /// `can_publish` ends its published tracks; gaining it lets its next `publish` through.
    /// `resume_token` replaces the one from `joined` (the old one no longer resumes).
    PermissionsChanged {
        can_publish: bool,
        can_subscribe: bool,
        resume_token: String,
    },
    /// Application data sent through the room API (not from a participant).
    Data {
        data: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    /// The participant is out of the room for good: `reason` is `removed` (by the
    /// application) or `room_closed`. The node closes the socket (code 1000); the client
    /// must not reconnect or resume.
    Removed {
        reason: String,
    },
    Reconnect {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong,
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// The JSON text frame. Serializing these types cannot fail (string keys, no maps with
    /// non-string keys, no floats that could be NaN).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialize failed"}"#.to_owned()
        })
    }
}

/// Why a text frame is not a valid client message. Each maps to `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame of {0} bytes exceeds the 65536 byte limit")]
    TooLarge(usize),
    #[error("invalid json: {0}")]
    InvalidJson(String),
    #[error("message is not a json object with a string `type`")]
    NoType,
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("invalid `{kind}` message: {reason}")]
    InvalidFields { kind: String, reason: String },
}

/// Parses one text frame. Never panics, whatever the bytes.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    if text.len() > crate::MAX_FRAME_BYTES {
        return Err(ParseError::TooLarge(text.len()));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ParseError::InvalidJson(e.to_string()))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(ParseError::NoType)?;
    if !CLIENT_TYPES.contains(&kind) {
        let mut shown: String = kind.chars().take(64).collect();
        if shown.len() < kind.len() {
            shown.push('…');
        }
        return Err(ParseError::UnknownType(shown));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value).map_err(|e| ParseError::InvalidFields {
        kind,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_track_kind_names_itself_as_it_serializes() {
        for kind in [TrackKind::Audio, TrackKind::Video] {
            assert_eq!(json!(kind), json!(kind.as_str()));
        }
    }

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn every_client_message_round_trips() {
        let msgs = vec![
            ClientMessage::Join {
                room: RoomId::new("r1").unwrap(),
                token: "t".into(),
                region: Some("eu".into()),
            },
            ClientMessage::Resume {
                resume_token: "x".into(),
            },
            ClientMessage::Publish { sdp: "v=0".into() },
            ClientMessage::SubscribeAnswer { sdp: "v=0".into() },
            ClientMessage::Candidate {
                pc: PcKind::Subscriber,
                candidate: Some(IceCandidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                    username_fragment: None,
                }),
            },
            ClientMessage::Candidate {
                pc: PcKind::Publisher,
                candidate: None,
            },
            ClientMessage::Message {
                to: uid("bob"),
                data: json!({"a": [1, 2]}),
            },
            ClientMessage::Leave,
            ClientMessage::Ping,
        ];
        for m in msgs {
            let text = serde_json::to_string(&m).unwrap();
            assert_eq!(parse_client_message(&text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn wire_shape_matches_protocol_md() {
        let m = parse_client_message(
            r#"{"type":"candidate","pc":"publisher","candidate":{"candidate":"c","sdpMid":"0","sdpMLineIndex":0},"extra":1}"#,
        )
        .unwrap();
        assert!(
            matches!(m, ClientMessage::Candidate { pc: PcKind::Publisher, candidate: Some(c) } if c.sdp_mid.as_deref() == Some("0"))
        );
        assert_eq!(
            parse_client_message(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave
        );
        let joined = ServerMessage::TrackUnpublished {
            participant: uid("a"),
            track_id: TrackId::new("TR_1").unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&joined).unwrap(),
            json!({"type":"track_unpublished","participant":"a","track_id":"TR_1"})
        );
        assert_eq!(
            serde_json::to_value(ServerMessage::error(ErrorCode::RateLimited, "slow down"))
                .unwrap(),
            json!({"type":"error","code":"rate_limited","message":"slow down"})
        );
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn every_server_message_round_trips() {
        let msgs = vec![
            ServerMessage::Joined {
                room: RoomId::new("r").unwrap(),
                participant: ParticipantInfo {
                    id: uid("a"),
                    name: "A".into(),
                },
                node: crate::ids::NodeId::new("n1").unwrap(),
                resume_token: "rt".into(),
                ice_servers: vec![IceServer {
                    urls: vec!["turn:127.0.0.1:3478".into()],
                    username: Some("1:a".into()),
                    credential: Some("x".into()),
                }],
                participants: vec![ParticipantState {
                    id: uid("b"),
                    name: "B".into(),
                    tracks: vec![TrackInfo {
                        id: TrackId::new("TR_2").unwrap(),
                        kind: TrackKind::Video,
                        muted: false,
                    }],
                }],
                fallback_urls: vec!["ws://127.0.0.1:7881/ws".into()],
            },
            ServerMessage::PublishAnswer { sdp: "s".into() },
            ServerMessage::SubscribeOffer { sdp: "s".into() },
            ServerMessage::Candidate {
                pc: PcKind::Subscriber,
                candidate: None,
            },
            ServerMessage::ParticipantJoined {
                participant: ParticipantInfo {
                    id: uid("b"),
                    name: "B".into(),
                },
            },
            ServerMessage::ParticipantLeft { id: uid("b") },
            ServerMessage::TrackPublished {
                participant: uid("b"),
                track: TrackInfo {
                    id: TrackId::new("TR_3").unwrap(),
                    kind: TrackKind::Audio,
                    muted: false,
                },
            },
            ServerMessage::Message {
                from: uid("b"),
                data: json!("hi"),
            },
            ServerMessage::Reconnect {
                reason: "drain".into(),
                url: None,
            },
            ServerMessage::error(ErrorCode::Forbidden, "no"),
            ServerMessage::Pong,
        ];
        for m in msgs {
            let text = m.to_json();
            let back: ServerMessage = serde_json::from_str(&text).unwrap();
            assert_eq!(back, m, "{text}");
        }
    }

    #[test]
    fn bad_frames_get_typed_errors() {
        assert!(matches!(
            parse_client_message("{"),
            Err(ParseError::InvalidJson(_))
        ));
        assert_eq!(parse_client_message("[1]"), Err(ParseError::NoType));
        assert_eq!(
            parse_client_message(r#"{"type":3}"#),
            Err(ParseError::NoType)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"dance"}"#),
            Err(ParseError::UnknownType("dance".into()))
        );
        assert!(matches!(
            parse_client_message(r#"{"type":"join","room":"a b","token":"t"}"#),
            Err(ParseError::InvalidFields { .. })
        ));
        assert!(matches!(
            parse_client_message(r#"{"type":"publish"}"#),
            Err(ParseError::InvalidFields { .. })
        ));
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000));
        assert!(matches!(
            parse_client_message(&big),
            Err(ParseError::TooLarge(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_client_message(&text);
        }

        #[test]
        fn arbitrary_json_shapes_never_panic(kind in proptest::sample::select(CLIENT_TYPES.to_vec()), field in "[a-z_]{1,12}", val in ".{0,40}") {
            let text = serde_json::json!({"type": kind, field: val}).to_string();
            let _ = parse_client_message(&text);
        }
    }
}
