//! `RoomRegistry`: the rooms hosted on this node. Creates a `Room` on its first join and
//! shuts it down when its last member leaves. It counts members itself, from joins it
//! forwarded and departures rooms report, so "empty" is decided in one place and a join can
//! never land in a room that is shutting down.
//!
//! Each hosted room holds a watch of its directory entry ([`watch`]); the room stops being
//! watched when it stops being hosted, whatever the path (closed, fenced, emptied).

pub mod watch;

use super::room::{
    AdminRequest, AdmitMember, FenceRoom, JoinedInfo, ListLinks, LocalState, MemberCommand,
    Refused, RelaySignal, ResumeMember, Room, RoomNodeGone, RoomReport, Shutdown,
};
use super::router::{Broadcast, Routed};
use super::{NodeCtx, Observe};
use actix::prelude::*;
use protocol::cluster::{
    self as wire, PeerCommand, RelayBody, RelayMessage, RoomMembers, RoomState, RoomStateRequest,
};
use protocol::room_api::{AdminOp, AdminReply, RoomAdmin, RoomSettings};
use protocol::token::{Claims, ResumeClaims};
use protocol::{ErrorCode, NodeId, RoomId, UserId};
use std::collections::HashMap;
use watch::{RoomWatch, Verdict, WatchReport, Watches};

struct Hosted {
    addr: Addr<Room>,
    members: usize,
    /// The assignment epoch this node was told (0 when standalone).
    epoch: u64,
    /// Bumped whenever the member count changes, so a stale close timer does nothing.
    generation: u64,
    /// The room's `empty_timeout_secs` (room API settings), when it names one: how long the
    /// room lives on here once empty, instead of the node's `room_empty_grace`.
    empty_timeout: Option<std::time::Duration>,
    /// Held for its lifetime: the room's entry is watched while the room is hosted here.
    _watch: Option<RoomWatch>,
}

pub struct RoomRegistry {
    node: NodeCtx,
    rooms: HashMap<RoomId, Hosted>,
    /// Starts each hosted room's watch; `None` standalone.
    watches: Option<Watches>,
    /// Joins per room per second (`limits.room_joins_per_sec`).
    join_rate: crate::limits::KeyedRate<RoomId>,
}

impl RoomRegistry {
    pub fn new(node: NodeCtx) -> Self {
        let join_rate =
            crate::limits::KeyedRate::new(node.config.limits.room_joins_per_sec, 10_000);
        let watches = node
            .cluster
            .as_ref()
            .map(|c| Watches::new(c, node.counters.clone()));
        RoomRegistry {
            node,
            rooms: HashMap::new(),
            watches,
            join_rate,
        }
    }
}

impl Actor for RoomRegistry {
    type Context = Context<Self>;
}

/// Joins a room hosted here, creating it on its first join.
#[derive(Message)]
#[rtype(result = "Result<JoinedInfo, Refused>")]
pub struct JoinRoom {
    pub room: RoomId,
    pub claims: Claims,
    pub epoch: u64,
    /// The room's nodes as the directory lists them (this one may be among them).
    pub nodes: Vec<NodeId>,
    /// A participant moved here (its node died, drains or was fenced) joining afresh with
    /// its resume token: not counted against the room's join rate, so a failover is not
    /// throttled.
    pub rejoin: bool,
    /// The joining session's rank from the router (`Register`); 0 for a join through
    /// another node. A member of a higher rank is not replaced by this join: two sockets of
    /// one user joining at once end with the later registered one, as the router decided,
    /// not with whichever join the room happened to admit last.
    pub rank: u64,
    /// The room's settings as the coordinator answered them (room API); `None` keeps those
    /// the room has.
    pub settings: Option<RoomSettings>,
}

/// Signaling from a participant whose socket is on another node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemotePeerCommand(pub PeerCommand);

/// Rooms hosted here with their member counts.
#[derive(Message)]
#[rtype(result = "Vec<RoomMembers>")]
pub struct ListRooms;

/// Resumes the participant a (verified) resume token names, in the room hosted here.
#[derive(Message)]
#[rtype(result = "Result<JoinedInfo, ResumeRefused>")]
pub struct ResumeRoom {
    pub claims: ResumeClaims,
    pub resume_token: String,
}

/// Why a participant was not resumed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefused {
    /// This node does not serve the room (any more): join the participant afresh wherever
    /// the cluster serves it.
    Moved,
    /// The participant is gone (it left, was replaced, or its grace period ran out), or the
    /// node cannot tell right now.
    Failed(ErrorCode),
}

