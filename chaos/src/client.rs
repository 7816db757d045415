//! [`Client`]: one synthetic participant speaking PROTOCOL.md v1.

mod fault;
mod policy;
mod publish;
mod recover;

pub use fault::Cause;
pub use policy::RecoveryPolicy;
pub use recover::{
    mint_tokens, EndReason, Participant, ParticipantConfig, Recovery, Rejoin, Rejoined, Status,
    TokenSource,
};

use crate::error::{Error, Result};
use crate::events::{CloseInfo, EventLog, TaskSet};
use crate::peer::{to_rtc_candidate, Peer};
use crate::publisher::{LocalTrack, PublishOpts};
use crate::stats::{LatencyHistogram, TrackStats};
use crate::subscriber::{
    self, ReceivedCodec, StatsBook, SubscriberCmd, SubscriberCtx, TrackReaders,
};
use crate::ws::{next_incoming, Incoming, WsRead, WsWriter};
use futures::StreamExt;
use protocol::signal::{
    ClientMessage, IceServer, ParticipantInfo, ParticipantState, PcKind, ServerMessage,
};
use protocol::{NodeId, RoomId, UserId};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::RTCIceCandidateInit;

/// How a client behaves. Every wait it does is bounded by one of these.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Local IP the peer connections bind their UDP sockets to.
    pub bind_ip: IpAddr,
    /// The address the peer connections' host candidates name instead of `bind_ip`, as
    /// behind a NAT. Pointed at an address where nothing listens, the node cannot reach
    /// the client at any candidate it was told: the only path is the one the client's own
    /// connectivity checks open, which the node learns as a peer-reflexive candidate. That
    /// is how a client sits behind an impaired link of [`crate::geo::GeoNet`] (see
    /// [`crate::geo::GeoNet::place_client`]). `None` announces `bind_ip`.
    pub announce_ip: Option<IpAddr>,
    /// Bound on each request/response exchange (`join`, `publish`, connecting).
    pub request_timeout: Duration,
    /// Bound on ICE gathering before an SDP is sent with the candidates found so far.
    pub gather_timeout: Duration,
    /// Use the `ice_servers` of `joined` (TURN) in the peer connections.
    pub use_ice_servers: bool,
    /// Pace of ICE connectivity checks while connecting; `None` keeps webrtc-rs's default
    /// (200 ms), which a controlled client (our answers to `subscribe_offer`) waits out once
    /// before media flows. Browsers check unconnected pairs about every 50 ms.
    pub ice_check_interval: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            announce_ip: None,
            request_timeout: Duration::from_secs(10),
            gather_timeout: Duration::from_secs(5),
            use_ice_servers: true,
            ice_check_interval: None,
        }
    }
}

/// The node's `joined` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub room: RoomId,
    pub participant: ParticipantInfo,
    pub node: NodeId,
    pub resume_token: String,
    pub ice_servers: Vec<IceServer>,
    pub participants: Vec<ParticipantState>,
    /// Other nodes' WebSocket URLs, nearest first, for when this node is gone (may be empty).
    pub fallback_urls: Vec<String>,
}

/// Candidates from the node for the publisher connection, held until its answer is applied.
#[derive(Default)]
struct PublisherIce {
    peer: Option<Peer>,
    pending: Vec<RTCIceCandidateInit>,
}

/// The publisher connection, kept for the client's life: adding or removing tracks is a
/// new `publish` offer on it (PROTOCOL.md: "add or change published tracks").
struct Publisher {
    peer: Peer,
    /// Every track ever added, removed ones included (their counters stay readable).
    tracks: Vec<LocalTrack>,
}

