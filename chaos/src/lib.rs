//! Outside-in harness for the media cluster: a synthetic client that speaks PROTOCOL.md v1
//! over a WebSocket and WebRTC (webrtc-rs 0.21), publishes synthetic Opus/VP8 RTP whose
//! payloads carry a sequence number and a send time, and measures what it receives.
//!
//! ```no_run
//! # async fn demo() -> chaos::Result<()> {
//! use chaos::{Client, PublishOpts};
//! let alice = Client::connect("ws://127.0.0.1:7880/ws").await?;
//! alice.join("room-1", "<jwt>").await?;
//! alice.publish(PublishOpts::default()).await?;
//! for t in alice.track_stats() {
//!     println!("{} {} received {} lost {}", t.publisher, t.track_id, t.received, t.lost);
//! }
//! alice.leave().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The subscriber side is automatic: every `subscribe_offer` is answered on one recvonly
//! connection, and each remote track (msid `<publisher id> <track id>`) is read into
//! [`TrackStats`]. Every server message is kept; [`Client::wait_for`] and
//! [`Client::wait_for_since`] wait on them with a timeout.
//!
//! Everything runs on the caller's multi-thread tokio runtime (webrtc's tokio runtime
//! spawns its drivers with `tokio::spawn`). Every wait is bounded by [`ClientConfig`]'s
//! timeouts; background tasks stop and peer connections close on `leave`,
//! `close_abruptly` or drop.
#![forbid(unsafe_code)]

pub mod bench;
mod client;
mod error;
mod events;
pub mod geo;
pub mod impair;
pub mod invariants;
pub mod load;
pub mod payload;
mod peer;
mod publisher;
pub mod runner;
pub mod sandbox;
pub mod stats;
mod subscriber;
pub mod view;
mod ws;

#[cfg(test)]
mod loopback_tests;

pub use client::{
    mint_tokens, Cause, Client, ClientConfig, EndReason, Joined, Participant, ParticipantConfig,
    Recovery, RecoveryPolicy, Rejoin, Rejoined, Status, TokenSource,
};
pub use error::{Error, Result};
pub use events::CloseInfo;
pub use publisher::{PublishOpts, SentStats, VideoCodec};
pub use stats::TrackStats;
pub use subscriber::ReceivedCodec;

/// Polls `check` until it returns `Ok`, or fails after `timeout` with the last reason it
/// gave: what tests and scenario runs wait on instead of sleeping.
pub async fn wait_until<F, Fut>(
    timeout: std::time::Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let reason = match check().await {
            Ok(()) => return Ok(()),
            Err(r) => r,
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}: {reason}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Logs of the chaos programs: warnings to stderr, webrtc-rs's benign loopback races (early
/// STUN checks, DTLS server name) silenced; `RUST_LOG` overrides.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "warn,rtc=error,rtc_ice=error,rtc_dtls=error,webrtc=error",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .init();
}
