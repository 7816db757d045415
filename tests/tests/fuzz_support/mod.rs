//! What the fuzzers of `fuzz_signaling.rs` and `fuzz_sdp.rs` share: a WebSocket client that
//! writes any frame at all (invalid UTF-8, bad opcodes, unmasked, truncated, oversize), a
//! recorder of every panic in the process (the node runs in it), the arena (a real node, a
//! pair of chaos clients exchanging media in a room of their own, the counters at rest), and
//! the case loop: seeded, each case replayable on its own.
//!
//! Settings, from the environment:
//! - `FUZZ_CASES`: how many cases (default: each fuzzer's CI count);
//! - `FUZZ_SEED`: the run's seed (default: a fixed one, so CI runs the same cases each time);
//! - `FUZZ_CASE`: run only this case of the seed (to replay a failure);
//! - `FUZZ_VERBOSE=1`: print each case's frames and what the node answered;
//! - `FUZZ_PARALLEL` (default 4): cases at a time; `FUZZ_BATCH` (default 50): cases between
//!   two checks of the invariants.
//!
//! A failure names the seed and the case: `FUZZ_SEED=<seed> FUZZ_CASE=<case> cargo test …`
//! replays it.

// Each fuzzer uses a part of it.
#![allow(dead_code)]

use anyhow::{bail, Context};
use chaos::{Client, PublishOpts};
use protocol::signal::ServerMessage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tests::{join, start_node, wait_until, NodeHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(20);
/// How long the node may take to answer one frame.
pub const ANSWER: Duration = Duration::from_secs(10);
/// The run's default seed.
pub const DEFAULT_SEED: u64 = 0x5eed_f022_2026_0010;

// ---------------------------------------------------------------------------------------
// Panics

static PANICS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();

/// Records every panic of this process (the node's threads included) beside printing it as
/// usual. Installed once per test binary.
pub fn record_panics() {
    PANICS.get_or_init(|| {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let store = seen.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current()
                .name()
                .unwrap_or("<unnamed>")
                .to_owned();
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            if let Ok(mut v) = store.lock() {
                v.push(format!("thread '{thread}' panicked at {at}: {what}"));
            }
            previous(info);
        }));
        seen
    });
}

/// Every panic so far.
pub fn panics() -> Vec<String> {
    PANICS
        .get()
        .and_then(|p| p.lock().ok().map(|v| v.clone()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket

/// What the node sent, as the fuzzers look at it.
#[derive(Debug, Clone)]
pub enum Event {
    Text(String),
    Binary(usize),
    Ping,
    Pong(Vec<u8>),
    /// A Close frame, with its code if it had one.
    Close(Option<u16>),
    /// The TCP stream ended (or broke) without a Close frame.
    Eof,
}

/// A frame exactly as the client writes it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
    /// Write only this many bytes of the encoded frame, then close the TCP stream.
    pub truncate_at: Option<usize>,
    /// Claim this payload length in the header instead of the real one.
    pub claimed_len: Option<u64>,
}

impl Frame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.into(),
            truncate_at: None,
            claimed_len: None,
        }
    }
    pub fn text(s: impl Into<Vec<u8>>) -> Self {
        Frame::new(1, s)
    }
    pub fn binary(b: impl Into<Vec<u8>>) -> Self {
        Frame::new(2, b)
    }

    pub fn encode(&self, mask: [u8; 4]) -> Vec<u8> {
        let len = self.claimed_len.unwrap_or(self.payload.len() as u64);
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 15));
        let m = u8::from(self.masked) << 7;
        if len < 126 {
            out.push(m | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if self.masked {
            out.extend_from_slice(&mask);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
        if let Some(n) = self.truncate_at {
            out.truncate(n);
        }
        out
    }

    /// A short description for the case log.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.payload);
        let mut shown: String = body.chars().take(160).collect();
        if shown.len() < body.len() {
            shown.push_str(&format!("…({} bytes)", self.payload.len()));
        }
        let mut flags = String::new();
        if !self.fin {
            flags.push_str(" !fin");
        }
        if self.rsv != 0 {
            flags.push_str(&format!(" rsv={}", self.rsv));
        }
        if !self.masked {
            flags.push_str(" unmasked");
        }
        if let Some(n) = self.truncate_at {
            flags.push_str(&format!(" truncated@{n}"));
        }
        if let Some(n) = self.claimed_len {
            flags.push_str(&format!(" claims {n} bytes"));
        }
        format!("op={}{flags} {shown:?}", self.opcode)
    }
}