impl Handler<JoinRoom> for RoomRegistry {
    type Result = AtomicResponse<Self, Result<JoinedInfo, Refused>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) -> Self::Result {
        if !msg.rejoin && !self.join_rate.admit(&msg.room) {
            crate::limits::hit("room_joins");
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(
                ErrorCode::RateLimited.into()
            ))));
        }
        let node = self.node.clone();
        let nodes = msg.nodes.clone();
        let watches = self.watches.as_ref();
        let hosted = self.rooms.entry(msg.room.clone()).or_insert_with(|| {
            tracing::info!(room = %msg.room, "room created");
            let registry = ctx.address();
            Hosted {
                addr: Room::new(msg.room.clone(), node, registry.clone().recipient(), nodes)
                    .start(),
                members: 0,
                epoch: msg.epoch,
                generation: 0,
                empty_timeout: None,
                _watch: watches.map(|w| w.watch(msg.room.clone(), registry.recipient())),
            }
        });
        hosted.epoch = hosted.epoch.max(msg.epoch);
        if let Some(s) = &msg.settings {
            hosted.empty_timeout = empty_timeout(s);
        }
        let addr = hosted.addr.clone();
        let room = msg.room.clone();
        // Waiting here (see `AtomicResponse`) keeps the member count exact: no other join or
        // departure is handled until this one is settled.
        AtomicResponse::new(Box::pin(
            async move {
                addr.send(AdmitMember {
                    claims: msg.claims,
                    nodes: msg.nodes,
                    rank: msg.rank,
                    rejoin: msg.rejoin,
                    settings: msg.settings,
                })
                .await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                let res = res.map_err(|_| Refused::from(ErrorCode::Unavailable))?;
                if res.is_ok() {
                    if let Some(h) = act.rooms.get_mut(&room) {
                        h.members += 1;
                        h.generation += 1;
                    }
                }
                act.close_if_empty(&room, ctx);
                res
            }),
        ))
    }
}

impl Handler<ResumeRoom> for RoomRegistry {
    type Result = ResponseActFuture<Self, Result<JoinedInfo, ResumeRefused>>;

    fn handle(&mut self, msg: ResumeRoom, _: &mut Context<Self>) -> Self::Result {
        let draining = self
            .node
            .draining
            .load(std::sync::atomic::Ordering::Relaxed);
        let hosted = self.rooms.get(&msg.claims.room).map(|h| h.addr.clone());
        let Some(addr) = hosted.filter(|_| !draining) else {
            return Box::pin(fut::ready(Err(ResumeRefused::Moved)));
        };
        let resume = ResumeMember {
            user: msg.claims.sub,
            resume_token: msg.resume_token,
        };
        Box::pin(
            async move {
                match addr.send(resume).await {
                    Ok(res) => res.map_err(ResumeRefused::Failed),
                    Err(_) => Err(ResumeRefused::Moved),
                }
            }
            .into_actor(self),
        )
    }
}

impl Handler<RoomReport> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, msg: RoomReport, ctx: &mut Context<Self>) {
        match msg {
            RoomReport::MemberLeft { room } => {
                if let Some(h) = self.rooms.get_mut(&room) {
                    h.members = h.members.saturating_sub(1);
                    h.generation += 1;
                }
                self.close_if_empty(&room, ctx);
            }
        }
    }
}

impl RoomRegistry {
    /// An empty room closes after the grace period unless someone joins meanwhile.
    fn close_if_empty(&mut self, room: &RoomId, ctx: &mut Context<Self>) {
        let Some(h) = self.rooms.get(room) else {
            return;
        };
        if h.members > 0 {
            return;
        }
        let grace = h.empty_timeout.unwrap_or(self.node.config.room_empty_grace);
        if grace.is_zero() {
            return self.close(room);
        }
        let (room, generation) = (room.clone(), h.generation);
        ctx.run_later(grace, move |act, _| {
            if act
                .rooms
                .get(&room)
                .is_some_and(|h| h.members == 0 && h.generation == generation)
            {
                act.close(&room);
            }
        });
    }

