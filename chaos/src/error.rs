//! The one error type of the crate.

use protocol::ErrorCode;
use std::time::Duration;

/// What went wrong talking to a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WebSocket could not be opened, or failed while in use. (Displayed inline rather
    /// than as a `source`, so a report shows it once.)
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// webrtc-rs refused an operation.
    #[error("webrtc: {0}")]
    WebRtc(webrtc::error::Error),
    /// The node answered with an `error` message.
    #[error("node error {code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    /// Nothing satisfying the wait arrived in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// The WebSocket is closed (by either side), so nothing more will arrive.
    #[error("connection closed: {0}")]
    Closed(String),
    /// A peer connection went to `failed` or `closed` while we waited for it.
    #[error("peer connection {0}")]
    PeerConnection(String),
    /// The caller asked for something the client's state does not allow.
    #[error("invalid use: {0}")]
    Usage(String),
    /// An id or SDP the client was given is malformed.
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}

impl From<webrtc::error::Error> for Error {
    fn from(e: webrtc::error::Error) -> Self {
        Error::WebRtc(e)
    }
}

impl Error {
    pub(crate) fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            what: what.into(),
            after,
        }
    }

    /// The node's error code, when this is a node `error`.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
