//! Node configuration: a TOML file, overridden by environment (`NODE_*`), overridden by flags.

use anyhow::{bail, Context};
use clap::Args;
use protocol::signal::IceServer;
use protocol::NodeId;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Everything a node needs to run. Build it with [`Config::from_sources`] or
/// [`Config::local_dev`].
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: NodeId,
    pub region: String,
    /// HTTP and WebSocket listen address. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address the media socket binds to. A wildcard announces the first non-loopback
    /// interface address unless `public_ip` is set; local clusters bind 127.0.0.1.
    pub udp_ip: IpAddr,
    /// The one UDP port every peer connection of the node shares (0: a free port).
    pub udp_port: u16,
    /// The ICE-TCP port on `udp_ip` (0: a free port; `None`: no ICE-TCP).
    pub ice_tcp_port: Option<u16>,
    /// Media engine worker threads; each owns the connections of the rooms hashed to it.
    pub media_workers: usize,
    /// Ports for the receiving ends of relay links between nodes, inclusive (`(0, 0)`: any
    /// free port). Only other nodes reach these; clients use `udp_port` alone.
    pub relay_ports: (u16, u16),
    /// The public address announced in ICE candidates (1:1 NAT), instead of `udp_ip`.
    pub public_ip: Option<String>,
    /// HS256 secret of join tokens (at least 32 bytes unless `dev_tokens`).
    pub api_secret: String,
    /// Bearer token of the operators' endpoints (`/debug/snapshot`, `/admin/drain`); they
    /// are off without one (`/debug/snapshot` is open with `dev_tokens`).
    pub admin_token: Option<String>,
    /// STUN/TURN servers handed to clients in `joined`.
    pub ice_servers: Vec<IceServer>,
    /// With a TURN shared secret, `turn:`/`turns:` entries get time-limited credentials.
    pub turn_secret: Option<String>,
    pub turn_ttl: Duration,
    /// Serves `/dev/token` so the demo page can join without a backend. Never in production.
    pub dev_tokens: bool,
    pub log_json: bool,
    /// How long a participant outlives its signaling socket, waiting for `resume`.
    pub resume_grace: Duration,
    /// Signaling messages per second a socket may send (burst: twice that).
    pub msg_rate: u32,
    /// A WebSocket without any frame from its client for this long is closed. The node
    /// pings each client at least every third of it, so only a client that answers nothing
    /// (a half-open socket) goes idle.
    pub ws_idle_timeout: Duration,
    /// Participants per room, across every node of the room.
    pub max_room_size: usize,
    /// Participants of one room this node takes before the room gets a sibling node in
    /// this region (0: no limit).
    pub room_node_share: usize,
    /// NATS server(s) of the cluster; without it the node runs standalone.
    pub nats_url: Option<String>,
    /// PEM certificate chain and private key: the node serves HTTPS and WSS itself
    /// (otherwise plain HTTP, for a TLS-terminating balancer in front or development).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// NATS user name; defaults to the node id once a password is given (the cluster's
    /// NATS gives every node its own user, README "NATS security"). Credentials in the URL
    /// (`nats://user:password@host:4222`) serve when these are unset.
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    /// CA certificate (PEM) of the NATS servers' TLS certificates: the connection then
    /// requires TLS (production, README "NATS security").
    pub nats_ca_file: Option<PathBuf>,
    /// The WebSocket URL clients and other processes reach this node at; defaults to
    /// `ws://<listen address>/ws`.
    pub advertise_url: Option<String>,
    /// Capacity reported to the coordinator: rooms, participants, egress bits per second.
    pub max_rooms: u32,
    pub max_peers: u32,
    pub max_egress_bps: u64,
    /// How long an empty room stays before it closes and leaves the directory.
    pub room_empty_grace: Duration,
    /// How long a closed room's `sfu_room_*` series stay in `/metrics` (the first node of a
    /// process sets it: the recorder is process-wide).
    pub room_series_ttl: Duration,
    /// How long a resume token is good for (each `joined` issues a fresh one).
    pub resume_token_ttl: Duration,
    /// A drain ends by this deadline even if participants remain (they are told to
    /// reconnect elsewhere; the node then exits).
    pub drain_deadline: Duration,
    /// Participants told to move at once while draining; the next batch goes when these
    /// have left or after a few seconds.
    pub drain_batch: usize,
    /// The coordinators' death timeout: a node cut off from NATS this long has been
    /// declared dead and its rooms moved, so it stops serving them (fencing).
    pub node_timeout: Duration,
    /// Worker threads of the media runtime (webrtc, forwarding).
    pub media_threads: usize,
    /// actix-web worker threads (signaling).
    pub http_workers: usize,
    /// What one client, address or room may take (`crate::limits`).
    pub limits: crate::limits::Limits,
}

