//! What one node knows of a room's participants on the *other* nodes of the room, kept from
//! their events (`room.<room>.events`) and snapshots (`node.<n>.room_state`).
//!
//! Each node is the source of truth for its own participants and numbers its events per
//! room from 1. An event that follows the last one seen from its node is applied; an older
//! one is ignored; a gap, or a node first heard of past its first event, asks for that
//! node's snapshot, which replaces what was known of it. Every change comes out as a
//! [`Notice`] for the local clients, so they see the whole room. No IO, no actors.

use protocol::cluster::{RoomChange, RoomEvent, RoomState};
use protocol::signal::{ParticipantInfo, ParticipantState, ServerMessage, TrackInfo};
use protocol::{NodeId, TrackId, UserId};
use std::collections::{BTreeMap, BTreeSet};

/// A change of the room as local clients are told it.
pub type Notice = ServerMessage;

#[derive(Debug, Default, Clone, PartialEq)]
struct NodeMembers {
    /// The last event applied (or the snapshot's).
    seq: u64,
    /// The node died: its participants wait for their resume elsewhere, without tracks,
    /// and nothing more is heard from it.
    suspended: bool,
    /// Participants in the order they were first heard of.
    participants: Vec<ParticipantState>,
}

impl NodeMembers {
    fn find(&mut self, user: &UserId) -> Option<&mut ParticipantState> {
        self.participants.iter_mut().find(|p| &p.id == user)
    }
}

/// What applying an event asks of the caller.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub notices: Vec<Notice>,
    /// Ask this node for its snapshot (a gap, or a node first heard of mid-stream).
    pub snapshot_from: Option<NodeId>,
    /// The node left the room: close the relay links with it.
    pub node_left: Option<NodeId>,
}

#[derive(Debug, Default)]
pub struct RemoteMembers {
    nodes: BTreeMap<NodeId, NodeMembers>,
    /// Participants of a suspended node that came back with a fresh room (a partition
    /// healed): still waited for, apart from what the node now hosts.
    revived: BTreeMap<NodeId, Vec<ParticipantState>>,
}

