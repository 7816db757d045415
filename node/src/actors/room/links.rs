//! A room across nodes: how one node's [`Room`] learns the other nodes' participants, tells
//! them about its own, and exchanges tracks with them over relay links.
//!
//! - **Membership**: every change of a local participant is published on
//!   `room.<room>.events` with this node's sequence number; the room subscribes to that
//!   subject before it serves its first join, then asks the room's other nodes for their
//!   snapshots. [`RemoteMembers`] applies events and snapshots and says what to tell clients.
//! - **Relay links**: a relay is a pair of peers at two nodes, each a WebRTC connection. The
//!   node whose participants want tracks (the receiver) says which of the other node's own
//!   tracks it wants (`want`); the other node (the sender) offers exactly those on its
//!   `RelayOut` peer, and the receiver answers on its `RelayIn` peer, whose tracks then join
//!   the room like local ones (same participant and track ids). A sender only ever sends its
//!   own members' tracks, never relayed ones, so the full mesh has no loops, and each track
//!   crosses each link once however many subscribers are behind it.

use super::Room;
use crate::actors::peer::{self, Peer, PeerRole};
use crate::actors::router::Deliver;
use crate::media::forward::TrackSource;
use crate::membership::RemoteMembers;
use actix::prelude::*;
use futures::StreamExt;
use protocol::cluster::{
    self as wire, RelayBody, RelayMessage, RoomChange, RoomEvent, RoomState, RoomStateRequest,
};
use protocol::signal::ServerMessage;
use protocol::{NodeId, TrackId, UserId};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How long a room may wait for its events subscription and the other nodes' snapshots
/// before it serves its first join anyway (what is missing then arrives as notices).
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// The sending end of a relay link and the tracks its node asked for.
struct Sender {
    peer: Addr<Peer>,
    user: UserId,
    link: u64,
    wanted: BTreeSet<TrackId>,
    /// The receiver asked for every track of this node's participants, later ones too.
    all: bool,
}

/// The receiving end of a relay link.
struct Receiver {
    peer: Addr<Peer>,
    link: u64,
}

/// A room's view of its other nodes and its relay links with them.
pub struct Links {
    me: NodeId,
    pub remote: RemoteMembers,
    /// Nodes the directory named at the first join, asked for snapshots once subscribed.
    initial: Vec<NodeId>,
    /// This node's last event number for the room.
    seq: u64,
    senders: HashMap<NodeId, Sender>,
    receivers: HashMap<NodeId, Receiver>,
    /// The last `want` sent to each node.
    /// `None`: everything (asked before the node's tracks were known).
    sent_wants: HashMap<NodeId, Option<BTreeSet<TrackId>>>,
    snapshots_pending: HashSet<NodeId>,
    events: Option<tokio::task::JoinHandle<()>>,
}

impl Links {
    pub fn new(me: &NodeId, nodes: Vec<NodeId>) -> Self {
        Links {
            me: me.clone(),
            remote: RemoteMembers::new(),
            initial: nodes.into_iter().filter(|n| n != me).collect(),
            seq: 0,
            senders: HashMap::new(),
            receivers: HashMap::new(),
            sent_wants: HashMap::new(),
            snapshots_pending: HashSet::new(),
            events: None,
        }
    }

    /// The sending ends of every relay link.
    pub fn senders(&self) -> impl Iterator<Item = &Addr<Peer>> {
        self.senders.values().map(|s| &s.peer)
    }

    /// The sending ends that want a track just published here: those that asked for it
    /// before it existed, and those that asked for everything.
    pub fn senders_wanting(&mut self, track: &TrackId) -> Vec<Addr<Peer>> {
        self.senders
            .values_mut()
            .filter_map(|s| {
                if s.all {
                    s.wanted.insert(track.clone());
                }
                s.wanted.contains(track).then(|| s.peer.clone())
            })
            .collect()
    }

    /// Whether `user` is the stand-in of a relay link's sending end.
    pub fn is_sender(&self, user: &UserId) -> bool {
        self.senders.values().any(|s| &s.user == user)
    }