    fn close(&mut self, room: &RoomId) {
        let Some(h) = self.rooms.remove(room) else {
            return;
        };
        tracing::info!(%room, "room closed");
        h.addr.do_send(Shutdown);
        if let Some(c) = &self.node.cluster {
            let closed = wire::RoomClosed {
                v: wire::VERSION,
                room: room.clone(),
                node: self.node.config.node_id.clone(),
                epoch: h.epoch,
                draining: self
                    .node
                    .draining
                    .load(std::sync::atomic::Ordering::Relaxed),
            };
            c.publish(wire::ROOM_CLOSED.to_owned(), &closed);
        }
    }
}

/// The room's empty timeout from its settings, if they name one.
fn empty_timeout(settings: &RoomSettings) -> Option<std::time::Duration> {
    (settings.empty_timeout_secs > 0)
        .then(|| std::time::Duration::from_secs(u64::from(settings.empty_timeout_secs)))
}

/// A room API operation from a coordinator (`node.<node>.admin`).
#[derive(Message)]
#[rtype(result = "AdminReply")]
pub struct AdminRoom(pub RoomAdmin);

impl Handler<AdminRoom> for RoomRegistry {
    type Result = AtomicResponse<Self, AdminReply>;

    fn handle(&mut self, msg: AdminRoom, _: &mut Context<Self>) -> Self::Result {
        let RoomAdmin { room, op, .. } = msg.0;
        let Some(addr) = self.rooms.get(&room).map(|h| h.addr.clone()) else {
            let reply = match op {
                AdminOp::Participants => AdminReply::Participants {
                    participants: Vec::new(),
                },
                _ => AdminReply::NotHere,
            };
            return AtomicResponse::new(Box::pin(fut::ready(reply)));
        };
        let closing = matches!(op, AdminOp::Close);
        // Atomic like a join: a close is not overtaken by a join into the closing room.
        AtomicResponse::new(Box::pin(
            async move { addr.send(AdminRequest(op)).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let reply = res.unwrap_or(AdminReply::NotHere);
                    if closing && matches!(reply, AdminReply::Done { .. }) {
                        // As when it empties, without the grace: the coordinators drop
                        // this node from the room at once.
                        act.close(&room);
                    }
                    reply
                }),
        ))
    }
}

impl Handler<RemotePeerCommand> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, msg: RemotePeerCommand, _: &mut Context<Self>) {
        let cmd = msg.0;
        match self.rooms.get(&cmd.room) {
            Some(h) => h.addr.do_send(MemberCommand {
                user: cmd.user,
                cmd: cmd.cmd,
            }),
            None => tracing::debug!(room = %cmd.room, "command for a room not hosted here"),
        }
    }
}

impl Handler<ListRooms> for RoomRegistry {
    type Result = ResponseFuture<Vec<RoomMembers>>;
    fn handle(&mut self, _: ListRooms, _: &mut Context<Self>) -> Self::Result {
        let rooms: Vec<(RoomId, usize, Addr<Room>)> = self
            .rooms
            .iter()
            .map(|(room, h)| (room.clone(), h.members, h.addr.clone()))
            .collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(rooms.len());
            for (room, members, addr) in rooms {
                out.push(RoomMembers {
                    room,
                    members: members as u32,
                    links: addr.send(ListLinks).await.unwrap_or_default(),
                });
            }
            out
        })
    }
}

/// Another node asks for this node's participants in a room.
#[derive(Message)]
#[rtype(result = "RoomState")]
pub struct StateOfRoom(pub RoomStateRequest);

impl Handler<StateOfRoom> for RoomRegistry {
    type Result = ResponseFuture<RoomState>;
    fn handle(&mut self, msg: StateOfRoom, _: &mut Context<Self>) -> Self::Result {
        let room = msg.0.room;
        let me = self.node.config.node_id.clone();
        let absent = move |room| RoomState {
            v: wire::VERSION,
            room,
            node: me,
            present: false,
            seq: 0,
            participants: Vec::new(),
        };
        let Some(addr) = self.rooms.get(&room).map(|h| h.addr.clone()) else {
            return Box::pin(async move { absent(room) });
        };
        Box::pin(async move {
            match addr.send(LocalState).await {
                Ok(st) => st,
                Err(_) => absent(room),
            }
        })
    }
}

/// Every participant hosted here, with its room.
#[derive(Message)]
#[rtype(result = "Vec<(RoomId, UserId)>")]
pub struct ListMembers;

