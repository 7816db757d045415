//! `NodeAgent`: the node's NATS face. Publishes a heartbeat with load every second and
//! serves what other processes ask of this node: joins for rooms hosted here, signaling of
//! participants whose socket is on another node, drain, and the room list.

use super::room::JoinedInfo;
use super::rooms::{
    JoinRoom, ListRooms, RemotePeerCommand, RemoteRelayMessage, ResumeRoom, RoomRegistry,
    StateOfRoom,
};
use super::{NodeCtx, NodeEntry, Observe};
use crate::cluster::Cluster;
use actix::prelude::*;
use futures::StreamExt;
use protocol::cluster::{self as wire, NodeHeartbeat, NodeLoad, RemoteJoin, RemoteJoinReply};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How often a node not yet counted by a coordinator asks again.
const PLACEABLE_CHECK: Duration = Duration::from_millis(250);

pub struct NodeAgent {
    node: NodeCtx,
    rooms: Addr<RoomRegistry>,
    cluster: Cluster,
    ws_url: String,
    cpu: CpuProbe,
    last_bytes: (Instant, u64),
    heartbeats: u64,
}

impl NodeAgent {
    pub fn new(entry: NodeEntry, cluster: Cluster, ws_url: String) -> Self {
        let NodeEntry {
            shared: node,
            rooms,
        } = entry;
        let bytes = node.counters.snapshot().bytes_forwarded;
        NodeAgent {
            node,
            rooms,
            cluster,
            ws_url,
            cpu: CpuProbe::new(),
            last_bytes: (Instant::now(), bytes),
            heartbeats: 0,
        }
    }

    fn load(&mut self) -> NodeLoad {
        let c = self.node.counters.snapshot();
        let now = Instant::now();
        let secs = now
            .duration_since(self.last_bytes.0)
            .as_secs_f64()
            .max(1e-3);
        let egress_bps =
            (c.bytes_forwarded.saturating_sub(self.last_bytes.1) as f64 * 8.0 / secs) as u64;
        self.last_bytes = (now, c.bytes_forwarded);
        let cfg = &self.node.config;
        NodeLoad {
            cpu: self.cpu.sample(),
            rooms: c.rooms.max(0) as u32,
            peers: c.peers.max(0) as u32,
            tracks: c.tracks.max(0) as u32,
            egress_bps,
            max_rooms: cfg.max_rooms,
            max_peers: cfg.max_peers,
            max_egress_bps: cfg.max_egress_bps,
        }
    }

    fn heartbeat(&mut self) {
        let hb = NodeHeartbeat {
            v: wire::VERSION,
            node: self.node.config.node_id.clone(),
            region: self.node.config.region.clone(),
            ws_url: self.ws_url.clone(),
            draining: self.node.draining.load(Ordering::Relaxed),
            load: self.load(),
            sent_ms: now_ms(),
        };
        self.cluster.publish(wire::NODE_HEARTBEAT.to_owned(), &hb);
        self.heartbeats += 1;
    }

    /// Until a coordinator counts this node as alive, asks whether one does: a node whose
    /// heartbeat no coordinator has heard yet would see its joins refused, so it is not
    /// ready before (DESIGN: ready means a join can succeed).
    fn check_placeable(&self) {
        if self.node.placeable.load(Ordering::Relaxed) || !self.cluster.connected() {
            return;
        }
        let (cluster, placeable) = (self.cluster.clone(), self.node.placeable.clone());
        let ask = wire::NodeStatusRequest {
            v: wire::VERSION,
            node: self.node.config.node_id.clone(),
        };
        self.cluster.rt.spawn(async move {
            let status = cluster
                .request::<_, wire::NodeStatus>(wire::NODE_STATUS.to_owned(), &ask, PLACEABLE_CHECK)
                .await;
            if let Ok(s) = status {
                if s.alive && !placeable.swap(true, Ordering::Relaxed) {
                    tracing::info!(coordinator = %s.coordinator, "a coordinator counts this node: ready for joins");
                }
            }
        });
    }

    /// Serves this node's subjects on the media runtime. Subscriptions outlive NATS
    /// restarts (the client restores them), so each loop runs for the node's life.
    fn serve(&self) {
        let id = &self.node.config.node_id;
        let c = &self.cluster;
        let rooms = self.rooms.clone();
        serve_requests(c, wire::node_join(id), move |payload| {
            let rooms = rooms.clone();
            async move { remote_join(&rooms, &payload).await }
        });
        let rooms = self.rooms.clone();
        serve_requests(c, wire::node_resume(id), move |payload| {
            let rooms = rooms.clone();
            async move { remote_resume(&rooms, &payload).await }
        });
        let (rooms, node) = (self.rooms.clone(), id.clone());
        serve_requests(c, wire::node_rooms(id), move |_| {
            let (rooms, node) = (rooms.clone(), node.clone());
            async move {
                wire::NodeRooms {
                    v: wire::VERSION,
                    node,
                    rooms: rooms.send(ListRooms).await.unwrap_or_default(),
                }
            }
        });
        let rooms = self.rooms.clone();
        serve_requests(c, wire::node_room_state(id), move |payload| {
            let rooms = rooms.clone();
            async move {
                match serde_json::from_slice::<wire::RoomStateRequest>(&payload) {
                    Ok(req) => rooms.send(StateOfRoom(req)).await.ok(),
                    Err(e) => {
                        tracing::warn!(error = %e, "bad room state request");
                        None
                    }
                }
            }
        });
        let rooms = self.rooms.clone();
        serve_in_order(
            c,
            wire::node_relay(id),
            move |payload| match serde_json::from_slice::<wire::RelayMessage>(&payload) {
                Ok(m) if m.v == wire::VERSION => rooms.do_send(RemoteRelayMessage(m)),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "bad relay message"),
            },
        );
        // In order: `do_send` keeps the order the commands were published in.
        let rooms = self.rooms.clone();
        serve_in_order(
            c,
            wire::node_peer(id),
            move |payload| match serde_json::from_slice::<wire::PeerCommand>(&payload) {
                Ok(cmd) => rooms.do_send(RemotePeerCommand(cmd)),
                Err(e) => tracing::warn!(error = %e, "bad peer command"),
            },
        );
        let draining = self.node.draining.clone();
        serve_in_order(c, wire::node_drain(id), move |payload| {
            if let Ok(d) = serde_json::from_slice::<wire::Drain>(&payload) {
                tracing::info!(draining = d.draining, "drain requested");
                draining.store(d.draining, Ordering::Relaxed);
            }
        });
    }
}