/// A synthetic participant: a WebSocket to a node, a publisher and a subscriber peer
/// connection, and statistics of everything it receives.
///
/// Background tasks (socket reader, subscriber negotiation, RTP senders and readers) stop
/// and peer connections close on [`Client::leave`], [`Client::close_abruptly`] or drop.
pub struct Client {
    url: String,
    config: ClientConfig,
    writer: Arc<WsWriter>,
    events: Arc<EventLog>,
    tasks: Arc<TaskSet>,
    stats: Arc<StatsBook>,
    /// Started once `joined` arrives (the subscriber needs the ICE servers).
    subscriber_tx: Arc<Mutex<Option<mpsc::Sender<SubscriberCmd>>>>,
    /// Every peer connection this client built, closed on the way out.
    peers: Arc<Mutex<Vec<Peer>>>,
    publisher_ice: Arc<Mutex<PublisherIce>>,
    publisher: tokio::sync::Mutex<Option<Publisher>>,
    /// What the last successful `publish` asked for, for [`Client::reconnect`].
    published: Mutex<Option<PublishOpts>>,
    joined: Arc<Mutex<Option<Joined>>>,
}

/// Packets received from `publisher` over all its tracks.
fn packets_from(stats: &[TrackStats], publisher: &str) -> u64 {
    stats
        .iter()
        .filter(|t| t.publisher == publisher)
        .map(|t| t.received)
        .sum()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Opens the WebSocket with the default [`ClientConfig`].
    pub async fn connect(ws_url: &str) -> Result<Client> {
        Self::connect_with(ws_url, ClientConfig::default()).await
    }

    /// Opens the WebSocket (bounded by `request_timeout`) and starts reading from it.
    pub async fn connect_with(ws_url: &str, config: ClientConfig) -> Result<Client> {
        Self::connect_sharing(ws_url, config, Arc::new(StatsBook::default())).await
    }

    /// Like [`Client::connect_with`], counting what it receives into `stats`: the clients a
    /// [`Participant`] goes through share one book, so its statistics span its recoveries.
    async fn connect_sharing(
        ws_url: &str,
        config: ClientConfig,
        stats: Arc<StatsBook>,
    ) -> Result<Client> {
        let (ws, _response) = tokio::time::timeout(
            config.request_timeout,
            tokio_tungstenite::connect_async(ws_url),
        )
        .await
        .map_err(|_| Error::timeout(format!("websocket to {ws_url}"), config.request_timeout))??;
        let (sink, read) = ws.split();
        let writer = Arc::new(WsWriter::new(sink, config.request_timeout));
        let client = Client {
            url: ws_url.to_owned(),
            config,
            writer,
            events: Arc::new(EventLog::new()),
            tasks: Arc::new(TaskSet::default()),
            stats,
            subscriber_tx: Arc::new(Mutex::new(None)),
            peers: Arc::new(Mutex::new(Vec::new())),
            publisher_ice: Arc::new(Mutex::new(PublisherIce::default())),
            publisher: tokio::sync::Mutex::new(None),
            published: Mutex::new(None),
            joined: Arc::new(Mutex::new(None)),
        };
        client.tasks.spawn(client.reader(read));
        Ok(client)
    }

    /// The reader loop: logs every message and routes negotiation to the peer connections.
    fn reader(&self, mut read: WsRead) -> impl std::future::Future<Output = ()> + Send + 'static {
        let events = self.events.clone();
        let tasks = self.tasks.clone();
        let subscriber_tx = self.subscriber_tx.clone();
        let publisher_ice = self.publisher_ice.clone();
        let joined = self.joined.clone();
        let start_subscriber = self.subscriber_starter();
        async move {
            loop {
                let text = match next_incoming(&mut read).await {
                    Incoming::Text(t) => t,
                    Incoming::Binary(b) => {
                        events.push_unparsed(format!("binary frame of {} bytes", b.len()));
                        continue;
                    }
                    Incoming::Closed(info) => {
                        events.set_closed(info);
                        break;
                    }
                };
                let msg = match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(m) => m,
                    Err(_) => {
                        events.push_unparsed(text);
                        continue;
                    }
                };
                let to_subscriber = match &msg {
                    ServerMessage::Joined {
                        room,
                        participant,
                        node,
                        resume_token,
                        ice_servers,
                        participants,
                        fallback_urls,
                    } => {
                        let j = Joined {
                            room: room.clone(),
                            participant: participant.clone(),
                            node: node.clone(),
                            resume_token: resume_token.clone(),
                            ice_servers: ice_servers.clone(),
                            participants: participants.clone(),
                            fallback_urls: fallback_urls.clone(),
                        };
                        start_subscriber(&j, &tasks);
                        *lock(&joined) = Some(j);
                        None
                    }
                    ServerMessage::SubscribeOffer { sdp } => {
                        Some(SubscriberCmd::Offer(sdp.clone()))
                    }
                    ServerMessage::Candidate {
                        pc: PcKind::Subscriber,
                        candidate,
                    } => Some(SubscriberCmd::Candidate(candidate.clone())),
                    ServerMessage::Candidate {
                        pc: PcKind::Publisher,
                        candidate: Some(c),
                    } => {
                        publisher_candidate(&publisher_ice, &events, to_rtc_candidate(c.clone()))
                            .await;
                        None
                    }
                    _ => None,
                };
                if let Some(cmd) = to_subscriber {
                    let tx = lock(&subscriber_tx).clone();
                    match tx {
                        Some(tx) => {
                            if tx.send(cmd).await.is_err() {
                                events.push_local_error("subscriber task is gone".into());
                            }
                        }
                        None => {
                            events.push_local_error("subscriber negotiation before joined".into())
                        }
                    }
                }
                events.push(msg);
            }
        }
    }

    /// A closure that starts the subscriber task once, with the ICE servers of `joined`.
    fn subscriber_starter(&self) -> impl Fn(&Joined, &TaskSet) + Send + 'static {
        let config = self.config.clone();
        let slot_tx = self.subscriber_tx.clone();
        let writer = self.writer.clone();
        let events = self.events.clone();
        let readers = Arc::new(TrackReaders {
            stats: self.stats.clone(),
            tasks: self.tasks.clone(),
        });
        let peers = self.peers.clone();
        move |joined: &Joined, tasks: &TaskSet| {
            let mut tx_slot = lock(&slot_tx);
            if tx_slot.is_some() {
                return;
            }
            let (tx, rx) = mpsc::channel(256);
            *tx_slot = Some(tx);
            let ctx = SubscriberCtx {
                bind_ip: config.bind_ip,
                announce_ip: config.announce_ip,
                ice_servers: if config.use_ice_servers {
                    joined.ice_servers.clone()
                } else {
                    Vec::new()
                },
                gather_timeout: config.gather_timeout,
                ice_check_interval: config.ice_check_interval,
                writer: writer.clone(),
                events: events.clone(),
                readers: readers.clone(),
                peers: peers.clone(),
            };
            tasks.spawn(subscriber::run(ctx, rx));
        }
    }

    async fn request(
        &self,
        msg: &ClientMessage,
        what: &str,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        let from = self.events.len();
        self.writer.send(msg).await?;
        let (_, reply) = self
            .events
            .wait_for(from, self.config.request_timeout, what, pred)
            .await?;
        match reply {
            ServerMessage::Error { code, message } => Err(Error::Server { code, message }),
            other => Ok(other),
        }
    }

    async fn join_like(&self, msg: ClientMessage) -> Result<Joined> {
        self.request(&msg, "joined", |m| {
            matches!(
                m,
                ServerMessage::Joined { .. } | ServerMessage::Error { .. }
            )
        })
        .await?;
        self.joined()
            .ok_or_else(|| Error::Usage("joined was not recorded".into()))
    }

    /// Sends `join` and waits for `joined`; a node `error` comes back as [`Error::Server`].
    pub async fn join(&self, room: &str, token: &str) -> Result<Joined> {
        let room = RoomId::new(room).map_err(|e| Error::Invalid(format!("room: {e}")))?;
        self.join_like(ClientMessage::Join {
            room,
            token: token.to_owned(),
            region: None,
        })
        .await
    }

    /// Like [`Client::join`], saying the client's region (`join.region`).
    pub async fn join_in_region(&self, room: &str, token: &str, region: &str) -> Result<Joined> {
        let room = RoomId::new(room).map_err(|e| Error::Invalid(format!("room: {e}")))?;
        self.join_like(ClientMessage::Join {
            room,
            token: token.to_owned(),
            region: Some(region.to_owned()),
        })
        .await
    }

    /// Sends `resume` (first message after a reconnect) and waits for `joined`.
    pub async fn resume(&self, resume_token: &str) -> Result<Joined> {
        self.join_like(ClientMessage::Resume {
            resume_token: resume_token.to_owned(),
        })
        .await
    }

    /// Reconnects as PROTOCOL.md step 5 describes: drops this connection without `leave`,
    /// opens a new one to `url` (default: the same address), sends `resume` with the latest
    /// resume token, and publishes again what was published. The new client answers the
    /// node's next `subscribe_offer` on its own.
    pub async fn reconnect(&self, url: Option<&str>) -> Result<Client> {
        let token = self
            .joined()
            .map(|j| j.resume_token)
            .ok_or_else(|| Error::Usage("reconnect before joined".into()))?;
        let republish = lock(&self.published).clone();
        self.shutdown().await;
        let next = Client::connect_with(url.unwrap_or(&self.url), self.config.clone()).await?;
        next.resume(&token).await?;
        if let Some(opts) = republish {
            next.publish(opts).await?;
        }
        Ok(next)
    }

    /// The WebSocket address this client connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The latest `joined`, if any.
    pub fn joined(&self) -> Option<Joined> {
        lock(&self.joined).clone()
    }

    /// Our participant id, once joined.
    pub fn participant_id(&self) -> Option<UserId> {
        self.joined().map(|j| j.participant.id)
    }

    /// Per received track: counts, loss, duplicates and latency percentiles.
    pub fn track_stats(&self) -> Vec<TrackStats> {
        self.stats.snapshot()
    }

    /// Per received track: its codec and the payload types its packets carried.
    pub fn received_codecs(&self) -> Vec<ReceivedCodec> {
        self.stats.codecs()
    }

    /// Per received track (publisher, track id): a copy of its latency histogram. Two copies
    /// taken apart give that window's latencies with [`LatencyHistogram::since`], which the
    /// cumulative percentiles of [`Client::track_stats`] cannot.
    pub fn latency_histograms(&self) -> Vec<(String, String, LatencyHistogram)> {
        self.stats.latency_histograms()
    }

    /// Synthetic packets received from `publisher` over all its tracks (duplicates included).
    pub fn received_from(&self, publisher: &str) -> u64 {
        packets_from(&self.track_stats(), publisher)
    }

    /// Waits until at least `packets` synthetic packets from `publisher` have arrived.
    pub async fn wait_received_from(
        &self,
        publisher: &str,
        packets: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.received_from(publisher);
            if n >= packets {
                return Ok(n);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::timeout(
                    format!("{packets} packets from {publisher} (have {n})"),
                    timeout,
                ));
            }
            // Media arrives continuously; polling its counters is the wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every server message received so far, in order.
    pub fn messages(&self) -> Vec<ServerMessage> {
        self.events.messages()
    }

    /// Number of server messages received so far: a cursor for [`Client::wait_for_since`].
    pub fn message_count(&self) -> usize {
        self.events.len()
    }

    /// Text frames that were not valid server messages, and binary frames.
    pub fn unparsed_frames(&self) -> Vec<String> {
        self.events.unparsed()
    }

    /// Failures of background work (subscriber negotiation, ICE candidates).
    pub fn local_errors(&self) -> Vec<String> {
        self.events.local_errors()
    }

    /// The first message received so far or later that `pred` accepts.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.wait_for_since(0, timeout, pred).await
    }

    /// Like [`Client::wait_for`], ignoring the first `cursor` messages.
    pub async fn wait_for_since(
        &self,
        cursor: usize,
        timeout: Duration,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.events
            .wait_for(cursor, timeout, "a matching server message", pred)
            .await
            .map(|(_, m)| m)
    }

    /// The other participants and their tracks, as the node's messages describe them.
    pub fn participants(&self) -> Vec<ParticipantState> {
        self.events.view().participants()
    }

    /// Sends an application message to `to` in the same room.
    pub async fn send_message(&self, to: &str, data: serde_json::Value) -> Result<()> {
        let to = UserId::new(to).map_err(|e| Error::Invalid(format!("to: {e}")))?;
        self.writer.send(&ClientMessage::Message { to, data }).await
    }

    /// Sends `ping` and waits for `pong`.
    pub async fn ping(&self) -> Result<()> {
        self.request(&ClientMessage::Ping, "pong", |m| {
            matches!(m, ServerMessage::Pong | ServerMessage::Error { .. })
        })
        .await
        .map(drop)
    }

    /// Sends any protocol message as is.
    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.writer.send(msg).await
    }

    /// Sends a text frame as is (for malformed-input tests).
    pub async fn send_raw_text(&self, text: String) -> Result<()> {
        self.writer.send_frame(Message::text(text)).await
    }

    /// Sends a binary frame as is.
    pub async fn send_raw_binary(&self, data: Vec<u8>) -> Result<()> {
        self.writer.send_frame(Message::binary(data)).await
    }

    /// Whether the WebSocket has ended, by either side.
    pub fn is_closed(&self) -> bool {
        self.events.closed().is_some()
    }

    /// How the WebSocket ended, if it has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.events.closed()
    }

    /// The close code the node sent, if it closed with a close frame.
    pub fn close_code(&self) -> Option<u16> {
        self.close_info().and_then(|c| c.code())
    }

    /// Waits until the WebSocket ends.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<CloseInfo> {
        self.events.wait_closed(timeout).await
    }

    /// Sends `leave`, closes the WebSocket (waiting a bounded time for the node's close)
    /// and closes the peer connections.
    pub async fn leave(&self) -> Result<()> {
        let sent = self.writer.send(&ClientMessage::Leave).await;
        if sent.is_ok() {
            let _ = self.writer.close_gracefully().await;
            let _ = self.events.wait_closed(Duration::from_secs(2)).await;
        }
        self.shutdown().await;
        sent
    }

    /// Drops the WebSocket without `leave` or a close frame, and closes the peer connections,
    /// as a crashed client would disappear. (webrtc 0.21 has no way to silence a connection
    /// other than `close()`, which may send a DTLS close alert.)
    pub async fn close_abruptly(&self) {
        self.shutdown().await;
    }

    async fn shutdown(&self) {
        self.tasks.abort_all();
        self.writer.drop_sink().await;
        self.events.set_closed(CloseInfo::Local);
        lock(&self.subscriber_tx).take();
        for peer in self.take_peers() {
            peer.close().await;
        }
        self.publisher.lock().await.take();
    }

    fn take_peers(&self) -> Vec<Peer> {
        lock(&self.publisher_ice).peer = None;
        std::mem::take(&mut *lock(&self.peers))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.tasks.abort_all();
        let peers = self.take_peers();
        if peers.is_empty() {
            return;
        }
        // Closing is async; without it each connection's driver would run on forever.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for p in peers {
                    p.close().await;
                }
            });
        }
    }
}

async fn publisher_candidate(ice: &Mutex<PublisherIce>, events: &EventLog, c: RTCIceCandidateInit) {
    let peer = {
        let mut ice = lock(ice);
        match &ice.peer {
            Some(p) => p.clone(),
            None => {
                ice.pending.push(c);
                return;
            }
        }
    };
    if let Err(e) = peer.pc.add_ice_candidate(c).await {
        events.push_local_error(format!("publisher add_ice_candidate: {e}"));
    }
}
