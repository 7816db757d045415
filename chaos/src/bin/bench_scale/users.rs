//! Part two: user routing. `--users` sessions, each with its own `user.<id>` subscription as
//! a node's `SessionRouter` holds one, spread over `--user-conns` connections standing in for
//! the nodes; each answers a delivery request with `DeliveryAck::Delivered` as a node does.
//! Another connection (the sender's node) then sends `--messages` deliveries to random users
//! with `--message-inflight` in flight: the latency of a cross-node `message` through NATS,
//! by its percentiles, and nats-server's memory with all the subscriptions in place.

use anyhow::Result;
use chaos::bench;
use chaos::sandbox::Cluster;
use futures::StreamExt;
use protocol::cluster::{self as wire, DeliveryAck, UserDelivery};
use protocol::signal::ServerMessage;
use protocol::{RoomId, UserId};
use std::time::{Duration, Instant};

pub struct UserRow {
    pub users: usize,
    pub conns: usize,
    pub subscribe_secs: f64,
    pub nats_rss_mib: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: usize,
}

fn user(i: usize) -> UserId {
    UserId::new(format!("user-{i:06}")).expect("user id")
}

/// Subscribes `users` users over `conns` connections and answers their deliveries until the
/// returned tasks are aborted.
async fn subscribe_all(
    cluster: &Cluster,
    users: usize,
    conns: usize,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let client = cluster.nats_client().await?;
        let mut subs = Vec::new();
        for i in (c..users).step_by(conns) {
            subs.push(client.subscribe(wire::user(&user(i))).await?);
        }
        client.flush().await?;
        let ack = serde_json::to_vec(&DeliveryAck::Delivered)?;
        tasks.push(tokio::spawn(async move {
            let mut all = futures::stream::select_all(subs);
            while let Some(m) = all.next().await {
                if let Some(reply) = m.reply {
                    let _ = client.publish(reply, ack.clone().into()).await;
                }
            }
        }));
    }
    Ok(tasks)
}

pub async fn run(
    cluster: &Cluster,
    users: usize,
    conns: usize,
    messages: usize,
    inflight: usize,
) -> Result<UserRow> {
    let started = Instant::now();
    let tasks = subscribe_all(cluster, users, conns.max(1)).await?;
    let subscribe_secs = started.elapsed().as_secs_f64();
    let nats_rss_mib = cluster
        .nats_servers()
        .filter_map(|p| bench::vm_rss_kib(p.pid()).ok())
        .sum::<u64>() as f64
        / 1024.0;
    let sender = cluster.nats_client().await?;
    let room = RoomId::new("scale-messages")?;
    let began = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(0..messages)
        .map(|k| {
            let sender = sender.clone();
            let room = room.clone();
            async move {
                let to = user((k * 7919) % users.max(1));
                let delivery = UserDelivery {
                    v: wire::VERSION,
                    room,
                    msg: ServerMessage::Message {
                        from: user(0),
                        data: serde_json::json!({ "k": k }),
                    },
                    host: None,
                };
                super::timed_request(&sender, wire::user(&to), &delivery, |a: &DeliveryAck| {
                    *a == DeliveryAck::Delivered
                })
                .await
            }
        })
        .buffer_unordered(inflight.max(1))
        .collect()
        .await;
    let secs = began.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    let (lat, failed) = super::latencies(&results);
    Ok(UserRow {
        users,
        conns,
        subscribe_secs,
        nats_rss_mib,
        per_sec: lat.len() as f64 / secs,
        p50_ms: super::pct_ms(&lat, 50.0),
        p99_ms: super::pct_ms(&lat, 99.0),
        failed,
    })
}
