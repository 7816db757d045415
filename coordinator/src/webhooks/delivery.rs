//! Delivering the webhook stream to the configured URLs.
//!
//! A coordinator with webhook URLs makes sure the stream [`STREAM`] exists ([`stream_config`]:
//! subjects `webhook.>`, file storage, `max_age` = `--webhook-retention`, a duplicate window
//! of [`DUPLICATE_WINDOW`], replicas like the KV buckets) and, per URL, a durable pull
//! consumer ([`consumer_name`], [`consumer_config`]: explicit acks, one message in flight, so
//! events reach the URL in stream order). Every coordinator runs the loop for every URL; the
//! durable consumer hands each event to one of them at a time, and a coordinator that dies
//! mid-delivery only means the event is delivered again after the ack wait.
//!
//! Each event is POSTed as it is in the stream (the bytes the publisher wrote) with
//! `Content-Type: application/json`, `Webhook-Id` and `Webhook-Signature`
//! ([`protocol::webhook::sign`] with the API secret). A 2xx answer acks it; anything else
//! (another status, a refused connection, a timeout of [`POST_TIMEOUT`]) naks it with a
//! delay ([`retry_delay`]: from [`FIRST_RETRY`], doubling, at most [`MAX_RETRY`]); after
//! `--webhook-max-attempts` deliveries it is terminated and counted dropped.

use crate::Shared;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::AckKind;
use futures::StreamExt;
use protocol::webhook::{self, CONSUMER, STREAM, SUBJECTS};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Window within which a repeated `Nats-Msg-Id` is dropped by the stream.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long one POST may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the consumer waits for an ack before delivering again (a coordinator died).
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// The first retry's delay; each next one doubles, up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// Pause before setting the loop up again after the stream or consumer failed.
const RESTART: Duration = Duration::from_secs(1);

/// What one delivery attempt came to, for `webhook_deliveries_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Ok,
    Retry,
    Dropped,
}

impl Delivery {
    pub const ALL: [Delivery; 3] = [Delivery::Ok, Delivery::Retry, Delivery::Dropped];

    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Ok => "ok",
            Delivery::Retry => "retry",
            Delivery::Dropped => "dropped",
        }
    }
}

/// The durable consumer of `url`: [`CONSUMER`] and a short stable hash of the URL.
pub fn consumer_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{CONSUMER}-{hex}")
}

/// The delay before delivery `attempt` + 1, after `attempt` (1 for the first) failed.
pub fn retry_delay(attempt: u64) -> Duration {
    let attempt = usize::try_from(attempt).unwrap_or(usize::MAX);
    protocol::backoff::delay(attempt, FIRST_RETRY, MAX_RETRY)
}

/// What to do with an event after delivery `attempt` (1 for the first) answered `ok`.
pub fn verdict(ok: bool, attempt: u64, max_attempts: u32) -> Delivery {
    if ok {
        Delivery::Ok
    } else if attempt >= u64::from(max_attempts) {
        Delivery::Dropped
    } else {
        Delivery::Retry
    }
}

pub fn stream_config(retention: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        description: Some("webhook events until delivered".into()),
        subjects: vec![SUBJECTS.into()],
        storage: StorageType::File,
        max_age: retention,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

pub fn consumer_config(url: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(consumer_name(url)),
        description: Some(format!("webhook delivery to {}", shown(url))),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 1,
        max_deliver: -1,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    }
}

