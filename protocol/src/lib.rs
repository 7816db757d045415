//! Wire types and pure logic shared by every process of the media cluster.
//!
//! Nothing here does IO or reads a clock: time is passed in (`now_unix`), decisions come out.
//! The client signaling contract is `PROTOCOL.md` v1; [`signal`] is its exact serde form.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cascade;
pub mod cluster;
pub mod error;
pub mod ids;
#[cfg(feature = "rtc")]
pub mod keyframe;
pub mod nats_auth;
pub mod placement;
pub mod room_api;
pub mod signal;
#[cfg(feature = "tls")]
pub mod tls;
pub mod token;
pub mod turn;
pub mod webhook;

pub use error::ErrorCode;
pub use ids::{NodeId, RoomId, TrackId, UserId};

/// Largest WebSocket text frame a node accepts (PROTOCOL.md: 64 KiB).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
