//! One media thread: it owns its peer connections (sans-IO `rtc` cores), feeds them the
//! datagrams routed to it, runs their timers, forwards RTP between them and sends what they
//! write. No task, lock or channel per connection: a worker has two bounded queues (control
//! calls, and datagrams/forwarded packets) and a timer heap.
//!
//! All of a room's connections live on one worker (the engine picks it by room), so a
//! publisher's packet reaches its subscribers in the same loop iteration; a subscriber on
//! another worker (not the case today) gets it through that worker's queue.

use super::demux::{Route, Ufrag, MAX_CONN_ID};
use super::setup::{SetupClock, CLIENT_SETUP_TIMEOUT, RELAY_SETUP_TIMEOUT};
use super::{EngineShared, Outbox};
use crate::actors::transport::TransportEvent;
use crate::counters::Counters;
use crate::media::forward::{DownTrack, Inbound, TrackSource};
use crate::media::history::SendLog;
use crate::media::interceptor;
use crate::media::quality::{self, ConnQuality};
use actix::Recipient;
use crossbeam_channel::{Receiver, Select};
use protocol::signal::{PcKind, TrackKind};
use protocol::{NodeId, TrackId, UserId};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::handle::{Call, Data, EngineError, WorkerHandle};

/// What a new connection is for.
pub struct ConnSpec {
    pub kind: PcKind,
    pub owner: UserId,
    /// The room the connection serves (its quality is shown under it).
    pub room: String,
    /// Both ends are nodes: faster ICE pacing and failure detection.
    pub relay: bool,
    /// The receiving end of a relay link: tracks keep the ids their msid names.
    pub relayed_from: Option<NodeId>,
    pub events: Recipient<TransportEvent>,
}

pub struct Conn {
    pub pc: RTCPeerConnection,
    spec: ConnSpec,
    /// Published tracks arriving on this connection, by the track id `rtc` gives them.
    inbound: HashMap<String, Inbound>,
    /// Tracks this connection sends (a subscriber), by local track id: whose keyframe
    /// requests go where.
    pub outbound: HashMap<String, Arc<TrackSource>>,
    /// What it sent on each of its outgoing streams, by SSRC: NACKs are answered and sender
    /// reports written from it (the node's media skips `rtc`'s interceptors).
    sent: rustc_hash::FxHashMap<u32, SendLog>,
    /// What the remote's receiver reports say about the streams it is sent.
    pub quality: ConnQuality,
    deadline: Option<Instant>,
    /// Something happened that may raise events, reads, writes or a new timer.
    dirty: bool,
    /// UDP addresses this connection sent to, as told to the receiver (a few at most).
    remotes: Vec<SocketAddr>,
    /// A relay link's receiving end has a socket of its own (see `media::ports`).
    own_socket: Option<super::OwnSocket>,
    /// Its setup's deadline (`setup`).
    setup: SetupClock,
}

/// Addresses one connection may own at once (a client's candidates that it checks).
const MAX_REMOTES: usize = 16;

/// A STUN error response (class bits 0b11): sent to whoever asked, owned by nobody.
fn is_stun_error(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 4 && u16::from_be_bytes([data[0], data[1]]) & 0x0110 == 0x0110
}

const RELAY_ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
const RELAY_ICE_DISCONNECTED: Duration = Duration::from_secs(2);
const RELAY_ICE_FAILED: Duration = Duration::from_secs(5);
const RELAY_ICE_KEEPALIVE: Duration = Duration::from_millis(500);
/// Datagrams and calls handled before the worker drives its connections and sends.
const BATCH: usize = 256;
/// How often every sending stream gets a sender report (what `rtc`'s interceptor does).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

pub struct Worker {
    pub index: u8,
    shared: Arc<EngineShared>,
    counters: Arc<Counters>,
    /// By connection id (a fast hash: two lookups per forwarded packet and subscriber).
    conns: rustc_hash::FxHashMap<u64, Conn>,
    next_id: u64,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    dirty: Vec<u64>,
    outbox: Outbox,
    peers: Arc<[WorkerHandle]>,
    reads: Vec<TaggedRTCMessage>,
    next_reports: Instant,
}

impl Worker {
    pub(super) fn new(
        index: u8,
        shared: Arc<EngineShared>,
        counters: Arc<Counters>,
        peers: Arc<[WorkerHandle]>,
    ) -> Self {
        let outbox = Outbox::new(shared.clone());
        Worker {
            index,
            shared,
            counters,
            conns: rustc_hash::FxHashMap::default(),
            next_id: 1,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            outbox,
            peers,
            reads: Vec::new(),
            next_reports: Instant::now() + REPORT_INTERVAL,
        }
    }

