//! [`Participant`]: a synthetic participant that recovers by itself, as PROTOCOL.md ("What a
//! client should do when something breaks") asks of every client.
//!
//! One supervisor task per participant watches the current [`Client`] for a fault (see
//! [`Cause`]), replaces it (connect, `resume` or a fresh `join`, publish again) on the
//! [`RecoveryPolicy`] schedule, and records each recovery ([`Recovery`]) for tests and
//! benchmarks. All clients of a participant count into one statistics book, so what it
//! received reads the same across recoveries.

mod supervise;

use super::fault::Cause;
use super::policy::RecoveryPolicy;
use super::{lock, packets_from, Client, ClientConfig, Joined};
use crate::error::{Error, Result};
use crate::payload::unix_now_us;
use crate::publisher::{PublishOpts, SentStats};
use crate::stats::TrackStats;
use crate::subscriber::StatsBook;
use protocol::signal::{ClientMessage, ParticipantState};
use protocol::token::{mint, Claims};
use protocol::{NodeId, RoomId, UserId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use supervise::supervise;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the `wait_media_*` methods read the counters.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Mints a join token for each (fresh) join of a participant.
pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A [`TokenSource`] minting `claims` signed with `secret`, each token valid for `ttl` from
/// the moment it is minted.
pub fn mint_tokens(secret: &str, claims: Claims, ttl: Duration) -> TokenSource {
    let secret = secret.as_bytes().to_vec();
    Arc::new(move || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            exp: now.saturating_add(ttl.as_secs()),
            ..claims.clone()
        };
        mint(&secret, &claims)
    })
}

/// How a participant connects and recovers.
#[derive(Debug, Clone, Default)]
pub struct ParticipantConfig {
    pub client: ClientConfig,
    pub recovery: RecoveryPolicy,
    /// `join.region` of every join, the fresh ones after a refused `resume` included.
    pub region: Option<String>,
}

/// How `joined` came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// `resume` with the latest resume token.
    Resume,
    /// `join` with a new token, after the node refused the resume (`unauthorized` or
    /// `not_found`).
    FreshJoin,
}

/// The end of a successful recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejoined {
    /// When `joined` arrived.
    pub at: Instant,
    pub by: Rejoin,
    /// The WebSocket address that answered (a fallback URL when the old one refused).
    pub url: String,
    /// `joined.node`.
    pub node: NodeId,
}

/// One recovery, for benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub cause: Cause,
    /// When the fault was noticed.
    pub noticed_at: Instant,
    /// Attempts started so far (connecting, `resume`/`join`, publishing again).
    pub attempts: u32,
    /// `None` while recovering, and for good when it gave up (see [`Recovery::gave_up`]).
    pub rejoined: Option<Rejoined>,
    /// The last attempt's error, when the deadline passed without `joined`.
    pub gave_up: Option<String>,
    /// Per other participant, when its first packet after the recovery was noticed (within
    /// 10 ms), for as long as [`RecoveryPolicy::media_watch`] after `joined`.
    pub media_at: BTreeMap<String, Instant>,
    /// When the old connections were closed (µs since the Unix epoch): packets that
    /// arrived later came over the new ones.
    restarted_unix_us: u64,
}

impl Recovery {
    /// From the fault to `joined`.
    pub fn time_to_joined(&self) -> Option<Duration> {
        self.rejoined.as_ref().map(|r| r.at - self.noticed_at)
    }

    /// From the fault to the first packet of `publisher` over the new connections.
    pub fn time_to_media(&self, publisher: &str) -> Option<Duration> {
        self.media_at.get(publisher).map(|t| *t - self.noticed_at)
    }

    /// Rejoined, or given up.
    pub fn is_over(&self) -> bool {
        self.rejoined.is_some() || self.gave_up.is_some()
    }
}

/// Why a participant's supervision ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// [`Participant::leave`].
    Left,
    /// The node closed the socket after `error unauthorized`: the same user joined from
    /// elsewhere, and coming back would only evict that session in turn.
    Replaced,
    /// The node said `removed`: the application removed the participant (`removed`) or
    /// closed the room (`room_closed`).
    Removed(String),
    /// A fault with recovery disabled ([`RecoveryPolicy::enabled`]).
    NotRecovering(Cause),
    /// The recovery deadline passed.
    GaveUp { cause: Cause, error: String },
}

