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
    /// Worker threads of the coordinator's runtime (NATS and its tasks). One is the
    /// cheapest per allocation on a shared machine (no wake-ups across threads: 20 % less
    /// CPU per allocation in `bench_scale`); more spread a busy coordinator over cores.
    pub worker_threads: usize,
    /// How long an assignment counts as pending load on its node after a heartbeat arrives
    /// (see [`crate::registry::NodeRegistry`]).
    pub pending_settle: Duration,
    /// The room API's key: the `iss` of every call token (README "Room API").
    pub api_key: String,
    /// The room API's HS256 secret (the one the nodes sign join tokens with), also the
    /// webhooks' HMAC key. Without one the room API answers 503 and no webhook is sent.
    pub api_secret: Option<String>,
    /// Where webhook events are POSTed (README "Webhooks"); none: this coordinator delivers
    /// nothing (it still publishes its events when the stream exists).
    pub webhook_urls: Vec<String>,
    /// Deliveries of one event to one URL before it is dropped.
    pub webhook_max_attempts: u32,
    /// How long the webhook stream keeps an event (its `max_age`).
    pub webhook_retention: Duration,
    /// Development only: accept an API secret shorter than 32 bytes (as the nodes'
    /// `--dev-tokens` does), so a local cluster's short dev secret serves the room API.
    pub dev_tokens: bool,
}

