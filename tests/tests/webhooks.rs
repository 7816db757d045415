//! Webhooks (README "Webhooks") from a real cluster — nats-server, two coordinators, two
//! nodes in two regions — to a receiver this test runs: every event of a scripted session
//! arrives, signed, in a valid order, also the ones that happened while the receiver was
//! down.

use anyhow::Context;
use chaos::bench::metric;
use chaos::sandbox::API_KEY;
use chaos::{wait_until, Client, PublishOpts};
use protocol::room_api::{mint_call, ApiClaims, ApiGrants};
use protocol::webhook::{self, EventKind, WebhookEvent};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tests::procs::{ProcSpec, Procs};
use tests::{now_unix, room_name};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const WAIT: Duration = Duration::from_secs(60);

/// One POST as the receiver got it.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    signature: String,
    body: Vec<u8>,
}

/// An HTTP server on a fixed loopback port that records every POST and answers 200. It can
/// be stopped (the port then refuses connections) and started again on the same port.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Delivery>>>,
    running: Option<(Arc<tiny_http::Server>, JoinHandle<()>)>,
}

impl Receiver {
    fn new() -> anyhow::Result<Receiver> {
        let port = portpicker::pick_unused_port().context("no free port")?;
        let mut r = Receiver {
            port,
            got: Arc::default(),
            running: None,
        };
        r.start()?;
        Ok(r)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let server = Arc::new(
            tiny_http::Server::http(("127.0.0.1", self.port))
                .map_err(|e| anyhow::anyhow!("receiver on {}: {e}", self.port))?,
        );
        let (srv, got) = (server.clone(), self.got.clone());
        let thread = std::thread::spawn(move || {
            for mut req in srv.incoming_requests() {
                let header = |name: &str| {
                    req.headers()
                        .iter()
                        .find(|h| h.field.to_string().eq_ignore_ascii_case(name))
                        .map(|h| h.value.to_string())
                        .unwrap_or_default()
                };
                let (id, signature) = (
                    header(webhook::ID_HEADER),
                    header(webhook::SIGNATURE_HEADER),
                );
                let mut body = Vec::new();
                let _ = std::io::Read::read_to_end(&mut req.as_reader(), &mut body);
                got.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Delivery {
                        id,
                        signature,
                        body,
                    });
                let _ = req.respond(tiny_http::Response::empty(200));
            }
        });
        self.running = Some((server, thread));
        Ok(())
    }

    fn stop(&mut self) {
        if let Some((server, thread)) = self.running.take() {
            server.unblock();
            let _ = thread.join();
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Distinct events in the order first received.
    fn events(&self) -> Vec<WebhookEvent> {
        let mut seen = HashSet::new();
        self.deliveries()
            .iter()
            .filter_map(|d| serde_json::from_slice::<WebhookEvent>(&d.body).ok())
            .filter(|e| seen.insert(e.id.clone()))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn join(
    procs: &Procs,
    node: &str,
    region: &str,
    room: &str,
    user: &str,
) -> anyhow::Result<Client> {
    let client = procs
        .join_as(node, region, &tests::claims(room, user, 600))
        .await?;
    client.publish(PublishOpts::default()).await?;
    Ok(client)
}

/// The sum of a counter over the coordinators.
async fn coordinators_counter(procs: &Procs, name: &str, label: &str) -> f64 {
    let mut total = 0.0;
    for c in procs.cluster.coordinators() {
        if let Ok(text) = c.http_get("/metrics").await {
            total += metric(&text, name, Some(label)).unwrap_or(0.0);
        }
    }
    total
}

fn kinds(events: &[WebhookEvent]) -> Vec<(EventKind, String)> {
    events
        .iter()
        .map(|e| {
            let who = e
                .participant
                .as_ref()
                .map(|p| p.id.to_string())
                .unwrap_or_default();
            (e.event, who)
        })
        .collect()
}

/// Where each (event, participant, track) first appears.
fn position(events: &[WebhookEvent], kind: EventKind, user: &str) -> Vec<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.event == kind
                && e.participant
                    .as_ref()
                    .is_some_and(|p| p.id.as_str() == user)
        })
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_in_order_also_after_the_receiver_was_down() -> anyhow::Result<()>
{
    let mut receiver = Receiver::new()?;
    let procs = Procs::start(
        ProcSpec::new(NODE, COORDINATOR, &[("n1", "eu"), ("n2", "us")])
            .coordinator_flag("--webhook-url")
            .coordinator_flag(&receiver.url()),
    )
    .await?;
    let secret = procs.secret().to_owned();
    let coordinator = procs
        .cluster
        .coordinators()
        .next()
        .context("no coordinator")?;
    let api = SocketAddr::from(([127, 0, 0, 1], coordinator.port()));
    let room = room_name("hooks");

    // The application creates the room; alice (eu) and bob (us) join and publish.
    let call = mint_call(
        secret.as_bytes(),
        &ApiClaims::new(API_KEY, ApiGrants::all(), now_unix(), 60),
    );
    let auth = format!("Bearer {call}");
    let (status, body) = chaos::bench::http_exchange(
        api,
        "POST",
        "/v1/rooms",
        &[("authorization", auth.as_str())],
        Some(json!({"room": room, "empty_timeout_secs": 1}).to_string()),
    )
    .await?;
    anyhow::ensure!(status == 201, "create: {status} {body}");
    let alice = join(&procs, "n1", "eu", &room, "alice").await?;
    let bob = join(&procs, "n2", "us", &room, "bob").await?;
    wait_until(WAIT, "the first seven events delivered", || async {
        let got = receiver.events();
        if got.len() >= 7 {
            Ok(())
        } else {
            Err(format!("{:?}", kinds(&got)))
        }
    })
    .await?;

    // The receiver goes away; the session goes on and ends.
    receiver.stop();
    let retries_before =
        coordinators_counter(&procs, "webhook_deliveries_total", "result=\"retry\"").await;
    bob.leave().await?;
    alice.leave().await?;
    wait_until(
        WAIT,
        "the coordinators retry against the absent receiver",
        || async {
            let now =
                coordinators_counter(&procs, "webhook_deliveries_total", "result=\"retry\"").await;
            if now >= retries_before + 2.0 {
                Ok(())
            } else {
                Err(format!("retries {retries_before} → {now}"))
            }
        },
    )
    .await?;

    // Back up: the rest arrives.
    receiver.start()?;
    wait_until(WAIT, "every event delivered", || async {
        let got = receiver.events();
        if got.iter().any(|e| e.event == EventKind::RoomFinished) && got.len() >= 14 {
            Ok(())
        } else {
            Err(format!("{:?}", kinds(&got)))
        }
    })
    .await?;

    // Signatures and ids.
    let now = now_unix();
    for d in receiver.deliveries() {
        webhook::verify(secret.as_bytes(), &d.signature, &d.body, now, 300)
            .with_context(|| format!("signature of {}", String::from_utf8_lossy(&d.body)))?;
        let e: WebhookEvent = serde_json::from_slice(&d.body)?;
        assert_eq!(d.id, e.id, "Webhook-Id is the event's id");
        assert_eq!(e.room.as_str(), room);
    }
    assert!(
        webhook::verify(
            b"another-secret",
            &receiver.deliveries()[0].signature,
            &receiver.deliveries()[0].body,
            now,
            300
        )
        .is_err(),
        "a signature checked against another secret fails"
    );

    // Exactly the session's events, in an order that makes sense.
    let events = receiver.events();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *counts.entry(e.event.as_str()).or_default() += 1;
    }
    let expected: BTreeMap<&str, usize> = [
        ("room_started", 1),
        ("participant_joined", 2),
        ("track_published", 4),
        ("track_unpublished", 4),
        ("participant_left", 2),
        ("room_finished", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected, "{:?}", kinds(&events));
    assert_eq!(
        events.first().map(|e| e.event),
        Some(EventKind::RoomStarted)
    );
    assert_eq!(
        events.last().map(|e| e.event),
        Some(EventKind::RoomFinished)
    );
    for user in ["alice", "bob"] {
        let joined = position(&events, EventKind::ParticipantJoined, user);
        let published = position(&events, EventKind::TrackPublished, user);
        let unpublished = position(&events, EventKind::TrackUnpublished, user);
        let left = position(&events, EventKind::ParticipantLeft, user);
        assert!(
            joined.len() == 1 && published.len() == 2 && unpublished.len() == 2 && left.len() == 1,
            "{user}: {:?}",
            kinds(&events)
        );
        assert!(
            joined[0] < published[0]
                && published.iter().max() < unpublished.iter().min()
                && unpublished.iter().max() < Some(&left[0]),
            "{user}'s events out of order: {:?}",
            kinds(&events)
        );
        for e in events.iter().filter(|e| {
            e.participant
                .as_ref()
                .is_some_and(|p| p.id.as_str() == user)
        }) {
            if matches!(
                e.event,
                EventKind::TrackPublished | EventKind::TrackUnpublished
            ) {
                assert!(e.track.is_some(), "a track event names its track: {e:?}");
            }
        }
    }
    Ok(())
}

/// A participant moved off a draining node is the same participant: the application hears
/// `room_moved` (drain, from the node), its tracks unpublished and published again, and no
/// `participant_left` or second `participant_joined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_the_room_without_anyone_leaving() -> anyhow::Result<()> {
    let receiver = Receiver::new()?;
    let mut procs = Procs::start(
        ProcSpec::new(
            NODE,
            COORDINATOR,
            &[("n1", "eu"), ("n2", "us"), ("n3", "us")],
        )
        .coordinator_flag("--webhook-url")
        .coordinator_flag(&receiver.url()),
    )
    .await?;
    let room = room_name("hookdrain");
    let alice = join(&procs, "n1", "eu", &room, "alice").await?;
    let tokens = chaos::mint_tokens(
        procs.secret(),
        tests::claims(&room, "bob", 600),
        Duration::from_secs(600),
    );
    let config = chaos::ParticipantConfig {
        region: Some("us".into()),
        ..chaos::ParticipantConfig::default()
    };
    let bob = chaos::Participant::join(&procs.ws_url("n2"), &room, tokens, config).await?;
    bob.publish(PublishOpts::default()).await?;
    // Placement picks bob's node among the two of his region; that one drains, and he
    // moves to the other.
    let first = bob.joined().node.to_string();
    let other = if first == "n2" { "n3" } else { "n2" };
    anyhow::ensure!(first == "n2" || first == "n3", "bob served by {first}");
    bob.wait_media_from_others(WAIT).await?;
    procs.signal(&first, "TERM")?;
    bob.wait_recoveries(1, WAIT).await?;
    anyhow::ensure!(
        bob.joined().node.as_str() == other,
        "bob moved to {}",
        bob.joined().node
    );
    bob.wait_media_from_others(WAIT).await?;
    wait_until(WAIT, "room_moved delivered", || async {
        let got = receiver.events();
        if got.iter().any(|e| e.event == EventKind::RoomMoved) {
            Ok(())
        } else {
            Err(format!("{:?}", kinds(&got)))
        }
    })
    .await?;
    alice.leave().await?;
    bob.leave().await?;
    wait_until(WAIT, "bob's departure delivered", || async {
        let got = receiver.events();
        if position(&got, EventKind::ParticipantLeft, "bob").len() == 1 {
            Ok(())
        } else {
            Err(format!("{:?}", kinds(&got)))
        }
    })
    .await?;
    let events = receiver.events();
    let moved: Vec<_> = events.iter().filter_map(|e| e.moved.as_ref()).collect();
    anyhow::ensure!(
        moved
            .iter()
            .any(|m| m.reason == webhook::MoveReason::Drain && m.from.as_str() == first),
        "a drain of {first}: {moved:?}"
    );
    assert_eq!(
        position(&events, EventKind::ParticipantJoined, "bob").len(),
        1,
        "{:?}",
        kinds(&events)
    );
    let left = position(&events, EventKind::ParticipantLeft, "bob");
    let moved_at = events
        .iter()
        .position(|e| e.event == EventKind::RoomMoved)
        .unwrap_or(usize::MAX);
    assert!(
        left.len() == 1 && left[0] > moved_at,
        "bob left only at the end: {:?}",
        kinds(&events)
    );
    // Published on n2, published again on n3 after the move.
    assert!(
        position(&events, EventKind::TrackPublished, "bob").len() >= 4,
        "{:?}",
        kinds(&events)
    );
    Ok(())
}

