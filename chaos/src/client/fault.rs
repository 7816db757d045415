//! Noticing that a [`Client`] needs replacing: its WebSocket closed without our `leave`, the
//! node sent `reconnect`, or a peer connection reached `failed`.

use super::{lock, Client};
use crate::error::Error;
use crate::events::CloseInfo;
use futures::future::select_all;
use protocol::signal::{PcKind, ServerMessage};
use protocol::ErrorCode;
use std::io::ErrorKind;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite;
use webrtc::peer_connection::RTCPeerConnectionState;

/// Peer connections appear while a client runs (the subscriber's at the first offer) without
/// telling anyone; the list is looked at again this often.
const NEW_PEERS_EVERY: Duration = Duration::from_millis(250);

/// Why a participant recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The WebSocket ended without our `leave`.
    SocketClosed(CloseInfo),
    /// The node sent `reconnect`.
    Reconnect { reason: String, url: Option<String> },
    /// A peer connection reached `failed`.
    PeerFailed(PcKind),
    /// Nothing came from the node for the policy's silence, `ping`s included: a half-open
    /// socket, or a frozen node.
    Silent(Duration),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::SocketClosed(CloseInfo::Remote { code, reason }) => {
                write!(f, "websocket closed by the node ({code} {reason:?})")
            }
            Cause::SocketClosed(CloseInfo::Dropped { error: Some(e) }) => {
                write!(f, "websocket dropped ({e})")
            }
            Cause::SocketClosed(CloseInfo::Dropped { error: None }) => {
                write!(f, "websocket dropped")
            }
            Cause::SocketClosed(CloseInfo::Local) => write!(f, "websocket closed locally"),
            Cause::Reconnect { reason, url: None } => write!(f, "reconnect ({reason})"),
            Cause::Reconnect {
                reason,
                url: Some(u),
            } => write!(f, "reconnect ({reason}) to {u}"),
            Cause::PeerFailed(PcKind::Publisher) => write!(f, "publisher connection failed"),
            Cause::PeerFailed(PcKind::Subscriber) => write!(f, "subscriber connection failed"),
            Cause::Silent(d) => write!(f, "nothing from the node for {} ms", d.as_millis()),
        }
    }
}

/// What watching a client came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Watched {
    Fault(Cause),
    /// The node closed the socket after `error unauthorized`: the same user joined from
    /// elsewhere (PROTOCOL.md), so coming back would only evict that session in turn.
    Replaced,
    /// We closed the socket ourselves.
    ClosedLocally,
    /// The node said `removed` (the application removed us, or closed the room): out for
    /// good, no reconnecting (PROTOCOL.md).
    Removed(String),
}

/// Waits until `client` needs replacing, or was closed by us. With `silence`, the node is
/// pinged (protocol `ping`) every third of it while it says nothing, and a node silent for
/// all of it is a fault.
pub(crate) async fn next_fault(client: &Client, silence: Option<Duration>) -> Watched {
    let mut changes = client.events.changes();
    let (mut heard, mut heard_at) = (client.message_count(), tokio::time::Instant::now());
    let mut pinged_at = heard_at;
    loop {
        changes.borrow_and_update();
        if let Some(w) = fault_now(client) {
            return w;
        }
        if let Some(silence) = silence {
            let now = tokio::time::Instant::now();
            let count = client.message_count();
            if count != heard {
                (heard, heard_at) = (count, now);
            }
            if now.duration_since(heard_at) >= silence {
                return Watched::Fault(Cause::Silent(silence));
            }
            if now.duration_since(heard_at.max(pinged_at)) >= silence / 3 {
                pinged_at = now;
                let _ = client.send(&protocol::signal::ClientMessage::Ping).await;
            }
        }
        // A receiver whose sender is gone (a closed connection) would wake at once forever.
        let mut states: Vec<_> = peer_states(client)
            .into_iter()
            .filter(|(_, rx)| rx.has_changed().is_ok())
            .map(|(_, mut rx)| Box::pin(async move { rx.changed().await.is_ok() }))
            .collect();
        let peer_change = async {
            if states.is_empty() {
                std::future::pending::<()>().await
            }
            select_all(states.iter_mut()).await;
        };
        tokio::select! {
            _ = changes.changed() => {}
            _ = peer_change => {}
            _ = tokio::time::sleep(NEW_PEERS_EVERY) => {}
        }
    }
}

