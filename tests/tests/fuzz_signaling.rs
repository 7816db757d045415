//! Fuzzing the signaling session: random and mutated sequences of real client messages
//! (`join` with real tokens, `publish` with a real Chromium offer, `subscribe_answer` made
//! from the node's own `subscribe_offer`, trickled candidates, `message`, `leave`, `resume`
//! with the token a previous socket of the case got, `ping`) over a real WebSocket to a real
//! node. Messages are mutated (fields deleted, types changed, huge strings and numbers, deep
//! nesting, type confusion, truncation, random bytes), duplicated and reordered, and sent
//! in every kind of frame: text, binary, fragmented, invalid UTF-8, oversize (announced or
//! real), unmasked, with reserved bits or opcodes, truncated mid-frame.
//!
//! After each frame the fuzzer sends a WebSocket Ping with a payload of its own; the node
//! answers it behind whatever it answered the frame with, so each frame's answer is known:
//! a frame the protocol's parser refuses (or a binary frame) gets an `error` (`bad_request`,
//! or `rate_limited`) or a close, a frame that breaks RFC 6455 closes the socket. Between
//! batches: nothing panicked, the node's live counts are back at rest once the fuzzing
//! sockets are gone, a fresh socket is served, and a pair of chaos clients in another room
//! kept exchanging media throughout.
//!
//! CI runs `CI_CASES` cases with a fixed seed. A longer run:
//!
//! ```sh
//! FUZZ_CASES=20000 cargo test --release -p tests --test fuzz_signaling -- --nocapture
//! FUZZ_SEED=0x1234 FUZZ_CASES=5000 cargo test -p tests --test fuzz_signaling -- --nocapture
//! ```
//!
//! A failure prints the seed and the case, and the command that replays it alone.
//! `NODE_PLANTED_PANIC=signaling` (debug builds) plants a panic in the session for a
//! trickled candidate of over 1000 bytes, which this fuzzer must find.

mod fuzz_support;
#[path = "fuzz_signaling/mutate.rs"]
mod mutate;

use fuzz_support::{is_closed, messages, pick, Arena, Event, Frame, RawWs, Run};
use mutate::{mutate_bytes, mutate_json};
use protocol::signal::{parse_client_message, ClientMessage, ServerMessage, CLIENT_TYPES};
use protocol::ErrorCode;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::Duration;
use tests::{claims, mint};

const CHROMIUM_OFFER: &str = include_str!("../fixtures/chromium_offer.sdp");
/// Cases on every CI run.
const CI_CASES: u64 = 300;
const TEST: &str = "fuzz_signaling";
/// User ids the cases share, so that joins replace each other and messages find someone.
const USERS: &[&str] = &["fz-a", "fz-b", "fz-c", "fz-d", "fz-e", "fz-f"];

/// What a frame must get from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Anything (a valid message; its effects are not this fuzzer's business).
    Any,
    /// An `error` or a close.
    Error,
    /// The socket closes.
    Close,
}

/// What one socket of a case knows while it runs.
struct SocketState {
    room: String,
    user: String,
    token: String,
    /// From a `joined` of an earlier socket of the case.
    resume_token: Option<String>,
    /// The node's latest `subscribe_offer` on this socket.
    sub_offer: Option<String>,
}

fn candidates() -> Vec<String> {
    CHROMIUM_OFFER
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=").map(str::to_owned))
        .filter(|l| l.starts_with("candidate:"))
        .collect()
}

/// The node's subscribe offer turned into something shaped like the client's answer.
fn answer_from(offer: &str) -> String {
    offer
        .replace("a=sendonly", "a=recvonly")
        .replace("a=sendrecv", "a=recvonly")
        .replace("a=setup:actpass", "a=setup:active")
}

