//! The client's signaling plumbing against a scripted WebSocket server on loopback (no media
//! node): typed errors, waits, the room view, close codes, leave and abrupt close.

use chaos::{Client, ClientConfig, CloseInfo, Error};
use futures::{SinkExt, StreamExt};
use protocol::signal::{ClientMessage, ServerMessage};
use protocol::ErrorCode;
use serde_json::json;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

/// What the scripted server saw from the client.
#[derive(Debug, PartialEq)]
enum Seen {
    Msg(ClientMessage),
    Text(String),
    Binary(usize),
    Close(Option<u16>),
    /// The TCP stream ended (or failed) without a close frame.
    Ended,
}

enum Say {
    Json(serde_json::Value),
    Close(u16),
}

struct FakeNode {
    url: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    say: mpsc::UnboundedSender<Say>,
}

impl FakeNode {
    /// Accepts one WebSocket connection and relays frames both ways.
    async fn start() -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (say, mut say_rx) = mpsc::unbounded_channel::<Say>();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let (mut sink, mut stream) = ws.split();
            loop {
                tokio::select! {
                    frame = stream.next() => {
                        let seen = match frame {
                            Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                                Ok(m) => Seen::Msg(m),
                                Err(_) => Seen::Text(t.as_str().to_owned()),
                            },
                            Some(Ok(Message::Binary(b))) => Seen::Binary(b.len()),
                            Some(Ok(Message::Close(f))) => Seen::Close(f.map(|f| u16::from(f.code))),
                            Some(Ok(_)) => continue,
                            Some(Err(_)) | None => Seen::Ended,
                        };
                        let end = seen == Seen::Ended;
                        let _ = seen_tx.send(seen);
                        if end {
                            return;
                        }
                    }
                    cmd = say_rx.recv() => match cmd {
                        Some(Say::Json(v)) => {
                            let _ = sink.send(Message::text(v.to_string())).await;
                        }
                        Some(Say::Close(code)) => {
                            let _ = sink
                                .send(Message::Close(Some(CloseFrame {
                                    code: CloseCode::from(code),
                                    reason: "policy".into(),
                                })))
                                .await;
                        }
                        None => return,
                    },
                }
            }
        });
        FakeNode { url, seen, say }
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("client frame in time")
            .expect("server task alive")
    }

    fn send(&self, v: serde_json::Value) {
        self.say.send(Say::Json(v)).unwrap();
    }
}

fn joined_json(me: &str, others: serde_json::Value) -> serde_json::Value {
    json!({
        "type": "joined", "room": "r", "participant": {"id": me, "name": me},
        "node": "n1", "resume_token": "rt", "ice_servers": [], "participants": others,
    })
}