/// `url` as it may be logged: without credentials or query (which may hold a secret).
pub fn shown(url: &str) -> String {
    match url.parse::<ureq::http::Uri>() {
        Ok(u) => {
            format!(
                "{}://{}{}",
                u.scheme_str().unwrap_or("?"),
                u.host().unwrap_or("?"),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + u.path()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

/// Delivers to `url` for ever (sets the stream and consumer up again when they fail).
pub(crate) async fn run(shared: Arc<Shared>, client: async_nats::Client, url: String) {
    let shown = shown(&url);
    let Some(secret) = shared.config.api_secret.clone() else {
        return;
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(POST_TIMEOUT))
        .http_status_as_error(false)
        // A redirect is not a delivery: the receiver's URL is what was configured.
        .max_redirects(0)
        .build()
        .into();
    let js = async_nats::jetstream::new(client);
    loop {
        if let Err(e) = deliver(&shared, &js, &agent, &url, secret.as_bytes()).await {
            tracing::warn!(url = %shown, error = %e, "webhook delivery interrupted");
        }
        tokio::time::sleep(RESTART).await;
    }
}

/// Makes sure the stream exists with this coordinator's settings.
pub(crate) async fn ensure_stream(
    shared: &Shared,
    js: &async_nats::jetstream::Context,
) -> Result<stream::Stream, async_nats::Error> {
    let config = stream_config(shared.config.webhook_retention, shared.config.kv_replicas);
    if let Ok(s) = js.create_stream(config.clone()).await {
        return Ok(s);
    }
    // Exists: bring its limits to ours (another coordinator may have created it
    // differently), and use it as it is if that is refused.
    if let Err(e) = js.update_stream(config).await {
        tracing::debug!(error = %e, "webhook stream not updated");
    }
    Ok(js.get_stream(STREAM).await?)
}

async fn deliver(
    shared: &Shared,
    js: &async_nats::jetstream::Context,
    agent: &ureq::Agent,
    url: &str,
    secret: &[u8],
) -> Result<(), async_nats::Error> {
    let stream = ensure_stream(shared, js).await?;
    let name = consumer_name(url);
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        match stream.create_consumer(consumer_config(url)).await {
            Ok(c) => c,
            Err(_) => stream.get_consumer(&name).await?,
        };
    let url_shown = shown(url);
    tracing::info!(url = %url_shown, consumer = %name, "delivering webhooks");
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let attempt = msg
            .info()
            .map(|i| u64::try_from(i.delivered).unwrap_or(1))
            .unwrap_or(1);
        let id = event_id(&msg);
        let body = msg.payload.clone();
        let started = Instant::now();
        let posted = post(agent, url, secret, &id, body).await;
        let took = started.elapsed();
        let outcome = verdict(posted.is_ok(), attempt, shared.config.webhook_max_attempts);
        let acked = match outcome {
            Delivery::Ok => msg.ack().await,
            Delivery::Retry => {
                let delay = retry_delay(attempt);
                tracing::debug!(url = %url_shown, %id, attempt, error = ?posted.err(), delay_ms = delay.as_millis() as u64, "webhook delivery failed, retrying");
                msg.ack_with(AckKind::Nak(Some(delay))).await
            }
            Delivery::Dropped => {
                tracing::warn!(url = %url_shown, %id, attempt, error = ?posted.err(), "webhook dropped after its last attempt");
                msg.ack_with(AckKind::Term).await
            }
        };
        if let Err(e) = acked {
            tracing::debug!(url = %url_shown, %id, error = %e, "webhook ack not sent");
        }
        shared.metrics.webhook_delivery(outcome, took);
    }
    Ok(())
}

/// The event's id: its `id` field, else the `Nats-Msg-Id` it was published with, else its
/// stream sequence.
fn event_id(msg: &async_nats::jetstream::Message) -> String {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    if let Ok(Id { id }) = serde_json::from_slice::<Id>(&msg.payload) {
        return id;
    }
    if let Some(id) = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
    {
        return id.as_str().to_owned();
    }
    match msg.info() {
        Ok(i) => format!("seq:{}", i.stream_sequence),
        Err(_) => "unknown".into(),
    }
}

/// POSTs one event; `Ok` on a 2xx answer, else why not.
async fn post(
    agent: &ureq::Agent,
    url: &str,
    secret: &[u8],
    id: &str,
    body: bytes::Bytes,
) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signature = webhook::sign(secret, now, &body);
    let (agent, url, id) = (agent.clone(), url.to_owned(), id.to_owned());
    let sent = tokio::task::spawn_blocking(move || {
        agent
            .post(&url)
            .header("content-type", "application/json")
            .header(webhook::ID_HEADER, &id)
            .header(webhook::SIGNATURE_HEADER, &signature)
            .send(&body[..])
            .map(|r| r.status().as_u16())
    })
    .await;
    match sent {
        Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_are_named_by_a_stable_hash_of_their_url() {
        let a = consumer_name("https://example.com/hook");
        assert_eq!(a, consumer_name("https://example.com/hook"));
        assert_ne!(a, consumer_name("https://example.com/hook2"));
        assert!(a.starts_with("webhook-delivery-"), "{a}");
        assert_eq!(a.len(), "webhook-delivery-".len() + 12);
        // A valid consumer name: no dots, spaces or wildcards.
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn urls_are_logged_without_credentials_or_query() {
        assert_eq!(
            shown("https://app:s3cret@hooks.example.com:8443/in?token=x"),
            "https://hooks.example.com:8443/in"
        );
        assert_eq!(shown("http://127.0.0.1/h"), "http://127.0.0.1/h");
    }

    #[test]
    fn retries_back_off_from_half_a_second_to_thirty() {
        let ms: Vec<u128> = (1..=9).map(|a| retry_delay(a).as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(retry_delay(u64::MAX), MAX_RETRY);
    }

    #[test]
    fn an_event_is_dropped_after_its_last_attempt() {
        assert_eq!(verdict(true, 50, 50), Delivery::Ok);
        assert_eq!(verdict(false, 1, 50), Delivery::Retry);
        assert_eq!(verdict(false, 49, 50), Delivery::Retry);
        assert_eq!(verdict(false, 50, 50), Delivery::Dropped);
        assert_eq!(verdict(false, 1, 1), Delivery::Dropped);
    }

    #[test]
    fn stream_and_consumer_settings() {
        let s = stream_config(Duration::from_secs(3600), 3);
        assert_eq!(s.subjects, ["webhook.>"]);
        assert_eq!(s.max_age, Duration::from_secs(3600));
        assert_eq!(s.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(s.num_replicas, 3);
        let c = consumer_config("http://x/h");
        assert_eq!(c.max_ack_pending, 1);
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
    }
}