/// A WebSocket client on a bare TCP stream: it writes whatever frame it is given and reads
/// the node's frames on a task of its own.
pub struct RawWs {
    write: OwnedWriteHalf,
    events: mpsc::Receiver<Event>,
    pub closed: bool,
    next_sync: u64,
    mask: [u8; 4],
}

impl RawWs {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<RawWs> {
        let stream = tokio::time::timeout(ANSWER, TcpStream::connect(addr)).await??;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        write.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(ANSWER, async {
            let mut chunk = [0u8; 4096];
            for _ in 0..64 {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok(i + 4);
                }
                let n = read.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed during the handshake");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            bail!("no end of the handshake response")
        })
        .await
        .context("handshake")??;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        anyhow::ensure!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        let rest = buf[head_end..].to_vec();
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(read_frames(read, rest, tx));
        Ok(RawWs {
            write,
            events: rx,
            closed: false,
            next_sync: 0,
            mask: [0x37, 0xfa, 0x21, 0x3d],
        })
    }

    /// Writes a frame; a write error (the node closed the stream) marks the socket closed.
    pub async fn send(&mut self, frame: &Frame) -> bool {
        if self.closed {
            return false;
        }
        let bytes = frame.encode(self.mask);
        let ok = matches!(
            tokio::time::timeout(ANSWER, self.write.write_all(&bytes)).await,
            Ok(Ok(()))
        );
        if frame.truncate_at.is_some() {
            let _ = self.write.shutdown().await;
        }
        ok
    }

    pub async fn send_text(&mut self, text: &str) -> bool {
        self.send(&Frame::text(text)).await
    }

    /// The next event within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(e)) => {
                if matches!(e, Event::Close(_) | Event::Eof) {
                    self.closed = true;
                }
                Some(e)
            }
            Ok(None) => {
                self.closed = true;
                Some(Event::Eof)
            }
            Err(_) => None,
        }
    }

    /// Sends a Ping control frame with a payload of its own and collects what the node sent
    /// until its Pong (the node queues the Pong behind everything it answered before), or
    /// until the socket closed. Errs when neither happens in time.
    pub async fn sync(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut got = Vec::new();
        if !self.closed {
            self.next_sync += 1;
            let token = format!("sync-{}", self.next_sync).into_bytes();
            if !self.send(&Frame::new(9, token.clone())).await {
                // The node closed the stream; what it sent before is still to be read.
                return self.until_closed(got).await;
            }
            let deadline = Instant::now() + ANSWER;
            for _ in 0..100_000 {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.next(left).await {
                    Some(Event::Pong(p)) if p == token => return Ok(got),
                    Some(e @ (Event::Close(_) | Event::Eof)) => {
                        got.push(e);
                        return Ok(got);
                    }
                    Some(e) => got.push(e),
                    None => bail!("no pong within {ANSWER:?} after {got:?}"),
                }
            }
            bail!("endless stream of frames: {got:?}");
        }
        Ok(got)
    }

    async fn until_closed(&mut self, mut got: Vec<Event>) -> anyhow::Result<Vec<Event>> {
        let deadline = Instant::now() + ANSWER;
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(e @ (Event::Close(_) | Event::Eof)) => {
                    got.push(e);
                    return Ok(got);
                }
                Some(e) => got.push(e),
                None => bail!("write failed but the stream did not end: {got:?}"),
            }
        }
        bail!("endless stream of frames: {got:?}")
    }

    /// Closes the stream (with a Close frame first when `graceful`) and waits until the
    /// node has closed its end too.
    pub async fn finish(mut self, graceful: bool) -> anyhow::Result<()> {
        if graceful && !self.closed {
            let _ = self.send(&Frame::new(8, 1000u16.to_be_bytes())).await;
        }
        let _ = self.write.shutdown().await;
        let deadline = Instant::now() + ANSWER;
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(_) => bail!("the node kept the socket open after the client closed it"),
            }
        }
        bail!("endless stream of frames after the close")
    }
}

