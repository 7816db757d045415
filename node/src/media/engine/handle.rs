//! The sending side of a media worker: its two bounded queues (control calls, and
//! datagrams/forwarded packets), and the calls that run a closure on the worker.

use super::worker::Worker;
use bytes::BytesMut;
use crossbeam_channel::{Sender, TrySendError};
use rtc::shared::TransportProtocol;
use std::net::SocketAddr;
use std::time::Instant;

/// A control call: runs on the worker with its state.
pub type Call = Box<dyn FnOnce(&mut Worker) + Send>;

/// What arrives on a worker's data queue.
pub enum Data {
    Datagram {
        conn: u64,
        from: SocketAddr,
        /// The connection's own socket it came in on (a relay link's receiving end);
        /// `None`: the node's media port.
        local: Option<SocketAddr>,
        proto: TransportProtocol,
        bytes: BytesMut,
        at: Instant,
    },
    /// A packet for a down track whose connection lives here, from another worker.
    Forward {
        conn: u64,
        packet: rtp::packet::Packet,
    },
}

/// The sending side of a worker's queues. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    pub index: u8,
    pub ctl: Sender<Call>,
    pub data: Sender<Data>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("media worker busy")]
    Busy,
    #[error("media worker stopped")]
    Stopped,
}

impl WorkerHandle {
    /// Runs `f` on the worker and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Worker) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.post(move |w| {
            let _ = tx.send(f(w));
        })?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Runs `f` on the worker, without waiting.
    pub fn post<F>(&self, f: F) -> Result<(), EngineError>
    where
        F: FnOnce(&mut Worker) + Send + 'static,
    {
        match self.ctl.try_send(Box::new(f)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(EngineError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }
}
