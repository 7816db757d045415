//! Serving `coord.allocate`: whichever coordinator the request reaches decides (a new room
//! from its mirror of the directory, without a read) and writes the decision with
//! compare-and-swap, the only arbiter between coordinators (a lost race reads KV and decides
//! again). It first probes the nodes
//! the request suspects ([`crate::failover::probe_suspects`]). The reply names the room's
//! entry as written and the node that serves the client (`serve`); a `lookup` only reads,
//! and answers with the origin.
//!
//! Requests marked `forwarded` (sent by a coordinator of an earlier version to a room's
//! deciding coordinator) are served the same way.

use crate::decide::{decide, Change, Decision, Join, RoomRecord, Stamp};
use crate::directory::{RoomDirectory, Write};
use crate::metrics::AllocResult;
use crate::{lifecycle, webhooks, Shared};
use async_nats::{Client, Message};
use bytes::Bytes;
use protocol::cluster::{AllocateReply, AllocateRequest, VERSION};
use protocol::webhook::MoveReason;
use protocol::ErrorCode;
use std::sync::Arc;
use std::time::Instant;

/// Read-decide-write rounds before giving up on a contended room. Each lost round means
/// another coordinator wrote meanwhile, and the next read normally just returns its winner.
const MAX_ROUNDS: usize = 4;

/// Answers one allocation request (if it has a reply subject).
pub(crate) async fn serve(shared: &Arc<Shared>, client: &Client, msg: Message) {
    let started = Instant::now();
    let Some(reply_to) = msg.reply.clone() else {
        tracing::debug!("allocation request without reply subject ignored");
        return;
    };
    let (body, result) = match serde_json::from_slice::<AllocateRequest>(&msg.payload) {
        Ok(req) if req.v == VERSION => allocate(shared, client, req).await,
        Ok(req) => reply(
            AllocateReply::Error {
                code: ErrorCode::BadRequest,
                message: format!("unsupported version {}", req.v),
                transient: false,
            },
            AllocResult::BadRequest,
        ),
        Err(e) => reply(
            AllocateReply::Error {
                code: ErrorCode::BadRequest,
                message: format!("bad allocate request: {e}"),
                transient: false,
            },
            AllocResult::BadRequest,
        ),
    };
    if let Err(e) = client.publish(reply_to, body).await {
        tracing::debug!(error = %e, "allocation reply not sent");
    }
    shared.metrics.allocation(result, started.elapsed());
}

fn reply(reply: AllocateReply, result: AllocResult) -> (Bytes, AllocResult) {
    match serde_json::to_vec(&reply) {
        Ok(body) => (body.into(), result),
        // Unreachable for these plain types; still answer something.
        Err(_) => (Bytes::from_static(b"{}"), AllocResult::Error),
    }
}

async fn allocate(
    shared: &Arc<Shared>,
    client: &Client,
    req: AllocateRequest,
) -> (Bytes, AllocResult) {
    // A suspect found dead now leaves the room's entry in this decision.
    if !req.suspects.is_empty() {
        crate::failover::probe_suspects(shared, client, &req.suspects).await;
    }
    let (answer, result) = decide_and_write(shared, &req).await;
    reply(answer, result)
}

/// The room's record to decide from. On the first round, a room the mirror (synced) holds
/// no live entry for is taken as never written, without a read: the create that follows
/// fails on any history of the key (a live entry the mirror has not heard of yet, or a
/// closed room), and the next round reads KV. Every other record is read from KV, so an
/// answer about an existing room is never older than a write that finished before the
/// request (a join answered after an extension sees the extension, whichever coordinator
/// answers).
async fn record(
    shared: &Shared,
    dir: &RoomDirectory,
    req: &AllocateRequest,
    round: usize,
) -> crate::Result<RoomRecord> {
    let unheard = round == 0 && !req.lookup && {
        let m = shared.mirror();
        m.synced() && m.get(&req.room).is_none()
    };
    if unheard {
        shared.metrics.directory_read("mirror");
        return Ok(RoomRecord::Missing);
    }
    shared.metrics.directory_read("kv");
    dir.read(&req.room).await
}

