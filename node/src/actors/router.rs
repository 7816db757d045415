//! Routes server messages to users by user id. The only holder of the user → session map.
//! A user connected to this node is reached through its session's mailbox; a user elsewhere
//! in the cluster through NATS on that user's subject (`user.<id>`), which the node holding
//! the user's socket subscribes to for as long as the session is registered.
//!
//! One participant per user, cluster-wide: a session registering a user replaces an older one
//! on this node at once, and publishes a [`SessionClaim`] on the user's subject so that the
//! node of an older session elsewhere closes it too ([`judge`] decides).

use super::Observe;
use crate::cluster::{Cluster, ClusterError};
use actix::prelude::*;
use futures::StreamExt;
use protocol::cluster::{self as wire, DeliveryAck, SessionClaim, UserDelivery, UserInbound};
use protocol::signal::ServerMessage;
use protocol::{ErrorCode, NodeId, RoomId, UserId};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a cross-node application message may take before the sender hears `not_found`.
const REMOTE_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

struct Entry {
    session_id: u64,
    room: RoomId,
    session: Recipient<Routed>,
    /// When the session registered (ms since the Unix epoch): its rank among the user's
    /// sessions across the cluster.
    registered_ms: u64,
    /// The `user.<id>` subscription feeding this session from other nodes.
    remote: Option<tokio::task::JoinHandle<()>>,
}

impl Entry {
    fn claim(&self, node: &NodeId) -> SessionClaim {
        SessionClaim {
            v: wire::VERSION,
            room: self.room.clone(),
            node: node.clone(),
            session: self.session_id,
            claimed_ms: self.registered_ms,
        }
    }

    /// Closes the session (the newer one owns the participant now) and stops listening on
    /// the user's subject, so deliveries reach only the newer session.
    fn kick(self, reason: &'static str) {
        if let Some(task) = self.remote {
            task.abort();
        }
        self.session.do_send(Routed::Kick { reason });
    }
}

/// What a claim from the user's subject means for this node's session of the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimVerdict {
    /// Not about this session: this node's own claim (its sessions were ranked when they
    /// registered), another room, or another protocol version.
    Ignore,
    /// A newer session of the user in the room: close this one.
    Superseded,
    /// An older session elsewhere: answer with this session's claim, so its node closes it.
    Answer,
}

