//! Join tokens: JWT, HS256, signed with the cluster's API secret (PROTOCOL.md `join`); and
//! resume tokens, signed the same way and self-contained, so any node of the cluster can
//! restore a participant from the token alone (PROTOCOL.md `resume`).
//!
//! Verification takes the current time as an argument so that it stays pure and testable.
//! Both kinds are checked with [`LEEWAY_SECS`] of clock skew either way: a token is good from
//! `nbf − leeway` (when it has an `nbf`) until `exp + leeway`.

use crate::ids::{NodeId, RoomId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}

/// Clock skew tolerated between whoever minted a token and the node checking it.
pub const LEEWAY_SECS: u64 = 10;

/// The shortest API secret a production node accepts (HS256 wants a key as long as its
/// hash, 32 bytes; `--dev-tokens` accepts any).
pub const MIN_SECRET_LEN: usize = 32;

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
    /// Not before, seconds since the Unix epoch (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Free text about the participant for the application (room API, webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// May join the room even when it is private and does not name the user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admit_private: bool,
    /// Settings the room takes when this join opens it (ignored when it has settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_settings: Option<crate::room_api::RoomSettings>,
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
            nbf: None,
            metadata: None,
            admit_private: false,
            room_settings: None,
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
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token is for another room")]
    WrongRoom,
}

/// Signs `claims` with `secret` (HS256).
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    sign(secret, claims)
}

fn sign<T: Serialize>(secret: &[u8], claims: &T) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    // HS256 with serializable claims cannot fail to encode.
    .unwrap_or_default()
}

/// The `typ` claim of a resume token; a join token has none.
const RESUME_TYP: &str = "resume";

/// The claims of a resume token: who the participant is, in which room, with which grants,
/// on which node it was when the token was issued, until when the token is good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeClaims {
    /// Always `resume`: a resume token is never accepted as a join token, nor the reverse.
    pub typ: String,
    pub sub: UserId,
    pub room: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub can_publish: bool,
    pub can_subscribe: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admit_private: bool,
    /// The node hosting the participant when the token was issued; it restores the
    /// participant while it lives, any node restores it when it is gone.
    pub node: NodeId,
    /// A random value per participant incarnation: the hosting node only hands its
    /// participant to a socket presenting the token it issued for that incarnation.
    pub nonce: String,
    pub exp: u64,
}

impl ResumeClaims {
    /// A resume token's claims for a participant joined with `claims`, hosted on `node`.
    pub fn new(claims: &Claims, node: NodeId, nonce: String, now_unix: u64, ttl_secs: u64) -> Self {
        ResumeClaims {
            typ: RESUME_TYP.into(),
            sub: claims.sub.clone(),
            room: claims.room.clone(),
            name: claims.name.clone(),
            can_publish: claims.can_publish,
            can_subscribe: claims.can_subscribe,
            metadata: claims.metadata.clone(),
            admit_private: claims.admit_private,
            node,
            nonce,
            exp: now_unix.saturating_add(ttl_secs),
        }
    }

    /// The join claims this token stands for, to join the participant afresh elsewhere.
    pub fn join_claims(&self) -> Claims {
        Claims {
            sub: self.sub.clone(),
            room: self.room.clone(),
            name: self.name.clone(),
            can_publish: self.can_publish,
            can_subscribe: self.can_subscribe,
            exp: self.exp,
            nbf: None,
            metadata: self.metadata.clone(),
            admit_private: self.admit_private,
            room_settings: None,
        }
    }
}

/// Signs resume claims with `secret` (HS256).
pub fn mint_resume(secret: &[u8], claims: &ResumeClaims) -> String {
    sign(secret, claims)
}

fn validation() -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry and nbf are checked here against the caller's clock (`check_time`).
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    validation
}