/// The API key of [`Config::local`], for tests and development.
pub const DEV_API_KEY: &str = "devkey";
/// The API secret of [`Config::local`] (32 bytes), for tests and development only.
pub const DEV_API_SECRET: &str = "dev-api-secret-not-for-production";
/// Default of [`Config::webhook_max_attempts`].
pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 50;
/// Default of [`Config::webhook_retention`].
pub const DEFAULT_WEBHOOK_RETENTION: Duration = Duration::from_secs(24 * 3600);

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
            worker_threads: 1,
            pending_settle: Duration::from_secs(2),
            api_key: DEV_API_KEY.into(),
            api_secret: Some(DEV_API_SECRET.into()),
            webhook_urls: Vec::new(),
            webhook_max_attempts: DEFAULT_WEBHOOK_MAX_ATTEMPTS,
            webhook_retention: DEFAULT_WEBHOOK_RETENTION,
            dev_tokens: false,
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
        if !(1..=64).contains(&self.worker_threads) {
            return Err(Error::Config("worker threads must be 1 to 64".into()));
        }
        self.validate_api()
    }

    /// The room API and webhooks: a secret long enough for HS256 (the dev secret of
    /// [`Config::local`] is 33 bytes), a key with it, and a secret to sign webhooks with.
    fn validate_api(&self) -> Result<()> {
        let min = protocol::token::MIN_SECRET_LEN;
        if let Some(secret) = &self.api_secret {
            if secret.len() < min && !self.dev_tokens {
                return Err(Error::Config(format!(
                    "api secret must be at least {min} bytes (e.g. `openssl rand -hex 32`)"
                )));
            }
            if self.api_key.is_empty() {
                return Err(Error::Config("an api secret needs an api key".into()));
            }
            if *secret == self.admin_token {
                return Err(Error::Config(
                    "the admin token must differ from the api secret".into(),
                ));
            }
        }
        if !self.webhook_urls.is_empty() && self.api_secret.is_none() {
            return Err(Error::Config(
                "webhooks are signed with the api secret: set one".into(),
            ));
        }
        for url in &self.webhook_urls {
            let ok = url.starts_with("http://") || url.starts_with("https://");
            if !ok || url.parse::<ureq::http::Uri>().is_err() {
                return Err(Error::Config(format!(
                    "webhook url {url:?} is not an http(s) url"
                )));
            }
        }
        if self.webhook_max_attempts == 0 {
            return Err(Error::Config(
                "webhook max attempts must be at least 1".into(),
            ));
        }
        if self.webhook_retention < Duration::from_secs(60) {
            return Err(Error::Config(
                "webhook retention must be at least a minute".into(),
            ));
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
    /// Worker threads of the runtime that serves NATS (the HTTP API has its own thread).
    #[arg(long, env = "COORD_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// Log as JSON lines.
    #[arg(long, env = "COORD_LOG_JSON")]
    pub log_json: bool,
    /// PEM certificate chain: serve the HTTP API over HTTPS (with --tls-key).
    #[arg(long, env = "COORD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "COORD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Room API key: the `iss` of call tokens (with --api-secret).
    #[arg(long, env = "COORD_API_KEY")]
    pub api_key: Option<String>,
    /// Room API secret, at least 32 bytes: the HS256 key of call tokens (the nodes' join
    /// token secret) and of webhook signatures. Without it the room API answers 503.
    #[arg(long, env = "COORD_API_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
    /// Webhook receiver (repeat the flag, or separate by commas): events are POSTed there.
    #[arg(
        long = "webhook-url",
        env = "COORD_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,
    /// Deliveries of one event to one URL before it is dropped.
    #[arg(long, env = "COORD_WEBHOOK_MAX_ATTEMPTS", default_value_t = DEFAULT_WEBHOOK_MAX_ATTEMPTS)]
    pub webhook_max_attempts: u32,
    /// Development only: accept an API secret shorter than 32 bytes.
    #[arg(long, env = "COORD_DEV_TOKENS")]
    pub dev_tokens: bool,
    /// How long undelivered events are kept (the webhook stream's max age), e.g. `24h`.
    #[arg(long, env = "COORD_WEBHOOK_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_retention: Duration,
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
        c.worker_threads = self.worker_threads;
        c.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
        };
        // No dev secret from the command line: a coordinator without one serves no room API.
        c.api_secret = self.api_secret;
        c.api_key = match (self.api_key, &c.api_secret) {
            (Some(k), _) => k,
            (None, Some(_)) => {
                return Err(Error::Config("--api-secret needs --api-key".into()));
            }
            (None, None) => String::new(),
        };
        c.webhook_urls = self
            .webhook_urls
            .into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        c.webhook_max_attempts = self.webhook_max_attempts;
        c.webhook_retention = self.webhook_retention;
        c.dev_tokens = self.dev_tokens;
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
            Config {
                worker_threads: 0,
                ..ok.clone()
            },
            Config {
                api_secret: Some("short".into()),
                ..ok.clone()
            },
            Config {
                api_key: String::new(),
                ..ok.clone()
            },
            Config {
                api_secret: None,
                webhook_urls: vec!["http://127.0.0.1:9/hook".into()],
                ..ok.clone()
            },
            Config {
                webhook_urls: vec!["ftp://example.com/hook".into()],
                ..ok.clone()
            },
            Config {
                webhook_max_attempts: 0,
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

#[cfg(test)]
mod args_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CoordArgs,
    }

    fn parse(extra: &[&str]) -> Result<Config> {
        let mut argv = vec!["coordinator", "--admin-token", "t"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .map_err(|e| Error::Config(e.to_string()))?
            .args
            .into_config()
    }

    #[test]
    fn without_api_flags_the_room_api_is_off_and_the_coordinator_starts() {
        let c = parse(&[]).unwrap();
        assert!(c.api_secret.is_none() && c.webhook_urls.is_empty());
        assert_eq!(c.webhook_max_attempts, DEFAULT_WEBHOOK_MAX_ATTEMPTS);
        assert_eq!(c.webhook_retention, DEFAULT_WEBHOOK_RETENTION);
    }

    #[test]
    fn api_and_webhook_flags() {
        let secret = "0123456789abcdef0123456789abcdef";
        let c = parse(&[
            "--api-key",
            "app",
            "--api-secret",
            secret,
            "--webhook-url",
            "http://a/h,https://b/h",
            "--webhook-url",
            "http://c/h",
            "--webhook-retention",
            "2h",
        ])
        .unwrap();
        assert_eq!(c.api_key, "app");
        assert_eq!(c.api_secret.as_deref(), Some(secret));
        assert_eq!(c.webhook_urls, ["http://a/h", "https://b/h", "http://c/h"]);
        assert_eq!(c.webhook_retention, Duration::from_secs(7200));
        assert!(parse(&["--api-secret", secret]).is_err(), "key required");
        assert!(parse(&["--api-key", "k", "--api-secret", "short"]).is_err());
        let dev = parse(&["--api-key", "k", "--api-secret", "short", "--dev-tokens"]).unwrap();
        assert_eq!(dev.api_secret.as_deref(), Some("short"));
        assert!(
            parse(&["--webhook-url", "http://a/h"]).is_err(),
            "secret required"
        );
    }
}
