//! The coordinator's NATS face: the connection (retried forever, in the background), the
//! heartbeats it hears and sends, and the subscriptions that feed [`crate::allocate`] and
//! [`crate::failover`].

use crate::directory::{Left, RoomDirectory};
use crate::metrics::LeaveOutcome;
use crate::registry::{Heard, Liveness};
use crate::settings::SettingsStore;
use crate::Shared;
use async_nats::connection::State;
use async_nats::{Client, Event, Subscriber};
use futures::StreamExt;
use protocol::cluster::{
    self, untoken, CoordHeartbeat, Drain, NodeHeartbeat, NodeStatus, NodeStatusRequest, RoomClosed,
    ALLOCATE, COORD_HEARTBEAT, COORD_QUEUE, NODE_HEARTBEAT, NODE_STATUS, ROOM_CLOSED, VERSION,
};
use protocol::NodeId;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// Reconnect backoff: quick at first, never more than this, so a restarted NATS is used again
/// within about a second (async-nats' default backs off to 4 s).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Pause between attempts to open the directory while JetStream is not there yet.
const OPEN_RETRY: Duration = Duration::from_millis(500);
/// Nodes silent this long (or ten timeouts, if longer) leave the registry and `/nodes`.
const FORGET_NODES_AFTER: Duration = Duration::from_secs(60);

pub(crate) fn reconnect_delay(attempts: usize) -> Duration {
    protocol::backoff::delay(attempts, Duration::from_millis(50), MAX_RECONNECT_DELAY)
}

/// Runs until `stop` turns true, then stops gracefully and reports on `done`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    done: oneshot::Sender<()>,
) {
    let client = match connect(&shared).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "bad nats url; the coordinator stays unready");
            let _ = stop.wait_for(|s| *s).await;
            let _ = done.send(());
            return;
        }
    };
    let _ = shared.client.set(client.clone());
    let mut tasks = JoinSet::new();
    tasks.spawn(node_heartbeats(shared.clone(), client.clone()));
    tasks.spawn(coord_heartbeats(shared.clone(), client.clone()));
    tasks.spawn(drains(shared.clone(), client.clone()));
    tasks.spawn(announce(shared.clone(), client.clone()));
    tasks.spawn(crate::failover::suspicions(shared.clone(), client.clone()));
    tasks.spawn(crate::failover::overdue_heartbeats(
        shared.clone(),
        client.clone(),
    ));

    let opened = tokio::select! {
        dir = open_directory(&shared, &client) => Some(dir),
        _ = stop.wait_for(|s| *s) => None,
    };
    let opened = match opened {
        Some(dir) => tokio::select! {
            // With webhook URLs the stream exists before this coordinator is ready, so no
            // event it emits meets a missing stream.
            settings = async {
                let settings = open_settings(&shared, &client).await;
                if !shared.config.webhook_urls.is_empty() {
                    open_webhook_stream(&shared, &client).await;
                }
                settings
            } => Some((dir, settings)),
            _ = stop.wait_for(|s| *s) => None,
        },
        None => None,
    };
    if let Some((dir, settings)) = opened {
        tasks.spawn(crate::mirror::run(shared.clone(), dir.store().clone()));
        let _ = shared.directory.set(dir);
        tasks.spawn(settings.clone().watch());
        let _ = shared.settings.set(settings);
        tasks.spawn(crate::lifecycle::sweep(shared.clone()));
        if shared.config.webhook_urls.is_empty() {
            tasks.spawn(crate::webhooks::stream_presence(
                shared.clone(),
                client.clone(),
            ));
        }
        for url in shared.config.webhook_urls.clone() {
            tasks.spawn(crate::webhooks::delivery::run(
                shared.clone(),
                client.clone(),
                url,
            ));
        }
        tracing::info!(coordinator = %shared.config.id, "room directory open, serving allocations");
        let own = cluster::coord_allocate(&shared.config.id);
        match client.queue_subscribe(ALLOCATE, COORD_QUEUE.into()).await {
            Ok(sub) => drop(tasks.spawn(allocations(shared.clone(), client.clone(), sub))),
            Err(e) => tracing::error!(error = %e, "subscribe coord.allocate"),
        }
        // Still served: coordinators of an earlier version forward here during an upgrade.
        match client.subscribe(own).await {
            Ok(sub) => drop(tasks.spawn(allocations(shared.clone(), client.clone(), sub))),
            Err(e) => tracing::error!(error = %e, "subscribe own allocate subject"),
        }
        tasks.spawn(rooms_closed(shared.clone(), client.clone()));
        tasks.spawn(node_status(shared.clone(), client.clone()));
        let _ = stop.wait_for(|s| *s).await;
    }

    // Graceful stop: no new requests (dropping the subscribers unsubscribes), answer those in
    // flight, then flush and close the connection.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        shared.inflight.acquire_many(crate::MAX_INFLIGHT),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
    let _ = done.send(());
}