fn fast() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_errors_are_typed_and_unanswered_requests_time_out() {
    let mut node = FakeNode::start().await;
    let client = Client::connect_with(&node.url, fast()).await.unwrap();

    let started = tokio::time::Instant::now();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(node.next_seen().await, Seen::Msg(ClientMessage::Ping));

    let join = tokio::spawn(async move {
        let r = client.join("r", "bad-token").await;
        (client, r)
    });
    match node.next_seen().await {
        Seen::Msg(ClientMessage::Join { room, token, .. }) => {
            assert_eq!((room.as_str(), token.as_str()), ("r", "bad-token"))
        }
        other => panic!("expected join, got {other:?}"),
    }
    node.send(json!({"type": "error", "code": "unauthorized", "message": "bad token"}));
    let (client, r) = join.await.unwrap();
    let err = r.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::Unauthorized), "{err}");
    assert!(client.joined().is_none());

    // Ids are validated before anything is sent.
    assert!(matches!(
        client.join("a room", "t").await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_logged_and_fold_into_the_room_view() {
    let mut node = FakeNode::start().await;
    let client = Client::connect(&node.url).await.unwrap();
    let join = tokio::spawn(async move {
        let r = client.join("r", "t").await;
        (client, r)
    });
    assert!(matches!(
        node.next_seen().await,
        Seen::Msg(ClientMessage::Join { .. })
    ));
    node.send(joined_json(
        "me",
        json!([{"id": "a", "name": "A", "tracks": [{"id": "TR_a1", "kind": "audio"}]}]),
    ));
    let (client, joined) = join.await.unwrap();
    let joined = joined.unwrap();
    assert_eq!(joined.participant.id.as_str(), "me");
    assert_eq!(client.participant_id().unwrap().as_str(), "me");

    let cursor = client.message_count();
    node.send(json!({"type": "participant_joined", "participant": {"id": "b", "name": "B"}}));
    node.send(json!({"type": "track_published", "participant": "b", "track": {"id": "TR_b1", "kind": "video"}}));
    node.send(json!({"type": "this_is_not_a_server_message"}));
    node.send(json!({"type": "message", "from": "b", "data": {"hello": 1}}));
    let msg = client
        .wait_for_since(cursor, WAIT, |m| matches!(m, ServerMessage::Message { .. }))
        .await
        .unwrap();
    assert!(
        matches!(msg, ServerMessage::Message { from, data } if from.as_str() == "b" && data["hello"] == 1)
    );
    let ps = client.participants();
    let ids: Vec<(&str, usize)> = ps.iter().map(|p| (p.id.as_str(), p.tracks.len())).collect();
    assert_eq!(ids, [("a", 1), ("b", 1)]);
    assert_eq!(client.unparsed_frames().len(), 1);
    // `wait_for` also finds messages that arrived before the call.
    client
        .wait_for(WAIT, |m| matches!(m, ServerMessage::Joined { .. }))
        .await
        .unwrap();

    node.send(json!({"type": "participant_left", "id": "a"}));
    client
        .wait_for_since(cursor, WAIT, |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        })
        .await
        .unwrap();
    assert_eq!(client.participants().len(), 1);

    client.send_message("b", json!([1, 2])).await.unwrap();
    client.send_raw_text("{not json".into()).await.unwrap();
    client.send_raw_binary(vec![0; 10]).await.unwrap();
    assert!(
        matches!(node.next_seen().await, Seen::Msg(ClientMessage::Message { to, .. }) if to.as_str() == "b")
    );
    assert_eq!(node.next_seen().await, Seen::Text("{not json".into()));
    assert_eq!(node.next_seen().await, Seen::Binary(10));
    assert!(
        client.local_errors().is_empty(),
        "{:?}",
        client.local_errors()
    );

    client.leave().await.unwrap();
    assert_eq!(node.next_seen().await, Seen::Msg(ClientMessage::Leave));
    assert_eq!(node.next_seen().await, Seen::Close(Some(1000)));
    assert!(client.is_closed());
    assert!(client.send_raw_text("late".into()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_close_ends_waits_and_keeps_its_code() {
    let node = FakeNode::start().await;
    let client = Client::connect(&node.url).await.unwrap();
    let waiter = tokio::spawn(async move {
        let r = client
            .wait_for(Duration::from_secs(30), |m| {
                matches!(m, ServerMessage::Pong)
            })
            .await;
        (client, r)
    });
    node.say.send(Say::Close(1008)).unwrap();
    let (client, r) = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert!(matches!(r, Err(Error::Closed(_))), "{r:?}");
    assert_eq!(client.close_code(), Some(1008));
    assert!(matches!(
        client.close_info(),
        Some(CloseInfo::Remote { code: 1008, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_abruptly_sends_neither_leave_nor_close_frame() {
    let mut node = FakeNode::start().await;
    let client = Client::connect(&node.url).await.unwrap();
    client.close_abruptly().await;
    assert_eq!(node.next_seen().await, Seen::Ended);
    assert_eq!(client.close_info(), Some(CloseInfo::Local));
    assert!(client.is_closed());

    // Dropping a client also ends its connection.
    let mut node = FakeNode::start().await;
    let client = Client::connect(&node.url).await.unwrap();
    drop(client);
    assert_eq!(node.next_seen().await, Seen::Ended);
}
