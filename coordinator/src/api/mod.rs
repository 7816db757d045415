//! The room API (README "Room API", `docs/openapi.yaml`): what an application may do to
//! rooms, on the coordinator's HTTP server under `/v1`.
//!
//! Every call carries `Authorization: Bearer <call token>`
//! ([`protocol::room_api::verify_call`] with the configured key and secret); a refused token
//! is 401 `unauthorized` with the reason, a missing grant 403 `forbidden`. Bodies are JSON of
//! at most [`MAX_BODY`] bytes. Every error is an [`ApiError`] body with the status of its
//! code ([`status_of`]). The routes are [`ROUTES`]; the work that talks to NATS runs on the
//! coordinator's runtime.
//!
//! Operations on participants ask every node of the room's entry concurrently
//! ([`nodes`]); a node that does not answer within [`nodes::ASK_TIMEOUT`] makes the call
//! 503 `unavailable` (naming the node) rather than answer with people missing.

mod auth;
pub mod nodes;
mod participants;
mod rooms;

use crate::Shared;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use protocol::room_api::ApiError;
use protocol::{ErrorCode, RoomId, UserId};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

/// The largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Prefix of every route.
pub const PREFIX: &str = "/v1";

type Data = web::Data<Arc<Shared>>;

/// One operation of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CreateRoom,
    ListRooms,
    GetRoom,
    DeleteRoom,
    ListParticipants,
    GetParticipant,
    RemoveParticipant,
    UpdateParticipant,
    MuteTrack,
    SendData,
}

/// A route: its method and path (OpenAPI's and actix's `{param}` syntax alike).
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub op: Op,
}

/// Every route of the API: what the server registers (`configure`) and what
/// `docs/openapi.yaml` must describe (`tests/tests/openapi.rs`).
pub static ROUTES: [Route; 10] = [
    Route {
        method: Method::POST,
        path: "/v1/rooms",
        op: Op::CreateRoom,
    },
    Route {
        method: Method::GET,
        path: "/v1/rooms",
        op: Op::ListRooms,
    },
    Route {
        method: Method::GET,
        path: "/v1/rooms/{room}",
        op: Op::GetRoom,
    },
    Route {
        method: Method::DELETE,
        path: "/v1/rooms/{room}",
        op: Op::DeleteRoom,
    },
    Route {
        method: Method::GET,
        path: "/v1/rooms/{room}/participants",
        op: Op::ListParticipants,
    },
    Route {
        method: Method::GET,
        path: "/v1/rooms/{room}/participants/{user}",
        op: Op::GetParticipant,
    },
    Route {
        method: Method::DELETE,
        path: "/v1/rooms/{room}/participants/{user}",
        op: Op::RemoveParticipant,
    },
    Route {
        method: Method::PATCH,
        path: "/v1/rooms/{room}/participants/{user}",
        op: Op::UpdateParticipant,
    },
    Route {
        method: Method::POST,
        path: "/v1/rooms/{room}/participants/{user}/tracks/{track}/mute",
        op: Op::MuteTrack,
    },
    Route {
        method: Method::POST,
        path: "/v1/rooms/{room}/data",
        op: Op::SendData,
    },
];

/// `(method, path)` of every route, e.g. `("POST", "/v1/rooms")`.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES.iter().map(|r| (r.method.as_str(), r.path)).collect()
}

fn route_of(op: Op) -> &'static Route {
    // Every op has its route (a unit test checks it); the first one stands in otherwise.
    ROUTES.iter().find(|r| r.op == op).unwrap_or(&ROUTES[0])
}

/// Registers the routes (and a JSON 404 for any other path under `/v1`).
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    let mut scope = web::scope(PREFIX);
    for r in &ROUTES {
        let path = r.path.strip_prefix(PREFIX).unwrap_or(r.path);
        let route = web::method(r.method.clone());
        let route = match r.op {
            Op::CreateRoom => route.to(rooms::create),
            Op::ListRooms => route.to(rooms::list),
            Op::GetRoom => route.to(rooms::get),
            Op::DeleteRoom => route.to(rooms::delete),
            Op::ListParticipants => route.to(participants::list),
            Op::GetParticipant => route.to(participants::get),
            Op::RemoveParticipant => route.to(participants::remove),
            Op::UpdateParticipant => route.to(participants::update),
            Op::MuteTrack => route.to(participants::mute),
            Op::SendData => route.to(rooms::send_data),
        };
        scope = scope.route(path, route);
    }
    // A path segment that is not UTF-8 once decoded: JSON 400 like any other bad id.
    let path_config = web::PathConfig::default().error_handler(|e, _| {
        let fail = Fail::new(ErrorCode::BadRequest, format!("path: {e}"));
        actix_web::error::InternalError::from_response(e, fail.response()).into()
    });
    cfg.service(
        scope
            .app_data(path_config)
            .default_service(web::to(|| async {
                Fail::new(ErrorCode::NotFound, "no such route").response()
            })),
    );
}

/// A refused call: the code (which gives the status) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: ErrorCode,
    pub message: String,
}

impl Fail {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    fn response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status());
        if self.code == ErrorCode::Unauthorized {
            r.insert_header(("www-authenticate", "Bearer"));
        }
        r.json(ApiError {
            code: self.code,
            message: self.message.clone(),
        })
    }
}

