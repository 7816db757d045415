//! `/v1/rooms`: create, list, read and close rooms, and send them data.

use super::nodes::{ask_all, merge_counted};
use super::{body, check, client, finish, on_runtime, room_param, Data, Fail, Op, Reply};
use crate::decide::RoomRecord;
use crate::settings::{Created, Versioned};
use crate::webhooks::{self, EventId};
use crate::{lifecycle, Shared};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::future::join_all;
use protocol::cluster::{self, NodeRooms, RoomAssignment};
use protocol::room_api::{
    AdminOp, CreateRoom, CreatedBy, DataSent, RoomSettings, RoomView, SendData, StoredRoom,
    MAX_ALLOWED_USERS, MAX_DATA_BYTES,
};
use protocol::webhook::EventKind;
use protocol::{ErrorCode, NodeId, RoomId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The longest `topic` of `POST /v1/rooms/{room}/data`.
pub const MAX_TOPIC_BYTES: usize = 256;
/// How long a node has to say how many participants it hosts.
const COUNT_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) async fn create(req: HttpRequest, payload: web::Payload, shared: Data) -> HttpResponse {
    let result = async {
        check(&req, &shared, |g| g.room_create, "create rooms")?;
        let create: CreateRoom = body(payload).await?;
        create
            .settings
            .validate()
            .map_err(|why| Fail::new(ErrorCode::BadRequest, why))?;
        on_runtime(&shared, create_room(Arc::clone(&shared), create)).await
    }
    .await;
    finish(&shared, Op::CreateRoom, result)
}

pub(crate) async fn list(req: HttpRequest, shared: Data) -> HttpResponse {
    let result = async {
        check(&req, &shared, |g| g.room_list, "list rooms")?;
        on_runtime(&shared, list_rooms(Arc::clone(&shared))).await
    }
    .await;
    finish(&shared, Op::ListRooms, result)
}

pub(crate) async fn get(req: HttpRequest, path: web::Path<String>, shared: Data) -> HttpResponse {
    let result = async {
        let room = room_param(&path)?;
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        let shared2 = Arc::clone(&shared);
        on_runtime(&shared, async move {
            let view = view_of(&shared2, &room).await?;
            Reply::ok(&view)
        })
        .await
    }
    .await;
    finish(&shared, Op::GetRoom, result)
}

pub(crate) async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    shared: Data,
) -> HttpResponse {
    let result = async {
        let room = room_param(&path)?;
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        on_runtime(&shared, close_room(Arc::clone(&shared), room)).await
    }
    .await;
    finish(&shared, Op::DeleteRoom, result)
}

pub(crate) async fn send_data(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    shared: Data,
) -> HttpResponse {
    let result = async {
        let room = room_param(&path)?;
        check(&req, &shared, |g| g.admin_of(&room), "administer this room")?;
        let send: SendData = body(payload).await?;
        validate_data(&send)?;
        on_runtime(&shared, data(Arc::clone(&shared), room, send)).await
    }
    .await;
    finish(&shared, Op::SendData, result)
}

