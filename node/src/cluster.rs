//! The node's connection to the cluster: a NATS client living on the media runtime, and
//! typed request/publish helpers over `protocol::cluster` payloads.
//!
//! A node without `--nats` runs standalone: every room is local and nothing here exists.

use protocol::NodeId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("nats is unreachable")]
    Disconnected,
    #[error("no one answers on {0}")]
    NoResponders(String),
    #[error("request to {0} timed out")]
    Timeout(String),
    #[error("bad payload on {subject}: {reason}")]
    Payload { subject: String, reason: String },
    #[error("nats: {0}")]
    Nats(String),
}

/// Publications waiting for the NATS client; beyond this a publication is dropped (NATS is
/// away or far behind) rather than blocking an actor.
const OUTBOX: usize = 16 * 1024;

/// A cheap, cloneable handle on the node's NATS connection.
#[derive(Clone)]
pub struct Cluster {
    pub client: async_nats::Client,
    pub rt: tokio::runtime::Handle,
    pub node: NodeId,
    outbox: tokio::sync::mpsc::Sender<Out>,
    /// How many times the connection came back after a disconnect.
    reconnects: tokio::sync::watch::Receiver<u64>,
}

/// What the publishing task is handed, in order.
enum Out {
    Publish(String, bytes::Bytes),
    /// Everything handed over before this is written to the server: answered when done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Cluster {
    /// Connects in the background: the node starts (and reports not ready) even while NATS
    /// is away, and the client reconnects and restores subscriptions after a NATS restart.
    ///
    /// `ca_file` (PEM) is the CA of the servers' TLS certificates: TLS is then required.
    /// `credentials` (user, password) authenticate the node; without them, credentials in a
    /// URL (`nats://user:password@host`) do. Requests use the node's own inbox prefix
    /// ([`protocol::nats_auth::node_inbox_prefix`]), the only inboxes its NATS user may read.
    pub async fn connect(
        url: &str,
        node: NodeId,
        credentials: Option<(String, String)>,
        ca_file: Option<std::path::PathBuf>,
        rt: tokio::runtime::Handle,
    ) -> Result<Cluster, ClusterError> {
        let name = format!("node {node}");
        // A comma-separated list is several servers, not one URL.
        let servers: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| ClusterError::Nats(e.to_string()))?;
        let credentials = credentials.or_else(|| url_credentials(&servers));
        let inbox = protocol::nats_auth::node_inbox_prefix(&node);
        let node_for_log = node.clone();
        let (reconnected, reconnects) = tokio::sync::watch::channel(0u64);
        let reconnected = std::sync::Arc::new(reconnected);
        let was_disconnected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::process_metrics::nats_connected(false);
        let client = rt
            .spawn(async move {
                let options = match credentials {
                    Some((user, password)) => {
                        async_nats::ConnectOptions::with_user_and_password(user, password)
                    }
                    None => async_nats::ConnectOptions::new(),
                };
                let options = match ca_file {
                    Some(ca) => options.add_root_certificates(ca).require_tls(true),
                    None => options,
                };
                options
                    .name(name)
                    .custom_inbox_prefix(inbox)
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connection_timeout(Duration::from_secs(2))
                    // The default backoff grows to 4 s; a node must be back within a second
                    // or so of NATS.
                    .reconnect_delay_callback(|attempts| {
                        protocol::backoff::delay(
                            attempts,
                            Duration::from_millis(100),
                            Duration::from_secs(1),
                        )
                    })
                    .event_callback(move |event| {
                        let node = node_for_log.clone();
                        let (reconnected, was_disconnected) =
                            (reconnected.clone(), was_disconnected.clone());
                        async move {
                            use std::sync::atomic::Ordering::SeqCst;
                            match event {
                                async_nats::Event::Connected => {
                                    crate::process_metrics::nats_connected(true);
                                    if was_disconnected.swap(false, SeqCst) {
                                        reconnected.send_modify(|n| *n += 1);
                                    }
                                }
                                async_nats::Event::Disconnected => {
                                    crate::process_metrics::nats_connected(false);
                                    was_disconnected.store(true, SeqCst);
                                }
                                _ => {}
                            }
                            tracing::info!(%node, %event, "nats");
                        }
                    })
                    .connect(servers)
                    .await
            })
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        // One task publishes everything in the order it was handed over, so a user's
        // messages and a participant's commands keep their order across the cluster.
        let (outbox, mut rx) = tokio::sync::mpsc::channel::<Out>(OUTBOX);
        let publisher = client.clone();
        rt.spawn(async move {
            while let Some(out) = rx.recv().await {
                match out {
                    Out::Publish(subject, payload) => {
                        if let Err(e) = publisher.publish(subject, payload).await {
                            tracing::debug!(error = %e, "nats publish failed");
                        }
                    }
                    Out::Flush(done) => {
                        if let Err(e) = publisher.flush().await {
                            tracing::debug!(error = %e, "nats flush failed");
                        }
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(Cluster {
            client,
            rt,
            node,
            outbox,
            reconnects,
        })
    }

    /// Waits (at most `timeout`) until everything published so far is written to the
    /// server: a node about to exit flushes, or its last messages (the rooms it closed)
    /// die with the process.
    pub async fn flush(&self, timeout: Duration) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        let queued = tokio::time::timeout(timeout, async {
            if self.outbox.send(Out::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        });
        if queued.await.is_err() {
            tracing::warn!(?timeout, "nats flush did not finish in time");
        }
    }

    /// Changes each time the connection comes back after a disconnect. The client restores
    /// its subscriptions before it sends anything else, so a read made after the change
    /// sees what was missed meanwhile, and later writes reach the subscriptions.
    pub fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnects.clone()
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// A request with a JSON body and a JSON reply, run on the media runtime.
    pub async fn request<Req, Rep>(
        &self,
        subject: String,
        body: &Req,
        timeout: Duration,
    ) -> Result<Rep, ClusterError>
    where
        Req: Serialize,
        Rep: DeserializeOwned + Send + 'static,
    {
        let payload = serde_json::to_vec(body).map_err(|e| ClusterError::Payload {
            subject: subject.clone(),
            reason: e.to_string(),
        })?;
        if !self.connected() {
            return Err(ClusterError::Disconnected);
        }
        let client = self.client.clone();
        self.rt
            .spawn(async move {
                let reply =
                    tokio::time::timeout(timeout, client.request(subject.clone(), payload.into()))
                        .await
                        .map_err(|_| ClusterError::Timeout(subject.clone()))?
                        .map_err(|e| match e.kind() {
                            async_nats::client::RequestErrorKind::NoResponders => {
                                ClusterError::NoResponders(subject.clone())
                            }
                            async_nats::client::RequestErrorKind::TimedOut => {
                                ClusterError::Timeout(subject.clone())
                            }
                            _ => ClusterError::Nats(e.to_string()),
                        })?;
                serde_json::from_slice(&reply.payload).map_err(|e| ClusterError::Payload {
                    subject,
                    reason: e.to_string(),
                })
            })
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?
    }

    /// Publishes a JSON body; returns at once. Publications from one node keep their order.
    pub fn publish<T: Serialize>(&self, subject: String, body: &T) {
        let Ok(payload) = serde_json::to_vec(body) else {
            return;
        };
        if self
            .outbox
            .try_send(Out::Publish(subject, payload.into()))
            .is_err()
        {
            metrics::counter!("cluster_publish_dropped_total").increment(1);
        }
    }

    /// Tells the coordinators that `node` did not answer (a request got "no responders" or
    /// timed out, a relay link with it failed): they probe it and, if it is gone, move its
    /// rooms at once instead of after the heartbeat timeout.
    pub fn suspect(&self, node: &NodeId, reason: &str) {
        if node == &self.node {
            return;
        }
        tracing::info!(%node, reason, "suspecting node");
        metrics::counter!("cluster_suspicions_total", "reason" => reason.to_owned()).increment(1);
        let msg = protocol::cluster::NodeSuspect {
            v: protocol::cluster::VERSION,
            node: node.clone(),
            from: self.node.to_string(),
            reason: reason.to_owned(),
        };
        self.publish(protocol::cluster::NODE_SUSPECT.to_owned(), &msg);
    }
}

/// The user and password of the first of `servers` whose URL carries them.
pub fn url_credentials(servers: &[async_nats::ServerAddr]) -> Option<(String, String)> {
    servers
        .iter()
        .find(|s| s.has_user_pass())
        .and_then(|s| Some((s.username()?.to_owned(), s.password()?.to_owned())))
}

impl ClusterError {
    /// Whether the other side seems gone: nobody listens, or nobody answered in time.
    pub fn unanswered(&self) -> bool {
        matches!(
            self,
            ClusterError::NoResponders(_) | ClusterError::Timeout(_)
        )
    }
}
