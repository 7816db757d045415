//! The room API (README "Room API", `docs/openapi.yaml`) against a real cluster: nats-server,
//! two coordinators and two nodes in two regions (`n1` in eu, `n2` in us) as processes, and
//! real WebRTC clients. A room whose participants sit in both regions spans both nodes, so
//! every call has to find its participant wherever it is hosted.

use anyhow::Context;
use chaos::sandbox::API_KEY;
use chaos::{wait_until, Client, PublishOpts};
use protocol::room_api::{mint_call, ApiClaims, ApiGrants};
use protocol::signal::{ServerMessage, TrackKind};
use protocol::ErrorCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tests::procs::{ProcSpec, Procs};
use tests::{now_unix, room_name, wait_media};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const WAIT: Duration = Duration::from_secs(30);

async fn cluster() -> anyhow::Result<Procs> {
    Procs::start(ProcSpec::new(
        NODE,
        COORDINATOR,
        &[("n1", "eu"), ("n2", "us")],
    ))
    .await
}

/// The room API of one coordinator, with call tokens minted per call.
struct Api {
    addr: SocketAddr,
    secret: String,
}

impl Api {
    fn of(procs: &Procs, coordinator: usize) -> anyhow::Result<Api> {
        let c = procs
            .cluster
            .coordinators()
            .nth(coordinator)
            .context("no such coordinator")?;
        Ok(Api {
            addr: SocketAddr::from(([127, 0, 0, 1], c.port())),
            secret: procs.secret().to_owned(),
        })
    }

    fn token(&self, grants: ApiGrants, ttl: u64) -> String {
        mint_call(
            self.secret.as_bytes(),
            &ApiClaims::new(API_KEY, grants, now_unix(), ttl),
        )
    }

    /// A call with a fresh token carrying every grant: (status, JSON body or null).
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let token = self.token(ApiGrants::all(), 60);
        self.call_as(Some(&token), method, path, body.map(|b| b.to_string()))
            .await
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, Value)> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, text) =
            chaos::bench::http_exchange(self.addr, method, path, &headers, body).await?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| {
                format!("{method} {path}: {status} with a body that is not JSON: {text}")
            })?
        };
        Ok((status, value))
    }

    /// A call that must succeed (2xx): its body.
    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = self.call(method, path, body).await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        Ok(value)
    }

    /// A call that must fail with `status` and the error `code`.
    async fn fails(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<String>,
        status: u16,
        code: ErrorCode,
    ) -> anyhow::Result<String> {
        let (got, value) = self.call_as(token, method, path, body).await?;
        anyhow::ensure!(
            got == status && value["code"] == json!(code.as_str()),
            "{method} {path}: wanted {status} {}, got {got} {value}",
            code.as_str()
        );
        Ok(value["message"].as_str().unwrap_or_default().to_owned())
    }
}

/// A client of `region` joining `room` through `node`'s socket, publishing if it may.
async fn join(
    procs: &Procs,
    node: &str,
    region: &str,
    room: &str,
    user: &str,
    can_publish: bool,
) -> anyhow::Result<Client> {
    let mut claims = tests::claims(room, user, 600);
    claims.can_publish = can_publish;
    let client = procs.join_as(node, region, &claims).await?;
    if can_publish {
        client.publish(PublishOpts::default()).await?;
    }
    Ok(client)
}

/// The error code a join was refused with.
fn refusal(joined: &anyhow::Result<Client>) -> Option<ErrorCode> {
    joined
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<chaos::Error>())
        .and_then(|e| e.server_code())
}

/// Packets of `kind` `client` received from `publisher`.
fn received(client: &Client, publisher: &str, kind: TrackKind) -> u64 {
    client
        .track_stats()
        .iter()
        .filter(|t| t.publisher == publisher && t.kind == kind)
        .map(|t| t.received)
        .sum()
}

/// Waits until `client` got a message `pred` accepts.
async fn heard(
    client: &Client,
    who: &str,
    pred: impl FnMut(&ServerMessage) -> bool,
) -> anyhow::Result<ServerMessage> {
    client
        .wait_for(WAIT, pred)
        .await
        .with_context(|| format!("{who} waited in vain"))
}

fn participant<'a>(list: &'a Value, id: &str) -> anyhow::Result<&'a Value> {
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["id"] == json!(id)))
        .with_context(|| format!("{id} not in {list}"))
}

