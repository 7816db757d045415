//! The room API on this node (`protocol::room_api`): a coordinator asks every node of the
//! room, and each acts on the participants it hosts.
//!
//! - `participants`: this node's members with their grants and tracks.
//! - `remove`: the client gets `removed` (its session closes the socket with 1000 and does
//!   not come back); the member leaves as if it had left.
//! - `mute`: one of a member's own tracks stops (or resumes) forwarding here, so neither
//!   local subscribers nor relay links receive it; everyone hears `track_muted`.
//! - `grants`: the member's grants change now, with a new resume token.
//! - `data`: `data` to some or all members here.
//! - `close`: every member gets `removed` (`room_closed`) and leaves; the registry then
//!   closes the room here at once.

use super::{rules, Departure, Member, Room};
use crate::actors::peer::{self, Grants};
use crate::actors::router::Deliver;
use actix::prelude::*;
use protocol::cluster::RoomChange;
use protocol::room_api::{AdminOp, AdminReply, ParticipantDetail, TrackDetail};
use protocol::signal::ServerMessage;
use protocol::{ErrorCode, TrackId, UserId};

/// One room API operation on the participants hosted here.
#[derive(Message)]
#[rtype(result = "AdminReply")]
pub struct AdminRequest(pub AdminOp);

/// `reason` of `removed` for a participant the application removed.
pub const REMOVED: &str = "removed";
/// `reason` of `removed` when the application closed the room.
pub const ROOM_CLOSED: &str = "room_closed";

impl Handler<AdminRequest> for Room {
    type Result = MessageResult<AdminRequest>;

    fn handle(&mut self, msg: AdminRequest, ctx: &mut Context<Self>) -> Self::Result {
        let reply = match msg.0 {
            AdminOp::Participants => AdminReply::Participants {
                participants: self.details(),
            },
            AdminOp::Remove { user } => self.remove_by_app(&user, ctx),
            AdminOp::Mute { user, track, muted } => self.mute(&user, &track, muted),
            AdminOp::Grants {
                user,
                can_publish,
                can_subscribe,
            } => self.change_grants(&user, can_publish, can_subscribe, ctx),
            AdminOp::Data { to, data, topic } => self.send_data(&to, data, topic),
            AdminOp::Close => self.close_by_app(ctx),
        };
        MessageResult(reply)
    }
}

fn done(participant: Option<ParticipantDetail>, affected: usize) -> AdminReply {
    AdminReply::Done {
        participant,
        affected: u32::try_from(affected).unwrap_or(u32::MAX),
    }
}

impl Room {
    fn tell(&self, to: &UserId, msg: ServerMessage) {
        self.node.router.do_send(Deliver {
            to: to.clone(),
            room: self.id.clone(),
            msg,
        });
    }

    fn detail(&self, m: &Member) -> ParticipantDetail {
        let cfg = &self.node.config;
        ParticipantDetail {
            id: m.info.id.clone(),
            name: m.info.name.clone(),
            metadata: m.claims.metadata.clone(),
            node: cfg.node_id.clone(),
            region: cfg.region.clone(),
            joined_ms: m.joined_ms,
            can_publish: m.claims.can_publish,
            can_subscribe: m.claims.can_subscribe,
            tracks: self
                .tracks_of(&m.info.id)
                .into_iter()
                .map(|t| TrackDetail {
                    id: t.id,
                    kind: t.kind,
                    muted: t.muted,
                })
                .collect(),
        }
    }