    /// Forgets a relay peer that stopped on its own (its connection failed): the node it
    /// linked to and the link's incarnation. A link closed on purpose is forgotten first.
    pub fn relay_gone(&mut self, peer: &Addr<Peer>) -> Option<(NodeId, u64)> {
        if let Some(n) = self.senders.iter().find(|(_, s)| &s.peer == peer) {
            let n = n.0.clone();
            let s = self.senders.remove(&n)?;
            return Some((n, s.link));
        }
        let n = self
            .receivers
            .iter()
            .find(|(_, r)| &r.peer == peer)?
            .0
            .clone();
        let r = self.receivers.remove(&n)?;
        self.sent_wants.remove(&n);
        Some((n, r.link))
    }

    /// Nodes this node has a relay link with, either way.
    pub fn linked(&self) -> Vec<NodeId> {
        let all: BTreeSet<&NodeId> = self.senders.keys().chain(self.receivers.keys()).collect();
        all.into_iter().cloned().collect()
    }

    pub fn observe(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "sending_to": self.senders.iter().map(|(n, s)| serde_json::json!({"node": n, "tracks": s.wanted})).collect::<Vec<_>>(),
            "receiving_from": self.receivers.keys().collect::<Vec<_>>(),
            "wants": self.sent_wants,
        })
    }

    pub fn stop_events(&mut self) {
        if let Some(task) = self.events.take() {
            task.abort();
        }
    }
}

/// The stand-in user id of a relay link's peer on this node. `~relay.` is reserved: join
/// tokens for such users are refused.
pub fn relay_user(node: &NodeId) -> Option<UserId> {
    UserId::new(format!("{RELAY_USER_PREFIX}{node}")).ok()
}

pub const RELAY_USER_PREFIX: &str = "~relay.";

impl Room {
    /// Subscribes to the room's events and fetches the other nodes' snapshots before the
    /// room handles anything else (its first join then lists everyone).
    pub(super) fn join_cluster(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.node.cluster.clone() else {
            return;
        };
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel::<()>();
        let (addr, client, me) = (
            ctx.address(),
            cluster.client.clone(),
            self.node.config.node_id.clone(),
        );
        let subject = wire::room_events(&self.id);
        self.links.events = Some(cluster.rt.spawn(async move {
            // The snapshot requests below go out on the same connection after the SUB, so
            // the server has the subscription before any node answers: no event published
            // after a snapshot is missed, and no round trip is spent on a flush.
            let sub = client.subscribe(subject.clone()).await;
            let _ = subscribed_tx.send(());
            let Ok(mut sub) = sub else {
                return tracing::warn!(%subject, "cannot subscribe to room events");
            };
            while let Some(m) = sub.next().await {
                match serde_json::from_slice::<RoomEvent>(&m.payload) {
                    Ok(ev) if ev.v == wire::VERSION && ev.node != me => {
                        addr.do_send(RemoteEvent(ev))
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%subject, error = %e, "bad room event"),
                }
            }
        }));
        let initial = std::mem::take(&mut self.links.initial);
        self.links.snapshots_pending.extend(initial.iter().cloned());
        // A room new on this node is joined by a participant who (by default) subscribes:
        // ask every other node for all its tracks now, alongside the snapshot request, so the
        // relay links are under way a round trip earlier. The snapshot then narrows the ask.
        for n in &initial {
            self.want_everything(&cluster, n, ctx);
        }
        let room = self.id.clone();
        let sync = async move {
            let _ = tokio::time::timeout(SYNC_TIMEOUT, subscribed).await;
            let asks = initial.into_iter().map(|n| {
                let (cluster, room) = (cluster.clone(), room.clone());
                async move {
                    let st = fetch_state(&cluster, &n, &room).await;
                    (n, st)
                }
            });
            futures::future::join_all(asks).await
        };
        ctx.wait(sync.into_actor(self).map(|states, act, ctx| {
            for (node, st) in states {
                act.apply_snapshot(node, st, ctx);
            }
        }));
    }

