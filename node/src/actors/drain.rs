//! Draining a node (SIGTERM, `POST /admin/drain`, or a coordinator's drain command): it
//! takes no new rooms, moves its participants to other nodes in batches — each client gets
//! `reconnect` with the URL of the node a coordinator chose for its room, and resumes there —
//! then closes its rooms, sends the remaining sockets elsewhere and exits. It always ends:
//! at `--drain-deadline` whoever is left is told to reconnect and the node exits anyway.

use super::rooms::{CloseAll, ListMembers, RoomRegistry};
use super::router::{Broadcast, Deliver, Routed};
use super::NodeCtx;
use actix::Addr;
use protocol::cluster::{self as wire, AllocateReply, AllocateRequest};
use protocol::signal::ServerMessage;
use protocol::{RoomId, UserId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the drain looks at what is left.
const TICK: Duration = Duration::from_millis(100);
/// A participant told to move and still here after this is told again.
const RETELL: Duration = Duration::from_secs(3);
/// How long the remaining sockets (their media elsewhere) get to go before the node exits.
const SOCKETS_GRACE: Duration = Duration::from_secs(2);
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts draining unless a drain runs already. Returns whether this call started it.
pub fn start(node: &NodeCtx, rooms: &Addr<RoomRegistry>, why: &'static str) -> bool {
    if node.drain_started.swap(true, Ordering::SeqCst) {
        node.draining.store(true, Ordering::Relaxed);
        return false;
    }
    node.draining.store(true, Ordering::Relaxed);
    tracing::warn!(
        why,
        deadline_s = node.config.drain_deadline.as_secs(),
        "draining"
    );
    metrics::counter!("node_drains_total", "why" => why).increment(1);
    let (node, rooms) = (node.clone(), rooms.clone());
    tokio::spawn(async move {
        run(&node, &rooms).await;
        tracing::warn!("drained; exiting");
        node.exit.notify_one();
    });
    true
}

async fn run(node: &NodeCtx, rooms: &Addr<RoomRegistry>) {
    let started = Instant::now();
    let deadline = started + node.config.drain_deadline;
    let batch = node.config.drain_batch;
    let mut told: HashMap<(RoomId, UserId), Instant> = HashMap::new();
    let mut moved_total = 0usize;
    // Bounded by the deadline.
    while Instant::now() < deadline {
        let members = rooms.send(ListMembers).await.unwrap_or_default();
        if members.is_empty() {
            break;
        }
        let now = Instant::now();
        told.retain(|k, _| members.contains(k));
        let in_flight = told
            .values()
            .filter(|t| now.duration_since(**t) < RETELL)
            .count();
        let room_for = batch.saturating_sub(in_flight);
        let next: Vec<(RoomId, UserId)> = members
            .into_iter()
            .filter(|k| told.get(k).is_none_or(|t| now.duration_since(*t) >= RETELL))
            .take(room_for)
            .collect();
        let mut by_room: BTreeMap<RoomId, Vec<UserId>> = BTreeMap::new();
        for (room, user) in next {
            by_room.entry(room).or_default().push(user);
        }
        for (room, users) in by_room {
            let url = target_url(node, &room).await;
            // No other node known yet (this one just started and has not heard the others'
            // heartbeats): sent off without a URL its clients would come straight back.
            // Wait for one; the deadline bounds it, and tells everyone anyway.
            if url.is_none() && node.cluster.is_some() {
                tracing::info!(%room, "no other node known yet; moving its participants later");
                continue;
            }
            tracing::info!(%room, participants = users.len(), url = url.as_deref().unwrap_or("-"), "moving participants");
            for user in users {
                tell_to_move(node, &room, &user, url.clone());
                told.insert((room.clone(), user), Instant::now());
                moved_total += 1;
            }
        }
        tokio::time::sleep(TICK).await;
    }
    // Past the deadline: whoever is still here is told to go, wherever its socket is.
    let remaining = rooms.send(ListMembers).await.unwrap_or_default();
    let url = node.fallback_urls().into_iter().next();
    for (room, user) in &remaining {
        tell_to_move(node, room, user, url.clone());
    }
    let left = remaining.len();
    tracing::info!(
        told = moved_total,
        left,
        took_ms = started.elapsed().as_millis() as u64,
        "participants moved"
    );
    rooms.send(CloseAll).await.ok();
    // Sockets whose participant lives on another node: they reconnect elsewhere and resume
    // it there.
    let url = node.fallback_urls().into_iter().next();
    node.router.do_send(Broadcast(Routed::Leave {
        reason: "drain",
        url,
    }));
    let sockets_deadline = Instant::now() + SOCKETS_GRACE;
    while Instant::now() < sockets_deadline && node.counters.snapshot().sessions > 0 {
        tokio::time::sleep(TICK).await;
    }
    // The rooms' `room_closed` messages are on their way to NATS; the process exits next.
    // Without a flush they could die with it, and the directory would keep naming this node
    // until the coordinators found it dead.
    if let Some(cluster) = &node.cluster {
        cluster.flush(FLUSH_TIMEOUT).await;
    }
}

/// How long the last messages get to reach NATS before the node exits.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `user` of `room`, wherever its socket is, `reconnect` (`drain`) to `url`.
fn tell_to_move(node: &NodeCtx, room: &RoomId, user: &UserId, url: Option<String>) {
    node.router.do_send(Deliver {
        to: user.clone(),
        room: room.clone(),
        msg: ServerMessage::Reconnect {
            reason: "drain".into(),
            url,
        },
    });
}

/// The WebSocket URL of the node a coordinator serves `room` from now that this one drains;
/// `None` (the client reconnects where it did, behind a load balancer) if none is known.
async fn target_url(node: &NodeCtx, room: &RoomId) -> Option<String> {
    let fallback = || node.fallback_urls().into_iter().next();
    let Some(cluster) = &node.cluster else {
        return None;
    };
    let me = node.config.node_id.clone();
    let ask = AllocateRequest {
        v: wire::VERSION,
        room: room.clone(),
        region: Some(node.config.region.clone()),
        from: me.clone(),
        forwarded: false,
        lookup: false,
        full: vec![me.clone()],
        suspects: Vec::new(),
        settings: None,
    };
    let reply = cluster
        .request::<_, AllocateReply>(wire::ALLOCATE.to_owned(), &ask, ALLOCATE_TIMEOUT)
        .await;
    match reply {
        Ok(AllocateReply::Assigned { serve, .. }) if serve != me => {
            let url = super::lock(&node.peers).url_of(&serve, Instant::now());
            url.or_else(fallback)
        }
        Ok(other) => {
            tracing::warn!(%room, ?other, "no other node for a draining room");
            fallback()
        }
        Err(e) => {
            tracing::warn!(%room, error = %e, "allocation for a draining room failed");
            fallback()
        }
    }
}