    /// Runs until the engine is dropped (`stop`) or its queues close.
    pub(super) fn run(
        mut self,
        ctl: Receiver<Call>,
        data: Receiver<Data>,
        stop_flag: &std::sync::atomic::AtomicBool,
    ) {
        let mut sel = Select::new();
        let ctl_i = sel.recv(&ctl);
        let data_i = sel.recv(&data);
        while !stop_flag.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(500))
                .min(Duration::from_millis(500));
            let ready = sel.ready_timeout(wait);
            let mut stop = false;
            if let Ok(i) = ready {
                if i == ctl_i || i == data_i {
                    // Drain a bounded batch of both queues, control first.
                    for _ in 0..BATCH {
                        match ctl.try_recv() {
                            Ok(call) => call(&mut self),
                            Err(crossbeam_channel::TryRecvError::Empty) => break,
                            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                                stop = true;
                                break;
                            }
                        }
                    }
                    for _ in 0..BATCH {
                        match data.try_recv() {
                            Ok(d) => self.on_data(d),
                            Err(crossbeam_channel::TryRecvError::Empty) => break,
                            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                                stop = true;
                                break;
                            }
                        }
                    }
                }
            }
            let now = Instant::now();
            self.run_timers(now);
            if now >= self.next_reports {
                self.next_reports = now + REPORT_INTERVAL;
                self.send_reports(now);
                self.fail_stuck_setups(now);
                self.sample_quality(now);
            }
            self.drive_dirty();
            self.outbox.flush(&self.counters);
            if stop {
                break;
            }
        }
        for (_, conn) in self.conns.drain() {
            let mut conn = conn;
            let _ = conn.pc.close();
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.deadline != Some(t) {
                continue; // superseded
            }
            conn.deadline = None;
            if let Err(e) = conn.pc.handle_timeout(now) {
                tracing::debug!(conn = id, error = %e, "timeout handling failed");
            }
            mark(&mut self.dirty, id, conn);
        }
        // Superseded entries pile up when deadlines move; rebuild when they dominate.
        if self.timers.len() > 4 * self.conns.len() + 1024 {
            self.timers = self
                .conns
                .iter()
                .filter_map(|(id, c)| c.deadline.map(|d| Reverse((d, *id))))
                .collect();
        }
    }

    fn on_data(&mut self, d: Data) {
        match d {
            Data::Datagram {
                conn,
                from,
                local,
                proto,
                bytes,
                at,
            } => {
                let local_addr = match (local, proto) {
                    (Some(own), _) => own,
                    (None, TransportProtocol::TCP) => {
                        self.shared.tcp_local.unwrap_or(self.shared.udp_local)
                    }
                    _ => self.shared.udp_local,
                };
                let Some(c) = self.conns.get_mut(&conn) else {
                    self.counters
                        .engine_unroutable
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let msg = TaggedBytesMut {
                    now: at,
                    transport: TransportContext {
                        local_addr,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: proto,
                    },
                    message: bytes,
                };
                if let Err(e) = c.pc.handle_read(msg) {
                    tracing::debug!(conn, error = %e, "datagram refused");
                }
                mark(&mut self.dirty, conn, c);
            }
            Data::Forward { conn, packet } => self.write_rtp(conn, packet, Instant::now()),
        }
    }

    /// Creates a connection with the node's candidates already gathered.
    pub fn create(&mut self, spec: ConnSpec) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id = (self.next_id + 1) & MAX_CONN_ID;
        let route = Route {
            worker: self.index,
            conn: id,
        };
        let ufrag = Ufrag::make(route, rand::random());
        let pwd: String = {
            use rand::Rng;
            rand::thread_rng()
                .sample_iter(&rand::distributions::Alphanumeric)
                .take(24)
                .map(char::from)
                .collect()
        };
        let (engine, registry) = interceptor::chain(spec.kind).map_err(|e| e.to_string())?;
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_ice_credentials(ufrag, pwd);
        if spec.relay {
            settings = settings
                .with_ice_connection_attempts(Some(RELAY_ICE_CHECK_INTERVAL), None)
                .with_ice_timeouts(
                    Some(RELAY_ICE_DISCONNECTED),
                    Some(RELAY_ICE_FAILED),
                    Some(RELAY_ICE_KEEPALIVE),
                );
        }
        // The receiving end of a relay link gets its own port; everything else shares the
        // node's media port (and ICE-TCP, for clients).
        let own_socket = if spec.relay && spec.relayed_from.is_some() {
            let me = self.peers[usize::from(self.index)].clone();
            Some(
                self.shared
                    .own_socket(me, id, self.counters.clone())
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let candidates: Vec<String> = match &own_socket {
            Some(own) => vec![format!(
                "candidate:3 1 udp 2130706431 {} {} typ host",
                own.local.ip(),
                own.local.port()
            )],
            None if spec.relay => self.shared.candidates[..1].to_vec(),
            None => self.shared.candidates.clone(),
        };
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![self.shared.certificate.clone()])
                    .build(),
            )
            .with_media_engine(engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(|e| e.to_string())?;
        for candidate in candidates {
            pc.add_local_candidate(RTCIceCandidateInit {
                candidate,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
        }
        if let Some(own) = &own_socket {
            self.outbox.own.insert(own.local, own.socket.clone());
        }
        self.conns.insert(
            id,
            Conn {
                pc,
                spec,
                inbound: HashMap::new(),
                outbound: HashMap::new(),
                sent: Default::default(),
                quality: ConnQuality::default(),
                deadline: None,
                dirty: false,
                remotes: Vec::new(),
                own_socket,
                setup: SetupClock::default(),
            },
        );
        self.touch(id);
        Ok(id)
    }

    pub fn conn(&mut self, id: u64) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    /// Marks a connection for driving at the end of this iteration (after a call changed it).
    pub fn touch(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            mark(&mut self.dirty, id, c);
        }
    }

    /// Closes a connection: its published tracks end, its last words are sent.
    pub fn close(&mut self, id: u64) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        if let Err(e) = conn.pc.close() {
            tracing::debug!(conn = id, error = %e, "close");
        }
        while let Some(w) = conn.pc.poll_write() {
            self.outbox.push(w);
        }
        if let Some(own) = conn.own_socket.take() {
            // Its last words go out first.
            self.outbox.flush(&self.counters);
            self.outbox.own.remove(&own.local);
        }
        let _ = self.shared.learn.try_send(super::Learn::Forget(Route {
            worker: self.index,
            conn: id,
        }));
        for (_, inbound) in conn.inbound.drain() {
            let track = inbound.source.id.clone();
            inbound.finish();
            conn.spec.events.do_send(TransportEvent::TrackEnded(track));
        }
    }

    /// Asks a publisher for a keyframe of one of its tracks.
    pub fn send_pli(&mut self, conn: u64, media_ssrc: u32) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        let msg = TaggedRTCMessage {
            now: Instant::now(),
            message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(pli)]),
        };
        if let Err(e) = c.pc.handle_write(msg) {
            tracing::debug!(conn, error = %e, "keyframe request not sent");
        }
        mark(&mut self.dirty, conn, c);
    }

    fn write_rtp(&mut self, conn: u64, packet: rtp::packet::Packet, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            self.counters
                .dropped_write_error
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        // SRTP and the selected pair only, straight into the outbox: writing media raises no
        // event and no read, and moves no timer. The packet is kept for NACKs.
        match c.pc.protect_rtp(now, &packet) {
            Ok(datagram) => {
                self.outbox.push(datagram);
                let ssrc = packet.header.ssrc;
                match c.sent.get_mut(&ssrc) {
                    Some(log) => log.record(packet, now),
                    None => c.sent.entry(ssrc).or_default().record(packet, now),
                }
            }
            Err(_) => {
                self.counters
                    .dropped_write_error
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends again what a subscriber's NACK names, from the connection's send log.
    fn answer_nack(&mut self, id: u64, nack: &TransportLayerNack, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(log) = c.sent.get(&nack.media_ssrc) else {
            return;
        };
        let mut resent = 0u64;
        for pair in &nack.nacks {
            for seq in *pair {
                let Some(packet) = log.get(seq) else {
                    continue;
                };
                if let Ok(datagram) = c.pc.protect_rtp(now, packet) {
                    self.outbox.push(datagram);
                    resent += 1;
                }
            }
        }
        self.counters
            .packets_retransmitted
            .fetch_add(resent, Ordering::Relaxed);
    }

    /// A sender report for every stream of every connection that sent recently.
    fn send_reports(&mut self, now: Instant) {
        let wall = std::time::SystemTime::now();
        for (id, c) in self.conns.iter_mut() {
            if c.sent.is_empty() {
                continue;
            }
            let reports: Vec<Box<dyn rtc::rtcp::Packet>> = c
                .sent
                .iter()
                .filter_map(|(ssrc, log)| log.report(*ssrc, now, wall))
                .inspect(|sr| c.quality.report_sent(sr.ssrc, sr.ntp_time, now))
                .map(|sr| Box::new(sr) as Box<dyn rtc::rtcp::Packet>)
                .collect();
            if reports.is_empty() {
                continue;
            }
            let msg = TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), reports),
            };
            if let Err(e) = c.pc.handle_write(msg) {
                tracing::debug!(conn = id, error = %e, "sender report not sent");
            }
            mark(&mut self.dirty, *id, c);
        }
    }

    /// A connection still connecting past its setup deadline is reported failed, once, as
    /// if its state had said so: its owner closes it (a relay link is opened again, a
    /// client's participant is removed and the client rejoins).
    fn fail_stuck_setups(&mut self, now: Instant) {
        for (id, c) in self.conns.iter_mut() {
            let limit = if c.spec.relay {
                RELAY_SETUP_TIMEOUT
            } else {
                CLIENT_SETUP_TIMEOUT
            };
            if c.setup.expired(now, limit) {
                tracing::warn!(conn = id, user = %c.spec.owner, pc = ?c.spec.kind, waited = ?limit,
                    "connection did not connect in time; failing it");
                self.counters.setup_timeouts.fetch_add(1, Ordering::Relaxed);
                c.spec.events.do_send(TransportEvent::Failed(c.spec.kind));
            }
        }
    }

    /// Samples every connection's quality (`media::quality`) for the metrics and snapshots.
    fn sample_quality(&mut self, now: Instant) {
        let views = self
            .conns
            .values_mut()
            .map(|c| quality::sample(&c.spec, &mut c.inbound, &mut c.quality, &c.sent, now));
        self.shared.quality.publish(self.index, views.collect());
    }

    /// Drives every connection something happened to: events, reads (forwarding), writes,
    /// and its next timer.
    fn drive_dirty(&mut self) {
        // Forwarding dirties subscriber connections; those do not forward, so this ends.
        for _round in 0..4 {
            if self.dirty.is_empty() {
                return;
            }
            let ids = std::mem::take(&mut self.dirty);
            for id in &ids {
                self.drive(*id);
            }
            let mut ids = ids;
            ids.clear();
            if self.dirty.is_empty() {
                self.dirty = ids;
            }
        }
    }

    fn drive(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !c.dirty {
            return;
        }
        let now = Instant::now();
        self.events(id);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.dirty = false;
        let mut reads = std::mem::take(&mut self.reads);
        while let Some(m) = c.pc.poll_read() {
            reads.push(m);
        }
        for m in reads.drain(..) {
            self.on_read(id, m.message, m.now, now);
        }
        self.reads = reads;
        self.events(id);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some(w) = c.pc.poll_write() {
            let to = w.transport.peer_addr;
            if w.transport.transport_protocol != TransportProtocol::TCP
                && c.own_socket.is_none()
                && !c.remotes.contains(&to)
                && !is_stun_error(&w.message)
            {
                let route = Route {
                    worker: self.index,
                    conn: id,
                };
                if self
                    .shared
                    .learn
                    .try_send(super::Learn::Add(to, route))
                    .is_ok()
                {
                    if c.remotes.len() >= MAX_REMOTES {
                        c.remotes.remove(0);
                    }
                    c.remotes.push(to);
                }
            }
            self.outbox.push(w);
        }
        let next = c.pc.poll_timeout();
        if next != c.deadline {
            c.deadline = next;
            if let Some(t) = next {
                self.timers.push(Reverse((t, id)));
            }
        }
    }

    fn events(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(ev) = c.pc.poll_event() else {
                return;
            };
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    tracing::debug!(conn = id, user = %c.spec.owner, pc = ?c.spec.kind, %state, "connection state");
                    c.setup.on_state(state, Instant::now());
                    match state {
                        RTCPeerConnectionState::Connected => c
                            .spec
                            .events
                            .do_send(TransportEvent::Connected(c.spec.kind)),
                        RTCPeerConnectionState::Failed => {
                            c.spec.events.do_send(TransportEvent::Failed(c.spec.kind))
                        }
                        _ => {}
                    }
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    self.track_opened(id, init);
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                    if let Some(inbound) = c.inbound.remove(&track_id) {
                        let track = inbound.source.id.clone();
                        inbound.finish();
                        c.spec.events.do_send(TransportEvent::TrackEnded(track));
                    }
                }
                _ => {}
            }
        }
    }

    fn track_opened(&mut self, id: u64, init: rtc::peer_connection::event::RTCTrackEventInit) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.spec.kind != PcKind::Publisher {
            return;
        }
        match c.inbound.get(&init.track_id) {
            Some(old) if old.source.media_ssrc == init.ssrc => return,
            // The same track again with another SSRC: a relay link's sender removed it
            // and added it back (its publisher lost and regained `can_publish`, or this
            // node stopped and resumed wanting it). The old one has ended.
            Some(_) => {
                if let Some(old) = c.inbound.remove(&init.track_id) {
                    let track = old.source.id.clone();
                    old.finish();
                    c.spec.events.do_send(TransportEvent::TrackEnded(track));
                }
            }
            None => {}
        }
        let Some(receiver) = c.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let track = receiver.track();
        let kind = match track.kind() {
            RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let Some(codec) = track.codec(init.ssrc).cloned() else {
            tracing::warn!(user = %c.spec.owner, ssrc = init.ssrc, "remote track without codec ignored");
            return;
        };
        let (stream_id, msid_track) = (track.stream_id().clone(), track.track_id().clone());
        let (track_id, owner) = match &c.spec.relayed_from {
            None => (
                TrackId::new(format!("TR_{:016x}", rand::random::<u64>()))
                    .expect("generated ids are valid"),
                c.spec.owner.clone(),
            ),
            Some(from) => match (
                UserId::new(stream_id.as_str()),
                TrackId::new(msid_track.as_str()),
            ) {
                (Ok(owner), Ok(id)) => (id, owner),
                _ => {
                    tracing::warn!(%from, %stream_id, %msid_track, "relayed track without a valid msid ignored");
                    return;
                }
            },
        };
        let source = TrackSource::new(
            track_id,
            owner,
            c.spec.relayed_from.clone(),
            kind,
            codec,
            super::ConnRef {
                worker: self.peers[usize::from(self.index)].clone(),
                conn: id,
            },
            init.ssrc,
            &self.counters,
        );
        c.inbound
            .insert(init.track_id.clone(), Inbound::new(source.clone()));
        c.spec.events.do_send(TransportEvent::TrackArrived(source));
    }

    /// `at`: when the datagram arrived.
    fn on_read(&mut self, id: u64, message: RTCMessage, at: Instant, now: Instant) {
        match message {
            RTCMessage::RtpPacket(track_id, packet) => {
                let Some(c) = self.conns.get_mut(&id) else {
                    return;
                };
                let Some(inbound) = c.inbound.get_mut(&track_id) else {
                    return;
                };
                let Some(packet) = inbound.accept(packet, at) else {
                    return;
                };
                let fanout = inbound.source.fanout.load_full();
                let len = packet.payload.len();
                for dt in fanout.iter() {
                    self.forward(dt, &packet, now);
                }
                if let Some(inbound) = self
                    .conns
                    .get_mut(&id)
                    .and_then(|c| c.inbound.get_mut(&track_id))
                {
                    inbound.count_forwarded(&fanout, len);
                }
            }
            RTCMessage::RtcpPacket(track_id, packets) => {
                for nack in packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
                {
                    self.answer_nack(id, nack, now);
                }
                let Some(c) = self.conns.get_mut(&id) else {
                    return;
                };
                c.quality.on_rtcp(&packets, at, &c.sent);
                let Some(source) = c.outbound.get(&track_id) else {
                    return;
                };
                if packets
                    .iter()
                    .any(|p| interceptor::is_keyframe_request(p.as_ref()))
                {
                    source.request_keyframe();
                }
            }
            _ => {}
        }
    }

    fn forward(&mut self, dt: &DownTrack, packet: &rtp::packet::Packet, now: Instant) {
        let mut out = packet.clone();
        out.header.ssrc = dt.ssrc;
        out.header.payload_type = dt.payload_type;
        if dt.worker == self.index {
            self.write_rtp(dt.conn, out, now);
            dt.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            let d = Data::Forward {
                conn: dt.conn,
                packet: out,
            };
            match self.peers[usize::from(dt.worker)].data.try_send(d) {
                Ok(()) => {
                    dt.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    dt.congested.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .dropped_congested
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn mark(dirty: &mut Vec<u64>, id: u64, c: &mut Conn) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(id);
    }
}
