//! `Peer`: one participant. Owns its two transports (publisher: the client offers;
//! subscriber: the node offers), keeps what it should receive in step with what its
//! subscriber connection has negotiated, and outlives a dropped socket for the resume grace
//! period.

use super::router::Deliver;
use super::transport::{self, SubSlot, Transport, TransportError, TransportEvent};
use super::{NodeCtx, Observe};
use crate::counters::{Kind, Live};
use crate::media::forward::{DownTrack, TrackSource};
use crate::media::sdp;
use actix::prelude::*;
use protocol::cluster::{self as wire, PeerCmd, RelayBody, RelayMessage};
use protocol::signal::{IceCandidate, PcKind, ServerMessage};
use protocol::{ErrorCode, NodeId, RoomId, TrackId, UserId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Whom a `Peer` stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRole {
    /// A participant: its signaling goes to its session through the router.
    Client,
    /// The sending end of a relay link to another node of the room: it receives this node's
    /// own tracks that the other node wants, and its offers travel over NATS.
    RelayOut { to: NodeId, link: u64 },
    /// The receiving end of a relay link from another node: the other node offers its
    /// tracks, as a client's publisher connection would.
    RelayIn { from: NodeId, link: u64 },
}

impl PeerRole {
    /// The node at the other end of a relay link.
    pub fn relay_node(&self) -> Option<(&NodeId, u64)> {
        match self {
            PeerRole::Client => None,
            PeerRole::RelayOut { to, link } => Some((to, *link)),
            PeerRole::RelayIn { from, link } => Some((from, *link)),
        }
    }
}

/// What a peer tells its room.
#[derive(Message)]
#[rtype(result = "()")]
pub enum PeerEvent {
    /// A publisher's connection delivered a new track.
    TrackPublished(Arc<TrackSource>),
    /// A published track ended.
    TrackEnded { owner: UserId, track_id: TrackId },
    /// A subscriber's connection negotiated a down track: start forwarding to it.
    DownTrackReady(Arc<DownTrack>),
    /// The peer ended (leave, connection failure, resume grace over). `leaving`: the client
    /// sent `leave`.
    Gone {
        user: UserId,
        peer: Addr<Peer>,
        leaving: bool,
    },
}

/// What a participant may do; the room API changes them while it is in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grants {
    pub can_publish: bool,
    pub can_subscribe: bool,
}

pub struct Peer {
    user: UserId,
    role: PeerRole,
    room_id: RoomId,
    grants: Grants,
    /// Tracks its connection still carries while it may not publish: not in the room, and
    /// published again if it may again.
    withheld: HashMap<TrackId, Arc<TrackSource>>,
    /// The client sent `leave`.
    leaving: bool,
    /// The room this peer belongs to, which handles its [`PeerEvent`]s.
    room: Recipient<PeerEvent>,
    node: NodeCtx,
    publisher: Option<Addr<Transport>>,
    subscriber: Option<Addr<Transport>>,
    /// What this participant should receive.
    wanted: BTreeMap<TrackId, Arc<TrackSource>>,
    /// What its subscriber connection carries (negotiated or offered).
    current: HashMap<TrackId, SubSlot>,
    /// Slots added by the outstanding offer, bound when the answer arrives.
    offered: Option<Vec<SubSlot>>,
    /// A subscribe offer is being built or awaits its answer.
    negotiating: bool,
    /// `wanted` changed while negotiating.
    dirty: bool,
    /// Tracks this participant publishes, by id.
    own_tracks: HashMap<TrackId, Arc<TrackSource>>,
    /// ICE ufrag of the publisher connection's last offer: a new one means a new connection.
    publisher_ufrag: Option<String>,
    /// What each section of the last accepted publish offer sent.
    publisher_sending: sdp::SendingByMid,
    /// Packets written before the subscriber connection is up are lost, so down tracks wait
    /// for it before they join the forwarding tables (and ask for a keyframe).
    subscriber_connected: bool,
    pending_ready: Vec<Arc<DownTrack>>,
    /// Counts socket attachments so a stale grace timer does nothing.
    attach_epoch: u64,
    detached: bool,
    /// The session a `resume` attached (0: one on another node); `None` while the joining
    /// session owns it. Only the attached session's departure starts the grace period.
    attached: Option<u64>,
    _live: Live,
}

