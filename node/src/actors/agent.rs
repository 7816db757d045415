//! `NodeAgent`: the node's NATS face. Publishes a heartbeat with load every second and
//! serves what other processes ask of this node: joins for rooms hosted here, signaling of
//! participants whose socket is on another node, drain, and the room list.

use super::room::{JoinedInfo, Refused, REFUSED_BY_SETTINGS};
use super::rooms::{
    AdminRoom, Fence, JoinRoom, ListRooms, NodeGone, RemotePeerCommand, RemoteRelayMessage,
    ResumeRefused, ResumeRoom, RoomRegistry, StateOfRoom,
};
use super::router::{Broadcast, Routed};
use super::{NodeCtx, NodeEntry, Observe};
use crate::cluster::Cluster;
use actix::prelude::*;
use futures::StreamExt;
use protocol::cluster::{self as wire, NodeHeartbeat, NodeLoad, RemoteJoin, RemoteJoinReply};
use protocol::room_api::{AdminReply, RoomAdmin};
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
    /// Fenced for being cut off, until the cluster is heard again.
    fenced_for_cut: bool,
    cut_check_running: bool,
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
            fenced_for_cut: false,
            cut_check_running: false,
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
        // Its first `joined` must name other nodes to fall back on: it has listened to the
        // heartbeats for a whole interval (every other node has been heard) first.
        let listened = super::lock(&self.node.peers).listening_for(Instant::now());
        if listened.is_none_or(|d| d < HEARTBEAT_INTERVAL + PLACEABLE_CHECK) {
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
        let (rooms, secret) = (self.rooms.clone(), self.node.config.api_secret.clone());
        // Remote joins, resumes and room queries share `limits.cluster_requests` permits;
        // pings are never refused (they tell other nodes this one lives).
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.node.config.limits.cluster_requests.max(1),
        ));
        let busy = || RemoteJoinReply::Error {
            code: protocol::ErrorCode::Unavailable,
            message: "node busy: too many cluster requests at once".into(),
        };
        let admit = Admission::new(&permits, Some(busy()));
        serve_requests(c, wire::node_join(id), admit, move |payload| {
            let (rooms, secret) = (rooms.clone(), secret.clone());
            async move { remote_join(&rooms, secret.as_bytes(), &payload).await }
        });
        let (rooms, secret) = (self.rooms.clone(), self.node.config.api_secret.clone());
        let admit = Admission::new(&permits, Some(busy()));
        serve_requests(c, wire::node_resume(id), admit, move |payload| {
            let (rooms, secret) = (rooms.clone(), secret.clone());
            async move { remote_resume(&rooms, secret.as_bytes(), &payload).await }
        });
        let rooms = self.rooms.clone();
        let admin_busy = AdminReply::Error {
            code: protocol::ErrorCode::Unavailable,
            message: "node busy: too many cluster requests at once".into(),
        };
        let admit = Admission::new(&permits, Some(admin_busy));
        serve_requests(
            c,
            protocol::room_api::node_admin(id),
            admit,
            move |payload| {
                let rooms = rooms.clone();
                async move { room_admin(&rooms, &payload).await }
            },
        );
        let (rooms, node) = (self.rooms.clone(), id.clone());
        serve_requests(
            c,
            wire::node_rooms(id),
            Admission::new(&permits, None),
            move |_| {
                let (rooms, node) = (rooms.clone(), node.clone());
                async move {
                    wire::NodeRooms {
                        v: wire::VERSION,
                        node,
                        rooms: rooms.send(ListRooms).await.unwrap_or_default(),
                    }
                }
            },
        );
        let rooms = self.rooms.clone();
        let admit = Admission::new(&permits, None);
        serve_requests(c, wire::node_room_state(id), admit, move |payload| {
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
        let (me, draining) = (id.clone(), self.node.draining.clone());
        serve_requests(c, wire::node_ping(id), None, move |_| {
            let pong = wire::NodePong {
                v: wire::VERSION,
                node: me.clone(),
                draining: draining.load(Ordering::Relaxed),
            };
            async move { pong }
        });
        let peers = self.node.peers.clone();
        serve_in_order(c, wire::NODE_HEARTBEAT.to_owned(), move |payload| {
            if let Ok(hb) = serde_json::from_slice::<NodeHeartbeat>(&payload) {
                if hb.v == wire::VERSION {
                    super::lock(&peers).heartbeat(&hb, Instant::now());
                }
            }
        });
        let (node, rooms) = (self.node.clone(), self.rooms.clone());
        serve_in_order(
            c,
            wire::NODE_DOWN.to_owned(),
            move |payload| match serde_json::from_slice::<wire::NodeDown>(&payload) {
                Ok(down) if down.v == wire::VERSION => node_down(&node, &rooms, down),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "bad node down message"),
            },
        );
        let (node, rooms) = (self.node.clone(), self.rooms.clone());
        serve_in_order(c, wire::node_drain(id), move |payload| {
            match serde_json::from_slice::<wire::Drain>(&payload) {
                Ok(d) if d.v == wire::VERSION && d.draining => {
                    super::drain::start(&node, &rooms, "coordinator");
                }
                // A drain under way runs to its end: the process exits at the end of it.
                Ok(d) if d.v == wire::VERSION && !node.drain_started.load(Ordering::SeqCst) => {
                    node.draining.store(false, Ordering::Relaxed)
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "bad drain message"),
            }
        });
    }
}

