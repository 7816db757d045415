//! The cluster protocol over NATS: subject names and payloads (JSON, versioned by `v`).
//!
//! | subject | kind | payload |
//! |---|---|---|
//! | `cluster.node.heartbeat` | publish, every second | [`NodeHeartbeat`] |
//! | `cluster.coord.heartbeat` | publish, every second | [`CoordHeartbeat`] |
//! | `cluster.room.closed` | publish | [`RoomClosed`] |
//! | `cluster.node.suspect` | publish | [`NodeSuspect`] |
//! | `cluster.node.down` | publish | [`NodeDown`] |
//! | `coord.allocate` | request, queue group `coord` | [`AllocateRequest`] → [`AllocateReply`] |
//! | `coord.node_status` | request, queue group `coord` | [`NodeStatusRequest`] → [`NodeStatus`] |
//! | `coord.<coordinator>.allocate` | request to the room's deciding coordinator | same |
//! | `node.<node>.join` | request | [`RemoteJoin`] → [`RemoteJoinReply`] |
//! | `node.<node>.peer` | publish, ordered | [`PeerCommand`] |
//! | `node.<node>.resume` | request | [`RemoteResume`] → [`RemoteJoinReply`] |
//! | `node.<node>.drain` | publish | [`Drain`] |
//! | `node.<node>.rooms` | request | `{}` → [`NodeRooms`] |
//! | `node.<node>.ping` | request | `{}` → [`NodePong`] |
//! | `node.<node>.admin` | request | [`RoomAdmin`](crate::room_api::RoomAdmin) → [`AdminReply`](crate::room_api::AdminReply) |
//! | `webhook.<room>` | publish (JetStream stream `WEBHOOKS`) | [`WebhookEvent`](crate::webhook::WebhookEvent) |
//! | `user.<user>` | publish (request for `message`) | [`UserDelivery`] → [`DeliveryAck`] |
//! | `user.<user>` | publish, when a session of the user registers | [`SessionClaim`] |
//! | `room.<room>.events` | publish, per-node sequence | [`RoomEvent`] |
//! | `node.<node>.room_state` | request | [`RoomStateRequest`] → [`RoomState`] |
//! | `node.<node>.relay` | publish, ordered | [`RelayMessage`] |
//!
//! Ids become subject tokens and KV keys through [`token`], which escapes every character
//! outside `[A-Za-z0-9_-]` (ids may hold `.`, a subject separator).

use crate::ids::{NodeId, RoomId, UserId};
use crate::signal::{IceCandidate, IceServer, ParticipantInfo, ParticipantState, PcKind};

use crate::token::{self, Claims, TokenError};
use crate::ErrorCode;
use serde::{Deserialize, Serialize};

/// Version of the payloads below; receivers ignore messages of another major version.
pub const VERSION: u32 = 1;

pub const NODE_HEARTBEAT: &str = "cluster.node.heartbeat";
pub const COORD_HEARTBEAT: &str = "cluster.coord.heartbeat";
pub const ROOM_CLOSED: &str = "cluster.room.closed";
pub const ALLOCATE: &str = "coord.allocate";
/// Request (queue group `coord`): does a coordinator count the node as alive, so that a join
/// through it can be placed? [`NodeStatusRequest`] → [`NodeStatus`].
pub const NODE_STATUS: &str = "coord.node_status";
pub const COORD_QUEUE: &str = "coord";
/// Publish: something suggests a node is gone (a request it did not answer, a relay link
/// with it failed, its client came back through another node). Every coordinator probes
/// the node ([`node_ping`]); "no responders" proves it dead at once. [`NodeSuspect`].
pub const NODE_SUSPECT: &str = "cluster.node.suspect";
/// Publish: a coordinator found a node dead (a probe nobody answered, or heartbeat silence)
/// and moved its rooms. Nodes tell the clients they serve from it to reconnect, and a node
/// that reads its own death fences itself. [`NodeDown`].
pub const NODE_DOWN: &str = "cluster.node.down";
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
pub fn room_events(room: &RoomId) -> String {
    format!("room.{}.events", token(room.as_str()))
}
pub fn node_room_state(node: &NodeId) -> String {
    format!("node.{}.room_state", token(node.as_str()))
}
pub fn node_relay(node: &NodeId) -> String {
    format!("node.{}.relay", token(node.as_str()))
}
/// Request: is the node there? Any reply means yes ([`NodePong`]); "no responders" means its
/// NATS connection is gone.
pub fn node_ping(node: &NodeId) -> String {
    format!("node.{}.ping", token(node.as_str()))
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
pub struct NodeStatusRequest {
    pub v: u32,
    pub node: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub v: u32,
    /// The answering coordinator has the node's heartbeat within its timeout.
    pub alive: bool,
    pub coordinator: String,
}

/// On [`NODE_SUSPECT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSuspect {
    pub v: u32,
    pub node: NodeId,
    /// Who suspects it (a node or coordinator id), for the logs.
    pub from: String,
    /// Why, for the logs and metrics: `request`, `relay`, `resume`.
    pub reason: String,
}

