//! Backoff delays: exponential (doubling), from a first delay up to a cap, from `backon`.
//! The NATS client's reconnect policy asks for the delay of attempt N; a retry loop walks
//! the delays in turn.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Attempts past this all wait the cap (which doubling reaches long before).
const MAX_DOUBLINGS: usize = 32;

/// The delays in turn: `first`, twice that, … up to `cap`, for ever.
pub fn delays(first: Duration, cap: Duration) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(cap)
        .without_max_times()
        .build()
}

/// The delay before reconnect attempt `attempt` (1 for the first; 0 is taken as 1).
pub fn delay(attempt: usize, first: Duration, cap: Duration) -> Duration {
    let index = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
    delays(first, cap).nth(index).unwrap_or(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `backon` doubles in `f32`: 200.000003 ms. Whole milliseconds are what matter.
    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let got: Vec<_> = delays(100 * MS, 1000 * MS).take(6).map(ms).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_delay_of_an_attempt() {
        assert_eq!(ms(delay(0, 50 * MS, 1000 * MS)), 50);
        assert_eq!(ms(delay(1, 50 * MS, 1000 * MS)), 50);
        assert_eq!(ms(delay(3, 50 * MS, 1000 * MS)), 200);
        assert_eq!(delay(50, 50 * MS, 1000 * MS), 1000 * MS);
        assert_eq!(delay(usize::MAX, 50 * MS, 1000 * MS), 1000 * MS);
    }
}
