//! What a client knows of its room, folded from the node's messages.

use protocol::signal::{ParticipantState, ServerMessage, TrackInfo, TrackKind};
use protocol::{TrackId, UserId};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: String,
    tracks: BTreeMap<TrackId, TrackKind>,
}

/// The other participants of the room and what they publish. Pure: [`RoomView::apply`]
/// folds one server message in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomView {
    me: Option<UserId>,
    members: BTreeMap<UserId, Member>,
}

impl RoomView {
    pub fn apply(&mut self, msg: &ServerMessage) {
        match msg {
            ServerMessage::Joined {
                participant,
                participants,
                ..
            } => {
                self.me = Some(participant.id.clone());
                self.members = participants
                    .iter()
                    .filter(|p| p.id != participant.id)
                    .map(|p| {
                        let tracks = p.tracks.iter().map(|t| (t.id.clone(), t.kind)).collect();
                        (
                            p.id.clone(),
                            Member {
                                name: p.name.clone(),
                                tracks,
                            },
                        )
                    })
                    .collect();
            }
            ServerMessage::ParticipantJoined { participant }
                if self.me.as_ref() != Some(&participant.id) =>
            {
                self.members
                    .entry(participant.id.clone())
                    .or_insert_with(|| Member {
                        name: String::new(),
                        tracks: BTreeMap::new(),
                    })
                    .name = participant.name.clone();
            }
            ServerMessage::ParticipantLeft { id } => {
                self.members.remove(id);
            }
            ServerMessage::TrackPublished { participant, track }
                if self.me.as_ref() != Some(participant) =>
            {
                self.members
                    .entry(participant.clone())
                    .or_insert_with(|| Member {
                        name: participant.to_string(),
                        tracks: BTreeMap::new(),
                    })
                    .tracks
                    .insert(track.id.clone(), track.kind);
            }
            ServerMessage::TrackUnpublished {
                participant,
                track_id,
            } => {
                if let Some(m) = self.members.get_mut(participant) {
                    m.tracks.remove(track_id);
                }
            }
            _ => {}
        }
    }

    /// Our own participant id, once joined.
    pub fn me(&self) -> Option<&UserId> {
        self.me.as_ref()
    }

    /// The other participants, sorted by id.
    pub fn participants(&self) -> Vec<ParticipantState> {
        self.members
            .iter()
            .map(|(id, m)| ParticipantState {
                id: id.clone(),
                name: m.name.clone(),
                tracks: m
                    .tracks
                    .iter()
                    .map(|(id, kind)| TrackInfo {
                        id: id.clone(),
                        kind: *kind,
                        muted: false,
                    })
                    .collect(),
            })
            .collect()
    }

    pub fn contains(&self, id: &UserId) -> bool {
        self.members.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::signal::ParticipantInfo;
    use protocol::{NodeId, RoomId};

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }
    fn tid(s: &str) -> TrackId {
        TrackId::new(s).unwrap()
    }
    fn info(id: &str) -> ParticipantInfo {
        ParticipantInfo {
            id: uid(id),
            name: id.to_uppercase(),
        }
    }

    #[test]
    fn membership_and_tracks_follow_the_messages() {
        let mut v = RoomView::default();
        v.apply(&ServerMessage::Joined {
            room: RoomId::new("r").unwrap(),
            participant: info("me"),
            node: NodeId::new("n").unwrap(),
            resume_token: "t".into(),
            ice_servers: vec![],
            fallback_urls: vec![],
            participants: vec![
                ParticipantState {
                    id: uid("me"),
                    name: "ME".into(),
                    tracks: vec![],
                },
                ParticipantState {
                    id: uid("a"),
                    name: "A".into(),
                    tracks: vec![TrackInfo {
                        id: tid("TR_a"),
                        kind: TrackKind::Audio,
                        muted: false,
                    }],
                },
            ],
        });
        assert_eq!(v.me(), Some(&uid("me")));
        assert_eq!(v.participants().len(), 1, "self is not listed");
        v.apply(&ServerMessage::ParticipantJoined {
            participant: info("b"),
        });
        v.apply(&ServerMessage::TrackPublished {
            participant: uid("b"),
            track: TrackInfo {
                id: tid("TR_b"),
                kind: TrackKind::Video,
                muted: false,
            },
        });
        v.apply(&ServerMessage::TrackPublished {
            participant: uid("me"),
            track: TrackInfo {
                id: tid("TR_me"),
                kind: TrackKind::Video,
                muted: false,
            },
        });
        v.apply(&ServerMessage::TrackUnpublished {
            participant: uid("a"),
            track_id: tid("TR_a"),
        });
        let ps = v.participants();
        assert_eq!(ps.len(), 2);
        assert_eq!((ps[0].id.as_str(), ps[0].tracks.len()), ("a", 0));
        assert_eq!(
            (ps[1].name.as_str(), ps[1].tracks[0].id.as_str()),
            ("B", "TR_b")
        );
        v.apply(&ServerMessage::ParticipantLeft { id: uid("a") });
        assert!(!v.contains(&uid("a")) && v.contains(&uid("b")));
    }
}