async fn connect(shared: &Arc<Shared>) -> Result<Client, async_nats::ConnectError> {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let servers: Vec<&str> = shared.config.nats_url.split(',').map(str::trim).collect();
    let options = match credentials(&shared.config, &servers) {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        None => async_nats::ConnectOptions::new(),
    };
    let options = match &shared.config.nats_ca_file {
        Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
        None => options,
    };
    options
        .name(format!("coordinator {}", shared.config.id))
        .retry_on_initial_connect()
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let weak = weak.clone();
            async move {
                let Some(shared) = weak.upgrade() else { return };
                match event {
                    Event::Connected => {
                        tracing::info!(coordinator = %shared.config.id, "connected to nats");
                        shared.metrics.nats_connected(true);
                        shared.nodes().listening(Instant::now());
                    }
                    Event::Disconnected => {
                        tracing::warn!(coordinator = %shared.config.id, "disconnected from nats");
                        shared.metrics.nats_connected(false);
                        shared.nodes().deaf();
                    }
                    other => tracing::debug!(event = %other, "nats event"),
                }
            }
        })
        .connect(servers)
        .await
}

/// The configured user and password, else those of the first server URL that has them.
fn credentials(config: &crate::Config, servers: &[&str]) -> Option<(String, String)> {
    if let (Some(u), Some(p)) = (&config.nats_user, &config.nats_password) {
        return Some((u.clone(), p.clone()));
    }
    servers
        .iter()
        .filter_map(|s| s.parse::<async_nats::ServerAddr>().ok())
        .find(|s| s.has_user_pass())
        .and_then(|s| Some((s.username()?.to_owned(), s.password()?.to_owned())))
}

/// Opens (or creates) the `rooms` bucket, retrying until it works.
async fn open_directory(shared: &Shared, client: &Client) -> RoomDirectory {
    let mut attempt = 0u64;
    loop {
        if client.connection_state() == State::Connected {
            match RoomDirectory::open(client, shared.config.kv_replicas).await {
                Ok(dir) => return dir,
                Err(e) => {
                    attempt += 1;
                    // Expected while JetStream starts; loud only if it persists.
                    if attempt % 20 == 1 {
                        tracing::warn!(error = %e, attempt, "room directory not available yet");
                    }
                }
            }
        }
        tokio::time::sleep(OPEN_RETRY).await;
    }
}

/// Opens (or creates) the `room_settings` bucket, retrying until it works.
async fn open_settings(shared: &Shared, client: &Client) -> SettingsStore {
    let mut attempt = 0u64;
    loop {
        if client.connection_state() == State::Connected {
            match SettingsStore::open(client, shared.config.kv_replicas).await {
                Ok(s) => return s,
                Err(e) => {
                    attempt += 1;
                    if attempt % 20 == 1 {
                        tracing::warn!(error = %e, attempt, "room settings not available yet");
                    }
                }
            }
        }
        tokio::time::sleep(OPEN_RETRY).await;
    }
}

/// Creates (or updates) the webhook stream, retrying until it works.
async fn open_webhook_stream(shared: &Shared, client: &Client) {
    let js = async_nats::jetstream::new(client.clone());
    let mut attempt = 0u64;
    loop {
        if client.connection_state() == State::Connected {
            match crate::webhooks::delivery::ensure_stream(shared, &js).await {
                Ok(_) => return,
                Err(e) => {
                    attempt += 1;
                    if attempt % 20 == 1 {
                        tracing::warn!(error = %e, attempt, "webhook stream not available yet");
                    }
                }
            }
        }
        tokio::time::sleep(OPEN_RETRY).await;
    }
}

