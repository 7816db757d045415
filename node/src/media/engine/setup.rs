//! How long a connection may take to connect. `rtc` reports ICE failure, but not a DTLS
//! handshake that gave up: after its last retransmission the handshaker errors quietly and
//! the connection state stays "connecting" for ever (vendor/rtc-dtls/PATCH.md has one such
//! cause, now fixed; others would strand a connection the same way). The worker fails a
//! connection whose setup outlives its deadline, as if its state had said so.

use std::time::{Duration, Instant};

use rtc::peer_connection::state::RTCPeerConnectionState;

/// A relay link: both ends are nodes, ICE takes well under a second, and DTLS's own
/// retransmissions (7, a second apart) are over after 8 s.
pub const RELAY_SETUP_TIMEOUT: Duration = Duration::from_secs(12);
/// A client's connection: about a browser's ICE failure timeout.
pub const CLIENT_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection's setup: since when it has been connecting, if it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetupClock {
    connecting_since: Option<Instant>,
}

impl SetupClock {
    /// The connection's state changed at `now`.
    pub fn on_state(&mut self, state: RTCPeerConnectionState, now: Instant) {
        match state {
            RTCPeerConnectionState::Connecting => {
                self.connecting_since.get_or_insert(now);
            }
            _ => self.connecting_since = None,
        }
    }

    /// Whether the setup has outlived `limit` at `now`; true once, after which the clock is
    /// stopped (the connection is reported failed once).
    pub fn expired(&mut self, now: Instant, limit: Duration) -> bool {
        match self.connecting_since {
            Some(since) if now.saturating_duration_since(since) >= limit => {
                self.connecting_since = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RTCPeerConnectionState as S;

    const LIMIT: Duration = Duration::from_secs(12);

    #[test]
    fn a_connection_that_connects_in_time_never_expires() {
        let t0 = Instant::now();
        let mut c = SetupClock::default();
        c.on_state(S::Connecting, t0);
        assert!(!c.expired(t0 + Duration::from_secs(11), LIMIT));
        c.on_state(S::Connected, t0 + Duration::from_secs(11));
        assert!(!c.expired(t0 + Duration::from_secs(60), LIMIT));
    }

    #[test]
    fn a_connection_stuck_connecting_expires_once() {
        let t0 = Instant::now();
        let mut c = SetupClock::default();
        assert!(
            !c.expired(t0 + Duration::from_secs(60), LIMIT),
            "not started yet"
        );
        c.on_state(S::Connecting, t0);
        // A second "connecting" (ICE restarts its checks) does not restart the clock.
        c.on_state(S::Connecting, t0 + Duration::from_secs(5));
        assert!(!c.expired(t0 + Duration::from_secs(11), LIMIT));
        assert!(c.expired(t0 + LIMIT, LIMIT));
        assert!(
            !c.expired(t0 + Duration::from_secs(30), LIMIT),
            "reported once"
        );
    }

    #[test]
    fn a_connection_that_fails_or_closes_is_not_reported_again() {
        let t0 = Instant::now();
        for end in [S::Failed, S::Closed, S::Disconnected] {
            let mut c = SetupClock::default();
            c.on_state(S::Connecting, t0);
            c.on_state(end, t0 + Duration::from_secs(1));
            assert!(!c.expired(t0 + Duration::from_secs(60), LIMIT), "{end}");
        }
    }
}