impl Config {
    /// A config for tests and the local demo: loopback only, free ports, dev tokens on.
    pub fn local_dev() -> Self {
        Config {
            node_id: NodeId::new(format!("node-{}", rand::random::<u16>())).expect("valid id"),
            region: "local".into(),
            listen: "127.0.0.1:0".parse().expect("valid addr"),
            udp_ip: "127.0.0.1".parse().expect("valid ip"),
            udp_port: 0,
            ice_tcp_port: Some(0),
            media_workers: 2,
            relay_ports: (0, 0),
            public_ip: None,
            api_secret: "devsecret".into(),
            admin_token: None,
            ice_servers: Vec::new(),
            turn_secret: None,
            turn_ttl: Duration::from_secs(6 * 3600),
            dev_tokens: true,
            log_json: false,
            resume_grace: Duration::from_secs(10),
            msg_rate: 50,
            ws_idle_timeout: Duration::from_secs(45),
            max_room_size: 500,
            room_node_share: 200,
            media_threads: 2,
            http_workers: 1,
            nats_url: None,
            tls: None,
            nats_user: None,
            nats_password: None,
            nats_ca_file: None,
            advertise_url: None,
            max_rooms: 1000,
            max_peers: 1000,
            max_egress_bps: 1_000_000_000,
            room_empty_grace: Duration::from_secs(5),
            room_series_ttl: Duration::from_secs(60),
            resume_token_ttl: Duration::from_secs(24 * 3600),
            drain_deadline: Duration::from_secs(60),
            drain_batch: 10,
            node_timeout: Duration::from_secs(3),
            limits: crate::limits::Limits::default(),
        }
    }

