//! The room service: what an application (the owner of the users) may do to live rooms
//! through the coordinators' HTTP API (README "Room API", `docs/openapi.yaml`), and how the
//! coordinators carry each call to the room's nodes over NATS.
//!
//! - **Call tokens** ([`ApiClaims`]): every API call carries `Authorization: Bearer <jwt>`,
//!   HS256 with the cluster's API secret, `iss` = the API key, `typ` = `api`, and a lifetime
//!   of at most [`MAX_CALL_TOKEN_SECS`]. A join token is never a call token, nor the reverse.
//! - **Room settings** ([`RoomSettings`]), stored by the coordinators in the KV bucket
//!   [`SETTINGS_BUCKET`] ([`StoredRoom`]) when a room is created through the API or by the
//!   first join whose token carries settings, and handed to the room's nodes with each
//!   placement ([`crate::cluster::AllocateReply::Assigned`]); the nodes enforce them.
//! - **Node operations** ([`RoomAdmin`] on [`node_admin`] → [`AdminReply`]): a coordinator
//!   asks every node of the room; each acts on its own participants.

use crate::cluster::token;
use crate::ids::{NodeId, RoomId, TrackId, UserId};
use crate::signal::TrackKind;
use crate::token::{TokenError, LEEWAY_SECS};
use crate::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// JetStream KV bucket: room token → [`StoredRoom`].
pub const SETTINGS_BUCKET: &str = "room_settings";

/// Request to one node: act on a room's participants hosted there. [`RoomAdmin`] →
/// [`AdminReply`].
pub fn node_admin(node: &NodeId) -> String {
    format!("node.{}.admin", token(node.as_str()))
}

/// The longest lifetime (`exp − now`) a call token may have.
pub const MAX_CALL_TOKEN_SECS: u64 = 600;
/// The longest room metadata, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// The most users a private room may name.
pub const MAX_ALLOWED_USERS: usize = 1000;
/// The longest empty timeout (one day).
pub const MAX_EMPTY_TIMEOUT_SECS: u32 = 86_400;
/// The largest `data` payload an API call may send, serialized (as a client `message`).
pub const MAX_DATA_BYTES: usize = 60 * 1024;

/// A room's settings. Every field has a default, so `{}` is a room with none of them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Participants the room admits at once, cluster-wide; 0 = the node's own limit.
    #[serde(default)]
    pub max_participants: u32,
    /// Seconds the room lives on with nobody in it (also after creation, before the first
    /// join) before it closes; 0 = the cluster default (the node's `--room-grace`, and
    /// [`DEFAULT_EMPTY_TIMEOUT_SECS`] for a created room nobody joined).
    #[serde(default)]
    pub empty_timeout_secs: u32,
    /// Free text for the application, returned by the API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    /// Only the users in `allowed_users`, or with `admit_private` in their token, may join.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<UserId>,
}

/// How long a room created through the API waits for its first participant when its
/// settings name no empty timeout.
pub const DEFAULT_EMPTY_TIMEOUT_SECS: u32 = 300;

impl RoomSettings {
    /// Whether `user` may join: a public room admits everyone; a private one its listed
    /// users and tokens with `admit_private`.
    pub fn admits(&self, user: &UserId, admit_private: bool) -> bool {
        !self.private || admit_private || self.allowed_users.contains(user)
    }

    /// Whether `members` (everyone in the room, on every node) leaves room for one more.
    pub fn has_room_for_one_more(&self, members: usize) -> bool {
        self.max_participants == 0 || members < self.max_participants as usize
    }