/// How a coordinator found a node dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathCause {
    /// A direct probe found nobody listening (the process or its connection is gone).
    Probe,
    /// No heartbeat for the node timeout (a stopped or cut-off process).
    Silence,
}

/// On [`NODE_DOWN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDown {
    pub v: u32,
    pub node: NodeId,
    pub coordinator: String,
    pub cause: DeathCause,
}

/// The answer to [`node_ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePong {
    pub v: u32,
    pub node: NodeId,
    pub draining: bool,
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
    /// Set by coordinators of an earlier version when they forwarded the request to the
    /// room's deciding coordinator (on `coord.<id>.allocate`). Coordinators now decide
    /// wherever a request arrives and ignore it; kept for mixed-version clusters.
    #[serde(default)]
    pub forwarded: bool,
    /// Only look the room up: answer its current assignment, or `not_found`, and never
    /// create one (a `resume` must not open a room).
    #[serde(default)]
    pub lookup: bool,
    /// Nodes of the room that refused this join because they hold their share of the room
    /// already: the coordinator serves the client elsewhere (a sibling in the same region).
    #[serde(default)]
    pub full: Vec<NodeId>,
    /// Nodes the asking node found unresponsive (a request to them got "no responders" or
    /// timed out): the deciding coordinator probes each it still counts alive before it
    /// decides, and one found dead leaves the room's entry in this very decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspects: Vec<NodeId>,
    /// Settings from the joining token (`room_settings`), stored if this join opens a room
    /// that has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<crate::room_api::RoomSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocateReply {
    /// The room's entry as written, and the node that serves this client's media.
    Assigned {
        assignment: RoomAssignment,
        serve: NodeId,
        /// The room's settings (room API), which its nodes enforce; absent for a room
        /// without any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settings: Option<crate::room_api::RoomSettings>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The refusal may pass on its own soon (the room directory is unavailable, as
        /// while a clustered NATS elects a new leader for its stream): the node asks again
        /// within its join budget instead of refusing the client at once.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        transient: bool,
    },
}

/// One node serving a room, with its region.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoomNode {
    pub node: NodeId,
    pub region: String,
}

/// The durable truth about a room (KV `rooms`): the nodes that serve it, its origin and the
/// entry's epoch. Every change is a compare-and-swap on the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAssignment {
    pub v: u32,
    pub room: RoomId,
    /// The origin: the node that owns the room's epoch. When it leaves while others remain,
    /// the role moves to another node and the epoch grows.
    pub node: NodeId,
    /// Incremented every time the origin role moves to another node.
    pub epoch: u64,
    pub coordinator: String,
    pub assigned_ms: u64,
    /// Every node of the room, the origin included, in the order they joined it. Entries
    /// written before cascading have none: the origin alone serves them.
    #[serde(default)]
    pub nodes: Vec<RoomNode>,
}

impl RoomAssignment {
    /// An entry of `room` at `epoch` with origin `origin` and `nodes`, all of `region`,
    /// stamped by coordinator `c1` at time 0: for tests and tools.
    pub fn on_nodes(
        room: RoomId,
        epoch: u64,
        origin: &NodeId,
        nodes: &[NodeId],
        region: &str,
    ) -> RoomAssignment {
        RoomAssignment {
            v: VERSION,
            room,
            node: origin.clone(),
            epoch,
            coordinator: "c1".into(),
            assigned_ms: 0,
            nodes: nodes
                .iter()
                .map(|n| RoomNode {
                    node: n.clone(),
                    region: region.into(),
                })
                .collect(),
        }
    }

    /// The room's nodes, the origin included even in an entry that lists none.
    pub fn members(&self) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self.nodes.iter().map(|n| n.node.clone()).collect();
        if !out.contains(&self.node) {
            out.insert(0, self.node.clone());
        }
        out
    }

    pub fn serves(&self, node: &NodeId) -> bool {
        &self.node == node || self.nodes.iter().any(|n| &n.node == node)
    }
}

/// A node left a room (its last local participant left and the grace period passed). The
/// coordinators remove it from the room's entry; the room closes with its last node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomClosed {
    pub v: u32,
    pub room: RoomId,
    pub node: NodeId,
    pub epoch: u64,
    /// The node leaves because it drains (its participants moved on), not because its
    /// last participant left: a room that lives on elsewhere moved (webhook `room_moved`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// What a node tells the other nodes of a room about its own participants, on
