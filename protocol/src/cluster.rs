//! The cluster protocol over NATS: subject names and payloads (JSON, versioned by `v`).
//!
//! | subject | kind | payload |
//! |---|---|---|
//! | `cluster.node.heartbeat` | publish, every second | [`NodeHeartbeat`] |
//! | `cluster.coord.heartbeat` | publish, every second | [`CoordHeartbeat`] |
//! | `cluster.room.closed` | publish | [`RoomClosed`] |
//! | `coord.allocate` | request, queue group `coord` | [`AllocateRequest`] → [`AllocateReply`] |
//! | `coord.<coordinator>.allocate` | request to the room's deciding coordinator | same |
//! | `node.<node>.join` | request | [`RemoteJoin`] → [`RemoteJoinReply`] |
//! | `node.<node>.peer` | publish, ordered | [`PeerCommand`] |
//! | `node.<node>.resume` | request | [`RemoteResume`] → [`RemoteJoinReply`] |
//! | `node.<node>.drain` | publish | [`Drain`] |
//! | `node.<node>.rooms` | request | `{}` → [`NodeRooms`] |
//! | `user.<user>` | publish (request for `message`) | [`UserDelivery`] → [`DeliveryAck`] |
//!
//! Ids become subject tokens and KV keys through [`token`], which escapes every character
//! outside `[A-Za-z0-9_-]` (ids may hold `.`, a subject separator).

use crate::ids::{NodeId, RoomId, UserId};
use crate::signal::{IceCandidate, IceServer, ParticipantInfo, ParticipantState, PcKind};
use crate::token::Claims;
use crate::ErrorCode;
use serde::{Deserialize, Serialize};

/// Version of the payloads below; receivers ignore messages of another major version.
pub const VERSION: u32 = 1;

pub const NODE_HEARTBEAT: &str = "cluster.node.heartbeat";
pub const COORD_HEARTBEAT: &str = "cluster.coord.heartbeat";
pub const ROOM_CLOSED: &str = "cluster.room.closed";
pub const ALLOCATE: &str = "coord.allocate";
pub const COORD_QUEUE: &str = "coord";
/// JetStream KV bucket: room token → [`RoomAssignment`].
pub const ROOMS_BUCKET: &str = "rooms";

/// Escapes an id for use as one subject token or KV key: `[A-Za-z0-9_-]` stay, every other
/// byte becomes `=XX` (upper-case hex). Injective, so distinct ids never collide.
pub fn token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Reverses [`token`]; `None` for malformed input.
pub fn untoken(t: &str) -> Option<String> {
    let bytes = t.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = t.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn coord_allocate(coordinator: &str) -> String {
    format!("coord.{}.allocate", token(coordinator))
}
pub fn node_join(node: &NodeId) -> String {
    format!("node.{}.join", token(node.as_str()))
}
pub fn node_peer(node: &NodeId) -> String {
    format!("node.{}.peer", token(node.as_str()))
}
pub fn node_drain(node: &NodeId) -> String {
    format!("node.{}.drain", token(node.as_str()))
}
pub fn node_resume(node: &NodeId) -> String {
    format!("node.{}.resume", token(node.as_str()))
}
pub fn node_rooms(node: &NodeId) -> String {
    format!("node.{}.rooms", token(node.as_str()))
}
pub fn user(user: &UserId) -> String {
    format!("user.{}", token(user.as_str()))
}

/// What a node reports every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    pub v: u32,
    pub node: NodeId,
    pub region: String,
    /// Where clients reach it: `ws://host:port/ws`.
    pub ws_url: String,
    pub draining: bool,
    pub load: NodeLoad,
    /// Milliseconds since the Unix epoch, by the node's clock (informational).
    pub sent_ms: u64,
}