/// Judges `claim` against `local`, the claim of this node's session of the same user.
fn judge(local: &SessionClaim, claim: &SessionClaim) -> ClaimVerdict {
    if claim.v != wire::VERSION || claim.node == local.node || claim.room != local.room {
        ClaimVerdict::Ignore
    } else if claim.supersedes(local) {
        ClaimVerdict::Superseded
    } else {
        ClaimVerdict::Answer
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct SessionRouter {
    sessions: HashMap<UserId, Entry>,
    cluster: Option<Cluster>,
    /// Sessions closed because the same user joined again (here or on another node).
    superseded: u64,
    /// Application messages per recipient per second sent from this node
    /// (`limits.recipient_messages_per_sec`).
    recipient_rate: crate::limits::KeyedRate<UserId>,
    /// The last rank handed to a registering session.
    last_rank: u64,
}

impl SessionRouter {
    pub fn new(cluster: Option<Cluster>, recipient_messages_per_sec: u32) -> Self {
        SessionRouter {
            sessions: HashMap::new(),
            cluster,
            superseded: 0,
            recipient_rate: crate::limits::KeyedRate::new(recipient_messages_per_sec, 100_000),
            last_rank: 0,
        }
    }

    /// Delivers to a local session of `to` in `room`; false if there is none.
    fn deliver_local(&self, to: &UserId, room: &RoomId, msg: ServerMessage) -> bool {
        self.deliver_routed(to, room, Routed::ToClient(msg))
    }

    fn deliver_routed(&self, to: &UserId, room: &RoomId, routed: Routed) -> bool {
        match self.sessions.get(to) {
            Some(e) if &e.room == room => {
                e.session.do_send(routed);
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
    /// A server message for the session's client if its participant lives on `host`.
    FromHost { msg: ServerMessage, host: NodeId },
    /// The route to the user went to a newer session.
    Kick { reason: &'static str },
    /// A coordinator found `node` dead: a session whose participant lived there tells its
    /// client to reconnect (the participant is then restored anywhere).
    NodeGone { node: NodeId },
    /// This node stops serving clients (it lost the cluster, or drains): every session
    /// tells its client to reconnect, to `url` if given.
    Leave {
        reason: &'static str,
        url: Option<String>,
    },
}

/// Hands `what` to every session registered here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast(pub Routed);

impl Handler<Broadcast> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) {
        for e in self.sessions.values() {
            let copy = match &msg.0 {
                Routed::NodeGone { node } => Routed::NodeGone { node: node.clone() },
                Routed::Leave { reason, url } => Routed::Leave {
                    reason,
                    url: url.clone(),
                },
                Routed::ToClient(m) => Routed::ToClient(m.clone()),
                Routed::FromHost { msg, host } => Routed::FromHost {
                    msg: msg.clone(),
                    host: host.clone(),
                },
                Routed::Kick { .. } => continue,
            };
            e.session.do_send(copy);
        }
    }
}

/// Makes `session` the route to `user`; an older session of the same user is told to close.
/// Resolves once messages from other nodes can reach the session, to the session's rank: a
/// number growing with each registration on this node, which the room compares so that a
/// join registered earlier never replaces one registered later ([`JoinRoom::rank`]).
///
/// [`JoinRoom::rank`]: super::rooms::JoinRoom::rank
#[derive(Message)]
#[rtype(result = "u64")]
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

/// Another session's claim on a user with a session here, from the user's subject.
#[derive(Message)]
#[rtype(result = "()")]
struct Claimed {
    user: UserId,
    claim: SessionClaim,
}

impl Handler<Register> for SessionRouter {
    type Result = ResponseFuture<u64>;
    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) -> Self::Result {
        self.last_rank += 1;
        let rank = self.last_rank;
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel::<()>();
        let mut entry = Entry {
            session_id: msg.session_id,
            room: msg.room,
            session: msg.session,
            registered_ms: unix_ms(),
            remote: None,
        };
        entry.remote = self.cluster.as_ref().map(|c| {
            let (client, user, me) = (c.client.clone(), msg.user.clone(), ctx.address());
            let claim = serde_json::to_vec(&entry.claim(&c.node)).ok();
            c.rt.spawn(async move {
                let subject = wire::user(&user);
                let sub = client.subscribe(subject.clone()).await;
                // Claimed only once listening, so a newer session elsewhere can answer; the
                // flush makes the server know both before the join goes on, and the
                // server relays them ahead of anything this node publishes later.
                if let (Ok(_), Some(claim)) = (&sub, claim) {
                    let _ = client.publish(subject, claim.into()).await;
                }
                let _ = client.flush().await;
                let _ = subscribed_tx.send(());
                let Ok(mut sub) = sub else {
                    return tracing::warn!(%user, "cannot subscribe to the user's subject");
                };
                while let Some(m) = sub.next().await {
                    match serde_json::from_slice::<UserInbound>(&m.payload) {
                        Ok(UserInbound::Delivery(delivery)) => me.do_send(Inbound {
                            to: user.clone(),
                            delivery,
                            reply: m.reply,
                        }),
                        Ok(UserInbound::Claim(claim)) => me.do_send(Claimed {
                            user: user.clone(),
                            claim,
                        }),
                        Err(e) => tracing::debug!(error = %e, "bad user delivery"),
                    }
                }
            })
        });
        if let Some(old) = self.sessions.insert(msg.user.clone(), entry) {
            if old.session_id == msg.session_id {
                if let Some(task) = old.remote {
                    task.abort();
                }
            } else {
                tracing::info!(user = %msg.user, session = old.session_id, "session replaced by a join on this node");
                self.superseded += 1;
                old.kick("the same user joined from another connection");
            }
        }
        let standalone = self.cluster.is_none();
        Box::pin(async move {
            if !standalone {
                let _ = tokio::time::timeout(Duration::from_secs(5), subscribed).await;
            }
            rank
        })
    }
}

impl Handler<Claimed> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Claimed, _: &mut Context<Self>) {
        let (Some(c), Some(entry)) = (&self.cluster, self.sessions.get(&msg.user)) else {
            return;
        };
        let local = entry.claim(&c.node);
        match judge(&local, &msg.claim) {
            ClaimVerdict::Ignore => {}
            ClaimVerdict::Superseded => {
                tracing::info!(user = %msg.user, session = local.session, by = %msg.claim.node, "session replaced by a join on another node");
                self.superseded += 1;
                if let Some(old) = self.sessions.remove(&msg.user) {
                    old.kick("the same user joined through another node");
                }
            }
            ClaimVerdict::Answer => {
                tracing::info!(user = %msg.user, older = %msg.claim.node, "an older session of the user remains elsewhere; claiming again");
                c.publish(wire::user(&msg.user), &local);
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
            if let Some(task) = self.sessions.remove(&msg.user).and_then(|e| e.remote) {
                task.abort();
            }
        }
    }
}

impl Handler<Deliver> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        // Everything a room or peer here says to a user is for a session attached to this
        // node's participant: a session that moved on to another node (a resume, a fence)
        // must not hear a stale offer or a `reconnect` from here.
        let Some(c) = &self.cluster else {
            self.deliver_local(&msg.to, &msg.room, msg.msg);
            return;
        };
        if self.sessions.contains_key(&msg.to) {
            let routed = Routed::FromHost {
                msg: msg.msg,
                host: c.node.clone(),
            };
            self.deliver_routed(&msg.to, &msg.room, routed);
            return;
        }
        let delivery = UserDelivery {
            v: wire::VERSION,
            room: msg.room,
            msg: msg.msg,
            host: Some(c.node.clone()),
        };
        c.publish(wire::user(&msg.to), &delivery);
    }
}