impl NodeAgent {
    /// Cut off from the cluster (its own heartbeat not heard back) for longer than the
    /// coordinators' death timeout, this node has been declared dead and its rooms moved: it
    /// stops serving them, and every client here is sent to another node.
    fn check_cut_off(&mut self, ctx: &mut Context<Self>) {
        let silent = super::lock(&self.node.peers).cut_off_for(Instant::now());
        let cut = silent.is_some_and(|d| d >= self.node.config.node_timeout);
        if !cut {
            self.fenced_for_cut = false;
            return;
        }
        if self.fenced_for_cut || self.cut_check_running {
            return;
        }
        // Silence alone does not say who is cut off: with NATS down for everyone, nobody can
        // move rooms, and a node that stopped serving would only lose calls (the cluster
        // rides out a NATS outage). Another node that has listened for the whole timeout
        // without hearing this one says it is this node that is cut off: the coordinators,
        // listening the same way, have declared it dead.
        self.cut_check_running = true;
        let urls = self.node.fallback_urls();
        let me = self.node.config.node_id.clone();
        let silent_ms = silent.unwrap_or_default().as_millis() as u64;
        async move { a_peer_hears_nothing_from(&urls, &me).await }
            .into_actor(self)
            .map(move |others_ready, act, _| {
                act.cut_check_running = false;
                if !others_ready || act.fenced_for_cut {
                    return;
                }
                act.fenced_for_cut = true;
                tracing::warn!(
                    silent_ms,
                    "cut off from the cluster (own heartbeat not heard back, other nodes ready): fencing every room, moving clients away"
                );
                metrics::counter!("node_fenced_total", "cause" => "cut_off").increment(1);
                // The registry fences its rooms and only then sends every socket away: a
                // client that comes back at once finds the rooms gone, not restorable.
                act.rooms.do_send(Fence {
                    rooms: None,
                    reason: "fenced",
                    every_socket: true,
                });
            })
            .spawn(ctx);
    }
}

/// Whether one of the nodes at `ws_urls` says (`GET /cluster/hears/<me>`) that it has
/// listened to NATS for the node timeout without hearing `me`. Each is asked for at most
/// half a second.
async fn a_peer_hears_nothing_from(ws_urls: &[String], me: &protocol::NodeId) -> bool {
    for url in ws_urls {
        let Some(hostport) = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
        else {
            continue;
        };
        let path = format!("/cluster/hears/{}", wire::token(me.as_str()));
        if let Some(body) = http_get(hostport.to_owned(), path, Duration::from_millis(500)).await {
            if body.contains("\"silent\":true") {
                return true;
            }
        }
    }
    false
}

/// The body (at most 64 KiB) of `GET http://<hostport><path>` answered within `timeout`,
/// whatever its status; `None` when there is no answer in time.
async fn http_get(hostport: String, path: String, timeout: Duration) -> Option<String> {
    // ureq is blocking: the exchange runs on tokio's blocking pool, bounded by its timeout.
    let ask = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .get(format!("http://{hostport}{path}"))
            .call()?
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
    });
    ask.await.ok()?.ok()
}

/// How often the NATS connection's state is checked for a cut.
const CUT_CHECK: Duration = Duration::from_millis(100);

/// A coordinator found a node dead. About another node: sessions whose participant lived
/// there tell their clients to reconnect, and rooms stop waiting for it. About this node
/// (it was stopped or cut off, and is back): its rooms have moved; it stops serving them.
fn node_down(node: &NodeCtx, rooms: &Addr<RoomRegistry>, down: wire::NodeDown) {
    if down.node == node.config.node_id {
        tracing::warn!(coordinator = %down.coordinator, cause = ?down.cause, "a coordinator declared this node dead; fencing its rooms");
        return rooms.do_send(Fence {
            rooms: None,
            reason: "fenced",
            every_socket: false,
        });
    }
    let first = {
        let mut peers = super::lock(&node.peers);
        let first = !peers.is_dead(&down.node);
        peers.dead(&down.node);
        first
    };
    if first {
        tracing::info!(node = %down.node, coordinator = %down.coordinator, cause = ?down.cause, "node died");
        metrics::counter!("cluster_node_deaths_seen_total").increment(1);
    }
    // The client's socket is fine (it is here): it reconnects here, and this node
    // restores its participant elsewhere.
    node.router.do_send(Broadcast(Routed::NodeGone {
        node: down.node.clone(),
    }));
    rooms.do_send(NodeGone(down.node));
}

/// Answers every request on `subject` with `handler`'s JSON reply, each in its own task.
/// How many requests may be served at once, and what the others are answered (`None`: no
/// answer, the requester times out).
struct Admission<Rep> {
    permits: Arc<tokio::sync::Semaphore>,
    busy: Option<Rep>,
}