impl Peer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        user: UserId,
        role: PeerRole,
        room_id: RoomId,
        grants: Grants,
        room: Recipient<PeerEvent>,
        node: NodeCtx,
    ) -> Self {
        let live = Live::new(&node.counters, Kind::Peer);
        Peer {
            user,
            role,
            room_id,
            grants,
            withheld: HashMap::new(),
            leaving: false,
            room,
            node,
            publisher: None,
            subscriber: None,
            wanted: BTreeMap::new(),
            current: HashMap::new(),
            offered: None,
            negotiating: false,
            dirty: false,
            own_tracks: HashMap::new(),
            publisher_ufrag: None,
            publisher_sending: sdp::SendingByMid::new(),
            subscriber_connected: false,
            pending_ready: Vec::new(),
            attach_epoch: 0,
            detached: false,
            attached: None,
            _live: live,
        }
    }

    fn tell(&self, msg: ServerMessage) {
        let body = match (&self.role, msg) {
            (PeerRole::Client, msg) => {
                return self.node.router.do_send(Deliver {
                    to: self.user.clone(),
                    room: self.room_id.clone(),
                    msg,
                })
            }
            (PeerRole::RelayOut { .. }, ServerMessage::SubscribeOffer { sdp }) => {
                RelayBody::Offer { sdp }
            }
            (PeerRole::RelayIn { .. }, ServerMessage::PublishAnswer { sdp }) => {
                RelayBody::Answer { sdp }
            }
            (role, msg) => {
                return tracing::warn!(room = %self.room_id, ?role, ?msg, "relay link signaling not sent");
            }
        };
        if let (Some((to, link)), Some(cluster)) = (self.role.relay_node(), &self.node.cluster) {
            let msg = RelayMessage {
                v: wire::VERSION,
                room: self.room_id.clone(),
                from: self.node.config.node_id.clone(),
                link,
                body,
            };
            cluster.publish(wire::node_relay(to), &msg);
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) {
        self.tell(ServerMessage::error(code, message));
    }

    fn transport_error(&self, what: &str, e: TransportError) {
        let code = match e {
            TransportError::InvalidSdp(_) => ErrorCode::BadRequest,
            TransportError::Webrtc(_) => ErrorCode::Internal,
            TransportError::Gone => ErrorCode::Unavailable,
        };
        tracing::info!(user = %self.user, error = %e, "{what} failed");
        self.error(code, format!("{what}: {e}"));
    }

    /// Starts building the next subscribe offer if one is due and none is outstanding.
    fn negotiate(&mut self, ctx: &mut Context<Self>) {
        if self.negotiating || self.detached {
            self.dirty = true;
            return;
        }
        let to_remove: Vec<TrackId> = self
            .current
            .keys()
            .filter(|id| !self.wanted.contains_key(*id))
            .cloned()
            .collect();
        let to_add: Vec<Arc<TrackSource>> = self
            .wanted
            .iter()
            .filter(|(id, _)| !self.current.contains_key(*id))
            .map(|(_, s)| s.clone())
            .collect();
        if to_remove.is_empty() && to_add.is_empty() {
            return;
        }
        self.negotiating = true;
        self.dirty = false;
        let removed: Vec<_> = to_remove
            .iter()
            .filter_map(|id| self.current.remove(id))
            .collect();
        let transport = self.transport(PcKind::Subscriber, ctx);
        async move {
            let (addr, sub) = transport.await?;
            for slot in removed {
                sub.send(transport::RemoveTrack(slot))
                    .await
                    .map_err(|_| TransportError::Gone)??;
            }
            let mut slots = Vec::with_capacity(to_add.len());
            for source in to_add {
                slots.push(
                    sub.send(transport::AddTrack(source))
                        .await
                        .map_err(|_| TransportError::Gone)??,
                );
            }
            let sdp = sub
                .send(transport::CreateOffer)
                .await
                .map_err(|_| TransportError::Gone)??;
            Ok::<_, TransportError>((addr, slots, sdp))
        }
        .into_actor(self)
        .map(|res, act, ctx| match res {
            Ok((new_transport, slots, sdp)) => {
                if let Some(t) = new_transport {
                    act.subscriber = Some(t);
                }
                for s in &slots {
                    act.current.insert(s.source.id.clone(), s.clone());
                }
                act.offered = Some(slots);
                act.tell(ServerMessage::SubscribeOffer { sdp });
            }
            Err(e) => {
                act.negotiating = false;
                act.transport_error("subscribe offer", e);
                if act.dirty {
                    act.negotiate(ctx);
                }
            }
        })
        .wait(ctx);
    }

    /// The connection of `kind`: the existing one, or a new one (returned in the first slot
    /// too, for the caller to keep once the future has run).
    fn transport(
        &self,
        kind: PcKind,
        ctx: &mut Context<Self>,
    ) -> impl std::future::Future<
        Output = Result<(Option<Addr<Transport>>, Addr<Transport>), TransportError>,
    > + 'static {
        let existing = match kind {
            PcKind::Publisher => self.publisher.clone(),
            PcKind::Subscriber => self.subscriber.clone(),
        };
        let (user, media, me) = (
            self.user.clone(),
            self.node.media.clone(),
            ctx.address().recipient(),
        );
        let relayed_from = match &self.role {
            PeerRole::RelayIn { from, .. } => Some(from.clone()),
            _ => None,
        };
        let relay = self.role != PeerRole::Client;
        let shard = self.room_id.to_string();
        async move {
            match existing {
                Some(t) => Ok((None, t)),
                None => {
                    let t = Transport::connect(kind, user, relay, relayed_from, me, media, &shard)
                        .await?
                        .start();
                    Ok((Some(t.clone()), t))
                }
            }
        }
    }

    fn stop_transports(&mut self) {
        for t in [self.publisher.take(), self.subscriber.take()]
            .into_iter()
            .flatten()
        {
            t.do_send(transport::Close);
        }
        self.current.clear();
        self.offered = None;
        self.negotiating = false;
        self.subscriber_connected = false;
        self.pending_ready.clear();
        self.publisher_ufrag = None;
        self.publisher_sending.clear();
        self.withheld.clear();
        self.unpublish_all();
    }

    /// Tells the room this participant's tracks are gone (their connection is closing).
    fn unpublish_all(&mut self) {
        let all: Vec<TrackId> = self.own_tracks.keys().cloned().collect();
        for track_id in all {
            self.end_track(track_id);
        }
    }

    /// Unpublishes the tracks an accepted offer no longer sends (their section went
    /// `inactive`/`recvonly`, or sends another SSRC now).
    fn unpublish_stopped(&mut self, offer: &str) {
        let (stopped, sending) = sdp::stopped_ssrcs(&self.publisher_sending, offer);
        self.publisher_sending = sending;
        let ended: Vec<TrackId> = self
            .own_tracks
            .iter()
            .filter(|(_, s)| stopped.contains(&s.media_ssrc))
            .map(|(id, _)| id.clone())
            .collect();
        for track_id in ended {
            self.end_track(track_id);
        }
    }

    /// Forgets one of this participant's tracks and tells the room, which empties its
    /// forwarding table and tells the others. A track already ended is ignored.
    fn end_track(&mut self, track_id: TrackId) {
        // A relay link's tracks belong to the publishers on the other node.
        if let Some(source) = self.own_tracks.remove(&track_id) {
            self.room.do_send(PeerEvent::TrackEnded {
                owner: source.owner.clone(),
                track_id,
            });
        }
    }

    fn announce_ready(&mut self, dt: Arc<DownTrack>) {
        if self.subscriber_connected {
            self.room.do_send(PeerEvent::DownTrackReady(dt));
        } else {
            self.pending_ready.push(dt);
        }
    }
}