    /// Nodes the directory lists for the room: ask each one not heard of yet for its
    /// participants.
    pub(super) fn learn_nodes(&mut self, nodes: Vec<NodeId>, ctx: &mut Context<Self>) {
        for n in nodes {
            if n != self.links.me && !self.links.remote.knows(&n) {
                self.request_snapshot(n, ctx);
            }
        }
    }

    /// Tells the room's other nodes about a change of this node's participants.
    pub(super) fn announce(&mut self, change: RoomChange) {
        let Some(cluster) = &self.node.cluster else {
            return;
        };
        self.links.seq += 1;
        let ev = RoomEvent {
            v: wire::VERSION,
            room: self.id.clone(),
            node: self.links.me.clone(),
            seq: self.links.seq,
            change,
        };
        cluster.publish(wire::room_events(&self.id), &ev);
    }

    fn tell_all(&self, msg: &ServerMessage) {
        for id in self.members.keys() {
            self.node.router.do_send(Deliver {
                to: id.clone(),
                room: self.id.clone(),
                msg: msg.clone(),
            });
        }
    }

    /// Tells local clients what changed on other nodes.
    fn apply_notices(&mut self, notices: Vec<ServerMessage>) {
        for notice in notices {
            match &notice {
                // The same user joined on another node: that participant replaces this
                // node's one (one participant per user in a room, cluster-wide), and local
                // clients, who saw the user already, hear nothing new.
                ServerMessage::ParticipantJoined { participant }
                    if self.members.contains_key(&participant.id) =>
                {
                    tracing::info!(room = %self.id, user = %participant.id, "participant replaced by a join on another node");
                    self.remove_member(&participant.id, super::Departure::Replaced);
                }
                // Still in the room, here or on another node.
                ServerMessage::ParticipantLeft { id }
                    if self.members.contains_key(id) || self.links.remote.contains(id) => {}
                _ => self.tell_all(&notice),
            }
        }
    }

    fn request_snapshot(&mut self, node: NodeId, ctx: &mut Context<Self>) {
        let Some(cluster) = self.node.cluster.clone() else {
            return;
        };
        if !self.links.snapshots_pending.insert(node.clone()) {
            return;
        }
        let room = self.id.clone();
        ctx.spawn(
            async move {
                let st = fetch_state(&cluster, &node, &room).await;
                (node, st)
            }
            .into_actor(self)
            .map(|(node, st), act, ctx| act.apply_snapshot(node, st, ctx)),
        );
    }

    fn apply_snapshot(&mut self, node: NodeId, st: Option<RoomState>, ctx: &mut Context<Self>) {
        self.links.snapshots_pending.remove(&node);
        let Some(st) = st else {
            return;
        };
        if !st.present {
            self.close_link(&node);
        }
        let notices = self.links.remote.apply_snapshot(&st);
        self.apply_notices(notices);
        self.update_wants(ctx);
    }

    /// Opens the receiving end of a new incarnation of the link from `n`; its id.
    fn open_receiver(&mut self, n: &NodeId, ctx: &mut Context<Self>) -> Option<u64> {
        let link = rand::random::<u64>();
        let role = PeerRole::RelayIn {
            from: n.clone(),
            link,
        };
        let peer = self.relay_peer(role, ctx)?;
        self.links
            .receivers
            .insert(n.clone(), Receiver { peer, link });
        Some(link)
    }

    fn want_everything(
        &mut self,
        cluster: &crate::cluster::Cluster,
        n: &NodeId,
        ctx: &mut Context<Self>,
    ) {
        let Some(link) = self.open_receiver(n, ctx) else {
            return;
        };
        let body = RelayBody::Want {
            tracks: Vec::new(),
            all: true,
        };
        relay_send(cluster, &self.id, &self.links.me, n, link, body);
        self.links.sent_wants.insert(n.clone(), None);
    }