    /// Bounds on what an application may store.
    pub fn validate(&self) -> Result<(), String> {
        if self.metadata.len() > MAX_METADATA_BYTES {
            return Err(format!(
                "metadata is {} bytes, more than {MAX_METADATA_BYTES}",
                self.metadata.len()
            ));
        }
        if self.allowed_users.len() > MAX_ALLOWED_USERS {
            return Err(format!(
                "allowed_users names {} users, more than {MAX_ALLOWED_USERS}",
                self.allowed_users.len()
            ));
        }
        if self.empty_timeout_secs > MAX_EMPTY_TIMEOUT_SECS {
            return Err(format!(
                "empty_timeout_secs {} is more than {MAX_EMPTY_TIMEOUT_SECS}",
                self.empty_timeout_secs
            ));
        }
        Ok(())
    }
}

/// Who created a room's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreatedBy {
    /// `POST /v1/rooms`.
    Api,
    /// The first join, whose token carried `room_settings`.
    Token,
}

/// A value of [`SETTINGS_BUCKET`]: a room the application created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoom {
    pub v: u32,
    pub room: RoomId,
    pub settings: RoomSettings,
    pub created_ms: u64,
    pub created_by: CreatedBy,
}

// ---------------------------------------------------------------------------------------
// Call tokens

/// The `typ` claim of a call token.
const API_TYP: &str = "api";

/// What a call token lets its bearer do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApiGrants {
    /// `POST /v1/rooms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_create: bool,
    /// `GET /v1/rooms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_list: bool,
    /// Everything on one room: read it, close it, act on its participants, send data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_admin: bool,
    /// With `room_admin`: only this room; every room when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
}

impl ApiGrants {
    /// Every grant on every room.
    pub fn all() -> Self {
        ApiGrants {
            room_create: true,
            room_list: true,
            room_admin: true,
            room: None,
        }
    }

    /// Whether the grants allow administering `room`.
    pub fn admin_of(&self, room: &RoomId) -> bool {
        self.room_admin && self.room.as_ref().is_none_or(|r| r == room)
    }
}

/// The claims of a call token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiClaims {
    /// Always `api`.
    pub typ: String,
    /// The API key the token was minted with.
    pub iss: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub grants: ApiGrants,
}

impl ApiClaims {
    /// Claims for `key`, valid for `ttl_secs` from `now_unix`.
    pub fn new(key: &str, grants: ApiGrants, now_unix: u64, ttl_secs: u64) -> Self {
        ApiClaims {
            typ: API_TYP.into(),
            iss: key.into(),
            exp: now_unix.saturating_add(ttl_secs),
            nbf: None,
            grants,
        }
    }
}

/// Why a call token was refused (all are `unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallTokenError {
    #[error("{0}")]
    Token(TokenError),
    #[error("call token names an unknown API key")]
    UnknownKey,
    #[error("call token lives longer than {MAX_CALL_TOKEN_SECS} s: mint one per call")]
    TooLong,
}

/// Signs call claims with the API secret (HS256).
pub fn mint_call(secret: &[u8], claims: &ApiClaims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// Checks a call token: signature (HS256 with `secret`), `typ`, `iss` = `key`, time (with
/// [`LEEWAY_SECS`]) and a lifetime of at most [`MAX_CALL_TOKEN_SECS`].
pub fn verify_call(
    key: &str,
    secret: &[u8],
    token: &str,
    now_unix: u64,
) -> Result<ApiClaims, CallTokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    let claims =
        jsonwebtoken::decode::<ApiClaims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|_| CallTokenError::Token(TokenError::Invalid))?
            .claims;
    if claims.typ != API_TYP {
        return Err(CallTokenError::Token(TokenError::Invalid));
    }
    if claims.iss != key {
        return Err(CallTokenError::UnknownKey);
    }
    if claims.exp.saturating_add(LEEWAY_SECS) <= now_unix {
        return Err(CallTokenError::Token(TokenError::Expired));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now_unix.saturating_add(LEEWAY_SECS))
    {
        return Err(CallTokenError::Token(TokenError::NotYetValid));
    }
    if claims.exp > now_unix.saturating_add(MAX_CALL_TOKEN_SECS + LEEWAY_SECS) {
        return Err(CallTokenError::TooLong);
    }
    Ok(claims)
}

// ---------------------------------------------------------------------------------------
// Node operations

