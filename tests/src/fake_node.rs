//! A stand-in for a media node on the cluster protocol: a plain NATS client that heartbeats
//! every 500 ms, answers `node.<id>.rooms` with what the test sets and `node.<id>.ping` while
//! it is "running", records the `Drain` messages it gets, and asks `coord.allocate`, says it
//! left a room on `cluster.room.closed` and suspects other nodes on `cluster.node.suspect`
//! when told to. [`FakeNode::kill`] drops its NATS connection, as a `kill -9` does.
//! Coordinator tests use it where a real node would add nothing.

use futures::StreamExt;
use protocol::cluster::{
    self, AllocateReply, AllocateRequest, Drain, NodeHeartbeat, NodeLoad, NodePong, NodeRooms,
    NodeSuspect, RoomAssignment, RoomClosed, RoomMembers, NODE_SUSPECT, VERSION,
};
use protocol::{NodeId, RoomId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;

pub const FAKE_HEARTBEAT: Duration = Duration::from_millis(500);

/// What the fake reports; tests change it through [`FakeNode`]'s setters.
#[derive(Debug, Clone)]
pub struct FakeState {
    pub region: String,
    pub load: NodeLoad,
    pub draining: bool,
    /// Heartbeats go out only while this is true (false = the node "died").
    pub beating: bool,
    pub rooms: Vec<RoomMembers>,
    /// `draining` of every `Drain` received, in order.
    pub drains: Vec<bool>,
    /// Pings are answered only while this is true (false = a stopped process, which keeps
    /// its connection and so its subscriptions).
    pub answering: bool,
    /// Pings received, answered or not.
    pub pings: u32,
}

pub struct FakeNode {
    id: NodeId,
    client: async_nats::Client,
    state: Arc<Mutex<FakeState>>,
    tasks: Vec<JoinHandle<()>>,
    /// The connection closed for good (after [`FakeNode::kill`]).
    closed: Arc<AtomicBool>,
}

/// Reconnect quickly after a NATS restart (async-nats' default backs off to 4 s).
pub fn quick_reconnect(attempts: usize) -> Duration {
    Duration::from_millis(50 * attempts.min(5) as u64)
}

/// A NATS client for tests: reconnects within a quarter second.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    crate::nats::connect(url).await
}

/// One `coord.allocate` request with a 2 s timeout: the room's entry and the node that
/// serves the client, or why not.
pub async fn allocate(
    client: &async_nats::Client,
    request: &AllocateRequest,
) -> Result<(RoomAssignment, NodeId), String> {
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let req = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(Duration::from_secs(2)));
    let msg = client
        .send_request(cluster::ALLOCATE, req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    match serde_json::from_slice::<AllocateReply>(&msg.payload) {
        Ok(AllocateReply::Assigned {
            assignment, serve, ..
        }) => Ok((assignment, serve)),
        Ok(AllocateReply::Error { code, message, .. }) => Err(format!("{code:?}: {message}")),
        Err(e) => Err(format!("bad reply: {e}")),
    }
}