impl Actor for Peer {
    type Context = Context<Self>;

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        self.stop_transports();
        self.room.do_send(PeerEvent::Gone {
            user: self.user.clone(),
            peer: ctx.address(),
            leaving: self.leaving,
        });
    }
}

/// Hands a client's signaling command to its participant, whether the command came from a
/// socket on this node (`session_id` of that socket) or over NATS from another node (0).
pub fn command(peer: &Addr<Peer>, session_id: u64, cmd: PeerCmd) {
    match cmd {
        PeerCmd::Publish { sdp } => peer.do_send(Publish { sdp }),
        PeerCmd::SubscribeAnswer { sdp } => peer.do_send(SubscribeAnswer { sdp }),
        PeerCmd::Candidate { pc, candidate } => peer.do_send(RemoteCandidate { pc, candidate }),
        PeerCmd::SessionGone { leaving } => peer.do_send(SessionGone {
            superseded: false,
            session_id,
            leaving,
        }),
        PeerCmd::SessionAttached => peer.do_send(SessionAttached { session_id }),
    }
}

/// The client's `publish` offer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub sdp: String,
}

impl Handler<Publish> for Peer {
    type Result = ();
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        if !self.grants.can_publish {
            return self.error(ErrorCode::Forbidden, "token does not allow publishing");
        }
        // The SDP fuzzer's planted fault: an offer with more than two `a=mid` lines.
        crate::planted_panic("sdp", || msg.sdp.matches("a=mid:").count() > 2);
        let max = self.node.config.limits.tracks_per_publisher;
        let tracks = sdp::sending_tracks(&msg.sdp);
        if tracks > max {
            crate::limits::hit("tracks_per_publisher");
            let text = format!("the offer sends {tracks} tracks; at most {max} per publisher");
            return self.error(ErrorCode::Forbidden, text);
        }
        let ufrag = sdp::ice_ufrag(&msg.sdp).map(str::to_owned);
        if self.publisher.is_some() && ufrag.is_some() && ufrag != self.publisher_ufrag {
            // The client made a new publisher connection: the old one and its tracks go.
            tracing::info!(user = %self.user, "new publisher connection replaces the old one");
            if let Some(old) = self.publisher.take() {
                old.do_send(transport::Close);
            }
            self.publisher_sending.clear();
            self.unpublish_all();
        }
        let transport = self.transport(PcKind::Publisher, ctx);
        let offer = msg.sdp.clone();
        async move {
            let (fresh, t) = transport.await?;
            let answer = t
                .send(transport::ApplyOffer(msg.sdp))
                .await
                .map_err(|_| TransportError::Gone)?;
            Ok::<_, TransportError>((fresh, answer))
        }
        .into_actor(self)
        .map(move |res, act, _| match res {
            Ok((fresh, answer)) => {
                if let Some(t) = fresh {
                    act.publisher = Some(t);
                }
                match answer {
                    Ok(sdp) => {
                        act.publisher_ufrag = ufrag;
                        act.unpublish_stopped(&offer);
                        act.tell(ServerMessage::PublishAnswer { sdp });
                    }
                    Err(e) => act.transport_error("publish", e),
                }
            }
            Err(e) => act.transport_error("publish", e),
        })
        .wait(ctx);
    }
}