    /// Asks each other node for exactly the tracks this node's subscribers want from it,
    /// when that changed; a node with wanted tracks gets a receiving relay peer here.
    pub(super) fn update_wants(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.node.cluster.clone() else {
            return;
        };
        // Before its first member is admitted (the room syncing with the other nodes) and
        // after its last one left (it is closing), a room keeps what it asked for: narrowing
        // an early "everything" to nothing would tear down the link being set up for the
        // join that created the room.
        if self.members.is_empty() {
            return;
        }
        let any_subscriber = self.members.values().any(|m| m.claims.can_subscribe);
        let nodes: Vec<NodeId> = self.links.remote.nodes().cloned().collect();
        for n in nodes {
            let want = if any_subscriber {
                self.links.remote.tracks_on(&n)
            } else {
                BTreeSet::new()
            };
            let sent = self.links.sent_wants.get(&n);
            let unchanged = matches!(sent, Some(Some(s)) if *s == want);
            if unchanged || (sent.is_none() && want.is_empty()) {
                continue;
            }
            if !want.is_empty() && !self.links.receivers.contains_key(&n) {
                self.open_receiver(&n, ctx);
            }
            // An idle link (nothing wanted) keeps its incarnation; a node never linked gets
            // nothing (`sent` was none and `want` empty, skipped above).
            let Some(link) = self.links.receivers.get(&n).map(|r| r.link) else {
                continue;
            };
            tracing::debug!(room = %self.id, node = %n, tracks = want.len(), "relay want");
            let body = RelayBody::Want {
                tracks: want.iter().cloned().collect(),
                all: false,
            };
            relay_send(&cluster, &self.id, &self.links.me, &n, link, body);
            self.links.sent_wants.insert(n, Some(want));
        }
    }

    fn relay_peer(&self, role: PeerRole, ctx: &mut Context<Self>) -> Option<Addr<Peer>> {
        let (node, _) = role.relay_node()?;
        let user = relay_user(node)?;
        let can_publish = matches!(role, PeerRole::RelayIn { .. });
        tracing::info!(room = %self.id, ?role, "relay link opens");
        Some(
            Peer::new(
                user,
                role,
                self.id.clone(),
                peer::Grants {
                    can_publish,
                    can_subscribe: !can_publish,
                },
                ctx.address().recipient(),
                self.node.clone(),
            )
            .start(),
        )
    }

    /// A track arrived over a relay link: this node's subscribers get it like a local one.
    pub(super) fn relayed_track(&mut self, source: Arc<TrackSource>) {
        if self.tracks.contains_key(&source.id) {
            source.clear_fanout();
            return;
        }
        for m in self.members.values() {
            if m.claims.can_subscribe {
                m.peer.do_send(peer::Subscribe(source.clone()));
            }
        }
        tracing::info!(room = %self.id, owner = %source.owner, track = %source.id, from = ?source.relayed_from, "relayed track arrived");
        self.tracks.insert(source.id.clone(), source);
    }

    /// Closes every relay link of the room here.
    pub(super) fn close_all_links(&mut self) {
        for n in self.links.linked() {
            self.close_link(&n);
        }
    }

    /// Closes both ends of the relay link with `node` here.
    fn close_link(&mut self, node: &NodeId) {
        self.close_sender(node);
        self.close_receiver(node);
    }

    fn close_sender(&mut self, node: &NodeId) {
        if let Some(s) = self.links.senders.remove(node) {
            for source in self.tracks.values() {
                source.remove_subscriber(&s.user);
            }
            s.peer.do_send(peer::Close);
        }
    }

    fn close_receiver(&mut self, node: &NodeId) {
        if let Some(r) = self.links.receivers.remove(node) {
            r.peer.do_send(peer::Close);
        }
        self.links.sent_wants.remove(node);
    }