/// A real client message as the protocol defines it.
fn real_message(rng: &mut StdRng, st: &SocketState) -> (Value, &'static str) {
    let room = st.room.as_str();
    match rng.gen_range(0..100) {
        0..=7 => (
            json!({"type": "join", "room": room, "token": st.token}),
            "join",
        ),
        8..=9 => (
            json!({"type": "join", "room": room, "token": st.token, "region": pick(rng, &["eu", "", "x".repeat(300).as_str()])}),
            "join with a region",
        ),
        10..=13 => (
            json!({"type": "resume", "resume_token": st.resume_token.clone().unwrap_or_else(|| "no.such.token".into())}),
            "resume",
        ),
        14..=27 => (json!({"type": "publish", "sdp": CHROMIUM_OFFER}), "publish"),
        28..=35 => {
            let sdp = st
                .sub_offer
                .as_deref()
                .map(answer_from)
                .unwrap_or_else(|| CHROMIUM_OFFER.to_owned());
            (
                json!({"type": "subscribe_answer", "sdp": sdp}),
                "subscribe_answer",
            )
        }
        36..=57 => {
            let cands = candidates();
            let c = pick(rng, &cands);
            let mid = rng.gen_range(0..2u16);
            let pc = *pick(rng, &["publisher", "subscriber"]);
            let candidate = match rng.gen_range(0..6) {
                0 => Value::Null,
                1 => json!({"candidate": ""}),
                2 => {
                    json!({"candidate": c, "sdpMid": mid.to_string(), "sdpMLineIndex": mid, "usernameFragment": "AvfY"})
                }
                _ => json!({"candidate": c, "sdpMid": mid.to_string(), "sdpMLineIndex": mid}),
            };
            (
                json!({"type": "candidate", "pc": pc, "candidate": candidate}),
                "candidate",
            )
        }
        58..=71 => {
            let to = match rng.gen_range(0..4) {
                0 => st.user.clone(),
                1 => "good1".into(),
                _ => pick(rng, USERS).to_string(),
            };
            let data = match rng.gen_range(0..4) {
                0 => json!("hi"),
                1 => json!({"n": rng.gen_range(0..1000), "nested": {"a": [1, 2, {"b": null}]}}),
                2 => json!(null),
                _ => json!([true, 1.5, "x"]),
            };
            (
                json!({"type": "message", "to": to, "data": data}),
                "message",
            )
        }
        72..=75 => (json!({"type": "leave"}), "leave"),
        76..=91 => (json!({"type": "ping"}), "ping"),
        92..=95 => (
            json!({"type": pick(rng, &["dance", "JOIN", "", "pong", "joined", "publish_answer", "error"])}),
            "unknown type",
        ),
        _ => (
            pick(
                rng,
                &[
                    json!({}),
                    json!([]),
                    json!(null),
                    json!("join"),
                    json!(12),
                    json!({"type": null}),
                    json!({"type": ["ping"]}),
                ],
            )
            .clone(),
            "not a message",
        ),
    }
}

/// Whether a candidate or SDP would have the node send outside 127.0.0.0/8: a parsed
/// `candidate` whose address is anything but IPv4 loopback.
fn leaves_loopback(text: &str) -> bool {
    match parse_client_message(text) {
        Ok(ClientMessage::Candidate {
            candidate: Some(c), ..
        }) => c
            .candidate
            .split_whitespace()
            .nth(4)
            .is_some_and(|a| !a.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())),
        _ => false,
    }
}

/// What the node must do with a well-formed text frame carrying `bytes`.
fn expect_for_text(bytes: &[u8]) -> Expect {
    match std::str::from_utf8(bytes) {
        // RFC 6455 8.1: invalid UTF-8 in a text message fails the connection.
        Err(_) => Expect::Close,
        Ok(_) if bytes.len() > node::actors::session::MAX_READ_FRAME => Expect::Close,
        Ok(t) if parse_client_message(t).is_err() => Expect::Error,
        Ok(_) => Expect::Any,
    }
}