/// The client's answer to the latest `subscribe_offer`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeAnswer {
    pub sdp: String,
}

impl Handler<SubscribeAnswer> for Peer {
    type Result = ();
    fn handle(&mut self, msg: SubscribeAnswer, ctx: &mut Context<Self>) {
        let (Some(sub), Some(slots)) = (self.subscriber.clone(), self.offered.clone()) else {
            return self.error(ErrorCode::BadRequest, "no subscribe_offer is outstanding");
        };
        let apply = transport::ApplyAnswer {
            sdp: msg.sdp,
            slots: slots.clone(),
        };
        async move { sub.send(apply).await.map_err(|_| TransportError::Gone)? }
            .into_actor(self)
            .map(move |res, act, ctx| {
                let pts = match res {
                    Ok(pts) => pts,
                    // The offer stays outstanding: the client may answer again.
                    Err(e) => return act.transport_error("subscribe answer", e),
                };
                act.offered = None;
                act.negotiating = false;
                let counters = act.node.counters.clone();
                for (slot, pt) in slots.into_iter().zip(pts) {
                    let Some(pt) = pt else {
                        tracing::info!(user = %act.user, track = %slot.source.id, "subscriber refused the codec");
                        continue;
                    };
                    let dt = DownTrack::new(
                        act.user.clone(),
                        matches!(act.role, PeerRole::RelayOut { .. }),
                        slot.source.id.clone(),
                        &slot.conn,
                        slot.ssrc,
                        pt,
                        &counters,
                    );
                    act.announce_ready(dt);
                }
                act.negotiate(ctx);
            })
            .wait(ctx);
    }
}

