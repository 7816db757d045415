//! `RoomRegistry`: the rooms hosted on this node. Creates a `Room` on its first join and
//! shuts it down when its last member leaves. It counts members itself, from joins it
//! forwarded and departures rooms report, so "empty" is decided in one place and a join can
//! never land in a room that is shutting down.

use super::peer::Peer;
use super::room::{Room, RoomJoin, RoomResume, Shutdown};
use super::{NodeCtx, Observe};
use actix::prelude::*;
use protocol::signal::{IceServer, ParticipantInfo, ParticipantState};
use protocol::token::Claims;
use protocol::{ErrorCode, RoomId, UserId};
use std::collections::HashMap;

struct Hosted {
    addr: Addr<Room>,
    members: usize,
}

pub struct RoomRegistry {
    ctx: Option<NodeCtx>,
    rooms: HashMap<RoomId, Hosted>,
    /// resume token → (room, user)
    resume: HashMap<String, (RoomId, UserId)>,
}

impl RoomRegistry {
    pub fn new() -> Self {
        RoomRegistry {
            ctx: None,
            rooms: HashMap::new(),
            resume: HashMap::new(),
        }
    }
}

impl Default for RoomRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for RoomRegistry {
    type Context = Context<Self>;
}

/// The node context, given once the router and registry both exist.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetContext(pub NodeCtx);

impl Handler<SetContext> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, msg: SetContext, _: &mut Context<Self>) {
        self.ctx = Some(msg.0);
    }
}

/// What a session needs to answer `joined`.
pub struct JoinedInfo {
    pub room: RoomId,
    pub participant: ParticipantInfo,
    pub peer: Addr<Peer>,
    pub resume_token: String,
    pub ice_servers: Vec<IceServer>,
    pub participants: Vec<ParticipantState>,
}

#[derive(Message)]
#[rtype(result = "Result<JoinedInfo, ErrorCode>")]
pub struct JoinRoom {
    pub room: RoomId,
    pub claims: Claims,
}

#[derive(Message)]
#[rtype(result = "Result<JoinedInfo, ErrorCode>")]
pub struct ResumeRoom {
    pub resume_token: String,
}

/// A room lost a member (left, replaced, failed, or its grace period ran out).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MemberLeft {
    pub room: RoomId,
    pub resume_token: String,
}

impl Handler<JoinRoom> for RoomRegistry {
    type Result = AtomicResponse<Self, Result<JoinedInfo, ErrorCode>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) -> Self::Result {
        let Some(node) = self.ctx.clone() else {
            return AtomicResponse::new(Box::pin(fut::ready(Err(ErrorCode::Unavailable))));
        };
        let registry = ctx.address();
        let hosted = self.rooms.entry(msg.room.clone()).or_insert_with(|| {
            tracing::info!(room = %msg.room, "room created");
            Hosted {
                addr: Room::new(msg.room.clone(), node, registry).start(),
                members: 0,
            }
        });
        let addr = hosted.addr.clone();
        let room = msg.room.clone();
        let user = msg.claims.sub.clone();
        // Waiting here (see `AtomicResponse`) keeps the member count exact: no other join or
        // departure is handled until this one is settled.
        AtomicResponse::new(Box::pin(
            async move { addr.send(RoomJoin { claims: msg.claims }).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let res = res.map_err(|_| ErrorCode::Unavailable)?;
                    if let Ok(info) = &res {
                        if let Some(h) = act.rooms.get_mut(&room) {
                            h.members += 1;
                        }
                        act.resume
                            .insert(info.resume_token.clone(), (room.clone(), user));
                    }
                    act.close_if_empty(&room);
                    res
                }),
        ))
    }
}

impl Handler<ResumeRoom> for RoomRegistry {
    type Result = ResponseActFuture<Self, Result<JoinedInfo, ErrorCode>>;

    fn handle(&mut self, msg: ResumeRoom, _: &mut Context<Self>) -> Self::Result {
        let found = self
            .resume
            .get(&msg.resume_token)
            .and_then(|(room, user)| Some((self.rooms.get(room)?.addr.clone(), user.clone())));
        let Some((addr, user)) = found else {
            return Box::pin(fut::ready(Err(ErrorCode::NotFound)));
        };
        let token = msg.resume_token;
        Box::pin(
            async move {
                addr.send(RoomResume {
                    user,
                    resume_token: token,
                })
                .await
                .map_err(|_| ErrorCode::Unavailable)?
            }
            .into_actor(self),
        )
    }
}

impl Handler<MemberLeft> for RoomRegistry {
    type Result = ();
    fn handle(&mut self, msg: MemberLeft, _: &mut Context<Self>) {
        self.resume.remove(&msg.resume_token);
        if let Some(h) = self.rooms.get_mut(&msg.room) {
            h.members = h.members.saturating_sub(1);
        }
        self.close_if_empty(&msg.room);
    }
}

impl RoomRegistry {
    fn close_if_empty(&mut self, room: &RoomId) {
        if self.rooms.get(room).is_some_and(|h| h.members == 0) {
            if let Some(h) = self.rooms.remove(room) {
                tracing::info!(%room, "room closed");
                h.addr.do_send(Shutdown);
            }
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