/// [`room_events`]. `seq` counts this node's events for this room from 1, so a receiver that
/// sees a gap (or a node it does not know yet, past its first event) asks for a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomEvent {
    pub v: u32,
    pub room: RoomId,
    pub node: NodeId,
    pub seq: u64,
    pub change: RoomChange,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RoomChange {
    Joined {
        participant: ParticipantInfo,
    },
    Left {
        id: UserId,
    },
    TrackPublished {
        participant: UserId,
        track: crate::signal::TrackInfo,
    },
    TrackUnpublished {
        participant: UserId,
        track_id: crate::TrackId,
    },
    /// The application muted or unmuted one of the node's participants' tracks.
    TrackMuted {
        participant: UserId,
        track_id: crate::TrackId,
        muted: bool,
    },
    /// The node left the room: forget its participants and close links to it.
    NodeLeft,
}

/// Asks a node for its participants in a room (after a gap in its events, or on arrival).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStateRequest {
    pub v: u32,
    pub room: RoomId,
}

/// A node's own participants in a room with their tracks, as of its event `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub v: u32,
    pub room: RoomId,
    pub node: NodeId,
    /// False when the node does not host the room (any more).
    pub present: bool,
    pub seq: u64,
    pub participants: Vec<ParticipantState>,
}

/// Relay link signaling between two nodes of a room, on the receiver's [`node_relay`]. The
/// node that has the tracks (the sender) offers; the node whose participants want them (the
/// receiver) answers. `link` names one incarnation of the link, chosen by the receiver when
/// it opens its end: a message for another incarnation is stale and ignored, so a link that
/// failed and was opened again can never be confused with its predecessor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMessage {
    pub v: u32,
    pub room: RoomId,
    /// The node that sent this message.
    pub from: NodeId,
    pub link: u64,
    pub body: RelayBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RelayBody {
    /// Receiver → sender: the sender's own tracks the receiver's participants want now
    /// (the whole set; an empty set keeps the link open but idle). A new `link` replaces the
    /// sender's end of any older incarnation.
    Want {
        tracks: Vec<crate::TrackId>,
        /// Every track the sender's own participants publish, now and later, instead of
        /// `tracks`: what a node that just joined the room asks for before it knows them.
        #[serde(default)]
        all: bool,
    },
    /// Sender → receiver: an offer for the link, carrying exactly the wanted tracks.
    Offer { sdp: String },
    /// Receiver → sender: the answer to the latest offer.
    Answer { sdp: String },
    /// Either way: this incarnation is over (the node left the room, or the link failed).
    Close,
}

/// Join a room hosted on the receiving node for a client whose socket is on `session_node`.
/// The receiving node takes the participant's identity and grants from `proof`, which it
/// verifies itself: a cluster message alone proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteJoin {
    pub v: u32,
    pub room: RoomId,
    pub proof: JoinProof,
    pub session_node: NodeId,
    /// The assignment's epoch the session was told.
    #[serde(default)]
    pub epoch: u64,
    /// The room's nodes as the directory lists them.
    #[serde(default)]
    pub nodes: Vec<NodeId>,
    /// The room's settings as the coordinator answered them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<crate::room_api::RoomSettings>,
}

/// The token a client showed its session's node, passed on to the room's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "token", rename_all = "snake_case")]
pub enum JoinProof {
    /// The client's join token.
    Join(String),
    /// The client's resume token: its participant is joined afresh where the room is now
    /// (its node is gone, drains or was fenced).
    Resume(String),
}

