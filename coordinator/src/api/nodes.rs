//! Asking the nodes of a room ([`RoomAdmin`] on `node.<n>.admin`) and merging their
//! answers. The merges are plain functions: a node that did not answer (or answered
//! nonsense) fails the call with 503 naming it, an `error` answer keeps its code, and
//! `not_here` from every node is 404.

use super::Fail;
use futures::future::join_all;
use protocol::cluster::VERSION;
use protocol::room_api::{node_admin, AdminOp, AdminReply, ParticipantDetail, RoomAdmin};
use protocol::{ErrorCode, NodeId, RoomId, UserId};
use std::collections::HashMap;
use std::time::Duration;

/// How long each node has to answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// One node's answer, or why there is none.
pub type Answer = (NodeId, Result<AdminReply, String>);

/// Sends `op` to every node concurrently.
pub async fn ask_all(
    client: &async_nats::Client,
    nodes: &[NodeId],
    room: &RoomId,
    op: AdminOp,
) -> Vec<Answer> {
    let body = match serde_json::to_vec(&RoomAdmin {
        v: VERSION,
        room: room.clone(),
        op,
    }) {
        Ok(b) => bytes::Bytes::from(b),
        Err(e) => {
            return nodes
                .iter()
                .map(|n| (n.clone(), Err(format!("encode: {e}"))))
                .collect()
        }
    };
    let asks = nodes.iter().map(|node| {
        let body = body.clone();
        async move {
            let request = async_nats::Request::new()
                .payload(body)
                .timeout(Some(ASK_TIMEOUT));
            let answer = match client.send_request(node_admin(node), request).await {
                Ok(msg) => serde_json::from_slice::<AdminReply>(&msg.payload)
                    .map_err(|e| format!("unreadable answer: {e}")),
                Err(e) => Err(e.to_string()),
            };
            (node.clone(), answer)
        }
    });
    join_all(asks).await
}

/// The first error among the answers: a node that failed to answer (503) before a node's
/// own `error` (with its code).
fn failure(answers: &[Answer]) -> Option<Fail> {
    let silent: Vec<String> = answers
        .iter()
        .filter_map(|(n, a)| a.as_ref().err().map(|why| format!("{n} ({why})")))
        .collect();
    if !silent.is_empty() {
        return Some(Fail::new(
            ErrorCode::Unavailable,
            format!("nodes of the room did not answer: {}", silent.join(", ")),
        ));
    }
    answers.iter().find_map(|(n, a)| match a {
        Ok(AdminReply::Error { code, message }) => {
            Some(Fail::new(*code, format!("node {n}: {message}")))
        }
        _ => None,
    })
}

/// Everyone in the room: each node's participants, a participant listed twice (moving
/// between nodes) once, by its latest join; in order of joining.
pub fn merge_participants(answers: Vec<Answer>) -> Result<Vec<ParticipantDetail>, Fail> {
    if let Some(fail) = failure(&answers) {
        return Err(fail);
    }
    let mut by_id: HashMap<UserId, ParticipantDetail> = HashMap::new();
    for (_, answer) in answers {
        if let Ok(AdminReply::Participants { participants }) = answer {
            for p in participants {
                match by_id.get(&p.id) {
                    Some(held) if held.joined_ms >= p.joined_ms => {}
                    _ => {
                        by_id.insert(p.id.clone(), p);
                    }
                }
            }
        }
    }
    let mut all: Vec<ParticipantDetail> = by_id.into_values().collect();
    all.sort_by(|a, b| a.joined_ms.cmp(&b.joined_ms).then_with(|| a.id.cmp(&b.id)));
    Ok(all)
}

/// An operation on one participant: the node hosting it answers `done`. `None` when it
/// did not describe the participant afterwards; 404 `what` when no node hosts it.
pub fn merge_targeted(answers: Vec<Answer>, what: &str) -> Result<Option<ParticipantDetail>, Fail> {
    let done = answers.iter().find_map(|(_, a)| match a {
        Ok(AdminReply::Done { participant, .. }) => Some(participant.clone()),
        _ => None,
    });
    if let Some(done) = done {
        return Ok(done);
    }
    if let Some(fail) = failure(&answers) {
        return Err(fail);
    }
    Err(Fail::new(
        ErrorCode::NotFound,
        format!("no {what} in the room"),
    ))
}

