//! Join tokens: JWT, HS256, signed with the cluster's API secret (PROTOCOL.md `join`).
//!
//! Verification takes the current time as an argument so that it stays pure and testable.

use crate::ids::{RoomId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, which is also the participant id.
    pub sub: UserId,
    pub room: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub can_publish: bool,
    #[serde(default = "yes")]
    pub can_subscribe: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    /// Claims for `user` in `room`, valid for `ttl_secs` from `now_unix`, with every permission.
    pub fn new(room: RoomId, user: UserId, now_unix: u64, ttl_secs: u64) -> Self {
        Claims {
            sub: user,
            room,
            name: None,
            can_publish: true,
            can_subscribe: true,
            exp: now_unix.saturating_add(ttl_secs),
        }
    }

    /// The display name, defaulting to the user id.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.sub.to_string())
    }
}

/// Why a token was refused. `WrongRoom` is `forbidden`; the others are `unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed or its signature is invalid")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token is for another room")]
    WrongRoom,
}

/// Signs `claims` with `secret` (HS256).
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    // HS256 with serializable claims cannot fail to encode.
    .unwrap_or_default()
}

/// Checks signature, algorithm, expiry (against `now_unix`) and the room.
pub fn verify(
    secret: &[u8],
    token: &str,
    room: &RoomId,
    now_unix: u64,
) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the caller's clock, without leeway.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|_| TokenError::Invalid)?;
    let claims = data.claims;
    if claims.exp <= now_unix {
        return Err(TokenError::Expired);
    }
    if &claims.room != room {
        return Err(TokenError::WrongRoom);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn claims() -> Claims {
        Claims::new(
            RoomId::new("r1").unwrap(),
            UserId::new("alice").unwrap(),
            NOW,
            60,
        )
    }

    #[test]
    fn a_minted_token_verifies() {
        let t = mint(b"secret", &claims());
        let c = verify(b"secret", &t, &RoomId::new("r1").unwrap(), NOW).unwrap();
        assert_eq!(c, claims());
        assert!(c.can_publish && c.can_subscribe);
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let room = RoomId::new("r1").unwrap();
        let t = mint(b"secret", &claims());
        assert_eq!(verify(b"other", &t, &room, NOW), Err(TokenError::Invalid));
        assert_eq!(
            verify(b"secret", &t, &room, NOW + 60),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(b"secret", &t, &RoomId::new("r2").unwrap(), NOW),
            Err(TokenError::WrongRoom)
        );
        assert_eq!(
            verify(b"secret", "a.b.c", &room, NOW),
            Err(TokenError::Invalid)
        );
        assert_eq!(verify(b"secret", "", &room, NOW), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_is_refused() {
        // header {"alg":"none","typ":"JWT"}, same claims, empty signature
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(serde_json::to_vec(&claims()).unwrap());
        let t = format!("{header}.{body}.");
        assert_eq!(
            verify(b"secret", &t, &RoomId::new("r1").unwrap(), NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn permissions_default_to_true_when_absent() {
        let json = r#"{"sub":"u","room":"r","exp":5}"#;
        let c: Claims = serde_json::from_str(json).unwrap();
        assert!(c.can_publish && c.can_subscribe);
        assert_eq!(c.display_name(), "u");
    }
}