fn fault_now(client: &Client) -> Option<Watched> {
    let from_log = client.events.scan(|messages, closed| {
        let removed = messages.iter().find_map(|m| match m {
            ServerMessage::Removed { reason } => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = removed {
            return Some(Watched::Removed(reason));
        }
        let reconnect = messages.iter().find_map(|m| match m {
            ServerMessage::Reconnect { reason, url } => Some(Cause::Reconnect {
                reason: reason.clone(),
                url: url.clone(),
            }),
            _ => None,
        });
        if let Some(cause) = reconnect {
            return Some(Watched::Fault(cause));
        }
        match closed? {
            CloseInfo::Local => Some(Watched::ClosedLocally),
            _ if replaced(messages) => Some(Watched::Replaced),
            other => Some(Watched::Fault(Cause::SocketClosed(other.clone()))),
        }
    });
    if from_log.is_some() {
        return from_log;
    }
    peer_states(client)
        .into_iter()
        .find(|(_, rx)| *rx.borrow() == RTCPeerConnectionState::Failed)
        .map(|(kind, _)| Watched::Fault(Cause::PeerFailed(kind)))
}

/// Whether an `error unauthorized` came after the last `joined`: the node's word that this
/// session was replaced (our own requests after `joined` never draw that code).
fn replaced(messages: &[ServerMessage]) -> bool {
    messages
        .iter()
        .rev()
        .take_while(|m| !matches!(m, ServerMessage::Joined { .. }))
        .any(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            )
        })
}

/// Every peer connection of the client with its state. The publisher is the one the
/// `publish` exchange completed on; any other is the subscriber.
fn peer_states(client: &Client) -> Vec<(PcKind, watch::Receiver<RTCPeerConnectionState>)> {
    let publisher = lock(&client.publisher_ice)
        .peer
        .as_ref()
        .map(|p| p.pc.clone());
    lock(&client.peers)
        .iter()
        .map(|p| {
            let is_publisher = publisher
                .as_ref()
                .is_some_and(|pc| std::sync::Arc::ptr_eq(pc, &p.pc));
            let kind = if is_publisher {
                PcKind::Publisher
            } else {
                PcKind::Subscriber
            };
            (kind, p.state_watch())
        })
        .collect()
}

/// Whether connecting failed because nothing listens there (the node is gone), which is
/// when PROTOCOL.md has the client try `joined.fallback_urls`.
pub(crate) fn is_refused(e: &Error) -> bool {
    match e {
        // A node dying while the connection opens resets it, or ends the handshake, rather
        // than refusing it: as good a sign that nobody serves there any more.
        Error::WebSocket(e) => match &**e {
            tungstenite::Error::Io(io) => matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            ),
            tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::HandshakeIncomplete
                | tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ) => true,
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::signal::ParticipantInfo;
    use protocol::{NodeId, RoomId, UserId};

    fn joined() -> ServerMessage {
        ServerMessage::Joined {
            room: RoomId::new("r").unwrap(),
            participant: ParticipantInfo {
                id: UserId::new("me").unwrap(),
                name: "me".into(),
            },
            node: NodeId::new("n").unwrap(),
            resume_token: "t".into(),
            ice_servers: vec![],
            participants: vec![],
            fallback_urls: vec![],
        }
    }

    #[test]
    fn only_an_unauthorized_error_after_the_last_joined_means_replaced() {
        let kicked = ServerMessage::error(ErrorCode::Unauthorized, "the same user joined");
        let other = ServerMessage::error(ErrorCode::RateLimited, "slow down");
        assert!(replaced(&[joined(), kicked.clone()]));
        assert!(!replaced(&[joined(), other.clone()]));
        // A refused resume, then a fresh join: not replaced.
        assert!(!replaced(&[kicked.clone(), joined(), other]));
        assert!(!replaced(&[]));
    }

    #[test]
    fn refused_connections_are_told_apart() {
        let io = |kind| Error::from(tungstenite::Error::Io(std::io::Error::from(kind)));
        // Nobody serves there (any more): refused, or reset by a node dying mid-connect.
        assert!(is_refused(&io(ErrorKind::ConnectionRefused)));
        assert!(is_refused(&io(ErrorKind::ConnectionReset)));
        let unfinished = tungstenite::error::ProtocolError::HandshakeIncomplete;
        assert!(is_refused(&Error::from(tungstenite::Error::Protocol(
            unfinished
        ))));
        // Anything else is an answer from a node.
        assert!(!is_refused(&io(ErrorKind::PermissionDenied)));
        assert!(!is_refused(&Error::Closed("x".into())));
    }
}