/// Parses the node's frames (unmasked) until the stream ends.
async fn read_frames(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut buf: Vec<u8>,
    tx: mpsc::Sender<Event>,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut text_parts: Vec<u8> = Vec::new();
    // Bounded: a socket of a fuzz case lives seconds, and reads far fewer chunks.
    let deadline = Instant::now() + Duration::from_secs(600);
    for _ in 0..1_000_000 {
        // Every complete frame in the buffer.
        loop {
            if buf.len() < 2 {
                break;
            }
            let opcode = buf[0] & 15;
            let (len, mut at) = match buf[1] & 127 {
                126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b), 10)
                }
                126 | 127 => break,
                n => (u64::from(n), 2),
            };
            if buf[1] & 128 != 0 {
                at += 4; // a server must not mask; tolerate it anyway
            }
            if len > 64 * 1024 * 1024 {
                let _ = tx.send(Event::Eof).await;
                return;
            }
            let end = at + len as usize;
            if buf.len() < end {
                break;
            }
            let payload: Vec<u8> = buf[at..end].to_vec();
            let fin = buf[0] & 128 != 0;
            buf.drain(..end);
            let event = match opcode {
                0 | 1 => {
                    text_parts.extend_from_slice(&payload);
                    if !fin {
                        continue;
                    }
                    let t = String::from_utf8_lossy(&text_parts).into_owned();
                    text_parts.clear();
                    Event::Text(t)
                }
                2 => Event::Binary(payload.len()),
                8 => Event::Close(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                ),
                9 => Event::Ping,
                10 => Event::Pong(payload),
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let _ = tx.send(Event::Eof).await;
}

/// The node's messages among `events`.
pub fn messages(events: &[Event]) -> Vec<ServerMessage> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => serde_json::from_str(t).ok(),
            _ => None,
        })
        .collect()
}

pub fn is_closed(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Close(_) | Event::Eof))
}

// ---------------------------------------------------------------------------------------
// The arena

/// A real node and, in a room of their own, two chaos clients exchanging media.
pub struct Arena {
    pub node: NodeHandle,
    pub good: [Client; 2],
    pub good_room: String,
    /// The node's live counts with only the good pair on it.
    pub baseline: Live,
}

/// The node's live object counts that must return to rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub sessions: i64,
    pub rooms: i64,
    pub peers: i64,
    pub transports: i64,
    pub tracks: i64,
    pub downtracks: i64,
    pub forwarding_tasks: i64,
}

impl Live {
    pub fn of(node: &NodeHandle) -> Live {
        let c = node.counters();
        Live {
            sessions: c.sessions,
            rooms: c.rooms,
            peers: c.peers,
            transports: c.transports,
            tracks: c.tracks,
            downtracks: c.downtracks,
            forwarding_tasks: c.forwarding_tasks,
        }
    }
}

impl Arena {
    pub async fn start(tweak: impl FnOnce(&mut tests::Config)) -> anyhow::Result<Arena> {
        record_panics();
        let node = start_node(|c| {
            // The fuzzers join a few rooms hundreds of times a second from one address, far
            // past the join-rate and per-address limits (tests/limits.rs tests those); every
            // other limit stays as shipped.
            c.limits.room_joins_per_sec = 100_000;
            c.limits.connections_per_ip = c.limits.connections;
            tweak(c);
        });
        let good_room = tests::room_name("fuzz-good");
        let a = join(&node, &good_room, "good1").await?;
        let b = join(&node, &good_room, "good2").await?;
        a.publish(PublishOpts::default()).await?;
        b.publish(PublishOpts::default()).await?;
        let arena = Arena {
            good: [a, b],
            good_room,
            baseline: Live::of(&node),
            node,
        };
        arena.media_flows(100).await?;
        // The counts once both subscriptions are in place.
        let mut baseline = Live::of(&arena.node);
        wait_until(WAIT, "the good pair's counts to settle", || {
            let now = Live::of(&arena.node);
            let same = now == baseline;
            baseline = now;
            async move {
                if same && now.downtracks == 4 {
                    Ok(())
                } else {
                    Err(format!("{now:?}"))
                }
            }
        })
        .await?;
        Ok(Arena {
            baseline: Live::of(&arena.node),
            ..arena
        })
    }

