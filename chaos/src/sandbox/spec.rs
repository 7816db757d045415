//! What to start: [`ClusterSpec`], [`NatsSpec`] and [`NodeSpec`].

use super::*;

/// What to start. Build it with [`ClusterSpec::new`] and the chaining helpers, or set the
/// fields directly.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Run directory: one `<id>.log` per process and the JetStream store (`jetstream/`, one
    /// directory per server in it when there are three).
    /// Created when missing.
    pub dir: PathBuf,
    pub nats: NatsSpec,
    pub coordinator_bin: PathBuf,
    pub node_bin: PathBuf,
    /// Coordinator ids, started in this order.
    pub coordinators: Vec<String>,
    pub coordinator_flags: Vec<String>,
    /// `--admin-token` of every coordinator.
    pub admin_token: String,
    /// `--api-secret` of every node (the HS256 key of join tokens). The nodes refuse the
    /// development secret `devsecret` unless given `--dev-tokens`.
    pub api_secret: String,
    pub nodes: Vec<NodeSpec>,
    /// `RUST_LOG` of every child.
    pub child_log: String,
    /// Bound on nats-server greeting, and then on the whole cluster being ready.
    pub nats_timeout: Duration,
    pub ready_timeout: Duration,
}

/// The nats-server(s).
#[derive(Debug, Clone)]
pub struct NatsSpec {
    /// nats-server ≥ 2.10 (TOOLS.md).
    pub bin: PathBuf,
    /// Client port of the first server (`nats`); `None` picks a free one. Fixing it lets a
    /// caller put proxies in front of the server before it starts (a per-region NATS URL for
    /// [`NodeSpec::nats_url`]). The other servers' ports are always free ones.
    pub port: Option<u16>,
    /// 1 (default): one server, `nats`. 3: a JetStream cluster named `chaos` of `nats`,
    /// `nats2` and `nats3`, joined by routes, each with its own store; the coordinators
    /// create the room directory with three replicas (`--kv-replicas 3`), so it takes writes
    /// while any two servers run.
    pub servers: usize,
    /// Serve the monitoring endpoints (`-m <free port>`: `/connz`, `/jsz`, `/routez`) on
    /// every server; [`Proc::monitor_port`] tells where.
    pub monitor: bool,
    /// Flags after `-js -sd <dir> -a 127.0.0.1 -p <port>` (and the cluster flags), given to
    /// every server.
    pub extra_args: Vec<String>,
}

impl NatsSpec {
    /// The process id of server `i` (0-based): `nats`, `nats2`, `nats3`.
    pub fn server_id(i: usize) -> String {
        if i == 0 {
            "nats".to_owned()
        } else {
            format!("nats{}", i + 1)
        }
    }

    /// The ids of every server of the spec.
    pub fn server_ids(&self) -> Vec<String> {
        (0..self.servers).map(NatsSpec::server_id).collect()
    }
}

/// One media node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub region: String,
    /// `--udp-ip`: the address the media sockets bind to.
    pub udp_ip: IpAddr,
    /// `--public-ip`: the address announced in ICE candidates, when not `udp_ip` (a gateway
    /// in front of the node).
    pub public_ip: Option<IpAddr>,
    /// `--udp-ports`, inclusive.
    pub udp_ports: (u16, u16),
    /// The node's own NATS URL (e.g. through a proxy of its region); `None` uses the
    /// cluster's server directly.
    pub nats_url: Option<String>,
    /// Any other node flags, e.g. `--dev-tokens`, `--msg-rate 1000`.
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// A node binding its media sockets to 127.0.0.1, on the cluster's NATS server directly.
    pub fn new(id: &str, region: &str, udp_ports: (u16, u16)) -> NodeSpec {
        NodeSpec {
            id: id.to_owned(),
            region: region.to_owned(),
            udp_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            udp_ports,
            nats_url: None,
            extra_args: Vec::new(),
        }
    }

    /// Adds one flag (or flag value) to the node's command line.
    pub fn flag(mut self, arg: impl Into<String>) -> NodeSpec {
        self.extra_args.push(arg.into());
        self
    }
}

impl ClusterSpec {
    /// No coordinators, no nodes; binaries from `target/release` and `nats-server` from
    /// PATH; a random API secret; children log at `info`; 15 s for NATS, 30 s for readiness.
    pub fn new(dir: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            dir: dir.into(),
            nats: NatsSpec {
                bin: "nats-server".into(),
                port: None,
                servers: 1,
                monitor: false,
                extra_args: Vec::new(),
            },
            coordinator_bin: "target/release/coordinator".into(),
            node_bin: "target/release/node".into(),
            coordinators: Vec::new(),
            coordinator_flags: Vec::new(),
            admin_token: "sandboxadmin".into(),
            api_secret: format!("sandbox-{:032x}", rand::random::<u128>()),
            nodes: Vec::new(),
            child_log: "info".into(),
            nats_timeout: Duration::from_secs(15),
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn coordinator(mut self, id: &str) -> ClusterSpec {
        self.coordinators.push(id.to_owned());
        self
    }

    pub fn node(mut self, node: NodeSpec) -> ClusterSpec {
        self.nodes.push(node);
        self
    }

    /// A JetStream cluster of `servers` nats-servers (1 or 3) instead of one.
    pub fn nats_servers(mut self, servers: usize) -> ClusterSpec {
        self.nats.servers = servers;
        self
    }

    /// Refuses what would only fail later: missing binaries, a server count other than 1
    /// or 3, duplicate ids, empty or overlapping UDP ranges on one address.
    pub fn validate(&self) -> Result<()> {
        if ![1, 3].contains(&self.nats.servers) {
            bail!(
                "{} nats servers: the sandbox runs 1, or a JetStream cluster of 3",
                self.nats.servers
            );
        }
        for (what, p) in [
            ("node", &self.node_bin),
            ("coordinator", &self.coordinator_bin),
        ] {
            if !p.is_file() {
                bail!(
                    "{what} binary {} not found: run `cargo build --release -p node -p coordinator -p chaos` first",
                    p.display()
                );
            }
        }
        let mut ids: Vec<&str> = self.coordinators.iter().map(String::as_str).collect();
        ids.extend(self.nodes.iter().map(|n| n.id.as_str()));
        let servers = self.nats.server_ids();
        ids.extend(servers.iter().map(String::as_str));
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            bail!("process id {} is used twice", w[0]);
        }
        for (i, a) in self.nodes.iter().enumerate() {
            if a.udp_ports.0 == 0 || a.udp_ports.0 > a.udp_ports.1 {
                bail!("node {}: empty UDP range {:?}", a.id, a.udp_ports);
            }
            for b in &self.nodes[i + 1..] {
                let overlap = a.udp_ports.0 <= b.udp_ports.1 && b.udp_ports.0 <= a.udp_ports.1;
                if a.udp_ip == b.udp_ip && overlap {
                    bail!(
                        "nodes {} and {} share UDP ports on {}",
                        a.id,
                        b.id,
                        a.udp_ip
                    );
                }
            }
        }
        Ok(())
    }
}
