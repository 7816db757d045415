//! The WebSocket to the node: a shared writer and the reader loop.

use crate::error::{Error, Result};
use crate::events::CloseInfo;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use protocol::signal::ClientMessage;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type WsRead = SplitStream<Ws>;

/// The sending half, shared by the client and its background tasks. `None` once closed.
pub(crate) struct WsWriter {
    sink: Mutex<Option<SplitSink<Ws, Message>>>,
    /// Bound on one send: a node that stops reading must not hang the client.
    timeout: Duration,
}

impl WsWriter {
    pub fn new(sink: SplitSink<Ws, Message>, timeout: Duration) -> Self {
        WsWriter {
            sink: Mutex::new(Some(sink)),
            timeout,
        }
    }

    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        let text = serde_json::to_string(msg).map_err(|e| Error::Invalid(e.to_string()))?;
        self.send_frame(Message::text(text)).await
    }

    pub async fn send_frame(&self, frame: Message) -> Result<()> {
        let send = async {
            let mut sink = self.sink.lock().await;
            match sink.as_mut() {
                Some(s) => Ok(s.send(frame).await?),
                None => Err(Error::Closed("websocket closed locally".into())),
            }
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| Error::timeout("a websocket send", self.timeout))?
    }

    /// Sends a close frame (normal closure) and keeps the sink so the reader can still see
    /// the node's reply.
    pub async fn close_gracefully(&self) -> Result<()> {
        self.send_frame(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "leave".into(),
        })))
        .await
    }

    /// Drops the sending half. With the reader also gone, the TCP connection closes without
    /// a close frame.
    pub async fn drop_sink(&self) {
        self.sink.lock().await.take();
    }
}

/// What the reader saw.
pub(crate) enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Closed(CloseInfo),
}

/// The next meaningful frame; control frames are handled by tungstenite.
pub(crate) async fn next_incoming(read: &mut WsRead) -> Incoming {
    loop {
        return match read.next().await {
            Some(Ok(Message::Text(t))) => Incoming::Text(t.as_str().to_owned()),
            Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
            Some(Ok(Message::Close(frame))) => Incoming::Closed(match frame {
                Some(f) => CloseInfo::Remote {
                    code: u16::from(f.code),
                    reason: f.reason.as_str().to_owned(),
                },
                None => CloseInfo::Remote {
                    code: 1005,
                    reason: String::new(),
                },
            }),
            Some(Ok(_)) => continue,
            Some(Err(e)) => Incoming::Closed(CloseInfo::Dropped {
                error: Some(e.to_string()),
            }),
            None => Incoming::Closed(CloseInfo::Dropped { error: None }),
        };
    }
}