/// Decides for the room here: read the record, decide, write conditionally; on a lost race
/// read again (and normally return the winner).
pub(crate) async fn decide_and_write(
    shared: &Shared,
    req: &AllocateRequest,
) -> (AllocateReply, AllocResult) {
    let unavailable = |message: String, result| {
        (
            AllocateReply::Error {
                code: ErrorCode::Unavailable,
                message,
                transient: false,
            },
            result,
        )
    };
    // The directory (JetStream) failing to answer passes on its own (a stream electing a
    // new leader after a NATS server died takes 4 to 9 s): the node asks again.
    let directory_down = |e: &dyn std::fmt::Display| {
        (
            AllocateReply::Error {
                code: ErrorCode::Unavailable,
                message: format!("room directory: {e}"),
                transient: true,
            },
            AllocResult::Error,
        )
    };
    let Some(dir) = shared.directory.get() else {
        return unavailable("room directory not open".into(), AllocResult::Error);
    };
    for round in 0..MAX_ROUNDS {
        let record = match record(shared, dir, req, round).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(room = %req.room, error = %e, "directory read failed");
                return directory_down(&e);
            }
        };
        if req.lookup {
            return match record {
                RoomRecord::Assigned { assignment, .. } => (
                    AllocateReply::Assigned {
                        serve: assignment.node.clone(),
                        settings: lifecycle::cached_settings(shared, &assignment.room),
                        assignment,
                    },
                    AllocResult::Existing,
                ),
                _ => (
                    AllocateReply::Error {
                        code: ErrorCode::NotFound,
                        message: "no such room".into(),
                        transient: false,
                    },
                    AllocResult::Error,
                ),
            };
        }
        let before = match &record {
            RoomRecord::Assigned { assignment, .. } => Some(assignment.clone()),
            _ => None,
        };
        let decision = {
            let join = Join {
                room: &req.room,
                region: req.region.as_deref(),
                full: &req.full,
            };
            let stamp = Stamp {
                coordinator: &shared.config.id,
                now: Instant::now(),
                now_ms: crate::now_ms(),
            };
            decide(join, record, &mut shared.nodes(), stamp)
        };
        let added = decision.new_node().cloned();
        // What to write, on condition that the key is at `expected` (0: never written).
        let (assignment, expected, serve, result) = match decision {
            Decision::Keep { assignment, serve } => {
                return (
                    AllocateReply::Assigned {
                        settings: lifecycle::cached_settings(shared, &assignment.room),
                        assignment,
                        serve,
                    },
                    AllocResult::Existing,
                )
            }
            Decision::NoNode => {
                return unavailable("no live node can take the room".into(), AllocResult::NoNode)
            }
            Decision::Create(a) => {
                let serve = a.node.clone();
                (a, 0, serve, AllocResult::Created)
            }
            Decision::Update {
                assignment,
                revision,
                serve,
                why,
                ..
            } => {
                let result = match why {
                    Change::Failover => AllocResult::Reassigned,
                    Change::Reopen => AllocResult::Reopened,
                    Change::Extend => AllocResult::Extended,
                };
                (assignment, revision, serve, result)
            }
        };
        // A room that opens needs its stored settings: read while the entry is written.
        let opens = matches!(result, AllocResult::Created | AllocResult::Reopened);
        let settings = async {
            match opens {
                true => Some(lifecycle::read_settings(shared, &req.room).await),
                false => None,
            }
        };
        let (written, prefetched) = tokio::join!(dir.update(&assignment, expected), settings);
        match written {
            Ok(Write::Done(revision)) => {
                tracing::info!(
                    room = %assignment.room,
                    origin = %assignment.node,
                    %serve,
                    nodes = assignment.nodes.len(),
                    epoch = assignment.epoch,
                    revision,
                    result = result.as_str(),
                    "room assigned"
                );
                // Events and settings before the answer: `room_started` is in the stream
                // before the node can report anyone joining.
                let settings = match result {
                    AllocResult::Created | AllocResult::Reopened => {
                        lifecycle::opened(shared, req, &assignment, prefetched).await
                    }
                    AllocResult::Reassigned => {
                        if let Some(before) = &before {
                            let moved = webhooks::moved_events(
                                shared,
                                MoveReason::Failover,
                                before,
                                &assignment,
                                revision,
                            );
                            webhooks::emit_all(shared, &moved).await;
                        }
                        lifecycle::cached_settings(shared, &assignment.room)
                    }
                    _ => lifecycle::cached_settings(shared, &assignment.room),
                };
                return (
                    AllocateReply::Assigned {
                        assignment,
                        serve,
                        settings,
                    },
                    result,
                );
            }
            Ok(Write::Conflict) => {
                if let Some(added) = &added {
                    shared.nodes().unassigned(added);
                }
                shared.metrics.conflict();
                tracing::debug!(room = %req.room, "lost a directory race, reading the winner");
            }
            Err(e) => {
                if let Some(added) = &added {
                    shared.nodes().unassigned(added);
                }
                tracing::warn!(room = %req.room, error = %e, "directory write failed");
                return directory_down(&e);
            }
        }
    }
    unavailable(
        "room directory contended, try again".into(),
        AllocResult::Error,
    )
}