async fn node_heartbeats(shared: Arc<Shared>, client: Client) {
    let Ok(mut sub) = client.subscribe(NODE_HEARTBEAT).await else {
        tracing::error!("subscribe node heartbeats");
        return;
    };
    while let Some(msg) = sub.next().await {
        match serde_json::from_slice::<NodeHeartbeat>(&msg.payload) {
            Ok(hb) if hb.v == VERSION => {
                let node = hb.node.clone();
                match shared.nodes().heartbeat(hb, Instant::now()) {
                    Heard::New | Heard::Alive => {}
                    Heard::Revived => tracing::info!(%node, "node alive again"),
                    Heard::Stale => {
                        shared.metrics.stale_heartbeat();
                        tracing::debug!(%node, "heartbeat from before the node's death ignored");
                    }
                }
            }
            Ok(hb) => tracing::debug!(v = hb.v, "node heartbeat of another version ignored"),
            Err(e) => tracing::debug!(error = %e, "unreadable node heartbeat"),
        }
    }
}

async fn coord_heartbeats(shared: Arc<Shared>, client: Client) {
    let Ok(mut sub) = client.subscribe(COORD_HEARTBEAT).await else {
        tracing::error!("subscribe coordinator heartbeats");
        return;
    };
    while let Some(msg) = sub.next().await {
        match serde_json::from_slice::<CoordHeartbeat>(&msg.payload) {
            Ok(hb) if hb.v == VERSION => shared.coords().heartbeat(&hb.coordinator, Instant::now()),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "unreadable coordinator heartbeat"),
        }
    }
}

/// Operators' drain requests, whichever coordinator took them: every coordinator marks the
/// node, so none places rooms there even before the node's own heartbeat says it drains.
async fn drains(shared: Arc<Shared>, client: Client) {
    let Ok(mut sub) = client.subscribe("node.*.drain").await else {
        tracing::error!("subscribe node drains");
        return;
    };
    while let Some(msg) = sub.next().await {
        let node = msg
            .subject
            .split('.')
            .nth(1)
            .and_then(untoken)
            .and_then(|id| NodeId::new(id).ok());
        match (node, serde_json::from_slice::<Drain>(&msg.payload)) {
            (Some(node), Ok(d)) if d.v == VERSION => {
                tracing::info!(%node, draining = d.draining, "drain request");
                shared.nodes().request_drain(&node, d.draining);
            }
            (node, d) => tracing::debug!(?node, ok = d.is_ok(), "unusable drain message"),
        }
    }
}

/// This coordinator's heartbeat, housekeeping of the registries, and the deaths silence
/// reveals.
async fn announce(shared: Arc<Shared>, client: Client) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let forget = FORGET_NODES_AFTER.max(shared.config.node_timeout * 10);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let connected = client.connection_state() == State::Connected;
        shared.metrics.nats_connected(connected);
        shared.coords().prune(now);
        {
            let mut nodes = shared.nodes();
            nodes.prune(now, forget);
            // The connection events normally keep this in step; they travel through a
            // bounded channel that may drop one, so check here too.
            match (connected, nodes.is_listening()) {
                (true, false) => nodes.listening(now),
                (false, true) => nodes.deaf(),
                _ => {}
            }
        }
        shared.probes().prune(now);
        crate::failover::silent_deaths(&shared, &client, now);
        // While disconnected, publishes would only queue up stale heartbeats.
        if !connected {
            continue;
        }
        let hb = CoordHeartbeat {
            v: VERSION,
            coordinator: shared.config.id.clone(),
            sent_ms: crate::now_ms(),
        };
        match serde_json::to_vec(&hb) {
            Ok(body) => {
                if let Err(e) = client.publish(COORD_HEARTBEAT, body.into()).await {
                    tracing::debug!(error = %e, "publish coordinator heartbeat");
                }
            }
            Err(e) => tracing::error!(error = %e, "encode coordinator heartbeat"),
        }
    }
}