/// A coordinator asks a node of `room` to act on the participants it hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomAdmin {
    pub v: u32,
    pub room: RoomId,
    pub op: AdminOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminOp {
    /// The participants hosted here, with their tracks.
    Participants,
    /// Remove the participant: its client gets `removed` and its socket closes; the others
    /// see `participant_left`.
    Remove { user: UserId },
    /// Stop (or resume) forwarding one of the participant's tracks; everyone in the room
    /// gets `track_muted`.
    Mute {
        user: UserId,
        track: TrackId,
        muted: bool,
    },
    /// Change the participant's grants now. Losing `can_publish` ends its tracks; gaining
    /// it lets its next `publish` through. The participant gets `permissions_changed`.
    Grants {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        can_publish: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        can_subscribe: Option<bool>,
    },
    /// Send `data` to the participants hosted here that `to` names, or to all when empty.
    Data {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        to: Vec<UserId>,
        data: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    /// Close the room here: every participant gets `removed` (`room_closed`) and the node
    /// leaves the room.
    Close,
}

/// A node's answer to [`RoomAdmin`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminReply {
    /// For `participants`: those hosted here (empty when the room is not hosted here).
    Participants {
        participants: Vec<ParticipantDetail>,
    },
    /// The operation was carried out here. `participant`: its state afterwards (for
    /// `remove`, `mute` and `grants`); `affected`: participants reached (for `data` and
    /// `close`).
    Done {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        participant: Option<ParticipantDetail>,
        #[serde(default)]
        affected: u32,
    },
    /// The participant (or the room) is not hosted here.
    NotHere,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// A participant as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantDetail {
    pub id: UserId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// The node hosting its media.
    pub node: NodeId,
    pub region: String,
    /// When it joined, milliseconds since the Unix epoch by its node's clock.
    pub joined_ms: u64,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub tracks: Vec<TrackDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackDetail {
    pub id: TrackId,
    pub kind: TrackKind,
    pub muted: bool,
}

// ---------------------------------------------------------------------------------------
// HTTP bodies (docs/openapi.yaml)

/// `POST /v1/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRoom {
    pub room: RoomId,
    #[serde(flatten)]
    pub settings: RoomSettings,
}

/// A room as the API shows it (`GET /v1/rooms`, `GET /v1/rooms/{room}`, `POST /v1/rooms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub room: RoomId,
    /// Settings as stored; a room opened by a plain join has the defaults.
    pub settings: RoomSettings,
    /// When its settings were stored, if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
    /// Whether nodes serve it now (a created room nobody joined yet is not active).
    pub active: bool,
    /// The nodes serving it, the origin first.
    pub nodes: Vec<NodeId>,
    /// Participants over its nodes (absent from a list when a node did not answer).
    pub num_participants: u32,
}

/// `PATCH /v1/rooms/{room}/participants/{user}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateParticipant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
}

/// `POST /v1/rooms/{room}/participants/{user}/tracks/{track}/mute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MuteTrack {
    pub muted: bool,
}

/// `POST /v1/rooms/{room}/data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendData {
    pub data: serde_json::Value,
    /// The users to reach; everyone in the room when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `POST /v1/rooms/{room}/data`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSent {
    /// Participants it reached.
    pub delivered: u32,
}

