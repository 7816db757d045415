//! `docs/openapi.yaml`, the room API's description, checked by a real validator
//! (`openapi-spec-validator`, PyPI, installed by `scripts/install-deps`) and against the
//! routes the coordinator registers (`coordinator::api::routes`), both ways, so the file
//! cannot drift from the code; and every body the API and the webhooks send, serialized from
//! the protocol's types, validates against the file's schema for it (responses are closed:
//! a field the file does not name fails). Python (with the validator's PyYAML and
//! jsonschema) reads the YAML.

use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("docs/openapi.yaml")
}

use tests::succeed;

/// The file as JSON.
fn document() -> Result<serde_json::Value> {
    let json = succeed(
        Command::new("python3")
            .arg("-c")
            .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
            .arg(spec()),
    )?;
    Ok(serde_json::from_str(&json)?)
}

/// `(METHOD, path)` of every operation under `/v1` in the document.
fn documented(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let Some(paths) = doc["paths"].as_object() else {
        return out;
    };
    for (path, item) in paths {
        if !path.starts_with("/v1/") {
            continue;
        }
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

fn registered() -> BTreeSet<(String, String)> {
    coordinator::api::routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect()
}

/// What one side has and the other lacks, as a failure message.
fn drift(
    doc: &BTreeSet<(String, String)>,
    code: &BTreeSet<(String, String)>,
) -> Result<(), String> {
    let undocumented: Vec<_> = code.difference(doc).collect();
    let unserved: Vec<_> = doc.difference(code).collect();
    if undocumented.is_empty() && unserved.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "routes the coordinator serves but docs/openapi.yaml lacks: {undocumented:?}; \
             routes the file describes but the coordinator does not serve: {unserved:?}"
        ))
    }
}

#[test]
fn the_openapi_file_is_valid() -> Result<()> {
    let out = succeed(Command::new("openapi-spec-validator").arg(spec()))?;
    ensure!(out.contains("OK"), "{out}");
    Ok(())
}

#[test]
fn the_openapi_file_describes_exactly_the_routes_served() -> Result<()> {
    let doc = document()?;
    let documented = documented(&doc);
    let registered = registered();
    ensure!(registered.len() >= 10, "{registered:?}");
    drift(&documented, &registered).map_err(anyhow::Error::msg)?;

    // The check catches a route missing from either side.
    let (first, rest) = {
        let mut all: Vec<_> = documented.iter().cloned().collect();
        let first = all.remove(0);
        (first, all.into_iter().collect::<BTreeSet<_>>())
    };
    let missing = drift(&rest, &registered).expect_err("a missing route is caught");
    ensure!(missing.contains(&first.1), "{missing}");
    let mut extra = documented.clone();
    extra.insert(("GET".into(), "/v1/nowhere".into()));
    ensure!(drift(&extra, &registered).is_err());
    Ok(())
}

#[test]
fn every_operation_documents_its_errors() -> Result<()> {
    let doc = document()?;
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        for status in ["401", "403", "500", "503"] {
            ensure!(
                op["responses"].get(status).is_some(),
                "{method} {path} does not document {status}"
            );
        }
        let takes_room = path.contains("{room}");
        if takes_room {
            ensure!(
                op["responses"].get("404").is_some() && op["responses"].get("400").is_some(),
                "{method} {path} takes a room id and does not document 400 and 404"
            );
        }
    }
    ensure!(
        doc["webhooks"]["roomEvent"]["post"].is_object(),
        "the webhook is described"
    );
    Ok(())
}