impl RemoteMembers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn knows(&self, node: &NodeId) -> bool {
        self.nodes.contains_key(node)
    }

    /// The live nodes (not suspended).
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.suspended)
            .map(|(id, _)| id)
    }

    pub fn is_suspended(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|n| n.suspended)
    }

    /// A node died: its participants' tracks end now; the participants stay until they
    /// come back through another node or [`RemoteMembers::forget`] removes them.
    pub fn suspend(&mut self, node: &NodeId) -> Vec<Notice> {
        let Some(n) = self.nodes.get_mut(node) else {
            return Vec::new();
        };
        n.suspended = true;
        let mut out = Vec::new();
        for p in &mut n.participants {
            for t in p.tracks.drain(..) {
                out.push(unpublished(&p.id, &t.id));
            }
        }
        out
    }

    /// A participant of a suspended node is back (joined here or on another node): it is
    /// no longer waited for. Whether it was.
    pub fn take_suspended(&mut self, user: &UserId) -> bool {
        let mut found = false;
        let waiting = self
            .nodes
            .values_mut()
            .filter(|n| n.suspended)
            .map(|n| &mut n.participants)
            .chain(self.revived.values_mut());
        for participants in waiting {
            let before = participants.len();
            participants.retain(|p| &p.id != user);
            found |= participants.len() != before;
        }
        found
    }

    /// The resume grace of a dead node is over: its participants still waited for leave,
    /// whether or not the node has come back since (what it hosts now stays).
    pub fn forget_dead(&mut self, node: &NodeId) -> Vec<Notice> {
        let mut gone = Vec::new();
        if self.is_suspended(node) {
            gone.extend(
                self.nodes
                    .remove(node)
                    .map(|n| n.participants)
                    .unwrap_or_default(),
            );
        }
        gone.extend(self.revived.remove(node).unwrap_or_default());
        gone.into_iter().flat_map(left).collect()
    }

    /// Every remote participant with its tracks, node by node (those waited for included).
    pub fn participants(&self) -> impl Iterator<Item = &ParticipantState> {
        self.nodes
            .values()
            .flat_map(|n| n.participants.iter())
            .chain(self.revived.values().flatten())
    }

    /// Whether `user` is a participant on some other node.
    pub fn contains(&self, user: &UserId) -> bool {
        self.node_of(user).is_some()
    }

    pub fn count(&self) -> usize {
        self.participants().count()
    }

    /// The node hosting a remote participant (for one waited for: its dead node).
    pub fn node_of(&self, user: &UserId) -> Option<&NodeId> {
        self.nodes
            .iter()
            .map(|(id, n)| (id, &n.participants))
            .chain(self.revived.iter())
            .find(|(_, participants)| participants.iter().any(|p| &p.id == user))
            .map(|(id, _)| id)
    }

    /// The tracks published on `node`, which a relay link from it would carry.
    pub fn tracks_on(&self, node: &NodeId) -> BTreeSet<TrackId> {
        self.nodes
            .get(node)
            .map(|n| {
                n.participants
                    .iter()
                    .flat_map(|p| p.tracks.iter().map(|t| t.id.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn apply_event(&mut self, ev: &RoomEvent) -> Applied {
        let mut out = Applied::default();
        if self.is_suspended(&ev.node) {
            // A dead node's stale events (it was stopped, or cut off) are not heard; its
            // first event of a fresh room (it fenced the old one, and came back) is.
            if ev.seq != 1 {
                return out;
            }
            if let Some(old) = self.nodes.remove(&ev.node) {
                self.revived
                    .entry(ev.node.clone())
                    .or_default()
                    .extend(old.participants);
            }
        }
        // A participant who was waited for comes back through this node: the clients
        // never saw it leave, so its return is no news (its new tracks are).
        let returning = match &ev.change {
            RoomChange::Joined { participant } => self.take_suspended(&participant.id),
            _ => false,
        };
        if matches!(ev.change, RoomChange::NodeLeft) {
            out.notices = self.forget(&ev.node);
            out.node_left = Some(ev.node.clone());
            return out;
        }
        let known = self.nodes.get(&ev.node).map(|n| n.seq);
        match known {
            Some(seq) if ev.seq <= seq => return out,
            Some(seq) if ev.seq > seq + 1 => {
                out.snapshot_from = Some(ev.node.clone());
                return out;
            }
            None if ev.seq != 1 => {
                out.snapshot_from = Some(ev.node.clone());
                return out;
            }
            _ => {}
        }
        let node = self.nodes.entry(ev.node.clone()).or_default();
        node.seq = ev.seq;
        match &ev.change {
            RoomChange::Joined { participant } => {
                if node.find(&participant.id).is_none() {
                    node.participants.push(ParticipantState {
                        id: participant.id.clone(),
                        name: participant.name.clone(),
                        tracks: Vec::new(),
                    });
                    if !returning {
                        out.notices.push(joined(participant.clone()));
                    }
                }
            }
            RoomChange::Left { id } => {
                if let Some(i) = node.participants.iter().position(|p| &p.id == id) {
                    let gone = node.participants.remove(i);
                    out.notices.extend(left(gone));
                }
            }
            RoomChange::TrackPublished { participant, track } => {
                if let Some(p) = node.find(participant) {
                    if !p.tracks.iter().any(|t| t.id == track.id) {
                        p.tracks.push(track.clone());
                        out.notices.push(published(participant, track));
                    }
                }
            }
            RoomChange::TrackMuted {
                participant,
                track_id,
                muted,
            } => {
                let track = node
                    .find(participant)
                    .and_then(|p| p.tracks.iter_mut().find(|t| &t.id == track_id));
                if let Some(t) = track.filter(|t| t.muted != *muted) {
                    t.muted = *muted;
                    out.notices
                        .push(muted_notice(participant, track_id, *muted));
                }
            }
            RoomChange::TrackUnpublished {
                participant,
                track_id,
            } => {
                if let Some(p) = node.find(participant) {
                    if let Some(i) = p.tracks.iter().position(|t| &t.id == track_id) {
                        p.tracks.remove(i);
                        out.notices.push(unpublished(participant, track_id));
                    }
                }
            }
            RoomChange::NodeLeft => {}
        }
        out
    }

    /// Replaces what is known of the snapshot's node, unless events past it were applied
    /// already. Returns the differences as notices.
    pub fn apply_snapshot(&mut self, st: &RoomState) -> Vec<Notice> {
        if self.is_suspended(&st.node) {
            return Vec::new();
        }
        if !st.present {
            return self.forget(&st.node);
        }
        let old = match self.nodes.get(&st.node) {
            Some(n) if n.seq > st.seq => return Vec::new(),
            Some(n) => n.clone(),
            None => NodeMembers::default(),
        };
        let returning: Vec<UserId> = st
            .participants
            .iter()
            .filter(|q| self.take_suspended(&q.id))
            .map(|q| q.id.clone())
            .collect();
        let mut notices = Vec::new();
        for p in &old.participants {
            match st.participants.iter().find(|q| q.id == p.id) {
                None => notices.extend(left(p.clone())),
                Some(q) => {
                    for t in &p.tracks {
                        match q.tracks.iter().find(|u| u.id == t.id) {
                            None => notices.push(unpublished(&p.id, &t.id)),
                            Some(u) if u.muted != t.muted => {
                                notices.push(muted_notice(&p.id, &t.id, u.muted))
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        for q in &st.participants {
            let before = old.participants.iter().find(|p| p.id == q.id);
            if before.is_none() && !returning.contains(&q.id) {
                notices.push(joined(ParticipantInfo {
                    id: q.id.clone(),
                    name: q.name.clone(),
                }));
            }
            for t in &q.tracks {
                if !before.is_some_and(|p| p.tracks.iter().any(|b| b.id == t.id)) {
                    notices.push(published(&q.id, t));
                }
            }
        }
        self.nodes.insert(
            st.node.clone(),
            NodeMembers {
                seq: st.seq,
                suspended: false,
                participants: st.participants.clone(),
            },
        );
        notices
    }

    /// Forgets a node that left the room: each of its participants leaves.
    pub fn forget(&mut self, node: &NodeId) -> Vec<Notice> {
        self.nodes
            .remove(node)
            .map(|n| n.participants.into_iter().flat_map(left).collect())
            .unwrap_or_default()
    }
}

fn joined(participant: ParticipantInfo) -> Notice {
    ServerMessage::ParticipantJoined { participant }
}

fn published(participant: &UserId, track: &TrackInfo) -> Notice {
    ServerMessage::TrackPublished {
        participant: participant.clone(),
        track: track.clone(),
    }
}

fn muted_notice(participant: &UserId, track_id: &TrackId, muted: bool) -> Notice {
    ServerMessage::TrackMuted {
        participant: participant.clone(),
        track_id: track_id.clone(),
        muted,
    }
}

fn unpublished(participant: &UserId, track_id: &TrackId) -> Notice {
    ServerMessage::TrackUnpublished {
        participant: participant.clone(),
        track_id: track_id.clone(),
    }
}

/// A participant leaving: its tracks end first, as when a local participant leaves.
fn left(p: ParticipantState) -> Vec<Notice> {
    let mut out: Vec<Notice> = p.tracks.iter().map(|t| unpublished(&p.id, &t.id)).collect();
    out.push(ServerMessage::ParticipantLeft { id: p.id });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::cluster::VERSION;
    use protocol::signal::TrackKind;
    use protocol::RoomId;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }
    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }
    fn track(s: &str) -> TrackInfo {
        TrackInfo {
            id: TrackId::new(s).unwrap(),
            kind: TrackKind::Video,
            muted: false,
        }
    }
    fn ev(n: &str, seq: u64, change: RoomChange) -> RoomEvent {
        RoomEvent {
            v: VERSION,
            room: RoomId::new("r").unwrap(),
            node: node(n),
            seq,
            change,
        }
    }
    fn join(u: &str) -> RoomChange {
        RoomChange::Joined {
            participant: ParticipantInfo {
                id: user(u),
                name: u.into(),
            },
        }
    }
    fn publish(u: &str, t: &str) -> RoomChange {
        RoomChange::TrackPublished {
            participant: user(u),
            track: track(t),
        }
    }

    #[test]
    fn events_in_order_build_the_room_and_tell_the_clients() {
        let mut m = RemoteMembers::new();
        let a = m.apply_event(&ev("eu", 1, join("alice")));
        assert_eq!(a.notices.len(), 1);
        assert_eq!(a.snapshot_from, None);
        let a = m.apply_event(&ev("eu", 2, publish("alice", "T1")));
        assert!(matches!(a.notices[0], ServerMessage::TrackPublished { .. }));
        assert_eq!(m.tracks_on(&node("eu")).len(), 1);
        // A repeated event changes nothing.
        assert_eq!(
            m.apply_event(&ev("eu", 2, publish("alice", "T1"))),
            Applied::default()
        );
        let a = m.apply_event(&ev("eu", 3, RoomChange::Left { id: user("alice") }));
        // Its track ends first, then the participant leaves.
        assert!(matches!(
            a.notices[0],
            ServerMessage::TrackUnpublished { .. }
        ));
        assert!(matches!(
            a.notices[1],
            ServerMessage::ParticipantLeft { .. }
        ));
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn a_gap_or_a_stranger_mid_stream_asks_for_a_snapshot() {
        let mut m = RemoteMembers::new();
        assert_eq!(
            m.apply_event(&ev("us", 5, join("bob"))).snapshot_from,
            Some(node("us"))
        );
        assert!(!m.knows(&node("us")));
        m.apply_event(&ev("eu", 1, join("alice")));
        let a = m.apply_event(&ev("eu", 3, publish("alice", "T1")));
        assert_eq!(a.snapshot_from, Some(node("eu")));
        assert!(a.notices.is_empty());
    }

    #[test]
    fn a_snapshot_replaces_the_node_and_reports_the_difference() {
        let mut m = RemoteMembers::new();
        m.apply_event(&ev("eu", 1, join("alice")));
        m.apply_event(&ev("eu", 2, publish("alice", "T1")));
        let st = RoomState {
            v: VERSION,
            room: RoomId::new("r").unwrap(),
            node: node("eu"),
            present: true,
            seq: 7,
            participants: vec![
                ParticipantState {
                    id: user("alice"),
                    name: "alice".into(),
                    tracks: vec![track("T2")],
                },
                ParticipantState {
                    id: user("carol"),
                    name: "carol".into(),
                    tracks: vec![],
                },
            ],
        };
        let notices = m.apply_snapshot(&st);
        let kinds: Vec<&str> = notices
            .iter()
            .map(|n| match n {
                ServerMessage::TrackUnpublished { .. } => "unpublished",
                ServerMessage::TrackPublished { .. } => "published",
                ServerMessage::ParticipantJoined { .. } => "joined",
                ServerMessage::ParticipantLeft { .. } => "left",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["unpublished", "published", "joined"]);
        // Events the snapshot already covers are ignored; the next one applies.
        assert!(m.apply_event(&ev("eu", 7, join("dave"))).notices.is_empty());
        assert_eq!(m.apply_event(&ev("eu", 8, join("dave"))).notices.len(), 1);
        // An older snapshot never rolls the node back.
        assert!(m.apply_snapshot(&RoomState { seq: 6, ..st }).is_empty());
        assert_eq!(m.count(), 3);
        assert_eq!(m.node_of(&user("dave")), Some(&node("eu")));
    }

    #[test]
    fn a_node_leaving_takes_its_participants() {
        let mut m = RemoteMembers::new();
        m.apply_event(&ev("eu", 1, join("alice")));
        m.apply_event(&ev("eu", 2, publish("alice", "T1")));
        let a = m.apply_event(&ev("eu", 3, RoomChange::NodeLeft));
        assert_eq!(a.node_left, Some(node("eu")));
        assert_eq!(a.notices.len(), 2);
        assert!(!m.knows(&node("eu")));
        // A node that says it does not host the room is forgotten the same way.
        m.apply_event(&ev("us", 1, join("bob")));
        let gone = RoomState {
            v: VERSION,
            room: RoomId::new("r").unwrap(),
            node: node("us"),
            present: false,
            seq: 0,
            participants: vec![],
        };
        assert_eq!(m.apply_snapshot(&gone).len(), 1);
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn a_dead_nodes_participants_wait_for_their_resume() {
        let mut m = RemoteMembers::new();
        m.apply_event(&ev("eu", 1, join("alice")));
        m.apply_event(&ev("eu", 2, publish("alice", "T1")));
        m.apply_event(&ev("eu", 3, join("carol")));
        m.apply_event(&ev("us", 1, join("bob")));
        // Its tracks end at once; its participants stay, and it is asked for nothing.
        let notices = m.suspend(&node("eu"));
        assert_eq!(notices.len(), 1);
        assert!(matches!(
            &notices[0],
            ServerMessage::TrackUnpublished { .. }
        ));
        assert_eq!(m.count(), 3);
        assert!(m.tracks_on(&node("eu")).is_empty());
        assert_eq!(m.nodes().collect::<Vec<_>>(), vec![&node("us")]);
        // Nothing more is heard from it.
        assert!(m.apply_event(&ev("eu", 4, join("dave"))).notices.is_empty());
        // Alice comes back through another node: no news for the clients but her tracks.
        assert!(m
            .apply_event(&ev("us", 2, join("alice")))
            .notices
            .is_empty());
        assert_eq!(m.node_of(&user("alice")), Some(&node("us")));
        assert_eq!(
            m.apply_event(&ev("us", 3, publish("alice", "T2")))
                .notices
                .len(),
            1
        );
        // Carol never does: at the end of the grace she leaves.
        let left = m.forget_dead(&node("eu"));
        assert_eq!(
            left,
            vec![ServerMessage::ParticipantLeft { id: user("carol") }]
        );
        assert!(!m.is_suspended(&node("eu")));
        assert_eq!(m.count(), 2);
    }

    #[test]
    fn a_suspended_participant_is_taken_once() {
        let mut m = RemoteMembers::new();
        m.apply_event(&ev("eu", 1, join("alice")));
        assert!(!m.take_suspended(&user("alice")));
        m.suspend(&node("eu"));
        assert!(m.take_suspended(&user("alice")));
        assert!(!m.take_suspended(&user("alice")));
        assert!(m.forget(&node("eu")).is_empty());
    }

    #[test]
    fn a_dead_node_back_with_a_fresh_room_is_heard_and_its_old_participants_still_wait() {
        let mut m = RemoteMembers::new();
        m.apply_event(&ev("eu", 1, join("alice")));
        m.apply_event(&ev("eu", 2, join("carol")));
        m.apply_event(&ev("eu", 3, publish("alice", "T1")));
        m.suspend(&node("eu"));
        // A stale event of the old room (the node was stopped) is not heard…
        assert!(m.apply_event(&ev("eu", 4, join("erin"))).notices.is_empty());
        // …the first event of its fresh room is: alice is back through it, no news but
        // her new track; dave is new.
        assert!(m
            .apply_event(&ev("eu", 1, join("alice")))
            .notices
            .is_empty());
        assert_eq!(m.apply_event(&ev("eu", 2, join("dave"))).notices.len(), 1);
        assert_eq!(
            m.apply_event(&ev("eu", 3, publish("alice", "T2")))
                .notices
                .len(),
            1
        );
        assert!(!m.is_suspended(&node("eu")));
        assert_eq!(m.tracks_on(&node("eu")).len(), 1);
        assert_eq!(m.count(), 3, "alice and dave, and carol still waited for");
        // The grace ends: carol, never back, leaves; the node's live participants stay.
        assert_eq!(
            m.forget_dead(&node("eu")),
            vec![ServerMessage::ParticipantLeft { id: user("carol") }]
        );
        assert_eq!(m.count(), 2);
        assert_eq!(m.node_of(&user("dave")), Some(&node("eu")));
        assert!(m.forget_dead(&node("eu")).is_empty());
    }

    fn mute(u: &str, t: &str, muted: bool) -> RoomChange {
        RoomChange::TrackMuted {
            participant: user(u),
            track_id: TrackId::new(t).unwrap(),
            muted,
        }
    }

    fn muted_of(m: &RemoteMembers, u: &str, t: &str) -> Option<bool> {
        m.participants()
            .find(|p| p.id == user(u))
            .and_then(|p| p.tracks.iter().find(|x| x.id.as_str() == t))
            .map(|x| x.muted)
    }

    #[test]
    fn a_muted_track_is_told_once_and_remembered() {
        let mut m = RemoteMembers::new();
        m.apply_event(&ev("eu", 1, join("alice")));
        m.apply_event(&ev("eu", 2, publish("alice", "T1")));
        let a = m.apply_event(&ev("eu", 3, mute("alice", "T1", true)));
        assert_eq!(
            a.notices,
            vec![ServerMessage::TrackMuted {
                participant: user("alice"),
                track_id: TrackId::new("T1").unwrap(),
                muted: true,
            }]
        );
        assert_eq!(muted_of(&m, "alice", "T1"), Some(true));
        // Muting a muted track again is no news; an unknown track or user neither.
        assert!(m
            .apply_event(&ev("eu", 4, mute("alice", "T1", true)))
            .notices
            .is_empty());
        assert!(m
            .apply_event(&ev("eu", 5, mute("alice", "T9", true)))
            .notices
            .is_empty());
        assert!(m
            .apply_event(&ev("eu", 6, mute("bob", "T1", false)))
            .notices
            .is_empty());
        let a = m.apply_event(&ev("eu", 7, mute("alice", "T1", false)));
        assert_eq!(a.notices.len(), 1);
        assert_eq!(muted_of(&m, "alice", "T1"), Some(false));
    }

    #[test]
    fn a_snapshot_tells_a_mute_change_without_republishing() {
        let mut m = RemoteMembers::new();
        m.apply_event(&ev("eu", 1, join("alice")));
        m.apply_event(&ev("eu", 2, publish("alice", "T1")));
        let mut t = track("T1");
        t.muted = true;
        let st = RoomState {
            v: VERSION,
            room: RoomId::new("r").unwrap(),
            node: node("eu"),
            present: true,
            seq: 3,
            participants: vec![ParticipantState {
                id: user("alice"),
                name: "alice".into(),
                tracks: vec![t],
            }],
        };
        assert_eq!(
            m.apply_snapshot(&st),
            vec![ServerMessage::TrackMuted {
                participant: user("alice"),
                track_id: TrackId::new("T1").unwrap(),
                muted: true,
            }]
        );
        assert_eq!(muted_of(&m, "alice", "T1"), Some(true));
    }
}