    /// Both good clients receive `n` more packets from each other.
    pub async fn media_flows(&self, n: u64) -> anyhow::Result<()> {
        let g = &self.good;
        let before = [g[0].received_from("good2"), g[1].received_from("good1")];
        wait_until(WAIT, "media between the good pair", || async {
            let now = [g[0].received_from("good2"), g[1].received_from("good1")];
            if now[0] >= before[0] + n && now[1] >= before[1] + n {
                Ok(())
            } else {
                Err(format!("before {before:?} now {now:?}"))
            }
        })
        .await?;
        anyhow::ensure!(
            !g[0].is_closed() && !g[1].is_closed(),
            "a good client's socket closed: {:?} {:?}",
            g[0].close_info(),
            g[1].close_info()
        );
        for c in g {
            let errors: Vec<_> = c
                .messages()
                .into_iter()
                .filter(|m| {
                    matches!(
                        m,
                        ServerMessage::Error { .. } | ServerMessage::Reconnect { .. }
                    )
                })
                .collect();
            anyhow::ensure!(errors.is_empty(), "a good client got {errors:?}");
        }
        Ok(())
    }

    /// The invariants between batches: no panic, the node's counts back at rest, the node
    /// serving (`/healthz`, a fresh socket's ping), the good pair's media flowing.
    pub async fn check(&self) -> anyhow::Result<()> {
        let p = panics();
        anyhow::ensure!(p.is_empty(), "panics: {p:#?}");
        let baseline = self.baseline;
        let rest = wait_until(WAIT, "the node's live counts to return to rest", || async {
            let now = Live::of(&self.node);
            if now == baseline {
                Ok(())
            } else {
                Err(format!("at rest {baseline:?}, now {now:?}"))
            }
        })
        .await;
        if let Err(e) = rest {
            let snapshot = self.node.snapshot().await;
            bail!("{e:#}\nthe node's rooms: {:#}", snapshot["rooms"]);
        }
        let (status, body) = tests::http_get(self.node.http_addr(), "/healthz", &[]).await?;
        anyhow::ensure!(status == 200, "/healthz: {status} {body}");
        let mut ws = RawWs::connect(self.node.http_addr()).await?;
        ws.send_text(r#"{"type":"ping"}"#).await;
        let got = ws.sync().await?;
        anyhow::ensure!(
            messages(&got).contains(&ServerMessage::Pong),
            "a fresh socket got no pong: {got:?}"
        );
        ws.finish(true).await?;
        self.media_flows(50).await?;
        let p = panics();
        anyhow::ensure!(p.is_empty(), "panics: {p:#?}");
        Ok(())
    }

    pub async fn stop(self) {
        for c in &self.good {
            let _ = c.leave().await;
        }
        self.node.stop();
    }
}

// ---------------------------------------------------------------------------------------
// Cases

/// The run's settings (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub seed: u64,
    pub cases: u64,
    pub only: Option<u64>,
    pub verbose: bool,
    /// Cases run at the same time (`FUZZ_PARALLEL`, default 4).
    pub parallel: usize,
    /// Cases between two checks of the invariants (`FUZZ_BATCH`, default 50).
    pub batch: usize,
}

impl Run {
    pub fn from_env(default_cases: u64) -> Run {
        let num = |k: &str| {
            std::env::var(k).ok().and_then(|v| {
                let v = v.trim();
                v.strip_prefix("0x")
                    .map(|h| u64::from_str_radix(h, 16).ok())
                    .unwrap_or_else(|| v.parse().ok())
            })
        };
        Run {
            seed: num("FUZZ_SEED").unwrap_or(DEFAULT_SEED),
            cases: num("FUZZ_CASES").unwrap_or(default_cases),
            only: num("FUZZ_CASE"),
            verbose: std::env::var_os("FUZZ_VERBOSE").is_some_and(|v| v != "0"),
            parallel: num("FUZZ_PARALLEL").unwrap_or(4).max(1) as usize,
            batch: num("FUZZ_BATCH").unwrap_or(50).max(1) as usize,
        }
    }

