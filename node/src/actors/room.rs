//! `Room`: the members of one room on this node, their published tracks, and who receives
//! what. It owns the forwarding tables: every change of membership or subscription ends in
//! an update of the affected sources' fanout.
//!
//! In a cluster a room may span nodes ([`links`]): the room also knows the other nodes'
//! participants, tells them about its own, and exchanges tracks over relay links.
//!
//! The room hears from its peers through [`PeerEvent`]s and reports to the registry that
//! hosts it through [`RoomReport`]s, sent to the recipient the registry gave it: this module
//! does not name the registry.

mod links;
mod tally;

pub use links::{ListLinks, LocalState, RelaySignal, RoomNodeGone, RELAY_USER_PREFIX};

use super::peer::{self, Peer, PeerEvent, PeerRole};
use super::router::Deliver;
use super::{NodeCtx, Observe};
use crate::counters::{Kind, Live};
use crate::media::forward::{DownTrack, TrackSource};
use actix::prelude::*;
use base64::Engine;
use links::Links;
use protocol::cluster::{PeerCmd, RoomChange};
use protocol::signal::{IceServer, ParticipantInfo, ParticipantState, ServerMessage, TrackInfo};
use protocol::token::Claims;
use protocol::{ErrorCode, NodeId, RoomId, TrackId, UserId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How often a room updates its metric series.
const ROOM_SERIES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

struct Member {
    info: ParticipantInfo,
    peer: Addr<Peer>,
    can_subscribe: bool,
    resume_token: String,
    /// Join order, so `joined` lists participants as they arrived.
    seq: u64,
    /// The joining session's rank ([`JoinRoom::rank`](super::rooms::JoinRoom::rank)).
    rank: u64,
}

pub struct Room {
    id: RoomId,
    node: NodeCtx,
    /// The registry hosting the room, which handles its [`RoomReport`]s.
    registry: Recipient<RoomReport>,
    /// Participants whose peer is on this node.
    members: HashMap<UserId, Member>,
    /// Every track this node forwards: its members' own, and those relayed from other nodes.
    tracks: BTreeMap<TrackId, Arc<TrackSource>>,
    next_seq: u64,
    /// The other nodes of the room: their participants, and the relay links with them.
    links: Links,
    /// The room's own metric series.
    tally: tally::RoomTally,
    _live: Live,
}

impl Room {
    /// `nodes`: the other nodes of the room as the directory listed them at the first join.
    pub fn new(
        id: RoomId,
        node: NodeCtx,
        registry: Recipient<RoomReport>,
        nodes: Vec<NodeId>,
    ) -> Self {
        let live = Live::new(&node.counters, Kind::Room);
        let links = Links::new(&node.config.node_id, nodes);
        Room {
            id,
            node,
            registry,
            members: HashMap::new(),
            tracks: BTreeMap::new(),
            next_seq: 0,
            links,
            tally: tally::RoomTally::default(),
            _live: live,
        }
    }

    fn broadcast(&self, except: &UserId, msg: &ServerMessage) {
        for id in self.members.keys().filter(|id| *id != except) {
            self.node.router.do_send(Deliver {
                to: id.clone(),
                room: self.id.clone(),
                msg: msg.clone(),
            });
        }
    }

    /// The tracks a local member publishes.
    fn tracks_of(&self, user: &UserId) -> Vec<TrackInfo> {
        self.tracks
            .values()
            .filter(|t| &t.owner == user && t.relayed_from.is_none())
            .map(|t| TrackInfo {
                id: t.id.clone(),
                kind: t.kind,
                muted: false,
            })
            .collect()
    }

    /// This node's participants with their tracks, in join order.
    fn local_participants(&self, except: Option<&UserId>) -> Vec<ParticipantState> {
        let mut members: Vec<&Member> = self
            .members
            .values()
            .filter(|m| Some(&m.info.id) != except)
            .collect();
        members.sort_by_key(|m| m.seq);
        members
            .into_iter()
            .map(|m| ParticipantState {
                id: m.info.id.clone(),
                name: m.info.name.clone(),
                tracks: self.tracks_of(&m.info.id),
            })
            .collect()
    }

    /// Everyone in the room, on this node and the others, but `except`.
    fn participants(&self, except: &UserId) -> Vec<ParticipantState> {
        let mut all = self.local_participants(Some(except));
        all.extend(
            self.links
                .remote
                .participants()
                .filter(|p| &p.id != except && !self.members.contains_key(&p.id))
                .cloned(),
        );
        all
    }

    fn ice_servers(&self, user: &UserId) -> Vec<IceServer> {
        let cfg = &self.node.config;
        let now = crate::unix_secs();
        cfg.ice_servers
            .iter()
            .map(|s| {
                let is_turn = s.urls.iter().any(|u| u.starts_with("turn"));
                match (&cfg.turn_secret, is_turn) {
                    (Some(secret), true) => {
                        let c = protocol::turn::credentials(
                            secret.as_bytes(),
                            user.as_str(),
                            now,
                            cfg.turn_ttl.as_secs(),
                        );
                        IceServer {
                            urls: s.urls.clone(),
                            username: Some(c.username),
                            credential: Some(c.password),
                        }
                    }
                    _ => s.clone(),
                }
            })
            .collect()
    }

    /// A track leaves the room. A local one is announced to the clients and the other
    /// nodes; a relayed one was announced by its own node already.
    fn unpublish(&mut self, track_id: &TrackId) {
        let Some(source) = self.tracks.remove(track_id) else {
            return;
        };
        source.clear_fanout();
        if source.relayed_from.is_none() {
            let msg = ServerMessage::TrackUnpublished {
                participant: source.owner.clone(),
                track_id: track_id.clone(),
            };
            self.broadcast(&source.owner, &msg);
            self.announce(RoomChange::TrackUnpublished {
                participant: source.owner.clone(),
                track_id: track_id.clone(),
            });
        }
        let unsubscribe = || peer::Unsubscribe {
            track_id: track_id.clone(),
        };
        for (id, m) in &self.members {
            if id != &source.owner {
                m.peer.do_send(unsubscribe());
            }
        }
        for relay in self.links.senders() {
            relay.do_send(unsubscribe());
        }
    }

    /// The room's series (`tally`): members here, tracks forwarded, packets forwarded.
    fn publish_series(&mut self) {
        self.tally
            .update(self.tracks.values().map(|t| &t.forwarded));
        self.tally
            .publish(self.id.as_str(), self.members.len(), self.tracks.len());
    }

    fn remove_member(&mut self, user: &UserId) {
        let Some(member) = self.members.remove(user) else {
            return;
        };
        let owned: Vec<TrackId> = self
            .tracks
            .values()
            .filter(|t| &t.owner == user && t.relayed_from.is_none())
            .map(|t| t.id.clone())
            .collect();
        for id in owned {
            self.unpublish(&id);
        }
        for source in self.tracks.values() {
            source.remove_subscriber(user);
        }
        // A user who joined again on another node of the room is still in the room.
        if !self.links.remote.contains(user) {
            self.broadcast(user, &ServerMessage::ParticipantLeft { id: user.clone() });
        }
        self.announce(RoomChange::Left { id: user.clone() });
        member.peer.do_send(peer::Close);
        self.registry.do_send(RoomReport::MemberLeft {
            room: self.id.clone(),
        });
        tracing::info!(room = %self.id, %user, "participant left");
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.join_cluster(ctx);
        ctx.run_interval(ROOM_SERIES_INTERVAL, |room, _| room.publish_series());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.links.stop_events();
        self.publish_series();
    }
}

/// What a room reports to the registry that hosts it.
#[derive(Message)]
#[rtype(result = "()")]
pub enum RoomReport {
    /// The room lost a member (left, replaced, failed, or its grace period ran out).
    MemberLeft { room: RoomId },
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

/// Makes the token's user a member of the room, with a new peer on this node.
#[derive(Message)]
#[rtype(result = "Result<JoinedInfo, ErrorCode>")]
pub struct AdmitMember {
    pub claims: Claims,
    /// The room's other nodes as the directory lists them now.
    pub nodes: Vec<NodeId>,
    /// See [`JoinRoom::rank`](super::rooms::JoinRoom::rank).
    pub rank: u64,
}

/// Hands a member, named by its resume token, to a new socket.
#[derive(Message)]
#[rtype(result = "Result<JoinedInfo, ErrorCode>")]
pub struct ResumeMember {
    pub user: UserId,
    pub resume_token: String,
}

/// Signaling for a member whose socket is on another node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MemberCommand {
    pub user: UserId,
    pub cmd: PeerCmd,
}

impl Handler<MemberCommand> for Room {
    type Result = ();
    fn handle(&mut self, msg: MemberCommand, _: &mut Context<Self>) {
        let Some(m) = self.members.get(&msg.user) else {
            return;
        };
        peer::command(&m.peer, 0, msg.cmd);
    }
}

/// From the registry: the room is empty and forgotten; stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<AdmitMember> for Room {
    type Result = Result<JoinedInfo, ErrorCode>;

    fn handle(&mut self, msg: AdmitMember, ctx: &mut Context<Self>) -> Self::Result {
        let claims = msg.claims;
        let user = claims.sub.clone();
        self.learn_nodes(msg.nodes, ctx);
        // A later registered socket of the same user joined first: this older join lost
        // (the router is closing its socket) and must not replace the newer participant.
        if msg.rank != 0 && self.members.get(&user).is_some_and(|m| m.rank > msg.rank) {
            tracing::info!(room = %self.id, %user, "the join of a replaced socket refused");
            return Err(ErrorCode::Unauthorized);
        }
        // The same user joining again replaces the old participant.
        self.remove_member(&user);
        let everyone = self.members.len() + self.links.remote.count();
        let share = self.node.config.room_node_share;
        // Both refusals say `room_full`; the joining session asks the coordinator for
        // another node of the room once, which a room at its size refuses too.
        if everyone >= self.node.config.max_room_size || (share > 0 && self.members.len() >= share)
        {
            return Err(ErrorCode::RoomFull);
        }
        let info = ParticipantInfo {
            id: user.clone(),
            name: claims.display_name(),
        };
        let peer = Peer::new(
            user.clone(),
            PeerRole::Client,
            self.id.clone(),
            claims.can_publish,
            claims.can_subscribe,
            ctx.address().recipient(),
            self.node.clone(),
        )
        .start();
        // A participant of a dead node resuming here: the clients never saw it leave.
        let returning = self.links.remote.take_suspended(&user);
        let participants = self.participants(&user);
        if !returning {
            self.broadcast(
                &user,
                &ServerMessage::ParticipantJoined {
                    participant: info.clone(),
                },
            );
        }
        // Self-contained and signed: any node of the cluster restores the participant from
        // it, also when this node is gone (PROTOCOL.md `resume`).
        let mut raw = [0u8; 18];
        rand::Rng::fill(&mut rand::thread_rng(), &mut raw);
        let cfg = &self.node.config;
        let resume = protocol::token::ResumeClaims::new(
            &claims,
            cfg.node_id.clone(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
            crate::unix_secs(),
            cfg.resume_token_ttl.as_secs(),
        );
        let resume_token = protocol::token::mint_resume(cfg.api_secret.as_bytes(), &resume);
        self.next_seq += 1;
        self.members.insert(
            user.clone(),
            Member {
                info: info.clone(),
                peer: peer.clone(),
                can_subscribe: claims.can_subscribe,
                resume_token: resume_token.clone(),
                seq: self.next_seq,
                rank: msg.rank,
            },
        );
        if claims.can_subscribe {
            for source in self.tracks.values() {
                peer.do_send(peer::Subscribe(source.clone()));
            }
        }
        self.announce(RoomChange::Joined {
            participant: info.clone(),
        });
        self.update_wants(ctx);
        tracing::info!(room = %self.id, %user, members = self.members.len(), "participant joined");
        Ok(JoinedInfo {
            room: self.id.clone(),
            participant: info,
            peer,
            resume_token,
            ice_servers: self.ice_servers(&user),
            participants,
        })
    }
}

impl Handler<ResumeMember> for Room {
    type Result = Result<JoinedInfo, ErrorCode>;

    fn handle(&mut self, msg: ResumeMember, _: &mut Context<Self>) -> Self::Result {
        let member = self
            .members
            .get(&msg.user)
            .filter(|m| m.resume_token == msg.resume_token)
            .ok_or(ErrorCode::NotFound)?;
        let (info, peer, token) = (
            member.info.clone(),
            member.peer.clone(),
            member.resume_token.clone(),
        );
        Ok(JoinedInfo {
            room: self.id.clone(),
            participants: self.participants(&msg.user),
            ice_servers: self.ice_servers(&msg.user),
            participant: info,
            peer,
            resume_token: token,
        })
    }
}

impl Handler<PeerEvent> for Room {
    type Result = ();
    fn handle(&mut self, msg: PeerEvent, ctx: &mut Context<Self>) {
        match msg {
            PeerEvent::TrackPublished(source) => self.track_published(source),
            PeerEvent::TrackEnded { owner, track_id } => self.track_ended(&owner, &track_id),
            PeerEvent::DownTrackReady(dt) => self.down_track_ready(dt),
            PeerEvent::Gone { user, peer } => self.peer_gone(&user, &peer, ctx),
        }
    }
}

impl Room {
    /// A publisher's connection delivered a new track: the room's subscribers get it.
    fn track_published(&mut self, source: Arc<TrackSource>) {
        if source.relayed_from.is_some() {
            return self.relayed_track(source);
        }
        if !self.members.contains_key(&source.owner) {
            source.clear_fanout();
            return;
        }
        let track = TrackInfo {
            id: source.id.clone(),
            kind: source.kind,
            muted: false,
        };
        let announce = ServerMessage::TrackPublished {
            participant: source.owner.clone(),
            track: track.clone(),
        };
        self.broadcast(&source.owner, &announce);
        for (id, m) in &self.members {
            if id != &source.owner && m.can_subscribe {
                m.peer.do_send(peer::Subscribe(source.clone()));
            }
        }
        tracing::info!(room = %self.id, owner = %source.owner, track = %source.id, kind = ?source.kind, codec = %source.codec.mime_type, "track published");
        self.tracks.insert(source.id.clone(), source.clone());
        // Relay links that asked for it before it arrived get it now.
        for relay in self.links.senders_wanting(&source.id) {
            relay.do_send(peer::Subscribe(source.clone()));
        }
        self.announce(RoomChange::TrackPublished {
            participant: source.owner.clone(),
            track,
        });
    }

    fn track_ended(&mut self, owner: &UserId, track_id: &TrackId) {
        if self.tracks.get(track_id).is_some_and(|t| &t.owner == owner) {
            self.unpublish(track_id);
        }
    }

    /// A subscriber's down track is negotiated: forwarding to it starts.
    fn down_track_ready(&mut self, dt: Arc<DownTrack>) {
        let subscribed =
            self.members.contains_key(&dt.subscriber) || self.links.is_sender(&dt.subscriber);
        let (Some(source), true) = (self.tracks.get(&dt.source), subscribed) else {
            return;
        };
        source.add_downtrack(dt);
        // A new subscriber can decode nothing until the next keyframe.
        source.request_keyframe();
    }

    /// A member's peer ended, or a relay link's peer failed.
    fn peer_gone(&mut self, user: &UserId, peer: &Addr<Peer>, ctx: &mut Context<Self>) {
        if self.members.get(user).is_some_and(|m| &m.peer == peer) {
            self.remove_member(user);
            self.update_wants(ctx);
        } else if let Some((node, link)) = self.links.relay_gone(peer) {
            for source in self.tracks.values() {
                source.remove_subscriber(user);
            }
            self.relay_failed(node, link, ctx);
        }
    }
}

impl Handler<Shutdown> for Room {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        let users: Vec<UserId> = self.members.keys().cloned().collect();
        for u in users {
            self.remove_member(&u);
        }
        self.leave_cluster();
        ctx.stop();
    }
}