    /// Layers file < environment < flags over [`Config::local_dev`]'s defaults, except that a
    /// production-shaped run must name its secret (`dev_tokens` off means a real deployment).
    pub fn from_sources(flags: &NodeArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut c = Config::local_dev();
        c.listen = "127.0.0.1:7880".parse()?;
        c.udp_port = 50000;
        c.media_workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        c.dev_tokens = false;

        macro_rules! layer {
            ($field:ident) => {
                if let Some(v) = flags.$field.clone().or(file.$field.clone()) {
                    c.$field = v.into();
                }
            };
        }
        if let Some(id) = flags.node_id.clone().or(file.node_id.clone()) {
            c.node_id = NodeId::new(id).context("node id")?;
        }
        layer!(region);
        layer!(listen);
        layer!(udp_ip);
        if let Some(p) = flags.udp_port.clone().or(file.udp_port.clone()) {
            // A range (`--udp-ports A-B` of older versions): A is the media port, the rest
            // serve relay links.
            let (first, last) = parse_port_range(&p)?;
            if first > last {
                bail!("udp port range {p} is empty");
            }
            c.udp_port = first;
            if last > first {
                c.relay_ports = (first + 1, last);
            }
        }
        if let Some(r) = flags.relay_ports.clone().or(file.relay_ports.clone()) {
            c.relay_ports = parse_port_range(&r)?;
            if c.relay_ports.0 > c.relay_ports.1 {
                bail!("relay port range {r} is empty");
            }
        }
        // ICE-TCP listens on the UDP port's number unless told otherwise (TCP and UDP
        // ports are separate: a firewall opens "50000/udp and 50000/tcp").
        c.ice_tcp_port = Some(c.udp_port);
        if let Some(p) = flags.ice_tcp_port.clone().or(file.ice_tcp_port.clone()) {
            c.ice_tcp_port = match p.trim() {
                "off" | "none" => None,
                p => Some(p.parse().context("ice tcp port")?),
            };
        }
        layer!(media_workers);
        c.media_workers = c.media_workers.clamp(1, 64);
        if let Some(ip) = flags.public_ip.clone().or(file.public_ip.clone()) {
            c.public_ip = Some(ip);
        }
        layer!(api_secret);
        if let Some(t) = flags.admin_token.clone().or(file.admin_token.clone()) {
            c.admin_token = Some(t);
        }
        if let Some(urls) = flags.ice_servers.clone().or(file.ice_servers.clone()) {
            c.ice_servers = urls
                .iter()
                .filter(|u| !u.is_empty())
                .map(|u| IceServer {
                    urls: vec![u.clone()],
                    ..Default::default()
                })
                .collect();
        }
        if let Some(s) = flags.turn_secret.clone().or(file.turn_secret.clone()) {
            c.turn_secret = Some(s);
        }
        if let Some(s) = flags.turn_ttl_secs.or(file.turn_ttl_secs) {
            c.turn_ttl = Duration::from_secs(s);
        }
        c.dev_tokens = flags.dev_tokens || file.dev_tokens.unwrap_or(false);
        c.log_json = flags.log_json || file.log_json.unwrap_or(false);
        if let Some(s) = flags.resume_grace_secs.or(file.resume_grace_secs) {
            c.resume_grace = Duration::from_secs(s);
        }
        layer!(msg_rate);
        if let Some(s) = flags.ws_idle_timeout_secs.or(file.ws_idle_timeout_secs) {
            c.ws_idle_timeout = Duration::from_secs(s);
        }
        layer!(max_room_size);
        layer!(room_node_share);
        layer!(media_threads);
        layer!(http_workers);
        let cert = flags.tls_cert.clone().or(file.tls_cert.clone());
        let key = flags.tls_key.clone().or(file.tls_key.clone());
        c.tls = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        if let Some(u) = flags.nats_url.clone().or(file.nats_url.clone()) {
            c.nats_url = Some(u);
        }
        if let Some(u) = flags.nats_user.clone().or(file.nats_user.clone()) {
            c.nats_user = Some(u);
        }
        c.nats_password = match (
            flags.nats_password.clone(),
            flags
                .nats_password_file
                .clone()
                .or(file.nats_password_file.clone()),
        ) {
            (Some(p), _) => Some(p),
            (None, Some(path)) => Some(read_secret_file(&path)?),
            (None, None) => None,
        };
        if c.nats_password.is_some() && c.nats_user.is_none() {
            c.nats_user = Some(c.node_id.to_string());
        }
        if c.nats_user.is_some() && c.nats_password.is_none() {
            bail!("--nats-user needs --nats-password or --nats-password-file");
        }
        if let Some(f) = flags.nats_ca_file.clone().or(file.nats_ca_file.clone()) {
            c.nats_ca_file = Some(f);
        }
        if let Some(u) = flags.advertise_url.clone().or(file.advertise_url.clone()) {
            c.advertise_url = Some(u);
        }
        layer!(max_rooms);
        layer!(max_peers);
        layer!(max_egress_bps);
        if let Some(s) = flags.room_empty_grace_secs.or(file.room_empty_grace_secs) {
            c.room_empty_grace = Duration::from_secs(s);
        }
        if let Some(s) = flags.room_series_ttl_secs.or(file.room_series_ttl_secs) {
            c.room_series_ttl = Duration::from_secs(s.max(1));
        }
        if let Some(s) = flags.resume_token_ttl_secs.or(file.resume_token_ttl_secs) {
            c.resume_token_ttl = Duration::from_secs(s.max(1));
        }
        if let Some(s) = flags.drain_deadline_secs.or(file.drain_deadline_secs) {
            c.drain_deadline = Duration::from_secs(s);
        }
        layer!(drain_batch);
        c.drain_batch = c.drain_batch.max(1);
        if let Some(ms) = flags.node_timeout_ms.or(file.node_timeout_ms) {
            c.node_timeout = Duration::from_millis(ms.max(100));
        }

        if !c.dev_tokens && c.api_secret == "devsecret" {
            bail!(
                "set --api-secret (or NODE_API_SECRET) to a real secret, or run with --dev-tokens"
            );
        }
        macro_rules! limit {
            ($field:ident, $flag:ident) => {
                if let Some(v) = flags.$flag.or(file.$flag) {
                    c.limits.$field = v;
                }
            };
        }
        limit!(auth_failures, max_auth_failures);
        limit!(tracks_per_publisher, max_tracks_per_publisher);
        limit!(connections, max_connections);
        limit!(connections_per_ip, max_connections_per_ip);
        limit!(room_joins_per_sec, room_join_rate);
        limit!(recipient_messages_per_sec, recipient_msg_rate);
        limit!(cluster_requests, max_cluster_requests);
        let min = protocol::token::MIN_SECRET_LEN;
        if !c.dev_tokens && c.api_secret.len() < min {
            bail!("--api-secret must be at least {min} bytes (e.g. `openssl rand -hex 32`)");
        }
        if let Some(t) = &c.admin_token {
            if !c.dev_tokens && t.len() < min {
                bail!("--admin-token must be at least {min} bytes (e.g. `openssl rand -hex 32`)");
            }
            if *t == c.api_secret {
                bail!("--admin-token must differ from --api-secret");
            }
        }
        if c.ws_idle_timeout.is_zero() {
            bail!("the websocket idle timeout must be at least a second");
        }
        Ok(c)
    }
}