/// `exp` and `nbf` against `now_unix`, with [`LEEWAY_SECS`] either way.
fn check_time(exp: u64, nbf: Option<u64>, now_unix: u64) -> Result<(), TokenError> {
    if exp.saturating_add(LEEWAY_SECS) <= now_unix {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now_unix.saturating_add(LEEWAY_SECS)) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// Checks a resume token's signature, type and expiry.
pub fn verify_resume(
    secret: &[u8],
    token: &str,
    now_unix: u64,
) -> Result<ResumeClaims, TokenError> {
    let claims = jsonwebtoken::decode::<ResumeClaims>(
        token,
        &DecodingKey::from_secret(secret),
        &validation(),
    )
    .map_err(|_| TokenError::Invalid)?
    .claims;
    if claims.typ != RESUME_TYP {
        return Err(TokenError::Invalid);
    }
    check_time(claims.exp, None, now_unix)?;
    Ok(claims)
}

/// A join token's claims and, to tell a resume token apart, its `typ`.
#[derive(Deserialize)]
struct JoinToken {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    typ: Option<String>,
}

/// Checks signature, algorithm, expiry (against `now_unix`) and the room.
pub fn verify(
    secret: &[u8],
    token: &str,
    room: &RoomId,
    now_unix: u64,
) -> Result<Claims, TokenError> {
    let data =
        jsonwebtoken::decode::<JoinToken>(token, &DecodingKey::from_secret(secret), &validation())
            .map_err(|_| TokenError::Invalid)?;
    if data.claims.typ.is_some() {
        return Err(TokenError::Invalid);
    }
    let claims = data.claims.claims;
    check_time(claims.exp, claims.nbf, now_unix)?;
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
        // exp is NOW + 60; within the leeway it still passes, past it it does not.
        assert!(verify(b"secret", &t, &room, NOW + 60 + LEEWAY_SECS - 1).is_ok());
        assert_eq!(
            verify(b"secret", &t, &room, NOW + 60 + LEEWAY_SECS),
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

    fn resume_claims() -> ResumeClaims {
        let mut c = claims();
        c.name = Some("Alice".into());
        c.can_publish = false;
        ResumeClaims::new(&c, NodeId::new("n1").unwrap(), "x1".into(), NOW, 600)
    }

    #[test]
    fn a_resume_token_carries_the_participant_and_verifies_anywhere() {
        let rc = resume_claims();
        let t = mint_resume(b"secret", &rc);
        let back = verify_resume(b"secret", &t, NOW + 599).unwrap();
        assert_eq!(back, rc);
        let join = back.join_claims();
        assert_eq!(join.sub.as_str(), "alice");
        assert_eq!(join.name.as_deref(), Some("Alice"));
        assert!(!join.can_publish && join.can_subscribe);
    }

    #[test]
    fn resume_and_join_tokens_are_not_interchangeable() {
        let room = RoomId::new("r1").unwrap();
        let resume = mint_resume(b"secret", &resume_claims());
        assert_eq!(
            verify(b"secret", &resume, &room, NOW),
            Err(TokenError::Invalid)
        );
        let join = mint(b"secret", &claims());
        assert_eq!(
            verify_resume(b"secret", &join, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn forged_and_expired_resume_tokens_are_refused() {
        let t = mint_resume(b"secret", &resume_claims());
        assert_eq!(verify_resume(b"other", &t, NOW), Err(TokenError::Invalid));
        assert_eq!(
            verify_resume(b"secret", &t, NOW + 600 + LEEWAY_SECS),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_resume(b"secret", "r.n.x", NOW),
            Err(TokenError::Invalid)
        );
        // A valid signature over edited claims is impossible; an edited body breaks it.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged_body = {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let mut c = resume_claims();
            c.sub = UserId::new("mallory").unwrap();
            b64.encode(serde_json::to_vec(&c).unwrap())
        };
        parts[1] = &forged_body;
        assert_eq!(
            verify_resume(b"secret", &parts.join("."), NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let room = RoomId::new("r1").unwrap();
        let mut c = claims();
        c.nbf = Some(NOW + 30);
        let t = mint(b"secret", &c);
        assert_eq!(
            verify(b"secret", &t, &room, NOW),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            verify(b"secret", &t, &room, NOW + 30 - LEEWAY_SECS - 1),
            Err(TokenError::NotYetValid)
        );
        assert!(verify(b"secret", &t, &room, NOW + 30 - LEEWAY_SECS).is_ok());
        assert!(verify(b"secret", &t, &room, NOW + 30).is_ok());
    }

    proptest::proptest! {
        /// A token verifies exactly while `now` is within [nbf − leeway, exp + leeway).
        #[test]
        fn validity_window(exp_in in 0u64..1000, nbf_in in proptest::option::of(0u64..1000), at in 0u64..2000) {
            let room = RoomId::new("r1").unwrap();
            let mut c = claims();
            c.exp = NOW + exp_in;
            c.nbf = nbf_in.map(|n| NOW + n);
            let t = mint(b"secret", &c);
            let now = NOW - 50 + at;
            let expected = if c.exp + LEEWAY_SECS <= now {
                Err(TokenError::Expired)
            } else if c.nbf.is_some_and(|n| n > now + LEEWAY_SECS) {
                Err(TokenError::NotYetValid)
            } else {
                Ok(c.clone())
            };
            proptest::prop_assert_eq!(verify(b"secret", &t, &room, now), expected);
        }
    }

    #[test]
    fn permissions_default_to_true_when_absent() {
        let json = r#"{"sub":"u","room":"r","exp":5}"#;
        let c: Claims = serde_json::from_str(json).unwrap();
        assert!(c.can_publish && c.can_subscribe);
        assert_eq!(c.display_name(), "u");
    }
}
