//! Admin HTTP API. `/healthz`, `/readyz` and `/metrics` are open; everything else needs
//! `Authorization: Bearer <admin token>`.
//!
//! | route | what |
//! |---|---|
//! | `GET /nodes` | every known node: region, ws url, load, health, draining, heartbeat age |
//! | `GET /rooms` | the directory (room, origin, epoch, nodes with regions), each node's member count and relay links as it reports them |
//! | `POST /nodes/{id}/drain` | mark a node draining and tell it (`node.<id>.drain`): it moves its participants away and exits |
//! | `DELETE /nodes/{id}/drain` | clear the mark (a drain the node started runs to its end) |
//! | `GET /debug/snapshot` | the coordinator's own view: readiness, live coordinators, nodes |
//!
//! The room API (`/v1`, call tokens rather than the admin token) is [`crate::api`].

use crate::registry::Liveness;
use crate::Shared;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::future::join_all;
use protocol::cluster::{self, Drain, NodeRooms, RoomMembers, VERSION};
use protocol::{NodeId, RoomId};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `/rooms` waits for the nodes' member counts.
const MEMBERS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a listing waits for the mirror of the directory to hold every earlier write.
const MIRROR_WAIT: Duration = Duration::from_secs(2);

type Data = web::Data<Arc<Shared>>;

/// Binds the server (must run inside a tokio runtime) and returns it unstarted.
pub(crate) fn serve(shared: Arc<Shared>) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let listen = shared.config.http_listen;
    let tls = match &shared.config.tls {
        Some((cert, key)) => {
            let cert = std::fs::read(cert)?;
            let key = std::fs::read(key)?;
            Some(protocol::tls::server_config(&cert, &key).map_err(std::io::Error::other)?)
        }
        None => None,
    };
    let data: Data = web::Data::new(shared);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1);
    let server = match &tls {
        Some(tls) => server.bind_rustls_0_23(listen, tls.clone())?,
        None => server.bind(listen)?,
    };
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("server bound no address"))?;
    Ok((server.run(), addr))
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(|| async { "ok" }))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/nodes", web::get().to(nodes))
        .route("/rooms", web::get().to(rooms))
        .route("/nodes/{id}/drain", web::post().to(drain))
        .route("/nodes/{id}/drain", web::delete().to(undrain))
        .route("/debug/snapshot", web::get().to(snapshot))
        .configure(crate::api::configure);
}

/// The 401 response, unless the request carries the admin token.
fn denied(req: &HttpRequest, shared: &Shared) -> Option<HttpResponse> {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    use subtle::ConstantTimeEq;
    if bool::from(given.as_bytes().ct_eq(shared.config.admin_token.as_bytes())) {
        None
    } else {
        Some(
            HttpResponse::Unauthorized()
                .insert_header(("www-authenticate", "Bearer"))
                .body("admin bearer token required"),
        )
    }
}

async fn readyz(shared: Data) -> HttpResponse {
    match shared.readiness() {
        Ok(()) => HttpResponse::Ok().body("ready"),
        Err(why) => HttpResponse::ServiceUnavailable().body(why),
    }
}

