//! Routes server messages to users by user id. The only holder of the user → session map.
//! A user connected to this node is reached through its session's mailbox; a user elsewhere
//! in the cluster through NATS on that user's subject (`user.<id>`), which the node holding
//! the user's socket subscribes to for as long as the session is registered.

use super::Observe;
use crate::cluster::{Cluster, ClusterError};
use actix::prelude::*;
use futures::StreamExt;
use protocol::cluster::{self as wire, DeliveryAck, UserDelivery};
use protocol::signal::ServerMessage;
use protocol::{ErrorCode, RoomId, UserId};
use std::collections::HashMap;
use std::time::Duration;

/// How long a cross-node application message may take before the sender hears `not_found`.
const REMOTE_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

struct Entry {
    session_id: u64,
    room: RoomId,
    session: Recipient<Routed>,
    /// The `user.<id>` subscription feeding this session from other nodes.
    remote: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub struct SessionRouter {
    sessions: HashMap<UserId, Entry>,
    cluster: Option<Cluster>,
}

impl SessionRouter {
    pub fn new(cluster: Option<Cluster>) -> Self {
        SessionRouter {
            sessions: HashMap::new(),
            cluster,
        }
    }

    /// Delivers to a local session of `to` in `room`; false if there is none.
    fn deliver_local(&self, to: &UserId, room: &RoomId, msg: ServerMessage) -> bool {
        match self.sessions.get(to) {
            Some(e) if &e.room == room => {
                e.session.do_send(Routed::ToClient(msg));
                true
            }
            _ => false,
        }
    }
}

impl Actor for SessionRouter {
    type Context = Context<Self>;
}

/// What the router hands the session a user is routed to.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Routed {
    /// A server message for the session's client.
    ToClient(ServerMessage),
    /// The route to the user went to a newer session.
    Kick { reason: &'static str },
}

/// Makes `session` the route to `user`; an older session of the same user is told to close.
/// Resolves once messages from other nodes can reach the session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub user: UserId,
    pub room: RoomId,
    pub session_id: u64,
    pub session: Recipient<Routed>,
}

/// Removes the route if it still points at this session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub user: UserId,
    pub session_id: u64,
}

/// Sends a message to a user of `room`, wherever its session is.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub to: UserId,
    pub room: RoomId,
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

/// A delivery that arrived over NATS for a local session; `reply` wants a [`DeliveryAck`].
#[derive(Message)]
#[rtype(result = "()")]
struct Inbound {
    to: UserId,
    delivery: UserDelivery,
    reply: Option<async_nats::Subject>,
}

impl Handler<Register> for SessionRouter {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) -> Self::Result {
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel::<()>();
        let remote = self.cluster.as_ref().map(|c| {
            let (client, user, me) = (c.client.clone(), msg.user.clone(), ctx.address());
            c.rt.spawn(async move {
                let sub = client.subscribe(wire::user(&user)).await;
                // Flushing makes the server know the subscription before we go on.
                let _ = client.flush().await;
                let _ = subscribed_tx.send(());
                let Ok(mut sub) = sub else {
                    return tracing::warn!(%user, "cannot subscribe to the user's subject");
                };
                while let Some(m) = sub.next().await {
                    match serde_json::from_slice::<UserDelivery>(&m.payload) {
                        Ok(delivery) => me.do_send(Inbound {
                            to: user.clone(),
                            delivery,
                            reply: m.reply,
                        }),
                        Err(e) => tracing::debug!(error = %e, "bad user delivery"),
                    }
                }
            })
        });
        let entry = Entry {
            session_id: msg.session_id,
            room: msg.room,
            session: msg.session,
            remote,
        };
        if let Some(old) = self.sessions.insert(msg.user, entry) {
            if let Some(task) = old.remote {
                task.abort();
            }
            if old.session_id != msg.session_id {
                old.session.do_send(Routed::Kick {
                    reason: "the same user joined from another connection",
                });
            }
        }
        let standalone = self.cluster.is_none();
        Box::pin(async move {
            if !standalone {
                let _ = tokio::time::timeout(Duration::from_secs(5), subscribed).await;
            }
        })
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
            if let Some(task) = self.sessions.remove(&msg.user).and_then(|e| e.remote) {
                task.abort();
            }
        }
    }
}

impl Handler<Deliver> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        if self.sessions.contains_key(&msg.to) {
            self.deliver_local(&msg.to, &msg.room, msg.msg);
            return;
        }
        if let Some(c) = &self.cluster {
            let delivery = UserDelivery {
                v: wire::VERSION,
                room: msg.room,
                msg: msg.msg,
            };
            c.publish(wire::user(&msg.to), &delivery);
        }
    }
}

impl Handler<Inbound> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Inbound, _: &mut Context<Self>) {
        let delivered = self.deliver_local(&msg.to, &msg.delivery.room, msg.delivery.msg);
        if let (Some(reply), Some(c)) = (msg.reply, &self.cluster) {
            let ack = if delivered {
                DeliveryAck::Delivered
            } else {
                DeliveryAck::NotFound
            };
            c.publish(reply.to_string(), &ack);
        }
    }
}

impl Handler<RouteUserMessage> for SessionRouter {
    type Result = ResponseFuture<Result<(), ErrorCode>>;
    fn handle(&mut self, msg: RouteUserMessage, _: &mut Context<Self>) -> Self::Result {
        let out = ServerMessage::Message {
            from: msg.from,
            data: msg.data,
        };
        if self.sessions.contains_key(&msg.to) {
            let ok = self.deliver_local(&msg.to, &msg.room, out);
            return Box::pin(async move { ok.then_some(()).ok_or(ErrorCode::NotFound) });
        }
        let Some(c) = self.cluster.clone() else {
            return Box::pin(async { Err(ErrorCode::NotFound) });
        };
        let delivery = UserDelivery {
            v: wire::VERSION,
            room: msg.room,
            msg: out,
        };
        Box::pin(async move {
            let ack: Result<DeliveryAck, ClusterError> = c
                .request(wire::user(&msg.to), &delivery, REMOTE_MESSAGE_TIMEOUT)
                .await;
            match ack {
                Ok(DeliveryAck::Delivered) => Ok(()),
                Ok(DeliveryAck::NotFound) | Err(ClusterError::NoResponders(_)) => {
                    Err(ErrorCode::NotFound)
                }
                Err(_) => Err(ErrorCode::Unavailable),
            }
        })
    }
}

impl Handler<Observe> for SessionRouter {
    type Result = MessageResult<Observe>;
    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        MessageResult(serde_json::json!({ "routes": self.sessions.len() }))
    }
}
