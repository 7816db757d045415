//! Newtype ids. A participant's id is its user id (the token's `sub`), so routing by user id
//! and addressing a participant are the same thing.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest id accepted from the wire.
pub const MAX_ID_LEN: usize = 128;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("id has a character outside [A-Za-z0-9._~@:-]")]
    BadChar,
}

/// Ids travel in NATS subjects later on, so they stay within a conservative character set.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~@:".contains(&b))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl $name {
            /// Wraps a string that was validated with [`validate_id`].
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_id(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A room's name, chosen by whoever mints the tokens.
    RoomId
);
id_type!(
    /// A user, and the participant that user is in a room (the token's `sub`).
    UserId
);
id_type!(
    /// A media node of the cluster.
    NodeId
);
id_type!(
    /// A published track, named by the node that receives it (`TR_` + random).
    TrackId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_charset_only() {
        assert!(RoomId::new("room-1.a_b~c@d:e").is_ok());
        assert_eq!(RoomId::new(""), Err(IdError::Empty));
        assert_eq!(RoomId::new("a b"), Err(IdError::BadChar));
        assert_eq!(RoomId::new("a>b"), Err(IdError::BadChar));
        assert_eq!(RoomId::new("x".repeat(129)), Err(IdError::TooLong));
        assert!(RoomId::new("x".repeat(128)).is_ok());
    }
}