async fn metrics(shared: Data) -> HttpResponse {
    let now = Instant::now();
    let nodes = shared.nodes().statuses(now);
    let coords = shared.coords().live(now).len();
    let rooms = shared.mirror().len();
    shared.metrics.directory_rooms(rooms);
    let body = shared
        .metrics
        .render(&nodes, coords, shared.readiness().is_ok());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

async fn nodes(req: HttpRequest, shared: Data) -> HttpResponse {
    if let Some(denied) = denied(&req, &shared) {
        return denied;
    }
    HttpResponse::Ok().json(shared.nodes().statuses(Instant::now()))
}

async fn snapshot(req: HttpRequest, shared: Data) -> HttpResponse {
    if let Some(denied) = denied(&req, &shared) {
        return denied;
    }
    HttpResponse::Ok().json(shared.snapshot())
}

/// One room of `GET /rooms`.
#[derive(Debug, Serialize)]
pub(crate) struct RoomRow {
    pub(crate) room: RoomId,
    /// The origin.
    pub(crate) node: NodeId,
    pub(crate) epoch: u64,
    pub(crate) coordinator: String,
    pub(crate) assigned_ms: u64,
    /// Members over the room's nodes that list the room; `null` when none does.
    pub(crate) members: Option<u32>,
    /// Whether the origin answered the member count request.
    pub(crate) node_answered: bool,
    /// Every node of the room, the origin first when the entry lists none.
    pub(crate) nodes: Vec<RoomNodeRow>,
}

/// One node of a room, with what it reported on `node.<n>.rooms`.
#[derive(Debug, Serialize)]
pub(crate) struct RoomNodeRow {
    pub(crate) node: NodeId,
    pub(crate) region: String,
    pub(crate) origin: bool,
    pub(crate) liveness: Liveness,
    /// Participants on this node; `null` when it did not answer or does not list the room.
    pub(crate) members: Option<u32>,
    pub(crate) answered: bool,
    /// Nodes this node has a relay link with for the room.
    pub(crate) links: Vec<NodeId>,
}

async fn rooms(req: HttpRequest, shared: Data) -> HttpResponse {
    if let Some(denied) = denied(&req, &shared) {
        return denied;
    }
    let shared: Arc<Shared> = Arc::clone(shared.get_ref());
    // NATS work runs on the coordinator's runtime, not the HTTP worker's.
    let rt = shared.rt.clone();
    match rt.spawn(list_rooms(shared)).await {
        Ok(Ok(rows)) => HttpResponse::Ok().json(rows),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(e.to_string()),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// The directory's rooms, each node with what it says on `node.<n>.rooms`. Every live node
/// is asked once, concurrently, whatever the number of rooms.
pub(crate) async fn list_rooms(shared: Arc<Shared>) -> crate::Result<Vec<RoomRow>> {
    let (Some(dir), Some(client)) = (shared.directory.get(), shared.client.get()) else {
        return Err(crate::Error::NotConnected);
    };
    // From the mirror once it holds every write made before this request; from a listing
    // of the bucket (bounded by `directory::LIST_LIMIT`) if it does not catch up in time.
    let mirrored = crate::mirror::entries_caught_up(&shared, dir.store(), MIRROR_WAIT).await;
    let assignments = match mirrored {
        Some(a) => a,
        None => dir.list().await?,
    };
    let live = shared.nodes().live_nodes(Instant::now());
    let asks = live.iter().map(|node| async move {
        let req = async_nats::Request::new()
            .payload(bytes::Bytes::from_static(b"{}"))
            .timeout(Some(MEMBERS_TIMEOUT));
        let answer = client.send_request(cluster::node_rooms(node), req).await;
        let rooms = answer
            .ok()
            .and_then(|m| serde_json::from_slice::<NodeRooms>(&m.payload).ok())
            .map(|r| {
                r.rooms
                    .into_iter()
                    .map(|m| (m.room.clone(), m))
                    .collect::<HashMap<_, _>>()
            });
        (node.clone(), rooms)
    });
    let reported: HashMap<NodeId, Option<HashMap<RoomId, RoomMembers>>> =
        join_all(asks).await.into_iter().collect();
    let now = Instant::now();
    let nodes = shared.nodes();
    Ok(assignments
        .into_iter()
        .map(|a| {
            let rows: Vec<RoomNodeRow> = a
                .members()
                .into_iter()
                .map(|node| {
                    let listed = reported.get(&node).and_then(Option::as_ref);
                    let here = listed.and_then(|rooms| rooms.get(&a.room));
                    let region = a
                        .nodes
                        .iter()
                        .find(|m| m.node == node)
                        .map(|m| m.region.as_str())
                        .filter(|r| !r.is_empty())
                        .or_else(|| nodes.region(&node))
                        .unwrap_or_default()
                        .to_owned();
                    RoomNodeRow {
                        region,
                        origin: node == a.node,
                        liveness: nodes.liveness(&node, now),
                        members: here.map(|m| m.members),
                        answered: listed.is_some(),
                        links: here.map(|m| m.links.clone()).unwrap_or_default(),
                        node,
                    }
                })
                .collect();
            // Counts come from the nodes: add them without trusting their size.
            let members = rows
                .iter()
                .filter_map(|n| n.members)
                .reduce(u32::saturating_add);
            RoomRow {
                members,
                node_answered: rows.iter().any(|n| n.origin && n.answered),
                nodes: rows,
                room: a.room,
                node: a.node,
                epoch: a.epoch,
                coordinator: a.coordinator,
                assigned_ms: a.assigned_ms,
            }
        })
        .collect())
}

async fn drain(req: HttpRequest, path: web::Path<String>, shared: Data) -> HttpResponse {
    set_drain(req, path.into_inner(), shared, true).await
}

async fn undrain(req: HttpRequest, path: web::Path<String>, shared: Data) -> HttpResponse {
    set_drain(req, path.into_inner(), shared, false).await
}

/// Marks the node here and tells it and every coordinator (they all listen on
/// `node.*.drain`); the node, told to drain, moves its participants away and exits.
async fn set_drain(req: HttpRequest, id: String, shared: Data, draining: bool) -> HttpResponse {
    if let Some(denied) = denied(&req, &shared) {
        return denied;
    }
    let Ok(node) = NodeId::new(id) else {
        return HttpResponse::BadRequest().body("bad node id");
    };
    let Some(client) = shared.client.get().cloned() else {
        return HttpResponse::ServiceUnavailable().body("not connected to nats");
    };
    {
        let mut nodes = shared.nodes();
        if !nodes.knows(&node) {
            return HttpResponse::NotFound().body("unknown node");
        }
        nodes.request_drain(&node, draining);
    }
    let body = match serde_json::to_vec(&Drain {
        v: VERSION,
        draining,
    }) {
        Ok(b) => b,
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    let subject = cluster::node_drain(&node);
    let publish = shared.rt.spawn(async move {
        client.publish(subject, body.into()).await?;
        client.flush().await.map_err(async_nats::Error::from)?;
        Ok::<_, async_nats::Error>(())
    });
    match publish.await {
        Ok(Ok(())) => {
            tracing::info!(%node, draining, "drain set by operator");
            HttpResponse::Ok().json(serde_json::json!({ "node": node, "draining": draining }))
        }
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(format!("drain not published: {e}")),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
