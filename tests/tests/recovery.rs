//! [`Participant`] recovers by itself, as PROTOCOL.md asks ("What a client should do when
//! something breaks"):
//! - against a real standalone node (the test package's build of the `node` program): a
//!   socket cut by a TCP proxy is resumed
//!   and media flows again both ways; a participant the node forgot (resume grace 0) joins
//!   afresh with a new token, and media flows again;
//! - against scripted WebSocket servers: `reconnect` with a URL is followed, a refused URL
//!   falls back to `joined.fallback_urls`, the deadline ends a hopeless recovery, a replaced
//!   session is not taken back, recovery can be turned off, and dropping a participant
//!   stops its supervisor and closes its socket.

use chaos::impair::{Impairment, Link, TcpProxy};
use chaos::{
    mint_tokens, wait_until, Cause, ClientConfig, CloseInfo, EndReason, Participant,
    ParticipantConfig, PublishOpts, Recovery, RecoveryPolicy, Rejoin, Status, TokenSource,
};
use futures::{SinkExt, StreamExt};
use protocol::signal::{ClientMessage, ServerMessage};
use protocol::token::Claims;
use protocol::{RoomId, UserId};
use serde_json::json;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// A real node

/// The node program as a child process.
struct NodeProc {
    _child: tokio::process::Child,
    addr: SocketAddr,
    secret: String,
    /// The last lines it logged, for failure messages.
    log: Arc<Mutex<VecDeque<String>>>,
}

fn node_bin() -> PathBuf {
    env!("CARGO_BIN_EXE_cluster-node").into()
}

impl NodeProc {
    /// Starts a standalone node on free loopback ports with a random API secret.
    async fn start(extra: &[&str]) -> NodeProc {
        let bin = node_bin();
        let secret = format!("recovery-{:032x}", rand::random::<u128>());
        let mut child = tokio::process::Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--udp-ip", "127.0.0.1"])
            .args(["--udp-ports", "0", "--log-json", "--api-secret", &secret])
            .args(extra)
            .env("RUST_LOG", "info,webrtc=warn,rtc=error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the node");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let addr = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "node listening" {
                    return v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("the node logs its address");
        // Keep reading, or the node blocks on a full pipe.
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = keep.lock().unwrap();
                if log.len() == 200 {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        NodeProc {
            _child: child,
            addr,
            secret,
            log,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// A token source for `user` in `room`, counting the tokens it mints.
    fn tokens(&self, room: &str, user: &str) -> (TokenSource, Arc<AtomicUsize>) {
        let claims = Claims::new(RoomId::new(room).unwrap(), UserId::new(user).unwrap(), 0, 0);
        let mint = mint_tokens(&self.secret, claims, Duration::from_secs(3600));
        let minted = Arc::new(AtomicUsize::new(0));
        let count = minted.clone();
        let source: TokenSource = Arc::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
            mint()
        });
        (source, minted)
    }
}

fn config() -> ParticipantConfig {
    ParticipantConfig {
        client: ClientConfig {
            ice_check_interval: Some(Duration::from_millis(50)),
            ..ClientConfig::default()
        },
        ..ParticipantConfig::default()
    }
}

/// Alice behind a TCP proxy, Bob straight to the node, both publishing and receiving each
/// other; then the proxy cuts Alice's socket.
struct AliceCut {
    node: NodeProc,
    _proxy: TcpProxy,
    alice: Participant,
    bob: Participant,
    /// Join tokens Alice minted.
    minted: Arc<AtomicUsize>,
    /// Bob's packets at Alice before the cut.
    before: u64,
    /// Alice's recovery from the cut.
    recovery: Recovery,
}

async fn cut_alices_socket(node_flags: &[&str]) -> AliceCut {
    let node = NodeProc::start(node_flags).await;
    let link = Link::new(Impairment::default());
    let proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), node.addr, link.clone())
        .await
        .unwrap();
    let alice_url = format!("ws://{}/ws", proxy.local_addr());
    let (tokens, minted) = node.tokens("room-1", "alice");
    let alice = Participant::join(&alice_url, "room-1", tokens, config())
        .await
        .expect("alice joins");
    alice
        .publish(PublishOpts::default())
        .await
        .expect("alice publishes");
    let (tokens, _) = node.tokens("room-1", "bob");
    let bob = Participant::join(&node.ws_url(), "room-1", tokens, config())
        .await
        .expect("bob joins");
    bob.publish(PublishOpts::default())
        .await
        .expect("bob publishes");
    for p in [&alice, &bob] {
        p.wait_media_from_others(WAIT).await.unwrap_or_else(|e| {
            panic!(
                "{} before the cut: {e}\n{}",
                p.participant_id(),
                node.log_tail()
            )
        });
    }
    let before = alice.received_from("bob");