/// A trickled candidate from the client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteCandidate {
    pub pc: PcKind,
    pub candidate: IceCandidate,
}

impl Handler<RemoteCandidate> for Peer {
    type Result = ();
    fn handle(&mut self, msg: RemoteCandidate, _: &mut Context<Self>) {
        let t = match msg.pc {
            PcKind::Publisher => &self.publisher,
            PcKind::Subscriber => &self.subscriber,
        };
        match t {
            Some(t) => t.do_send(transport::AddCandidate(msg.candidate)),
            None => self.error(
                ErrorCode::BadRequest,
                "candidate for a connection that does not exist yet",
            ),
        }
    }
}

/// The room wants this participant to receive a track.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Arc<TrackSource>);

impl Handler<Subscribe> for Peer {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        if self.grants.can_subscribe && msg.0.owner != self.user {
            self.wanted.insert(msg.0.id.clone(), msg.0);
            self.negotiate(ctx);
        }
    }
}

/// The track is gone from the room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub track_id: TrackId,
}

impl Handler<Unsubscribe> for Peer {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) {
        if self.wanted.remove(&msg.track_id).is_some() {
            self.negotiate(ctx);
        }
    }
}

impl Handler<TransportEvent> for Peer {
    type Result = ();
    fn handle(&mut self, msg: TransportEvent, ctx: &mut Context<Self>) {
        match msg {
            TransportEvent::TrackArrived(source) => {
                // The offer was counted; this holds however the tracks came (an offer
                // without SSRC lines, renegotiations adding one at a time).
                let max = self.node.config.limits.tracks_per_publisher;
                // A relay link carries the other node's publishers' tracks: not counted.
                if self.role.relay_node().is_none()
                    && self.own_tracks.len() >= max
                    && !self.own_tracks.contains_key(&source.id)
                {
                    crate::limits::hit("tracks_per_publisher");
                    let text = format!("at most {max} tracks per publisher");
                    return self.error(ErrorCode::Forbidden, text);
                }
                if self.role == PeerRole::Client && !self.grants.can_publish {
                    // Offered before its grant was taken away: kept back.
                    self.withheld.insert(source.id.clone(), source);
                    return;
                }
                self.own_tracks.insert(source.id.clone(), source.clone());
                self.room.do_send(PeerEvent::TrackPublished(source));
            }
            TransportEvent::TrackEnded(track_id) => {
                self.withheld.remove(&track_id);
                self.end_track(track_id)
            }
            TransportEvent::Connected(PcKind::Subscriber) => {
                self.subscriber_connected = true;
                for dt in std::mem::take(&mut self.pending_ready) {
                    self.room.do_send(PeerEvent::DownTrackReady(dt));
                }
            }
            TransportEvent::Connected(PcKind::Publisher) => {}
            TransportEvent::Failed(pc) => {
                tracing::info!(user = %self.user, ?pc, "connection failed; removing participant");
                ctx.stop();
            }
        }
    }
}