    /// The cases to run, in order.
    pub fn case_ids(&self) -> Vec<u64> {
        match self.only {
            Some(c) => vec![c],
            None => (0..self.cases).collect(),
        }
    }

    /// The generator of one case: it depends on the seed and the case number only.
    pub fn rng(&self, case: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// How to replay `case`.
    pub fn replay(&self, test: &str, case: u64) -> String {
        format!(
            "replay: FUZZ_SEED={:#x} FUZZ_CASE={case} FUZZ_VERBOSE=1 cargo test -p tests --test {test}",
            self.seed
        )
    }
}

/// Runs the cases, `parallel` at a time, checking the arena's invariants every `batch`
/// cases and at the end. `case` runs one case and returns its log; a failure names the seed
/// and the case.
pub async fn run_cases<F, Fut>(arena: &Arena, run: Run, test: &str, case: F) -> anyhow::Result<()>
where
    F: Fn(u64, StdRng) -> Fut,
    Fut: std::future::Future<Output = (Vec<String>, anyhow::Result<()>)>,
{
    let (parallel, batch) = (run.parallel, run.batch);
    let started = Instant::now();
    eprintln!(
        "{test}: seed {:#x}, {} case(s), {parallel} at a time",
        run.seed,
        run.case_ids().len()
    );
    let ids = run.case_ids();
    for chunk in ids.chunks(batch.max(1)) {
        for group in chunk.chunks(parallel.max(1)) {
            let panics_before = panics().len();
            let results =
                futures::future::join_all(group.iter().map(|&c| case(c, run.rng(c)))).await;
            let mut logs = Vec::new();
            for (&c, (log, res)) in group.iter().zip(results) {
                if run.verbose {
                    eprintln!("case {c}:\n  {}", log.join("\n  "));
                }
                if let Err(e) = res {
                    let p = panics();
                    let also = if p.len() > panics_before {
                        format!("\nthe node panicked: {p:#?}")
                    } else {
                        String::new()
                    };
                    return Err(failed(&run, test, c, &format!("{e:#}{also}"), &log));
                }
                logs.push((c, log));
            }
            if panics().len() > panics_before {
                // Cases ran side by side: run each again alone to name the one that panics.
                for &c in group {
                    let before = panics().len();
                    let (log, res) = case(c, run.rng(c)).await;
                    if panics().len() > before {
                        let why = format!(
                            "the node panicked (case {c} alone panics it again): {:#?}",
                            &panics()[before..]
                        );
                        return Err(failed(&run, test, c, &why, &log));
                    }
                    if let Err(e) = res {
                        return Err(failed(&run, test, c, &format!("{e:#}"), &log));
                    }
                }
                let all: Vec<String> = logs
                    .iter()
                    .map(|(c, log)| format!("case {c}:\n  {}", log.join("\n  ")))
                    .collect();
                bail!(
                    "{test}: the node panicked during cases {group:?} of seed {:#x}, none of which \
                     panics it alone: {:#?}\n{}",
                    run.seed,
                    &panics()[panics_before..],
                    all.join("\n")
                );
            }
        }
        arena.check().await.with_context(|| {
            format!(
                "{test}: invariants after cases {}..={} of seed {:#x} ({})",
                chunk[0],
                chunk[chunk.len() - 1],
                run.seed,
                run.replay(test, chunk[0])
            )
        })?;
    }
    eprintln!(
        "{test}: {} case(s) passed in {:.1?}",
        ids.len(),
        started.elapsed()
    );
    Ok(())
}

fn failed(run: &Run, test: &str, case: u64, why: &str, log: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "{test}: case {case} of seed {:#x} failed: {why}\n{}\ncase {case} sent:\n  {}",
        run.seed,
        run.replay(test, case),
        log.join("\n  ")
    )
}

/// A random element of a non-empty slice.
pub fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}