/// An operation on the whole room: participants reached, over the nodes.
pub fn merge_counted(answers: Vec<Answer>) -> Result<u32, Fail> {
    let reached = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Ok(AdminReply::Done { affected, .. }) => Some(*affected),
            _ => None,
        })
        .fold(0u32, u32::saturating_add);
    match failure(&answers) {
        Some(mut fail) => {
            if fail.code == ErrorCode::Unavailable {
                fail.message = format!("{}; reached {reached} on the others", fail.message);
            }
            Err(fail)
        }
        None => Ok(reached),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::room_api::TrackDetail;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn person(id: &str, on: &str, joined_ms: u64) -> ParticipantDetail {
        ParticipantDetail {
            id: UserId::new(id).unwrap(),
            name: id.to_uppercase(),
            metadata: None,
            node: node(on),
            region: "eu".into(),
            joined_ms,
            can_publish: true,
            can_subscribe: true,
            tracks: Vec::<TrackDetail>::new(),
        }
    }

    fn listed(on: &str, people: Vec<ParticipantDetail>) -> Answer {
        (
            node(on),
            Ok(AdminReply::Participants {
                participants: people,
            }),
        )
    }

    #[test]
    fn participants_merge_over_nodes_without_duplicates() {
        let all = merge_participants(vec![
            listed("n1", vec![person("b", "n1", 20), person("a", "n1", 10)]),
            listed("n2", vec![person("c", "n2", 15), person("b", "n2", 30)]),
            (node("n3"), Ok(AdminReply::NotHere)),
        ])
        .unwrap();
        let ids: Vec<(&str, &str)> = all
            .iter()
            .map(|p| (p.id.as_str(), p.node.as_str()))
            .collect();
        assert_eq!(ids, [("a", "n1"), ("c", "n2"), ("b", "n2")]);
    }

    #[test]
    fn a_silent_node_fails_the_list_rather_than_hide_people() {
        let e = merge_participants(vec![
            listed("n1", vec![person("a", "n1", 1)]),
            (node("n2"), Err("timed out".into())),
        ])
        .unwrap_err();
        assert_eq!(e.status(), 503);
        assert!(e.message.contains("n2"), "{}", e.message);
        let e = merge_participants(vec![(
            node("n1"),
            Ok(AdminReply::Error {
                code: ErrorCode::Internal,
                message: "boom".into(),
            }),
        )])
        .unwrap_err();
        assert_eq!(e.status(), 500);
    }

    #[test]
    fn the_hosting_node_answers_for_its_participant() {
        let p = person("a", "n2", 1);
        let got = merge_targeted(
            vec![
                (node("n1"), Ok(AdminReply::NotHere)),
                (
                    node("n2"),
                    Ok(AdminReply::Done {
                        participant: Some(p.clone()),
                        affected: 1,
                    }),
                ),
                (node("n3"), Err("no responders".into())),
            ],
            "participant a",
        );
        assert_eq!(got, Ok(Some(p)));
        let nobody = merge_targeted(vec![(node("n1"), Ok(AdminReply::NotHere))], "participant a")
            .unwrap_err();
        assert_eq!(nobody.status(), 404);
        let unknown_track = merge_targeted(
            vec![(
                node("n1"),
                Ok(AdminReply::Error {
                    code: ErrorCode::NotFound,
                    message: "no track t".into(),
                }),
            )],
            "participant a",
        )
        .unwrap_err();
        assert_eq!(unknown_track.status(), 404);
        assert!(unknown_track.message.contains("no track t"));
        let silent = merge_targeted(
            vec![
                (node("n1"), Ok(AdminReply::NotHere)),
                (node("n2"), Err("timed out".into())),
            ],
            "participant a",
        )
        .unwrap_err();
        assert_eq!(silent.status(), 503, "the silent node may host it");
    }

    #[test]
    fn room_wide_operations_add_up_what_each_node_reached() {
        let done = |n: &str, affected| {
            (
                node(n),
                Ok(AdminReply::Done {
                    participant: None,
                    affected,
                }),
            )
        };
        assert_eq!(merge_counted(vec![done("n1", 2), done("n2", 3)]), Ok(5));
        assert_eq!(
            merge_counted(vec![done("n1", u32::MAX), done("n2", 3)]),
            Ok(u32::MAX)
        );
        assert_eq!(merge_counted(vec![]), Ok(0));
        let e =
            merge_counted(vec![done("n1", 2), (node("n2"), Err("timed out".into()))]).unwrap_err();
        assert_eq!(e.status(), 503);
        assert!(e.message.contains("reached 2"), "{}", e.message);
    }
}