    link.cut();
    let recovery = alice.wait_recoveries(1, WAIT).await.unwrap().remove(0);
    assert!(
        matches!(recovery.cause, Cause::SocketClosed(_)),
        "{recovery:?}"
    );
    assert_eq!(recovery.rejoined.as_ref().unwrap().url, alice.url());
    AliceCut {
        node,
        _proxy: proxy,
        alice,
        bob,
        minted,
        before,
        recovery,
    }
}

/// After Alice's one recovery: Bob's media reaches her over her new connections, hers
/// reaches Bob, and the record says when.
async fn media_flows_again(node: &NodeProc, alice: &Participant, bob: &Participant) {
    let recovery = &alice.recoveries()[0];
    let rejoined = recovery.rejoined.clone().expect("rejoined");
    alice
        .wait_media_from_others(WAIT)
        .await
        .unwrap_or_else(|e| panic!("bob to alice after the recovery: {e}\n{}", node.log_tail()));
    bob.wait_media_since("alice", rejoined.at, WAIT)
        .await
        .unwrap_or_else(|e| panic!("alice to bob after the recovery: {e}\n{}", node.log_tail()));
    wait_until(WAIT, "the record to stamp bob's media", || async {
        match alice.recoveries()[0].time_to_media("bob") {
            Some(_) => Ok(()),
            None => Err(format!("{:?}", alice.recoveries()[0])),
        }
    })
    .await
    .unwrap();
    let r = &alice.recoveries()[0];
    eprintln!(
        "{:?} after {:?}: joined in {:?}, bob's media in {:?}",
        r.rejoined.as_ref().map(|j| j.by),
        r.cause,
        r.time_to_joined(),
        r.time_to_media("bob")
    );
    assert!(r.time_to_joined().unwrap() <= r.time_to_media("bob").unwrap());
    assert_eq!(alice.status(), Status::Connected);
    assert!(bob.recoveries().is_empty(), "{:?}", bob.recoveries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_socket_is_resumed_and_media_flows_again() {
    let cut = cut_alices_socket(&["--resume-grace-secs", "30"]).await;
    let (alice, bob) = (&cut.alice, &cut.bob);
    assert_eq!(cut.recovery.rejoined.as_ref().unwrap().by, Rejoin::Resume);
    assert_eq!(
        cut.minted.load(Ordering::SeqCst),
        1,
        "a resume mints no token"
    );
    media_flows_again(&cut.node, alice, bob).await;
    // Statistics go on across the recovery.
    assert!(alice.received_from("bob") > cut.before);
    // A resumed participant never left.
    let left = bob
        .client()
        .messages()
        .into_iter()
        .any(|m| matches!(m, ServerMessage::ParticipantLeft { id } if id.as_str() == "alice"));
    assert!(!left, "bob saw alice leave");

    alice.leave().await.unwrap();
    assert_eq!(alice.status(), Status::Ended(EndReason::Left));
    bob.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_participant_joins_afresh_with_a_new_token() {
    // Grace 0: the node forgets a participant as soon as its socket goes, so `resume` gets
    // `not_found`.
    let cut = cut_alices_socket(&["--resume-grace-secs", "0"]).await;
    let (alice, bob) = (&cut.alice, &cut.bob);
    assert_eq!(
        cut.recovery.rejoined.as_ref().unwrap().by,
        Rejoin::FreshJoin
    );
    assert_eq!(
        cut.minted.load(Ordering::SeqCst),
        2,
        "the fresh join minted a token"
    );
    assert_eq!(alice.participant_id().as_str(), "alice");
    media_flows_again(&cut.node, alice, bob).await;

    alice.leave().await.unwrap();
    bob.leave().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Scripted servers

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    (listener, url)
}

/// One accepted WebSocket, driven by the test.
struct Conn(WebSocketStream<TcpStream>);

impl Conn {
    async fn accept(listener: &TcpListener) -> Conn {
        let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the participant connects")
            .unwrap();
        Conn(tokio_tungstenite::accept_async(tcp).await.unwrap())
    }

    async fn recv(&mut self) -> ClientMessage {
        loop {
            let frame = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("a message in time")
                .expect("the socket is open")
                .unwrap();
            if let Message::Text(t) = frame {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    async fn send(&mut self, v: serde_json::Value) {
        self.0.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
    }
}

fn joined(resume_token: &str, fallback_urls: &[&str]) -> serde_json::Value {
    json!({
        "type": "joined", "room": "r", "participant": {"id": "me", "name": "me"},
        "node": "n1", "resume_token": resume_token, "ice_servers": [], "participants": [],
        "fallback_urls": fallback_urls,
    })
}

/// Tokens `token-1`, `token-2`, ...
fn numbered_tokens() -> TokenSource {
    let n = Arc::new(AtomicUsize::new(0));
    Arc::new(move || format!("token-{}", n.fetch_add(1, Ordering::SeqCst) + 1))
}

fn quick(deadline: Duration) -> ParticipantConfig {
    ParticipantConfig {
        client: ClientConfig {
            request_timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        },
        recovery: RecoveryPolicy {
            deadline,
            ..RecoveryPolicy::default()
        },
        region: None,
    }
}

/// Starts joining through `listener`, answers with `joined`, and returns the participant.
async fn join_scripted(
    listener: &TcpListener,
    url: &str,
    answer: serde_json::Value,
    config: ParticipantConfig,
) -> (Participant, Conn) {
    let url = url.to_owned();
    let join =
        tokio::spawn(async move { Participant::join(&url, "r", numbered_tokens(), config).await });
    let mut conn = Conn::accept(listener).await;
    assert!(matches!(
        conn.recv().await,
        ClientMessage::Join { token, .. } if token == "token-1"
    ));
    conn.send(answer).await;
    (join.await.unwrap().unwrap(), conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_urls_and_fallback_urls_are_followed() {
    let (a, a_url) = listen().await;
    let (b, b_url) = listen().await;
    let (c, c_url) = listen().await;
    let (p, mut on_a) = join_scripted(&a, &a_url, joined("rt1", &[&c_url]), quick(WAIT)).await;

    // A drains: the participant moves to the URL given, resuming.
    on_a.send(json!({"type": "reconnect", "reason": "drain", "url": b_url}))
        .await;
    let mut on_b = Conn::accept(&b).await;
    assert_eq!(
        on_b.recv().await,
        ClientMessage::Resume {
            resume_token: "rt1".into()
        }
    );
    on_b.send(joined("rt2", &[&c_url])).await;
    let r = &p.wait_recoveries(1, WAIT).await.unwrap()[0];
    assert_eq!(
        r.cause,
        Cause::Reconnect {
            reason: "drain".into(),
            url: Some(b_url.clone())
        }
    );
    let rejoined = r.rejoined.as_ref().unwrap();
    assert_eq!(
        (rejoined.by, rejoined.url.as_str()),
        (Rejoin::Resume, b_url.as_str())
    );
    assert_eq!(p.url(), b_url);

    // B dies: its address refuses, so the participant tries the fallback URL, where the
    // resume is refused and it joins afresh with a new token on the same socket.
    drop(b);
    on_b.close(1001).await;
    let mut on_c = Conn::accept(&c).await;
    assert_eq!(
        on_c.recv().await,
        ClientMessage::Resume {
            resume_token: "rt2".into()
        }
    );
    on_c.send(json!({"type": "error", "code": "not_found", "message": "gone"}))
        .await;
    assert!(matches!(
        on_c.recv().await,
        ClientMessage::Join { token, .. } if token == "token-2"
    ));
    on_c.send(joined("rt3", &[])).await;
    let r = &p.wait_recoveries(2, WAIT).await.unwrap()[1];
    assert!(
        matches!(
            &r.cause,
            Cause::SocketClosed(CloseInfo::Remote { code: 1001, .. })
        ),
        "{:?}",
        r.cause
    );
    let rejoined = r.rejoined.as_ref().unwrap();
    assert_eq!(
        (rejoined.by, rejoined.url.as_str()),
        (Rejoin::FreshJoin, c_url.as_str())
    );
    assert_eq!(p.url(), c_url);
    assert_eq!(p.joined().resume_token, "rt3");
    assert_eq!(p.status(), Status::Connected);

    p.leave().await.unwrap();
    assert_eq!(on_c.recv().await, ClientMessage::Leave);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_gives_up_at_its_deadline() {
    let (a, a_url) = listen().await;
    let deadline = Duration::from_millis(1500);
    let (p, on_a) = join_scripted(&a, &a_url, joined("rt1", &[]), quick(deadline)).await;
    drop(a);
    on_a.close(1001).await;

    let reason = p.wait_ended(WAIT).await.unwrap();
    let EndReason::GaveUp { cause, error } = reason else {
        panic!("{reason:?}")
    };
    assert!(matches!(cause, Cause::SocketClosed(_)), "{cause:?}");
    assert!(error.contains("refused"), "{error}");
    let r = &p.recoveries()[0];
    // At once, then after 0.25 and 0.5 s (each stretched by up to half); the next one, 1 s
    // later at least, would start past the deadline.
    assert_eq!(r.attempts, 3, "{r:?}");
    assert!(r.rejoined.is_none() && r.gave_up.is_some());
    assert!(p.wait_media_from_others(Duration::ZERO).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_session_is_not_taken_back_and_recovery_can_be_off() {
    let (a, a_url) = listen().await;
    let (p, mut on_a) = join_scripted(&a, &a_url, joined("rt1", &[]), quick(WAIT)).await;
    // The node's word when the same user joins elsewhere.
    on_a.send(json!({"type": "error", "code": "unauthorized", "message": "replaced"}))
        .await;
    on_a.close(1008).await;
    assert_eq!(p.wait_ended(WAIT).await.unwrap(), EndReason::Replaced);
    assert!(p.recoveries().is_empty());

    let off = ParticipantConfig {
        recovery: RecoveryPolicy {
            enabled: false,
            ..RecoveryPolicy::default()
        },
        ..quick(WAIT)
    };
    let (p, on_a) = join_scripted(&a, &a_url, joined("rt1", &[]), off).await;
    on_a.close(1001).await;
    let reason = p.wait_ended(WAIT).await.unwrap();
    assert!(
        matches!(
            &reason,
            EndReason::NotRecovering(Cause::SocketClosed(CloseInfo::Remote { code: 1001, .. }))
        ),
        "{reason:?}"
    );
    assert!(p.recoveries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_participant_stops_its_supervisor_and_connections() {
    let (a, a_url) = listen().await;
    let (p, mut on_a) = join_scripted(&a, &a_url, joined("rt1", &[]), quick(WAIT)).await;
    let client = Arc::downgrade(&p.client());
    drop(p);
    // The supervisor task holds the participant's state, the client included: once that is
    // freed, the task is gone.
    wait_until(WAIT, "the participant's client to be freed", || async {
        match client.upgrade() {
            None => Ok(()),
            Some(_) => Err("still held".into()),
        }
    })
    .await
    .unwrap();
    let end = tokio::time::timeout(WAIT, on_a.0.next())
        .await
        .expect("the socket ends");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "no leave, no message: {end:?}"
    );
}
