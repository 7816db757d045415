//! The asynchronous part of `chaos load`: joins on schedule, a progress line a second, and the
//! orderly end (publishers stop, counters settle, everyone leaves).

use super::config::{LoadConfig, AUDIO_PAYLOAD, AUDIO_PPS, VIDEO_PAYLOAD};
use super::plan::{seats, Role, Seat};
use super::summary::{Measured, Outcome, Progress, Summary};
use super::tally::{Counts, PayloadSizes, Rates};
use crate::client::Status;
use crate::client::{mint_tokens, ClientConfig, Participant, ParticipantConfig, RecoveryPolicy};
use crate::publisher::PublishOpts;
use crate::stats::LatencyHistogram;
use futures::future::join_all;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Bound on reading one publisher's counters for the progress line (its publisher lock is
/// held while it negotiates).
const READ_BOUND: Duration = Duration::from_millis(200);
/// Bound on each publisher's `unpublish` at the end.
const UNPUBLISH_BOUND: Duration = Duration::from_secs(5);
/// The receive counters count as settled once unchanged this long, or after `SETTLE_BOUND`.
const SETTLED_AFTER: Duration = Duration::from_millis(500);
const SETTLE_BOUND: Duration = Duration::from_secs(5);
const SETTLE_POLL: Duration = Duration::from_millis(100);

const SIZES: PayloadSizes = PayloadSizes {
    audio: AUDIO_PAYLOAD,
    video: VIDEO_PAYLOAD,
};

/// A participant that joined (and, a publisher, published).
struct Member {
    role: Role,
    participant: Participant,
    node: String,
    /// When it was in and, a publisher, sending.
    since: Instant,
    /// Its latest counters; kept when a reading times out.
    counts: Counts,
}

/// The end of one join task.
struct JoinReport {
    join_time: Option<Duration>,
    result: Result<Member, String>,
}

/// Runs the load described by `c` and returns its summary. Progress goes to stderr.
pub async fn run(c: LoadConfig) -> anyhow::Result<Summary> {
    let plan = seats(&c);
    let planned = plan.len() as u32;
    let participant_config = ParticipantConfig {
        client: ClientConfig {
            bind_ip: c.bind_ip,
            ice_check_interval: Some(Duration::from_millis(50)),
            ..ClientConfig::default()
        },
        // A load test counts what happens: a participant cut off is reported, not revived.
        recovery: RecoveryPolicy {
            enabled: false,
            ..RecoveryPolicy::default()
        },
        region: None,
    };
    let opts = PublishOpts {
        audio: c.audio,
        video: c.video,
        video_pps: c.video_pps,
        audio_pps: AUDIO_PPS,
        video_payload: VIDEO_PAYLOAD,
        audio_payload: AUDIO_PAYLOAD,
        ..PublishOpts::default()
    };
    let ttl = c.duration + Duration::from_secs(600);
    let started = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let deadline = start + c.duration;
    let mut joins = JoinSet::new();
    for seat in plan {
        joins.spawn(join_one(
            seat,
            start,
            c.secret.clone(),
            ttl,
            participant_config.clone(),
            opts.clone(),
            started.clone(),
        ));
    }

    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "chaos load: {} participants in {} room(s) over {} URL(s) for {}; ctrl-c ends early",
        planned,
        c.rooms,
        c.urls.len(),
        humantime::format_duration(c.duration)
    );
    let mut board = Board::new()?;
    let mut tick = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (mut last_at, mut last_total) = (start, Counts::default());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let interrupted = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break false,
            _ = &mut ctrl_c => break true,
            Some(done) = joins.join_next(), if !joins.is_empty() => {
                if let Ok(report) = done {
                    board.record(report);
                }
            }
            _ = tick.tick() => {
                let total = board.read_counts().await;
                let now = Instant::now();
                let progress = Progress {
                    elapsed: now - start,
                    planned,
                    joined: board.members.len() as u32,
                    failed: board.failed(),
                    dropped: board.dropped(),
                    publishers: board.count(Role::Publisher),
                    subscribers: board.count(Role::Subscriber),
                    rates: Rates::between(&total, &last_total, now - last_at),
                };
                (last_at, last_total) = (now, total);
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(progress.render(tty).as_bytes());
                let _ = err.flush();
            }
        }
    };
    let stop = Instant::now();
    if tty {
        eprintln!();
    }
    eprintln!(
        "chaos load: {}; publishers stop, counters settle, everyone leaves",
        if interrupted {
            "interrupted"
        } else {
            "time is up"
        }
    );

    // Joins not yet done when the run ends are abandoned; those that completed still count
    // (and leave with the others).
    joins.abort_all();
    while let Some(done) = joins.join_next().await {
        if let Ok(report) = done {
            board.record(report);
        }
    }
    let attempted = started.load(Ordering::Relaxed);
    let reported = board.members.len() as u32 + board.failed();
    if attempted > reported {
        board.errors.insert(
            "cancelled: the run ended during the join".into(),
            attempted - reported,
        );
    }

    board.stop_publishers().await;
    board.settle().await;
    board.read_counts().await;
    let outcomes = board.outcomes(stop).await;
    let latency = board.latency();
    Participant::leave_all(board.members.iter().map(|m| &m.participant)).await;

    Ok(Summary::build(
        &c,
        Measured {
            elapsed: stop - start,
            interrupted,
            attempted,
            join_times: board.join_times,
            errors: board.errors,
            outcomes,
            latency,
        },
    ))
}

