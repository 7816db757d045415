//! Routes server messages to users by user id. The only holder of the user → session map.
//! A user connected to this node is reached through its session's mailbox; later, users
//! elsewhere in the cluster are reached through NATS on their subject.

use super::session::{Kick, SignalingSession, ToClient};
use super::Observe;
use actix::prelude::*;
use protocol::signal::ServerMessage;
use protocol::{ErrorCode, RoomId, UserId};
use std::collections::HashMap;

struct Entry {
    session_id: u64,
    room: RoomId,
    addr: Addr<SignalingSession>,
}

#[derive(Default)]
pub struct SessionRouter {
    sessions: HashMap<UserId, Entry>,
}

impl Actor for SessionRouter {
    type Context = Context<Self>;
}

/// Makes `session` the route to `user`; an older session of the same user is told to close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub user: UserId,
    pub room: RoomId,
    pub session_id: u64,
    pub addr: Addr<SignalingSession>,
}

/// Removes the route if it still points at this session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub user: UserId,
    pub session_id: u64,
}

/// Sends a message to a user; dropped if the user has no session here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub to: UserId,
    pub msg: ServerMessage,
}

/// An application `message` from one user to another of the same room.
#[derive(Message)]
#[rtype(result = "Result<(), ErrorCode>")]
pub struct RouteUserMessage {
    pub from: UserId,
    pub room: RoomId,
    pub to: UserId,
    pub data: serde_json::Value,
}

impl Handler<Register> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        let entry = Entry {
            session_id: msg.session_id,
            room: msg.room,
            addr: msg.addr,
        };
        if let Some(old) = self.sessions.insert(msg.user, entry) {
            if old.session_id != msg.session_id {
                old.addr.do_send(Kick {
                    reason: "the same user joined from another connection",
                });
            }
        }
    }
}

impl Handler<Unregister> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        if self
            .sessions
            .get(&msg.user)
            .is_some_and(|e| e.session_id == msg.session_id)
        {
            self.sessions.remove(&msg.user);
        }
    }
}

impl Handler<Deliver> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        if let Some(e) = self.sessions.get(&msg.to) {
            e.addr.do_send(ToClient(msg.msg));
        }
    }
}

impl Handler<RouteUserMessage> for SessionRouter {
    type Result = Result<(), ErrorCode>;
    fn handle(&mut self, msg: RouteUserMessage, _: &mut Context<Self>) -> Self::Result {
        match self.sessions.get(&msg.to) {
            Some(e) if e.room == msg.room => {
                e.addr.do_send(ToClient(ServerMessage::Message {
                    from: msg.from,
                    data: msg.data,
                }));
                Ok(())
            }
            _ => Err(ErrorCode::NotFound),
        }
    }
}

impl Handler<Observe> for SessionRouter {
    type Result = MessageResult<Observe>;
    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        MessageResult(serde_json::json!({ "routes": self.sessions.len() }))
    }
}