async fn allocations(shared: Arc<Shared>, client: Client, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        let Ok(permit) = shared.inflight.clone().acquire_owned().await else {
            return;
        };
        let (shared, client) = (shared.clone(), client.clone());
        tokio::spawn(async move {
            crate::allocate::serve(&shared, &client, msg).await;
            drop(permit);
        });
    }
}

/// `coord.node_status`: whether this coordinator counts a node as alive — a node is ready for
/// joins once one does (and the directory is open, or this is not served at all).
async fn node_status(shared: Arc<Shared>, client: Client) {
    let Ok(mut sub) = client
        .queue_subscribe(NODE_STATUS, COORD_QUEUE.into())
        .await
    else {
        tracing::error!("subscribe node status");
        return;
    };
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else {
            continue;
        };
        let req = match serde_json::from_slice::<NodeStatusRequest>(&msg.payload) {
            Ok(r) if r.v == VERSION => r,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable node status request");
                continue;
            }
        };
        let alive = shared.nodes().liveness(&req.node, Instant::now()) == Liveness::Alive;
        let status = NodeStatus {
            v: VERSION,
            alive,
            coordinator: shared.config.id.clone(),
        };
        if let Ok(body) = serde_json::to_vec(&status) {
            let _ = client.publish(reply, body.into()).await;
        }
    }
}

/// `cluster.room.closed`: a node left a room. One coordinator (queue group) takes each.
async fn rooms_closed(shared: Arc<Shared>, client: Client) {
    let Ok(mut sub) = client
        .queue_subscribe(ROOM_CLOSED, COORD_QUEUE.into())
        .await
    else {
        tracing::error!("subscribe room closed");
        return;
    };
    while let Some(msg) = sub.next().await {
        let closed = match serde_json::from_slice::<RoomClosed>(&msg.payload) {
            Ok(c) if c.v == VERSION => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable room closed");
                continue;
            }
        };
        let Some(dir) = shared.directory.get() else {
            continue;
        };
        let (room, node, epoch) = (&closed.room, &closed.node, closed.epoch);
        let outcome = match dir.leave(&closed, &shared.config.id).await {
            Ok(Left::Unchanged) => {
                tracing::debug!(%room, %node, epoch, "node left a room it is not listed in");
                LeaveOutcome::Unchanged
            }
            Ok(Left::Closed { epoch, assigned_ms }) => {
                shared.metrics.room_closed();
                tracing::info!(%room, %node, epoch, "last node left, room closed");
                crate::lifecycle::finished_live(&shared, room, epoch, assigned_ms).await;
                LeaveOutcome::Closed
            }
            Ok(Left::Updated {
                assignment,
                revision,
                origin_moved,
            }) => {
                tracing::info!(
                    %room,
                    %node,
                    origin = %assignment.node,
                    epoch = assignment.epoch,
                    nodes = assignment.nodes.len(),
                    revision,
                    origin_moved,
                    "node left room"
                );
                // A draining node leaves rooms that live on elsewhere: they moved.
                // The node says whether it drains (`RoomClosed::draining`): a node drained by
                // SIGTERM leaves its rooms before any heartbeat of it says so.
                if closed.draining || shared.nodes().is_draining(node) {
                    let e = crate::webhooks::moved_event(
                        &shared,
                        protocol::webhook::MoveReason::Drain,
                        node,
                        &assignment,
                        revision,
                    );
                    crate::webhooks::emit(&shared, &e).await;
                }
                if origin_moved {
                    LeaveOutcome::OriginMoved
                } else {
                    LeaveOutcome::Removed
                }
            }
            Ok(Left::Contended) => {
                tracing::warn!(%room, %node, epoch, "node leaving not recorded: directory contended");
                LeaveOutcome::Error
            }
            Err(e) => {
                tracing::warn!(%room, %node, epoch, error = %e, "node leaving not recorded");
                LeaveOutcome::Error
            }
        };
        shared.metrics.node_left(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_then_caps() {
        assert_eq!(reconnect_delay(0).as_millis(), 50);
        assert_eq!(reconnect_delay(1).as_millis(), 50);
        assert_eq!(reconnect_delay(3).as_millis(), 200);
        assert_eq!(reconnect_delay(50), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }
}