    /// A relay peer stopped on its own: its connection failed (a partition, or the other
    /// node died). The other end hears that this incarnation is over, and the receiver opens
    /// a new one at once, as long as its participants still want the tracks; a new one that
    /// fails too is retried at the pace of ICE's failure timeout. The other node is also
    /// asked for its snapshot: a node that is gone answers "no responders" at once, and its
    /// participants leave this node's view of the room.
    pub(super) fn relay_failed(&mut self, node: NodeId, link: u64, ctx: &mut Context<Self>) {
        tracing::info!(room = %self.id, %node, link, "relay link failed");
        self.node
            .counters
            .relay_link_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(cluster) = &self.node.cluster {
            relay_send(
                cluster,
                &self.id,
                &self.links.me,
                &node,
                link,
                RelayBody::Close,
            );
            cluster.suspect(&node, "relay");
        }
        self.request_snapshot(node, ctx);
        self.update_wants(ctx);
    }

    /// The room closes on this node: the others forget its participants and close their
    /// links with it.
    pub(super) fn leave_cluster(&mut self) {
        let Some(cluster) = self.node.cluster.clone() else {
            return;
        };
        self.announce(RoomChange::NodeLeft);
        for n in self.links.linked() {
            let links = [
                self.links.senders.get(&n).map(|s| s.link),
                self.links.receivers.get(&n).map(|r| r.link),
            ];
            for link in links.into_iter().flatten() {
                relay_send(
                    &cluster,
                    &self.id,
                    &self.links.me,
                    &n,
                    link,
                    RelayBody::Close,
                );
            }
            self.close_link(&n);
        }
    }
}

fn relay_send(
    cluster: &crate::cluster::Cluster,
    room: &protocol::RoomId,
    me: &NodeId,
    to: &NodeId,
    link: u64,
    body: RelayBody,
) {
    let msg = RelayMessage {
        v: wire::VERSION,
        room: room.clone(),
        from: me.clone(),
        link,
        body,
    };
    cluster.publish(wire::node_relay(to), &msg);
}

async fn fetch_state(
    cluster: &crate::cluster::Cluster,
    node: &NodeId,
    room: &protocol::RoomId,
) -> Option<RoomState> {
    let ask = RoomStateRequest {
        v: wire::VERSION,
        room: room.clone(),
    };
    match cluster
        .request::<_, RoomState>(wire::node_room_state(node), &ask, SNAPSHOT_TIMEOUT)
        .await
    {
        Ok(st) if &st.node == node && &st.room == room => Some(st),
        Ok(_) => None,
        // Nobody serves that node's subjects: it is gone, and so are its participants.
        Err(crate::cluster::ClusterError::NoResponders(_)) => Some(RoomState {
            v: wire::VERSION,
            room: room.clone(),
            node: node.clone(),
            present: false,
            seq: 0,
            participants: Vec::new(),
        }),
        Err(e) => {
            tracing::debug!(%room, %node, error = %e, "room snapshot not fetched");
            None
        }
    }
}

/// An event of another node of the room.
#[derive(Message)]
#[rtype(result = "()")]
struct RemoteEvent(RoomEvent);

impl Handler<RemoteEvent> for Room {
    type Result = ();
    fn handle(&mut self, msg: RemoteEvent, ctx: &mut Context<Self>) {
        let applied = self.links.remote.apply_event(&msg.0);
        self.apply_notices(applied.notices);
        if let Some(n) = applied.node_left {
            self.close_link(&n);
        }
        if let Some(n) = applied.snapshot_from {
            self.request_snapshot(n, ctx);
        }
        self.update_wants(ctx);
    }
}

/// Relay link signaling from another node of the room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RelaySignal(pub RelayMessage);