impl Handler<Inbound> for SessionRouter {
    type Result = ();
    fn handle(&mut self, msg: Inbound, _: &mut Context<Self>) {
        let UserDelivery {
            room,
            msg: out,
            host,
            ..
        } = msg.delivery;
        let routed = match host {
            Some(host) => Routed::FromHost { msg: out, host },
            None => Routed::ToClient(out),
        };
        let delivered = self.deliver_routed(&msg.to, &room, routed);
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
        if !self.recipient_rate.admit(&msg.to) {
            crate::limits::hit("recipient_messages");
            return Box::pin(async { Err(ErrorCode::RateLimited) });
        }
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
            host: None,
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
        MessageResult(serde_json::json!({
            "routes": self.sessions.len(),
            "superseded": self.superseded,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(node: &str, room: &str, session: u64, claimed_ms: u64) -> SessionClaim {
        SessionClaim {
            v: wire::VERSION,
            room: RoomId::new(room).unwrap(),
            node: NodeId::new(node).unwrap(),
            session,
            claimed_ms,
        }
    }

    #[test]
    fn a_newer_claim_elsewhere_supersedes_and_an_older_one_is_answered() {
        let local = claim("n1", "r", 1, 1_000);
        let newer = claim("n2", "r", 7, 2_000);
        let older = claim("n2", "r", 7, 500);
        assert_eq!(judge(&local, &newer), ClaimVerdict::Superseded);
        assert_eq!(judge(&local, &older), ClaimVerdict::Answer);
        // Answering makes the other node judge the same pair the other way round.
        assert_eq!(judge(&older, &local), ClaimVerdict::Superseded);
        assert_eq!(judge(&newer, &local), ClaimVerdict::Answer);
    }

    #[test]
    fn own_claims_other_rooms_and_other_versions_are_ignored() {
        let local = claim("n1", "r", 1, 1_000);
        // This node's claims, its own echo included, never close a session of this node.
        assert_eq!(judge(&local, &local), ClaimVerdict::Ignore);
        assert_eq!(
            judge(&local, &claim("n1", "r", 2, 2_000)),
            ClaimVerdict::Ignore
        );
        assert_eq!(
            judge(&local, &claim("n2", "other", 2, 2_000)),
            ClaimVerdict::Ignore
        );
        let mut future = claim("n2", "r", 2, 2_000);
        future.v = wire::VERSION + 1;
        assert_eq!(judge(&local, &future), ClaimVerdict::Ignore);
    }
}