impl Handler<ListMembers> for RoomRegistry {
    type Result = ResponseFuture<Vec<(RoomId, UserId)>>;
    fn handle(&mut self, _: ListMembers, _: &mut Context<Self>) -> Self::Result {
        let rooms: Vec<(RoomId, Addr<Room>)> = self
            .rooms
            .iter()
            .filter(|(_, h)| h.members > 0)
            .map(|(r, h)| (r.clone(), h.addr.clone()))
            .collect();
        Box::pin(async move {
            let mut out = Vec::new();
            for (room, addr) in rooms {
                if let Ok(st) = addr.send(LocalState).await {
                    out.extend(st.participants.into_iter().map(|p| (room.clone(), p.id)));
                }
            }
            out
        })
    }
}

/// Closes every room hosted here now (a drained node leaving the cluster).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll;

impl Handler<CloseAll> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) {
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.close(&room);
        }
    }
}

impl Handler<WatchReport> for RoomRegistry {
    type Result = bool;
    fn handle(&mut self, msg: WatchReport, _: &mut Context<Self>) -> bool {
        let me = &self.node.config.node_id;
        let room = &msg.assignment().room;
        let Some(h) = self.rooms.get_mut(room) else {
            return false;
        };
        match watch::judge(me, h.epoch, &msg) {
            Verdict::Nothing => false,
            Verdict::Confirm => true,
            Verdict::Adopt(epoch) => {
                h.epoch = epoch;
                false
            }
            Verdict::Fence => {
                let a = msg.assignment();
                tracing::warn!(room = %a.room, epoch = a.epoch, was = h.epoch, origin = %a.node, "room superseded: fencing it here");
                metrics::counter!("node_fenced_total", "cause" => "superseded").increment(1);
                let room = a.room.clone();
                self.fence(&room, "fenced");
                false
            }
        }
    }
}

/// Stop serving rooms (all of them with `None`): their clients are told to reconnect, and
/// the rooms close here without telling the other nodes anything (they have moved on).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fence {
    pub rooms: Option<Vec<RoomId>>,
    pub reason: &'static str,
    /// Then send every socket on this node elsewhere too (those whose participant lives on
    /// another node included): the node is cut off from the cluster.
    pub every_socket: bool,
}

impl Handler<Fence> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, msg: Fence, _: &mut Context<Self>) {
        let rooms: Vec<RoomId> = match msg.rooms {
            Some(r) => r,
            None => self.rooms.keys().cloned().collect(),
        };
        for room in rooms {
            self.fence(&room, msg.reason);
        }
        if msg.every_socket {
            // After the rooms are gone here: a resume that follows finds nothing to restore.
            let url = self.node.fallback_urls().into_iter().next();
            self.node.router.do_send(Broadcast(Routed::Leave {
                reason: msg.reason,
                url,
            }));
        }
    }
}

impl RoomRegistry {
    fn fence(&mut self, room: &RoomId, reason: &'static str) {
        let Some(h) = self.rooms.remove(room) else {
            return;
        };
        let url = self.node.fallback_urls().into_iter().next();
        h.addr.do_send(FenceRoom { reason, url });
    }
}

/// A coordinator found a node dead: every room stops waiting for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeGone(pub NodeId);

impl Handler<NodeGone> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, msg: NodeGone, _: &mut Context<Self>) {
        for h in self.rooms.values() {
            h.addr.do_send(RoomNodeGone(msg.0.clone()));
        }
    }
}

/// Relay link signaling from another node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteRelayMessage(pub RelayMessage);

impl Handler<RemoteRelayMessage> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, msg: RemoteRelayMessage, _: &mut Context<Self>) {
        let m = msg.0;
        if let Some(h) = self.rooms.get(&m.room) {
            return h.addr.do_send(RelaySignal(m));
        }
        // A link for a room this node left: tell the other side to close its end.
        if matches!(m.body, RelayBody::Close) {
            return;
        }
        if let Some(c) = &self.node.cluster {
            let close = RelayMessage {
                v: wire::VERSION,
                room: m.room,
                from: self.node.config.node_id.clone(),
                link: m.link,
                body: RelayBody::Close,
            };
            c.publish(wire::node_relay(&m.from), &close);
        }
    }
}

impl Handler<Observe> for RoomRegistry {
    type Result = ResponseFuture<serde_json::Value>;
    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        let rooms: Vec<Addr<Room>> = self.rooms.values().map(|h| h.addr.clone()).collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(rooms.len());
            for r in rooms {
                if let Ok(snapshot) = r.send(Observe).await {
                    out.push(snapshot);
                }
            }
            serde_json::json!({ "rooms": out })
        })
    }
}
