//! When a [`super::Participant`] tries again after a fault (PROTOCOL.md, "What a client
//! should do when something breaks"): a pure schedule, the random draw passed in.

use std::time::Duration;

/// How a participant recovers. The default is PROTOCOL.md's: at once, then after 0.25, 0.5,
/// 1, 2 and 5 s, then every 5 s, each wait stretched by up to 50 %, for at most 60 s.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryPolicy {
    /// Off: the first fault ends the supervision ([`super::EndReason::NotRecovering`]).
    pub enabled: bool,
    /// Bound on one recovery, from the fault being noticed to `joined` and the republish;
    /// past it the participant gives up ([`super::EndReason::GaveUp`]).
    pub deadline: Duration,
    /// Wait before each attempt; the last one repeats.
    pub delays: Vec<Duration>,
    /// Each wait is stretched by a random fraction of itself in `[0, jitter]`, so clients
    /// cut off together do not come back together.
    pub jitter: f64,
    /// How long after `joined` the first packet of every other participant is watched for
    /// (the [`super::Recovery::media_at`] timestamps); waits on media are not bounded by it.
    pub media_watch: Duration,
    /// A node that sends nothing this long (it is pinged every third of it) is taken for
    /// gone: a half-open socket or a frozen process ([`super::Cause::Silent`]). `None`:
    /// only a closed socket, `reconnect` or a failed peer connection start a recovery.
    pub silence: Option<Duration>,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            enabled: true,
            deadline: Duration::from_secs(60),
            delays: [0, 250, 500, 1000, 2000, 5000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            jitter: 0.5,
            media_watch: Duration::from_secs(60),
            silence: Some(Duration::from_secs(15)),
        }
    }
}

impl RecoveryPolicy {
    /// The wait before attempt `attempt` (0 is the first), given a uniform `draw` in [0, 1).
    pub fn delay(&self, attempt: usize, draw: f64) -> Duration {
        let Some(base) = self.delays.get(attempt).or(self.delays.last()).copied() else {
            return Duration::ZERO;
        };
        let stretch = (self.jitter * draw).clamp(0.0, 1.0);
        base.mul_f64(1.0 + if stretch.is_nan() { 0.0 } else { stretch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_schedule_is_the_protocols_then_every_five_seconds() {
        let p = RecoveryPolicy::default();
        let waits: Vec<Duration> = (0..8).map(|i| p.delay(i, 0.0)).collect();
        assert_eq!(
            waits,
            [0, 250, 500, 1000, 2000, 5000, 5000, 5000].map(ms).to_vec()
        );
    }

    #[test]
    fn jitter_stretches_by_at_most_half() {
        let p = RecoveryPolicy::default();
        assert_eq!(p.delay(0, 0.99), Duration::ZERO, "the first try is at once");
        assert_eq!(p.delay(1, 0.5), ms(312) + Duration::from_micros(500));
        for draw in [0.0, 0.3, 0.999_999] {
            for attempt in 1..10 {
                let d = p.delay(attempt, draw);
                let base = p.delay(attempt, 0.0);
                assert!(
                    d >= base && d <= base.mul_f64(1.5),
                    "{attempt} {draw}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn odd_policies_still_give_a_wait() {
        let empty = RecoveryPolicy {
            delays: Vec::new(),
            ..RecoveryPolicy::default()
        };
        assert_eq!(empty.delay(3, 0.5), Duration::ZERO);
        let wild = RecoveryPolicy {
            jitter: f64::NAN,
            ..RecoveryPolicy::default()
        };
        assert_eq!(wild.delay(1, 0.5), ms(250));
        let huge = RecoveryPolicy {
            jitter: 10.0,
            ..RecoveryPolicy::default()
        };
        assert_eq!(huge.delay(1, 0.9), ms(500));
    }
}