/// A node's load and what it can take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// CPU use of the node process, 0.0 – 1.0 of the machine.
    pub cpu: f64,
    pub rooms: u32,
    pub peers: u32,
    pub tracks: u32,
    pub egress_bps: u64,
    pub max_rooms: u32,
    pub max_peers: u32,
    pub max_egress_bps: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordHeartbeat {
    pub v: u32,
    pub coordinator: String,
    pub sent_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateRequest {
    pub v: u32,
    pub room: RoomId,
    /// The joining client's region, if it said.
    pub region: Option<String>,
    /// The node asking (where the client's socket is).
    pub from: NodeId,
    /// Set when one coordinator forwards to the room's deciding coordinator: never forward
    /// twice.
    #[serde(default)]
    pub forwarded: bool,
    /// Only look the room up: answer its current assignment, or `not_found`, and never
    /// create one (a `resume` must not open a room).
    #[serde(default)]
    pub lookup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocateReply {
    Assigned(RoomAssignment),
    Error { code: ErrorCode, message: String },
}

/// The durable truth about a room (KV `rooms`): its primary node and the assignment's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAssignment {
    pub v: u32,
    pub room: RoomId,
    pub node: NodeId,
    /// Incremented every time the room is given to another node.
    pub epoch: u64,
    pub coordinator: String,
    pub assigned_ms: u64,
}

/// A room's primary closed it (empty past its grace period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomClosed {
    pub v: u32,
    pub room: RoomId,
    pub node: NodeId,
    pub epoch: u64,
}

/// Join a room hosted on the receiving node for a client whose socket is on `session_node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteJoin {
    pub v: u32,
    pub room: RoomId,
    pub claims: Claims,
    pub session_node: NodeId,
    /// The assignment's epoch the session was told.
    #[serde(default)]
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteJoinReply {
    Joined {
        participant: ParticipantInfo,
        resume_token: String,
        ice_servers: Vec<IceServer>,
        participants: Vec<ParticipantState>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Resume a participant of a room hosted on the receiving node, for a client whose new
/// socket is on `session_node`. Answered like [`RemoteJoin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteResume {
    pub v: u32,
    pub resume_token: String,
    pub session_node: NodeId,
}

/// The room a resume token belongs to: tokens are `<token(room)>.<secret>`, so any node can
/// find the room's node before asking it.
pub fn resume_token_room(resume_token: &str) -> Option<RoomId> {
    let (room, _) = resume_token.rsplit_once('.')?;
    RoomId::new(untoken(room)?).ok()
}

/// A client's signaling for its participant on the receiving node, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCommand {
    pub v: u32,
    pub room: RoomId,
    pub user: UserId,
    pub cmd: PeerCmd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum PeerCmd {
    Publish {
        sdp: String,
    },
    SubscribeAnswer {
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        candidate: IceCandidate,
    },
    /// The socket closed; `leaving` when the client sent `leave`.
    SessionGone {
        leaving: bool,
    },
    /// A new socket resumed the participant.
    SessionAttached,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub v: u32,
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRooms {
    pub v: u32,
    pub node: NodeId,
    pub rooms: Vec<RoomMembers>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMembers {
    pub room: RoomId,
    pub members: u32,
}

/// A server message for a user's session, wherever it is; `room` guards against a user who
/// moved on to another room meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDelivery {
    pub v: u32,
    pub room: RoomId,
    pub msg: crate::signal::ServerMessage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryAck {
    Delivered,
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_escape_subject_separators_and_round_trip() {
        assert_eq!(token("room-1_a"), "room-1_a");
        assert_eq!(token("a.b"), "a=2Eb");
        assert_eq!(token("x=y"), "x=3Dy");
        assert_eq!(token("u@x:y~z"), "u=40x=3Ay=7Ez");
        for s in ["a.b", "=", "==2E", "plain", "ü"] {
            assert_eq!(untoken(&token(s)).as_deref(), Some(s));
        }
        assert_eq!(untoken("=4"), None);
        assert_eq!(node_peer(&NodeId::new("n.1").unwrap()), "node.n=2E1.peer");
        let room = RoomId::new("a.b@c").unwrap();
        assert_eq!(
            resume_token_room(&format!("{}.s3cr3t", token(room.as_str()))),
            Some(room)
        );
        assert_eq!(resume_token_room("no-dot"), None);
    }

    proptest::proptest! {
        #[test]
        fn token_is_injective_and_subject_safe(a in "[ -~]{0,24}", b in "[ -~]{0,24}") {
            let (ta, tb) = (token(&a), token(&b));
            proptest::prop_assert!(ta.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-=".contains(&c)));
            proptest::prop_assert_eq!(a == b, ta == tb);
            proptest::prop_assert_eq!(untoken(&ta), Some(a));
        }
    }
}