impl From<crate::Error> for Fail {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::NotConnected
            | crate::Error::Directory { .. }
            | crate::Error::Request(_) => Fail::new(ErrorCode::Unavailable, e.to_string()),
            other => Fail::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

/// The HTTP status of an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists | ErrorCode::RoomFull => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A successful answer.
pub enum Reply {
    Json(StatusCode, serde_json::Value),
    NoContent,
}

impl Reply {
    pub fn ok(body: &impl serde::Serialize) -> Result<Reply, Fail> {
        Self::with(StatusCode::OK, body)
    }

    pub fn with(status: StatusCode, body: &impl serde::Serialize) -> Result<Reply, Fail> {
        serde_json::to_value(body)
            .map(|v| Reply::Json(status, v))
            .map_err(|e| Fail::new(ErrorCode::Internal, e.to_string()))
    }
}

/// Runs `work` on the coordinator's runtime (where the NATS client lives).
pub(crate) async fn on_runtime<F>(shared: &Arc<Shared>, work: F) -> Result<Reply, Fail>
where
    F: Future<Output = Result<Reply, Fail>> + Send + 'static,
{
    match shared.rt.spawn(work).await {
        Ok(r) => r,
        Err(e) => Err(Fail::new(ErrorCode::Internal, e.to_string())),
    }
}

/// The response, counted in `api_requests_total{route,status}`.
pub(crate) fn finish(shared: &Shared, op: Op, result: Result<Reply, Fail>) -> HttpResponse {
    let response = match result {
        Ok(Reply::Json(status, body)) => HttpResponse::build(status).json(body),
        Ok(Reply::NoContent) => HttpResponse::NoContent().finish(),
        Err(fail) => fail.response(),
    };
    let r = route_of(op);
    shared.metrics.api_request(
        format!("{} {}", r.method.as_str(), r.path),
        response.status().as_u16(),
    );
    response
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes.
pub(crate) async fn body<T: DeserializeOwned>(mut payload: web::Payload) -> Result<T, Fail> {
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Fail::new(ErrorCode::BadRequest, format!("body: {e}")))?;
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(Fail::new(
                ErrorCode::BadRequest,
                format!("body larger than {MAX_BODY} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    parse(&bytes)
}

/// A JSON body, or 400 with serde's reason.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Fail> {
    serde_json::from_slice(bytes)
        .map_err(|e| Fail::new(ErrorCode::BadRequest, format!("body: {e}")))
}

pub(crate) fn room_param(s: &str) -> Result<RoomId, Fail> {
    RoomId::new(s).map_err(|e| Fail::new(ErrorCode::BadRequest, format!("room id: {e}")))
}

pub(crate) fn user_param(s: &str) -> Result<UserId, Fail> {
    UserId::new(s).map_err(|e| Fail::new(ErrorCode::BadRequest, format!("user id: {e}")))
}

/// The connected NATS client, or 503.
pub(crate) fn client(shared: &Shared) -> Result<async_nats::Client, Fail> {
    shared
        .client
        .get()
        .cloned()
        .ok_or_else(|| Fail::new(ErrorCode::Unavailable, "not connected to nats"))
}

pub(crate) use auth::authorize;

/// The request's bearer token checked, then `allowed(grants)`; 401/403/503 otherwise.
pub(crate) fn check(
    req: &HttpRequest,
    shared: &Shared,
    allowed: impl FnOnce(&protocol::room_api::ApiGrants) -> bool,
    what: &str,
) -> Result<(), Fail> {
    let grants = authorize(req, shared)?;
    if allowed(&grants) {
        Ok(())
    } else {
        Err(Fail::new(
            ErrorCode::Forbidden,
            format!("call token lacks the grant to {what}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_one_route_and_every_route_is_unique() {
        let ops = [
            Op::CreateRoom,
            Op::ListRooms,
            Op::GetRoom,
            Op::DeleteRoom,
            Op::ListParticipants,
            Op::GetParticipant,
            Op::RemoveParticipant,
            Op::UpdateParticipant,
            Op::MuteTrack,
            Op::SendData,
        ];
        for op in ops {
            assert_eq!(ROUTES.iter().filter(|r| r.op == op).count(), 1, "{op:?}");
        }
        let mut all = routes();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), ROUTES.len());
        assert!(all.iter().all(|(_, p)| p.starts_with("/v1/")));
    }

    #[test]
    fn error_codes_have_their_status() {
        assert_eq!(status_of(ErrorCode::BadRequest), 400);
        assert_eq!(status_of(ErrorCode::Unauthorized), 401);
        assert_eq!(status_of(ErrorCode::Forbidden), 403);
        assert_eq!(status_of(ErrorCode::NotFound), 404);
        assert_eq!(status_of(ErrorCode::AlreadyExists), 409);
        assert_eq!(status_of(ErrorCode::Unavailable), 503);
        assert_eq!(status_of(ErrorCode::Internal), 500);
    }

    #[test]
    fn malformed_bodies_are_bad_requests_with_the_reason() {
        let e = parse::<protocol::room_api::CreateRoom>(b"{\"room\": 5}").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = parse::<protocol::room_api::CreateRoom>(b"\xff").unwrap_err();
        assert_eq!(e.status(), 400);
        let ok = parse::<protocol::room_api::MuteTrack>(b"{\"muted\":true}").unwrap();
        assert!(ok.muted);
    }
}
