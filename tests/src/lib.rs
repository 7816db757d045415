//! Shared harness of the cross-crate tests in `tests/tests/`: start real nodes, mint
//! tokens, connect synthetic clients, and wait on conditions (never on sleeps).

pub mod abuse;
pub mod fake_node;
pub mod lossy_cell;
pub mod nats;
pub mod procs;

use chaos::Client;
use protocol::token::{self, Claims};
use protocol::{RoomId, UserId};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use node::{Config, NodeHandle};

pub use chaos::wait_until;

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A node on loopback with free ports, the dev secret, and no resume grace (a dropped socket
/// ends its participant at once) unless the test changes it.
pub fn start_node(tweak: impl FnOnce(&mut Config)) -> NodeHandle {
    init_logs();
    let mut config = Config::local_dev();
    config.resume_grace = Duration::ZERO;
    config.room_empty_grace = Duration::ZERO;
    tweak(&mut config);
    node::spawn(config).expect("node starts")
}

pub fn claims(room: &str, user: &str, ttl: u64) -> Claims {
    Claims::new(
        RoomId::new(room).expect("room id"),
        UserId::new(user).expect("user id"),
        now_unix(),
        ttl,
    )
}

pub fn mint(node: &NodeHandle, claims: &Claims) -> String {
    token::mint(node.config().api_secret.as_bytes(), claims)
}

/// Connects and joins `room` as `user` with every permission.
pub async fn join(node: &NodeHandle, room: &str, user: &str) -> anyhow::Result<Client> {
    let client = Client::connect(&node.ws_url()).await?;
    client
        .join(room, &mint(node, &claims(room, user, 600)))
        .await?;
    Ok(client)
}

/// A random room name, so tests sharing a process never meet.
pub fn room_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Waits until the node holds no room, peer, transport, track, media task or watch of a
/// room's directory entry.
pub async fn wait_node_idle(node: &NodeHandle, timeout: Duration) -> anyhow::Result<()> {
    wait_until(timeout, "node to release everything", || async {
        let c = node.counters();
        if c.rooms == 0
            && c.peers == 0
            && c.transports == 0
            && c.tracks == 0
            && c.downtracks == 0
            && c.forwarding_tasks == 0
            && c.room_watches == 0
        {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
}

/// A plain HTTP/1.1 GET on loopback: (status, body). Enough for `/metrics` and friends.
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, headers).await
}

/// A request without a body on loopback, bounded by 5 s: (status, body).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    chaos::bench::http_request(addr, method, path, headers).await
}

pub const MEDIA_WAIT: Duration = Duration::from_secs(30);

/// Waits until `client` receives both tracks of each publisher in `from`, with at least
/// `min_packets` video packets from each.
pub async fn wait_media(client: &Client, from: &[&str], min_packets: u64) -> anyhow::Result<()> {
    wait_until(MEDIA_WAIT, "media from every publisher", || async {
        let stats = client.track_stats();
        for p in from {
            for kind in [
                protocol::signal::TrackKind::Audio,
                protocol::signal::TrackKind::Video,
            ] {
                let got = stats
                    .iter()
                    .filter(|t| t.publisher == *p && t.kind == kind)
                    .map(|t| t.received)
                    .sum::<u64>();
                let need = if kind == protocol::signal::TrackKind::Video {
                    min_packets
                } else {
                    min_packets / 2
                };
                if got < need {
                    return Err(format!(
                        "{kind:?} from {p}: {got} < {need}; stats {stats:?}"
                    ));
                }
            }
        }
        Ok(())
    })
    .await
}

/// Loss over every received track stays under 1 %.
pub fn assert_delivery(who: &str, client: &Client) {
    for t in client.track_stats() {
        let expected = t.received - t.duplicates + t.lost;
        let ratio = (t.received - t.duplicates) as f64 / expected.max(1) as f64;
        assert!(
            ratio >= 0.99,
            "{who} got {:.2}% of {:?} track {} from {} ({t:?})",
            ratio * 100.0,
            t.kind,
            t.track_id,
            t.publisher
        );
    }
}

/// Waits until `client` has received, in order, the application messages `{"n": 0}` …
/// `{"n": count - 1}` from `from`, and no other numbered message from it.
pub async fn wait_numbered_messages(
    client: &Client,
    from: &str,
    count: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_until(timeout, "numbered messages in order", || async {
        let got: Vec<i64> = client
            .messages()
            .iter()
            .filter_map(|m| match m {
                protocol::signal::ServerMessage::Message { from: f, data }
                    if f.as_str() == from =>
                {
                    data["n"].as_i64()
                }
                _ => None,
            })
            .collect();
        if got == (0..count).collect::<Vec<_>>() {
            Ok(())
        } else {
            Err(format!("from {from}: {got:?}"))
        }
    })
    .await
}

/// Test logs: `RUST_LOG=node=debug cargo test …` shows the node's tracing output.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A test's run directory (process logs, state), removed when dropped unless
/// `KEEP_TEST_LOGS` is set, in which case its path is printed.
pub struct RunDir(pub std::path::PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("   logs kept in {}", self.0.display());
        }
    }
}

/// Runs a tool that must succeed and returns its standard output; a tool that is not
/// installed is a failure naming the fix (`scripts/install-deps` installs every tool the
/// tests run).
pub fn succeed(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    use anyhow::Context;
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (scripts/install-deps installs it)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