/// `50000-50999` → (50000, 50999); `0` means "any free port".
pub fn parse_port_range(s: &str) -> anyhow::Result<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => Ok((a.trim().parse()?, b.trim().parse()?)),
        None => {
            let p: u16 = s.trim().parse()?;
            Ok((p, p))
        }
    }
}

/// The flags of `node run`; each also reads an environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "NODE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    #[arg(long, env = "NODE_REGION")]
    pub region: Option<String>,
    /// HTTP/WebSocket listen address [default: 127.0.0.1:7880].
    #[arg(long, env = "NODE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// IP the media UDP sockets bind to [default: 127.0.0.1].
    #[arg(long, env = "NODE_UDP_IP")]
    pub udp_ip: Option<IpAddr>,
    /// The UDP port all media shares [default: 50000]; 0 picks a free port. (`--udp-ports
    /// A-B` of older versions is read as port A.)
    #[arg(long, env = "NODE_UDP_PORT", alias = "udp-ports")]
    pub udp_port: Option<String>,
    /// The ICE-TCP port for clients whose UDP is blocked [default: the UDP port's number];
    /// 0 picks a free port, `off` disables it.
    #[arg(long, env = "NODE_ICE_TCP_PORT")]
    pub ice_tcp_port: Option<String>,
    /// Media engine threads [default: the number of CPUs].
    #[arg(long, env = "NODE_MEDIA_WORKERS")]
    pub media_workers: Option<usize>,
    /// UDP ports for the receiving ends of relay links from other nodes, e.g. 50001-50999
    /// [default: any free port]. Only other nodes need to reach them.
    #[arg(long, env = "NODE_RELAY_PORTS")]
    pub relay_ports: Option<String>,
    /// Public IP announced in ICE candidates (1:1 NAT).
    #[arg(long, env = "NODE_PUBLIC_IP")]
    pub public_ip: Option<String>,
    /// HS256 secret for join tokens.
    #[arg(long, env = "NODE_API_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
    /// Bearer token of /debug/snapshot and /admin/drain (off without one).
    #[arg(long, env = "NODE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Failed token checks a socket may make before it is closed [default: 3].
    #[arg(long, env = "NODE_MAX_AUTH_FAILURES")]
    pub max_auth_failures: Option<u32>,
    /// Tracks one publisher may send at once [default: 8].
    #[arg(long, env = "NODE_MAX_TRACKS_PER_PUBLISHER")]
    pub max_tracks_per_publisher: Option<usize>,
    /// Signaling sockets this node holds at once [default: 10000].
    #[arg(long, env = "NODE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Signaling sockets from one source address [default: 200].
    #[arg(long, env = "NODE_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Joins per second one room takes on this node, burst twice that [default: 50].
    #[arg(long, env = "NODE_ROOM_JOIN_RATE")]
    pub room_join_rate: Option<u32>,
    /// Application messages per second to one recipient, burst twice that [default: 50].
    #[arg(long, env = "NODE_RECIPIENT_MSG_RATE")]
    pub recipient_msg_rate: Option<u32>,
    /// NATS requests (remote joins, resumes) this node serves at once [default: 256].
    #[arg(long, env = "NODE_MAX_CLUSTER_REQUESTS")]
    pub max_cluster_requests: Option<usize>,
    /// ICE server URLs for clients (stun:…, turn:…), comma separated.
    #[arg(long, env = "NODE_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Option<Vec<String>>,
    /// Shared secret of the TURN server (coturn `static-auth-secret`).
    #[arg(long, env = "NODE_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    #[arg(long, env = "NODE_TURN_TTL_SECS")]
    pub turn_ttl_secs: Option<u64>,
    /// Serve /dev/token for the demo page. Development only.
    #[arg(long, env = "NODE_DEV_TOKENS")]
    pub dev_tokens: bool,
    /// Log JSON lines instead of text.
    #[arg(long, env = "NODE_LOG_JSON")]
    pub log_json: bool,
    #[arg(long, env = "NODE_RESUME_GRACE_SECS")]
    pub resume_grace_secs: Option<u64>,
    /// Signaling messages per second per socket.
    #[arg(long, env = "NODE_MSG_RATE")]
    pub msg_rate: Option<u32>,
    /// Seconds without any frame from a client before its WebSocket closes [default: 45].
    #[arg(long, env = "NODE_WS_IDLE_TIMEOUT_SECS")]
    pub ws_idle_timeout_secs: Option<u64>,
    #[arg(long, env = "NODE_MAX_ROOM_SIZE")]
    pub max_room_size: Option<usize>,
    /// Participants of one room this node takes before a sibling node joins the room.
    #[arg(long, env = "NODE_ROOM_NODE_SHARE")]
    pub room_node_share: Option<usize>,
    #[arg(long, env = "NODE_MEDIA_THREADS")]
    pub media_threads: Option<usize>,
    #[arg(long, env = "NODE_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// NATS URL(s) of the cluster, e.g. nats://127.0.0.1:4222. Without it: standalone.
    #[arg(long, env = "NODE_NATS_URL")]
    pub nats_url: Option<String>,
    /// PEM certificate chain: serve HTTPS/WSS (with --tls-key).
    #[arg(long, env = "NODE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "NODE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// NATS user [default: the node id when a password is given].
    #[arg(long, env = "NODE_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer --nats-password-file: flags show in `ps`).
    #[arg(long, env = "NODE_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// File holding the NATS password (one line; surrounding whitespace is ignored).
    #[arg(long, env = "NODE_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// CA certificate (PEM) of the NATS servers: the NATS connection requires TLS.
    #[arg(long, env = "NODE_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// WebSocket URL this node is reached at [default: ws://<listen>/ws].
    #[arg(long, env = "NODE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    #[arg(long, env = "NODE_MAX_ROOMS")]
    pub max_rooms: Option<u32>,
    #[arg(long, env = "NODE_MAX_PEERS")]
    pub max_peers: Option<u32>,
    #[arg(long, env = "NODE_MAX_EGRESS_BPS")]
    pub max_egress_bps: Option<u64>,
    /// Seconds an empty room lingers before it closes.
    #[arg(long, env = "NODE_ROOM_EMPTY_GRACE_SECS")]
    pub room_empty_grace_secs: Option<u64>,
    /// Seconds a closed room's sfu_room_* series stay in /metrics [default: 60].
    #[arg(long, env = "NODE_ROOM_SERIES_TTL_SECS")]
    pub room_series_ttl_secs: Option<u64>,
    /// Seconds a resume token is good for [default: 86400].
    #[arg(long, env = "NODE_RESUME_TOKEN_TTL_SECS")]
    pub resume_token_ttl_secs: Option<u64>,
    /// Seconds a drain (SIGTERM or the admin API) may take before the node exits anyway
    /// [default: 60].
    #[arg(long, env = "NODE_DRAIN_DEADLINE_SECS")]
    pub drain_deadline_secs: Option<u64>,
    /// Participants moved at once while draining [default: 10].
    #[arg(long, env = "NODE_DRAIN_BATCH")]
    pub drain_batch: Option<usize>,
    /// The coordinators' node timeout in ms: cut off from NATS this long, the node stops
    /// serving its cluster rooms [default: 3000].
    #[arg(long, env = "NODE_NODE_TIMEOUT_MS")]
    pub node_timeout_ms: Option<u64>,
}

