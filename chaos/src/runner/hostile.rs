//! The hostile client: three raw clients against one node, each bounded in time.
//!
//! - `malformed`: invalid JSON, an unknown message type, a binary frame, then a flood of
//!   200 empty objects;
//! - `forged`: a `join` whose token is signed with the wrong secret;
//! - `garbage_sdp`: a valid `join` to a room of its own, then `publish` with SDP `garbage`,
//!   then `leave`.
//!
//! Each answer (error messages received, close code) becomes a [`HostileOutcome`]; the
//! bystanders are judged by the runner from the participants' recoveries and media.

use crate::invariants::HostileOutcome;
use crate::{Client, ClientConfig};
use protocol::signal::{ClientMessage, ServerMessage};
use protocol::token::{mint, Claims};
use protocol::{RoomId, UserId};
use std::time::Duration;

/// Bound on waiting for the node's answer to one hostile client.
const ANSWER: Duration = Duration::from_secs(3);
const FLOOD: usize = 200;

/// Runs the three hostile clients against `ws`; returns their outcomes and notes.
/// `room` is the room the forged token claims; `tag` makes the garbage client's room unique.
pub async fn run(
    ws: &str,
    room: &str,
    secret: &str,
    tag: &str,
) -> (Vec<HostileOutcome>, Vec<String>) {
    let mut outcomes = Vec::new();
    let mut notes = Vec::new();
    for (label, result) in [
        ("malformed", malformed(ws).await),
        ("forged", forged(ws, room).await),
        ("garbage_sdp", garbage_sdp(ws, secret, tag).await),
    ] {
        match result {
            Ok((outcome, note)) => {
                notes.push(format!(
                    "hostile {label}: {} error message(s), close {:?}; {note}",
                    outcome.errors, outcome.close_code
                ));
                outcomes.push(outcome);
            }
            Err(e) => {
                notes.push(format!("hostile {label}: could not run: {e:#}"));
                outcomes.push(HostileOutcome {
                    client: label.to_owned(),
                    errors: 0,
                    close_code: None,
                });
            }
        }
    }
    (outcomes, notes)
}

fn config() -> ClientConfig {
    ClientConfig {
        request_timeout: ANSWER,
        ..ClientConfig::default()
    }
}

fn errors(c: &Client) -> usize {
    c.messages()
        .iter()
        .filter(|m| matches!(m, ServerMessage::Error { .. }))
        .count()
}

/// Waits (bounded) for an error message or the close, and reads the outcome.
async fn outcome(c: &Client, label: &str) -> HostileOutcome {
    let got_error = c.wait_for(ANSWER, |m| matches!(m, ServerMessage::Error { .. }));
    let _ = tokio::time::timeout(ANSWER, got_error).await;
    HostileOutcome {
        client: label.to_owned(),
        errors: errors(c),
        close_code: c.close_code(),
    }
}

async fn malformed(ws: &str) -> anyhow::Result<(HostileOutcome, String)> {
    let c = Client::connect_with(ws, config()).await?;
    let mut refused = 0usize;
    for text in [
        "{\"type\":",
        "{\"type\":\"launch_missiles\"}",
        "\u{0}not json",
    ] {
        refused += usize::from(c.send_raw_text(text.to_owned()).await.is_err());
    }
    refused += usize::from(
        c.send_raw_binary(vec![0xde, 0xad, 0xbe, 0xef])
            .await
            .is_err(),
    );
    for _ in 0..FLOOD {
        if c.send_raw_text("{}".to_owned()).await.is_err() {
            refused += 1;
            break;
        }
    }
    let o = outcome(&c, "malformed").await;
    let _ = tokio::time::timeout(ANSWER, c.wait_closed(ANSWER)).await;
    let o = HostileOutcome {
        close_code: c.close_code().or(o.close_code),
        errors: errors(&c),
        ..o
    };
    c.close_abruptly().await;
    Ok((o, format!("{refused} send(s) refused by a closed socket")))
}

async fn forged(ws: &str, room: &str) -> anyhow::Result<(HostileOutcome, String)> {
    let c = Client::connect_with(ws, config()).await?;
    let claims = Claims::new(RoomId::new(room)?, UserId::new("forger")?, now_secs(), 600);
    let token = mint(b"not-the-cluster-secret", &claims);
    let answer = match c.join(room, &token).await {
        Ok(j) => format!("JOINED as {} on {}", j.participant.id, j.node),
        Err(e) => format!("join refused: {e}"),
    };
    let o = outcome(&c, "forged").await;
    c.close_abruptly().await;
    Ok((o, answer))
}

async fn garbage_sdp(
    ws: &str,
    secret: &str,
    tag: &str,
) -> anyhow::Result<(HostileOutcome, String)> {
    let c = Client::connect_with(ws, config()).await?;
    let room = format!("hostile-{tag}");
    let claims = Claims::new(
        RoomId::new(&room)?,
        UserId::new("hostile")?,
        now_secs(),
        600,
    );
    c.join(&room, &mint(secret.as_bytes(), &claims)).await?;
    let sent = c
        .send(&ClientMessage::Publish {
            sdp: "garbage".into(),
        })
        .await;
    let o = outcome(&c, "garbage_sdp").await;
    let left = tokio::time::timeout(ANSWER, c.leave()).await;
    c.close_abruptly().await;
    Ok((
        o,
        format!(
            "publish sent: {}, leave: {}",
            sent.is_ok(),
            matches!(left, Ok(Ok(())))
        ),
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