/// Answers every request on `subject` with `handler`'s JSON reply, each in its own task.
fn serve_requests<F, Fut, Rep>(c: &Cluster, subject: String, handler: F)
where
    F: Fn(bytes::Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Rep> + Send + 'static,
    Rep: Serialize + Send + 'static,
{
    let c = c.clone();
    let handler = Arc::new(handler);
    c.rt.clone().spawn(async move {
        let Ok(mut sub) = c.client.subscribe(subject.clone()).await else {
            return tracing::error!(%subject, "cannot subscribe");
        };
        while let Some(msg) = sub.next().await {
            let (client, handler) = (c.client.clone(), handler.clone());
            c.rt.spawn(async move {
                let reply = handler(msg.payload).await;
                if let (Some(to), Ok(body)) = (msg.reply, serde_json::to_vec(&reply)) {
                    let _ = client.publish(to, body.into()).await;
                }
            });
        }
    });
}

/// Hands every message on `subject` to `handler`, one after the other.
fn serve_in_order<F>(c: &Cluster, subject: String, mut handler: F)
where
    F: FnMut(bytes::Bytes) + Send + 'static,
{
    let client = c.client.clone();
    c.rt.spawn(async move {
        let Ok(mut sub) = client.subscribe(subject.clone()).await else {
            return tracing::error!(%subject, "cannot subscribe");
        };
        while let Some(msg) = sub.next().await {
            handler(msg.payload);
        }
    });
}

async fn remote_join(rooms: &Addr<RoomRegistry>, payload: &[u8]) -> RemoteJoinReply {
    match serde_json::from_slice::<RemoteJoin>(payload) {
        Ok(req) => {
            let join = JoinRoom {
                room: req.room,
                claims: req.claims,
                epoch: req.epoch,
                nodes: req.nodes,
            };
            joined_reply(rooms.send(join).await, "join refused by the room's node")
        }
        Err(e) => bad_request(e),
    }
}

async fn remote_resume(rooms: &Addr<RoomRegistry>, payload: &[u8]) -> RemoteJoinReply {
    match serde_json::from_slice::<wire::RemoteResume>(payload) {
        Ok(req) => {
            let resume = ResumeRoom {
                resume_token: req.resume_token,
            };
            joined_reply(rooms.send(resume).await, "resume token unknown or expired")
        }
        Err(e) => bad_request(e),
    }
}

fn bad_request(e: serde_json::Error) -> RemoteJoinReply {
    RemoteJoinReply::Error {
        code: protocol::ErrorCode::BadRequest,
        message: e.to_string(),
    }
}

/// What the registry answered to a join or resume, as the reply to the session's node.
fn joined_reply(
    res: Result<Result<JoinedInfo, protocol::ErrorCode>, MailboxError>,
    refused: &str,
) -> RemoteJoinReply {
    match res {
        Ok(Ok(info)) => RemoteJoinReply::Joined {
            participant: info.participant,
            resume_token: info.resume_token,
            ice_servers: info.ice_servers,
            participants: info.participants,
        },
        Ok(Err(code)) => RemoteJoinReply::Error {
            code,
            message: refused.into(),
        },
        Err(_) => RemoteJoinReply::Error {
            code: protocol::ErrorCode::Unavailable,
            message: "room node is shutting down".into(),
        },
    }
}

impl Actor for NodeAgent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.serve();
        self.heartbeat();
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, _| act.heartbeat());
        ctx.run_interval(PLACEABLE_CHECK, |act, _| act.check_placeable());
    }
}

impl Handler<Observe> for NodeAgent {
    type Result = MessageResult<Observe>;
    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        MessageResult(serde_json::json!({
            "connected": self.cluster.connected(),
            "draining": self.node.draining.load(Ordering::Relaxed),
            "placeable": self.node.placeable.load(Ordering::Relaxed),
            "heartbeats": self.heartbeats,
            "ws_url": self.ws_url,
        }))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CPU use of this process as a fraction of the machine, from `/proc/self/stat` deltas.
struct CpuProbe {
    last: Option<(Instant, u64)>,
    cores: f64,
}

impl CpuProbe {
    fn new() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        CpuProbe { last: None, cores }
    }

    /// utime + stime in clock ticks (100 per second on Linux).
    fn ticks() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }

    fn sample(&mut self) -> f64 {
        let Some(ticks) = Self::ticks() else {
            return 0.0;
        };
        let now = Instant::now();
        let cpu = match self.last {
            Some((t, prev)) => {
                let secs = now.duration_since(t).as_secs_f64().max(1e-3);
                ((ticks.saturating_sub(prev)) as f64 / 100.0 / secs / self.cores).clamp(0.0, 1.0)
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        cpu
    }
}
