//! `SignalingSession`: one actor per WebSocket. Parses and validates client frames, verifies
//! the join token, polices rate and size, and talks to its `Peer`. Nothing a client sends can
//! panic it or reach another session except through the router.

mod placement;
mod rate;

use placement::{join_anywhere, resume_anywhere, Joiner};
use rate::TokenBucket;

use super::peer::{self, Peer};
use super::room::{JoinedInfo, RELAY_USER_PREFIX};
use super::rooms::{JoinRoom, ResumeRefused, ResumeRoom, RoomRegistry};
use super::router::{Register, RouteUserMessage, Routed, Unregister};
use super::{lock, NodeCtx, NodeEntry};
use crate::cluster::ClusterError;
use crate::counters::{Kind, Live};
use actix::prelude::*;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use protocol::cluster::{
    self as wire, AllocateReply, AllocateRequest, JoinProof, PeerCmd, PeerCommand, RemoteJoin,
    RemoteJoinReply,
};
use protocol::signal::{parse_client_message, ClientMessage, ParseError, ServerMessage};
use protocol::signal::{IceServer, ParticipantInfo, ParticipantState};
use protocol::token::{self, ResumeClaims, TokenError};
use protocol::NodeId;
use protocol::{ErrorCode, RoomId, UserId, MAX_FRAME_BYTES};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Frames up to this size are read and refused with an error; larger ones close the socket.
pub const MAX_READ_FRAME: usize = 2 * 1024 * 1024;
/// Invalid messages tolerated before the socket is closed with 1008.
const MAX_BAD_MESSAGES: u32 = 20;
/// A socket must join or resume within this time.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// The node pings its client at least this often; a client that answers (any RFC 6455
/// client does) is never idle, and one that does not is closed after `ws_idle_timeout`.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// The shortest heartbeat, whatever the idle timeout.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Server messages queued for a slow client before it is disconnected.
const OUTBOX: usize = 1024;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

enum Out {
    Text(String),
    Ping,
    /// The answer to a client's Ping frame, with its payload.
    Pong(bytes::Bytes),
    Close(CloseReason),
}

/// Where a session's participant lives: on this node, or on the room's node elsewhere in
/// the cluster (its signaling then travels over NATS, its media goes straight there).
#[derive(Clone)]
enum PeerRef {
    Local(Addr<Peer>),
    Remote(NodeId),
}

/// A successful join or resume, whichever node hosts the room.
struct JoinOutcome {
    room: RoomId,
    /// The node hosting the participant and its media (the room's node).
    node: Option<NodeId>,
    participant: ParticipantInfo,
    peer: PeerRef,
    resume_token: String,
    ice_servers: Vec<IceServer>,
    participants: Vec<ParticipantState>,
}

impl JoinOutcome {
    fn local(info: JoinedInfo) -> Self {
        JoinOutcome {
            room: info.room,
            node: None,
            participant: info.participant,
            peer: PeerRef::Local(info.peer),
            resume_token: info.resume_token,
            ice_servers: info.ice_servers,
            participants: info.participants,
        }
    }
}

enum State {
    AwaitingJoin,
    Joining,
    Joined {
        user: UserId,
        room: RoomId,
        peer: PeerRef,
    },
    Closing,
}

pub struct SignalingSession {
    id: u64,
    node: NodeCtx,
    rooms: Addr<RoomRegistry>,
    out: mpsc::Sender<Out>,
    state: State,
    started: Instant,
    last_seen: Instant,
    bucket: TokenBucket,
    dropped: u64,
    last_rate_error: Option<Instant>,
    bad_messages: u32,
    /// Token checks (join, resume) that failed on this socket (`limits.auth_failures`).
    auth_failures: u32,
    _live: Live,
    /// Its place among the node's connections (`limits`).
    _admitted: crate::limits::ConnectionGuard,
}

impl SignalingSession {
    /// Starts a session on the current arbiter, writing through `ws`.
    pub fn start(
        entry: NodeEntry,
        ws: actix_ws::Session,
        stream: actix_ws::MessageStream,
        admitted: crate::limits::ConnectionGuard,
    ) -> Addr<Self> {
        let NodeEntry {
            shared: node,
            rooms,
        } = entry;
        let (tx, rx) = mpsc::channel(OUTBOX);
        actix::spawn(write_loop(ws, rx));
        let rate = node.config.msg_rate.max(1);
        let live = Live::new(&node.counters, Kind::Session);
        let stream = stream
            .max_frame_size(MAX_READ_FRAME)
            .aggregate_continuations()
            .max_continuation_size(MAX_READ_FRAME);
        SignalingSession::create(move |c| {
            c.add_stream(stream);
            SignalingSession {
                id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
                node,
                rooms,
                out: tx,
                state: State::AwaitingJoin,
                started: Instant::now(),
                last_seen: Instant::now(),
                bucket: TokenBucket::new(f64::from(rate), f64::from(rate) * 2.0),
                dropped: 0,
                last_rate_error: None,
                bad_messages: 0,
                auth_failures: 0,
                _live: live,
                _admitted: admitted,
            }
        })
    }