/// The frames of one step of a socket's script, each with what it must get.
fn frames_for(rng: &mut StdRng, st: &SocketState, log: &mut Vec<String>) -> Vec<(Frame, Expect)> {
    let (mut v, what) = real_message(rng, st);
    let mut notes = vec![what.to_string()];
    if rng.gen_ratio(2, 5) {
        for _ in 0..rng.gen_range(1..=2) {
            notes.push(mutate_json(rng, &mut v));
        }
    }
    let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
    if rng.gen_ratio(1, 8) {
        notes.push(mutate_bytes(rng, &mut bytes));
    }
    if std::str::from_utf8(&bytes).is_ok_and(leaves_loopback) {
        notes.push("(a non-loopback candidate: sent as the real one)".into());
        bytes = serde_json::to_vec(&real_message(rng, st).0).unwrap_or_default();
    }
    let frames: Vec<(Frame, Expect)> = match rng.gen_range(0..100) {
        // As a client sends it.
        0..=69 => {
            let e = expect_for_text(&bytes);
            vec![(Frame::text(bytes), e)]
        }
        70..=73 => {
            notes.push("binary frame".into());
            vec![(Frame::binary(bytes), Expect::Error)]
        }
        74..=79 => {
            // Fragmented into continuation frames: the node reads the whole message.
            let parts = rng.gen_range(2..5);
            let size = bytes.len().div_ceil(parts).max(1);
            let chunks: Vec<Vec<u8>> = bytes.chunks(size).map(<[u8]>::to_vec).collect();
            notes.push(format!("in {} fragments", chunks.len()));
            let e = expect_for_text(&bytes);
            let n = chunks.len();
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut f = Frame::new(if i == 0 { 1 } else { 0 }, c);
                    f.fin = i + 1 == n;
                    (f, if i + 1 == n { e } else { Expect::Any })
                })
                .collect()
        }
        80..=81 => {
            let mut b = bytes.clone();
            b.push(0xff);
            b.insert(0, 0xc3);
            notes.push("invalid UTF-8".into());
            vec![(Frame::text(b), Expect::Close)]
        }
        82..=83 => {
            let n = *pick(rng, &[70_000usize, 1_500_000]);
            notes.push(format!("padded to {n} bytes"));
            let mut v = v.clone();
            if let Value::Object(m) = &mut v {
                m.insert("pad".into(), json!("p".repeat(n)));
            }
            let b = serde_json::to_vec(&v).unwrap_or_default();
            let e = expect_for_text(&b);
            vec![(Frame::text(b), e)]
        }
        84 => {
            notes.push("2.5 MB frame".into());
            vec![(Frame::text(vec![b' '; 2_500_000]), Expect::Close)]
        }
        85..=86 => {
            let claim = *pick(rng, &[3_000_000u64, 1 << 40, u64::MAX >> 1]);
            notes.push(format!("header claims {claim} bytes"));
            let mut f = Frame::text(bytes);
            f.claimed_len = Some(claim);
            vec![(f, Expect::Close)]
        }
        87 => {
            notes.push("unmasked".into());
            let mut f = Frame::text(bytes);
            f.masked = false;
            vec![(f, Expect::Close)]
        }
        88 => {
            let rsv = rng.gen_range(1..8);
            notes.push(format!("reserved bits {rsv}"));
            let mut f = Frame::text(bytes);
            f.rsv = rsv;
            vec![(f, Expect::Close)]
        }
        89 => {
            let op = *pick(rng, &[3u8, 7, 11, 15]);
            notes.push(format!("reserved opcode {op}"));
            vec![(Frame::new(op, bytes), Expect::Close)]
        }
        90 => {
            notes.push("continuation without a start".into());
            vec![(Frame::new(0, bytes), Expect::Close)]
        }
        91 => {
            notes.push("a new message inside a fragmented one".into());
            let mut first = Frame::text(bytes.clone());
            first.fin = false;
            vec![(first, Expect::Any), (Frame::text(bytes), Expect::Close)]
        }
        92 => {
            notes.push("ping of 126 bytes".into());
            vec![(Frame::new(9, vec![b'p'; 126]), Expect::Close)]
        }
        93 => {
            let code = *pick(rng, &[0u16, 999, 1005, 1006, 2000, 5000]);
            notes.push(format!("close with code {code}"));
            vec![(Frame::new(8, code.to_be_bytes()), Expect::Close)]
        }
        94 => {
            notes.push("close with an invalid UTF-8 reason".into());
            vec![(Frame::new(8, vec![0x03, 0xe8, 0xc3, 0x28]), Expect::Close)]
        }
        95 => {
            let mut f = Frame::text(bytes);
            let len = f.encode([0; 4]).len();
            let at = rng.gen_range(1..len.max(2));
            notes.push(format!("frame cut after {at} bytes, stream closed"));
            f.truncate_at = Some(at);
            vec![(f, Expect::Close)]
        }
        96..=97 => {
            notes.push("sent three times".into());
            let e = expect_for_text(&bytes);
            vec![
                (Frame::text(bytes.clone()), e),
                (Frame::text(bytes.clone()), e),
                (Frame::text(bytes), e),
            ]
        }
        _ => {
            notes.push("ping and pong frames around it".into());
            let e = expect_for_text(&bytes);
            vec![
                (Frame::new(10, b"unsolicited".to_vec()), Expect::Any),
                (Frame::text(bytes), e),
                (Frame::new(9, vec![]), Expect::Any),
            ]
        }
    };
    log.push(notes.join(" / "));
    frames
}

