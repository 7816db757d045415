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

mod admin;
mod links;
mod rules;
mod tally;

pub use admin::AdminRequest;

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
use protocol::room_api::RoomSettings;
use protocol::signal::{IceServer, ParticipantInfo, ParticipantState, ServerMessage, TrackInfo};
use protocol::token::Claims;
use protocol::webhook::EventKind;
use protocol::{ErrorCode, NodeId, RoomId, TrackId, UserId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How often a room updates its metric series.
const ROOM_SERIES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

struct Member {
    info: ParticipantInfo,
    peer: Addr<Peer>,
    /// The claims it joined with, its grants as they are now (the room API changes them).
    claims: Claims,
    /// When it joined here (ms since the Unix epoch).
    joined_ms: u64,
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
    /// The latest settings a placement handed the room (room API); the defaults until then.
    settings: RoomSettings,
    _live: Live,
}

/// Why a member leaves the room here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// The same user joined again (here or on another node): still in the room.
    Replaced,
    /// Its peer ended: `leaving` when the client sent `leave`, otherwise its connection
    /// failed or its resume grace ran out.
    PeerGone { leaving: bool },
    /// The application removed it, or closed the room (room API).
    Removed,
    /// The room closed here.
    RoomClosed,
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
            settings: RoomSettings::default(),
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
            .map(|t| t.info())
            .collect()
    }

    /// A local member's participant info, or one made of the id for a member already gone.
    fn info_of(&self, user: &UserId) -> ParticipantInfo {
        match self.members.get(user) {
            Some(m) => m.info.clone(),
            None => ParticipantInfo {
                id: user.clone(),
                name: user.to_string(),
            },
        }
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
            let track = source.info();
            let owner = self.info_of(&source.owner);
            self.node
                .webhooks
                .track(EventKind::TrackUnpublished, &self.id, &owner, track);
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

    fn remove_member(&mut self, user: &UserId, why: Departure) {
        if !self.members.contains_key(user) {
            return;
        }
        // Its tracks end while it is still a member, so their events name it.
        let owned: Vec<TrackId> = self
            .tracks
            .values()
            .filter(|t| &t.owner == user && t.relayed_from.is_none())
            .map(|t| t.id.clone())
            .collect();
        for id in owned {
            self.unpublish(&id);
        }
        let Some(member) = self.members.remove(user) else {
            return;
        };
        for source in self.tracks.values() {
            source.remove_subscriber(user);
        }
        // A user who joined again on another node of the room is still in the room.
        if !self.links.remote.contains(user) {
            self.broadcast(user, &ServerMessage::ParticipantLeft { id: user.clone() });
        }
        self.announce(RoomChange::Left { id: user.clone() });
        let draining = self
            .node
            .draining
            .load(std::sync::atomic::Ordering::Relaxed);
        if rules::left_for_good(why, draining, self.links.remote.contains(user)) {
            self.node
                .webhooks
                .participant(EventKind::ParticipantLeft, &self.id, &member.info);
        }
        member.peer.do_send(peer::Close);
        self.registry.do_send(RoomReport::MemberLeft {
            room: self.id.clone(),
        });
        tracing::info!(room = %self.id, %user, ?why, "participant left");
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
#[rtype(result = "Result<JoinedInfo, Refused>")]
pub struct AdmitMember {
    pub claims: Claims,
    /// The room's other nodes as the directory lists them now.
    pub nodes: Vec<NodeId>,
    /// See [`JoinRoom::rank`](super::rooms::JoinRoom::rank).
    pub rank: u64,
    /// See [`JoinRoom::rejoin`](super::rooms::JoinRoom::rejoin).
    pub rejoin: bool,
    /// The room's settings from its placement; `None` keeps those the room has.
    pub settings: Option<RoomSettings>,
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
    type Result = Result<JoinedInfo, Refused>;

    fn handle(&mut self, msg: AdmitMember, ctx: &mut Context<Self>) -> Self::Result {
        let claims = msg.claims;
        let user = claims.sub.clone();
        self.learn_nodes(msg.nodes, ctx);
        if let Some(settings) = msg.settings {
            self.settings = settings;
        }
        // A later registered socket of the same user joined first: this older join lost
        // (the router is closing its socket) and must not replace the newer participant.
        if msg.rank != 0 && self.members.get(&user).is_some_and(|m| m.rank > msg.rank) {
            tracing::info!(room = %self.id, %user, "the join of a replaced socket refused");
            return Err(ErrorCode::Unauthorized.into());
        }
        // The room's own rules (room API settings) refuse before anyone is replaced.
        let others = (self.members.len() + self.links.remote.count())
            .saturating_sub(usize::from(self.members.contains_key(&user)))
            .saturating_sub(usize::from(self.links.remote.contains(&user)));
        if let Err(code) = rules::admits(&self.settings, &user, claims.admit_private, others) {
            tracing::info!(room = %self.id, %user, code = code.as_str(), "join refused by the room's settings");
            return Err(Refused::settled(code));
        }
        // The same user joining again replaces the old participant (here, or on another
        // node of the room, which removes its own when it hears of this one).
        let replaced = self.members.contains_key(&user) || self.links.remote.contains(&user);
        self.remove_member(&user, Departure::Replaced);
        let everyone = self.members.len() + self.links.remote.count();
        let share = self.node.config.room_node_share;
        // Both refusals say `room_full`; the joining session asks the coordinator for
        // another node of the room once, which a room at its size refuses too.
        if everyone >= self.node.config.max_room_size || (share > 0 && self.members.len() >= share)
        {
            return Err(ErrorCode::RoomFull.into());
        }
        let info = ParticipantInfo {
            id: user.clone(),
            name: claims.display_name(),
        };
        let peer = Peer::new(
            user.clone(),
            PeerRole::Client,
            self.id.clone(),
            peer::Grants {
                can_publish: claims.can_publish,
                can_subscribe: claims.can_subscribe,
            },
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
        // A fresh join only: not a participant moved here (failover, drain, resume
        // anywhere), nor the same user replacing itself.
        if !msg.rejoin && !returning && !replaced {
            self.node
                .webhooks
                .participant(EventKind::ParticipantJoined, &self.id, &info);
        }
        let resume_token = self.mint_resume_token(&claims);
        let can_subscribe = claims.can_subscribe;
        self.next_seq += 1;
        self.members.insert(
            user.clone(),
            Member {
                info: info.clone(),
                peer: peer.clone(),
                claims,
                joined_ms: crate::unix_ms(),
                resume_token: resume_token.clone(),
                seq: self.next_seq,
                rank: msg.rank,
            },
        );
        if can_subscribe {
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

impl Room {
    /// A resume token for `claims` on this node, with a fresh nonce. Self-contained and
    /// signed: any node of the cluster restores the participant from it, also when this
    /// node is gone (PROTOCOL.md `resume`).
    fn mint_resume_token(&self, claims: &Claims) -> String {
        let mut raw = [0u8; 18];
        rand::Rng::fill(&mut rand::thread_rng(), &mut raw);
        let cfg = &self.node.config;
        let resume = protocol::token::ResumeClaims::new(
            claims,
            cfg.node_id.clone(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
            crate::unix_secs(),
            cfg.resume_token_ttl.as_secs(),
        );
        protocol::token::mint_resume(cfg.api_secret.as_bytes(), &resume)
    }
}

/// The message of a join the room's settings refused, passed to the session's node so
/// that it asks no other node of the room.
pub const REFUSED_BY_SETTINGS: &str = "refused by the room's settings";

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub code: ErrorCode,
    /// The room's settings refused it: no other node of the room would admit the join, so
    /// the session must not ask for one.
    pub settled: bool,
}

impl Refused {
    fn settled(code: ErrorCode) -> Self {
        Refused {
            code,
            settled: true,
        }
    }
}

impl From<ErrorCode> for Refused {
    fn from(code: ErrorCode) -> Self {
        Refused {
            code,
            settled: false,
        }
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
            PeerEvent::Gone {
                user,
                peer,
                leaving,
            } => self.peer_gone(&user, &peer, leaving, ctx),
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
        let track = source.info();
        let owner = self.info_of(&source.owner);
        self.node
            .webhooks
            .track(EventKind::TrackPublished, &self.id, &owner, track.clone());
        let announce = ServerMessage::TrackPublished {
            participant: source.owner.clone(),
            track: track.clone(),
        };
        self.broadcast(&source.owner, &announce);
        for (id, m) in &self.members {
            if id != &source.owner && m.claims.can_subscribe {
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
    fn peer_gone(
        &mut self,
        user: &UserId,
        peer: &Addr<Peer>,
        leaving: bool,
        ctx: &mut Context<Self>,
    ) {
        if self.members.get(user).is_some_and(|m| &m.peer == peer) {
            self.remove_member(user, Departure::PeerGone { leaving });
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
            self.remove_member(&u, Departure::RoomClosed);
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
                    "muted": t.is_muted(),
                    "subscribers": fanout.iter().map(|d| d.subscriber.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        MessageResult(serde_json::json!({
            "id": self.id,
            "members": members.iter().map(|m| serde_json::json!({"id": m.info.id, "name": m.info.name, "can_publish": m.claims.can_publish, "can_subscribe": m.claims.can_subscribe})).collect::<Vec<_>>(),
            "tracks": tracks,
            "remote": self.links.remote.participants().collect::<Vec<_>>(),
            "settings": self.settings,
            "links": self.links.observe(),
        }))
    }
}
