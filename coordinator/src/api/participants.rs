//! `/v1/rooms/{room}/participants`: list, read, remove, change grants, mute tracks. Each
//! asks every node of the room's entry (see [`super::nodes`]).

use super::nodes::{ask_all, merge_participants, merge_targeted};
use super::rooms::{known, nodes_of};
use super::{
    body, check, client, finish, on_runtime, room_param, user_param, Data, Fail, Op, Reply,
};
use crate::Shared;
use actix_web::{web, HttpRequest, HttpResponse};
use protocol::room_api::{AdminOp, MuteTrack, ParticipantDetail, UpdateParticipant};
use protocol::{ErrorCode, RoomId, TrackId, UserId};
use std::sync::Arc;

pub(crate) async fn list(req: HttpRequest, path: web::Path<String>, shared: Data) -> HttpResponse {
    let result = async {
        let room = room_param(&path)?;
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        let shared2 = Arc::clone(&shared);
        on_runtime(&shared, async move {
            Reply::ok(&participants(&shared2, &room).await?)
        })
        .await
    }
    .await;
    finish(&shared, Op::ListParticipants, result)
}

pub(crate) async fn get(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    shared: Data,
) -> HttpResponse {
    let result = async {
        let (room, user) = (room_param(&path.0)?, user_param(&path.1)?);
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        let shared2 = Arc::clone(&shared);
        on_runtime(&shared, async move {
            let found = participants(&shared2, &room)
                .await?
                .into_iter()
                .find(|p| p.id == user);
            match found {
                Some(p) => Reply::ok(&p),
                None => Err(not_in_room(&user, &room)),
            }
        })
        .await
    }
    .await;
    finish(&shared, Op::GetParticipant, result)
}

pub(crate) async fn remove(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    shared: Data,
) -> HttpResponse {
    let result = async {
        let (room, user) = (room_param(&path.0)?, user_param(&path.1)?);
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        let op = AdminOp::Remove { user: user.clone() };
        on_runtime(&shared, act(Arc::clone(&shared), room, user, op)).await
    }
    .await;
    finish(&shared, Op::RemoveParticipant, result)
}

pub(crate) async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    shared: Data,
) -> HttpResponse {
    let result = async {
        let (room, user) = (room_param(&path.0)?, user_param(&path.1)?);
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        let change: UpdateParticipant = body(payload).await?;
        let op = AdminOp::Grants {
            user: user.clone(),
            can_publish: change.can_publish,
            can_subscribe: change.can_subscribe,
        };
        on_runtime(&shared, act(Arc::clone(&shared), room, user, op)).await
    }
    .await;
    finish(&shared, Op::UpdateParticipant, result)
}

pub(crate) async fn mute(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
    shared: Data,
) -> HttpResponse {
    let result = async {
        let (room, user) = (room_param(&path.0)?, user_param(&path.1)?);
        let track = TrackId::new(&path.2)
            .map_err(|e| Fail::new(ErrorCode::BadRequest, format!("track id: {e}")))?;
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        let MuteTrack { muted } = body(payload).await?;
        let op = AdminOp::Mute {
            user: user.clone(),
            track,
            muted,
        };
        on_runtime(&shared, act(Arc::clone(&shared), room, user, op)).await
    }
    .await;
    finish(&shared, Op::MuteTrack, result)
}

fn not_in_room(user: &UserId, room: &RoomId) -> Fail {
    Fail::new(
        ErrorCode::NotFound,
        format!("no participant {user} in room {room}"),
    )
}

/// Everyone in the room, over its nodes; `[]` for a created room nobody joined.
async fn participants(shared: &Shared, room: &RoomId) -> Result<Vec<ParticipantDetail>, Fail> {
    let Some(live) = known(shared, room).await?.live else {
        return Ok(Vec::new());
    };
    let answers = ask_all(
        &client(shared)?,
        &nodes_of(&live),
        room,
        AdminOp::Participants,
    )
    .await;
    merge_participants(answers)
}

/// An operation on one participant: the participant afterwards (200), or 204 when its node
/// did not describe it.
async fn act(shared: Arc<Shared>, room: RoomId, user: UserId, op: AdminOp) -> Result<Reply, Fail> {
    let Some(live) = known(&shared, &room).await?.live else {
        return Err(not_in_room(&user, &room));
    };
    let answers = ask_all(&client(&shared)?, &nodes_of(&live), &room, op).await;
    match merge_targeted(answers, &format!("participant {user}"))? {
        Some(p) => Reply::ok(&p),
        None => Ok(Reply::NoContent),
    }
}