    /// Every member here, in join order.
    fn details(&self) -> Vec<ParticipantDetail> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        members.into_iter().map(|m| self.detail(m)).collect()
    }

    /// Tells the member it is out (`reason`) and removes it.
    fn evict(&mut self, user: &UserId, reason: &str) {
        self.tell(
            user,
            ServerMessage::Removed {
                reason: reason.into(),
            },
        );
        self.remove_member(user, Departure::Removed);
    }

    fn remove_by_app(&mut self, user: &UserId, ctx: &mut Context<Self>) -> AdminReply {
        let Some(m) = self.members.get(user) else {
            return AdminReply::NotHere;
        };
        let mut detail = self.detail(m);
        detail.tracks.clear();
        self.evict(user, REMOVED);
        self.update_wants(ctx);
        tracing::info!(room = %self.id, %user, "participant removed by the application");
        done(Some(detail), 1)
    }

    fn mute(&mut self, user: &UserId, track: &TrackId, muted: bool) -> AdminReply {
        if !self.members.contains_key(user) {
            return AdminReply::NotHere;
        }
        let Some(source) = self
            .tracks
            .get(track)
            .filter(|t| &t.owner == user && t.relayed_from.is_none())
            .cloned()
        else {
            return AdminReply::Error {
                code: ErrorCode::NotFound,
                message: format!("`{user}` publishes no track `{track}` here"),
            };
        };
        if source.set_muted(muted) {
            tracing::info!(room = %self.id, %user, %track, muted, "track muted by the application");
            let notice = ServerMessage::TrackMuted {
                participant: user.clone(),
                track_id: track.clone(),
                muted,
            };
            // Everyone, its publisher included.
            for id in self.members.keys() {
                self.tell(id, notice.clone());
            }
            self.announce(RoomChange::TrackMuted {
                participant: user.clone(),
                track_id: track.clone(),
                muted,
            });
        }
        let detail = self.members.get(user).map(|m| self.detail(m));
        done(detail, 1)
    }

    fn change_grants(
        &mut self,
        user: &UserId,
        can_publish: Option<bool>,
        can_subscribe: Option<bool>,
        ctx: &mut Context<Self>,
    ) -> AdminReply {
        let Some(m) = self.members.get(user) else {
            return AdminReply::NotHere;
        };
        let old = Grants {
            can_publish: m.claims.can_publish,
            can_subscribe: m.claims.can_subscribe,
        };
        let change = rules::change_grants(old, can_publish, can_subscribe);
        let mut claims = m.claims.clone();
        claims.can_publish = change.grants.can_publish;
        claims.can_subscribe = change.grants.can_subscribe;
        // A new nonce: the old token no longer resumes the participant here.
        let resume_token = self.mint_resume_token(&claims);
        let Some(m) = self.members.get_mut(user) else {
            return AdminReply::NotHere;
        };
        m.claims = claims;
        m.resume_token = resume_token.clone();
        let peer = m.peer.clone();
        // The peer changes first: the subscriptions below find the new grants.
        peer.do_send(peer::SetGrants(change.grants));
        if change.stop_subscribing {
            for source in self.tracks.values() {
                source.remove_subscriber(user);
            }
        }
        if change.start_subscribing {
            for source in self.tracks.values().filter(|s| &s.owner != user) {
                peer.do_send(peer::Subscribe(source.clone()));
            }
        }
        self.update_wants(ctx);
        self.tell(
            user,
            ServerMessage::PermissionsChanged {
                can_publish: change.grants.can_publish,
                can_subscribe: change.grants.can_subscribe,
                resume_token,
            },
        );
        tracing::info!(room = %self.id, %user, can_publish = change.grants.can_publish, can_subscribe = change.grants.can_subscribe, "grants changed by the application");
        let mut detail = self.members.get(user).map(|m| self.detail(m));
        if change.stop_publishing {
            // Its peer is ending them now.
            if let Some(d) = &mut detail {
                d.tracks.clear();
            }
        }
        done(detail, 1)
    }

    fn send_data(
        &mut self,
        to: &[UserId],
        data: serde_json::Value,
        topic: Option<String>,
    ) -> AdminReply {
        let mut targets: Vec<UserId> = if to.is_empty() {
            self.members.keys().cloned().collect()
        } else {
            to.iter()
                .filter(|u| self.members.contains_key(*u))
                .cloned()
                .collect()
        };
        targets.sort();
        targets.dedup();
        for user in &targets {
            self.tell(
                user,
                ServerMessage::Data {
                    data: data.clone(),
                    topic: topic.clone(),
                },
            );
        }
        done(None, targets.len())
    }

    fn close_by_app(&mut self, ctx: &mut Context<Self>) -> AdminReply {
        let users: Vec<UserId> = self.members.keys().cloned().collect();
        for user in &users {
            self.evict(user, ROOM_CLOSED);
        }
        self.update_wants(ctx);
        tracing::info!(room = %self.id, removed = users.len(), "room closed by the application");
        done(None, users.len())
    }
}
