//! Where a participant is served: joining or resuming it on this node or another one of
//! the cluster, with the coordinator's allocation.

use super::*;
use crate::actors::room::{Refused, REFUSED_BY_SETTINGS};
use protocol::room_api::RoomSettings;

/// Resumes a participant wherever it is. The node that hosted it restores it while it lives
/// and still serves the room (`true`: the old participant, its tracks to be published
/// again). Where that node is gone, drains or was fenced, the token's claims join the
/// participant afresh wherever the cluster serves the room now (`false`), the unanswering
/// node being reported to the coordinator, which moves the room off it in the same
/// decision.
pub(super) async fn resume_anywhere(
    node: &NodeCtx,
    rooms: &Addr<RoomRegistry>,
    claims: ResumeClaims,
    resume_token: String,
    router: &Addr<crate::actors::router::SessionRouter>,
    register: Register,
) -> Result<(JoinOutcome, bool), ErrorCode> {
    let me = node.config.node_id.clone();
    let host = claims.node.clone();
    let room = claims.room.clone();
    let mut suspects = Vec::new();
    // The route exists before the participant is restored or joined, so nothing sent to it
    // is lost.
    let rank = router.send(register).await.unwrap_or(0);
    let restored = match &node.cluster {
        None => Some(resume_local(rooms, claims.clone(), resume_token.clone()).await),
        Some(_) if host == me => {
            Some(resume_local(rooms, claims.clone(), resume_token.clone()).await)
        }
        // A coordinator said it died: nothing to ask.
        Some(_) if lock(&node.peers).is_dead(&host) => None,
        Some(cluster) => {
            let ask = wire::RemoteResume {
                v: wire::VERSION,
                resume_token: resume_token.clone(),
                session_node: me.clone(),
            };
            let reply = cluster
                .request::<_, RemoteJoinReply>(wire::node_resume(&host), &ask, RESUME_TIMEOUT)
                .await;
            match reply {
                Ok(RemoteJoinReply::Moved) => None,
                Ok(reply) => Some(
                    remote_outcome(room.clone(), host.clone(), reply)
                        .map_err(ResumeRefused::Failed),
                ),
                Err(e) if e.unanswered() => {
                    cluster.suspect(&host, "resume");
                    suspects.push(host.clone());
                    None
                }
                Err(_) => Some(Err(ResumeRefused::Failed(ErrorCode::Unavailable))),
            }
        }
    };
    match restored {
        Some(Ok(outcome)) => return Ok((outcome, true)),
        Some(Err(ResumeRefused::Failed(code))) => return Err(code),
        Some(Err(ResumeRefused::Moved)) if node.cluster.is_none() => {
            return Err(ErrorCode::NotFound)
        }
        Some(Err(ResumeRefused::Moved)) | None => {}
    }
    metrics::counter!("signaling_resumed_elsewhere_total").increment(1);
    tracing::info!(%room, user = %claims.sub, %host, "participant's node no longer serves it; joining it afresh");
    let region = Some(node.config.region.clone());
    let proof = JoinProof::Resume(resume_token);
    let claims = claims.join_claims();
    let joiner = Joiner {
        claims,
        proof,
        rank,
    };
    let outcome = join_anywhere(node, rooms, room, joiner, region, suspects).await?;
    Ok((outcome, false))
}

/// A participant hosted on `node`, as that node's reply describes it.
fn remote_outcome(
    room: RoomId,
    node: NodeId,
    reply: RemoteJoinReply,
) -> Result<JoinOutcome, ErrorCode> {
    match reply {
        RemoteJoinReply::Joined {
            participant,
            resume_token,
            ice_servers,
            participants,
        } => Ok(JoinOutcome {
            room,
            node: Some(node.clone()),
            participant,
            peer: PeerRef::Remote(node),
            resume_token,
            ice_servers,
            participants,
        }),
        RemoteJoinReply::Error { code, .. } => Err(code),
        RemoteJoinReply::Moved => Err(ErrorCode::Unavailable),
    }
}

async fn resume_local(
    rooms: &Addr<RoomRegistry>,
    claims: ResumeClaims,
    resume_token: String,
) -> Result<JoinOutcome, ResumeRefused> {
    let info = rooms
        .send(ResumeRoom {
            claims,
            resume_token,
        })
        .await
        .map_err(|_| ResumeRefused::Failed(ErrorCode::Unavailable))??;
    Ok(JoinOutcome::local(info))
}

/// How long the participant's node may take to restore it before it counts as gone.
const RESUME_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a join may wait on the coordinator or the room's node.
const CLUSTER_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How many nodes of a room may refuse a join for holding their share of it before the
/// join fails with `room_full` (the room is then at its size everywhere).
const MAX_SHARE_REFUSALS: usize = 2;

/// Who joins: the verified claims, the token they came from (the room's node checks it
/// again), and the session's rank from the router (`Register`).
pub(super) struct Joiner {
    pub(super) claims: protocol::token::Claims,
    pub(super) proof: JoinProof,
    pub(super) rank: u64,
}