impl Handler<RelaySignal> for Room {
    type Result = ();
    fn handle(&mut self, msg: RelaySignal, ctx: &mut Context<Self>) {
        let RelayMessage {
            from, link, body, ..
        } = msg.0;
        let sender_link = self.links.senders.get(&from).map(|s| s.link);
        let receiver_link = self.links.receivers.get(&from).map(|r| r.link);
        match body {
            RelayBody::Want { tracks, all } => {
                if sender_link != Some(link) {
                    // A new incarnation from the receiver: the old sending end goes.
                    self.close_sender(&from);
                    let role = PeerRole::RelayOut {
                        to: from.clone(),
                        link,
                    };
                    let (Some(peer), Some(user)) = (self.relay_peer(role, ctx), relay_user(&from))
                    else {
                        return;
                    };
                    let sender = Sender {
                        peer,
                        user,
                        link,
                        wanted: BTreeSet::new(),
                        all: false,
                    };
                    self.links.senders.insert(from.clone(), sender);
                }
                let Some(sender) = self.links.senders.get_mut(&from) else {
                    return;
                };
                let wanted: BTreeSet<TrackId> = if all {
                    let own = self.tracks.values().filter(|t| t.relayed_from.is_none());
                    own.map(|t| t.id.clone()).collect()
                } else {
                    tracks.into_iter().collect()
                };
                sender.all = all;
                for id in wanted.difference(&sender.wanted) {
                    // Only this node's own tracks cross a link: never a relayed one.
                    if let Some(src) = self.tracks.get(id).filter(|s| s.relayed_from.is_none()) {
                        sender.peer.do_send(peer::Subscribe(src.clone()));
                    }
                }
                for id in sender.wanted.difference(&wanted) {
                    sender.peer.do_send(peer::Unsubscribe {
                        track_id: id.clone(),
                    });
                }
                sender.wanted = wanted;
            }
            RelayBody::Offer { sdp } => match self.links.receivers.get(&from) {
                Some(r) if r.link == link => r.peer.do_send(peer::Publish { sdp }),
                _ => tracing::debug!(room = %self.id, %from, link, "stale relay offer ignored"),
            },
            RelayBody::Answer { sdp } => match self.links.senders.get(&from) {
                Some(s) if s.link == link => s.peer.do_send(peer::SubscribeAnswer { sdp }),
                _ => tracing::debug!(room = %self.id, %from, link, "stale relay answer ignored"),
            },
            RelayBody::Close => {
                if sender_link == Some(link) {
                    self.close_sender(&from);
                }
                if receiver_link == Some(link) {
                    self.close_receiver(&from);
                    // The sender ended this incarnation: open another if still wanted.
                    self.update_wants(ctx);
                }
            }
        }
    }
}

/// A coordinator found `node` dead. Its links close now (ICE would notice in seconds), its
/// participants' tracks end, and the participants themselves stay in the room for the
/// resume grace period: a client that resumes elsewhere in time never appears to have left.
/// Those still not back then leave with `participant_left`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomNodeGone(pub NodeId);

impl Handler<RoomNodeGone> for Room {
    type Result = ();
    fn handle(&mut self, msg: RoomNodeGone, ctx: &mut Context<Self>) {
        let node = msg.0;
        if node == self.links.me || !self.links.remote.knows(&node) {
            self.close_link(&node);
            return;
        }
        tracing::info!(room = %self.id, %node, "room node died; its participants wait for their resume");
        self.close_link(&node);
        let notices = self.links.remote.suspend(&node);
        self.apply_notices(notices);
        self.update_wants(ctx);
        let grace = self.node.config.resume_grace;
        ctx.run_later(grace, move |act, ctx| {
            let notices = act.links.remote.forget_dead(&node);
            if !notices.is_empty() {
                act.apply_notices(notices);
                act.update_wants(ctx);
            }
        });
    }
}

/// This node's own participants, for another node's snapshot request.
#[derive(Message)]
#[rtype(result = "RoomState")]
pub struct LocalState;

impl Handler<LocalState> for Room {
    type Result = MessageResult<LocalState>;
    fn handle(&mut self, _: LocalState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(RoomState {
            v: wire::VERSION,
            room: self.id.clone(),
            node: self.links.me.clone(),
            present: true,
            seq: self.links.seq,
            participants: self.local_participants(None),
        })
    }
}

/// The nodes this room has relay links with.
#[derive(Message)]
#[rtype(result = "Vec<NodeId>")]
pub struct ListLinks;

impl Handler<ListLinks> for Room {
    type Result = MessageResult<ListLinks>;
    fn handle(&mut self, _: ListLinks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.links.linked())
    }
}