/// Checks what the node sent after a frame against what the frame must get.
fn check(expect: Expect, got: &[Event], rate_limited_before: bool) -> Result<(), String> {
    let msgs = messages(got);
    let errors: Vec<(ErrorCode, &String)> = msgs
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error { code, message } => Some((*code, message)),
            _ => None,
        })
        .collect();
    if let Some((code, _)) = errors.iter().find(|(_, m)| m.is_empty()) {
        return Err(format!("an error {code:?} without a message"));
    }
    match expect {
        Expect::Any => Ok(()),
        Expect::Error => {
            let answered = errors
                .iter()
                .any(|(c, _)| matches!(c, ErrorCode::BadRequest | ErrorCode::RateLimited));
            // A rate-limited socket gets one `rate_limited` a second, not one per frame.
            if answered || is_closed(got) || rate_limited_before {
                Ok(())
            } else {
                Err(format!("no bad_request error nor close; got {got:?}"))
            }
        }
        Expect::Close => {
            if is_closed(got) {
                Ok(())
            } else {
                Err(format!("the socket stayed open; got {got:?}"))
            }
        }
    }
}

fn brief(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match e {
            Event::Text(t) => match serde_json::from_str::<ServerMessage>(t) {
                Ok(ServerMessage::Error { code, message }) => {
                    let m: String = message.chars().take(90).collect();
                    format!("error {code:?} {m:?}")
                }
                Ok(m) => {
                    let s = serde_json::to_value(&m).unwrap_or_default();
                    s["type"].as_str().unwrap_or("?").to_owned()
                }
                Err(_) => format!("unparsed {:?}", t.chars().take(60).collect::<String>()),
            },
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One case: one to three sockets, each a script of mutated real messages, each frame's
/// answer checked; the case ends with every socket closed by the client or the node.
async fn signaling_case(
    arena: &Arena,
    room: &str,
    mut rng: StdRng,
) -> (Vec<String>, anyhow::Result<()>) {
    let mut log = Vec::new();
    let res = async {
        let mut resume_token: Option<String> = None;
        for socket in 0..rng.gen_range(1..=3) {
            let user = pick(&mut rng, USERS).to_string();
            let mut st = SocketState {
                room: room.to_owned(),
                token: mint(&arena.node, &claims(room, &user, 600)),
                user,
                resume_token: resume_token.clone(),
                sub_offer: None,
            };
            log.push(format!("socket {socket} as {}", st.user));
            let mut ws = RawWs::connect(arena.node.http_addr()).await?;
            let mut rate_limited = false;
            let steps = rng.gen_range(1..=12);
            for step in 0..steps {
                // Most scripts start as a client does.
                let frames = if step == 0 && rng.gen_ratio(4, 5) {
                    let v = if st.resume_token.is_some() && rng.gen_bool(0.5) {
                        json!({"type": "resume", "resume_token": st.resume_token})
                    } else {
                        json!({"type": "join", "room": st.room, "token": st.token})
                    };
                    log.push(format!("{}", v["type"]));
                    vec![(Frame::text(serde_json::to_vec(&v)?), Expect::Any)]
                } else {
                    frames_for(&mut rng, &st, &mut log)
                };
                for (frame, expect) in frames {
                    if ws.closed {
                        break;
                    }
                    ws.send(&frame).await;
                    let got = ws
                        .sync()
                        .await
                        .map_err(|e| anyhow::anyhow!("after {}: {e:#}", frame.describe()))?;
                    log.push(format!("  {expect:?}: {}", brief(&got)));
                    check(expect, &got, rate_limited)
                        .map_err(|e| anyhow::anyhow!("after {}: {e}", frame.describe()))?;
                    for m in messages(&got) {
                        match m {
                            ServerMessage::Joined {
                                resume_token: t, ..
                            } => resume_token = Some(t),
                            ServerMessage::SubscribeOffer { sdp } => st.sub_offer = Some(sdp),
                            ServerMessage::Error {
                                code: ErrorCode::RateLimited,
                                ..
                            } => rate_limited = true,
                            _ => {}
                        }
                    }
                }
                if ws.closed {
                    break;
                }
            }
            let graceful = rng.gen_bool(0.5);
            log.push(if graceful { "close frame" } else { "drop" }.into());
            ws.finish(graceful).await?;
        }
        Ok(())
    }
    .await;
    (log, res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_message_sequences() -> anyhow::Result<()> {
    let run = Run::from_env(CI_CASES);
    // A grace period, so that a dropped socket's participant can be resumed.
    let arena = Arena::start(|c| c.resume_grace = Duration::from_secs(2)).await?;
    let room = format!("fuzz-sig-{:x}", run.seed & 0xffff_ffff);
    fuzz_support::run_cases(&arena, run, TEST, |_, rng| {
        signaling_case(&arena, &room, rng)
    })
    .await?;
    arena.stop().await;
    Ok(())
}

/// Regression: sockets of one user joining at once. The router keeps the last registered
/// one and closes the others, but the room could admit an older join last, replacing the
/// newer socket's participant: that socket stayed open and joined to a participant that no
/// longer existed, and its `publish` went unanswered (seen about once in 150 rounds of 8).
/// A socket left open and joined has a live participant, and nothing stays once all close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_of_one_user_leave_one_live_participant() -> anyhow::Result<()> {
    let node = tests::start_node(|_| {});
    let room = tests::room_name("twin");
    let token = mint(&node, &claims(&room, "twin", 600));
    let join = serde_json::to_string(&json!({"type": "join", "room": room, "token": token}))?;
    let publish = serde_json::to_string(&json!({"type": "publish", "sdp": CHROMIUM_OFFER}))?;
    for round in 0..60 {
        let mut sockets = Vec::new();
        for _ in 0..8 {
            sockets.push(RawWs::connect(node.http_addr()).await?);
        }
        // All the joins leave before any answer is read.
        futures::future::join_all(sockets.iter_mut().map(|ws| ws.send_text(&join))).await;
        let answers = futures::future::join_all(sockets.iter_mut().map(|ws| ws.sync())).await;
        let mut open = Vec::new();
        for (ws, got) in sockets.into_iter().zip(answers) {
            let got = got?;
            if is_closed(&got) {
                ws.finish(false).await?;
            } else {
                open.push((ws, got));
            }
        }
        // The router closes all but the last registered socket (the others may still be
        // closing): every socket left open and joined must have a live participant.
        for (ws, got) in &mut open {
            if !messages(got)
                .iter()
                .any(|m| matches!(m, ServerMessage::Joined { .. }))
            {
                continue;
            }
            ws.send_text(&publish).await;
            let deadline = std::time::Instant::now() + fuzz_support::ANSWER;
            let mut answered = false;
            for _ in 0..1000 {
                if ws.closed || std::time::Instant::now() >= deadline {
                    break;
                }
                match ws
                    .next(deadline.saturating_duration_since(std::time::Instant::now()))
                    .await
                {
                    Some(Event::Text(t)) if t.contains("publish_answer") => {
                        answered = true;
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            anyhow::ensure!(
                answered || ws.closed,
                "round {round}: a joined socket's publish went unanswered"
            );
        }
        for (ws, _) in open {
            ws.finish(true).await?;
        }
        tests::wait_until(
            fuzz_support::WAIT,
            "the twin's participants to go",
            || async {
                let c = node.counters();
                if c.peers == 0 && c.rooms == 0 && c.sessions == 0 && c.transports == 0 {
                    Ok(())
                } else {
                    Err(format!("round {round}: {c:?}"))
                }
            },
        )
        .await?;
    }
    node.stop();
    Ok(())
}

/// Regression (found by this fuzzer): a `resume` with a stale token (its participant was
/// replaced by a later join) took the user's route from the live socket, which the router
/// closed without detaching it from its participant, and then failed: that participant
/// stayed in the room with no socket, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resume_leaves_no_participant_behind() -> anyhow::Result<()> {
    let node = tests::start_node(|c| c.resume_grace = Duration::from_millis(500));
    let room = tests::room_name("stale");
    let token = mint(&node, &claims(&room, "stale", 600));
    let join = serde_json::to_string(&json!({"type": "join", "room": room, "token": token}))?;
    let joined = |got: &[Event]| {
        messages(got).into_iter().find_map(|m| match m {
            ServerMessage::Joined { resume_token, .. } => Some(resume_token),
            _ => None,
        })
    };
    // The first socket's participant is replaced by a second join of the same user.
    let mut first = RawWs::connect(node.http_addr()).await?;
    first.send_text(&join).await;
    let stale = joined(&first.sync().await?).expect("first join");
    let mut second = RawWs::connect(node.http_addr()).await?;
    second.send_text(&join).await;
    joined(&second.sync().await?).expect("second join");
    first.finish(false).await?;
    // A third socket resumes with the first one's token: refused, and the second socket is
    // closed in the attempt.
    let mut third = RawWs::connect(node.http_addr()).await?;
    let resume = json!({"type": "resume", "resume_token": stale}).to_string();
    third.send_text(&resume).await;
    let got = third.sync().await?;
    anyhow::ensure!(
        messages(&got)
            .iter()
            .any(|m| matches!(m, ServerMessage::Error { .. })),
        "the stale resume was not refused: {got:?}"
    );
    third.finish(true).await?;
    second.finish(true).await?;
    tests::wait_until(fuzz_support::WAIT, "every participant to go", || async {
        let c = node.counters();
        if c.peers == 0 && c.rooms == 0 && c.sessions == 0 {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await?;
    node.stop();
    Ok(())
}

/// Regression (found by this fuzzer): a frame header announcing more than the read limit
/// made the node wait for (and buffer) the whole announced payload before refusing it; a
/// header claiming a terabyte held the socket open, and the node read whatever came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announced_over_the_limit_closes_at_its_header() -> anyhow::Result<()> {
    let node = tests::start_node(|_| {});
    for claim in [3_000_000u64, 1 << 40] {
        let mut ws = RawWs::connect(node.http_addr()).await?;
        let mut f = Frame::text(br#"{"type":"ping"}"#.to_vec());
        f.claimed_len = Some(claim);
        ws.send(&f).await;
        let got = ws.sync().await?;
        anyhow::ensure!(
            got.iter().any(|e| matches!(e, Event::Close(Some(1009)))),
            "a header claiming {claim} bytes: {got:?}"
        );
        ws.finish(false).await?;
    }
    node.stop();
    Ok(())
}