    fn send(&mut self, msg: &ServerMessage, ctx: &mut Context<Self>) {
        if self.out.try_send(Out::Text(msg.to_json())).is_err() {
            tracing::info!(session = self.id, "client too slow to read; closing");
            self.close(CloseCode::Policy, "outbox full", ctx);
        }
    }

    fn error(&mut self, code: ErrorCode, message: impl Into<String>, ctx: &mut Context<Self>) {
        self.send(&ServerMessage::error(code, message), ctx);
    }

    fn close(&mut self, code: CloseCode, why: &str, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing) {
            return;
        }
        self.detach_from_peer(false);
        self.state = State::Closing;
        let _ = self.out.try_send(Out::Close(CloseReason {
            code,
            description: Some(why.to_owned()),
        }));
        ctx.stop();
    }

    /// Hands a client command to the participant, on this node or the room's node.
    fn to_peer(&self, cmd: PeerCmd) {
        let State::Joined { user, room, peer } = &self.state else {
            return;
        };
        match peer {
            PeerRef::Local(addr) => peer::command(addr, self.id, cmd),
            PeerRef::Remote(node) => {
                if let Some(c) = &self.node.cluster {
                    let command = PeerCommand {
                        v: wire::VERSION,
                        room: room.clone(),
                        user: user.clone(),
                        cmd,
                    };
                    c.publish(wire::node_peer(node), &command);
                }
            }
        }
    }

    /// Tells the peer its socket is gone: a `leave` ends it, anything else starts the
    /// resume grace period.
    fn detach_from_peer(&mut self, leaving: bool) {
        if let State::Joined { user, .. } = &self.state {
            self.node.router.do_send(Unregister {
                user: user.clone(),
                session_id: self.id,
            });
            self.to_peer(PeerCmd::SessionGone { leaving });
        }
    }

    /// Ends the participant for good: `last` (if any) is the client's last message, then
    /// the socket closes normally (1000), with no resume grace (the peer ends now).
    fn end(&mut self, last: Option<ServerMessage>, why: &str, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing) {
            return;
        }
        if let Some(msg) = last {
            let _ = self.out.try_send(Out::Text(msg.to_json()));
        }
        self.detach_from_peer(true);
        self.state = State::Closing;
        let _ = self.out.try_send(Out::Close(CloseReason {
            code: CloseCode::Normal,
            description: Some(why.to_owned()),
        }));
        ctx.stop();
    }

    /// Asks the client to reconnect (PROTOCOL.md `reconnect`) and closes the socket: the
    /// participant waits out its grace period, and the client resumes it wherever it lands.
    fn reconnect(&mut self, reason: String, url: Option<String>, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing) {
            return;
        }
        metrics::counter!("signaling_reconnects_sent_total", "reason" => reason.clone())
            .increment(1);
        self.send(&ServerMessage::Reconnect { reason, url }, ctx);
        // 1012: service restart (RFC 6455 registry), the client is expected back.
        self.close(CloseCode::Restart, "reconnect", ctx);
    }

    /// A failed token check: its error, and the socket closes once it failed
    /// `limits.auth_failures` times (a client guessing tokens gets a few tries, not many).
    fn auth_failed(&mut self, code: ErrorCode, message: String, ctx: &mut Context<Self>) {
        metrics::counter!("signaling_auth_failures_total").increment(1);
        self.auth_failures += 1;
        self.error(code, message, ctx);
        if self.auth_failures >= self.node.config.limits.auth_failures {
            crate::limits::hit("auth_failures");
            self.close(CloseCode::Policy, "too many failed authentications", ctx);
        }
    }

    fn bad_message(&mut self, message: String, ctx: &mut Context<Self>) {
        self.bad_messages += 1;
        metrics::counter!("signaling_bad_messages_total").increment(1);
        self.error(ErrorCode::BadRequest, message, ctx);
        if self.bad_messages >= MAX_BAD_MESSAGES {
            self.close(CloseCode::Policy, "too many invalid messages", ctx);
        }
    }

    /// Token bucket per socket. A flood gets one `rate_limited` error a second, and a
    /// sustained one (ten seconds' worth of messages dropped) closes the socket with 1008.
    fn admit(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.bucket.take(Instant::now()) {
            return true;
        }
        self.dropped += 1;
        metrics::counter!("signaling_rate_limited_total").increment(1);
        let now = Instant::now();
        if self
            .last_rate_error
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_rate_error = Some(now);
            self.error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second",
                    self.node.config.msg_rate
                ),
                ctx,
            );
        }
        if self.dropped > u64::from(self.node.config.msg_rate) * 10 + 100 {
            self.close(CloseCode::Policy, "message flood", ctx);
        }
        false
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.admit(ctx) {
            return;
        }
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(ParseError::TooLarge(n)) => {
                return self.bad_message(
                    format!("frame of {n} bytes exceeds the {MAX_FRAME_BYTES} byte limit"),
                    ctx,
                )
            }
            Err(e) => return self.bad_message(e.to_string(), ctx),
        };
        // The signaling fuzzer's planted fault: a trickled candidate of over 1000 bytes.
        crate::planted_panic(
            "signaling",
            || matches!(&msg, ClientMessage::Candidate { candidate: Some(c), .. } if c.candidate.len() > 1000),
        );
        match (&self.state, msg) {
            (_, ClientMessage::Ping) => self.send(&ServerMessage::Pong, ctx),
            (
                State::AwaitingJoin,
                ClientMessage::Join {
                    room,
                    token,
                    region,
                },
            ) => self.join(room, token, region, ctx),
            (State::AwaitingJoin, ClientMessage::Resume { resume_token }) => {
                self.resume(resume_token, ctx)
            }
            (State::AwaitingJoin | State::Joining, _) => {
                self.bad_message("the first message must be `join` or `resume`".into(), ctx)
            }
            (State::Joined { .. }, ClientMessage::Join { .. } | ClientMessage::Resume { .. }) => {
                self.bad_message("already joined".into(), ctx)
            }
            (State::Joined { .. }, ClientMessage::Publish { sdp }) => {
                self.to_peer(PeerCmd::Publish { sdp })
            }
            (State::Joined { .. }, ClientMessage::SubscribeAnswer { sdp }) => {
                self.to_peer(PeerCmd::SubscribeAnswer { sdp })
            }
            (State::Joined { .. }, ClientMessage::Candidate { pc, candidate }) => {
                if let Some(candidate) = candidate {
                    self.to_peer(PeerCmd::Candidate { pc, candidate })
                }
            }
            (State::Joined { user, room, .. }, ClientMessage::Message { to, data }) => {
                let route = RouteUserMessage {
                    from: user.clone(),
                    room: room.clone(),
                    to: to.clone(),
                    data,
                };
                self.node
                    .router
                    .send(route)
                    .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok(Ok(())) => {}
                        Ok(Err(ErrorCode::RateLimited)) => {
                            let rate = act.node.config.limits.recipient_messages_per_sec;
                            let text = format!("`{to}` takes at most {rate} messages a second");
                            act.error(ErrorCode::RateLimited, text, ctx);
                        }
                        _ => act.error(
                            ErrorCode::NotFound,
                            format!("no user `{to}` in this room"),
                            ctx,
                        ),
                    })
                    .wait(ctx);
            }
            (State::Joined { .. }, ClientMessage::Leave) => self.end(None, "left", ctx),
            (State::Closing, _) => {}
        }
    }

    fn join(
        &mut self,
        room: RoomId,
        token: String,
        region: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let now = crate::unix_secs();
        let claims = match token::verify(self.node.config.api_secret.as_bytes(), &token, &room, now)
        {
            Ok(c) => c,
            Err(e) => {
                let code = match e {
                    TokenError::WrongRoom => ErrorCode::Forbidden,
                    TokenError::Invalid | TokenError::Expired | TokenError::NotYetValid => {
                        ErrorCode::Unauthorized
                    }
                };
                return self.auth_failed(code, e.to_string(), ctx);
            }
        };
        if claims.sub.as_str().starts_with(RELAY_USER_PREFIX) {
            let text = format!("user ids starting with `{RELAY_USER_PREFIX}` are reserved");
            return self.auth_failed(ErrorCode::Forbidden, text, ctx);
        }
        self.state = State::Joining;
        let user = claims.sub.clone();
        // Without `join.region` the client is served from this node's region.
        let region = region.or_else(|| Some(self.node.config.region.clone()));
        let register = Register {
            user: user.clone(),
            room: room.clone(),
            session_id: self.id,
            session: ctx.address().recipient(),
        };
        let room = room.clone();
        let router = self.node.router.clone();
        let (node, rooms) = (self.node.clone(), self.rooms.clone());
        // The route exists before the room knows the user, so nothing sent to the new
        // participant is lost; `wait` holds this session's mailbox until `joined` is out.
        async move {
            let rank = router.send(register).await.unwrap_or(0);
            let proof = JoinProof::Join(token);
            let suspects = Vec::new();
            let joiner = Joiner {
                claims,
                proof,
                rank,
            };
            join_anywhere(&node, &rooms, room.clone(), joiner, region, suspects).await
        }
        .into_actor(self)
        .map(move |res, act, ctx| act.finish_join(user, res, ctx))
        .wait(ctx);
    }

    fn resume(&mut self, resume_token: String, ctx: &mut Context<Self>) {
        let now = crate::unix_secs();
        let secret = self.node.config.api_secret.as_bytes();
        let claims = match token::verify_resume(secret, &resume_token, now) {
            Ok(c) => c,
            Err(e) => {
                // PROTOCOL.md: on `unauthorized` the client joins afresh with a new token.
                let text = format!("resume token: {e}");
                return self.auth_failed(ErrorCode::Unauthorized, text, ctx);
            }
        };
        self.state = State::Joining;
        let (node, rooms) = (self.node.clone(), self.rooms.clone());
        let me = ctx.address().recipient();
        let id = self.id;
        let user = claims.sub.clone();
        let register = Register {
            user: user.clone(),
            room: claims.room.clone(),
            session_id: id,
            session: me,
        };
        let router = self.node.router.clone();
        async move {
            let outcome =
                resume_anywhere(&node, &rooms, claims, resume_token, &router, register).await?;
            Ok(outcome)
        }
        .into_actor(self)
        .map(
            move |res: Result<(JoinOutcome, bool), ErrorCode>, act, ctx| match res {
                Ok((outcome, restored)) => {
                    let user = outcome.participant.id.clone();
                    act.finish_join(user, Ok(outcome), ctx);
                    if restored {
                        // Routed here now: the participant may start its connections afresh.
                        act.to_peer(PeerCmd::SessionAttached);
                    }
                }
                Err(code) => {
                    act.node.router.do_send(Unregister {
                        user: user.clone(),
                        session_id: act.id,
                    });
                    act.state = State::AwaitingJoin;
                    let text = match code {
                        ErrorCode::NotFound => "the participant is gone; join again",
                        ErrorCode::RoomFull => "room is full",
                        _ => "resume failed; try again",
                    };
                    act.error(code, text, ctx);
                }
            },
        )
        .wait(ctx);
    }

    fn finish_join(
        &mut self,
        user: UserId,
        res: Result<JoinOutcome, ErrorCode>,
        ctx: &mut Context<Self>,
    ) {
        let info = match res {
            Ok(info) => info,
            Err(code) => {
                self.node.router.do_send(Unregister {
                    user,
                    session_id: self.id,
                });
                self.state = State::AwaitingJoin;
                let text = match code {
                    ErrorCode::RoomFull => "room is full",
                    ErrorCode::Unavailable => "the cluster cannot host the room right now",
                    ErrorCode::Unauthorized => "the same user joined from another connection",
                    ErrorCode::Forbidden => "the room does not admit this user",
                    _ => "join failed",
                };
                return self.error(code, text, ctx);
            }
        };
        metrics::histogram!("join_latency_seconds").record(self.started.elapsed().as_secs_f64());
        let remote = matches!(info.peer, PeerRef::Remote(_));
        tracing::info!(session = self.id, %user, room = %info.room, remote, "joined");
        self.state = State::Joined {
            user,
            room: info.room.clone(),
            peer: info.peer,
        };
        let joined = ServerMessage::Joined {
            room: info.room,
            participant: info.participant,
            node: info
                .node
                .unwrap_or_else(|| self.node.config.node_id.clone()),
            resume_token: info.resume_token,
            ice_servers: info.ice_servers,
            participants: info.participants,
            fallback_urls: self.node.fallback_urls(),
        };
        self.send(&joined, ctx);
    }
}
impl Actor for SignalingSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Any frame from the client is a sign of life, its Pongs to these Pings included;
        // a half-open socket answers none and is closed once the idle timeout has passed.
        let idle = self.node.config.ws_idle_timeout;
        let heartbeat = (idle / 3).clamp(MIN_HEARTBEAT, HEARTBEAT);
        ctx.run_interval(heartbeat, move |act, ctx| {
            if act.last_seen.elapsed() > idle {
                tracing::info!(session = act.id, "idle timeout; closing");
                return act.close(CloseCode::Policy, "idle timeout", ctx);
            }
            if matches!(act.state, State::AwaitingJoin) && act.started.elapsed() > JOIN_DEADLINE {
                return act.close(CloseCode::Policy, "no join", ctx);
            }
            let _ = act.out.try_send(Out::Ping);
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.detach_from_peer(false);
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for SignalingSession {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, ctx),
            Ok(AggregatedMessage::Binary(_)) => {
                if self.admit(ctx) {
                    self.bad_message("binary frames are not part of the protocol".into(), ctx)
                }
            }
            // RFC 6455 5.5.2: a Ping gets a Pong with the same payload, behind what is queued.
            Ok(AggregatedMessage::Ping(payload)) => {
                if self.admit(ctx) && self.out.try_send(Out::Pong(payload)).is_err() {
                    tracing::info!(session = self.id, "client too slow to read; closing");
                    self.close(CloseCode::Policy, "outbox full", ctx);
                }
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => {
                self.detach_from_peer(false);
                self.state = State::Closing;
                ctx.stop();
            }
            Err(e) => {
                // The stream cannot be resynchronised after a protocol error.
                let (code, why) = if crate::ws_limit::is_overflow(&e) {
                    (CloseCode::Size, "frame too large")
                } else {
                    (CloseCode::Protocol, "websocket protocol error")
                };
                self.error(ErrorCode::BadRequest, why, ctx);
                self.close(code, why, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Routed> for SignalingSession {
    type Result = ();
    fn handle(&mut self, msg: Routed, ctx: &mut Context<Self>) {
        match msg {
            Routed::ToClient(ServerMessage::Reconnect { reason, url }) => {
                self.reconnect(reason, url, ctx)
            }
            // The application removed the participant or closed the room: out for good,
            // the client must not reconnect (PROTOCOL.md `removed`).
            Routed::ToClient(msg @ ServerMessage::Removed { .. }) => {
                metrics::counter!("signaling_removed_total").increment(1);
                self.end(Some(msg), "removed", ctx)
            }
            Routed::ToClient(msg) => {
                if !matches!(self.state, State::Closing) {
                    self.send(&msg, ctx);
                }
            }
            Routed::FromHost { msg, host } => {
                let attached = match &self.state {
                    State::Joined {
                        peer: PeerRef::Local(_),
                        ..
                    } => host == self.node.config.node_id,
                    State::Joined {
                        peer: PeerRef::Remote(n),
                        ..
                    } => *n == host,
                    _ => false,
                };
                if attached {
                    <Self as Handler<Routed>>::handle(self, Routed::ToClient(msg), ctx);
                }
            }
            Routed::NodeGone { node } => {
                if matches!(&self.state, State::Joined { peer: PeerRef::Remote(n), .. } if *n == node)
                {
                    tracing::info!(session = self.id, %node, "participant's node died; client reconnects");
                    self.reconnect("node_failed".into(), None, ctx);
                }
            }
            Routed::Leave { reason, url } => self.reconnect(reason.into(), url, ctx),
            Routed::Kick { reason } => {
                // A newer session of the user took the route. Its join replaces this
                // participant, or its resume attaches to it (the peer then ignores this
                // session's departure); if that resume fails, the participant has no socket
                // left and waits out its grace period like any other. A participant on
                // another node is told nothing: its departure there carries no session id.
                if let State::Joined {
                    peer: PeerRef::Local(peer),
                    ..
                } = &self.state
                {
                    peer.do_send(super::peer::SessionGone {
                        session_id: self.id,
                        leaving: false,
                        superseded: true,
                    });
                }
                self.state = State::Closing;
                let _ = self.out.try_send(Out::Text(
                    ServerMessage::error(ErrorCode::Unauthorized, reason).to_json(),
                ));
                let _ = self.out.try_send(Out::Close(CloseReason {
                    code: CloseCode::Policy,
                    description: Some(reason.into()),
                }));
                ctx.stop();
            }
        }
    }
}

/// Owns the socket's write half so that frames leave in order and a Close frame is the last
/// thing written (TOOLS.md: stopping right after writing Close loses the frame).
async fn write_loop(mut ws: actix_ws::Session, mut rx: mpsc::Receiver<Out>) {
    while let Some(out) = rx.recv().await {
        let ok = match out {
            Out::Text(t) => ws.text(t).await.is_ok(),
            Out::Ping => ws.ping(b"").await.is_ok(),
            Out::Pong(payload) => ws.pong(&payload).await.is_ok(),
            Out::Close(reason) => {
                let _ = ws.close(Some(reason)).await;
                return;
            }
        };
        if !ok {
            return;
        }
    }
    let _ = ws.close(None).await;
}