/// The participant's socket closed. `leaving` (the client sent `leave`) ends the participant
/// now; otherwise it waits the resume grace period.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionGone {
    pub session_id: u64,
    pub leaving: bool,
    /// The socket was closed because a newer socket of the user took its route: that one's
    /// join replaces this participant (here or on another node) or its resume attaches to
    /// it, usually at once. The participant waits at least [`SUPERSEDED_GRACE`] for that,
    /// whatever the resume grace, and goes if neither happens (a failed stale resume).
    pub superseded: bool,
}

/// How long a participant whose socket was superseded waits for the newer socket's join or
/// resume to take it over.
pub const SUPERSEDED_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Handler<SessionGone> for Peer {
    type Result = ();
    fn handle(&mut self, msg: SessionGone, ctx: &mut Context<Self>) {
        // A socket replaced by the one a resume attached since: not this peer's any more.
        if self.attached.is_some_and(|s| s != msg.session_id) {
            tracing::debug!(user = %self.user, session = msg.session_id, "a replaced socket's departure ignored");
            return;
        }
        let mut grace = self.node.config.resume_grace;
        if msg.superseded {
            grace = grace.max(SUPERSEDED_GRACE);
        }
        if msg.leaving || grace.is_zero() {
            self.leaving = msg.leaving;
            return ctx.stop();
        }
        self.detached = true;
        let epoch = self.attach_epoch;
        tracing::debug!(user = %self.user, session = msg.session_id, "socket gone; waiting for resume");
        ctx.run_later(grace, move |act, ctx| {
            if act.detached && act.attach_epoch == epoch {
                tracing::info!(user = %act.user, "resume grace expired");
                ctx.stop();
            }
        });
    }
}

/// A new socket resumed this participant. Its media connections start afresh: the client
/// publishes again and answers a new subscribe offer (PROTOCOL.md "A join, end to end" 5).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionAttached {
    pub session_id: u64,
}

impl Handler<SessionAttached> for Peer {
    type Result = ();
    fn handle(&mut self, msg: SessionAttached, ctx: &mut Context<Self>) {
        self.attached = Some(msg.session_id);
        self.attach_epoch += 1;
        self.detached = false;
        self.stop_transports();
        self.negotiate(ctx);
    }
}

/// The room API changed the participant's grants. Losing `can_publish` ends its tracks
/// (their connection stays, and they come back if it may publish again); its later
/// `publish` offers are refused. Losing `can_subscribe` takes every track away from it (a
/// fresh subscribe offer); the room subscribes it to everything when it gains it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetGrants(pub Grants);

impl Handler<SetGrants> for Peer {
    type Result = ();
    fn handle(&mut self, msg: SetGrants, ctx: &mut Context<Self>) {
        let (old, new) = (self.grants, msg.0);
        self.grants = new;
        if old.can_publish && !new.can_publish {
            let ids: Vec<TrackId> = self.own_tracks.keys().cloned().collect();
            for id in ids {
                if let Some(source) = self.own_tracks.get(&id).cloned() {
                    self.withheld.insert(id.clone(), source);
                }
                self.end_track(id);
            }
        }
        if !old.can_publish && new.can_publish {
            for (id, source) in std::mem::take(&mut self.withheld) {
                self.own_tracks.insert(id, source.clone());
                self.room.do_send(PeerEvent::TrackPublished(source));
            }
        }
        if old.can_subscribe && !new.can_subscribe && !self.wanted.is_empty() {
            self.wanted.clear();
            self.negotiate(ctx);
        }
    }
}

/// The room removed this participant.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for Peer {
    type Result = ();
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Observe> for Peer {
    type Result = MessageResult<Observe>;
    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        MessageResult(serde_json::json!({
            "user": self.user,
            "role": format!("{:?}", self.role),
            "publisher": self.publisher.is_some(),
            "subscriber": self.subscriber.is_some(),
            "wanted": self.wanted.keys().collect::<Vec<_>>(),
            "negotiated": self.current.keys().collect::<Vec<_>>(),
            "negotiating": self.negotiating,
            "detached": self.detached,
            "can_publish": self.grants.can_publish,
            "can_subscribe": self.grants.can_subscribe,
            "withheld": self.withheld.keys().collect::<Vec<_>>(),
        }))
    }
}