/// While bob's video is muted, the subscribers keep getting his audio (2 s of it) but no
/// more than the packets already in flight of his video.
async fn video_stays_muted(subscribers: &[(&str, &Client)]) -> anyhow::Result<()> {
    let before: Vec<(u64, u64)> = subscribers
        .iter()
        .map(|(_, c)| {
            (
                received(c, "bob", TrackKind::Audio),
                received(c, "bob", TrackKind::Video),
            )
        })
        .collect();
    for ((who, c), (audio, _)) in subscribers.iter().zip(&before) {
        wait_until(
            WAIT,
            "bob's audio keeps flowing while his video is muted",
            || async {
                let now = received(c, "bob", TrackKind::Audio);
                if now >= audio + 100 {
                    Ok(())
                } else {
                    Err(format!("{who}: audio from bob {now} < {}", audio + 100))
                }
            },
        )
        .await?;
    }
    for ((who, c), (_, video)) in subscribers.iter().zip(&before) {
        let now = received(c, "bob", TrackKind::Video);
        anyhow::ensure!(
            now <= video + 10,
            "{who} still receives bob's muted video: {video} → {now} while 2 s of audio arrived"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_acts_on_a_room_that_spans_two_nodes() -> anyhow::Result<()> {
    let procs = cluster().await?;
    let api = Api::of(&procs, 0)?;
    let room = room_name("api");

    // Create, then create again.
    let created = api
        .ok(
            "POST",
            "/v1/rooms",
            Some(json!({"room": room, "metadata": "standup", "max_participants": 10})),
        )
        .await?;
    assert_eq!(created["room"], json!(room));
    assert_eq!(created["active"], json!(false), "{created}");
    assert_eq!(created["settings"]["metadata"], json!("standup"));
    api.fails(
        Some(&api.token(ApiGrants::all(), 60)),
        "POST",
        "/v1/rooms",
        Some(json!({"room": room}).to_string()),
        409,
        ErrorCode::AlreadyExists,
    )
    .await?;

    // alice in eu (n1), bob and carol (a listener) in us (n2).
    let alice = join(&procs, "n1", "eu", &room, "alice", true).await?;
    let bob = join(&procs, "n2", "us", &room, "bob", true).await?;
    let carol = join(&procs, "n2", "us", &room, "carol", false).await?;
    wait_media(&alice, &["bob"], 50).await?;
    wait_media(&bob, &["alice"], 50).await?;
    wait_media(&carol, &["alice", "bob"], 50).await?;

    // The room as the API sees it, from the other coordinator too.
    let other = Api::of(&procs, 1)?;
    let view = other.ok("GET", &format!("/v1/rooms/{room}"), None).await?;
    assert_eq!(view["active"], json!(true), "{view}");
    assert_eq!(view["num_participants"], json!(3), "{view}");
    let nodes = view["nodes"].to_string();
    assert!(
        nodes.contains("n1") && nodes.contains("n2"),
        "spans both nodes: {view}"
    );
    let listed = api.ok("GET", "/v1/rooms", None).await?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["room"] == json!(room))),
        "{listed}"
    );
    let people = api
        .ok("GET", &format!("/v1/rooms/{room}/participants"), None)
        .await?;
    assert_eq!(people.as_array().map(Vec::len), Some(3), "{people}");
    assert_eq!(participant(&people, "alice")?["node"], json!("n1"));
    assert_eq!(participant(&people, "bob")?["node"], json!("n2"));
    assert_eq!(participant(&people, "carol")?["can_publish"], json!(false));
    let bob_video = participant(&people, "bob")?["tracks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["kind"] == json!("video")))
        .and_then(|t| t["id"].as_str())
        .with_context(|| format!("bob publishes no video: {people}"))?
        .to_owned();

    // Mute bob's video: everyone is told, and no subscriber on either node receives it.
    let muted = api
        .ok(
            "POST",
            &format!("/v1/rooms/{room}/participants/bob/tracks/{bob_video}/mute"),
            Some(json!({"muted": true})),
        )
        .await?;
    assert!(
        muted["tracks"].to_string().contains("\"muted\":true"),
        "{muted}"
    );
    for (who, c) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        heard(c, who, |m| {
            matches!(m, ServerMessage::TrackMuted { participant, track_id, muted: true }
                if participant.as_str() == "bob" && track_id.as_str() == bob_video)
        })
        .await?;
    }
    video_stays_muted(&[("alice", &alice), ("carol", &carol)]).await?;
    api.ok(
        "POST",
        &format!("/v1/rooms/{room}/participants/bob/tracks/{bob_video}/mute"),
        Some(json!({"muted": false})),
    )
    .await?;
    let video = received(&alice, "bob", TrackKind::Video);
    wait_until(WAIT, "bob's video back at alice after unmuting", || async {
        let now = received(&alice, "bob", TrackKind::Video);
        if now >= video + 50 {
            Ok(())
        } else {
            Err(format!("{video} → {now}"))
        }
    })
    .await?;

    // A listener may not publish; promoted, it publishes at once and both nodes get it.
    let refused = carol.publish(PublishOpts::default()).await;
    assert!(
        refused.as_ref().err().and_then(|e| e.server_code()) == Some(ErrorCode::Forbidden),
        "a listener's publish: {refused:?}"
    );
    let promoted = api
        .ok(
            "PATCH",
            &format!("/v1/rooms/{room}/participants/carol"),
            Some(json!({"can_publish": true})),
        )
        .await?;
    assert_eq!(promoted["can_publish"], json!(true), "{promoted}");
    heard(&carol, "carol", |m| {
        matches!(
            m,
            ServerMessage::PermissionsChanged {
                can_publish: true,
                ..
            }
        )
    })
    .await?;
    carol.publish(PublishOpts::default()).await?;
    wait_media(&alice, &["carol"], 50).await?;
    wait_media(&bob, &["carol"], 50).await?;

    // Demoted, bob's tracks end for everyone.
    let demoted = api
        .ok(
            "PATCH",
            &format!("/v1/rooms/{room}/participants/bob"),
            Some(json!({"can_publish": false})),
        )
        .await?;
    assert_eq!(demoted["can_publish"], json!(false), "{demoted}");
    for (who, c) in [("alice", &alice), ("carol", &carol)] {
        heard(c, who, |m| {
            matches!(m, ServerMessage::TrackUnpublished { participant, track_id }
                if participant.as_str() == "bob" && track_id.as_str() == bob_video)
        })
        .await?;
    }
    let people = api
        .ok("GET", &format!("/v1/rooms/{room}/participants"), None)
        .await?;
    assert_eq!(
        participant(&people, "bob")?["tracks"],
        json!([]),
        "{people}"
    );

    // Data to everyone, then to alice alone.
    let sent = api
        .ok(
            "POST",
            &format!("/v1/rooms/{room}/data"),
            Some(json!({"data": {"hello": 1}, "topic": "t"})),
        )
        .await?;
    assert_eq!(sent["delivered"], json!(3), "{sent}");
    for (who, c) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        heard(c, who, |m| {
            matches!(m, ServerMessage::Data { data, topic } if data == &json!({"hello": 1}) && topic.as_deref() == Some("t"))
        })
        .await?;
    }
    let sent = api
        .ok(
            "POST",
            &format!("/v1/rooms/{room}/data"),
            Some(json!({"data": "for alice", "to": ["alice"]})),
        )
        .await?;
    assert_eq!(sent["delivered"], json!(1), "{sent}");
    heard(
        &alice,
        "alice",
        |m| matches!(m, ServerMessage::Data { data, .. } if data == &json!("for alice")),
    )
    .await?;
    api.ok(
        "POST",
        &format!("/v1/rooms/{room}/data"),
        Some(json!({"data": "marker"})),
    )
    .await?;
    heard(
        &bob,
        "bob",
        |m| matches!(m, ServerMessage::Data { data, .. } if data == &json!("marker")),
    )
    .await?;
    assert!(
        !bob.messages()
            .iter()
            .any(|m| matches!(m, ServerMessage::Data { data, .. } if data == &json!("for alice"))),
        "data for alice reached bob"
    );

    // Remove alice (hosted on n1) through the coordinator: her socket closes, the others
    // (on n2) see her leave.
    let removed = api
        .ok(
            "DELETE",
            &format!("/v1/rooms/{room}/participants/alice"),
            None,
        )
        .await?;
    assert_eq!(removed["id"], json!("alice"), "{removed}");
    heard(
        &alice,
        "alice",
        |m| matches!(m, ServerMessage::Removed { reason } if reason == "removed"),
    )
    .await?;
    alice.wait_closed(WAIT).await?;
    assert_eq!(alice.close_code(), Some(1000), "{:?}", alice.close_info());
    for (who, c) in [("bob", &bob), ("carol", &carol)] {
        heard(
            c,
            who,
            |m| matches!(m, ServerMessage::ParticipantLeft { id } if id.as_str() == "alice"),
        )
        .await?;
    }
    api.fails(
        Some(&api.token(ApiGrants::all(), 60)),
        "DELETE",
        &format!("/v1/rooms/{room}/participants/alice"),
        None,
        404,
        ErrorCode::NotFound,
    )
    .await?;

    // Close the room: everyone out, and the room is gone.
    api.ok("DELETE", &format!("/v1/rooms/{room}"), None).await?;
    for (who, c) in [("bob", &bob), ("carol", &carol)] {
        heard(
            c,
            who,
            |m| matches!(m, ServerMessage::Removed { reason } if reason == "room_closed"),
        )
        .await?;
        c.wait_closed(WAIT).await?;
    }
    wait_until(WAIT, "the closed room disappears", || async {
        match api.call("GET", &format!("/v1/rooms/{room}"), None).await {
            Ok((404, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_or_on_nothing_get_their_error() -> anyhow::Result<()> {
    let procs = cluster().await?;
    let api = Api::of(&procs, 0)?;
    let now = now_unix();
    let list = "/v1/rooms";

    api.fails(None, "GET", list, None, 401, ErrorCode::Unauthorized)
        .await?;
    let forged = mint_call(
        b"not-the-secret-not-the-secret-xx",
        &ApiClaims::new(API_KEY, ApiGrants::all(), now, 60),
    );
    api.fails(
        Some(&forged),
        "GET",
        list,
        None,
        401,
        ErrorCode::Unauthorized,
    )
    .await?;
    let mut expired = ApiClaims::new(API_KEY, ApiGrants::all(), now - 3600, 60);
    expired.exp = now - 120;
    let expired = mint_call(api.secret.as_bytes(), &expired);
    let why = api
        .fails(
            Some(&expired),
            "GET",
            list,
            None,
            401,
            ErrorCode::Unauthorized,
        )
        .await?;
    assert!(why.contains("expired"), "{why}");
    let long = api.token(ApiGrants::all(), 3600);
    api.fails(Some(&long), "GET", list, None, 401, ErrorCode::Unauthorized)
        .await?;
    let other_key = mint_call(
        api.secret.as_bytes(),
        &ApiClaims::new("someone-else", ApiGrants::all(), now, 60),
    );
    api.fails(
        Some(&other_key),
        "GET",
        list,
        None,
        401,
        ErrorCode::Unauthorized,
    )
    .await?;
    let join_token = procs.token("r", "u");
    api.fails(
        Some(&join_token),
        "GET",
        list,
        None,
        401,
        ErrorCode::Unauthorized,
    )
    .await?;

    // Grants.
    let list_only = api.token(
        ApiGrants {
            room_list: true,
            ..ApiGrants::default()
        },
        60,
    );
    api.fails(
        Some(&list_only),
        "POST",
        list,
        Some(json!({"room": "x"}).to_string()),
        403,
        ErrorCode::Forbidden,
    )
    .await?;
    let room_a = api.token(
        ApiGrants {
            room_admin: true,
            room: Some(protocol::RoomId::new("a")?),
            ..ApiGrants::default()
        },
        60,
    );
    api.fails(
        Some(&room_a),
        "GET",
        "/v1/rooms/b",
        None,
        403,
        ErrorCode::Forbidden,
    )
    .await?;

    // Nothing there.
    let all = api.token(ApiGrants::all(), 60);
    for (method, path) in [
        ("GET", "/v1/rooms/nowhere"),
        ("GET", "/v1/rooms/nowhere/participants"),
        ("DELETE", "/v1/rooms/nowhere"),
        ("DELETE", "/v1/rooms/nowhere/participants/u"),
    ] {
        api.fails(Some(&all), method, path, None, 404, ErrorCode::NotFound)
            .await?;
    }
    let room = room_name("errs");
    let _alice = join(&procs, "n1", "eu", &room, "alice", true).await?;
    api.fails(
        Some(&all),
        "DELETE",
        &format!("/v1/rooms/{room}/participants/nobody"),
        None,
        404,
        ErrorCode::NotFound,
    )
    .await?;
    api.fails(
        Some(&all),
        "POST",
        &format!("/v1/rooms/{room}/participants/alice/tracks/TR_nope/mute"),
        Some(json!({"muted": true}).to_string()),
        404,
        ErrorCode::NotFound,
    )
    .await?;

    // Bad bodies.
    api.fails(
        Some(&all),
        "POST",
        list,
        Some("{not json".into()),
        400,
        ErrorCode::BadRequest,
    )
    .await?;
    api.fails(
        Some(&all),
        "POST",
        list,
        Some(json!({"room": "big", "metadata": "x".repeat(5000)}).to_string()),
        400,
        ErrorCode::BadRequest,
    )
    .await?;
    api.fails(
        Some(&all),
        "POST",
        &format!("/v1/rooms/{room}/data"),
        Some(json!({"data": "x".repeat(70_000)}).to_string()),
        400,
        ErrorCode::BadRequest,
    )
    .await?;

    // None of it harmed the coordinator.
    api.ok("GET", list, None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_settings_are_enforced_across_nodes() -> anyhow::Result<()> {
    let procs = cluster().await?;
    let api = Api::of(&procs, 0)?;

    // A limit of two counts the participants of both nodes.
    let small = room_name("small");
    api.ok(
        "POST",
        "/v1/rooms",
        Some(json!({"room": small, "max_participants": 2})),
    )
    .await?;
    let _a = join(&procs, "n1", "eu", &small, "alice", false).await?;
    let _b = join(&procs, "n2", "us", &small, "bob", false).await?;
    let third = join(&procs, "n1", "eu", &small, "carol", false).await;
    assert_eq!(
        refusal(&third),
        Some(ErrorCode::RoomFull),
        "{:?}",
        third.err()
    );

    // A private room admits the users it names, and tokens with the grant.
    let private = room_name("private");
    api.ok(
        "POST",
        "/v1/rooms",
        Some(json!({"room": private, "private": true, "allowed_users": ["alice"]})),
    )
    .await?;
    let _alice = join(&procs, "n1", "eu", &private, "alice", false).await?;
    let bob = join(&procs, "n2", "us", &private, "bob", false).await;
    assert_eq!(refusal(&bob), Some(ErrorCode::Forbidden), "{:?}", bob.err());
    let mut claims = tests::claims(&private, "bob", 600);
    claims.admit_private = true;
    let _guest = procs.join_as("n2", "us", &claims).await?;

    // A created room nobody joins closes after its empty timeout; so does a room that
    // emptied.
    let idle = room_name("idle");
    api.ok(
        "POST",
        "/v1/rooms",
        Some(json!({"room": idle, "empty_timeout_secs": 1})),
    )
    .await?;
    let emptied = room_name("emptied");
    api.ok(
        "POST",
        "/v1/rooms",
        Some(json!({"room": emptied, "empty_timeout_secs": 1})),
    )
    .await?;
    let visitor = join(&procs, "n2", "us", &emptied, "dave", false).await?;
    visitor.leave().await?;
    for room in [&idle, &emptied] {
        wait_until(WAIT, "an empty room closes after its timeout", || async {
            match api.call("GET", &format!("/v1/rooms/{room}"), None).await {
                Ok((404, _)) => Ok(()),
                other => Err(format!("{room}: {other:?}")),
            }
        })
        .await?;
    }

    // Settings in the token of the join that opens a room.
    let by_token = room_name("bytoken");
    let mut claims = tests::claims(&by_token, "erin", 600);
    claims.room_settings = Some(protocol::room_api::RoomSettings {
        max_participants: 1,
        ..Default::default()
    });
    let _erin = procs.join_as("n1", "eu", &claims).await?;
    let view = api
        .ok("GET", &format!("/v1/rooms/{by_token}"), None)
        .await?;
    assert_eq!(view["settings"]["max_participants"], json!(1), "{view}");
    let frank = join(&procs, "n2", "us", &by_token, "frank", false).await;
    assert_eq!(
        refusal(&frank),
        Some(ErrorCode::RoomFull),
        "{:?}",
        frank.err()
    );
    Ok(())
}
