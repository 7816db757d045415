//! Sampling: the tick clock and the recording loop.

use super::*;

/// The sampling clock: a tick every `every` until `stop` completes (then one last tick, so
/// the samples reach the stop) or `max` ticks were given.
pub(super) struct Ticks<S: Future<Output = ()>> {
    interval: Interval,
    stop: Pin<Box<S>>,
    stopped: bool,
    given: usize,
    max: usize,
}

impl<S: Future<Output = ()>> Ticks<S> {
    pub(super) fn new(every: Duration, max: usize, stop: S) -> Self {
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticks {
            interval,
            stop: Box::pin(stop),
            stopped: false,
            given: 0,
            max,
        }
    }

    /// Waits for the next tick; `false` when sampling is over.
    pub(super) async fn next(&mut self) -> bool {
        if self.stopped || self.given >= self.max {
            return false;
        }
        tokio::select! {
            biased;
            () = self.stop.as_mut() => self.stopped = true,
            _ = self.interval.tick() => {}
        }
        self.given += 1;
        true
    }
}

/// Reads every participant's counters every `every` (the first at once) until `stop`
/// completes — then once more — or `max_samples` samples were taken; times are since
/// `start`. Each sample is bounded by [`READ_BOUND`] plus the cost of copying the
/// statistics, so the whole is bounded by about `max_samples × (every + READ_BOUND)`.
pub async fn record(
    rooms: &[Room],
    start: Instant,
    every: Duration,
    max_samples: usize,
    stop: impl Future<Output = ()>,
) -> Samples {
    let mut out = Samples {
        rooms: rooms
            .iter()
            .map(|r| RoomSamples {
                room: r.id.to_string(),
                members: r.ids.iter().map(|id| id.to_string()).collect(),
                samples: Vec::new(),
            })
            .collect(),
    };
    // Per room: per member its sent totals, per (receiver, publisher) the received ones.
    let mut sent: Vec<Vec<Totals>> = rooms
        .iter()
        .map(|r| vec![Totals::default(); r.members.len()])
        .collect();
    let mut received: Vec<Vec<Vec<Totals>>> = rooms
        .iter()
        .map(|r| vec![vec![Totals::default(); r.members.len()]; r.members.len()])
        .collect();
    let mut ticks = Ticks::new(every, max_samples, stop);
    while ticks.next().await {
        let reads = rooms.iter().map(|r| {
            futures::future::join_all(r.members.iter().map(|p| async move {
                tokio::time::timeout(READ_BOUND, p.sent_stats()).await.ok()
            }))
        });
        let reads: Vec<Vec<Option<Vec<SentStats>>>> = futures::future::join_all(reads).await;
        let at = start.elapsed();
        for (r, room) in rooms.iter().enumerate() {
            let sent_now: Vec<u64> = reads[r]
                .iter()
                .zip(sent[r].iter_mut())
                .map(|(read, totals)| match read {
                    Some(tracks) => {
                        totals.update(tracks.iter().map(|t| (t.local_track_id.as_str(), t.sent)))
                    }
                    None => totals.total(),
                })
                .collect();
            let received_now: Vec<Vec<u64>> = room
                .members
                .iter()
                .zip(received[r].iter_mut())
                .enumerate()
                .map(|(i, (p, row))| {
                    let stats = p.track_stats();
                    room.ids
                        .iter()
                        .zip(row.iter_mut())
                        .enumerate()
                        .map(|(j, (publisher, totals))| {
                            if i == j {
                                return 0;
                            }
                            totals.update(received_by_track(&stats, publisher.as_str()))
                        })
                        .collect()
                })
                .collect();
            out.rooms[r].samples.push(Sample {
                at,
                sent: sent_now,
                received: received_now,
            });
        }
    }
    out
}

/// A sample cap for a fault phase of `phase` sampled every `every`: twice the phase plus
/// 10 minutes (repairs can run over the schedule).
pub fn sample_cap(phase: Duration, every: Duration) -> usize {
    let span = phase.saturating_mul(2) + Duration::from_secs(600);
    (span.as_secs_f64() / every.max(Duration::from_millis(1)).as_secs_f64()).ceil() as usize
}

/// Per track of `publisher`: its distinct packets.
fn received_by_track<'a>(
    stats: &'a [TrackStats],
    publisher: &'a str,
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    stats
        .iter()
        .filter(move |t| t.publisher == publisher)
        .map(|t| (t.track_id.as_str(), t.received.saturating_sub(t.duplicates)))
}
