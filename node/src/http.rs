//! HTTP surface of a node: `/ws` signaling, health, metrics, the demo page, the dev token
//! endpoint and `/debug/snapshot`.

use crate::actors::session::SignalingSession;
use crate::actors::{NodeEntry, Observe};
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use protocol::token::{self, Claims};
use protocol::{RoomId, UserId};
use serde::Deserialize;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws))
        .route("/healthz", web::get().to(|| async { "ok" }))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/debug/snapshot", web::get().to(snapshot))
        .route("/dev/token", web::get().to(dev_token))
        .route("/admin/drain", web::post().to(admin_drain))
        .route("/cluster/hears/{node}", web::get().to(hears))
        .route(
            "/",
            web::get().to(|| static_file("text/html; charset=utf-8", INDEX)),
        )
        .route(
            "/app.js",
            web::get().to(|| static_file("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/style.css",
            web::get().to(|| static_file("text/css; charset=utf-8", STYLE)),
        );
}

const INDEX: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE: &str = include_str!("../static/style.css");

async fn static_file(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<NodeEntry>,
) -> Result<HttpResponse, actix_web::Error> {
    let shared = &node.shared;
    let ip = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let admitted = match shared.connections.admit(ip, &shared.config.limits) {
        Ok(guard) => guard,
        Err(crate::limits::ConnRefusal::Node) => {
            crate::limits::hit("connections");
            return Ok(HttpResponse::ServiceUnavailable()
                .insert_header(("retry-after", "5"))
                .body("node at its connection limit"));
        }
        Err(crate::limits::ConnRefusal::Address) => {
            crate::limits::hit("connections_per_ip");
            return Ok(
                HttpResponse::TooManyRequests().body("too many connections from this address")
            );
        }
    };
    // Frames are refused by their announced length, before their payload is buffered.
    let limited = crate::ws_limit::FrameLimit::new(body, crate::actors::session::MAX_READ_FRAME);
    let mut limited: actix_web::dev::Payload = actix_web::dev::Payload::Stream {
        payload: Box::pin(limited),
    };
    let body = {
        use actix_web::FromRequest;
        web::Payload::from_request(&req, &mut limited).await?
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    SignalingSession::start(node.get_ref().clone(), session, stream, admitted);
    Ok(response)
}

/// Ready when a join through it can succeed: standalone at once; in a cluster while NATS is
/// connected, once a coordinator has counted the node as alive.
async fn readyz(node: web::Data<NodeEntry>) -> HttpResponse {
    match &node.shared.cluster {
        Some(c) if !c.connected() => HttpResponse::ServiceUnavailable().body("nats not connected"),
        Some(_)
            if !node
                .shared
                .placeable
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            HttpResponse::ServiceUnavailable().body("no coordinator counts this node yet")
        }
        _ if node
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            HttpResponse::ServiceUnavailable().body("draining")
        }
        _ => HttpResponse::Ok().body("ready"),
    }
}

async fn metrics(node: web::Data<NodeEntry>) -> impl Responder {
    crate::metrics::publish(&node.shared.counters);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

/// `GET /cluster/hears/{node}`: whether this node hears `node` through NATS. A node that no
/// longer hears itself asks its peers: if one has listened for the whole node timeout
/// without hearing it (`"silent": true`), it is the one cut off, and fences itself.
async fn hears(path: web::Path<String>, node: web::Data<NodeEntry>) -> HttpResponse {
    let Ok(id) = protocol::NodeId::new(path.into_inner()) else {
        return HttpResponse::BadRequest().body("bad node id");
    };
    let silent =
        crate::actors::lock(&node.shared.peers).hears_nothing_from(&id, std::time::Instant::now());
    HttpResponse::Ok().json(serde_json::json!({ "node": id, "silent": silent }))
}

/// Whether the request carries `Authorization: Bearer <expected>`, compared in constant time.
fn bearer_ok(req: &HttpRequest, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
}

/// The refusal, unless the request carries the admin token (`--admin-token`; without one
/// the operators' endpoints are off).
fn admin_denied(req: &HttpRequest, config: &crate::config::Config) -> Option<HttpResponse> {
    match &config.admin_token {
        None => Some(HttpResponse::Forbidden().body("admin endpoints are off: set --admin-token")),
        Some(token) if bearer_ok(req, token) => None,
        Some(_) => Some(
            HttpResponse::Unauthorized()
                .insert_header(("www-authenticate", "Bearer"))
                .body("bearer admin token required"),
        ),
    }
}

/// `POST /admin/drain` (bearer admin token): the node moves its participants to other nodes
/// and exits (DESIGN "drain"); the same as SIGTERM.
async fn admin_drain(req: HttpRequest, node: web::Data<NodeEntry>) -> HttpResponse {
    if let Some(denied) = admin_denied(&req, &node.shared.config) {
        return denied;
    }
    let started = crate::actors::drain::start(&node.shared, &node.rooms, "admin api");
    HttpResponse::Accepted().json(serde_json::json!({
        "draining": true,
        "started": started,
        "deadline_secs": node.shared.config.drain_deadline.as_secs(),
    }))
}

/// Operators' view: every actor's snapshot. Needs the admin token as a bearer token unless
/// the node runs with dev tokens.
async fn snapshot(req: HttpRequest, node: web::Data<NodeEntry>) -> HttpResponse {
    if !node.shared.config.dev_tokens {
        if let Some(denied) = admin_denied(&req, &node.shared.config) {
            return denied;
        }
    }
    HttpResponse::Ok().json(crate::snapshot(&node).await)
}

#[derive(Deserialize)]
struct TokenQuery {
    room: String,
    user: String,
    name: Option<String>,
}

/// Mints join tokens for the demo page. Off unless the node runs with `--dev-tokens`.
async fn dev_token(q: web::Query<TokenQuery>, node: web::Data<NodeEntry>) -> HttpResponse {
    if !node.shared.config.dev_tokens {
        return HttpResponse::NotFound().body("dev tokens are off");
    }
    let (Ok(room), Ok(user)) = (RoomId::new(q.room.clone()), UserId::new(q.user.clone())) else {
        return HttpResponse::BadRequest()
            .body("room and user must match [A-Za-z0-9._~@:-]{1,128}");
    };
    let now = crate::unix_secs();
    let mut claims = Claims::new(room, user, now, 3600);
    claims.name = q
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(64).collect());
    let token = token::mint(node.shared.config.api_secret.as_bytes(), &claims);
    // Any node's page may ask (a page whose node died fetches a token from another one).
    HttpResponse::Ok()
        .insert_header(("access-control-allow-origin", "*"))
        .json(serde_json::json!({ "token": token }))
}

pub(crate) async fn observe_all(node: &NodeEntry) -> (serde_json::Value, serde_json::Value) {
    let rooms = node.rooms.send(Observe).await.unwrap_or_default();
    let router = node.shared.router.send(Observe).await.unwrap_or_default();
    (rooms, router)
}