impl FakeNode {
    /// Connects and starts heartbeating at once. Equal capacity for every fake: 1000 rooms,
    /// 2000 peers, 1 Gbit/s, idle.
    pub async fn start(nats_url: &str, id: &str, region: &str) -> anyhow::Result<FakeNode> {
        let id = NodeId::new(id)?;
        let closed = Arc::new(AtomicBool::new(false));
        let client = {
            let closed = closed.clone();
            chaos::sandbox::nats_options(nats_url)
                .reconnect_delay_callback(quick_reconnect)
                .event_callback(move |event| {
                    let closed = closed.clone();
                    async move {
                        if matches!(event, async_nats::Event::Closed) {
                            closed.store(true, Ordering::SeqCst);
                        }
                    }
                })
                .connect(nats_url.split(',').map(str::trim).collect::<Vec<_>>())
                .await?
        };
        let state = Arc::new(Mutex::new(FakeState {
            region: region.into(),
            load: NodeLoad {
                cpu: 0.01,
                max_rooms: 1000,
                max_peers: 2000,
                max_egress_bps: 1_000_000_000,
                ..NodeLoad::default()
            },
            draining: false,
            beating: true,
            rooms: Vec::new(),
            drains: Vec::new(),
            answering: true,
            pings: 0,
        }));
        let mut rooms_sub = client.subscribe(cluster::node_rooms(&id)).await?;
        let mut drain_sub = client.subscribe(cluster::node_drain(&id)).await?;
        let mut ping_sub = client.subscribe(cluster::node_ping(&id)).await?;
        client.flush().await?;
        let heartbeat = {
            let (client, state, id) = (client.clone(), state.clone(), id.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(FAKE_HEARTBEAT);
                loop {
                    tick.tick().await;
                    let hb = {
                        let s = lock(&state);
                        if !s.beating {
                            continue;
                        }
                        NodeHeartbeat {
                            v: VERSION,
                            node: id.clone(),
                            region: s.region.clone(),
                            ws_url: format!("ws://fake/{id}/ws"),
                            draining: s.draining,
                            load: s.load.clone(),
                            sent_ms: 0,
                        }
                    };
                    if client.connection_state() != async_nats::connection::State::Connected {
                        continue;
                    }
                    let body = serde_json::to_vec(&hb).expect("heartbeat encodes");
                    let _ = client.publish(cluster::NODE_HEARTBEAT, body.into()).await;
                }
            })
        };
        let rooms = {
            let (client, state, id) = (client.clone(), state.clone(), id.clone());
            tokio::spawn(async move {
                while let Some(msg) = rooms_sub.next().await {
                    let Some(reply) = msg.reply else { continue };
                    let answer = NodeRooms {
                        v: VERSION,
                        node: id.clone(),
                        rooms: lock(&state).rooms.clone(),
                    };
                    let body = serde_json::to_vec(&answer).expect("rooms encode");
                    let _ = client.publish(reply, body.into()).await;
                }
            })
        };
        let drains = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Some(msg) = drain_sub.next().await {
                    if let Ok(d) = serde_json::from_slice::<Drain>(&msg.payload) {
                        lock(&state).drains.push(d.draining);
                    }
                }
            })
        };
        let pings = {
            let (client, state, id) = (client.clone(), state.clone(), id.clone());
            tokio::spawn(async move {
                while let Some(msg) = ping_sub.next().await {
                    let pong = {
                        let mut s = lock(&state);
                        s.pings += 1;
                        s.answering.then(|| NodePong {
                            v: VERSION,
                            node: id.clone(),
                            draining: s.draining,
                        })
                    };
                    if let (Some(reply), Some(pong)) = (msg.reply, pong) {
                        let body = serde_json::to_vec(&pong).expect("pong encodes");
                        let _ = client.publish(reply, body.into()).await;
                    }
                }
            })
        };
        Ok(FakeNode {
            id,
            client,
            state,
            tasks: vec![heartbeat, rooms, drains, pings],
            closed,
        })
    }

    /// Dies as a `kill -9` would: no more heartbeats or answers, and its NATS connection
    /// closes, so a request to it finds no responders. Returns once the server has dropped
    /// its subscriptions (the connection closes only after they are flushed and answered).
    pub async fn kill(&self) -> anyhow::Result<()> {
        for t in &self.tasks {
            t.abort();
        }
        self.client.drain().await?;
        let closed = &self.closed;
        crate::wait_until(
            Duration::from_secs(5),
            "the fake node's connection closed",
            || async {
                if closed.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("still draining".into())
                }
            },
        )
        .await
    }

    pub fn id(&self) -> &NodeId {
        &self.id
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn state(&self) -> FakeState {
        lock(&self.state).clone()
    }

    /// Stops (false) or resumes (true) heartbeats: a node that died, or came back.
    pub fn set_beating(&self, beating: bool) {
        lock(&self.state).beating = beating;
    }

    /// What the node's own heartbeat says about draining.
    pub fn set_draining(&self, draining: bool) {
        lock(&self.state).draining = draining;
    }

    pub fn set_rooms(&self, rooms: Vec<RoomMembers>) {
        lock(&self.state).rooms = rooms;
    }

    pub fn set_load(&self, load: NodeLoad) {
        lock(&self.state).load = load;
    }

    /// Answers pings (true) or lets them time out (false), as a stopped process does.
    pub fn set_answering(&self, answering: bool) {
        lock(&self.state).answering = answering;
    }

    /// The allocation request this node sends for a client of `region` joining `room`.
    pub fn allocate_request(&self, room: &str, region: &str) -> anyhow::Result<AllocateRequest> {
        Ok(AllocateRequest {
            v: VERSION,
            room: RoomId::new(room)?,
            region: Some(region.into()),
            from: self.id.clone(),
            forwarded: false,
            lookup: false,
            full: Vec::new(),
            suspects: Vec::new(),
            settings: None,
        })
    }

    /// Asks where a client of `region` joins `room`, as a node does on a join; `full` names
    /// the room's nodes that refused the client. Returns the entry and the serving node.
    pub async fn join(
        &self,
        room: &str,
        region: &str,
        full: &[&NodeId],
    ) -> anyhow::Result<(RoomAssignment, NodeId)> {
        let mut request = self.allocate_request(room, region)?;
        request.full = full.iter().map(|n| (*n).clone()).collect();
        allocate(&self.client, &request)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// Says `node` looks gone to this node, on `cluster.node.suspect`.
    pub async fn suspect(&self, node: &NodeId, reason: &str) -> anyhow::Result<()> {
        let suspicion = NodeSuspect {
            v: VERSION,
            node: node.clone(),
            from: self.id.to_string(),
            reason: reason.into(),
        };
        self.client
            .publish(NODE_SUSPECT, serde_json::to_vec(&suspicion)?.into())
            .await?;
        self.client.flush().await?;
        Ok(())
    }

    /// Says this node left `room` (its last participant left), as a node does: a
    /// [`RoomClosed`] with the epoch it knows, on `cluster.room.closed`.
    pub async fn leave_room(&self, room: &RoomId, epoch: u64) -> anyhow::Result<()> {
        let left = RoomClosed {
            v: VERSION,
            room: room.clone(),
            node: self.id.clone(),
            epoch,
            draining: false,
        };
        self.client
            .publish(cluster::ROOM_CLOSED, serde_json::to_vec(&left)?.into())
            .await?;
        self.client.flush().await?;
        Ok(())
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(state: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}
