//! `node token` and `node api-token`: the tokens an application's scripts mint.
//!
//! - `node token`: a join token (PROTOCOL.md `join`) with grants, lifetime, participant
//!   metadata, the private-room grant, and the settings the room takes if this join opens it.
//! - `node api-token`: a call token for the coordinators' room API (README "Room API"):
//!   short-lived (at most 600 s), `iss` = the API key, with the grants asked for.
//!
//! Both print the token alone on stdout (`--json` prints it with its claims), so a script
//! can write `TOKEN=$(node token ...)`.

use clap::Args;
use protocol::room_api::{self, ApiClaims, ApiGrants, RoomSettings};
use protocol::token::{self, Claims};
use protocol::{RoomId, UserId};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `node token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    #[arg(long)]
    room: String,
    #[arg(long)]
    user: String,
    /// Display name (defaults to the user id).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, env = "NODE_API_SECRET", hide_env_values = true)]
    api_secret: String,
    /// Lifetime: `3600`, `90s`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Not valid before this long from now (`nbf`).
    #[arg(long, value_parser = parse_duration)]
    not_before: Option<Duration>,
    /// A listener: may not publish.
    #[arg(long)]
    no_publish: bool,
    /// May not subscribe.
    #[arg(long)]
    no_subscribe: bool,
    /// Free text about the participant, shown by the room API and in webhooks.
    #[arg(long)]
    metadata: Option<String>,
    /// May join the room even if it is private and does not name the user.
    #[arg(long)]
    admit_private: bool,
    /// Settings the room takes if this join opens it: participant limit (0 = none).
    #[arg(long)]
    room_max_participants: Option<u32>,
    /// ... how long it lives on empty.
    #[arg(long, value_parser = parse_duration)]
    room_empty_timeout: Option<Duration>,
    /// ... private: only `--room-allow` users and `--admit-private` tokens join.
    #[arg(long)]
    room_private: bool,
    /// ... a user a private room admits (repeat, or comma-separate).
    #[arg(long, value_delimiter = ',')]
    room_allow: Vec<String>,
    /// ... metadata for the application.
    #[arg(long)]
    room_metadata: Option<String>,
    /// Print `{"token": ..., "claims": ...}` instead of the token alone.
    #[arg(long)]
    json: bool,
}

/// `node api-token`. Without any grant flag the token has every grant.
#[derive(Args, Debug)]
pub struct ApiTokenArgs {
    /// The API key the coordinators are configured with (`--api-key`).
    #[arg(long, env = "COORD_API_KEY")]
    api_key: String,
    #[arg(long, env = "COORD_API_SECRET", hide_env_values = true)]
    api_secret: String,
    /// Lifetime, at most 600 s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    ttl: Duration,
    /// May create rooms.
    #[arg(long)]
    create: bool,
    /// May list rooms.
    #[arg(long)]
    list: bool,
    /// May administer rooms (read, close, act on participants, send data).
    #[arg(long)]
    admin: bool,
    /// With `--admin`: only this room.
    #[arg(long)]
    room: Option<String>,
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

fn now_unix() -> anyhow::Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

impl TokenArgs {
    /// The claims these flags ask for, at `now` (unix seconds).
    pub fn claims(&self, now: u64) -> anyhow::Result<Claims> {
        let mut claims = Claims::new(
            RoomId::new(self.room.as_str())?,
            UserId::new(self.user.as_str())?,
            now,
            self.ttl.as_secs(),
        );
        claims.name = self.name.clone();
        claims.can_publish = !self.no_publish;
        claims.can_subscribe = !self.no_subscribe;
        claims.nbf = self.not_before.map(|d| now.saturating_add(d.as_secs()));
        claims.metadata = self.metadata.clone();
        claims.admit_private = self.admit_private;
        let wants_settings = self.room_max_participants.is_some()
            || self.room_empty_timeout.is_some()
            || self.room_private
            || !self.room_allow.is_empty()
            || self.room_metadata.is_some();
        if wants_settings {
            let settings = RoomSettings {
                max_participants: self.room_max_participants.unwrap_or(0),
                empty_timeout_secs: self
                    .room_empty_timeout
                    .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                    .unwrap_or(0),
                metadata: self.room_metadata.clone().unwrap_or_default(),
                private: self.room_private || !self.room_allow.is_empty(),
                allowed_users: self
                    .room_allow
                    .iter()
                    .map(|u| UserId::new(u.as_str()))
                    .collect::<Result<_, _>>()?,
            };
            settings.validate().map_err(anyhow::Error::msg)?;
            claims.room_settings = Some(settings);
        }
        Ok(claims)
    }

    pub fn run(&self) -> anyhow::Result<()> {
        let claims = self.claims(now_unix()?)?;
        let t = token::mint(self.api_secret.as_bytes(), &claims);
        print(&t, &claims, self.json)
    }
}

impl ApiTokenArgs {
    /// The claims these flags ask for, at `now` (unix seconds).
    pub fn claims(&self, now: u64) -> anyhow::Result<ApiClaims> {
        if self.ttl.as_secs() > room_api::MAX_CALL_TOKEN_SECS {
            anyhow::bail!(
                "--ttl is at most {} s: call tokens are minted per call",
                room_api::MAX_CALL_TOKEN_SECS
            );
        }
        let room = self.room.as_deref().map(RoomId::new).transpose()?;
        let grants = if self.create || self.list || self.admin {
            ApiGrants {
                room_create: self.create,
                room_list: self.list,
                room_admin: self.admin,
                room,
            }
        } else {
            ApiGrants {
                room,
                ..ApiGrants::all()
            }
        };
        Ok(ApiClaims::new(
            &self.api_key,
            grants,
            now,
            self.ttl.as_secs(),
        ))
    }

    pub fn run(&self) -> anyhow::Result<()> {
        let claims = self.claims(now_unix()?)?;
        let t = room_api::mint_call(self.api_secret.as_bytes(), &claims);
        print(&t, &claims, self.json)
    }
}

fn print(token: &str, claims: &impl serde::Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({ "token": token, "claims": claims })
        );
    } else {
        println!("{token}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: C,
    }
    #[derive(clap::Subcommand)]
    enum C {
        Token(TokenArgs),
        ApiToken(ApiTokenArgs),
    }

    fn parse(args: &[&str]) -> C {
        T::try_parse_from(std::iter::once("node").chain(args.iter().copied()))
            .unwrap()
            .c
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_join_token_carries_grants_metadata_and_room_settings() {
        let C::Token(args) = parse(&[
            "token",
            "--room",
            "r",
            "--user",
            "u",
            "--api-secret",
            "s",
            "--ttl",
            "2h",
            "--no-publish",
            "--metadata",
            "m",
            "--room-max-participants",
            "3",
            "--room-allow",
            "a,b",
            "--room-empty-timeout",
            "90s",
        ]) else {
            panic!("not a token command")
        };
        let c = args.claims(NOW).unwrap();
        assert_eq!(c.exp, NOW + 7200);
        assert!(!c.can_publish && c.can_subscribe && !c.admit_private);
        assert_eq!(c.metadata.as_deref(), Some("m"));
        let s = c.room_settings.unwrap();
        assert_eq!(s.max_participants, 3);
        assert_eq!(s.empty_timeout_secs, 90);
        assert!(s.private);
        assert_eq!(s.allowed_users.len(), 2);
        // It verifies as a join token for its room.
        let t = token::mint(b"s", &args.claims(NOW).unwrap());
        assert!(token::verify(b"s", &t, &RoomId::new("r").unwrap(), NOW).is_ok());
    }

    #[test]
    fn a_plain_join_token_has_no_room_settings() {
        let C::Token(args) = parse(&["token", "--room", "r", "--user", "u", "--api-secret", "s"])
        else {
            panic!("not a token command")
        };
        let c = args.claims(NOW).unwrap();
        assert!(c.room_settings.is_none() && c.can_publish && c.can_subscribe);
    }

    #[test]
    fn an_api_token_is_short_lived_and_has_the_grants_asked_for() {
        let C::ApiToken(args) = parse(&[
            "api-token",
            "--api-key",
            "k",
            "--api-secret",
            "s",
            "--admin",
            "--room",
            "r",
        ]) else {
            panic!("not an api-token command")
        };
        let c = args.claims(NOW).unwrap();
        assert!(c.grants.admin_of(&RoomId::new("r").unwrap()));
        assert!(!c.grants.admin_of(&RoomId::new("x").unwrap()));
        assert!(!c.grants.room_create && !c.grants.room_list);
        let t = room_api::mint_call(b"s", &c);
        assert!(room_api::verify_call("k", b"s", &t, NOW).is_ok());
        let C::ApiToken(all) = parse(&["api-token", "--api-key", "k", "--api-secret", "s"]) else {
            panic!("not an api-token command")
        };
        assert_eq!(all.claims(NOW).unwrap().grants, ApiGrants::all());
        let C::ApiToken(long) = parse(&[
            "api-token",
            "--api-key",
            "k",
            "--api-secret",
            "s",
            "--ttl",
            "1h",
        ]) else {
            panic!("not an api-token command")
        };
        assert!(long.claims(NOW).is_err());
    }
}