/// A secret kept in a file (a password): its content without surrounding whitespace.
fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret file {}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        bail!("secret file {} is empty", path.display());
    }
    Ok(secret.to_owned())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    region: Option<String>,
    listen: Option<SocketAddr>,
    udp_ip: Option<IpAddr>,
    #[serde(alias = "udp_ports")]
    udp_port: Option<String>,
    ice_tcp_port: Option<String>,
    media_workers: Option<usize>,
    relay_ports: Option<String>,
    public_ip: Option<String>,
    api_secret: Option<String>,
    admin_token: Option<String>,
    max_auth_failures: Option<u32>,
    max_tracks_per_publisher: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    room_join_rate: Option<u32>,
    recipient_msg_rate: Option<u32>,
    max_cluster_requests: Option<usize>,
    ice_servers: Option<Vec<String>>,
    turn_secret: Option<String>,
    turn_ttl_secs: Option<u64>,
    dev_tokens: Option<bool>,
    log_json: Option<bool>,
    resume_grace_secs: Option<u64>,
    msg_rate: Option<u32>,
    ws_idle_timeout_secs: Option<u64>,
    max_room_size: Option<usize>,
    room_node_share: Option<usize>,
    media_threads: Option<usize>,
    http_workers: Option<usize>,
    nats_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    nats_user: Option<String>,
    nats_password_file: Option<PathBuf>,
    nats_ca_file: Option<PathBuf>,
    advertise_url: Option<String>,
    max_rooms: Option<u32>,
    max_peers: Option<u32>,
    max_egress_bps: Option<u64>,
    room_empty_grace_secs: Option<u64>,
    room_series_ttl_secs: Option<u64>,
    resume_token_ttl_secs: Option<u64>,
    drain_deadline_secs: Option<u64>,
    drain_batch: Option<usize>,
    node_timeout_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_secret_is_required() {
        let dir = std::env::temp_dir().join(format!("nodecfg-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "region = \"eu\"\napi_secret = \"s3s3s3s3s3s3s3s3s3s3s3s3s3s3s3s3\"\nudp_port = \"40000\"\nice_tcp_port = \"off\"\nws_idle_timeout_secs = 20\n",
        )
        .unwrap();
        let flags = NodeArgs {
            config: Some(path.clone()),
            region: Some("us".into()),
            ..Default::default()
        };
        let c = Config::from_sources(&flags).unwrap();
        assert_eq!(c.region, "us");
        assert_eq!(c.api_secret, "s3s3s3s3s3s3s3s3s3s3s3s3s3s3s3s3");
        assert_eq!(c.udp_port, 40000);
        assert_eq!(c.ice_tcp_port, None);
        assert_eq!(c.ws_idle_timeout, Duration::from_secs(20));
        assert_eq!(Config::local_dev().ws_idle_timeout, Duration::from_secs(45));
        assert!(!c.dev_tokens);
        assert!(Config::from_sources(&NodeArgs::default()).is_err());
        std::fs::write(&path, "nonsense = 1\n").unwrap();
        assert!(Config::from_sources(&flags).is_err());
    }

    #[test]
    fn short_secrets_and_a_shared_admin_token_are_refused_outside_dev_tokens() {
        let long = "0123456789abcdef0123456789abcdef".to_string();
        let args = |secret: &str, admin: Option<&str>, dev: bool| NodeArgs {
            api_secret: Some(secret.into()),
            admin_token: admin.map(Into::into),
            dev_tokens: dev,
            ..Default::default()
        };
        let err = |a: NodeArgs| Config::from_sources(&a).unwrap_err().to_string();
        assert!(err(args("short", None, false)).contains("at least 32 bytes"));
        assert!(err(args(&long[..31], None, false)).contains("at least 32 bytes"));
        assert!(Config::from_sources(&args(&long, None, false)).is_ok());
        assert!(err(args(&long, Some("tiny"), false)).contains("--admin-token must be at least"));
        assert!(err(args(&long, Some(&long), false)).contains("must differ"));
        let admin = format!("{long}-admin");
        let c = Config::from_sources(&args(&long, Some(&admin), false)).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some(admin.as_str()));
        // Development: any secret.
        assert!(Config::from_sources(&args("short", Some("dev"), true)).is_ok());
    }

    #[test]
    fn a_nats_password_file_makes_the_node_id_the_user() {
        let dir = std::env::temp_dir().join(format!("nodecfg-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("nats.password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let flags = NodeArgs {
            node_id: Some("eu-1".into()),
            api_secret: Some("x".repeat(32)),
            nats_password_file: Some(secret.clone()),
            ..Default::default()
        };
        let c = Config::from_sources(&flags).unwrap();
        assert_eq!(c.nats_user.as_deref(), Some("eu-1"));
        assert_eq!(c.nats_password.as_deref(), Some("s3cret"));
        let named = NodeArgs {
            nats_user: Some("other".into()),
            ..flags.clone()
        };
        assert_eq!(
            Config::from_sources(&named).unwrap().nats_user.as_deref(),
            Some("other")
        );
        std::fs::write(&secret, " \n").unwrap();
        assert!(
            Config::from_sources(&flags).is_err(),
            "an empty password file"
        );
        let no_password = NodeArgs {
            nats_user: Some("eu-1".into()),
            api_secret: Some("x".repeat(32)),
            ..Default::default()
        };
        assert!(Config::from_sources(&no_password).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
