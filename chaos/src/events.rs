//! Everything a client has heard: the server messages in arrival order, how the WebSocket
//! closed, and local failures of background work. Waiters block on a generation counter
//! that moves whenever any of it changes.

use crate::error::{Error, Result};
use crate::view::RoomView;
use protocol::signal::ServerMessage;
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// How the WebSocket ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum CloseInfo {
    /// The node sent a close frame (`code` 1005 when it carried none).
    Remote { code: u16, reason: String },
    /// The stream ended or failed without a close frame.
    Dropped { error: Option<String> },
    /// This client closed it (`leave`, `close_abruptly` or drop).
    Local,
}

impl CloseInfo {
    /// The close code the node sent, if it sent one.
    pub fn code(&self) -> Option<u16> {
        match self {
            CloseInfo::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State {
    messages: Vec<ServerMessage>,
    /// Text frames that did not parse as a server message, and binary frames.
    unparsed: Vec<String>,
    /// Failures of background work (subscriber negotiation, candidates, ...).
    local_errors: Vec<String>,
    closed: Option<CloseInfo>,
    view: RoomView,
}

/// The shared log of one client.
pub(crate) struct EventLog {
    state: Mutex<State>,
    generation: watch::Sender<u64>,
}

impl EventLog {
    pub fn new() -> Self {
        EventLog {
            state: Mutex::new(State::default()),
            generation: watch::Sender::new(0),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn push(&self, msg: ServerMessage) {
        self.with(|s| {
            s.view.apply(&msg);
            s.messages.push(msg);
        });
        self.bump();
    }

    pub fn push_unparsed(&self, text: String) {
        self.with(|s| s.unparsed.push(text));
        self.bump();
    }

    pub fn push_local_error(&self, what: String) {
        tracing::warn!(error = %what, "client background failure");
        self.with(|s| s.local_errors.push(what));
        self.bump();
    }

    /// Records the first way the connection ended; later ones are ignored.
    pub fn set_closed(&self, info: CloseInfo) {
        let changed = self.with(|s| {
            if s.closed.is_none() {
                s.closed = Some(info);
                true
            } else {
                false
            }
        });
        if changed {
            self.bump();
        }
    }

    pub fn closed(&self) -> Option<CloseInfo> {
        self.with(|s| s.closed.clone())
    }

    pub fn len(&self) -> usize {
        self.with(|s| s.messages.len())
    }

    pub fn messages(&self) -> Vec<ServerMessage> {
        self.with(|s| s.messages.clone())
    }

    pub fn unparsed(&self) -> Vec<String> {
        self.with(|s| s.unparsed.clone())
    }

    pub fn local_errors(&self) -> Vec<String> {
        self.with(|s| s.local_errors.clone())
    }

    pub fn view(&self) -> RoomView {
        self.with(|s| s.view.clone())
    }

    /// Reads the messages and the close state under the lock, without copying them.
    pub fn scan<R>(&self, f: impl FnOnce(&[ServerMessage], Option<&CloseInfo>) -> R) -> R {
        self.with(|s| f(&s.messages, s.closed.as_ref()))
    }

    /// A receiver that sees a change whenever anything in the log changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The first message at index `from` or later that `pred` accepts. Fails with
    /// [`Error::Closed`] once the connection is closed and nothing matched, and with
    /// [`Error::Timeout`] after `timeout`.
    pub async fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<(usize, ServerMessage)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.generation.subscribe();
        loop {
            rx.borrow_and_update();
            let found = self.with(|s| {
                let hit = s
                    .messages
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, m)| pred(m))
                    .map(|(i, m)| (i, m.clone()));
                (hit, s.closed.clone())
            });
            match found {
                (Some(hit), _) => return Ok(hit),
                (None, Some(closed)) => {
                    return Err(Error::Closed(format!(
                        "{closed:?} while waiting for {what}"
                    )))
                }
                (None, None) => {}
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(Error::timeout(what, timeout));
            }
        }
    }

    /// Waits until the connection is closed.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<CloseInfo> {
        let mut rx = self.generation.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(c) = self.closed() {
                return Ok(c);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(Error::timeout("the connection to close", timeout));
            }
        }
    }
}

/// Aborts the client's background tasks when it goes away, so none outlives it.
#[derive(Default)]
pub(crate) struct TaskSet {
    inner: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    handles: Vec<tokio::task::AbortHandle>,
    /// Finished tasks are pruned when the list reaches this length, so it stays
    /// proportional to the live tasks at amortized constant cost.
    prune_at: usize,
}

impl TaskSet {
    pub fn spawn<F>(&self, fut: F) -> tokio::task::AbortHandle
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(fut).abort_handle();
        let ret = handle.clone();
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if t.handles.len() >= t.prune_at {
            t.handles.retain(|h| !h.is_finished());
            t.prune_at = (t.handles.len() * 2).max(64);
        }
        t.handles.push(handle);
        ret
    }

    pub fn abort_all(&self) {
        let handles =
            std::mem::take(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()).handles);
        for h in handles {
            h.abort();
        }
    }
}
