//! Call tokens: `Authorization: Bearer <jwt>` checked with the configured API key and
//! secret ([`protocol::room_api::verify_call`]).

use super::Fail;
use crate::Shared;
use actix_web::HttpRequest;
use protocol::room_api::{verify_call, ApiGrants};
use protocol::ErrorCode;

/// The grants of the request's call token; 503 without a configured secret, 401 (with the
/// reason) for a missing or refused token.
pub(crate) fn authorize(req: &HttpRequest, shared: &Shared) -> Result<ApiGrants, Fail> {
    let header = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or_default());
    check_token(
        &shared.config.api_key,
        shared.config.api_secret.as_deref(),
        header,
        now_unix(),
    )
}

fn now_unix() -> u64 {
    crate::now_ms() / 1000
}

/// [`authorize`] without the request: `header` is the `Authorization` value, if any.
pub fn check_token(
    key: &str,
    secret: Option<&str>,
    header: Option<&str>,
    now_unix: u64,
) -> Result<ApiGrants, Fail> {
    let Some(secret) = secret else {
        return Err(Fail::new(
            ErrorCode::Unavailable,
            "no API secret configured: the room API is off",
        ));
    };
    let Some(header) = header else {
        return Err(Fail::new(
            ErrorCode::Unauthorized,
            "missing Authorization: Bearer <call token>",
        ));
    };
    let Some(token) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
    else {
        return Err(Fail::new(
            ErrorCode::Unauthorized,
            "Authorization must be Bearer <call token>",
        ));
    };
    verify_call(key, secret.as_bytes(), token.trim(), now_unix)
        .map(|claims| claims.grants)
        .map_err(|e| Fail::new(ErrorCode::Unauthorized, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::room_api::{mint_call, ApiClaims, MAX_CALL_TOKEN_SECS};

    const NOW: u64 = 1_700_000_000;
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn bearer(key: &str, secret: &str, ttl: u64) -> String {
        let t = mint_call(
            secret.as_bytes(),
            &ApiClaims::new(key, ApiGrants::all(), NOW, ttl),
        );
        format!("Bearer {t}")
    }

    #[test]
    fn tokens_are_refused_with_their_reason() {
        let check = |h: Option<&str>| check_token("app", Some(SECRET), h, NOW);
        assert_eq!(
            check(Some(&bearer("app", SECRET, 60))).unwrap(),
            ApiGrants::all()
        );
        let why = |h: Option<&str>| {
            let f = check(h).unwrap_err();
            assert_eq!(f.status(), 401, "{f:?}");
            f.message
        };
        assert!(why(None).contains("missing"));
        assert!(why(Some("Basic abc")).contains("Bearer"));
        assert!(why(Some("Bearer not-a-jwt")).contains("signature"));
        assert!(
            why(Some(&bearer("app", "another-secret-another-secret-xx", 60))).contains("signature")
        );
        assert!(why(Some(&bearer("other", SECRET, 60))).contains("unknown API key"));
        assert!(why(Some(&bearer("app", SECRET, MAX_CALL_TOKEN_SECS + 120))).contains("longer"));
        let expired = mint_call(
            SECRET.as_bytes(),
            &ApiClaims::new("app", ApiGrants::all(), NOW - 3600, 60),
        );
        assert!(why(Some(&format!("Bearer {expired}"))).contains("expired"));
    }

    #[test]
    fn without_a_secret_the_api_is_unavailable() {
        let f = check_token("app", None, Some(&bearer("app", SECRET, 60)), NOW).unwrap_err();
        assert_eq!(f.status(), 503);
        assert_eq!(f.code, ErrorCode::Unavailable);
    }
}