/// Where a participant is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connected,
    Recovering(Cause),
    Ended(EndReason),
}

struct State {
    client: Arc<Client>,
    /// The WebSocket address in use.
    url: String,
    /// The latest `joined` of any client: its resume token and fallback URLs.
    joined: Joined,
    /// What to publish again after a recovery.
    published: Option<PublishOpts>,
    status: Status,
    recoveries: Vec<Recovery>,
}

struct Shared {
    room: RoomId,
    config: ParticipantConfig,
    tokens: TokenSource,
    stats: Arc<StatsBook>,
    state: Mutex<State>,
    /// Bumped whenever `state` changes, for waiters.
    changed: watch::Sender<u64>,
    /// Held by a recovery and by publish/unpublish, so neither sees the other half done.
    ops: tokio::sync::Mutex<()>,
    /// When the participant first joined, µs since the Unix epoch.
    started_unix_us: u64,
}

/// A participant that follows PROTOCOL.md's recovery by itself: when its WebSocket closes
/// without `leave`, the node sends `reconnect`, or a peer connection fails, it reconnects
/// (to `reconnect.url` if given, else the same URL, or `joined.fallback_urls` in turn when
/// that one refuses the connection), sends `resume` (a fresh `join` with a new token if the
/// node refuses it), publishes again what it published and answers the new subscribe offer.
///
/// ```no_run
/// # async fn demo() -> chaos::Result<()> {
/// use chaos::{mint_tokens, Participant, ParticipantConfig, PublishOpts};
/// use protocol::token::Claims;
/// use protocol::{RoomId, UserId};
/// use std::time::Duration;
/// let (room, user) = (RoomId::new("room-1").unwrap(), UserId::new("alice").unwrap());
/// // `exp` is set afresh at each minting.
/// let tokens = mint_tokens("secret", Claims::new(room, user, 0, 0), Duration::from_secs(3600));
/// let alice = Participant::join("ws://127.0.0.1:7880/ws", "room-1", tokens,
///     ParticipantConfig::default()).await?;
/// alice.publish(PublishOpts::default()).await?;
/// // ... a fault; alice recovers by herself ...
/// let recoveries = alice.wait_recoveries(1, Duration::from_secs(30)).await?;
/// alice.wait_media_from_others(Duration::from_secs(30)).await?;
/// println!("{:?} in {:?}", recoveries[0].cause, recoveries[0].time_to_joined());
/// alice.leave().await?;
/// # Ok(())
/// # }
/// ```
///
/// Dropping it (or [`Participant::leave`]) stops the supervisor; the clients' own tasks
/// stop with them.
pub struct Participant {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Participant {
    /// Connects to `url`, joins `room` with a token from `tokens` and starts the supervision.
    /// The first join is not retried: its failure is returned.
    pub async fn join(
        url: &str,
        room: &str,
        tokens: TokenSource,
        config: ParticipantConfig,
    ) -> Result<Participant> {
        let room = RoomId::new(room).map_err(|e| Error::Invalid(format!("room: {e}")))?;
        let stats = Arc::new(StatsBook::default());
        let started_unix_us = unix_now_us();
        let client = Client::connect_sharing(url, config.client.clone(), stats.clone()).await?;
        let joined = client
            .join_like(join_message(&room, &tokens, &config))
            .await?;
        let shared = Arc::new(Shared {
            room,
            tokens,
            stats,
            state: Mutex::new(State {
                client: Arc::new(client),
                url: url.to_owned(),
                joined,
                published: None,
                status: Status::Connected,
                recoveries: Vec::new(),
            }),
            changed: watch::Sender::new(0),
            ops: tokio::sync::Mutex::new(()),
            started_unix_us,
            config,
        });
        let supervisor = tokio::spawn(supervise(shared.clone()));
        Ok(Participant {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    /// Publishes on the current client and remembers it, to publish the same again after
    /// each recovery. Waits for a recovery under way to finish.
    pub async fn publish(&self, opts: PublishOpts) -> Result<()> {
        let _ops = self.shared.ops.lock().await;
        self.client().publish(opts.clone()).await?;
        self.shared.update(|s| {
            let p = s.published.get_or_insert(PublishOpts {
                audio: false,
                video: false,
                ..opts.clone()
            });
            p.audio |= opts.audio;
            p.video |= opts.video;
        });
        Ok(())
    }

    /// Stops publishing; recoveries no longer publish.
    pub async fn unpublish(&self) -> Result<()> {
        let _ops = self.shared.ops.lock().await;
        self.shared.update(|s| s.published = None);
        self.client().unpublish().await
    }

    /// The client in use now; a recovery replaces it.
    pub fn client(&self) -> Arc<Client> {
        self.shared.read(|s| s.client.clone())
    }

    /// The WebSocket address in use now.
    pub fn url(&self) -> String {
        self.shared.read(|s| s.url.clone())
    }

    /// The latest `joined`.
    pub fn joined(&self) -> Joined {
        self.shared.read(|s| s.joined.clone())
    }

    pub fn participant_id(&self) -> UserId {
        self.joined().participant.id
    }

    pub fn status(&self) -> Status {
        self.shared.read(|s| s.status.clone())
    }

    /// Every recovery so far, the one under way included.
    pub fn recoveries(&self) -> Vec<Recovery> {
        self.shared.read(|s| s.recoveries.clone())
    }

    /// Waits until `n` recoveries are over (rejoined or given up) and returns them all.
    pub async fn wait_recoveries(&self, n: usize, timeout: Duration) -> Result<Vec<Recovery>> {
        self.shared
            .wait(timeout, &format!("{n} recoveries"), |s| {
                let over = s.recoveries.iter().filter(|r| r.is_over()).count();
                (over >= n).then(|| s.recoveries.clone())
            })
            .await
    }

    /// Waits until the supervision ends and says why.
    pub async fn wait_ended(&self, timeout: Duration) -> Result<EndReason> {
        self.shared
            .wait(timeout, "the supervision to end", |s| match &s.status {
                Status::Ended(r) => Some(r.clone()),
                _ => None,
            })
            .await
    }

    /// Per received track, over every client so far (a track's counters go on across a
    /// recovery; a republished track under a new id is a new entry).
    pub fn track_stats(&self) -> Vec<TrackStats> {
        self.shared.stats.snapshot()
    }

    /// Synthetic packets received from `publisher` since the first join.
    pub fn received_from(&self, publisher: &str) -> u64 {
        packets_from(&self.track_stats(), publisher)
    }

    /// What the current client handed to webrtc (counters start again with each client).
    pub async fn sent_stats(&self) -> Vec<SentStats> {
        self.client().sent_stats().await
    }

    /// The other participants, as the current client's messages describe them.
    pub fn participants(&self) -> Vec<ParticipantState> {
        self.client().participants()
    }

    /// Failures of the current client's background work.
    pub fn local_errors(&self) -> Vec<String> {
        self.client().local_errors()
    }

    /// Waits until a packet from `publisher` arrives after `since`.
    pub async fn wait_media_since(
        &self,
        publisher: &str,
        since: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let since_us = unix_us_at(since);
        let what = format!("media from {publisher}");
        self.wait_media(
            timeout,
            &what,
            || vec![publisher.to_owned()],
            || Ok(Some(since_us)),
        )
        .await
    }

    /// Waits until a packet from each of `publishers` arrives after the last recovery
    /// rejoined (or, with none yet, at all). A recovery under way is waited for; one that
    /// gave up fails the wait. Call it after [`Participant::wait_recoveries`]: a fault not
    /// yet noticed is no recovery.
    pub async fn wait_media_from(&self, publishers: &[&str], timeout: Duration) -> Result<()> {
        let list: Vec<String> = publishers.iter().map(|p| p.to_string()).collect();
        let what = "media from the given publishers";
        self.wait_media(timeout, what, || list.clone(), || self.media_epoch())
            .await
    }

    /// Like [`Participant::wait_media_from`], for every other participant in the room as
    /// the current client sees it (none: at once). For rooms where everyone publishes: a
    /// member that never publishes keeps this waiting.
    pub async fn wait_media_from_others(&self, timeout: Duration) -> Result<()> {
        let others = || {
            self.participants()
                .into_iter()
                .map(|p| p.id.to_string())
                .collect()
        };
        let what = "media from every other participant";
        self.wait_media(timeout, what, others, || self.media_epoch())
            .await
    }

    /// The Unix µs after which packets count as "after the last recovery"; `None` while a
    /// recovery is under way.
    fn media_epoch(&self) -> Result<Option<u64>> {
        self.shared.read(|s| match s.recoveries.last() {
            None => Ok(Some(self.shared.started_unix_us)),
            Some(r) if r.rejoined.is_some() => Ok(Some(r.restarted_unix_us)),
            Some(Recovery {
                gave_up: Some(e), ..
            }) => Err(Error::Usage(format!("the last recovery gave up: {e}"))),
            Some(_) => Ok(None),
        })
    }

    async fn wait_media(
        &self,
        timeout: Duration,
        what: &str,
        publishers: impl Fn() -> Vec<String>,
        since_us: impl Fn() -> Result<Option<u64>>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = match since_us()? {
                Some(since) => {
                    let fresh = media_after(&self.track_stats(), since);
                    let missing: Vec<String> = publishers()
                        .into_iter()
                        .filter(|p| !fresh.contains(p))
                        .collect();
                    if missing.is_empty() {
                        return Ok(());
                    }
                    format!("none yet from {}", missing.join(", "))
                }
                None => "a recovery is under way".to_owned(),
            };
            if Instant::now() >= deadline {
                return Err(Error::timeout(format!("{what} ({missing})"), timeout));
            }
            // Media arrives continuously; polling its counters is the wait.
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Every one of `participants` leaves at once, each bounded by 5 s (a slow one is
    /// reported on stderr, not waited for).
    pub async fn leave_all<'a>(participants: impl IntoIterator<Item = &'a Participant>) {
        let all = participants.into_iter().map(|p| async move {
            if tokio::time::timeout(Duration::from_secs(5), p.leave())
                .await
                .is_err()
            {
                eprintln!("   {} took more than 5 s to leave", p.participant_id());
            }
        });
        futures::future::join_all(all).await;
    }

    /// Ends the supervision, then sends `leave` on the current client and closes it. A
    /// recovery under way is abandoned. The status becomes [`EndReason::Left`] unless the
    /// supervision had already ended.
    pub async fn leave(&self) -> Result<()> {
        self.shared.end(EndReason::Left);
        let supervisor = lock(&self.supervisor).take();
        if let Some(task) = supervisor {
            task.abort();
            let _ = task.await;
        }
        self.client().leave().await
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.supervisor).take() {
            task.abort();
        }
    }
}

impl Shared {
    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&lock(&self.state))
    }

    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.changed.send_modify(|g| *g += 1);
        r
    }

    async fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(t) = self.read(&mut check) {
                return Ok(t);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(Error::timeout(what, timeout));
            }
        }
    }

    fn end(&self, reason: EndReason) {
        tracing::info!(room = %self.room, ?reason, "participant supervision ended");
        self.update(|s| {
            if !matches!(s.status, Status::Ended(_)) {
                s.status = Status::Ended(reason);
            }
        });
    }
}

fn join_message(room: &RoomId, tokens: &TokenSource, config: &ParticipantConfig) -> ClientMessage {
    ClientMessage::Join {
        room: room.clone(),
        token: tokens(),
        region: config.region.clone(),
    }
}

/// The publishers a packet arrived from after `since_us` (µs since the Unix epoch).
fn media_after(stats: &[TrackStats], since_us: u64) -> BTreeSet<String> {
    stats
        .iter()
        .filter(|t| t.last_packet_unix_us > since_us)
        .map(|t| t.publisher.clone())
        .collect()
}

/// `at` on the Unix clock, in µs.
fn unix_us_at(at: Instant) -> u64 {
    let now = Instant::now();
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if at <= now {
        unix_now_us().saturating_sub(us(now - at))
    } else {
        unix_now_us().saturating_add(us(at - now))
    }
}