/// Waits for the seat's turn, joins, and publishes if it is a publisher.
async fn join_one(
    seat: Seat,
    start: Instant,
    secret: String,
    ttl: Duration,
    config: ParticipantConfig,
    opts: PublishOpts,
    started: Arc<AtomicU32>,
) -> JoinReport {
    tokio::time::sleep_until(start + seat.at).await;
    started.fetch_add(1, Ordering::Relaxed);
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = match seat.claims(now_unix, ttl.as_secs()) {
        Ok(c) => c,
        Err(e) => {
            return JoinReport {
                join_time: None,
                result: Err(format!("token: {e}")),
            }
        }
    };
    let tokens = mint_tokens(&secret, claims, ttl);
    let began = Instant::now();
    let participant = match Participant::join(&seat.url, &seat.room, tokens, config).await {
        Ok(p) => p,
        Err(e) => {
            return JoinReport {
                join_time: None,
                result: Err(format!("join: {e}")),
            }
        }
    };
    let join_time = began.elapsed();
    if seat.role == Role::Publisher {
        if let Err(e) = participant.publish(opts).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), participant.leave()).await;
            return JoinReport {
                join_time: Some(join_time),
                result: Err(format!("publish: {e}")),
            };
        }
    }
    let node = participant.joined().node.to_string();
    JoinReport {
        join_time: Some(join_time),
        result: Ok(Member {
            role: seat.role,
            participant,
            node,
            since: Instant::now(),
            counts: Counts::default(),
        }),
    }
}

/// The run's participants and what is known of them.
struct Board {
    members: Vec<Member>,
    /// Join times in µs.
    join_times: Histogram<u64>,
    errors: BTreeMap<String, u32>,
}

impl Board {
    fn new() -> anyhow::Result<Board> {
        Ok(Board {
            members: Vec::new(),
            join_times: Histogram::new(3)?,
            errors: BTreeMap::new(),
        })
    }

    fn record(&mut self, report: JoinReport) {
        if let Some(t) = report.join_time {
            let us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1);
            // An auto-resizing histogram takes any value.
            let _ = self.join_times.record(us);
        }
        match report.result {
            Ok(m) => self.members.push(m),
            Err(e) => *self.errors.entry(e).or_insert(0) += 1,
        }
    }

    fn failed(&self) -> u32 {
        self.errors.values().sum()
    }

    fn dropped(&self) -> u32 {
        self.members.iter().filter(|m| is_dropped(m)).count() as u32
    }

    fn count(&self, role: Role) -> u32 {
        self.members.iter().filter(|m| m.role == role).count() as u32
    }

    /// Reads every member's counters (a publisher's within [`READ_BOUND`], else its last
    /// reading stands) and returns their sum.
    async fn read_counts(&mut self) -> Counts {
        let readings = join_all(self.members.iter().map(|m| async move {
            let sent = match m.role {
                Role::Publisher => tokio::time::timeout(READ_BOUND, m.participant.sent_stats())
                    .await
                    .ok()?,
                Role::Subscriber => Vec::new(),
            };
            Some(Counts::from_stats(
                &sent,
                &m.participant.track_stats(),
                SIZES,
            ))
        }))
        .await;
        let mut total = Counts::default();
        for (m, reading) in self.members.iter_mut().zip(readings) {
            if let Some(c) = reading {
                m.counts = c;
            }
            total.add(&m.counts);
        }
        total
    }

    /// Every publisher stops sending (and the node ends its tracks), so that what was sent
    /// is final and the subscribers can receive all of it.
    async fn stop_publishers(&self) {
        join_all(
            self.members
                .iter()
                .filter(|m| m.role == Role::Publisher && !is_dropped(m))
                .map(|m| tokio::time::timeout(UNPUBLISH_BOUND, m.participant.unpublish())),
        )
        .await;
    }

    /// Waits until the subscribers' receive counters stop moving (bounded).
    async fn settle(&self) {
        let received = || -> u64 {
            self.members
                .iter()
                .flat_map(|m| m.participant.track_stats())
                .map(|t| t.received)
                .sum()
        };
        let began = Instant::now();
        let (mut last, mut still_since) = (received(), Instant::now());
        while began.elapsed() < SETTLE_BOUND && still_since.elapsed() < SETTLED_AFTER {
            tokio::time::sleep(SETTLE_POLL).await;
            let now = received();
            if now != last {
                (last, still_since) = (now, Instant::now());
            }
        }
    }

    async fn outcomes(&self, stop: Instant) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let tracks_published = match m.role {
                Role::Publisher => tokio::time::timeout(READ_BOUND, m.participant.sent_stats())
                    .await
                    .map_or(0, |s| s.len() as u32),
                Role::Subscriber => 0,
            };
            out.push(Outcome {
                role: m.role,
                node: m.node.clone(),
                counts: m.counts,
                active: stop.saturating_duration_since(m.since),
                tracks_published,
                tracks_received: m.participant.track_stats().len() as u32,
                dropped: is_dropped(m),
            });
        }
        out
    }

    /// Every received packet's latency, all members and tracks pooled.
    fn latency(&self) -> LatencyHistogram {
        let mut all = LatencyHistogram::default();
        for m in &self.members {
            for (_, _, h) in m.participant.client().latency_histograms() {
                all.merge(&h);
            }
        }
        all
    }
}

fn is_dropped(m: &Member) -> bool {
    matches!(m.participant.status(), Status::Ended(_))
}
