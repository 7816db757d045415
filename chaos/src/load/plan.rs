//! Who joins which room, through which URL, when, and with which rights. Pure.

use super::config::LoadConfig;
use protocol::token::Claims;
use protocol::{RoomId, UserId};
use std::time::Duration;

/// What a participant does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes the configured tracks; its token forbids subscribing.
    Publisher,
    /// Receives every track of the room; its token forbids publishing.
    Subscriber,
}

/// One participant of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    pub room: String,
    pub user: String,
    pub role: Role,
    pub url: String,
    /// When its join starts, from the start of the run.
    pub at: Duration,
}

impl Seat {
    /// Its join token's claims, valid for `ttl_secs` from `now_unix`.
    pub fn claims(&self, now_unix: u64, ttl_secs: u64) -> Result<Claims, String> {
        let room = RoomId::new(self.room.as_str()).map_err(|e| format!("{}: {e}", self.room))?;
        let user = UserId::new(self.user.as_str()).map_err(|e| format!("{}: {e}", self.user))?;
        let mut claims = Claims::new(room, user, now_unix, ttl_secs);
        claims.can_publish = self.role == Role::Publisher;
        claims.can_subscribe = self.role == Role::Subscriber;
        Ok(claims)
    }
}

/// Every participant of the run in join order: all rooms' publishers first (so that a
/// subscriber's first offer already holds the room's tracks), then the subscribers. Seat `k`
/// of room `r` goes to URL `(r + k) mod urls`: every room is spread over all the URLs.
pub fn seats(c: &LoadConfig) -> Vec<Seat> {
    let n = c.urls.len().max(1);
    let mut out = Vec::with_capacity(c.participants() as usize);
    for role in [Role::Publisher, Role::Subscriber] {
        for r in 0..c.rooms {
            let room = format!("{}-{}", c.room_base, r + 1);
            let (first, count) = match role {
                Role::Publisher => (0, c.publishers),
                Role::Subscriber => (c.publishers, c.subscribers),
            };
            for k in first..first + count {
                let tag = match role {
                    Role::Publisher => "pub",
                    Role::Subscriber => "sub",
                };
                let user = format!("{room}-{tag}-{}", k - first + 1);
                let url = c.urls[(r as usize + k as usize) % n].clone();
                let at = c.join_interval.mul_f64(out.len() as f64);
                out.push(Seat {
                    room: room.clone(),
                    user,
                    role,
                    url,
                    at,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::config::LoadArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn config(args: &[&str]) -> LoadConfig {
        let argv = std::iter::once("x").chain(args.iter().copied());
        Cli::parse_from(argv)
            .args
            .validate_with_run_id("r1")
            .unwrap()
    }

    #[test]
    fn publishers_join_first_and_every_room_spans_every_url() {
        let c = config(&[
            "--url",
            "ws://a/ws",
            "--url",
            "ws://b/ws",
            "--rooms",
            "2",
            "--publishers",
            "2",
            "--subscribers",
            "3",
            "--audio",
            "--join-rate",
            "2",
        ]);
        let seats = seats(&c);
        assert_eq!(seats.len(), 10);
        let roles: Vec<Role> = seats.iter().map(|s| s.role).collect();
        assert!(roles[..4].iter().all(|r| *r == Role::Publisher));
        assert!(roles[4..].iter().all(|r| *r == Role::Subscriber));
        assert_eq!(seats[0].user, "load-r1-1-pub-1");
        assert_eq!(seats[9].user, "load-r1-2-sub-3");
        assert_eq!(seats[9].at, Duration::from_millis(4500));
        for room in ["load-r1-1", "load-r1-2"] {
            let urls = |role| {
                seats
                    .iter()
                    .filter(|s| s.room == room && s.role == role)
                    .map(|s| s.url.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
            };
            // Publishers on both nodes: media crosses the relay link both ways.
            assert_eq!(urls(Role::Publisher).len(), 2, "{room}");
            assert_eq!(urls(Role::Subscriber).len(), 2, "{room}");
        }
        let users: std::collections::BTreeSet<_> = seats.iter().map(|s| &s.user).collect();
        assert_eq!(users.len(), 10, "user ids are unique");
    }

    #[test]
    fn tokens_give_each_role_only_its_right() {
        let c = config(&["--audio"]);
        let seats = seats(&c);
        let p = seats[0].claims(1000, 60).unwrap();
        assert!(p.can_publish && !p.can_subscribe);
        assert_eq!(p.exp, 1060);
        let s = seats[1].claims(1000, 60).unwrap();
        assert!(!s.can_publish && s.can_subscribe);
        assert_eq!(s.room.as_str(), "load-r1-1");
    }
}