/// Every error body of the API: the code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    #[test]
    fn a_call_token_verifies_with_its_key_and_secret_only() {
        let c = ApiClaims::new("app", ApiGrants::all(), NOW, 60);
        let t = mint_call(b"s3cret", &c);
        assert_eq!(verify_call("app", b"s3cret", &t, NOW), Ok(c));
        assert_eq!(
            verify_call("app", b"other", &t, NOW),
            Err(CallTokenError::Token(TokenError::Invalid))
        );
        assert_eq!(
            verify_call("other-key", b"s3cret", &t, NOW),
            Err(CallTokenError::UnknownKey)
        );
        assert_eq!(
            verify_call("app", b"s3cret", &t, NOW + 60 + LEEWAY_SECS),
            Err(CallTokenError::Token(TokenError::Expired))
        );
    }

    #[test]
    fn long_lived_call_tokens_are_refused() {
        let t = mint_call(
            b"k",
            &ApiClaims::new("app", ApiGrants::all(), NOW, MAX_CALL_TOKEN_SECS + 60),
        );
        assert_eq!(
            verify_call("app", b"k", &t, NOW),
            Err(CallTokenError::TooLong)
        );
        let t = mint_call(
            b"k",
            &ApiClaims::new("app", ApiGrants::all(), NOW, MAX_CALL_TOKEN_SECS),
        );
        assert!(verify_call("app", b"k", &t, NOW).is_ok());
    }

    #[test]
    fn join_and_call_tokens_are_not_interchangeable() {
        let join = crate::token::mint(
            b"k",
            &crate::token::Claims::new(room("r"), UserId::new("u").unwrap(), NOW, 60),
        );
        assert_eq!(
            verify_call("app", b"k", &join, NOW),
            Err(CallTokenError::Token(TokenError::Invalid))
        );
        let call = mint_call(b"k", &ApiClaims::new("app", ApiGrants::all(), NOW, 60));
        assert_eq!(
            crate::token::verify(b"k", &call, &room("r"), NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn room_admin_may_be_limited_to_one_room() {
        let mut g = ApiGrants {
            room_admin: true,
            ..ApiGrants::default()
        };
        assert!(g.admin_of(&room("a")) && g.admin_of(&room("b")));
        g.room = Some(room("a"));
        assert!(g.admin_of(&room("a")) && !g.admin_of(&room("b")));
        assert!(!ApiGrants::default().admin_of(&room("a")));
    }

    #[test]
    fn settings_admit_and_count() {
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let open = RoomSettings::default();
        assert!(open.admits(&bob, false) && open.has_room_for_one_more(1_000_000));
        let private = RoomSettings {
            private: true,
            allowed_users: vec![alice.clone()],
            max_participants: 2,
            ..RoomSettings::default()
        };
        assert!(private.admits(&alice, false));
        assert!(!private.admits(&bob, false));
        assert!(private.admits(&bob, true));
        assert!(private.has_room_for_one_more(1));
        assert!(!private.has_room_for_one_more(2));
        assert_eq!(
            serde_json::to_string(&open).unwrap(),
            r#"{"max_participants":0,"empty_timeout_secs":0}"#
        );
        let back: RoomSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(back, open);
    }

    #[test]
    fn settings_are_bounded() {
        let mut s = RoomSettings {
            metadata: "x".repeat(MAX_METADATA_BYTES),
            ..RoomSettings::default()
        };
        assert!(s.validate().is_ok());
        s.metadata.push('x');
        assert!(s.validate().is_err());
        s.metadata.clear();
        s.empty_timeout_secs = MAX_EMPTY_TIMEOUT_SECS + 1;
        assert!(s.validate().is_err());
    }

    #[test]
    fn admin_messages_have_their_wire_shape() {
        let op = RoomAdmin {
            v: 1,
            room: room("r"),
            op: AdminOp::Mute {
                user: UserId::new("u").unwrap(),
                track: TrackId::new("t").unwrap(),
                muted: true,
            },
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"room":"r","op":{"op":"mute","user":"u","track":"t","muted":true}}"#
        );
        assert_eq!(serde_json::from_str::<RoomAdmin>(&text).unwrap(), op);
        let reply = AdminReply::Done {
            participant: None,
            affected: 3,
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(text, r#"{"result":"done","affected":3}"#);
        assert_eq!(serde_json::from_str::<AdminReply>(&text).unwrap(), reply);
        let create: CreateRoom =
            serde_json::from_str(r#"{"room":"r","max_participants":2,"private":true}"#).unwrap();
        assert_eq!(create.settings.max_participants, 2);
        assert!(create.settings.private);
    }
}
