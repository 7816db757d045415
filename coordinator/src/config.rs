//! Coordinator configuration: a plain struct for embedding and tests, and the binary's
//! flags (each also read from a `COORD_*` environment variable).

use crate::error::{Error, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// This coordinator's id: unique among coordinators, a subject token after escaping.
    pub id: String,
    /// One NATS url, or several separated by commas (servers of one cluster).
    pub nats_url: String,
    /// NATS user and password (README "NATS security": the coordinators' user). Without
    /// them, credentials in the URL (`nats://user:password@host:4222`) serve.
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    /// CA certificate (PEM) of the NATS servers' TLS certificates: TLS is then required.
    pub nats_ca_file: Option<std::path::PathBuf>,
    pub http_listen: SocketAddr,
    /// Bearer token of the admin API (everything but `/healthz`, `/readyz`, `/metrics`).
    pub admin_token: String,
    /// PEM certificate chain and private key: the HTTP API is served over HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Silence after which a node or a coordinator is dead.
    pub node_timeout: Duration,
    /// How often this coordinator announces itself on `cluster.coord.heartbeat`.
    pub heartbeat_interval: Duration,
    /// Replicas of the `rooms` KV bucket when this coordinator creates it (1 locally, 3 on a
    /// 3-node NATS cluster).
    pub kv_replicas: usize,
    /// How long an assignment counts as pending load on its node after a heartbeat arrives
    /// (see [`crate::registry::NodeRegistry`]).
    pub pending_settle: Duration,
    /// Timeout of a request forwarded to the room's deciding coordinator.
    pub forward_timeout: Duration,
}

impl Config {
    /// A coordinator on loopback with a random id and port, for development and tests.
    pub fn local(nats_url: impl Into<String>) -> Self {
        Self {
            id: format!("coord-{:08x}", rand::random::<u32>()),
            nats_url: nats_url.into(),
            nats_user: None,
            nats_password: None,
            nats_ca_file: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: "dev-admin-token".into(),
            tls: None,
            node_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            kv_replicas: 1,
            pending_settle: Duration::from_secs(2),
            forward_timeout: Duration::from_secs(1),
        }
    }

    pub fn validate(&self) -> Result<()> {
        protocol::ids::validate_id(&self.id)
            .map_err(|e| Error::Config(format!("coordinator id {:?}: {e}", self.id)))?;
        for url in self.nats_url.split(',') {
            url.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::Config(format!("nats url {url:?}: {e}")))?;
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return Err(Error::Config("nats user and password go together".into()));
        }
        if self.admin_token.is_empty() {
            return Err(Error::Config("admin token is empty".into()));
        }
        if self.node_timeout.is_zero() || self.heartbeat_interval.is_zero() {
            return Err(Error::Config(
                "timeouts and intervals must be positive".into(),
            ));
        }
        if !(1..=5).contains(&self.kv_replicas) {
            return Err(Error::Config("kv replicas must be 1 to 5".into()));
        }
        Ok(())
    }
}

/// The binary's flags.
#[derive(Debug, Clone, Args)]
pub struct CoordArgs {
    /// Coordinator id (default: `coord-<random>`).
    #[arg(long, env = "COORD_ID")]
    pub id: Option<String>,
    #[arg(long, env = "COORD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS user [default: `coordinator` when a password is given].
    #[arg(long, env = "COORD_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer --nats-password-file: flags show in `ps`).
    #[arg(long, env = "COORD_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// File holding the NATS password (one line; surrounding whitespace is ignored).
    #[arg(long, env = "COORD_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of the NATS servers: the NATS connection requires TLS.
    #[arg(long, env = "COORD_NATS_CA_FILE")]
    pub nats_ca_file: Option<std::path::PathBuf>,
    #[arg(long, env = "COORD_HTTP_LISTEN", default_value = "127.0.0.1:7070")]
    pub http_listen: SocketAddr,
    /// Bearer token for the admin API.
    #[arg(long, env = "COORD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Milliseconds of silence after which a node is dead.
    #[arg(long, env = "COORD_NODE_TIMEOUT_MS", default_value_t = 3000)]
    pub node_timeout_ms: u64,
    #[arg(long, env = "COORD_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// Replicas of the `rooms` KV bucket if this coordinator creates it.
    #[arg(long, env = "COORD_KV_REPLICAS", default_value_t = 1)]
    pub kv_replicas: usize,
    /// Log as JSON lines.
    #[arg(long, env = "COORD_LOG_JSON")]
    pub log_json: bool,
    /// PEM certificate chain: serve the HTTP API over HTTPS (with --tls-key).
    #[arg(long, env = "COORD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "COORD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl CoordArgs {
    pub fn into_config(self) -> Result<Config> {
        let mut c = Config::local(self.nats_url);
        if let Some(id) = self.id {
            c.id = id;
        }
        c.nats_password = match (self.nats_password, self.nats_password_file) {
            (Some(p), _) => Some(p),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::Config(format!("nats password file {}: {e}", path.display()))
                })?;
                let p = text.trim();
                if p.is_empty() {
                    return Err(Error::Config(format!(
                        "nats password file {} is empty",
                        path.display()
                    )));
                }
                Some(p.to_owned())
            }
            (None, None) => None,
        };
        c.nats_user = match (self.nats_user, &c.nats_password) {
            (Some(u), _) => Some(u),
            (None, Some(_)) => Some(protocol::nats_auth::COORDINATOR_USER.to_owned()),
            (None, None) => None,
        };
        c.nats_ca_file = self.nats_ca_file;
        c.http_listen = self.http_listen;
        c.admin_token = self.admin_token;
        c.node_timeout = Duration::from_millis(self.node_timeout_ms);
        c.heartbeat_interval = Duration::from_millis(self.heartbeat_interval_ms);
        c.kv_replicas = self.kv_replicas;
        c.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_what_would_fail_later() {
        let ok = Config::local("nats://127.0.0.1:4222, nats://127.0.0.1:4223");
        ok.validate().unwrap();
        for broken in [
            Config {
                nats_url: "nats://[bad".into(),
                ..ok.clone()
            },
            Config {
                admin_token: String::new(),
                ..ok.clone()
            },
            Config {
                id: "has space".into(),
                ..ok.clone()
            },
            Config {
                kv_replicas: 0,
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(broken.validate(), Err(Error::Config(_))),
                "{broken:?}"
            );
        }
    }
}