/// Bounds on `POST /v1/rooms/{room}/data`.
pub fn validate_data(send: &SendData) -> Result<(), Fail> {
    let size = serde_json::to_vec(&send.data).map_or(usize::MAX, |b| b.len());
    if size > MAX_DATA_BYTES {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("data is {size} bytes serialized, more than {MAX_DATA_BYTES}"),
        ));
    }
    if send.to.len() > MAX_ALLOWED_USERS {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("to names more than {MAX_ALLOWED_USERS} users"),
        ));
    }
    if send
        .topic
        .as_ref()
        .is_some_and(|t| t.len() > MAX_TOPIC_BYTES)
    {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("topic is longer than {MAX_TOPIC_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn stores(
    shared: &Shared,
) -> Result<(&crate::RoomDirectory, &crate::settings::SettingsStore), Fail> {
    match (shared.directory.get(), shared.settings.get()) {
        (Some(d), Some(s)) => Ok((d, s)),
        _ => Err(Fail::new(
            ErrorCode::Unavailable,
            "room directory not open yet",
        )),
    }
}

/// What the API knows of a room: its stored settings and its live entry.
pub(crate) struct Known {
    pub stored: Option<Versioned>,
    pub live: Option<RoomAssignment>,
}

/// Reads both from KV; 404 when the room has neither.
pub(crate) async fn known(shared: &Shared, room: &RoomId) -> Result<Known, Fail> {
    let (dir, store) = stores(shared)?;
    let (stored, record) = futures::join!(store.read(room), dir.read(room));
    let live = match record? {
        RoomRecord::Assigned { assignment, .. } => Some(assignment),
        _ => None,
    };
    let stored = stored?;
    if stored.is_none() && live.is_none() {
        return Err(Fail::new(ErrorCode::NotFound, format!("no room {room}")));
    }
    Ok(Known { stored, live })
}

/// The room's nodes, the origin first.
pub fn nodes_of(a: &RoomAssignment) -> Vec<NodeId> {
    let mut nodes = a.members();
    if let Some(i) = nodes.iter().position(|n| *n == a.node) {
        let origin = nodes.remove(i);
        nodes.insert(0, origin);
    }
    nodes
}

/// A room as the API shows it.
pub fn view(
    room: RoomId,
    stored: Option<&StoredRoom>,
    live: Option<&RoomAssignment>,
    num_participants: u32,
) -> RoomView {
    RoomView {
        room,
        settings: stored.map(|s| s.settings.clone()).unwrap_or_default(),
        created_ms: stored.map(|s| s.created_ms),
        active: live.is_some(),
        nodes: live.map(nodes_of).unwrap_or_default(),
        num_participants,
    }
}

async fn view_of(shared: &Shared, room: &RoomId) -> Result<RoomView, Fail> {
    let Known { stored, live } = known(shared, room).await?;
    let count = match &live {
        Some(a) => count_participants(&client(shared)?, &nodes_of(a), room).await,
        None => 0,
    };
    Ok(view(
        room.clone(),
        stored.as_ref().map(|v| &v.stored),
        live.as_ref(),
        count,
    ))
}

/// Participants of `room` over `nodes`, as each reports on `node.<n>.rooms` (a node that
/// does not answer counts none).
async fn count_participants(client: &async_nats::Client, nodes: &[NodeId], room: &RoomId) -> u32 {
    let asks = nodes.iter().map(|node| async move {
        let request = async_nats::Request::new()
            .payload(bytes::Bytes::from_static(b"{}"))
            .timeout(Some(COUNT_TIMEOUT));
        let Ok(msg) = client
            .send_request(cluster::node_rooms(node), request)
            .await
        else {
            return 0;
        };
        serde_json::from_slice::<NodeRooms>(&msg.payload)
            .ok()
            .and_then(|r| r.rooms.into_iter().find(|m| m.room == *room))
            .map_or(0, |m| m.members)
    });
    join_all(asks)
        .await
        .into_iter()
        .fold(0, u32::saturating_add)
}

async fn create_room(shared: Arc<Shared>, create: CreateRoom) -> Result<Reply, Fail> {
    let (dir, store) = stores(&shared)?;
    let room = create.room;
    if let RoomRecord::Assigned { .. } = dir.read(&room).await? {
        return Err(Fail::new(
            ErrorCode::AlreadyExists,
            format!("room {room} is live already"),
        ));
    }
    let stored = StoredRoom {
        v: lifecycle::STORED_VERSION,
        room: room.clone(),
        settings: create.settings,
        created_ms: crate::now_ms(),
        created_by: CreatedBy::Api,
    };
    let Created::Done(v) = store.create(stored).await? else {
        return Err(Fail::new(
            ErrorCode::AlreadyExists,
            format!("room {room} exists already"),
        ));
    };
    tracing::info!(%room, "room created through the api");
    let id = EventId::Started {
        room: &room,
        at_ms: v.stored.created_ms,
    };
    let event = webhooks::room_event(&shared, EventKind::RoomStarted, &room, id);
    webhooks::emit(&shared, &event).await;
    Reply::with(
        StatusCode::CREATED,
        &view(room.clone(), Some(&v.stored), None, 0),
    )
}

/// Every room: those with stored settings and those in the directory.
async fn list_rooms(shared: Arc<Shared>) -> Result<Reply, Fail> {
    let (_, store) = stores(&shared)?;
    let rows = crate::http::list_rooms(Arc::clone(&shared)).await?;
    let mut views: BTreeMap<RoomId, RoomView> = BTreeMap::new();
    for v in store.cache().rooms() {
        let room = v.stored.room.clone();
        views.insert(room.clone(), view(room, Some(&v.stored), None, 0));
    }
    for row in rows {
        let stored = store.cached(&row.room);
        let mut nodes: Vec<NodeId> = row.nodes.iter().map(|n| n.node.clone()).collect();
        if let Some(i) = nodes.iter().position(|n| *n == row.node) {
            let origin = nodes.remove(i);
            nodes.insert(0, origin);
        }
        let settings: RoomSettings = stored
            .as_ref()
            .map(|v| v.stored.settings.clone())
            .unwrap_or_default();
        views.insert(
            row.room.clone(),
            RoomView {
                room: row.room,
                settings,
                created_ms: stored.map(|v| v.stored.created_ms),
                active: true,
                nodes,
                num_participants: row.members.unwrap_or(0),
            },
        );
    }
    Reply::ok(&views.into_values().collect::<Vec<_>>())
}

/// `DELETE /v1/rooms/{room}`: every node closes the room; its settings go.
async fn close_room(shared: Arc<Shared>, room: RoomId) -> Result<Reply, Fail> {
    let Known { stored, live } = known(&shared, &room).await?;
    let (_, store) = stores(&shared)?;
    let removed = match &live {
        Some(a) => {
            let client = client(&shared)?;
            let answers = ask_all(&client, &nodes_of(a), &room, AdminOp::Close).await;
            merge_counted(answers)?
        }
        None => 0,
    };
    match (stored, live) {
        // Nobody ever joined: it finishes now.
        (Some(v), None) => {
            if !lifecycle::finish_unjoined(&shared, &v).await? {
                return Err(Fail::new(
                    ErrorCode::Unavailable,
                    format!("room {room} changed meanwhile, try again"),
                ));
            }
        }
        // Live: `room_finished` comes when its last node leaves the entry.
        (Some(v), Some(_)) => {
            store.delete(&room, v.revision).await?;
        }
        (None, _) => {}
    }
    tracing::info!(%room, removed, "room closed through the api");
    Reply::ok(&serde_json::json!({ "room": room, "removed": removed }))
}

async fn data(shared: Arc<Shared>, room: RoomId, send: SendData) -> Result<Reply, Fail> {
    let Known { live, .. } = known(&shared, &room).await?;
    let delivered = match live {
        Some(a) => {
            let op = AdminOp::Data {
                to: send.to,
                data: send.data,
                topic: send.topic,
            };
            let answers = ask_all(&client(&shared)?, &nodes_of(&a), &room, op).await;
            merge_counted(answers)?
        }
        None => 0,
    };
    Reply::ok(&DataSent { delivered })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::cluster::{RoomNode, VERSION};

    #[test]
    fn a_view_lists_the_origin_first() {
        let n = |s: &str| NodeId::new(s).unwrap();
        let a = RoomAssignment {
            v: VERSION,
            room: RoomId::new("r").unwrap(),
            node: n("n2"),
            epoch: 2,
            coordinator: "c".into(),
            assigned_ms: 1,
            nodes: vec![
                RoomNode {
                    node: n("n1"),
                    region: "eu".into(),
                },
                RoomNode {
                    node: n("n2"),
                    region: "us".into(),
                },
            ],
        };
        let v = view(a.room.clone(), None, Some(&a), 3);
        assert_eq!(v.nodes, [n("n2"), n("n1")]);
        assert!(v.active && v.created_ms.is_none());
        assert_eq!(v.settings, RoomSettings::default());
    }

    #[test]
    fn data_is_bounded() {
        let ok = SendData {
            data: serde_json::json!({"x": 1}),
            to: vec![],
            topic: Some("t".into()),
        };
        assert!(validate_data(&ok).is_ok());
        let big = SendData {
            data: serde_json::json!("x".repeat(MAX_DATA_BYTES)),
            ..ok.clone()
        };
        assert_eq!(validate_data(&big).unwrap_err().status(), 400);
        let long_topic = SendData {
            topic: Some("t".repeat(MAX_TOPIC_BYTES + 1)),
            ..ok
        };
        assert_eq!(validate_data(&long_topic).unwrap_err().status(), 400);
    }
}