/// From the registry: this node no longer serves the room (fenced). Clients are told to
/// reconnect, and the room stops here without a word to the other nodes, which moved on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FenceRoom {
    pub reason: &'static str,
    pub url: Option<String>,
}

impl Handler<FenceRoom> for Room {
    type Result = ();
    fn handle(&mut self, msg: FenceRoom, ctx: &mut Context<Self>) {
        tracing::warn!(room = %self.id, members = self.members.len(), reason = msg.reason, "room fenced");
        let reconnect = ServerMessage::Reconnect {
            reason: msg.reason.into(),
            url: msg.url,
        };
        // Only sessions attached to this node's participants hear it (the router sends
        // every room's word from its host): one that resumed elsewhere meanwhile must not.
        for id in self.members.keys() {
            self.node.router.do_send(Deliver {
                to: id.clone(),
                room: self.id.clone(),
                msg: reconnect.clone(),
            });
        }
        for (_, m) in self.members.drain() {
            m.peer.do_send(peer::Close);
        }
        for source in std::mem::take(&mut self.tracks).into_values() {
            source.clear_fanout();
        }
        self.close_all_links();
        ctx.stop();
    }
}

impl Handler<Observe> for Room {
    type Result = MessageResult<Observe>;
    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        let tracks: Vec<serde_json::Value> = self
            .tracks
            .values()
            .map(|t| {
                let fanout = t.fanout.load();
                serde_json::json!({
                    "id": t.id,
                    "owner": t.owner,
                    "relayed_from": t.relayed_from,
                    "kind": t.kind,
                    "codec": t.codec.mime_type,
                    "subscribers": fanout.iter().map(|d| d.subscriber.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        MessageResult(serde_json::json!({
            "id": self.id,
            "members": members.iter().map(|m| serde_json::json!({"id": m.info.id, "name": m.info.name})).collect::<Vec<_>>(),
            "tracks": tracks,
            "remote": self.links.remote.participants().collect::<Vec<_>>(),
            "links": self.links.observe(),
        }))
    }
}
