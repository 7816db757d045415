//! The coordinator's one error type.

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("not connected to nats")]
    NotConnected,
    /// A JetStream KV operation on the room directory failed.
    #[error("room directory {op}: {source}")]
    Directory {
        op: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("bad payload: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("nats request: {0}")]
    Request(#[from] async_nats::RequestError),
}

impl Error {
    pub(crate) fn directory(op: &'static str, source: impl Into<async_nats::Error>) -> Self {
        Error::Directory {
            op,
            source: source.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