/// A node killed under a room that lives on elsewhere: the application hears `room_moved`
/// (failover, from the dead node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_moves_the_room() -> anyhow::Result<()> {
    let receiver = Receiver::new()?;
    let mut procs = Procs::start(
        ProcSpec::new(NODE, COORDINATOR, &[("n1", "eu"), ("n2", "us")])
            .coordinator_flag("--webhook-url")
            .coordinator_flag(&receiver.url()),
    )
    .await?;
    let room = room_name("hookdead");
    let _alice = join(&procs, "n1", "eu", &room, "alice").await?;
    let bob = join(&procs, "n2", "us", &room, "bob").await?;
    anyhow::ensure!(bob.joined().map(|j| j.node.to_string()).as_deref() == Some("n2"));
    wait_until(WAIT, "both joins delivered", || async {
        let got = receiver.events();
        let joins = got
            .iter()
            .filter(|e| e.event == EventKind::ParticipantJoined)
            .count();
        if joins == 2 {
            Ok(())
        } else {
            Err(format!("{:?}", kinds(&got)))
        }
    })
    .await?;
    procs.signal("n2", "KILL")?;
    wait_until(WAIT, "room_moved delivered", || async {
        let got = receiver.events();
        let moved = got.iter().filter_map(|e| e.moved.as_ref()).find(|m| {
            m.reason == webhook::MoveReason::Failover
                && m.from.as_str() == "n2"
                && m.to.as_ref().map(|n| n.as_str()) == Some("n1")
        });
        match moved {
            Some(_) => Ok(()),
            None => Err(format!("{:?}", kinds(&got))),
        }
    })
    .await?;
    Ok(())
}