/// Joins `room` on the node that serves this client: standalone nodes host every room; in a
/// cluster the coordinator names the room's node for the client's region (adding one to the
/// room when needed), and a room node elsewhere is joined over NATS.
pub(super) async fn join_anywhere(
    node: &NodeCtx,
    rooms: &Addr<RoomRegistry>,
    room: RoomId,
    joiner: Joiner,
    region: Option<String>,
    suspects: Vec<NodeId>,
) -> Result<JoinOutcome, ErrorCode> {
    let Joiner {
        claims,
        proof,
        rank,
    } = joiner;
    let rejoin = matches!(proof, JoinProof::Resume(_));
    let local = |epoch, nodes, settings| {
        let rooms = rooms.clone();
        let (room, claims) = (room.clone(), claims.clone());
        async move {
            let info = rooms
                .send(JoinRoom {
                    room,
                    claims,
                    epoch,
                    nodes,
                    rejoin,
                    rank,
                    settings,
                })
                .await
                .map_err(|_| Refused::from(ErrorCode::Unavailable))??;
            Ok::<_, Refused>(JoinOutcome::local(info))
        }
    };
    let Some(cluster) = &node.cluster else {
        // Standalone: the token's settings are the room's (nobody stores them).
        let settings = claims.room_settings.clone();
        return local(0, Vec::new(), settings).await.map_err(|r| r.code);
    };
    let me = node.config.node_id.clone();
    let mut ask = AllocateRequest {
        v: wire::VERSION,
        room: room.clone(),
        region,
        from: me.clone(),
        forwarded: false,
        lookup: false,
        full: Vec::new(),
        suspects,
        // Stored by the coordinator if this join opens a room without settings.
        settings: claims.room_settings.clone(),
    };
    loop {
        let (assignment, serve, settings) = allocate(cluster, &ask).await?;
        let nodes = assignment.members();
        let outcome = if serve == me {
            local(assignment.epoch, nodes, settings).await
        } else {
            let remote = RemoteJoin {
                v: wire::VERSION,
                room: room.clone(),
                proof: proof.clone(),
                session_node: me.clone(),
                epoch: assignment.epoch,
                nodes,
                settings,
            };
            let reply = cluster
                .request::<_, RemoteJoinReply>(
                    wire::node_join(&serve),
                    &remote,
                    CLUSTER_JOIN_TIMEOUT,
                )
                .await;
            match reply {
                Ok(RemoteJoinReply::Error { code, message }) => Err(Refused {
                    code,
                    settled: message == REFUSED_BY_SETTINGS,
                }),
                Ok(reply) => {
                    remote_outcome(room.clone(), serve.clone(), reply).map_err(Refused::from)
                }
                // The room's node is gone and the coordinator does not know it yet: tell
                // it, and ask again naming the node, which it then probes first.
                Err(e) if e.unanswered() && !ask.suspects.contains(&serve) => {
                    tracing::warn!(%room, node = %serve, error = %e, "room node unanswering; asking again");
                    cluster.suspect(&serve, "join");
                    ask.suspects.push(serve);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%room, node = %serve, error = %e, "remote join failed");
                    Err(ErrorCode::Unavailable.into())
                }
            }
        };
        match outcome {
            // That node holds its share of the room: another node of the room (or a new
            // sibling) serves this client. A room at its own `max_participants` is full on
            // every node: no other is asked.
            Err(Refused {
                code: ErrorCode::RoomFull,
                settled: false,
            }) if ask.full.len() < MAX_SHARE_REFUSALS => {
                tracing::info!(%room, node = %serve, "room node refused the join; asking for another");
                ask.full.push(serve);
            }
            other => return other.map_err(|r| r.code),
        }
    }
}

/// Asks the coordinators where the client is served. One retry: a request in flight at a
/// coordinator that just died times out, and the next one reaches a live coordinator. A
/// refusal the coordinator calls transient (its directory unavailable) is asked again,
/// backing off, for up to [`TRANSIENT_PATIENCE`].
async fn allocate(
    cluster: &crate::cluster::Cluster,
    ask: &AllocateRequest,
) -> Result<Allocated, ErrorCode> {
    let started = Instant::now();
    let mut pauses = protocol::backoff::delays(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        let outcome = allocate_once(cluster, ask).await;
        let pause = match outcome {
            Err((_, true)) => pauses
                .next()
                .filter(|pause| started.elapsed() + *pause < TRANSIENT_PATIENCE),
            _ => None,
        };
        let Some(pause) = pause else {
            return outcome.map_err(|(code, _)| code);
        };
        tracing::debug!(room = %ask.room, ?pause, "transient refusal; asking again");
        tokio::time::sleep(pause).await;
    }
}

/// Longest a join waits for a room directory to come back (a clustered NATS electing a new
/// stream leader takes 4 to 9 s), within the client's 10 s for `joined`.
const TRANSIENT_PATIENCE: Duration = Duration::from_secs(8);

/// One allocation; a refusal comes with whether it is transient.
/// The room's assignment, the node serving the client, and the room's settings.
type Allocated = (wire::RoomAssignment, NodeId, Option<RoomSettings>);

async fn allocate_once(
    cluster: &crate::cluster::Cluster,
    ask: &AllocateRequest,
) -> Result<Allocated, (ErrorCode, bool)> {
    let subject = || wire::ALLOCATE.to_owned();
    let mut reply = cluster
        .request::<_, AllocateReply>(subject(), ask, CLUSTER_JOIN_TIMEOUT / 2)
        .await;
    if matches!(
        reply,
        Err(ClusterError::Timeout(_) | ClusterError::NoResponders(_))
    ) {
        reply = cluster
            .request(subject(), ask, CLUSTER_JOIN_TIMEOUT / 2)
            .await;
    }
    match reply {
        Ok(AllocateReply::Assigned {
            assignment,
            serve,
            settings,
        }) => Ok((assignment, serve, settings)),
        Ok(AllocateReply::Error {
            code,
            message,
            transient,
        }) => {
            tracing::info!(room = %ask.room, %message, transient, "allocation refused");
            Err((code, transient))
        }
        Err(e) => {
            tracing::warn!(room = %ask.room, error = %e, "allocation failed");
            Err((ErrorCode::Unavailable, false))
        }
    }
}