impl<Rep> Admission<Rep> {
    fn new(permits: &Arc<tokio::sync::Semaphore>, busy: Option<Rep>) -> Option<Self> {
        Some(Admission {
            permits: permits.clone(),
            busy,
        })
    }
}

fn serve_requests<F, Fut, Rep>(
    c: &Cluster,
    subject: String,
    admission: Option<Admission<Rep>>,
    handler: F,
) where
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
            let permit = match &admission {
                None => None,
                Some(a) => match a.permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        crate::limits::hit("cluster_requests");
                        let busy = a.busy.as_ref().and_then(|b| serde_json::to_vec(b).ok());
                        if let (Some(to), Some(body)) = (msg.reply, busy) {
                            let _ = c.client.publish(to, body.into()).await;
                        }
                        continue;
                    }
                },
            };
            let (client, handler) = (c.client.clone(), handler.clone());
            c.rt.spawn(async move {
                let _permit = permit;
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

/// A client whose socket is on another node joins a room hosted here. Its token is checked
/// again here, as on the socket's node: a cluster message is no proof of anything.
async fn remote_join(rooms: &Addr<RoomRegistry>, secret: &[u8], payload: &[u8]) -> RemoteJoinReply {
    let req = match serde_json::from_slice::<RemoteJoin>(payload) {
        Ok(req) => req,
        Err(e) => return bad_request(e),
    };
    let claims = match req.proof.verify(secret, &req.room, crate::unix_secs()) {
        Ok(claims) => claims,
        Err(e) => {
            metrics::counter!("cluster_forged_requests_total", "subject" => "join").increment(1);
            tracing::warn!(room = %req.room, from = %req.session_node, error = %e, "remote join refused");
            let code = match e {
                protocol::token::TokenError::WrongRoom => protocol::ErrorCode::Forbidden,
                _ => protocol::ErrorCode::Unauthorized,
            };
            return RemoteJoinReply::Error {
                code,
                message: e.to_string(),
            };
        }
    };
    let join = JoinRoom {
        room: req.room,
        claims,
        epoch: req.epoch,
        nodes: req.nodes,
        rejoin: matches!(req.proof, wire::JoinProof::Resume(_)),
        rank: 0,
        settings: req.settings,
    };
    joined_reply(rooms.send(join).await, "join refused by the room's node")
}

/// A coordinator's room API operation on this node's participants. A payload that does
/// not parse is answered `bad_request`.
async fn room_admin(rooms: &Addr<RoomRegistry>, payload: &[u8]) -> AdminReply {
    let req = match serde_json::from_slice::<RoomAdmin>(payload) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(error = %e, "bad room admin request");
            return AdminReply::Error {
                code: protocol::ErrorCode::BadRequest,
                message: e.to_string(),
            };
        }
    };
    rooms
        .send(AdminRoom(req))
        .await
        .unwrap_or_else(|_| AdminReply::Error {
            code: protocol::ErrorCode::Unavailable,
            message: "node is shutting down".into(),
        })
}

/// A participant of a room hosted here resumes through another node. The token is checked
/// again here: a cluster message is no proof of anything.
async fn remote_resume(
    rooms: &Addr<RoomRegistry>,
    secret: &[u8],
    payload: &[u8],
) -> RemoteJoinReply {
    let req = match serde_json::from_slice::<wire::RemoteResume>(payload) {
        Ok(req) => req,
        Err(e) => return bad_request(e),
    };
    let claims = match protocol::token::verify_resume(secret, &req.resume_token, crate::unix_secs())
    {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("cluster_forged_requests_total", "subject" => "resume").increment(1);
            tracing::warn!(from = %req.session_node, error = %e, "remote resume refused");
            return RemoteJoinReply::Error {
                code: protocol::ErrorCode::Unauthorized,
                message: e.to_string(),
            };
        }
    };
    let resume = ResumeRoom {
        claims,
        resume_token: req.resume_token,
    };
    match rooms.send(resume).await {
        Ok(Err(ResumeRefused::Moved)) | Err(_) => RemoteJoinReply::Moved,
        Ok(Err(ResumeRefused::Failed(code))) => {
            joined_reply(Ok(Err(code.into())), "participant gone")
        }
        Ok(Ok(info)) => joined_reply(Ok(Ok(info)), ""),
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
    res: Result<Result<JoinedInfo, Refused>, MailboxError>,
    refused: &str,
) -> RemoteJoinReply {
    match res {
        Ok(Ok(info)) => RemoteJoinReply::Joined {
            participant: info.participant,
            resume_token: info.resume_token,
            ice_servers: info.ice_servers,
            participants: info.participants,
        },
        Ok(Err(Refused { code, settled })) => RemoteJoinReply::Error {
            code,
            message: if settled {
                REFUSED_BY_SETTINGS
            } else {
                refused
            }
            .into(),
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
        ctx.run_interval(CUT_CHECK, |act, ctx| act.check_cut_off(ctx));
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