/// Validates `samples` (`[[schema name, value], …]`) against the file's component schemas
/// (JSON Schema 2020-12, as OpenAPI 3.1 has them); returns one line per sample that fails.
fn schema_failures(samples: &serde_json::Value) -> Result<Vec<String>> {
    const CHECK: &str = r##"
import json, sys, yaml
from jsonschema import Draft202012Validator
doc = yaml.safe_load(open(sys.argv[1]))
for name, value in json.load(sys.stdin):
    root = dict(doc)
    root["$ref"] = "#/components/schemas/" + name
    errors = [e.message for e in Draft202012Validator(root).iter_errors(value)]
    if errors:
        print(name + ": " + "; ".join(errors) + " in " + json.dumps(value))
"##;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(spec())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3 (scripts/install-deps openapi installs jsonschema)")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(serde_json::to_string(samples)?.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "schema check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Every error code (the match fails to compile when a code is added: add it here and to
/// `ApiError.code` in the file).
fn every_error_code() -> Vec<protocol::ErrorCode> {
    use protocol::ErrorCode::*;
    let all = [
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        RoomFull,
        RateLimited,
        Unavailable,
        Internal,
        AlreadyExists,
    ];
    for c in all {
        match c {
            BadRequest | Unauthorized | Forbidden | NotFound | RoomFull | RateLimited
            | Unavailable | Internal | AlreadyExists => {}
        }
    }
    all.to_vec()
}

#[test]
fn the_bodies_match_their_schemas() -> Result<()> {
    use protocol::room_api::*;
    use protocol::signal::{TrackInfo, TrackKind};
    use protocol::webhook::*;
    use protocol::{NodeId, RoomId, TrackId, UserId};
    use serde_json::{json, to_value};

    let room = RoomId::new("standup")?;
    let alice = UserId::new("alice")?;
    let n1 = NodeId::new("eu-1")?;
    let full_settings = RoomSettings {
        max_participants: 10,
        empty_timeout_secs: 600,
        metadata: "daily".into(),
        private: true,
        allowed_users: vec![alice.clone()],
    };
    let view = RoomView {
        room: room.clone(),
        settings: full_settings.clone(),
        created_ms: Some(1),
        active: true,
        nodes: vec![n1.clone()],
        num_participants: 3,
    };
    let bare_view = RoomView {
        settings: RoomSettings::default(),
        created_ms: None,
        active: false,
        nodes: vec![],
        num_participants: 0,
        ..view.clone()
    };
    let participant = ParticipantDetail {
        id: alice.clone(),
        name: "Alice".into(),
        metadata: Some("{}".into()),
        node: n1.clone(),
        region: "eu".into(),
        joined_ms: 5,
        can_publish: true,
        can_subscribe: false,
        tracks: vec![TrackDetail {
            id: TrackId::new("cam")?,
            kind: TrackKind::Video,
            muted: true,
        }],
    };
    let mut event = WebhookEvent::new(
        "room_moved:standup:3:eu-1".into(),
        EventKind::RoomMoved,
        room.clone(),
        "coordinator:c1",
        7,
    );
    event.participant = Some(EventParticipant {
        id: alice.clone(),
        name: "Alice".into(),
    });
    event.track = Some(TrackInfo {
        id: TrackId::new("mic")?,
        kind: TrackKind::Audio,
        muted: true,
    });
    event.moved = Some(RoomMoved {
        reason: MoveReason::Drain,
        from: n1.clone(),
        to: Some(NodeId::new("eu-2")?),
        epoch: 2,
    });
    let bare_event = WebhookEvent::new(
        "room_started:standup:1".into(),
        EventKind::RoomStarted,
        room.clone(),
        "eu-1",
        1,
    );
    let claims = ApiClaims {
        nbf: Some(1),
        grants: ApiGrants {
            room: Some(room.clone()),
            ..ApiGrants::all()
        },
        ..ApiClaims::new("devkey", ApiGrants::all(), 1, 60)
    };
    let mut samples = vec![
        json!(["RoomView", to_value(&view)?]),
        json!(["RoomView", to_value(&bare_view)?]),
        json!(["ParticipantDetail", to_value(&participant)?]),
        json!(["DataSent", to_value(DataSent { delivered: 2 })?]),
        json!(["RoomClosed", {"room": "standup", "removed": 2}]),
        json!(["WebhookEvent", to_value(&event)?]),
        json!(["WebhookEvent", to_value(&bare_event)?]),
        json!(["ApiClaims", to_value(&claims)?]),
        json!([
            "ApiClaims",
            to_value(ApiClaims::new("k", ApiGrants::default(), 1, 60))?
        ]),
        json!([
            "CreateRoom",
            to_value(CreateRoom {
                room: room.clone(),
                settings: full_settings
            })?
        ]),
        json!([
            "UpdateParticipant",
            to_value(UpdateParticipant {
                can_publish: Some(false),
                can_subscribe: None
            })?
        ]),
        json!(["MuteTrack", to_value(MuteTrack { muted: true })?]),
        json!([
            "SendData",
            to_value(SendData {
                data: json!({"a": [1]}),
                to: vec![alice],
                topic: Some("t".into())
            })?
        ]),
    ];
    for kind in EventKind::ALL {
        let e = WebhookEvent::new("x".into(), kind, room.clone(), "n", 1);
        samples.push(json!(["WebhookEvent", to_value(&e)?]));
    }
    for code in every_error_code() {
        let e = ApiError {
            code,
            message: "why".into(),
        };
        samples.push(json!(["ApiError", to_value(&e)?]));
    }
    let failures = schema_failures(&serde_json::Value::Array(samples))?;
    ensure!(
        failures.is_empty(),
        "bodies the file does not describe:\n{}",
        failures.join("\n")
    );

    // The check catches a field the file does not know and a missing required one.
    let drifted = json!([
        ["RoomView", {"room": "r", "settings": {}, "active": true, "nodes": [], "num_participants": 0, "new_field": 1}],
        ["ParticipantDetail", {"id": "a"}],
    ]);
    ensure!(schema_failures(&drifted)?.len() == 2, "drift is caught");
    Ok(())
}
