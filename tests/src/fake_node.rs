//! A stand-in for a media node on the cluster protocol: a plain NATS client that heartbeats
//! every 500 ms, answers `node.<id>.rooms` with what the test sets, and records the `Drain`
//! messages it gets. Coordinator tests use it where a real node would add nothing.

use futures::StreamExt;
use protocol::cluster::{self, Drain, NodeHeartbeat, NodeLoad, NodeRooms, RoomMembers, VERSION};
use protocol::NodeId;
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
}

pub struct FakeNode {
    id: NodeId,
    client: async_nats::Client,
    state: Arc<Mutex<FakeState>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Reconnect quickly after a NATS restart (async-nats' default backs off to 4 s).
pub fn quick_reconnect(attempts: usize) -> Duration {
    Duration::from_millis(50 * attempts.min(5) as u64)
}

/// A NATS client for tests: reconnects within a quarter second.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .reconnect_delay_callback(quick_reconnect)
        .connect(url)
        .await?)
}

impl FakeNode {
    /// Connects and starts heartbeating at once. Equal capacity for every fake: 1000 rooms,
    /// 2000 peers, 1 Gbit/s, idle.
    pub async fn start(nats_url: &str, id: &str, region: &str) -> anyhow::Result<FakeNode> {
        let id = NodeId::new(id)?;
        let client = connect(nats_url).await?;
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
        }));
        let mut rooms_sub = client.subscribe(cluster::node_rooms(&id)).await?;
        let mut drain_sub = client.subscribe(cluster::node_drain(&id)).await?;
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
        Ok(FakeNode {
            id,
            client,
            state,
            tasks: vec![heartbeat, rooms, drains],
        })
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