impl JoinProof {
    /// The claims the token stands for, if its signature, time and room check out.
    pub fn verify(
        &self,
        secret: &[u8],
        room: &RoomId,
        now_unix: u64,
    ) -> Result<Claims, TokenError> {
        match self {
            JoinProof::Join(t) => token::verify(secret, t, room, now_unix),
            JoinProof::Resume(t) => {
                let claims = token::verify_resume(secret, t, now_unix)?;
                if &claims.room != room {
                    return Err(TokenError::WrongRoom);
                }
                Ok(claims.join_claims())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteJoinReply {
    Joined {
        participant: ParticipantInfo,
        resume_token: String,
        ice_servers: Vec<IceServer>,
        participants: Vec<ParticipantState>,
    },
    /// The node no longer serves the room (it drains, or was fenced): the participant is to
    /// be joined afresh wherever the cluster serves the room now.
    Moved,
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
    /// Participants on this node.
    pub members: u32,
    /// Nodes this node has a relay link with for the room.
    #[serde(default)]
    pub links: Vec<NodeId>,
}

/// A server message for a user's session, wherever it is; `room` guards against a user who
/// moved on to another room meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDelivery {
    pub v: u32,
    pub room: RoomId,
    pub msg: crate::signal::ServerMessage,
    /// Only for a session whose participant lives on this node (a fenced room telling its
    /// clients to go must not reach a session that moved on to the room's new node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryAck {
    Delivered,
    NotFound,
}

/// A session of `user` (the subject's) registered on `node` for `room`. Published on
/// [`user`] once `node` listens there, so it reaches every node holding a session of the
/// user: an older session of the user in the room closes (one participant per user,
/// cluster-wide). A node whose own session is newer answers with that session's claim, so
/// the older of two closes in whatever order their claims cross.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaim {
    pub v: u32,
    pub room: RoomId,
    pub node: NodeId,
    /// The session's id on `node`.
    pub session: u64,
    /// When the session registered: milliseconds since the Unix epoch by `node`'s clock.
    pub claimed_ms: u64,
}

impl SessionClaim {
    /// Whether this claim's session is newer than `other`'s: registered later, ties broken
    /// by node and then session id, so every node ranks two claims the same way.
    pub fn supersedes(&self, other: &SessionClaim) -> bool {
        (self.claimed_ms, &self.node, self.session) > (other.claimed_ms, &other.node, other.session)
    }
}

/// What arrives on [`user`]: a delivery for the user's session, or another session's claim
/// on the user. Both are plain objects (a delivery has `msg`, a claim `node` and `session`),
/// so a node that knows only deliveries reads them as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserInbound {
    Delivery(UserDelivery),
    Claim(SessionClaim),
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
    }

    fn claim(node: &str, session: u64, claimed_ms: u64) -> SessionClaim {
        SessionClaim {
            v: VERSION,
            room: RoomId::new("r").unwrap(),
            node: NodeId::new(node).unwrap(),
            session,
            claimed_ms,
        }
    }

    #[test]
    fn the_later_claim_supersedes_and_ties_rank_the_same_everywhere() {
        let (old, new) = (claim("n2", 9, 1_000), claim("n1", 1, 1_001));
        assert!(new.supersedes(&old));
        assert!(!old.supersedes(&new));
        // The same millisecond on two nodes: exactly one of the two wins.
        let (a, b) = (claim("n1", 5, 7), claim("n2", 5, 7));
        assert!(a.supersedes(&b) != b.supersedes(&a));
        assert!(!a.supersedes(&a.clone()));
    }

    #[test]
    fn the_user_subject_tells_deliveries_from_claims() {
        let c = claim("n1", 3, 42);
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(
            serde_json::from_slice::<UserInbound>(&json).unwrap(),
            UserInbound::Claim(c)
        );
        let d = UserDelivery {
            v: VERSION,
            room: RoomId::new("r").unwrap(),
            msg: crate::signal::ServerMessage::Pong,
            host: Some(NodeId::new("n1").unwrap()),
        };
        let json = serde_json::to_vec(&d).unwrap();
        assert_eq!(
            serde_json::from_slice::<UserInbound>(&json).unwrap(),
            UserInbound::Delivery(d)
        );
        assert!(serde_json::from_slice::<UserInbound>(br#"{"v":1,"room":"r"}"#).is_err());
    }

    #[test]
    fn a_join_proof_stands_for_its_token_and_nothing_else() {
        use crate::token::{mint, mint_resume, Claims, ResumeClaims};
        let (room, other) = (RoomId::new("r").unwrap(), RoomId::new("r2").unwrap());
        let now = 1_700_000_000;
        let claims = Claims::new(room.clone(), UserId::new("alice").unwrap(), now, 60);
        let join = JoinProof::Join(mint(b"s", &claims));
        assert_eq!(join.verify(b"s", &room, now), Ok(claims.clone()));
        assert_eq!(join.verify(b"forged", &room, now), Err(TokenError::Invalid));
        assert_eq!(join.verify(b"s", &other, now), Err(TokenError::WrongRoom));
        let rc = ResumeClaims::new(&claims, NodeId::new("n1").unwrap(), "x".into(), now, 60);
        let resume = JoinProof::Resume(mint_resume(b"s", &rc));
        assert_eq!(resume.verify(b"s", &room, now), Ok(rc.join_claims()));
        assert_eq!(resume.verify(b"s", &other, now), Err(TokenError::WrongRoom));
        // A join token is not a resume token, nor the reverse.
        let swapped = JoinProof::Resume(mint(b"s", &claims));
        assert_eq!(swapped.verify(b"s", &room, now), Err(TokenError::Invalid));
        let json = serde_json::to_string(&join).unwrap();
        assert!(json.starts_with(r#"{"kind":"join","token":"#), "{json}");
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
